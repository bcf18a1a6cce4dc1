#!/usr/bin/env python3
"""Socket ingest benchmark: the release shipper listening on a unix socket, fed by senders that
write exactly what Python's logging.handlers.SocketHandler writes, into the in-repo endpoint.

  S1  throughput: --senders processes (default 8) each send --records/--senders records as fast
      as the socket takes them; every frame is SocketHandler.makePickle() of a LogRecord with a
      ~200-byte message, made before the clock starts. Reported: records/s and MB/s into the
      spool (until shipper_socket_records_total reaches the total), the same end to end (until
      the endpoint accepted every record), CPU-seconds per GB of frames, peak RSS (wait4).
      Run twice: with the endpoint failing every call (the spool alone: read, decode, append;
      the pipeline only retries), then normally; the CPU of the first over the second is the
      spool side's share of the work.
  S2  latency at --rate records/s (default 1,000) for --seconds (default 10), one sender, four
      shards, default flags (--linger 200ms): each
      record carries its send time; the endpoint's ApproximateArrivalTimestamp is the arrival.
      p50, p90, p99, max.

    scripts/bench_socket.py                 # builds the release binaries first
    scripts/bench_socket.py --quick --no-build

Timings are measured, never asserted.
"""
import argparse
import json
import logging
import logging.handlers
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the suite's endpoint and shipper helpers)

MESSAGE_PAD = "x" * 150


def frames(sender, count, paced=False):
    """SocketHandler's bytes for `count` records of one sender."""
    handler = logging.handlers.SocketHandler("/unused", None)
    out = []
    for seq in range(count):
        record = logging.LogRecord(
            "bench.worker", logging.INFO, "/app/tasks.py", 42,
            "task finished sender=%d seq=%d %s", (sender, seq, MESSAGE_PAD), None,
            func="run")
        record.task_id = f"00000000-0000-0000-0000-{sender:04d}{seq:08d}"
        out.append(handler.makePickle(record))
    return out


def send_all(path, chunks, ready, go):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    ready.set()
    go.wait()
    for chunk in chunks:
        sock.sendall(chunk)
    sock.close()


def sender_process(path, sender, count, ready, go):
    data = frames(sender, count)
    chunks, current = [], bytearray()
    for frame in data:
        current += frame
        if len(current) >= 256 * 1024:
            chunks.append(bytes(current))
            current = bytearray()
    if current:
        chunks.append(bytes(current))
    send_all(path, chunks, ready, go)


def metrics(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
        return response.read().decode()


def series(text, prefix):
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def start(work, name, endpoint, extra=()):
    sock = os.path.join(work, f"{name}.sock")
    addr = f"127.0.0.1:{bench.free_port()}"
    data_dir = os.path.join(work, f"{name}-data")
    command = [os.path.join(bench.RELEASE, "shipper"), "tail", "--socket", f"unix://{sock}",
               "--stream", "bench", "--endpoint-url", endpoint.url, "--data-dir", data_dir,
               "--metrics-addr", addr, *extra]
    stderr = open(data_dir + ".stderr.log", "w+")
    shipper = subprocess.Popen(command, env=bench.shipper_env(), stderr=stderr, text=True)
    shipper.log_file = stderr
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        bench.check_alive(shipper, name)
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: the socket never appeared")
        time.sleep(0.01)
    return shipper, sock, addr


def wait_until(what, check, shipper, timeout=600):
    deadline = time.monotonic() + timeout
    while not check():
        bench.check_alive(shipper, what)
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: timed out")
        time.sleep(0.01)
    return time.monotonic()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scenario_s1(args, work, outage):
    name = "s1-outage" if outage else "s1"
    endpoint = bench.Endpoint(*(["--fail-http", "1.0"] if outage else []), shards=4)
    # A spool large enough for every record, so none is dropped while the endpoint fails.
    flags = ["--no-rate-limit", "--linger", "50ms", "--spool-max-bytes", str(4 << 30)]
    shipper, sock, addr = start(work, name, endpoint,
                                flags + (["--aggregate"] if args.aggregate else []))
    per_sender = args.records // args.senders
    total = per_sender * args.senders
    frame_bytes = sum(len(f) for f in frames(0, 100)) / 100 * total
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(args.senders)]
    procs = [ctx.Process(target=sender_process, args=(sock, i, per_sender, readies[i], go))
             for i in range(args.senders)]
    for proc in procs:
        proc.start()
    for ready in readies:
        ready.wait(600)
    prefix = f'shipper_socket_records_total{{socket="unix://{sock}"}}'
    started = time.monotonic()
    go.set()
    spooled_at = wait_until("S1 spool", lambda: series(metrics(addr), prefix) >= total, shipper)
    spool_cpu = cpu_seconds(shipper.pid)
    for proc in procs:
        proc.join()
    if outage:
        code, usage = bench.stop_shipper(shipper)
        endpoint.close()
        spool_s = spooled_at - started
        print(f"### S1 (spool only): {args.senders} senders, {total:,} SocketHandler records "
              f"({frame_bytes / total:.0f}-byte frames) into the spool while every Kinesis call fails\n")
        bench.table(["records/s", "MB/s (frames)", "CPU s", "CPU-s/GB", "µs CPU/record", "peak RSS MiB"], [[
            f"{total / spool_s:,.0f}", f"{frame_bytes / spool_s / 1e6:.1f}", f"{spool_cpu:.2f}",
            f"{spool_cpu / (frame_bytes / 1e9):.1f}", f"{spool_cpu / total * 1e6:.2f}",
            f"{usage.ru_maxrss / 1024:.1f}"]])
        return spool_cpu
    delivered_at = wait_until(
        "S1 delivery", lambda: endpoint.stats().get("user_records_accepted", 0) >= total, shipper)
    code, usage = bench.stop_shipper(shipper)
    endpoint.close()
    cpu = usage.ru_utime + usage.ru_stime
    spool_s, end_s = spooled_at - started, delivered_at - started
    gb = frame_bytes / 1e9
    print(f"### S1: socket ingest, {args.senders} senders, {total:,} SocketHandler records "
          f"({frame_bytes / total:.0f}-byte frames), 4 shards, no limits"
          f"{', --aggregate' if args.aggregate else ''}\n")
    bench.table(["stage", "seconds", "records/s", "MB/s (frames)"], [
        ["into the spool", f"{spool_s:.2f}", f"{total / spool_s:,.0f}", f"{frame_bytes / spool_s / 1e6:.1f}"],
        ["accepted by the endpoint", f"{end_s:.2f}", f"{total / end_s:,.0f}", f"{frame_bytes / end_s / 1e6:.1f}"],
    ])
    print(f"CPU {cpu:.2f} s ({cpu / gb:.1f} CPU-s/GB of frames, {cpu / total * 1e6:.2f} µs per "
          f"record), peak RSS {usage.ru_maxrss / 1024:.1f} MiB, exit {code}\n")
    return cpu


def scenario_s2(args, work):
    # Four shards, so 1,000 records/s stays well within what pacing lets through (each shard is
    # paced at 900 records/s): the figure is the path's latency, not a queue behind the limit.
    endpoint = bench.Endpoint("--store", shards=4)
    shipper, sock, addr = start(work, "s2", endpoint)
    handler = logging.handlers.SocketHandler(sock, None)
    logger = logging.getLogger("bench.latency")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    count = args.rate * args.seconds
    begin = time.monotonic()
    for seq in range(count):
        pause = begin + seq / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        logger.info("latency probe", extra={"seq": seq, "sent": time.time()})
    handler.close()
    wait_until("S2 delivery",
               lambda: endpoint.stats().get("user_records_accepted", 0) >= count, shipper)
    code, _ = bench.stop_shipper(shipper)
    latencies = {}
    for arrival, data in bench.stored_records(endpoint.port):
        for user in bench.user_records(data):
            record = json.loads(user)
            latencies.setdefault(record["seq"], 1000 * (arrival - record["sent"]))
    endpoint.close()
    values = list(latencies.values())
    print(f"### S2: latency from SocketHandler.emit to acceptance, {args.rate} records/s for "
          f"{args.seconds} s (4 shards, default flags)\n")
    bench.table(["records", "p50 ms", "p90 ms", "p99 ms", "max ms"], [[
        len(values), f"{bench.percentile(values, 0.5):.0f}", f"{bench.percentile(values, 0.9):.0f}",
        f"{bench.percentile(values, 0.99):.0f}", f"{max(values):.0f}"]])
    if code != 0 or len(values) < count:
        sys.exit(f"S2: {len(values)} of {count} records, exit {code}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--quick", action="store_true", help="200k records, 5 s of latency")
    parser.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    parser.add_argument("--records", type=int, help="S1 records (default 1,000,000; quick 200,000)")
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--aggregate", action="store_true", help="S1 with --aggregate")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, help="S2 seconds (default 10, quick 5)")
    args = parser.parse_args()
    args.records = args.records or (200_000 if args.quick else 1_000_000)
    args.seconds = args.seconds or (5 if args.quick else 10)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "shipper", "-p",
                        "fake-kinesis"], cwd=bench.ROOT, check=True)
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "")
    print(f"machine: {os.cpu_count()} cores ({cpu_model})\n")
    work = tempfile.mkdtemp(prefix="shipper-bench-socket-")
    try:
        spool_cpu = scenario_s1(args, work, outage=True)
        total_cpu = scenario_s1(args, work, outage=False)
        print(f"The spool side (socket read, decode, append) takes {spool_cpu / total_cpu:.0%} of "
              f"the CPU of the whole path (spool read, record building, requests to the endpoint).\n")
        scenario_s2(args, work)
    finally:
        # The spools of a full run take about a GB.
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
