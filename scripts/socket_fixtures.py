#!/usr/bin/env python3
"""Regenerate tests/fixtures/socket/: what Python's logging handlers really put on the wire.

Each handler sends to a listener on 127.0.0.1 and the bytes are written as received:

- socket_handler.bin: `logging.handlers.SocketHandler` over TCP (4-byte big-endian length +
  `pickle.dumps(record.__dict__, 1)` per record), records listed in socket_handler.jsonl.
- datagram_handler.bin: `DatagramHandler` over UDP, the datagrams one after another (each one is
  self-delimiting: its length prefix), records in datagram_handler.jsonl.
- protocols.bin: one LogRecord dict pickled with protocols 0 to 5, framed like SocketHandler's,
  so every opcode plain data needs is exercised; protocols.jsonl repeats the expected record.
- syslog_handler.bin: `SysLogHandler` over TCP (`<PRI>message\\0` per record, no timestamp, the
  traceback inside the message), expected messages in syslog_handler.jsonl.
- memo_bomb.pickle: 40 nested `[a, a]` lists sharing one object (2**40 leaves once expanded).
- evil_global.bin: a SocketHandler frame whose `extra` value pickles as `os.system(...)`.

The .jsonl files hold what Python knew about each record, for the tests to compare with.
Paths are rewritten to /app/... so the fixtures do not depend on where the repository lives.
Run with Python 3.11: `python3 scripts/socket_fixtures.py`.
"""

import datetime
import decimal
import json
import logging
import logging.handlers
import os
import pickle
import re
import socket
import struct
import sys
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "socket")
APP_PATH = "/app/worker.py"


class AppPaths(logging.Filter):
    """Rewrites paths so that the fixture does not name this machine's directories."""

    def filter(self, record):
        record.pathname = APP_PATH
        return True


class AppPathsFormatter(logging.Formatter):
    def formatException(self, ei):
        return super().formatException(ei).replace(os.path.abspath(__file__), APP_PATH)

    def formatStack(self, stack_info):
        return stack_info.replace(os.path.abspath(__file__), APP_PATH)


class TaskFilter(logging.Filter):
    """What a Celery task filter does: the task's id and name as record attributes."""

    def filter(self, record):
        record.task_id = "5f0c7a4e-6d0e-4c53-9f2b-0c1d2e3f4a5b"
        record.task_name = "billing.charge"
        return True


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def expected(record):
    """The record as the tests expect it after decoding (exc_text is what makePickle formats)."""
    d = dict(record.__dict__)
    out = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(d["created"]))
        + ".%03d+00:00" % d["msecs"],
        "level": d["levelname"],
        "logger": d["name"],
        "process": d["process"],
        "processName": d["processName"],
        "thread": d["thread"],
        "threadName": d["threadName"],
        # Lone surrogates (which the pickle carries as surrogatepass UTF-8) decode as U+FFFD.
        "message": re.sub("[\ud800-\udfff]", "\ufffd", record.getMessage()),
        "pathname": d["pathname"],
        "lineno": d["lineno"],
        "funcName": d["funcName"],
    }
    return out


class Capture:
    """A TCP or UDP listener on 127.0.0.1 that keeps every byte it receives."""

    def __init__(self, kind):
        self.kind = kind
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.chunks = []
        if kind == socket.SOCK_STREAM:
            self.sock.listen(1)
            self.thread = threading.Thread(target=self._accept, daemon=True)
            self.thread.start()

    def _accept(self):
        conn, _ = self.sock.accept()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                self.chunks.append(data)

    def recv_datagrams(self, count):
        for _ in range(count):
            self.chunks.append(self.sock.recv(262144))

    def data(self):
        if self.kind == socket.SOCK_STREAM:
            self.thread.join(10)
        return b"".join(self.chunks)


def log_records(logger, captured):
    """Logs the records every handler sends; `captured` receives them, in order."""

    class Keep(logging.Filter):
        def filter(self, record):
            captured.append(record)
            return True

    keep = Keep()
    logger.addFilter(keep)
    logger.info("안녕하세요 세계 🎉 café")
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("charge failed for %s", "order-17")
    logger.warning("%d items left", 3)
    logger.info("x" * (50 * 1024))
    logger.info(
        "with extra",
        extra={
            "task_id": "a3b1c2d4-0000-4000-8000-000000000001",
            "n": 1,
            "ok": True,
            "big": 2**70,
            "neg": -(2**65),
            "f": 1.5,
            "when": datetime.datetime(2026, 11, 22, 2, 45, 34, 572123),
            "b": b"\xff",
        },
    )
    logger.info(
        "nested extra",
        extra={
            "nested": {"a": [1, (2, 3)], "none": None, "k": "v"},
            "nan": float("nan"),
            "inf": float("-inf"),
            "empty": [],
            "amount": decimal.Decimal("1.10"),
            "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "when_utc": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
            "day": datetime.date(2026, 11, 22),
        },
    )
    logger.error("with stack", stack_info=True)
    logger.info("lone \udc80 surrogate")
    logger.removeFilter(keep)


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def write_jsonl(name, records, extra=None):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        for record in records:
            row = expected(record)
            if record.exc_info or record.exc_text:
                row["exception"] = record.exc_text
            if record.stack_info:
                row["stack_info"] = record.stack_info
            if extra:
                row.update(extra(record))
            f.write(json.dumps(row, ensure_ascii=True) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    formatter = AppPathsFormatter()

    # SocketHandler over TCP.
    capture = Capture(socket.SOCK_STREAM)
    logger = logging.getLogger("worker.billing")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addFilter(AppPaths())
    logger.addFilter(TaskFilter())
    handler = logging.handlers.SocketHandler("127.0.0.1", capture.port)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    records = []
    log_records(logger, records)
    handler.close()
    logger.removeHandler(handler)
    write("socket_handler.bin", capture.data())
    write_jsonl(
        "socket_handler.jsonl",
        records,
        lambda r: {"task_id": r.task_id, "task_name": r.task_name},
    )
    logger.filters = [f for f in logger.filters if not isinstance(f, TaskFilter)]

    # DatagramHandler over UDP: the small records only (the 50 KiB one fits, but keep it short).
    capture = Capture(socket.SOCK_DGRAM)
    handler = logging.handlers.DatagramHandler("127.0.0.1", capture.port)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    records = []
    keep = []

    class Keep(logging.Filter):
        def filter(self, record):
            keep.append(record)
            return True

    k = Keep()
    logger.addFilter(k)
    logger.info("datagram 한국어 ✅")
    try:
        {}["missing"]
    except KeyError:
        logger.exception("lookup failed")
    logger.removeFilter(k)
    capture.recv_datagrams(len(keep))
    handler.close()
    logger.removeHandler(handler)
    write("datagram_handler.bin", capture.data())
    write_jsonl("datagram_handler.jsonl", keep)

    # Every pickle protocol, one record.
    record = logger.makeRecord(
        "proto", logging.WARNING, APP_PATH, 7, "proto %s", ("ok",), None, "fn",
        extra={"ok": False, "t": (1, "two", None), "big": 2**100, "neg": -5, "f": -0.25,
               "raw": b"\x00\x01\xfe", "s": {"x"}, "when": datetime.datetime(2026, 11, 22, 2, 45, 34)},
    )
    handler = logging.handlers.SocketHandler("127.0.0.1", 9)
    frames = []
    for protocol in range(6):
        d = dict(record.__dict__)
        d["msg"] = record.getMessage()
        d["args"] = None
        d["exc_info"] = None
        d.pop("message", None)
        s = pickle.dumps(d, protocol)
        frames.append(struct.pack(">L", len(s)) + s)
    write("protocols.bin", b"".join(frames))
    write_jsonl("protocols.jsonl", [record])

    # SysLogHandler over TCP.
    capture = Capture(socket.SOCK_STREAM)
    syslog = logging.getLogger("worker.syslog")
    syslog.setLevel(logging.DEBUG)
    syslog.propagate = False
    handler = logging.handlers.SysLogHandler(
        address=("127.0.0.1", capture.port), socktype=socket.SOCK_STREAM
    )
    handler.setFormatter(AppPathsFormatter("%(name)s: %(levelname)s %(message)s"))
    syslog.addHandler(handler)
    messages = []

    class KeepText(logging.Filter):
        def filter(self, record):
            messages.append(record)
            return True

    syslog.addFilter(KeepText())
    syslog.info("started 시작 🚀")
    syslog.warning("disk at %d%%", 91)
    try:
        raise ValueError("bad value\nsecond line")
    except ValueError:
        syslog.exception("task failed")
    syslog.critical("down")
    syslog.debug("details")
    handler.close()
    data = capture.data()
    write("syslog_handler.bin", data)
    with open(os.path.join(OUT, "syslog_handler.jsonl"), "w", encoding="utf-8") as f:
        for record in messages:
            text = handler.format(record)
            prio = handler.encodePriority(handler.facility, handler.mapPriority(record.levelname))
            f.write(json.dumps({"pri": prio, "message": text}, ensure_ascii=True) + "\n")

    # Hostile input, pickled by Python itself.
    a = []
    for _ in range(40):
        a = [a, a]
    write("memo_bomb.pickle", pickle.dumps(a, 1))
    d = dict(record.__dict__)
    d.update(msg="evil", args=None, exc_info=None, payload=Evil())
    s = pickle.dumps(d, 1)
    write("evil_global.bin", struct.pack(">L", len(s)) + s)
    print(f"wrote fixtures to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
