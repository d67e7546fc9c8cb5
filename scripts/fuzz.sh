#!/usr/bin/env bash
# Runs every cargo fuzz target in fuzz/ for a bounded time each, from its seed corpus
# (fuzz/corpus/TARGET). CI (scripts/test.sh) runs each for SLUICE_FUZZ_SECONDS (default 15);
# a long run by hand: SLUICE_FUZZ_SECONDS=3600 scripts/fuzz.sh [TARGET...]
# cargo fuzz needs the nightly toolchain and cargo-fuzz (crates.io); both are checked for,
# and a missing one fails with how to install it. No sanitizer: the code is safe Rust, and the
# fuzzers look for panics, hangs and runaway memory, which need none (builds are much faster).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_cargo_fuzz
seconds="${SLUICE_FUZZ_SECONDS:-15}"
cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# One build for all targets; each then runs from a scratch copy of its seeds, so the
# committed corpus only changes on purpose.
cargo +nightly fuzz build --sanitizer none --debug-assertions
for t in "${targets[@]}"; do
    work="$(mktemp -d)"
    cp -r "corpus/$t/." "$work/"
    log="$work.log"
    status=0
    cargo +nightly fuzz run --sanitizer none --debug-assertions "$t" "$work" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=25 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    runs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "fuzz: $t ran ${runs:-0} inputs in ${seconds}s"
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
        echo "fuzz: target $t failed (the input is in fuzz/artifacts/$t)" >&2
        rm -rf "$work" "$log"
        exit "$status"
    fi
    rm -rf "$work" "$log"
done
