#!/usr/bin/env bash
# The compatibility harness: drivers' own public test suites against a sandbox server directly
# and through Sluice, side by side. See compat/README.md.
#
#   compat/run.sh                  the default subset (part of scripts/test.sh)
#   compat/run.sh --full           every suite, every test, on every server it supports
#   compat/run.sh --suite NAME ... one suite (all its servers); --server mariadb|mysql9 narrows
#
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
# MySQL 9 (a cached Debian sid chroot) unless only MariaDB was asked for.
case " $* " in
*" --server mariadb "* | *" --server=mariadb "*) ;;
*) as_root env SLUICE_CACHE="$SLUICE_CACHE" scripts/mysql9-chroot.sh ;;
esac

# The sandbox wrapper (it builds the sluice binary itself, with the same profile, on first use).
cargo build --quiet -p sluice-testkit --bin sluice-compat-env
exec nice -n 5 python3 compat/harness.py --env-binary target/debug/sluice-compat-env "$@"
