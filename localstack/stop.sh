#!/usr/bin/env bash
# Stop the LocalStack that localstack/start.sh started on 127.0.0.1:${LOCALSTACK_PORT:-4566}.
# Idempotent: nothing running is not an error. A LocalStack this script did not start (no pid
# file, no compose marker) is left alone.
#
# Environment: LOCALSTACK_PORT (default 4566), LOCALSTACK_STOP_TIMEOUT (seconds before SIGKILL, default 20).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${LOCALSTACK_PORT:-4566}"
TIMEOUT="${LOCALSTACK_STOP_TIMEOUT:-20}"
STATE="$ROOT/.localstack"
SUFFIX=""
[[ "$PORT" == 4566 ]] || SUFFIX="-$PORT"
PIDFILE="$STATE/localstack$SUFFIX.pid"
DOCKER_MARK="$STATE/localstack$SUFFIX.docker"

if [[ -f "$DOCKER_MARK" ]]; then
    LOCALSTACK_PORT="$PORT" docker compose -f "$ROOT/localstack/docker-compose.yml" \
        -p "shipper-localstack-$PORT" down --volumes --timeout "$TIMEOUT" >/dev/null 2>&1 ||
        { echo "localstack/stop.sh: docker compose down failed" >&2; exit 1; }
    rm -f "$DOCKER_MARK"
    exit 0
fi

[[ -f "$PIDFILE" ]] || exit 0
pid="$(cat "$PIDFILE" 2>/dev/null || true)"

# Only signal the process if it still is the LocalStack we started (pids get reused).
if [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "localstack.runtime.main"; then
    # Its helpers (kinesis-mock under node) run in sessions of their own: note them now, so
    # that none outlives it if it has to be killed.
    descendants() {
        local child
        for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
            echo "$child"
            descendants "$child"
        done
    }
    helpers="$(descendants "$pid" | tr '\n' ' ')"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "localstack/stop.sh: LocalStack (pid $pid) ignored SIGTERM for ${TIMEOUT}s; killing it" >&2
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    # Whatever is left of its process group and its helpers goes too.
    kill -TERM -- "-$pid" 2>/dev/null || true
    for helper in $helpers; do
        kill -TERM "$helper" 2>/dev/null || true
    done
fi
rm -f "$PIDFILE"
