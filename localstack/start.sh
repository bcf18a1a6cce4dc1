#!/usr/bin/env bash
# Start LocalStack (Kinesis, Firehose, S3, STS, IAM) on 127.0.0.1:${LOCALSTACK_PORT:-4566} and wait
# until it is ready. Idempotent: if LocalStack already answers on that port, it is reused.
#
# With a Docker engine: docker compose (localstack/docker-compose.yml). Without one: LocalStack's
# Python runtime as a host process, from a venv in .localstack/venv built from
# localstack/requirements.lock (installed once; reinstalled only when the lock changes).
#
# Environment:
#   LOCALSTACK_PORT            gateway port (default 4566); each port is a separate instance
#   LOCALSTACK_START_TIMEOUT   seconds to wait for readiness (default 120)
#   LOCALSTACK_USE_DOCKER      1 = require Docker, 0 = never use Docker (default: use it if it answers)
#   LOCALSTACK_PYTHON          interpreter for the venv (default: python3.11, else python3)
#   KINESIS_ERROR_PROBABILITY, KINESIS_LATENCY, DEBUG, ... are passed through to LocalStack.
#
# Files (host mode), under .localstack/ in the repository:
#   venv/  tools/uv/  localstack[-PORT].log  localstack[-PORT].pid  filesystem[-PORT]/ (state, kinesis-mock)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${LOCALSTACK_PORT:-4566}"
TIMEOUT="${LOCALSTACK_START_TIMEOUT:-120}"
STATE="$ROOT/.localstack"
SUFFIX=""
[[ "$PORT" == 4566 ]] || SUFFIX="-$PORT"
LOG="$STATE/localstack$SUFFIX.log"
PIDFILE="$STATE/localstack$SUFFIX.pid"
DOCKER_MARK="$STATE/localstack$SUFFIX.docker"
FS_ROOT="$STATE/filesystem$SUFFIX"
VENV="$STATE/venv"
LOCK="$ROOT/localstack/requirements.lock"
UV_VERSION="0.13.8"
UV_DIR="$STATE/tools/uv"
HEALTH_URL="http://127.0.0.1:$PORT/_localstack/health"
LAUNCHED=0

die() { echo "localstack/start.sh: $*" >&2; exit 1; }

[[ "$PORT" =~ ^[0-9]+$ ]] || die "LOCALSTACK_PORT must be a number, got '$PORT'"
command -v curl >/dev/null || die "curl is required"

health() { curl -sf --max-time 2 "$HEALTH_URL" 2>/dev/null; }

# Ready when kinesis, firehose and s3 are all "available" or "running".
ready() {
    local body svc
    body="$(health)" || return 1
    for svc in kinesis firehose s3; do
        grep -Eq "\"$svc\": *\"(available|running)\"" <<<"$body" || return 1
    done
}

show_log_tail() {
    if [[ -f "$LOG" ]]; then
        echo "---- last 40 lines of $LOG ----" >&2
        tail -n 40 "$LOG" >&2
        echo "----" >&2
    fi
}

# Is PID a LocalStack runtime process that we started?
is_localstack_pid() {
    local pid="$1"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "localstack.runtime.main"
}

wait_ready() {
    local pid="${1:-}" deadline=$((SECONDS + TIMEOUT))
    until ready; do
        if ((LAUNCHED)) && grep -q "CannotListenError" "$LOG" 2>/dev/null; then
            show_log_tail
            LOCALSTACK_PORT="$PORT" "$ROOT/localstack/stop.sh" || true
            die "LocalStack could not listen on 127.0.0.1:$PORT"
        fi
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail
            rm -f "$PIDFILE"
            die "LocalStack (pid $pid) exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail
            # Do not leave a half-started LocalStack behind that the next start would wait for.
            if ((LAUNCHED)); then
                LOCALSTACK_PORT="$PORT" "$ROOT/localstack/stop.sh" || true
            fi
            die "LocalStack did not become ready on $HEALTH_URL within ${TIMEOUT}s"
        fi
        sleep 1
    done
}

# ---------------------------------------------------------------- venv
# .localstack/venv always has boto3 (for resources.py and scripts/read_stream.py). In host mode it
# holds LocalStack itself (requirements.lock); with Docker only the client side (client.lock).
stamp="$VENV/.installed-lock-sha256"

pick_python() {
    if [[ -n "${LOCALSTACK_PYTHON:-}" ]]; then
        command -v "$LOCALSTACK_PYTHON" || die "LOCALSTACK_PYTHON=$LOCALSTACK_PYTHON not found"
        return
    fi
    local py
    for py in python3.11 python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$py"
            return
        fi
    done
    die "LocalStack needs Python >= 3.11 (python3.11 preferred); set LOCALSTACK_PYTHON"
}

# ensure_venv LOCKFILE: install LOCKFILE into the venv unless that exact lock is installed already.
ensure_venv() {
    local lock="$1" lock_hash
    [[ -f "$lock" ]] || die "missing $lock"
    lock_hash="$(basename "$lock") $(sha256sum "$lock" | cut -d' ' -f1)"
    if [[ -x "$VENV/bin/python" && "$(cat "$stamp" 2>/dev/null || true)" == "$lock_hash" ]]; then
        return 0
    fi
    local python uv install_log="$STATE/install.log"
    mkdir -p "$STATE"
    python="$(pick_python)"
    if [[ "$lock" == "$LOCK" ]]; then
        echo "localstack/start.sh: installing LocalStack into .localstack/venv (first run, about 220 MB)..." >&2
    fi
    : >"$install_log"
    # uv, pinned, installed into the repository's .localstack/tools (no user site, no system change).
    uv="$UV_DIR/bin/uv"
    if ! [[ -x "$uv" ]] || [[ "$("$uv" --version 2>/dev/null)" != "uv $UV_VERSION"* ]]; then
        rm -rf "$UV_DIR"
        if ! "$python" -m pip install --quiet --disable-pip-version-check --no-input \
            --target "$UV_DIR" "uv==$UV_VERSION" >>"$install_log" 2>&1; then
            if command -v uv >/dev/null; then
                uv="$(command -v uv)"
            else
                cat "$install_log" >&2
                die "could not install uv with '$python -m pip' (is pip installed?)"
            fi
        fi
    fi
    export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
    if ! [[ -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
        rm -rf "$VENV"
        "$uv" venv --quiet --python "$python" "$VENV" >>"$install_log" 2>&1 ||
            { cat "$install_log" >&2; die "could not create $VENV"; }
    fi
    rm -f "$stamp"
    VIRTUAL_ENV="$VENV" "$uv" pip sync --quiet --require-hashes --python "$VENV/bin/python" "$lock" \
        >>"$install_log" 2>&1 ||
        { tail -n 40 "$install_log" >&2; die "installing $lock into $VENV failed (log: $install_log)"; }
    echo "$lock_hash" >"$stamp"
}

# Already answering (started by us earlier, by another checkout, or by hand)? Reuse it.
if health >/dev/null; then
    wait_ready
    # The scripts need boto3 even when this LocalStack was not started from here.
    [[ -x "$VENV/bin/python" ]] || ensure_venv "$ROOT/localstack/client.lock"
    exit 0
fi

mkdir -p "$STATE"

# A LocalStack we started may still be booting: wait for it rather than start a second one.
if [[ -f "$PIDFILE" ]]; then
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    if is_localstack_pid "$pid"; then
        wait_ready "$pid"
        exit 0
    fi
    rm -f "$PIDFILE"
fi


# Something else holds the port: LocalStack would fail to bind it and hang, so say so now.
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "127.0.0.1:$PORT is in use by something that is not LocalStack; free it or set LOCALSTACK_PORT"
fi

# ---------------------------------------------------------------- Docker engine
use_docker=0
case "${LOCALSTACK_USE_DOCKER:-auto}" in
    1 | true | yes) use_docker=1 ;;
    0 | false | no) use_docker=0 ;;
    *) if command -v docker >/dev/null && docker info >/dev/null 2>&1; then use_docker=1; fi ;;
esac

if ((use_docker)); then
    ensure_venv "$ROOT/localstack/client.lock"
    export LOCALSTACK_PORT="$PORT"
    docker compose -f "$ROOT/localstack/docker-compose.yml" -p "shipper-localstack-$PORT" up -d --quiet-pull >"$LOG" 2>&1 ||
        { show_log_tail; die "docker compose up failed"; }
    touch "$DOCKER_MARK"
    deadline=$((SECONDS + TIMEOUT))
    until ready; do
        if ((SECONDS >= deadline)); then
            docker compose -f "$ROOT/localstack/docker-compose.yml" -p "shipper-localstack-$PORT" logs --tail 40 >&2 || true
            die "LocalStack container did not become ready on $HEALTH_URL within ${TIMEOUT}s"
        fi
        sleep 1
    done
    exit 0
fi
rm -f "$DOCKER_MARK"

# ---------------------------------------------------------------- host process
ensure_venv "$LOCK"
mkdir -p "$FS_ROOT"
cd "$STATE"
# OVERRIDE_IN_DOCKER=0: this machine may itself be a container; LocalStack must still use host
# mode so its directories (state, kinesis-mock install) live under FILESYSTEM_ROOT.
# Variables already in the environment (KINESIS_ERROR_PROBABILITY, DEBUG, ...) pass through.
env \
    OVERRIDE_IN_DOCKER=0 \
    FILESYSTEM_ROOT="$FS_ROOT" \
    GATEWAY_LISTEN="127.0.0.1:$PORT" \
    LOCALSTACK_HOST="127.0.0.1:$PORT" \
    SERVICES="${SERVICES:-kinesis,firehose,s3,sts,iam}" \
    KINESIS_LATENCY="${KINESIS_LATENCY:-0}" \
    DNS_ADDRESS=0 \
    DISABLE_EVENTS=1 \
    SKIP_SSL_CERT_DOWNLOAD=1 \
    setsid "$VENV/bin/python" -m localstack.runtime.main >"$LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$PIDFILE"
LAUNCHED=1
wait_ready "$pid"
