#!/usr/bin/env bash
# MySQL Connector/Python's own tests (tests/ in its sdist) through its unittests.py, against
# the sandbox as an external server; mysql_connector_runner.py records each test's outcome.
# Run inside sluice-compat-env.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
args=(--use-external-server --skip-install --host="$COMPAT_HOST" --port="$COMPAT_PORT"
    --user="$COMPAT_USER" --password="$COMPAT_PASSWORD" --verbosity=2)
if [ -z "${COMPAT_ONLY:-}" ] && [ "$COMPAT_SCOPE" != full ]; then
    # The subset: the classic connector's core modules (pure Python and C extension).
    args+=(--test-regex='^(connection|cursor|cext_connection|cext_cursor|pep249|protocol|qa_multi_statement)$')
fi
exec "$COMPAT_PYTHON" "$here/mysql_connector_runner.py" "$COMPAT_SRC" "$COMPAT_OUT/results.json" \
    "${args[@]}"
