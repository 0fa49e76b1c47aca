#!/usr/bin/env bash
# Installs what tests/compat/run.sh needs on Debian 12 (run as root; apt, PyPI
# and npm reachable): curl, wget, git (with git-http-backend), openssl,
# python3 with pip and `requests`, a Java 17+ JDK (the single-file source
# launcher needs the compiler, so a JRE is not enough), node and npm.
#
# Idempotent: installs only what is missing and prints one line per action;
# apt's own output goes to a log that is shown only if apt fails.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
python="${PYTHON:-python3}"
log="$(mktemp "${TMPDIR:-/tmp}/compat-install.XXXXXX")"
trap 'rm -f "$log"' EXIT

have() { command -v "$1" >/dev/null 2>&1; }

apt_updated=""
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "install.sh: need root to apt-get install $*" >&2
        exit 1
    fi
    if [[ -z "$apt_updated" ]]; then
        apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
        apt_updated=1
    fi
    echo "install.sh: apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
}

pkgs=()
have curl || pkgs+=(curl)
have wget || pkgs+=(wget)
have git || pkgs+=(git)
have openssl || pkgs+=(openssl)
have "$python" || pkgs+=(python3)
# The test CA is private, but pip/npm/git still want a CA bundle to exist.
[[ -e /etc/ssl/certs/ca-certificates.crt ]] || pkgs+=(ca-certificates)

java_ok() {
    have java && have javac || return 1
    local v
    v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
    [[ -n "$v" && "$v" -ge 17 ]]
}
java_ok || pkgs+=(openjdk-17-jdk-headless)

if ! have node; then
    pkgs+=(nodejs)
    have npm || pkgs+=(npm)
elif ! have npm; then
    pkgs+=(npm)
fi

((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"

# pip and requests go with the python3 the driver runs: Debian's packages
# when that is the system python (PEP 668 forbids pip installing into it),
# pip otherwise (a virtualenv, pyenv, ...).
system_python=""
[[ "$(readlink -f "$(command -v "$python")")" == /usr/bin/python3* ]] && system_python=1

if ! "$python" -m pip --version >/dev/null 2>&1; then
    if [[ -n "$system_python" ]]; then
        apt_install python3-pip
    else
        echo "install.sh: $python -m ensurepip"
        "$python" -m ensurepip --upgrade >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    fi
fi
if ! "$python" -c 'import requests' >/dev/null 2>&1; then
    if [[ -n "$system_python" ]]; then
        apt_install python3-requests
    else
        echo "install.sh: $python -m pip install requests"
        "$python" -m pip install -q --disable-pip-version-check requests >"$log" 2>&1 \
            || { cat "$log" >&2; exit 1; }
    fi
fi

if [[ ! -x "$(git --exec-path)/git-http-backend" ]]; then
    echo "install.sh: git-http-backend missing from $(git --exec-path) (reinstall git)" >&2
    exit 1
fi

echo "install.sh: ok ($(curl --version | head -1 | cut -d' ' -f1-2), $(wget --version | head -1 | cut -d' ' -f1-3)," \
    "$(git --version), java $(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -1)," \
    "node $(node --version), npm $(npm --version), $("$python" -c 'import requests, sys; print("python %d.%d, requests %s" % (sys.version_info[0], sys.version_info[1], requests.__version__))'))"
