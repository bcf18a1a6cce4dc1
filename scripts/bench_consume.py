#!/usr/bin/env python3
"""Benchmark of `shipper consume`: a pre-filled 4-shard stream on the in-repo endpoint
(fake-kinesis, which also serves Firehose), read and forwarded to its Firehose.

    scripts/bench_consume.py [--lines 1000000] [--no-build]

For each input (KPL-aggregated + zstd as `shipper tail --aggregate --compress zstd` writes it,
and plain records) it fills the stream with `shipper tail`, then runs `shipper consume` until
Firehose has accepted every line, and prints user records/s, MB/s of user data, CPU-seconds per
GB and peak RSS of the consumer. The consumer keeps to the per-shard read quota (2 MiB/s of
Kinesis data per shard), so wall-clock MB/s is bounded by 4 x 2 MiB/s times the compression
ratio; CPU-seconds per GB is the cost per core.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the shared corpus, endpoint and process helpers)

SHARDS = 4
DELIVERY = "bench-archive"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def wait_until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def fill(endpoint, log_path, lines, flags, workdir):
    """Ship the log file into the stream with `shipper tail`, until every line was accepted."""
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    tail = subprocess.Popen(
        [os.path.join(bench.RELEASE, "shipper"), "tail", log_path, "--stream", "bench",
         "--endpoint-url", endpoint.url, "--data-dir", os.path.join(workdir, "tail"),
         "--no-rate-limit", "--partition-key", "{random}", *flags],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: endpoint.stats()["user_records_accepted"] >= lines, 600, "the stream to fill")
    tail.send_signal(signal.SIGTERM)
    tail.wait(60)
    return env


def consume(endpoint, env, user_bytes, workdir):
    start = time.monotonic()
    consumer = subprocess.Popen(
        [os.path.join(bench.RELEASE, "shipper"), "consume", "--stream", "bench",
         "--delivery-stream", DELIVERY, "--endpoint-url", endpoint.url,
         "--firehose-endpoint-url", endpoint.url, "--data-dir", os.path.join(workdir, "consume")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: endpoint.stats()["firehose_bytes_accepted"] >= user_bytes, 900,
               "firehose to accept every line")
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(consumer.pid)
    peak = peak_rss_kib(consumer.pid)
    consumer.send_signal(signal.SIGTERM)
    code = consumer.wait(60)
    return elapsed, cpu, peak, code


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "shipper", "-p", "fake-kinesis"],
                       cwd=bench.ROOT, check=True)
    lines = bench.celery_corpus(args.lines)
    user_bytes = sum(len(line) + 1 for line in lines)
    print(f"{args.lines} lines, {user_bytes / 1e6:.1f} MB of user data (newline included), "
          f"{SHARDS} shards")
    for name, flags in [("aggregated+zstd", ["--aggregate", "--compress", "zstd"]), ("plain", [])]:
        with tempfile.TemporaryDirectory() as workdir:
            log_path = os.path.join(workdir, "worker.log")
            bench.write_lines(log_path, lines)
            endpoint = bench.Endpoint("--store", "--delivery-stream", DELIVERY, shards=SHARDS)
            try:
                env = fill(endpoint, log_path, len(lines), flags, workdir)
                stored = endpoint.stats()["bytes"]
                elapsed, cpu, peak, code = consume(endpoint, env, user_bytes, workdir)
            finally:
                endpoint.close()
        mb = user_bytes / 1e6
        print(f"{name:16} stream {stored / 1e6:7.1f} MB | {len(lines) / elapsed:9.0f} user records/s "
              f"| {mb / elapsed:6.1f} MB/s | {cpu / (user_bytes / 1e9):5.2f} CPU-s/GB "
              f"({mb / cpu:6.1f} MB/s per core) | peak RSS {peak / 1024:5.1f} MiB | exit {code}")


if __name__ == "__main__":
    main()
