"""The Celery app behind tests/fixtures/celery/worker.log (run by scripts/celery-fixture.sh).

Its tasks log what a parser of Celery logs meets in production: single lines at INFO, WARNING and
ERROR, Korean and emoji, ~50 KiB lines, a three-line message, `logger.exception` tracebacks (one
chained, with its blank lines) and unhandled errors that Celery logs with Python 3.11 caret lines.

Markers for the tests: every log call of task N has `mk=fx-N` in its first line, and a log call
that spans several lines ends with ` tail=fx-N`, so a test can check that a record holds exactly
one log call without knowing the file's line numbers.

`python tasks.py send` queues the tasks with fixed ids (`task_id(n)`), so a regenerated fixture
has the same records; only timestamps, pool process numbers and the interleaving differ.
"""

import os
import sys
import uuid

from celery import Celery
from celery.utils.log import get_task_logger

BROKER_DIR = os.environ.get("FIXTURE_BROKER_DIR", "/tmp/celery-fixture-broker")

app = Celery("tasks", broker="filesystem://")
app.conf.update(
    broker_transport_options={
        "data_folder_in": BROKER_DIR,
        "data_folder_out": BROKER_DIR,
        "control_folder": os.path.join(BROKER_DIR, "control"),
        "store_processed": False,
    },
    # One task at a time per pool process, so the two processes interleave as in production.
    worker_prefetch_multiplier=1,
    task_acks_late=False,
)

logger = get_task_logger(__name__)

# The namespace of the fixture's task ids: task N is uuid5(NAMESPACE, "task-N").
NAMESPACE = uuid.UUID("6f1c1a52-3d0e-4c43-9a55-0a1e5e7f1c2d")
TASKS = 80
# About 50 KiB: larger than a small record cap, smaller than 52,000 bytes with the prefix.
LONG_LINE_BYTES = 50 * 1024


def task_id(n: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"task-{n}"))


def mark(n: int) -> str:
    return f"fx-{n}"


class LedgerError(Exception):
    pass


class TranslationMissing(Exception):
    pass


@app.task
def process_order(n):
    items = n % 7 + 1
    logger.info("order o-%06d processed: items=%d total=%.2f USD mk=%s", n, items, n * 1.37, mark(n))
    return n


@app.task
def export_report(n):
    # A single ~50 KiB line: ASCII rows, or Korean and emoji rows (multi-byte UTF-8).
    rows = []
    size = 0
    i = 0
    korean = (n // 20) % 2 == 1
    while size < LONG_LINE_BYTES - 200:
        row = f"데이터블록{i:05d}=값🙂" if korean else f"{i:05d}:sku-{n * 1000 + i:05d}"
        rows.append(row)
        size += len(row.encode()) + 1
        i += 1
    logger.info("report chunk exported mk=%s rows=%d data=%s", mark(n), len(rows), "|".join(rows))
    return n


@app.task
def notify_user(n):
    if n % 20 == 10:
        logger.warning("재시도 필요: 카카오톡 알림 발송 실패 😢 (수신자 이서연, 시도 1/5) mk=%s", mark(n))
    else:
        logger.info("알림 전송 완료 🎉✅ 김민수 님께 주문 확인 메시지를 보냈습니다 (주문 %d) mk=%s", n, mark(n))
    return n


@app.task
def sync_inventory(n):
    logger.warning("inventory drift detected for sku=AB-%05d expected=13 actual=%d mk=%s", n, 7 + n % 3, mark(n))
    return n


@app.task
def charge_card(n):
    logger.error("payment declined for customer c-%05d code=51 reason=insufficient_funds mk=%s", n, mark(n))
    return n


@app.task
def render_template(n):
    # Three lines from one log call, no traceback.
    logger.warning(
        "template invoice.html rendered with 2 warnings mk=%s\n"
        "    line 12: unknown filter 'money'\n"
        "    line 40: undefined variable 'user.tier' tail=%s",
        mark(n),
        mark(n),
    )
    return n


def _verify_checksum(n):
    raise ValueError(f"checksum mismatch in batch {n}: expected 0x{0x1f3e + n // 2:04x} got 0x0000 tail={mark(n)}")


def _load_batch(n):
    _verify_checksum(n)


@app.task
def reconcile_ledger(n):
    try:
        _load_batch(n)
    except ValueError:
        logger.exception("ledger reconciliation failed for batch %d mk=%s", n, mark(n))
    return n


def _call_gateway(n):
    return {"status": "ok"}["transaction_id"]


@app.task
def settle_payment(n):
    try:
        try:
            _call_gateway(n)
        except KeyError as error:
            raise LedgerError(f"정산 실패 💥 거래 {n}: 게이트웨이 응답에 transaction_id 없음 tail={mark(n)}") from error
    except LedgerError:
        # A chained traceback: two tracebacks and blank lines in one record.
        logger.exception("settlement aborted for payout p-%05d mk=%s", n, mark(n))
    return n


def _http_get(n):
    raise RuntimeError(f"upstream inventory-service timed out after 30s (attempt 3/3) mk={mark(n)} tail={mark(n)}")


def _fetch_page(n):
    return _http_get(n)


@app.task
def fetch_upstream(n):
    # Unhandled: Celery logs "Task ...[id] raised unexpected: ..." and the traceback.
    return _fetch_page(n)


def _lookup_key(n):
    raise TranslationMissing(f"번역 키를 찾을 수 없음 🔍 key=greeting.{n} locale=ko-KR mk={mark(n)} tail={mark(n)}")


@app.task
def translate_text(n):
    return _lookup_key(n)


# Task N runs KINDS[N % 20].
KINDS = [
    export_report,
    process_order,
    notify_user,
    sync_inventory,
    reconcile_ledger,
    process_order,
    fetch_upstream,
    charge_card,
    render_template,
    process_order,
    notify_user,
    process_order,
    settle_payment,
    sync_inventory,
    translate_text,
    process_order,
    notify_user,
    charge_card,
    process_order,
    process_order,
]


def send():
    for n in range(TASKS):
        KINDS[n % len(KINDS)].apply_async(args=(n,), task_id=task_id(n))


if __name__ == "__main__":
    if sys.argv[1:] == ["send"]:
        send()
    else:
        sys.exit("usage: tasks.py send")
