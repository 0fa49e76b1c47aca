#!/usr/bin/env bash
# Client compatibility matrix: drives real clients (curl, requests, urllib,
# pip, git, npm, Java 17, wget) through a running authgate to origins on
# loopback and writes tests/compat/MATRIX.md. Exits non-zero on any failure
# or on a missing client (install them with tests/compat/install.sh).
#
# Builds nothing: uses target/debug/authgate, or $AUTHGATE_BIN.
#   tests/compat/run.sh                    # all clients
#   tests/compat/run.sh --only curl,git    # some of them (the matrix then has only those rows)
#   tests/compat/run.sh --matrix /tmp/M.md # write the matrix elsewhere
# COMPAT_KEEP_TMP=1 keeps the temp dir (configs, certs, logs) for a post-mortem.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export AUTHGATE_BIN="${AUTHGATE_BIN:-$repo/target/debug/authgate}"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "compat: $python not found (install with tests/compat/install.sh)" >&2
    exit 2
fi
if [[ ! -x "$AUTHGATE_BIN" ]]; then
    echo "compat: no authgate binary at $AUTHGATE_BIN (run 'cargo build' first or set AUTHGATE_BIN)" >&2
    exit 2
fi

COMPAT_TMP="$(mktemp -d "${TMPDIR:-/tmp}/authgate-compat.XXXXXX")"
export COMPAT_TMP

driver=""
cleanup() {
    local rc=$?
    trap - INT TERM
    # The driver stops what it started; if it is still running (we were
    # signalled), stop it first, then every PID it recorded, one a line.
    if [[ -n "$driver" ]] && kill -0 "$driver" 2>/dev/null; then
        kill "$driver" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$driver" 2>/dev/null || break
            sleep 0.5
        done
    fi
    if [[ -f "$COMPAT_TMP/pids" ]]; then
        while read -r pid; do
            [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
        done <"$COMPAT_TMP/pids"
    fi
    if [[ -n "${COMPAT_KEEP_TMP:-}" || $rc -ne 0 ]]; then
        echo "compat: temp dir kept: $COMPAT_TMP" >&2
    else
        rm -rf "$COMPAT_TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# In the background and waited for, so that a signal runs the trap at once.
"$python" "$here/compat.py" "$@" &
driver=$!
wait "$driver"
