#!/usr/bin/env bash
# The compatibility harness: drivers' own public test suites against a sandbox server directly
# and through Sluice, side by side. See compat/README.md.
#
#   compat/run.sh                  the default subset (part of scripts/test.sh)
#   compat/run.sh --full           every suite, every test, on every server it supports
#   compat/run.sh --suite NAME ... one suite (all its servers); --server mariadb|mysql9 narrows
#
# Every suite runs in a network namespace with only the loopback interface (unshare, as root).
# Exits 1 when a test passes directly but fails through Sluice and compat/known-differences.toml
# does not list it, 2 when the harness itself cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
export SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"

ensure_rust
ensure_apt mariadbd mariadb-server mariadb-client
ensure_apt mariadb mariadb-client
ensure_apt python3 python3 python3-pip
# The harness makes its own virtualenv; MariaDB Connector/Python builds against Connector/C.
if ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo "setup: installing python3-venv (for the harness's virtualenv)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
ensure_apt mariadb_config libmariadb-dev
ensure_apt gcc gcc
# The loopback-only network namespace every suite runs in.
ensure_apt unshare util-linux
ensure_apt ip iproute2
# MySQL 9 (a cached Debian sid chroot) unless only MariaDB was asked for.
case " $* " in
*" --server mariadb "* | *" --server=mariadb "*) ;;
*) as_root env SLUICE_CACHE="$SLUICE_CACHE" scripts/mysql9-chroot.sh ;;
esac

# The sandbox wrapper, and the sluice binary it starts (built here, outside the suites'
# network namespace, so the wrapper's own `cargo build` finds it up to date).
cargo build --quiet -p sluice-testkit --bin sluice-compat-env
cargo build --quiet -p sluice --bin sluice
exec nice -n 5 python3 compat/harness.py --env-binary target/debug/sluice-compat-env "$@"
