#!/usr/bin/env bash
# Regenerates proxy/src/sql/builtins.rs: every built-in function name and keyword of MariaDB
# and MySQL, so that Sluice can tell a stored function call from a built-in one.
# Usage: scripts/gen-builtins.sh MARIADB_CLIENT_ARGS -- MYSQL_CLIENT_ARGS
#   e.g. scripts/gen-builtins.sh -h127.0.0.1 -P3306 -uroot -- -h127.0.0.1 -P3307 -uroot -pPW
set -euo pipefail
cd "$(dirname "$0")/.."
maria=() mysql=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do maria+=("$1"); shift; done
[ $# -gt 0 ] && shift
mysql=("$@")
q() { mariadb --skip-ssl -N "$@"; }
{
    q "${maria[@]}" -e "SELECT FUNCTION FROM information_schema.SQL_FUNCTIONS;
        SELECT WORD FROM information_schema.KEYWORDS; SELECT name FROM mysql.help_topic"
    q "${mysql[@]}" -e "SELECT WORD FROM information_schema.KEYWORDS; SELECT name FROM mysql.help_topic"
} | tr 'A-Z' 'a-z' | grep -E '^[a-z_][a-z0-9_]*$' | LC_ALL=C sort -u >/tmp/sluice-builtins.txt
out=proxy/src/sql/builtins.rs
python3 - "$out" /tmp/sluice-builtins.txt <<'PY'
import re, sys
out, names = sys.argv[1], open(sys.argv[2]).read().split()
src = open(out).read()
body = "".join(f'    "{n}",\n' for n in names)
src = re.sub(r"pub const BUILTINS: &\[&str\] = &\[\n.*?\];", "pub const BUILTINS: &[&str] = &[\n" + body + "];", src, flags=re.S)
open(out, "w").write(src)
PY
echo "wrote $out ($(wc -l </tmp/sluice-builtins.txt) names)"
