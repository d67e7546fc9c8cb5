#!/usr/bin/env bash
# Prepares a Debian sid chroot with MySQL 9, the caching_sha2_password-only backend that
# testkit/mysql9.rs runs for Sluice's tests. MySQL 9 comes only from sid, whose C library is
# newer than bookworm's, hence the chroot.
#
#   scripts/mysql9-chroot.sh [ROOT]
#
# ROOT defaults to $SLUICE_MYSQL9_ROOT, else ${SLUICE_CACHE:-$HOME/.cache/sluice}/mysql9-root
# (the same lookup as testkit/mysql9.rs; a ROOT given here reaches the tests only through
# SLUICE_MYSQL9_ROOT). Idempotent: a finished chroot is left alone. The first
# run takes 45-65 s and leaves about 560 MB. Needs root (debootstrap, chroot).
set -euo pipefail

root=${1:-${SLUICE_MYSQL9_ROOT:-${SLUICE_CACHE:-$HOME/.cache/sluice}/mysql9-root}}
# Written last: a directory without it is not a finished chroot.
marker=.sluice-mysql9-ready

die() {
    echo "mysql9-chroot: $*" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    die "needs root for debootstrap and chroot; run: sudo -E $0 $*"
fi

print_version() {
    chroot "$root" /usr/sbin/mysqld --no-defaults --version
}

if [ -f "$root/$marker" ]; then
    print_version
    exit 0
fi

# The Debian mirror this machine already uses (deb822 .sources first, then one-line lists),
# skipping the security archive, which has no sid.
mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' |
        grep -v -- '-security' | head -n 1 || true)
    if [ -z "$uri" ]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }' |
            grep -v -- '-security' | head -n 1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

if ! command -v debootstrap >/dev/null; then
    echo "mysql9-chroot: installing debootstrap" >&2
    # A fresh machine may have no package lists yet.
    apt-get install -y debootstrap || { apt-get update && apt-get install -y debootstrap; }
fi

parent=$(dirname "$root")
mkdir -p "$parent"
# One builder at a time; a second run waits and then finds the finished chroot.
exec 9>"$root.lock"
flock 9
if [ -f "$root/$marker" ]; then
    print_version
    exit 0
fi

# Builds only ever appear at ROOT complete (rename), so anything else there is not ours.
if [ -e "$root" ]; then
    die "$root exists but is not a finished chroot (no $marker); remove it or pick another ROOT"
fi
# Builds cut short by an earlier run (this lock excludes running ones).
rm -rf --one-file-system "$root".tmp.*

build="$root.tmp.$$"
trap 'rm -rf --one-file-system "$build"' EXIT
src=$(mirror)
echo "mysql9-chroot: debootstrap sid from $src into $build" >&2
started=$(date +%s)
debootstrap --variant=minbase --include=mysql-server-core,mysql-client-core \
    sid "$build" "$src"
# The downloaded packages are not needed again.
rm -f "$build"/var/cache/apt/archives/*.deb
chroot "$build" /usr/sbin/mysqld --no-defaults --version >/dev/null ||
    die "mysqld does not run in the new chroot"
touch "$build/$marker"
mv -T "$build" "$root"
trap - EXIT
echo "mysql9-chroot: built $root in $(($(date +%s) - started)) s ($(du -sh "$root" | cut -f1))" >&2
print_version
