#!/usr/bin/env bash
# Regenerate tests/fixtures/celery/worker.log: the log of a real Celery worker (prefork pool,
# concurrency 2, the default log formats, --logfile, --loglevel INFO, kombu's filesystem://
# broker) running the 80 tasks of scripts/celery_fixture/tasks.py.
#
# Celery comes from scripts/celery_fixture/requirements.lock (pinned, hashed), installed into
# .tools/celery-venv (git-ignored) by scripts/celery-venv.sh, once; a changed lock reinstalls it.
#
# Task ids are fixed, so a new fixture holds the same records as the old one; timestamps, pool
# process numbers and the interleaving of the two processes differ. Paths in tracebacks are
# rewritten to /app/... so the file does not depend on where the repository lives.
#
# Environment: CELERY_FIXTURE_PYTHON (default python3.11; Python 3.11 prints the caret lines
# the fixture needs), CELERY_FIXTURE_TIMEOUT (seconds to wait for the tasks, default 120).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
app_dir="$root/scripts/celery_fixture"
out="$root/tests/fixtures/celery/worker.log"
timeout="${CELERY_FIXTURE_TIMEOUT:-120}"

log() { printf 'celery-fixture: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

venv="$("$root/scripts/celery-venv.sh")"
"$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    die "$venv is not Python 3.11: the fixture needs 3.11's traceback caret lines"

work="$(mktemp -d)"
worker_pid=""
cleanup() {
    if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
        kill -TERM "$worker_pid" 2>/dev/null || true
        wait "$worker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

export FIXTURE_BROKER_DIR="$work/broker" PYTHONDONTWRITEBYTECODE=1
mkdir -p "$FIXTURE_BROKER_DIR"
worker_log="$work/worker.log"

# Queue first, then start the worker: it finds 80 tasks waiting, as after a deploy.
(cd "$app_dir" && "$venv/bin/python" tasks.py send)
(cd "$app_dir" && exec "$venv/bin/celery" -A tasks worker --pool prefork --concurrency 2 \
    --hostname w1@fixture --loglevel INFO --logfile "$worker_log" --without-mingle \
    --without-gossip --without-heartbeat) >"$work/stdout.log" 2>&1 &
worker_pid=$!

# Every task ends with one "succeeded in" or "raised unexpected" line.
expected="$("$venv/bin/python" -c 'import sys; sys.path.insert(0, sys.argv[1]); import tasks; print(tasks.TASKS)' "$app_dir")"
deadline=$((SECONDS + timeout))
done_count() { grep -cE '\] Task tasks\.[a-z_]+\[[0-9a-f-]+\] (succeeded in|raised unexpected)' "$worker_log" 2>/dev/null || true; }
until [[ "$(done_count)" -ge "$expected" ]]; do
    kill -0 "$worker_pid" 2>/dev/null || { cat "$work/stdout.log" >&2; die "the worker exited early"; }
    ((SECONDS < deadline)) || die "only $(done_count) of $expected tasks finished within ${timeout}s"
    sleep 0.5
done
kill -TERM "$worker_pid"
wait "$worker_pid" || true
worker_pid=""

# Paths in tracebacks: the venv's site-packages and the app, as a container image would have them.
mkdir -p "$(dirname "$out")"
"$venv/bin/python" - "$worker_log" "$out" "$venv" "$app_dir" <<'PY'
import sys

source, target, venv, app_dir = sys.argv[1:]
data = open(source, "rb").read()
data = data.replace(venv.encode() + b"/", b"/app/.venv/")
data = data.replace(app_dir.encode() + b"/", b"/app/")
open(target, "wb").write(data)
PY
log "wrote $out ($(wc -l <"$out") lines, $(wc -c <"$out") bytes)"
