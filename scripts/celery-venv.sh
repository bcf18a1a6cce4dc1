#!/usr/bin/env bash
# Make sure .tools/celery-venv (git-ignored) holds Celery from scripts/celery_fixture/
# requirements.lock (pinned, hashed), installing it when it is missing or the lock changed, and
# print the venv's directory. Used by scripts/celery-fixture.sh and scripts/celery-socket.sh.
#
# The venv is built with Python 3.11 (CELERY_FIXTURE_PYTHON, default python3.11): the fixture
# needs 3.11's traceback caret lines. Regenerate the lock with
# `uv pip compile --universal --python-version 3.11 --generate-hashes --no-header
#  requirements.in -o requirements.lock` in scripts/celery_fixture.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lock="$root/scripts/celery_fixture/requirements.lock"
venv="$root/.tools/celery-venv"
stamp="$venv/.installed-lock-sha256"
python="${CELERY_FIXTURE_PYTHON:-python3.11}"

log() { printf 'celery-venv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

lock_hash="$(sha256sum "$lock" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/celery" || "$(cat "$stamp" 2>/dev/null || true)" != "$lock_hash" ]]; then
    command -v "$python" >/dev/null || die "$python not found (set CELERY_FIXTURE_PYTHON)"
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
        die "$python is not Python 3.11: the fixture needs 3.11's traceback caret lines"
    log "installing Celery into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$venv/bin/python" -m pip install --quiet \
        --require-hashes --no-deps -r "$lock"
    printf '%s\n' "$lock_hash" >"$stamp"
fi
printf '%s\n' "$venv"
