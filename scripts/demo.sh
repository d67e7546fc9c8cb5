#!/usr/bin/env bash
# README command one: Sluice in front of a private MariaDB, a burst of Lambda-like sessions
# multiplexed onto a small pool, then Sluice stays up for you to connect to.
# Arguments go to the demo (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_rust
ensure_apt mariadbd mariadb-server mariadb-client
ensure_apt mariadb mariadb-client
cargo build --release -p sluice -p sluice-testkit --bin sluice --bin sluice-demo
exec target/release/sluice-demo "$@"
