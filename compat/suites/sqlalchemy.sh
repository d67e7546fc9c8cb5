#!/usr/bin/env bash
# SQLAlchemy's own tests from its sdist, against the sandbox through `--dburi`: the MySQL
# dialect's tests (subset) and, in the full scope, the third-party dialect suite
# (sqlalchemy.testing.suite via test/dialect/test_suite.py) and the engine tests too.
# SQLA_DRIVER picks the DBAPI (default mysql+pymysql). Run inside sluice-compat-env.
set -uo pipefail
cd "$COMPAT_SRC"
driver=${SQLA_DRIVER:-mysql+pymysql}
url="$driver://$COMPAT_USER:$COMPAT_PASSWORD@$COMPAT_HOST:$COMPAT_PORT/test?charset=utf8mb4"
if [ -n "${COMPAT_ONLY:-}" ]; then
    mapfile -t paths <"$COMPAT_ONLY"
elif [ "$COMPAT_SCOPE" = full ]; then
    # SQLA_FULL_PATHS narrows the full run for a driver that cannot take all of it.
    read -r -a paths <<<"${SQLA_FULL_PATHS:-test/dialect/mysql test/dialect/test_suite.py test/engine}"
else
    paths=(test/dialect/mysql)
fi
# -p no:cacheprovider: the sdist's directory stays as unpacked.
exec "$COMPAT_PYTHON" -m pytest -p no:cacheprovider "${paths[@]}" --dburi "$url" \
    -q -rN --tb=short --timeout="${COMPAT_TEST_TIMEOUT:-120}" --maxfail=100000 --junitxml="$COMPAT_OUT/junit.xml"
