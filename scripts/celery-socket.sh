#!/usr/bin/env bash
# Run the Celery example of examples/celery-socket against a socket input:
#
#   scripts/celery-socket.sh SOCKET_PATH OUT_DIR
#
# A real Celery worker (prefork pool, concurrency 2, kombu's filesystem:// broker in OUT_DIR,
# --loglevel INFO) with the example's logging: a SocketHandler to SOCKET_PATH (a unix stream
# socket, or @NAME for an abstract name) and the filter that adds task_id and task_name. It runs
# CELERY_SOCKET_TASKS tasks (default 9: a third log at INFO, a third log with `extra`, a third
# raise) with fixed task ids, waits until the worker has finished every one, stops the worker
# with SIGTERM (a warm shutdown) and prints the task ids, one per line, on standard output.
# Everything else goes to standard error; the worker's own log file (the same records, in
# Celery's text format) is left in OUT_DIR/worker.log, and the ids in OUT_DIR/task-ids.txt.
#
# Something must listen on SOCKET_PATH first (e.g. `shipper tail --socket unix://SOCKET_PATH
# --stdout`): records logged while nothing listens are dropped by SocketHandler.
#
# Celery comes from scripts/celery_fixture/requirements.lock, installed into .tools/celery-venv by
# scripts/celery-venv.sh (the venv scripts/celery-fixture.sh uses). Environment:
# CELERY_SOCKET_TASKS (task count), CELERY_SOCKET_TIMEOUT (seconds to wait for the tasks,
# default 120).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
app_dir="$root/examples/celery-socket"
tasks="${CELERY_SOCKET_TASKS:-9}"
timeout="${CELERY_SOCKET_TIMEOUT:-120}"

log() { printf 'celery-socket: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 SOCKET_PATH OUT_DIR"
[[ "$tasks" =~ ^[1-9][0-9]*$ ]] || die "CELERY_SOCKET_TASKS must be a positive number, not $tasks"
socket_path="$1"
mkdir -p "$2"
out_dir="$(cd "$2" && pwd)"

venv="$("$root/scripts/celery-venv.sh")"

export LOG_SHIPPER_SOCKET="$socket_path" BROKER_DIR="$out_dir/broker" CELERY_BROKER_URL="filesystem://" \
    PYTHONDONTWRITEBYTECODE=1
rm -rf "$BROKER_DIR"
mkdir -p "$BROKER_DIR/control"
worker_log="$out_dir/worker.log"
: >"$worker_log"

worker_pid=""
cleanup() {
    if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
        kill -TERM "$worker_pid" 2>/dev/null || true
        wait "$worker_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# Queue first, then start the worker: it finds the tasks waiting, as after a deploy.
(cd "$app_dir" && "$venv/bin/python" tasks.py send "$tasks") >"$out_dir/task-ids.txt"
(cd "$app_dir" && exec "$venv/bin/celery" -A tasks worker --pool prefork --concurrency 2 \
    --hostname "w1@celery-socket" --loglevel INFO --logfile "$worker_log" --without-mingle \
    --without-gossip --without-heartbeat) >"$out_dir/worker.stdout" 2>&1 &
worker_pid=$!

# Every task ends with one "succeeded in" or "raised unexpected" line.
deadline=$((SECONDS + timeout))
done_count() { grep -cE '\] Task tasks\.[a-z_]+\[[0-9a-f-]+\] (succeeded in|raised unexpected)' "$worker_log" || true; }
until [[ "$(done_count)" -ge "$tasks" ]]; do
    kill -0 "$worker_pid" 2>/dev/null || { cat "$out_dir/worker.stdout" >&2; die "the worker exited early"; }
    ((SECONDS < deadline)) || die "only $(done_count) of $tasks tasks finished within ${timeout}s"
    sleep 0.2
done
kill -TERM "$worker_pid"
wait "$worker_pid" || die "the worker's warm shutdown failed (exit status $?)"
worker_pid=""

log "$tasks tasks done; worker log in $worker_log"
cat "$out_dir/task-ids.txt"
