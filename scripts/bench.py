#!/usr/bin/env python3
"""Throughput benchmark: ship a large file of ~200-byte lines to the in-repo fake Kinesis endpoint.

Prints lines/s, MB/s, CPU-seconds per GB and peak RSS of the shipper process (from wait4), and the
idle RSS of a shipper tailing an empty file. Every line is checked to have arrived: the endpoint
counts the user records it accepted.

    scripts/bench.py [--size-mib 1024] [--line-bytes 200] [--aggregate] [--compress gzip]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")


def make_file(path, size_mib, line_bytes):
    """Write numbered lines of exactly line_bytes bytes (newline included) up to size_mib."""
    lines = size_mib * 1024 * 1024 // line_bytes
    pad = "x" * (line_bytes - 48)
    block = 20000
    with open(path, "w") as out:
        for first in range(0, lines, block):
            last = min(first + block, lines)
            out.write("".join(f"[2026-11-22 10:00:00,000: INFO/Worker] {i:09d} {pad[: line_bytes - 1 - 50]}\n"
                              for i in range(first, last)))
    return lines, os.path.getsize(path)


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.load(response)


def start_endpoint(shards, threads):
    endpoint = subprocess.Popen(
        [os.path.join(RELEASE, "fake-kinesis"), "--addr", "127.0.0.1:0", "--stream", "bench",
         "--shards", str(shards), "--threads", str(threads)],
        stdout=subprocess.PIPE, text=True)
    first = endpoint.stdout.readline().strip()
    port = int(first.rsplit(":", 1)[1])
    return endpoint, port


def shipper_env():
    env = dict(os.environ)
    env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true", RUST_LOG="warn")
    return env


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--line-bytes", type=int, default=200)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--endpoint-threads", type=int, default=1)
    parser.add_argument("--extra", default="", help="extra shipper flags, e.g. '--aggregate'")
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--release", "--quiet", "--bins"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="shipper-bench-")
    log = os.path.join(work, "big.log")
    lines, size = make_file(log, args.size_mib, args.line_bytes)
    endpoint, port = start_endpoint(args.shards, args.endpoint_threads)
    try:
        command = [os.path.join(RELEASE, "shipper"), "tail", log, "--stream", "bench",
                   "--endpoint-url", f"http://127.0.0.1:{port}", "--data-dir", os.path.join(work, "data"),
                   "--linger", "50ms"] + args.extra.split()
        started = time.monotonic()
        shipper = subprocess.Popen(command, env=shipper_env())
        while True:
            accepted = stats(port).get("user_records_accepted", 0)
            if accepted >= lines:
                break
            if shipper.poll() is not None:
                sys.exit(f"shipper exited early with {shipper.returncode}; {accepted} of {lines} arrived")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        shipper.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(shipper.pid, 0)
        cpu = usage.ru_utime + usage.ru_stime
        final = stats(port)

        idle_log = os.path.join(work, "idle.log")
        open(idle_log, "w").close()
        idle = subprocess.Popen([os.path.join(RELEASE, "shipper"), "tail", idle_log, "--stream", "bench",
                                 "--endpoint-url", f"http://127.0.0.1:{port}",
                                 "--data-dir", os.path.join(work, "idle-data")], env=shipper_env())
        time.sleep(3)  # let it settle into its idle loop; nothing is asserted on this
        idle_rss = rss_kib(idle.pid)
        idle.send_signal(signal.SIGTERM)
        idle.wait()
    finally:
        endpoint.terminate()
        endpoint.wait()
        for name in ("big.log", "idle.log"):
            try:
                os.remove(os.path.join(work, name))
            except OSError:
                pass

    mb = size / 1e6
    print(f"machine: {os.cpu_count()} cores; file: {size / 2**20:.0f} MiB, {lines} lines of {args.line_bytes} B;"
          f" shards: {args.shards}; flags: {args.extra or '(none)'}")
    print("| metric | value |\n|---|---|")
    print(f"| lines/s | {lines / elapsed:,.0f} |")
    print(f"| MB/s | {mb / elapsed:,.1f} |")
    print(f"| CPU-seconds per GB | {cpu / (size / 1e9):.2f} |")
    print(f"| peak RSS | {usage.ru_maxrss / 1024:.1f} MiB |")
    print(f"| idle RSS | {idle_rss / 1024:.1f} MiB |")
    print(f"| records accepted / lines | {final.get('user_records_accepted')} / {lines} |")
    print(f"| PutRecords calls | {final.get('put_records_calls')} |")
    print(f"| exit status | {os.waitstatus_to_exitcode(status)} |")
    if final.get("user_records_accepted", 0) < lines:
        sys.exit("not every line arrived")


if __name__ == "__main__":
    main()
