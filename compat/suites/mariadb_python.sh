#!/usr/bin/env bash
# MariaDB Connector/Python's own tests (testing/test in its sdist), configured through the
# TEST_DB_* variables its conf_test.py reads. The whole suite takes under a minute, so both
# scopes run all of it. Run inside sluice-compat-env.
set -uo pipefail
# From testing/: started in the sdist's root, pytest would import the sdist's mariadb/ (no
# compiled module) instead of the one built into the virtualenv.
cd "$COMPAT_SRC/testing"
export TEST_DB_USER=$COMPAT_USER TEST_DB_PASSWORD=$COMPAT_PASSWORD
export TEST_DB_HOST=$COMPAT_HOST TEST_DB_PORT=$COMPAT_PORT TEST_DB_DATABASE=testp
if [ -n "${COMPAT_ONLY:-}" ]; then
    mapfile -t paths <"$COMPAT_ONLY"
else
    paths=(test)
fi
exec "$COMPAT_PYTHON" -m pytest -p no:cacheprovider "${paths[@]}" \
    -q -rN --tb=short --timeout="${COMPAT_TEST_TIMEOUT:-120}" --junitxml="$COMPAT_OUT/junit.xml"
