#!/usr/bin/env bash
# mysql_async's own tests (its library's unit tests and tests/generic.rs), as cargo built them
# from the crate's published source. Run inside sluice-compat-env.
#
# COMPAT_BINARIES lists "NAME PATH" per test binary; each binary's libtest output goes to
# $COMPAT_OUT/libtest-NAME.log. COMPRESS=1 in the environment turns on compression (the
# crate's own switch). Every test runs in both scopes: the suite takes well under a minute.
set -uo pipefail
cd "$COMPAT_SRC"
# prefer_socket=false: on loopback mysql_async would otherwise ask for @@socket and reconnect
# over the server's unix socket, around Sluice.
export DATABASE_URL="mysql://$COMPAT_USER:$COMPAT_PASSWORD@$COMPAT_HOST:$COMPAT_PORT/mysql?prefer_socket=false"
export RUST_BACKTRACE=0
status=0
while read -r name path; do
    filters=()
    if [ -n "${COMPAT_ONLY:-}" ]; then
        # Ids are the bare test path for the library, "tests/NAME::path" for integration tests.
        while read -r id; do
            if [ "$name" = lib ]; then
                [[ "$id" == tests/* ]] || filters+=("$id")
            elif [[ "$id" == "tests/$name::"* ]]; then
                filters+=("${id#"tests/$name::"}")
            fi
        done <"$COMPAT_ONLY"
        [ ${#filters[@]} -gt 0 ] || continue
        filters=(--exact "${filters[@]}")
    fi
    "$path" --test-threads=2 "${filters[@]}" >"$COMPAT_OUT/libtest-$name.log" 2>&1 || status=1
done <"$COMPAT_BINARIES"
exit $status
