#!/usr/bin/env python3
"""Parse throughput: the Celery fixture replicated to a given size, shipped with `--stdout` (no
network) in raw, json and celery formats. Reports MB/s and records/s of the whole record path
(read, join, format, key, print), which bounds what parsing can feed the sink.

    scripts/bench_parse.py [--size-mib 256]
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "celery", "worker.log")
SHIPPER = os.path.join(ROOT, "target", "release", "shipper")


def run(path, size, expected_records, fmt):
    command = [SHIPPER, "tail", path, "--stream", "bench", "--stdout", "--format", fmt,
               "--data-dir", os.path.join(os.path.dirname(path), "data-" + fmt)]
    env = dict(os.environ, RUST_LOG="warn")
    started = time.monotonic()
    shipper = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    records = 0
    while records < expected_records:
        chunk = shipper.stdout.read1(1 << 20)
        if not chunk:
            sys.exit(f"{fmt}: shipper stopped after {records} of {expected_records} records")
        records += chunk.count(b"\n")
    elapsed = time.monotonic() - started
    shipper.send_signal(signal.SIGTERM)
    shipper.communicate()
    return size / 1e6 / elapsed, records / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "shipper"], cwd=ROOT, check=True)
    fixture = open(FIXTURE, "rb").read()
    copies = max(1, args.size_mib * 1024 * 1024 // len(fixture))
    work = tempfile.mkdtemp(prefix="shipper-parse-")
    path = os.path.join(work, "worker.log")
    with open(path, "wb") as out:
        for _ in range(copies):
            out.write(fixture)
    size = os.path.getsize(path)
    lines = fixture.count(b"\n") * copies
    # Empty lines are acknowledged without being shipped.
    nonempty = sum(1 for line in fixture.split(b"\n")[:-1] if line.rstrip(b"\r")) * copies
    celery_records = sum(1 for line in fixture.split(b"\n")
                         if line.startswith(b"[20") and line[24:25] == b":") * copies
    print(f"machine: {os.cpu_count()} cores; input: Celery fixture x{copies} = {size / 2**20:.0f} MiB, {lines} lines")
    print("| format | multiline | MB/s | records/s |\n|---|---|---|---|")
    # raw and json: one record per line; --stdout prints a joined record on one line as well.
    for fmt, expected in (("raw", nonempty), ("json", nonempty), ("celery", celery_records)):
        mb_s, rec_s = run(path, size, expected, fmt)
        multiline = "celery" if fmt == "celery" else "none"
        print(f"| {fmt} | {multiline} | {mb_s:,.0f} | {rec_s:,.0f} |")
    os.remove(path)


if __name__ == "__main__":
    main()
