#!/usr/bin/env bash
# MySQL Connector/Python's own tests (tests/ in its sdist) through its unittests.py, against
# the sandbox as an external server; mysql_connector_runner.py records each test's outcome.
# Run inside sluice-compat-env.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
args=(--use-external-server --skip-install --host="$COMPAT_HOST" --port="$COMPAT_PORT"
    --user="$COMPAT_USER" --password="$COMPAT_PASSWORD" --verbosity=2)
if [ -z "${COMPAT_ONLY:-}" ] && [ "$COMPAT_SCOPE" != full ]; then
    # The subset: the classic connector's core modules (pure Python).
    args+=(--test-regex='^(connection|cursor|pep249|protocol)$')
fi
exec "$COMPAT_PYTHON" "$here/mysql_connector_runner.py" "$COMPAT_SRC" "$COMPAT_OUT/results.json" \
    "${args[@]}"
