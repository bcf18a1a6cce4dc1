#!/usr/bin/env bash
# End-to-end demo: Celery-style log lines written to a file arrive in a Kinesis stream, and
# `shipper consume` forwards them through Firehose into S3.
#
#   1. builds the shipper (cargo build), starts LocalStack (localstack/start.sh) unless it runs;
#   2. creates the stream demo-logs with 2 shards (recreated, so the counts below are this run's);
#   3. writes half of DEMO_LINES (default 200) Celery log lines to a temporary worker.log, starts
#      `shipper tail` on it from the beginning, and appends the other half while it runs;
#   4. waits (up to DEMO_TIMEOUT, default 90 s) until the stream holds a record per line,
#      stops the shipper with SIGTERM, and shows what arrived;
#   5. runs `shipper consume` from the stream into the Firehose delivery stream demo-archive
#      (Direct PUT, to the S3 bucket demo-archive; both recreated), waits until S3 holds a line
#      per record, stops it with SIGTERM and prints what landed in S3;
#   6. stops LocalStack again if it started it, and removes the temporary directory.
#
# SHIPPER_BIN=path uses that binary instead of building target/debug/shipper.
# Exit status: 0 when every line arrived and the shipper stopped cleanly (exit 0), 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STREAM="demo-logs"
SHARDS=2
LINES="${DEMO_LINES:-200}"
TIMEOUT="${DEMO_TIMEOUT:-90}"
PORT="${LOCALSTACK_PORT:-4566}"
ENDPOINT="http://127.0.0.1:$PORT"
REGION="us-east-1"
PY="$ROOT/.localstack/venv/bin/python"
SHIPPER="${SHIPPER_BIN:-$ROOT/target/debug/shipper}"

step() { printf '==> %s\n' "$*"; }
fail() { printf 'demo: %s\n' "$*" >&2; exit 1; }

TMP=""
SHIPPER_PID=""
CONSUMER_PID=""
ARCHIVE="demo-archive"
STARTED_LOCALSTACK=0
KEEP_TMP=0

cleanup() {
    local status=$?
    set +e
    for pid in "$SHIPPER_PID" "$CONSUMER_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done
    if ((STARTED_LOCALSTACK)); then
        step "stopping LocalStack (the demo started it)"
        "$ROOT/localstack/stop.sh"
    fi
    if [[ -n "$TMP" ]]; then
        if ((status != 0 || KEEP_TMP)); then
            echo "demo: files kept for inspection in $TMP" >&2
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_shipper_log() {
    if [[ -s "$TMP/shipper.log" ]]; then
        echo "---- last 30 lines of the shipper's log ($TMP/shipper.log) ----" >&2
        tail -n 30 "$TMP/shipper.log" >&2
        echo "----" >&2
    fi
}

if [[ -z "${SHIPPER_BIN:-}" ]]; then
    step "building the shipper (cargo build)"
    cargo build --quiet || fail "cargo build failed"
fi
[[ -x "$SHIPPER" ]] || fail "no shipper binary at $SHIPPER"

if curl -sf --max-time 2 "$ENDPOINT/_localstack/health" >/dev/null 2>&1; then
    step "LocalStack already running on $ENDPOINT (it will be left running)"
else
    step "starting LocalStack on $ENDPOINT (the first run installs it, a few minutes)"
    STARTED_LOCALSTACK=1
fi
"$ROOT/localstack/start.sh"

step "creating stream $STREAM with $SHARDS shards"
"$PY" "$ROOT/localstack/resources.py" --endpoint-url "$ENDPOINT" delete-stream "$STREAM"
"$PY" "$ROOT/localstack/resources.py" --endpoint-url "$ENDPOINT" stream "$STREAM" --shards "$SHARDS"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/shipper-demo.XXXXXX")"
LOG="$TMP/worker.log"
FIRST=$((LINES / 2))

step "writing $FIRST Celery log lines to $LOG"
"$ROOT/scripts/demo_writer.py" "$LOG" --lines "$FIRST" --tracebacks 1 --seed 1 --rate 0 --quiet

step "starting: shipper tail $LOG --stream $STREAM --read-from beginning --format celery"
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION="$REGION" \
    "$SHIPPER" tail "$LOG" --stream "$STREAM" --endpoint-url "$ENDPOINT" --region "$REGION" \
    --data-dir "$TMP/data" --read-from beginning --format celery >"$TMP/shipper.log" 2>&1 &
SHIPPER_PID=$!

step "appending $((LINES - FIRST)) more lines while it runs"
"$ROOT/scripts/demo_writer.py" "$LOG" --lines "$((LINES - FIRST))" --tracebacks 1 --seed 2 --rate 50 --quiet

lines=$(wc -l <"$LOG")
events=$(grep -c '^\[' "$LOG" || true)
step "waiting up to ${TIMEOUT}s for $lines records in $STREAM ($lines lines, $events log events)"
deadline=$((SECONDS + TIMEOUT))
count=0
last=-1
stable_since=$SECONDS
while :; do
    if ! kill -0 "$SHIPPER_PID" 2>/dev/null; then
        code=0
        wait "$SHIPPER_PID" || code=$?
        SHIPPER_PID=""
        show_shipper_log
        fail "the shipper exited early with status $code"
    fi
    count=$("$PY" "$ROOT/scripts/read_stream.py" "$STREAM" --endpoint-url "$ENDPOINT" --count) ||
        fail "could not read stream $STREAM"
    ((count >= lines)) && break
    if ((count != last)); then
        last=$count
        stable_since=$SECONDS
    elif ((count == events && SECONDS - stable_since >= 10)); then
        # The shipper joined each traceback into the record of the line above it.
        break
    fi
    if ((SECONDS >= deadline)); then
        show_shipper_log
        fail "only $count of $lines records arrived within ${TIMEOUT}s"
    fi
    sleep 2
done

step "stopping the shipper (SIGTERM)"
kill -TERM "$SHIPPER_PID"
code=0
wait "$SHIPPER_PID" || code=$?
SHIPPER_PID=""
echo "    shipper exited with status $code"

step "what arrived in $STREAM"
"$PY" "$ROOT/scripts/read_stream.py" "$STREAM" --endpoint-url "$ENDPOINT" --head 3 | sed 's/^/    /'

step "creating the Firehose delivery stream $ARCHIVE (Direct PUT) and its S3 bucket"
"$PY" "$ROOT/localstack/resources.py" --endpoint-url "$ENDPOINT" delete-firehose "$ARCHIVE" --bucket "$ARCHIVE"
"$PY" "$ROOT/localstack/resources.py" --endpoint-url "$ENDPOINT" firehose "$ARCHIVE" --bucket "$ARCHIVE"

step "starting: shipper consume --stream $STREAM --delivery-stream $ARCHIVE"
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION="$REGION" \
    "$SHIPPER" consume --stream "$STREAM" --delivery-stream "$ARCHIVE" --endpoint-url "$ENDPOINT" \
    --firehose-endpoint-url "$ENDPOINT" --region "$REGION" --data-dir "$TMP/consume" \
    >"$TMP/consumer.log" 2>&1 &
CONSUMER_PID=$!

step "waiting up to ${TIMEOUT}s for $count lines in s3://$ARCHIVE"
deadline=$((SECONDS + TIMEOUT))
while :; do
    if ! kill -0 "$CONSUMER_PID" 2>/dev/null; then
        tail -n 30 "$TMP/consumer.log" >&2
        fail "shipper consume exited early"
    fi
    "$PY" "$ROOT/localstack/resources.py" --endpoint-url "$ENDPOINT" cat-bucket "$ARCHIVE" >"$TMP/archive.txt"
    landed=$(wc -l <"$TMP/archive.txt")
    ((landed >= count)) && break
    if ((SECONDS >= deadline)); then
        tail -n 30 "$TMP/consumer.log" >&2
        fail "only $landed of $count lines landed in S3 within ${TIMEOUT}s"
    fi
    sleep 2
done

step "stopping shipper consume (SIGTERM)"
kill -TERM "$CONSUMER_PID"
consumer_code=0
wait "$CONSUMER_PID" || consumer_code=$?
CONSUMER_PID=""
echo "    shipper consume exited with status $consumer_code"

step "what landed in s3://$ARCHIVE (one record per line; first 3 of $landed)"
# From the file the wait read: a pipe into head would close before the bucket's contents were all
# written, and fail the demo with a broken pipe once they outgrow the pipe's buffer.
head -n 3 "$TMP/archive.txt" | cut -c 1-200 | sed 's/^/    /'

ok=1
if ((consumer_code != 0)); then
    tail -n 30 "$TMP/consumer.log" >&2
    echo "demo: shipper consume did not stop cleanly (status $consumer_code)" >&2
    ok=0
fi
if ((count > lines)); then
    echo "demo: note: $count records for $lines lines: some were sent twice (at-least-once delivery)"
fi
if ((code != 0)); then
    show_shipper_log
    echo "demo: the shipper did not stop cleanly (status $code)" >&2
    ok=0
fi
((ok)) || exit 1
if ((count == lines)); then
    echo "demo: OK: all $lines lines arrived as $count records, and $landed lines in S3"
else
    echo "demo: OK: all $lines lines arrived ($count records), and $landed lines in S3"
fi
