#!/usr/bin/env python3
"""Append Celery-style worker log lines to a file, as a Celery 5 worker would write them.

    scripts/demo_writer.py /tmp/demo/worker.log --lines 200 --rate 100

Writes exactly --lines physical lines in Celery 5's default formats: worker lines
`[2026-11-22 10:00:00,123: INFO/MainProcess] Task app.tasks.add[<uuid>] received` and task lines
`[...: INFO/ForkPoolWorker-1] app.tasks.add[<uuid>]: ...`, `... succeeded in 0.01s: 3`, with
--tracebacks multi-line Python tracebacks (3.11 style, with caret lines) among them.
Each log event (a line and its continuation lines) is appended with a single write and flushed,
so a reader never sees half a traceback. A one-line summary goes to stderr unless --quiet.
Standard library only.
"""

import argparse
import random
import sys
import time
import uuid
from datetime import datetime

WORKERS = ("ForkPoolWorker-1", "ForkPoolWorker-2")

# (task name, message template, result) for tasks that succeed.
TASKS = (
    ("app.tasks.add", "adding {a} + {b}", "{sum}"),
    ("app.tasks.process_order", "order o-{n:06d} processed: items={a} total={b}.{a:02d} USD", "{n}"),
    ("app.tasks.send_email", "sent welcome email to user-{n}@example.com", "None"),
    ("app.tasks.resize_image", "resized img-{n}.png to 640x480 in {a} ms", "'img-{n}-640.png'"),
    ("app.tasks.notify_user", "notification délivrée à Zoë 🎉 (message {n})", "True"),
    ("app.tasks.sync_inventory", "inventory synced for sku=AB-{n:05d}: {a} in stock", "{a}"),
)


def timestamp() -> str:
    now = datetime.now()
    return now.strftime("%Y-%m-%d %H:%M:%S,") + f"{now.microsecond // 1000:03d}"


def prefix(level: str, process: str) -> str:
    return f"[{timestamp()}: {level}/{process}]"


class Events:
    """Produces log events, each a list of lines (the first one with the Celery prefix)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.n = 0

    def task_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def task(self) -> list[list[str]]:
        """received, a task log line, succeeded: three one-line events."""
        self.n += 1
        name, message, result = self.rng.choice(TASKS)
        tid = self.task_id()
        worker = self.rng.choice(WORKERS)
        a, b = self.rng.randint(1, 9), self.rng.randint(1, 99)
        values = {"a": a, "b": b, "sum": a + b, "n": self.n}
        runtime = self.rng.uniform(0.001, 0.05)
        return [
            [f"{prefix('INFO', 'MainProcess')} Task {name}[{tid}] received"],
            [f"{prefix('INFO', worker)} {name}[{tid}]: {message.format(**values)}"],
            [
                f"{prefix('INFO', worker)} Task {name}[{tid}] succeeded in {runtime}s: "
                f"{result.format(**values)}"
            ],
        ]

    def failing_task(self, kind: int) -> list[list[str]]:
        """received, then an ERROR line followed by a traceback: two events."""
        self.n += 1
        tid = self.task_id()
        worker = self.rng.choice(WORKERS)
        if kind % 2 == 0:
            name = "app.tasks.fetch_page"
            error = f"ConnectionError('upstream api.internal timed out after 30s (page {self.n})')"
            head = f"{prefix('ERROR', worker)} Task {name}[{tid}] raised unexpected: {error}"
            trace = [
                "Traceback (most recent call last):",
                '  File "/app/.venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in trace_task',
                "    R = retval = fun(*args, **kwargs)",
                "                 ^^^^^^^^^^^^^^^^^^^^",
                '  File "/app/.venv/lib/python3.11/site-packages/celery/app/trace.py", line 736, in __protected_call__',
                "    return self.run(*args, **kwargs)",
                "           ^^^^^^^^^^^^^^^^^^^^^^^^^",
                '  File "/app/app/tasks.py", line 42, in fetch_page',
                "    resp = http_get(url, timeout=30)",
                "           ^^^^^^^^^^^^^^^^^^^^^^^^^",
                '  File "/app/app/http.py", line 17, in http_get',
                '    raise ConnectionError(f"upstream {host} timed out after {timeout}s (page {page})")',
                f"ConnectionError: upstream api.internal timed out after 30s (page {self.n})",
            ]
        else:
            name = "app.tasks.charge_card"
            head = (
                f"{prefix('ERROR', worker)} {name}[{tid}]: payment gateway rejected charge "
                f"for customer c-{self.n:05d}"
            )
            trace = [
                "Traceback (most recent call last):",
                '  File "/app/app/tasks.py", line 88, in charge_card',
                "    receipt = gateway.charge(customer, amount_cents)",
                "              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
                '  File "/app/app/gateway.py", line 23, in charge',
                "    raise PaymentDeclined(code=51, reason=\"insufficient_funds\")",
                "app.gateway.PaymentDeclined: code=51 reason=insufficient_funds",
            ]
        return [
            [f"{prefix('INFO', 'MainProcess')} Task {name}[{tid}] received"],
            [head, *trace],
        ]

    def filler(self) -> list[str]:
        self.n += 1
        return [f"{prefix('INFO', 'MainProcess')} Task app.tasks.add[{self.task_id()}] received"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="log file to append to (created if missing)")
    parser.add_argument("--lines", type=int, default=200, help="physical lines to write (default 200)")
    parser.add_argument("--rate", type=float, default=100.0, help="lines per second (default 100; 0 = no pause)")
    parser.add_argument("--tracebacks", type=int, default=2, help="multi-line tracebacks to include (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (task ids, values)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.lines < 0 or args.tracebacks < 0:
        parser.error("--lines and --tracebacks must not be negative")

    rng = random.Random(args.seed)
    events = Events(rng)
    # Place the tracebacks evenly through the file.
    traceback_at = [args.lines * (i + 1) // (args.tracebacks + 1) for i in range(args.tracebacks)]
    written_lines = written_events = placed = tracebacks = 0
    started = time.monotonic()

    with open(args.path, "a", encoding="utf-8") as out:
        while written_lines < args.lines:
            left = args.lines - written_lines
            due_traceback = placed < len(traceback_at) and written_lines >= traceback_at[placed]
            if due_traceback:
                group = events.failing_task(placed)
                placed += 1
            else:
                group = events.task()
            if sum(len(e) for e in group) > left:
                group = [events.filler()]  # no room left for a whole task (or traceback)
            for event in group:
                if written_lines + len(event) > args.lines:
                    break
                out.write("".join(line + "\n" for line in event))
                out.flush()
                if len(event) > 1:
                    tracebacks += 1
                written_lines += len(event)
                written_events += 1
                if args.rate > 0:
                    # Keep to the rate over the whole run, not per line.
                    due = started + written_lines / args.rate
                    pause = due - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)

    if not args.quiet:
        print(
            f"demo_writer: wrote {written_lines} lines ({written_events} log events, "
            f"{tracebacks} with a traceback) to {args.path}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
