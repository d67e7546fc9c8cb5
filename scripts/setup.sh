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

# The virtualenv that PyPI tools go into when pip refuses the python3 on the PATH (a Debian
# system Python, PEP 668); its bin directory is put on the PATH whenever it exists.
SLUICE_VENV="${SLUICE_CACHE:-$HOME/.cache/sluice}/venv"
use_venv() {
    if [ -x "$SLUICE_VENV/bin/python3" ]; then
        case ":$PATH:" in
        *":$SLUICE_VENV/bin:"*) ;;
        *) export PATH="$SLUICE_VENV/bin:$PATH" ;;
        esac
    fi
}

# pip_install PACKAGE...: from PyPI into the python3 on the PATH, or, when pip refuses that
# Python, into $SLUICE_VENV (created on first use), whose bin directory then joins the PATH.
pip_install() {
    ensure_apt python3 python3 python3-pip
    use_venv
    if python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null; then
        # A pyenv Python needs new shims for the installed commands.
        if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
        return 0
    fi
    echo "setup: pip refused $(command -v python3); using the virtualenv $SLUICE_VENV"
    if [ ! -x "$SLUICE_VENV/bin/python3" ]; then
        python3 -m venv "$SLUICE_VENV" 2>/dev/null || {
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            rm -rf "$SLUICE_VENV"
            python3 -m venv "$SLUICE_VENV"
        }
    fi
    "$SLUICE_VENV/bin/python3" -m pip install --quiet --disable-pip-version-check "$@"
    use_venv
}

# ensure_moto: moto_server (PyPI `moto[server]`), the local Secrets Manager for the tests.
ensure_moto() {
    use_venv
    if moto_server --help >/dev/null 2>&1; then
        return 0
    fi
    echo "setup: installing moto[server]"
    pip_install 'moto[server]'
    moto_server --help >/dev/null 2>&1 || {
        echo "setup: moto_server still does not run after installing moto[server]" >&2
        return 1
    }
}

# ensure_cleartext_test_plugin: MariaDB's own test plugin that asks clients for their password in
# clear (cleartext_plugin_server in auth_test_plugin.so, from the mariadb-test package of the
# installed server's version). tests/rds_iam.rs logs Sluice in with an RDS IAM token through it,
# as RDS asks IAM users. Only the one file is extracted into the cache (the package's test data
# would be 230 MB).
ensure_cleartext_test_plugin() {
    local dir="${SLUICE_CACHE:-$HOME/.cache/sluice}/mariadb-test-plugin"
    [ -f "$dir/auth_test_plugin.so" ] && return 0
    local version
    version=$(dpkg-query -W -f='${Version}' mariadb-server 2>/dev/null) || {
        echo "setup: mariadb-server is not installed; cannot fetch its test plugin" >&2
        return 1
    }
    echo "setup: fetching MariaDB's test authentication plugin (mariadb-test $version)"
    local work
    work=$(mktemp -d)
    (
        cd "$work"
        apt-get download -q "mariadb-test=$version" >/dev/null 2>&1 || {
            as_root apt-get update -qq
            apt-get download -q "mariadb-test=$version" >/dev/null
        }
        dpkg-deb -x mariadb-test_*.deb extracted
    )
    mkdir -p "$dir"
    cp "$work/extracted/usr/lib/mysql/plugin/auth_test_plugin.so" "$dir/"
    rm -rf "$work"
}

# ensure_cargo_lambda: cargo-lambda and the zig linker it cross-compiles with (both PyPI).
ensure_cargo_lambda() {
    use_venv
    if cargo lambda --version >/dev/null 2>&1 &&
        { command -v zig >/dev/null 2>&1 || python3 -m ziglang version >/dev/null 2>&1; }; then
        return 0
    fi
    echo "setup: installing cargo-lambda and ziglang"
    pip_install cargo-lambda ziglang
    cargo lambda --version >/dev/null 2>&1 || {
        echo "setup: 'cargo lambda' still does not run after installing cargo-lambda" >&2
        return 1
    }
}

# ensure_cargo_fuzz: the nightly toolchain (cargo fuzz needs it; it comes with Rust's own
# installer, not a package registry) and cargo-fuzz (crates.io).
ensure_cargo_fuzz() {
    ensure_rust
    if ! cargo +nightly --version >/dev/null 2>&1; then
        echo "setup: the nightly Rust toolchain is missing; install it with" \
            "'rustup toolchain install nightly --profile minimal' (cargo fuzz needs it)" >&2
        return 1
    fi
    if cargo +nightly fuzz --version >/dev/null 2>&1; then
        return 0
    fi
    echo "setup: installing cargo-fuzz"
    cargo install --locked --quiet cargo-fuzz
}
