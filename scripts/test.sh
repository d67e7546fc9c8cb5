#!/usr/bin/env bash
# README command two (and what CI runs): installs what the tests need, then runs all of them:
# formatting, lints, unit and end-to-end tests, and a build of the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_rust
ensure_apt mariadbd mariadb-server mariadb-client
ensure_apt mariadb mariadb-client
ensure_apt sysbench sysbench
ensure_apt haproxy haproxy
ensure_pymysql
ensure_moto
ensure_cargo_lambda
ensure_cleartext_test_plugin
# MySQL 9 (caching_sha2_password backend) lives in a cached Debian sid chroot.
as_root env SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}" scripts/mysql9-chroot.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# Drivers' own published test suites, directly and through Sluice: the default subset, a few
# minutes (compat/README.md; `compat/run.sh --full` runs everything).
compat/run.sh
# The benchmarks are run by hand (cargo bench); here they only have to build.
cargo bench --no-run
# Every fuzz target for a bounded time (SLUICE_FUZZ_SECONDS, default 15 s each).
scripts/fuzz.sh
infra/test.sh
