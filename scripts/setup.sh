# Shared by scripts/demo.sh and scripts/test.sh: install what is missing, and nothing else.
# Sourced, not run.

# Runs a command as root (directly, or through sudo when there is one).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E "$@"
    else
        echo "setup: '$*' needs root and there is no sudo" >&2
        return 1
    fi
}

# ensure_apt COMMAND PACKAGE...: installs the Debian packages unless COMMAND is on the PATH
# (also looking in /usr/sbin, where mariadbd lives).
ensure_apt() {
    local cmd=$1
    shift
    if command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ]; then
        return 0
    fi
    echo "setup: installing $* (for $cmd)"
    if [ -z "${SLUICE_APT_UPDATED:-}" ]; then
        as_root apt-get update -qq
        SLUICE_APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ensure_rust: cargo must exist; it cannot be fetched from the package registries here.
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "setup: cargo is missing; install Rust (https://rustup.rs), version 1.85 or newer" >&2
        return 1
    fi
}

# ensure_pymysql: PyMySQL for the python3 on the PATH, from PyPI, or from Debian when pip
# refuses to touch a system Python.
ensure_pymysql() {
    ensure_apt python3 python3 python3-pip
    if python3 -c 'import pymysql' >/dev/null 2>&1; then
        return 0
    fi
    echo "setup: installing PyMySQL"
    python3 -m pip install --quiet PyMySQL 2>/dev/null ||
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pymysql >/dev/null
    python3 -c 'import pymysql' || {
        echo "setup: PyMySQL is still not importable by $(command -v python3)" >&2
        return 1
    }
}
