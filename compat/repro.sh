#!/usr/bin/env bash
# The minimal reproductions of known-differences.toml's causes (compat/repro.py), run against a
# fresh MariaDB directly and through Sluice, printed side by side.
#
#   compat/repro.sh [--server mariadb|mysql9] [CASE...]
#
# Uses the harness's virtualenv (run compat/run.sh once first, or --suite mariadb_python).
set -euo pipefail
cd "$(dirname "$0")/.."
server=mariadb
if [ "${1:-}" = --server ]; then
    server=$2
    shift 2
fi
python="${SLUICE_CACHE:-$HOME/.cache/sluice}/compat/venv/bin/python"
if ! "$python" -c 'import mariadb, mysql.connector, pymysql' 2>/dev/null; then
    echo "repro: no harness virtualenv with the drivers; run compat/run.sh --suite mariadb_python first" >&2
    exit 2
fi
cargo build --quiet -p sluice-testkit --bin sluice-compat-env
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for via in direct sluice; do
    # A loopback-only network namespace, as the harness runs suites.
    unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh \
        target/debug/sluice-compat-env --server "$server" --via "$via" -- \
        "$python" compat/repro.py "$@" >"$out/$via" 2>"$out/$via.err" || {
        cat "$out/$via.err" >&2
        exit 1
    }
done
python3 - "$out/direct" "$out/sluice" <<'EOF'
import sys
direct = dict(l.rstrip("\n").split("\t", 1) for l in open(sys.argv[1]) if "\t" in l)
sluice = dict(l.rstrip("\n").split("\t", 1) for l in open(sys.argv[2]) if "\t" in l)
for case in direct:
    mark = "same" if direct[case] == sluice.get(case) else "DIFFERS"
    print(f"{case} ({mark})\n  direct: {direct[case]}\n  sluice: {sluice.get(case)}")
EOF
