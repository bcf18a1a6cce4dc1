"""A tiny Celery app whose worker logs to shipper's socket input (through shipper_logging).

Three tasks: one logs at INFO (from its task logger and from a plain module logger), one logs
with `extra` fields, one logs a warning and then raises, so Celery logs the traceback. Run it:

    LOG_SHIPPER_SOCKET=/tmp/shipper.sock celery -A tasks worker --loglevel INFO
    python tasks.py send 6        # queue 6 tasks; prints their ids

The broker is CELERY_BROKER_URL; the default, kombu's filesystem:// transport in BROKER_DIR
(default /tmp/celery-socket-broker), needs no server, which is what scripts/celery-socket.sh uses.
"""

import logging
import os
import sys
import uuid

from celery import Celery
from celery.utils.log import get_task_logger

import shipper_logging  # noqa: F401  (connects the logging signals)

BROKER_DIR = os.environ.get("BROKER_DIR", "/tmp/celery-socket-broker")

app = Celery("tasks", broker=os.environ.get("CELERY_BROKER_URL", "filesystem://"))
app.conf.update(
    broker_transport_options={
        "data_folder_in": BROKER_DIR,
        "data_folder_out": BROKER_DIR,
        "control_folder": os.path.join(BROKER_DIR, "control"),
        "store_processed": False,
    },
    worker_prefetch_multiplier=1,
)

# get_task_logger: a child of celery.task (Celery's task format); a plain logger propagates to
# the root logger. Inside a task, records of both get task_id and task_name.
logger = get_task_logger(__name__)
module_logger = logging.getLogger("orders")

# Task ids are fixed: task N is uuid5(NAMESPACE, "task-N"), so a test knows them in advance.
NAMESPACE = uuid.UUID("2b0f3c55-8f0e-4d6a-9a40-5b8f3d1e7c21")


def task_id(n):
    return str(uuid.uuid5(NAMESPACE, f"task-{n}"))


class PaymentDeclined(Exception):
    pass


@app.task
def process_order(n):
    logger.info("processing order o-%06d", n)
    module_logger.info("order o-%06d stored", n)
    return n


@app.task
def charge_card(n):
    logger.info(
        "card charged",
        extra={"order_id": f"o-{n:06d}", "amount_cents": 1299 + n, "currency": "EUR"},
    )
    return n


@app.task
def settle_payment(n):
    logger.warning("gateway slow for order o-%06d, trying once more", n)
    raise PaymentDeclined(f"order o-{n:06d}: card declined (code 51)")


# Task N runs KINDS[N % 3].
KINDS = [process_order, charge_card, settle_payment]


def send(count):
    for n in range(count):
        KINDS[n % len(KINDS)].apply_async(args=(n,), task_id=task_id(n))
        print(task_id(n))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "send" and sys.argv[2].isdigit():
        send(int(sys.argv[2]))
    else:
        sys.exit("usage: tasks.py send COUNT")
