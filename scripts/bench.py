#!/usr/bin/env python3
"""Benchmark suite: the release shipper against the in-repo Kinesis endpoint (fake-kinesis).

Scenarios (each prints a Markdown table; every run checks through the endpoint's /stats that every
line arrived, and fails loudly otherwise):

  A  a large file (1 GiB; --size-mib), no shard limits: lines/s, MB/s, CPU-seconds per GB, peak
     RSS (wait4), and the idle RSS of a shipper tailing an empty file.
  B  one shard WITH the Kinesis write limits (1000 records/s, 1 MiB/s), a Celery-like corpus of
     ~150-byte lines: user lines per second through the shard for raw, --aggregate,
     --aggregate --compress gzip and --aggregate --compress zstd; under each way the endpoint
     can count the limits (--window fixed|sliding|both): fixed one-second windows, or the last
     second in ten 100 ms slots. Throttled entries, the shard's use (bytes accepted / 1 MiB/s)
     and its use in each second of the run (entries / 1000 or bytes / 1 MiB, the larger). Then
     a gzip run while another writer takes 60% of the shard from 3 s to 7 s (the endpoint's
     other_writer_share fault; --b-lines-contention): how the shipper backs off, and how soon
     after the other writer left it is back at >= 90% of the shard.
  C  30% per-entry failures and 5% HTTP 500s (--track-duplicates), raw and --aggregate: every
     line delivered; duplicates (endpoint) and retries (shipper's /metrics).
  D  latency from write to acceptance by the endpoint at a low rate (200 lines/s for 10 s):
     each line carries its write time; the endpoint's stored records (GetRecords) carry their
     arrival time. p50, p90, p99, max.
  R  rotation while behind: a writer writes 2,500 lines, renames app.log to app.log.1 (shifting
     older ones up) and starts a new app.log, 12 times 0.2 s apart, then 50 times 0.05 s apart,
     while the shipper tails app.log into two shards at the real limits: lines delivered,
     missing, duplicates, peak open descriptors of the shipper.
  K  kill -9 while shipping 3,000,000 lines at full speed (4 shards, no limits): 20 kills at
     random moments, then a run to the end, for --checkpoint-interval 100ms and 1s: duplicates
     per kill, and the clean run's lines/s and CPU-seconds per GB (the cost of the checkpoint
     writes).

    scripts/bench.sh                         # everything, full sizes
    scripts/bench.sh --quick                 # smaller inputs: a few minutes on 2 cores
    scripts/bench.sh --scenario A,B --size-mib 256
    scripts/bench.sh --scenario A --tls      # over HTTPS, as to Kinesis: the endpoint serves TLS
                                             # with a self-signed certificate (openssl), trusted
                                             # by the shipper through SSL_CERT_FILE
    scripts/bench.sh --scenario A --tls --fluent-bit /path/to/fluent-bit
                                             # then Fluent Bit (tail -> kinesis_streams, one
                                             # Kinesis record per line) on the same file, to
                                             # the same kind of endpoint, measured the same way

Each scenario prints the machine and, beside its figures, the ones the README publishes
(scripts/bench_published.json), so a regression shows at a glance.

Timings are measured, never asserted. A mode the shipper refuses (exit 64, e.g. a flag this
build does not have) is reported as such and does not stop the suite.
"""
import argparse
import base64
import gzip
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
DEADLINE_SECONDS = 300  # per run; --run-timeout
MIB = 1024 * 1024
# Kinesis per-shard write limits (the endpoint's --shard-limits).
SHARD_RECORDS_PER_SECOND = 1000
SHARD_BYTES_PER_SECOND = MIB


def load_published():
    try:
        with open(os.path.join(ROOT, "scripts", "bench_published.json")) as published:
            return json.load(published)
    except (OSError, ValueError):
        return {}


PUBLISHED = load_published()


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model or 'unknown CPU'})"


def startup_layout():
    """How many of the functions link/startup.ld names exactly (hash included) this build defines.

    Fewer than all means the script was made with another compiler or other locked dependencies:
    the start-up code is then placed by the patterns without hashes only, and idle RSS is higher
    than published until scripts/startup_order.py is run again."""
    script = os.path.join(ROOT, "link", "startup.ld")
    try:
        with open(script) as text:
            exact = set(re.findall(r"\*\(\.text\.([^\s*]+) \.text\.unlikely\.[^\s*]+\)$",
                                   text.read(), re.MULTILINE))
        listing = subprocess.run(["nm", "--defined-only", os.path.join(RELEASE, "shipper")],
                                 capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "start-up layout: not checked (no link/startup.ld, nm or symbol table)"
    defined = {fields[2] for fields in map(str.split, listing.splitlines()) if len(fields) == 3}
    found = len(exact & defined)
    note = "" if found == len(exact) else (
        " (stale: idle RSS will be higher than published; run scripts/startup_order.py)")
    return (f"start-up layout: {found} of {len(exact)} functions named exactly are in this "
            f"build{note}")


def header(title):
    """A scenario's heading, with the machine it ran on and the machine of the published figures."""
    print(f"### {title}\n")
    print(f"machine: {machine()}; published figures (README) from: "
          f"{PUBLISHED.get('machine', 'none')}\n")


def published(*path):
    """A published figure, or None."""
    value = PUBLISHED
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def versus(text, value, *path):
    """`text` beside the published figure at `path` and the change, e.g. `28,100 (README 28,239, -0%)`."""
    before = published(*path)
    if before is None or value is None:
        return f"{text} (README: none)"
    change = f", {100 * (value - before) / before:+.0f}%" if before else ""
    return f"{text} (README {before:,}{change})"


class Refused(Exception):
    """The shipper exited 64: it does not accept these flags (usage or configuration error)."""


class Incomplete(Exception):
    """Not every line arrived within the run's time limit."""


# Runs that did not deliver every line; the suite prints every table, then exits 1.
FAILURES = []


# ----------------------------------------------------------------------------------------------
# Inputs


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


TASKS = [
    "orders.tasks.sync_inventory", "billing.tasks.charge_invoice", "mail.tasks.send_welcome_email",
    "reports.tasks.build_monthly_pdf", "search.tasks.reindex_product", "users.tasks.refresh_avatar",
    "payments.tasks.reconcile_ledger", "notifications.tasks.push_mobile", "etl.tasks.load_partition",
    "media.tasks.transcode_video",
]
RESULTS = ["None", "True", "{'synced': %d}", "'ok'", "{'rows': %d, 'skipped': 0}", "[%d, 17]"]
MESSAGES = [
    "Fetching page %d of upstream catalogue",
    "Charged customer cus_%06d amount=%d.%02d EUR",
    "Rendering template welcome_v%d.html for user %d",
    "Cache miss for key product:%d, loading from db",
    "Uploaded %d bytes to s3://media-bucket/out/%d.mp4",
    "Retrying request to api.partner.example after HTTP 503 (request %d)",
]


def celery_corpus(count, seed=4):
    """Realistic Celery worker lines, ~150 bytes each, every line different.

    Tasks are received, log a message or two, and succeed (sometimes retry or fail), interleaved
    across pool processes; task ids are random UUIDs, timestamps advance. Compressible the way
    real logs are (shared vocabulary), not a repeated constant.
    """
    rng = random.Random(seed)
    clock = 1_795_000_000.0
    lines = []
    live = []
    while len(lines) < count:
        clock += rng.expovariate(1 / 0.004)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(clock)) + f",{int(clock * 1000) % 1000:03d}"
        worker = f"ForkPoolWorker-{rng.randint(1, 16)}"
        if not live or (len(live) < 40 and rng.random() < 0.35):
            task = (rng.choice(TASKS), str(uuid.UUID(int=rng.getrandbits(128), version=4)), 0)
            live.append(task)
            lines.append(f"[{stamp}: INFO/MainProcess] Task {task[0]}[{task[1]}] received")
            continue
        index = rng.randrange(len(live))
        name, task_id, step = live[index]
        roll = rng.random()
        if step < 2 and roll < 0.55:
            template = rng.choice(MESSAGES)
            text = template % tuple(rng.randint(1, 99999) for _ in range(template.count("%")))
            lines.append(f"[{stamp}: INFO/{worker}] {name}[{task_id}]: {text}")
            live[index] = (name, task_id, step + 1)
        elif roll < 0.62:
            lines.append(f"[{stamp}: WARNING/{worker}] Task {name}[{task_id}] retry: Retry in "
                         f"{rng.choice([5, 10, 30, 60])}s: ConnectionError('timed out')")
            live[index] = (name, task_id, step + 1)
        elif roll < 0.64:
            lines.append(f"[{stamp}: ERROR/{worker}] Task {name}[{task_id}] raised unexpected: "
                         f"KeyError('sku-{rng.randint(1000, 9999)}')")
            live.pop(index)
        else:
            result = rng.choice(RESULTS)
            if "%d" in result:
                result = result % rng.randint(1, 5000)
            lines.append(f"[{stamp}: INFO/{worker}] Task {name}[{task_id}] succeeded in "
                         f"{rng.expovariate(1 / 0.08):.6f}s: {result}")
            live.pop(index)
    return lines[:count]


def write_lines(path, lines):
    with open(path, "w") as out:
        out.write("\n".join(lines))
        out.write("\n")
    return os.path.getsize(path)


# ----------------------------------------------------------------------------------------------
# Processes


def get_json(port, path, method="GET", body=None, timeout=10):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def stats(port):
    return get_json(port, "/stats")


def kinesis_call(port, operation, payload):
    """One call of the Kinesis JSON 1.1 protocol (the endpoint does not check signatures)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", data=json.dumps(payload).encode(), method="POST",
        headers={"X-Amz-Target": f"Kinesis_20131202.{operation}",
                 "Content-Type": "application/x-amz-json-1.1"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


# With --tls: the self-signed certificate and key the endpoint serves, trusted by the shipper
# through SSL_CERT_FILE (the SDK's HTTPS client reads its roots through rustls-native-certs).
TLS = {}


def make_certificate(work):
    cert, key = certificate(work)
    TLS.update(cert=cert, key=key)


def certificate(work):
    """A self-signed certificate for 127.0.0.1 and localhost, made in `work`: (cert, key)."""
    cert, key = os.path.join(work, "tls-cert.pem"), os.path.join(work, "tls-key.pem")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        # An end-entity certificate: rustls refuses a CA certificate as a server's.
                        "-addext", "basicConstraints=critical,CA:FALSE"],
                       check=True, capture_output=True)
    except FileNotFoundError:
        raise SystemExit("--tls needs the openssl command to make a certificate")
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"openssl could not make a certificate: {error.stderr.decode().strip()}")
    return cert, key


class Endpoint:
    def __init__(self, *flags, shards=1, threads=1):
        self.started = time.monotonic()
        tls = ["--tls-cert", TLS["cert"], "--tls-key", TLS["key"]] if TLS else []
        self.process = subprocess.Popen(
            [os.path.join(RELEASE, "fake-kinesis"), "--addr", "127.0.0.1:0", "--stream", "bench",
             "--shards", str(shards), "--threads", str(threads), *tls, *flags],
            stdout=subprocess.PIPE, text=True)
        first = self.process.stdout.readline().strip()
        if not first.startswith("listening on "):
            raise SystemExit(f"fake-kinesis did not start: {first!r}")
        self.port = int(first.rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"
        if TLS:
            second = self.process.stdout.readline().strip()
            if not second.startswith("tls listening on "):
                raise SystemExit(f"fake-kinesis did not start its TLS listener: {second!r}")
            # The shipper goes through TLS; the admin calls (stats, faults) stay on plain HTTP.
            self.url = f"https://localhost:{int(second.rsplit(':', 1)[1])}"

    def stats(self):
        return stats(self.port)

    def set_faults(self, **faults):
        get_json(self.port, "/faults", method="POST", body=json.dumps(faults).encode())

    def close(self):
        self.process.terminate()
        self.process.wait()


def shipper_env():
    env = dict(os.environ)
    env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true", RUST_LOG="warn")
    if TLS:
        env["SSL_CERT_FILE"] = TLS["cert"]
    return env


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_shipper(log, endpoint, data_dir, flags):
    command = [os.path.join(RELEASE, "shipper"), "tail", log, "--stream", "bench",
               "--endpoint-url", endpoint.url, "--data-dir", data_dir] + flags
    # The shipper's own log goes to a file (a pipe nobody reads would block it when full).
    stderr = open(data_dir.rstrip("/") + ".stderr.log", "w+")
    shipper = subprocess.Popen(command, env=shipper_env(), stderr=stderr, text=True)
    shipper.log_file = stderr
    return shipper


FLUENT_BIT = {}

# Fluent Bit as a user would set it up for the same job: tail the file from its start (offsets in
# its own database, as the shipper keeps checkpoints), one Kinesis record per line (log_key: the
# line itself, as the shipper sends it), its defaults otherwise. Its kinesis_streams output always
# speaks TLS; it checks the endpoint's certificate against the same self-signed one.
FLUENT_BIT_CONFIG = """\
[SERVICE]
    Flush        1
    Grace        1
    Log_Level    warn

[INPUT]
    Name            tail
    Path            {log}
    Read_from_Head  On
    DB              {db}

[OUTPUT]
    Name         kinesis_streams
    Match        *
    region       us-east-1
    stream       bench
    endpoint     localhost
    Port         {port}
    log_key      log
    tls.ca_file  {cert}
    tls.vhost    localhost
"""


def start_fluent_bit(log, endpoint, data_dir, flags):
    os.makedirs(data_dir, exist_ok=True)
    config = os.path.join(data_dir, "fluent-bit.conf")
    with open(config, "w") as out:
        out.write(FLUENT_BIT_CONFIG.format(log=log, db=os.path.join(data_dir, "tail.db"),
                                           port=endpoint.url.rsplit(":", 1)[1], cert=TLS["cert"]))
    output = open(data_dir.rstrip("/") + ".stderr.log", "w+")
    process = subprocess.Popen([FLUENT_BIT["path"], "-c", config, *flags], env=shipper_env(),
                               stdout=output, stderr=output, text=True)
    process.log_file = output
    return process


def check_alive(shipper, what):
    if shipper.poll() is None:
        return
    shipper.log_file.seek(0)
    error = shipper.log_file.read()
    if shipper.returncode == 64:
        raise Refused(error.strip().splitlines()[-1] if error.strip() else "exit 64")
    raise SystemExit(f"shipper exited early with {shipper.returncode} ({what}):\n{error[-2000:]}")


def stop_shipper(shipper):
    """SIGTERM, then the exit status and resource usage (wait4)."""
    shipper.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(shipper.pid, 0)
    shipper.returncode = os.waitstatus_to_exitcode(status)
    shipper.log_file.close()
    return os.waitstatus_to_exitcode(status), usage


def ship_until(log, endpoint, data_dir, flags, arrived, what, start=None):
    """Start a shipper (or `start(log, endpoint, data_dir, flags)`) on `log`; poll the endpoint
    until `arrived(stats)`; stop it.

    Returns (elapsed seconds from start to arrival, exit code, rusage, final stats).
    """
    started = time.monotonic()
    shipper = (start or start_shipper)(log, endpoint, data_dir, flags)
    try:
        while True:
            current = endpoint.stats()
            if arrived(current):
                break
            check_alive(shipper, what)
            if time.monotonic() - started > DEADLINE_SECONDS:
                raise Incomplete(f"{current.get('user_records_accepted')} user records arrived "
                                 f"after {DEADLINE_SECONDS} s")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
    except BaseException:
        if shipper.poll() is None:
            shipper.kill()
            shipper.wait()
        raise
    code, usage = stop_shipper(shipper)
    return elapsed, code, usage, endpoint.stats()


def table(headers, rows):
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


# ----------------------------------------------------------------------------------------------
# KPL de-aggregation (for scenario D's latencies; the endpoint does its own counting)

KPL_MAGIC = b"\xf3\x89\x9a\xc2"


def varint(data, pos):
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def protobuf_fields(data):
    pos = 0
    while pos < len(data):
        key, pos = varint(data, pos)
        field, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = varint(data, pos)
        elif kind == 2:
            length, pos = varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise ValueError(f"unexpected wire type {kind}")
        yield field, value


def user_records(data):
    """User record payloads of one Kinesis record (decompressed if gzip; KPL de-aggregated)."""
    if data.startswith(b"\x1f\x8b"):
        data = gzip.decompress(data)
    if not data.startswith(KPL_MAGIC):
        return [data]
    body = data[len(KPL_MAGIC):-16]
    return [value for field, record in protobuf_fields(body) if field == 3
            for inner, value in protobuf_fields(record) if inner == 3]


def stored_records(port, stream="bench"):
    """Every stored Kinesis record of every shard, through GetRecords, with its arrival time."""
    shards = kinesis_call(port, "ListShards", {"StreamName": stream})["Shards"]
    for shard in shards:
        iterator = kinesis_call(port, "GetShardIterator", {
            "StreamName": stream, "ShardId": shard["ShardId"],
            "ShardIteratorType": "TRIM_HORIZON"})["ShardIterator"]
        while iterator:
            page = kinesis_call(port, "GetRecords", {"ShardIterator": iterator})
            for record in page["Records"]:
                yield record["ApproximateArrivalTimestamp"], base64.b64decode(record["Data"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


# ----------------------------------------------------------------------------------------------
# Scenarios


def scenario_a(args, work):
    log = os.path.join(work, "big.log")
    lines, size = make_file(log, args.size_mib, args.line_bytes)
    endpoint = Endpoint(shards=args.shards, threads=args.endpoint_threads)
    # The endpoint enforces no limits here, so neither does the shipper: this measures the pipeline.
    flags = ["--linger", "50ms", "--no-rate-limit"] + args.extra.split()
    everything = lambda stats: stats.get("user_records_accepted", 0) >= lines  # noqa: E731
    try:
        elapsed, code, usage, final = ship_until(
            log, endpoint, os.path.join(work, "a-data"), flags, everything, "scenario A")
        cpu = usage.ru_utime + usage.ru_stime
        fluent_bit = None
        if FLUENT_BIT:
            # A fresh endpoint, so its counts are Fluent Bit's alone.
            endpoint.close()
            endpoint = Endpoint(shards=args.shards, threads=args.endpoint_threads)
            fluent_bit = ship_until(log, endpoint, os.path.join(work, "a-fluent-bit"), [],
                                    everything, "Fluent Bit", start=start_fluent_bit)

        idle_log = os.path.join(work, "idle.log")
        open(idle_log, "w").close()
        idle = start_shipper(idle_log, endpoint, os.path.join(work, "idle-data"), [])
        time.sleep(3)  # let it settle into its idle loop; nothing is asserted on this
        check_alive(idle, "idle")
        idle_rss = rss_kib(idle.pid)
        stop_shipper(idle)
    finally:
        endpoint.close()
        for name in ("big.log", "idle.log"):
            try:
                os.remove(os.path.join(work, name))
            except OSError:
                pass

    mb = size / 1e6
    mode = "aggregate" if "--aggregate" in flags else "one record per line"
    if TLS:
        mode += ", TLS"
    header(f"A: large file, no shard limits ({mode})")
    print(f"file: {size / 2**20:.0f} MiB, {lines} lines of {args.line_bytes} B; shards: {args.shards}; "
          f"endpoint threads: {args.endpoint_threads}; flags: {' '.join(flags)}\n")
    table(["metric", "value"], [
        ["lines/s", versus(f"{lines / elapsed:,.0f}", lines / elapsed, "A", mode, "lines/s")],
        ["MB/s", versus(f"{mb / elapsed:,.1f}", mb / elapsed, "A", mode, "MB/s")],
        ["CPU-seconds per GB", versus(f"{cpu / (size / 1e9):.2f}", cpu / (size / 1e9), "A", mode,
                                      "CPU-s/GB")],
        ["CPU use (CPU-s / wall-s)", f"{cpu / elapsed:.2f}"],
        ["peak RSS", versus(f"{usage.ru_maxrss / 1024:.1f} MiB", usage.ru_maxrss / 1024, "A", mode,
                            "peak RSS MiB")],
        ["idle RSS", versus(f"{idle_rss / 1024:.1f} MiB", idle_rss / 1024, "A", mode,
                            "idle RSS MiB")],
        ["records accepted / lines", f"{final.get('user_records_accepted')} / {lines}"],
        ["PutRecords calls", final.get("put_records_calls")],
        ["exit status", code],
    ])
    if final.get("user_records_accepted", 0) < lines:
        sys.exit("scenario A: not every line arrived")
    if fluent_bit:
        fb_elapsed, _, fb_usage, fb_final = fluent_bit
        fb_cpu = fb_usage.ru_utime + fb_usage.ru_stime
        print(f"Fluent Bit ({FLUENT_BIT['version']}; tail -> kinesis_streams, one record per line) on the "
              f"same file, to a fresh endpoint of the same settings:\n")
        table(["", "lines/s", "MB/s", "CPU-seconds per GB", "peak RSS", "records accepted"], [
            ["shipper", f"{lines / elapsed:,.0f}", f"{mb / elapsed:,.1f}",
             f"{cpu / (size / 1e9):.2f}", f"{usage.ru_maxrss / 1024:.1f} MiB",
             final.get("user_records_accepted")],
            ["Fluent Bit", f"{lines / fb_elapsed:,.0f}", f"{mb / fb_elapsed:,.1f}",
             f"{fb_cpu / (size / 1e9):.2f}", f"{fb_usage.ru_maxrss / 1024:.1f} MiB",
             fb_final.get("user_records_accepted")],
        ])
        print(f"shipper CPU per GB / Fluent Bit's: {cpu / fb_cpu:.2f}\n")


B_MODES = [
    ("raw", []),
    ("aggregate", ["--aggregate"]),
    ("aggregate + gzip", ["--aggregate", "--compress", "gzip"]),
    ("aggregate + zstd", ["--aggregate", "--compress", "zstd"]),
]


def windows(args):
    return ["fixed", "sliding"] if args.window == "both" else [args.window]


def shard_seconds(endpoint):
    """The endpoint's per-second counts, [entries, bytes, refused], from the first second with any
    entry accepted or refused to the last."""
    seconds = get_json(endpoint.port, "/stats/seconds")["seconds"]
    busy = [index for index, (entries, _, refused) in enumerate(seconds) if entries or refused]
    return seconds[busy[0]:busy[-1] + 1] if busy else []


def shard_use(entries, nbytes):
    """A second's use of one shard: the larger of its two limits' shares."""
    return max(entries / SHARD_RECORDS_PER_SECOND, nbytes / SHARD_BYTES_PER_SECOND)


def timeline(seconds):
    """Each second's shard use in percent, `!` after a second with refused entries."""
    return " ".join(f"{100 * shard_use(entries, nbytes):.0f}{'!' if refused else ''}"
                    for entries, nbytes, refused in seconds)


def recovery(seconds):
    """Seconds from the first second with refusals to the next second at >= 90% use, or None."""
    first = next((index for index, second in enumerate(seconds) if second[2]), None)
    if first is None:
        return None
    for index in range(first + 1, len(seconds) - 1):  # the last second is partial
        if shard_use(seconds[index][0], seconds[index][1]) >= 0.9:
            return index - first
    return "not within the run"


# Scenario B's run with another writer on the shard: the mode, the share of the shard's limits the
# other writer takes, and from when to when (seconds after the shipper starts).
CONTENTION = ("aggregate + gzip", ["--aggregate", "--compress", "gzip"], 0.6, 3.0, 7.0)


def contention_run(args, work, window, corpus):
    """B's gzip mode while another writer takes 60% of the shard for four seconds: the shard's use
    per second shows how the shipper backs off, and how soon it is back near the limit."""
    name, mode_flags, share, start, stop = CONTENTION
    count = args.b_lines_contention
    log = os.path.join(work, f"b-{window}-contention.log")
    write_lines(log, corpus[:count])
    endpoint = Endpoint("--shard-limits", "--window", window, shards=1)
    flags = mode_flags + args.b_flags.split()
    timers = [threading.Timer(start, endpoint.set_faults, kwargs={"other_writer_share": share}),
              threading.Timer(stop, endpoint.set_faults, kwargs={"other_writer_share": 0.0})]
    for timer in timers:
        timer.start()
    left_at = time.monotonic() + stop
    try:
        elapsed, code, usage, final = ship_until(
            log, endpoint, os.path.join(work, f"b-data-{window}-contention"), flags,
            lambda s: s.get("user_records_accepted", 0) >= count, f"scenario B {window} contention")
        seconds = get_json(endpoint.port, "/stats/seconds")["seconds"]
    finally:
        for timer in timers:
            timer.cancel()
        endpoint.close()
        os.remove(log)
    # Seconds of the endpoint's clock: the first whole second after the other writer left, and the
    # first at >= 90% from there.
    left = left_at - endpoint.started
    first_whole = int(left) + 1
    back = next((index for index in range(first_whole, len(seconds) - 1)
                 if shard_use(seconds[index][0], seconds[index][1]) >= 0.9), None)
    busy = [index for index, (entries, _, refused) in enumerate(seconds) if entries or refused]
    shown = seconds[busy[0]:busy[-1] + 1] if busy else []
    recovered = ("not within the run" if back is None
                 else f"{back - left:.1f} s after it left (second {back - busy[0]} of the run)")
    return (f"- {name}, another writer taking {share:.0%} of the shard from {start:.0f} s to "
            f"{stop:.0f} s after start ({count} lines, {count / elapsed:,.0f} lines/s, "
            f"{final['throttled']} entries throttled); first whole second at >= 90%: {recovered}: "
            f"{timeline(shown)}")


def scenario_b(args, work):
    count_raw, count_agg = args.b_lines_raw, args.b_lines_agg
    corpus = celery_corpus(max(count_raw, count_agg, args.b_lines_contention))
    mean = sum(len(line) + 1 for line in corpus) / len(corpus)
    for window in windows(args):
        rows, timelines = [], []
        for name, mode_flags in B_MODES:
            count = count_raw if name == "raw" else count_agg
            log = os.path.join(work, f"b-{window}-{len(rows)}.log")
            size = write_lines(log, corpus[:count])
            endpoint = Endpoint("--shard-limits", "--window", window, shards=1)
            flags = mode_flags + args.b_flags.split()
            try:
                elapsed, code, usage, final = ship_until(
                    log, endpoint, os.path.join(work, f"b-data-{window}-{len(rows)}"), flags,
                    lambda s: s.get("user_records_accepted", 0) >= count,
                    f"scenario B {window} {name}")
                seconds = shard_seconds(endpoint)
            except Refused as refusal:
                rows.append([name, " ".join(flags), count, "refused (exit 64)", str(refusal)[:80]]
                            + [""] * 7)
                continue
            except Incomplete as incomplete:
                FAILURES.append(f"B {window} {name}: {incomplete}")
                rows.append([name, " ".join(flags), count, "**INCOMPLETE**", str(incomplete)]
                            + [""] * 7)
                continue
            finally:
                endpoint.close()
                os.remove(log)
            records = final["kinesis_records_accepted"]
            cpu = usage.ru_utime + usage.ru_stime
            shard_bytes = sum(nbytes for _, nbytes, _ in seconds)
            # Whole seconds only: the first and last are partly before start and after the end.
            inner = seconds[1:-1] or seconds
            steady = statistics.mean(shard_use(e, b) for e, b, _ in inner) if inner else 0
            rows.append([
                name, " ".join(flags) or "(none)", count,
                versus(f"{count / elapsed:,.0f}", count / elapsed, "B", window, name, "lines/s"),
                f"{elapsed:.1f}", f"{records / elapsed:,.0f}",
                f"{final['user_records_accepted'] / max(records, 1):,.1f}",
                f"{final['user_bytes_accepted'] / max(final['bytes'], 1):.2f}",
                versus(str(final["throttled"]), final["throttled"], "B", window, name, "throttled"),
                f"{100 * shard_bytes / elapsed / SHARD_BYTES_PER_SECOND:.0f}%",
                f"{100 * steady:.0f}%", f"{cpu:.2f}",
            ])
            timelines.append((name, seconds))
            if final.get("user_records_accepted", 0) < count or code != 0:
                sys.exit(f"scenario B {window} {name}: not every line arrived or exit {code}: {final}")
        header(f"B: one shard with the Kinesis write limits (1000 records/s, 1 MiB/s), "
               f"{window} windows")
        print(f"Celery-like corpus, mean line {mean:.0f} B (newline included); time from start "
              f"until the endpoint accepted every line. The endpoint counts each shard's writes "
              + ("in fixed one-second windows" if window == "fixed"
                 else "over the last second in ten 100 ms slots")
              + ". Bytes use: bytes accepted (data and partition keys) / 1 MiB/s over the run; "
                "steady use: the mean of whole seconds' use (entries / 1000 or bytes / 1 MiB, "
                "the larger).\n")
        table(["mode", "flags", "lines", "lines/s", "seconds", "Kinesis records/s",
               "lines per Kinesis record", "user bytes / sent bytes", "throttled entries",
               "bytes use", "steady use", "CPU-s"], rows)
        contention = contention_run(args, work, window, corpus) if args.b_lines_contention else None
        print(f"Shard use per second, % ({window} windows; `!`: entries refused in that second; "
              f"recovery: seconds from the first refusal to a second at >= 90%):\n")
        for name, seconds in timelines:
            back = recovery(seconds)
            note = "" if back is None else f" (recovery: {back})"
            print(f"- {name}{note}: {timeline(seconds)}")
        if contention:
            print(contention)
        print()


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            rest = line[len(name):]
            if rest[:1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


C_MODES = [("raw", []), ("aggregate", ["--aggregate"])]


def run_c(args, work, name, mode_flags, corpus):
    """One mode of scenario C; returns its table column or None when the shipper refuses it."""
    count = len(corpus)
    log = os.path.join(work, f"c-{name}.log")
    write_lines(log, corpus)
    endpoint = Endpoint("--fail-records", "0.3", "--fail-http", "0.05", "--track-duplicates",
                        shards=4)
    metrics_port = free_port()
    flags = mode_flags + ["--linger", "50ms"] + args.c_flags.split()
    started = time.monotonic()
    shipper = start_shipper(log, endpoint, os.path.join(work, f"c-data-{name}"),
                            flags + ["--metrics-addr", f"127.0.0.1:{metrics_port}"])
    try:
        while True:
            current = endpoint.stats()
            unique = current["user_records_accepted"] - current["duplicate_user_records"]
            if unique >= count:
                break
            check_alive(shipper, f"scenario C {name}")
            if time.monotonic() - started > DEADLINE_SECONDS:
                raise SystemExit(f"scenario C {name}: {unique} of {count} lines after {DEADLINE_SECONDS} s")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
    except Refused as refusal:
        return [name, " ".join(flags), "refused (exit 64)", str(refusal)[:80]] + [""] * 9
    except BaseException:
        if shipper.poll() is None:
            shipper.kill()
            shipper.wait()
        raise
    finally:
        endpoint_stats = endpoint.stats() if endpoint.process.poll() is None else {}
        endpoint.close()
        os.remove(log)
    code, _ = stop_shipper(shipper)
    final = endpoint_stats
    duplicates = final["duplicate_user_records"]
    delivered = final["user_records_accepted"] - duplicates
    if delivered < count or code != 0:
        sys.exit(f"scenario C {name}: {delivered} of {count} lines delivered, exit {code}")
    return [
        name, " ".join(flags), f"{delivered} / {count}", duplicates,
        final["failed_entries_injected"], final["http_5xx_injected"],
        f"{metric(metrics, 'shipper_records_retried_total'):.0f}",
        f"{metric(metrics, 'shipper_put_records_requests_total'):.0f}",
        f"{metric(metrics, 'shipper_put_records_failed_total'):.0f}",
        f"{metric(metrics, 'shipper_records_dead_lettered_total'):.0f}",
        versus(f"{elapsed:.1f}", elapsed, "C", name, "seconds"), f"{count / elapsed:,.0f}", code,
    ]


def scenario_c(args, work):
    corpus = celery_corpus(args.c_lines, seed=11)
    assert len(set(corpus)) == len(corpus), "duplicate counting needs unique lines"
    rows = [run_c(args, work, name, flags, corpus) for name, flags in C_MODES]
    header("C: 30% per-entry failures, 5% HTTP 500 (4 shards, no shard limits)")
    print(f"{args.c_lines} Celery-like lines, all different. Duplicates: user records whose data the "
          "endpoint had already accepted. Retries: the shipper's shipper_records_retried_total "
          "(Kinesis records, not lines, when aggregating).\n")
    table(["mode", "flags", "distinct lines delivered / written", "duplicates",
           "entries failed (injected)", "HTTP 500 (injected)", "records retried",
           "PutRecords requests", "failed entries seen", "dead-lettered", "seconds", "lines/s",
           "exit"], rows)


D_MODES = [("raw", []), ("aggregate", ["--aggregate"])]


def scenario_d(args, work):
    rate, seconds = args.d_rate, args.d_seconds
    count = rate * seconds
    rows = []
    for name, mode_flags in D_MODES:
        log = os.path.join(work, f"d-{name}.log")
        open(log, "w").close()
        endpoint = Endpoint("--store", shards=1)
        flags = mode_flags + args.d_flags.split()
        shipper = start_shipper(log, endpoint, os.path.join(work, f"d-data-{name}"), flags)
        try:
            # Ready when the file has been opened and one line made the round trip.
            fd = os.open(log, os.O_WRONLY | os.O_APPEND)
            os.write(fd, f"warm-up {time.time():.6f}\n".encode())
            deadline = time.monotonic() + 60
            while endpoint.stats()["user_records_accepted"] < 1:
                check_alive(shipper, f"scenario D {name}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"scenario D {name}: the warm-up line never arrived")
                time.sleep(0.01)
            start = time.monotonic()
            for i in range(count):
                target = start + i / rate
                pause = target - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                line = (f"[2026-11-22 10:00:00,000: INFO/ForkPoolWorker-1] latency probe seq={i:06d} "
                        f"written={time.time():.6f}\n")
                os.write(fd, line.encode())
            os.close(fd)
            deadline = time.monotonic() + 60
            while endpoint.stats()["user_records_accepted"] < count + 1:
                check_alive(shipper, f"scenario D {name}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"scenario D {name}: not every line arrived: {endpoint.stats()}")
                time.sleep(0.01)
            code, _ = stop_shipper(shipper)
        except Refused as refusal:
            rows.append([name, " ".join(flags), "refused (exit 64)", str(refusal)[:80], "", "", "", ""])
            endpoint.close()
            continue
        latencies = {}
        for arrival, data in stored_records(endpoint.port):
            for user in user_records(data):
                text = user.decode()
                if "latency probe" not in text:
                    continue
                fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
                # The first arrival counts (a retried line may arrive twice).
                seq = int(fields["seq"])
                latencies.setdefault(seq, arrival - float(fields["written"]))
        endpoint.close()
        if len(latencies) < count or code != 0:
            sys.exit(f"scenario D {name}: {len(latencies)} of {count} probes arrived, exit {code}")
        values = [1000 * value for value in latencies.values()]
        rows.append([name, " ".join(flags) or "(defaults)", count,
                     versus(f"{percentile(values, 0.5):.0f}", percentile(values, 0.5), "D", name,
                            "p50 ms"),
                     f"{percentile(values, 0.9):.0f}",
                     versus(f"{percentile(values, 0.99):.0f}", percentile(values, 0.99), "D", name,
                            "p99 ms"),
                     f"{max(values):.0f}",
                     f"{statistics.mean(values):.0f}"])
    header(f"D: latency from write to acceptance, {rate} lines/s for {seconds} s (1 shard)")
    print("Write time is embedded in each line; arrival time is the endpoint's "
          "ApproximateArrivalTimestamp (GetRecords), same host clock.\n")
    table(["mode", "flags", "lines", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"], rows)


# ----------------------------------------------------------------------------------------------
# R: rotation while the shipper is behind

R_CASES = [(12, 0.2), (50, 0.05)]


def open_descriptors(pid, under):
    """How many of `pid`'s descriptors are files under the directory `under`."""
    count = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(under):
                    count += 1
            except OSError:
                pass
    except OSError:
        pass
    return count


def shift_rotate(log, keep):
    """What logrotate's and Python's rename rotation do: app.log.N -> app.log.N+1, ...,
    app.log -> app.log.1; the oldest beyond `keep` is deleted."""
    oldest = f"{log}.{keep}"
    if os.path.exists(oldest):
        os.remove(oldest)
    for n in range(keep - 1, 0, -1):
        if os.path.exists(f"{log}.{n}"):
            os.rename(f"{log}.{n}", f"{log}.{n + 1}")
    os.rename(log, f"{log}.1")


def scenario_r(args, work):
    rows = []
    for rotations, gap in R_CASES:
        name = f"{rotations} rotations, {gap} s apart"
        case_dir = os.path.join(work, f"r-{rotations}")
        os.makedirs(case_dir)
        log = os.path.join(case_dir, "app.log")
        total = rotations * args.r_lines
        endpoint = Endpoint("--store", "--shard-limits", "--track-duplicates", shards=2)
        shipper = start_shipper(log, endpoint, os.path.join(work, f"r-data-{rotations}"),
                                args.r_flags.split())
        peak = 0
        started = time.monotonic()
        try:
            # The worker starts once the shipper is watching (it says it waits for the file).
            while "keeps looking" not in open(shipper.log_file.name).read():
                check_alive(shipper, f"scenario R {name}")
                if time.monotonic() - started > 60:
                    raise SystemExit(f"scenario R {name}: the shipper never started watching")
                time.sleep(0.01)
            started = time.monotonic()
            seq = 0
            for _ in range(rotations):
                with open(log, "a") as out:
                    for _ in range(args.r_lines):
                        out.write(f"[2026-11-22 10:00:00,000: INFO/ForkPoolWorker-1] rotation seq={seq:07d} "
                                  f"{'x' * 40}\n")
                        seq += 1
                peak = max(peak, open_descriptors(shipper.pid, case_dir))
                shift_rotate(log, keep=rotations + 1)
                open(log, "a").close()
                deadline = time.monotonic() + gap
                while time.monotonic() < deadline:
                    peak = max(peak, open_descriptors(shipper.pid, case_dir))
                    time.sleep(0.005)
            while endpoint.stats()["user_records_accepted"] < total:
                check_alive(shipper, f"scenario R {name}")
                peak = max(peak, open_descriptors(shipper.pid, case_dir))
                if time.monotonic() - started > DEADLINE_SECONDS:
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            code, _ = stop_shipper(shipper)
        except BaseException:
            if shipper.poll() is None:
                shipper.kill()
            endpoint.close()
            raise
        seen = set()
        for _, data in stored_records(endpoint.port):
            for user in user_records(data):
                text = user.decode(errors="replace")
                if "rotation seq=" in text:
                    seen.add(int(text.split("seq=")[1][:7]))
        duplicates = endpoint.stats()["duplicate_user_records"]
        endpoint.close()
        missing = total - len(seen)
        if missing or code != 0:
            FAILURES.append(f"R {name}: {missing} of {total} lines missing, exit {code}")
        rows.append([name, total, len(seen), missing, duplicates, peak,
                     versus(f"{elapsed:.1f}", elapsed, "R", name, "seconds")])
    header("R: rotation while behind (2 shards at the real limits)")
    print(f"{args.r_lines} lines per generation; flags: {args.r_flags or '(defaults)'}.\n")
    table(["case", "lines written", "delivered", "missing", "duplicates", "peak open files",
           "seconds to deliver all"], rows)


# ----------------------------------------------------------------------------------------------
# K: kill -9 while shipping


def scenario_k(args, work):
    count = args.k_lines
    log = os.path.join(work, "k.log")
    lines = [f"[2026-11-22 10:00:00,000: INFO/ForkPoolWorker-1] kill seq={i:07d} {'y' * 120}"
             for i in range(count)]
    size = write_lines(log, lines)
    rng = random.Random(11)
    rows = []
    for interval in ["100ms", "1s"]:
        flags = ["--no-rate-limit", "--checkpoint-interval", interval] + args.k_flags.split()
        # A clean run: the speed and CPU cost with these checkpoint writes.
        endpoint = Endpoint(shards=4)
        elapsed, code, usage, _ = ship_until(
            log, endpoint, os.path.join(work, f"k-clean-{interval}"), flags,
            lambda current: current["user_records_accepted"] >= count, f"K clean {interval}")
        endpoint.close()
        rate = count / elapsed
        cpu = usage.ru_utime + usage.ru_stime
        # Killed runs.
        endpoint = Endpoint("--track-duplicates", shards=4)
        data_dir = os.path.join(work, f"k-data-{interval}")
        kills = 0
        for _ in range(args.k_kills):
            shipper = start_shipper(log, endpoint, data_dir, flags)
            time.sleep(rng.uniform(0.2, 0.6))
            check_alive(shipper, f"K {interval}")
            shipper.kill()
            shipper.wait()
            shipper.log_file.close()
            kills += 1
            if endpoint.stats()["user_records_accepted"] >= count:
                break
        ship_until(log, endpoint, data_dir, flags,
                   lambda current: current["user_records_accepted"] - current["duplicate_user_records"] >= count,
                   f"K final {interval}")
        final = endpoint.stats()
        endpoint.close()
        duplicates = final["duplicate_user_records"]
        per_kill = duplicates / max(kills, 1)
        rows.append([interval, count, kills, duplicates,
                     versus(f"{per_kill:,.0f}", per_kill, "K", interval, "duplicates per kill"),
                     f"{per_kill / rate:.3f}", f"{rate:,.0f}", f"{cpu / (size / 1e9):.1f}"])
    header("K: kill -9 while shipping (4 shards, no limits)")
    table(["--checkpoint-interval", "lines", "kills", "duplicates", "duplicates per kill",
           "seconds of full speed per kill", "clean run lines/s", "clean run CPU-s/GB"], rows)


# ----------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--scenario", default="A,B,C,D",
                        help="comma-separated subset of A,B,C,D,R,K (R and K run only when named)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller inputs (A: 128 MiB, B: 3k raw / 100k aggregated lines, "
                             "C: 5k lines, D: 5 s) unless sizes are given explicitly")
    parser.add_argument("--run-timeout", type=int, default=300,
                        help="seconds one run may take before it is reported incomplete")
    parser.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    parser.add_argument("--size-mib", type=int, help="A: file size (default 1024, quick 128)")
    parser.add_argument("--line-bytes", type=int, default=200, help="A: line length")
    parser.add_argument("--shards", type=int, default=4, help="A: shards")
    parser.add_argument("--endpoint-threads", type=int, default=1, help="A: endpoint worker threads")
    parser.add_argument("--tls", action="store_true",
                        help="the shipper reaches the endpoint over HTTPS, as it reaches Kinesis")
    parser.add_argument("--extra", default="", help="A: extra shipper flags, e.g. '--aggregate'")
    parser.add_argument("--fluent-bit", metavar="PATH",
                        help="A: also run this Fluent Bit binary on the same file (needs --tls)")
    parser.add_argument("--b-lines-raw", type=int, help="B: lines for raw mode (default 10000, quick 3000)")
    parser.add_argument("--b-lines-agg", type=int,
                        help="B: lines for aggregated modes (default 300000, quick 100000)")
    parser.add_argument("--b-flags", default="", help="B: extra shipper flags for every mode")
    parser.add_argument("--b-lines-contention", type=int, default=400_000,
                        help="B: lines for the run with another writer on the shard (0: none)")
    parser.add_argument("--window", choices=["fixed", "sliding", "both"], default="both",
                        help="B: how the endpoint counts the shard limits: fixed one-second "
                             "windows, a sliding second of ten 100 ms slots, or a run of each")
    parser.add_argument("--c-lines", type=int, help="C: lines per mode (default 20000, quick 5000)")
    parser.add_argument("--c-flags", default="", help="C: extra shipper flags, e.g. '--aggregate'")
    parser.add_argument("--d-rate", type=int, default=200, help="D: lines per second")
    parser.add_argument("--d-seconds", type=int, help="D: seconds of writing (default 10, quick 5)")
    parser.add_argument("--d-flags", default="", help="D: extra shipper flags for every mode")
    parser.add_argument("--r-lines", type=int, default=2500, help="R: lines per generation")
    parser.add_argument("--r-flags", default="", help="R: extra shipper flags")
    parser.add_argument("--k-lines", type=int, help="K: lines (default 3000000, quick 1000000)")
    parser.add_argument("--k-kills", type=int, default=20, help="K: kill -9 count")
    parser.add_argument("--k-flags", default="", help="K: extra shipper flags")
    args = parser.parse_args()
    pick = lambda value, full, quick: value if value is not None else (quick if args.quick else full)
    args.size_mib = pick(args.size_mib, 1024, 128)
    args.b_lines_raw = pick(args.b_lines_raw, 10_000, 3_000)
    args.b_lines_agg = pick(args.b_lines_agg, 300_000, 100_000)
    args.c_lines = pick(args.c_lines, 20_000, 5_000)
    args.d_seconds = pick(args.d_seconds, 10, 5)
    args.k_lines = pick(args.k_lines, 3_000_000, 1_000_000)
    global DEADLINE_SECONDS
    DEADLINE_SECONDS = args.run_timeout
    scenarios = [name.strip().upper() for name in args.scenario.split(",") if name.strip()]
    unknown = set(scenarios) - set("ABCDRK")
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}")

    if not args.no_build:
        # One package per build: the shipper built alone is the one the Dockerfile ships (built
        # together, the two would share their dependencies' features).
        for package in ("shipper", "fake-kinesis"):
            subprocess.run(["cargo", "build", "--release", "--quiet", "-p", package], cwd=ROOT,
                           check=True)
    commit = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"## shipper benchmark\n")
    print(f"machine: {machine()}; commit: {commit}; "
          f"command: {' '.join(['scripts/bench.sh'] + sys.argv[1:])}\n")
    print(f"{startup_layout()}\n")
    work = tempfile.mkdtemp(prefix="shipper-bench-")
    if args.fluent_bit:
        if not args.tls:
            raise SystemExit("--fluent-bit needs --tls: Fluent Bit's kinesis_streams output speaks only HTTPS")
        version = subprocess.run([args.fluent_bit, "--version"], capture_output=True, text=True)
        if version.returncode != 0:
            raise SystemExit(f"{args.fluent_bit} --version failed: {version.stderr.strip()}")
        FLUENT_BIT.update(path=args.fluent_bit, version=version.stdout.strip().splitlines()[0])
    if args.tls:
        make_certificate(work)
        print("transport: HTTPS (TLS 1.3, self-signed certificate through SSL_CERT_FILE)\n")
    runners = {"A": scenario_a, "B": scenario_b, "C": scenario_c, "D": scenario_d,
               "R": scenario_r, "K": scenario_k}
    for name in scenarios:
        runners[name](args, work)
        sys.stdout.flush()
    if FAILURES:
        print("**Not every line arrived:**\n\n" + "\n".join(f"- {failure}" for failure in FAILURES))
        sys.exit(1)


if __name__ == "__main__":
    main()
