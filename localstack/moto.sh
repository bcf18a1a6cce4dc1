#!/usr/bin/env bash
# Install moto's server (the DynamoDB API the lease tests use) into .localstack/moto-venv from
# localstack/moto.lock (hashes required; reinstalled only when the lock changes), and print the
# path of its `moto_server` program. The tests start it themselves, one per test on a free port:
#
#   "$(localstack/moto.sh)" -H 127.0.0.1 -p PORT
#
# Why moto rather than LocalStack's DynamoDB: see localstack/DYNAMODB.md.
#
# Environment:
#   MOTO_PYTHON   interpreter for the venv (default: python3.11, else python3 >= 3.9)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.localstack"
VENV="$STATE/moto-venv"
LOCK="$ROOT/localstack/moto.lock"
UV_VERSION="0.13.8"
UV_DIR="$STATE/tools/uv"
STAMP="$VENV/.installed-lock-sha256"
INSTALL_LOG="$STATE/moto-install.log"

die() { echo "localstack/moto.sh: $*" >&2; exit 1; }

pick_python() {
    if [[ -n "${MOTO_PYTHON:-}" ]]; then
        command -v "$MOTO_PYTHON" || die "MOTO_PYTHON=$MOTO_PYTHON not found"
        return
    fi
    local py
    for py in python3.11 python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
            command -v "$py"
            return
        fi
    done
    die "moto needs Python >= 3.9; set MOTO_PYTHON"
}

[[ -f "$LOCK" ]] || die "missing $LOCK"
lock_hash="$(sha256sum "$LOCK" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/moto_server" && "$(cat "$STAMP" 2>/dev/null || true)" == "$lock_hash" ]]; then
    echo "$VENV/bin/moto_server"
    exit 0
fi

mkdir -p "$STATE"
# Two test binaries may install at once: one installs, the other waits for it.
exec 9>"$STATE/moto-install.lock"
flock 9
if [[ -x "$VENV/bin/moto_server" && "$(cat "$STAMP" 2>/dev/null || true)" == "$lock_hash" ]]; then
    echo "$VENV/bin/moto_server"
    exit 0
fi
echo "localstack/moto.sh: installing moto's server into .localstack/moto-venv..." >&2
python="$(pick_python)"
: >"$INSTALL_LOG"
uv="$UV_DIR/bin/uv"
if ! [[ -x "$uv" ]] || [[ "$("$uv" --version 2>/dev/null)" != "uv $UV_VERSION"* ]]; then
    rm -rf "$UV_DIR"
    "$python" -m pip install --quiet --disable-pip-version-check --no-input \
        --target "$UV_DIR" "uv==$UV_VERSION" >>"$INSTALL_LOG" 2>&1 ||
        { cat "$INSTALL_LOG" >&2; die "could not install uv with '$python -m pip' (is pip installed?)"; }
fi
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
if ! [[ -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    rm -rf "$VENV"
    "$uv" venv --quiet --python "$python" "$VENV" >>"$INSTALL_LOG" 2>&1 ||
        { cat "$INSTALL_LOG" >&2; die "could not create $VENV"; }
fi
rm -f "$STAMP"
VIRTUAL_ENV="$VENV" "$uv" pip sync --quiet --require-hashes --python "$VENV/bin/python" "$LOCK" \
    >>"$INSTALL_LOG" 2>&1 ||
    { tail -n 40 "$INSTALL_LOG" >&2; die "installing $LOCK failed (log: $INSTALL_LOG)"; }
[[ -x "$VENV/bin/moto_server" ]] || die "no moto_server in $VENV after the install"
echo "$lock_hash" >"$STAMP"
echo "$VENV/bin/moto_server"
