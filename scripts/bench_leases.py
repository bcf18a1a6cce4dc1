#!/usr/bin/env python3
"""Lease overhead of `shipper consume --lease-table`: three replicas on a 16-shard stream
(fake-kinesis for Kinesis and Firehose, moto's server for DynamoDB, all on 127.0.0.1).

    scripts/bench_leases.py [--shards 16] [--replicas 3] [--window 60] [--rate 2000] [--failover 10s]

Prints DynamoDB calls per second (from the replicas' shipper_consume_lease_table_calls_total,
retries included) with the replicas settled and idle, and again while records are put at
--rate records/s; then kills one replica with SIGKILL and prints how long until its shards were
taken, and until every replica held its fair share again. Runs with the Python of moto's venv
(localstack/moto.sh installs it; it brings boto3). Uses the debug build (cargo build).
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STREAM = "logs"
DELIVERY = "archive"
TABLE = "logs-leases"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def scrape(port, name):
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(f"shipper_consume_{name} "):
            return int(line.split()[1])
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--failover", default="10s")
    args = parser.parse_args()

    import boto3  # from moto's venv

    subprocess.run(["cargo", "build", "--quiet", "--bin", "shipper"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--quiet", "-p", "fake-kinesis"], cwd=ROOT, check=True)
    moto_server = subprocess.run([os.path.join(ROOT, "localstack/moto.sh")], check=True,
                                 capture_output=True, text=True).stdout.strip()
    children = []
    try:
        fake = subprocess.Popen([os.path.join(ROOT, "target/debug/fake-kinesis"), "--addr", "127.0.0.1:0",
                                 "--stream", STREAM, "--shards", str(args.shards),
                                 "--delivery-stream", DELIVERY], stdout=subprocess.PIPE, text=True)
        children.append(fake)
        fake_addr = fake.stdout.readline().strip().removeprefix("listening on ")
        moto_port = free_port()
        moto = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(moto_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children.append(moto)
        wait_port(moto_port)
        session = dict(region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
        kinesis = boto3.client("kinesis", endpoint_url=f"http://{fake_addr}", **session)
        dynamodb = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{moto_port}", **session)
        env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                   AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", RUST_LOG="warn")
        replicas = {}
        for i in range(args.replicas):
            worker, port = f"r{i}", free_port()
            data_dir = os.path.join(ROOT, "target", "bench-leases", worker)
            os.makedirs(data_dir, exist_ok=True)
            process = subprocess.Popen(
                [os.path.join(ROOT, "target/debug/shipper"), "consume", "--stream", STREAM,
                 "--delivery-stream", DELIVERY, "--endpoint-url", f"http://{fake_addr}",
                 "--firehose-endpoint-url", f"http://{fake_addr}", "--data-dir", data_dir,
                 "--lease-table", TABLE, "--create-lease-table", "--worker-id", worker,
                 "--dynamodb-endpoint-url", f"http://127.0.0.1:{moto_port}",
                 "--lease-failover", args.failover, "--metrics-addr", f"127.0.0.1:{port}"],
                env=env)
            children.append(process)
            replicas[worker] = (process, port)

        def owners():
            try:
                items = dynamodb.scan(TableName=TABLE, ConsistentRead=True)["Items"]
            except Exception:  # the table may not exist yet
                return None
            if len(items) != args.shards:
                return None
            return [item.get("leaseOwner", {}).get("S") for item in items]

        def settled(live):
            found = owners()
            if found is None or None in found:
                return False
            counts = [found.count(w) for w in live]
            fair = -(-args.shards // len(live))
            return sum(counts) == args.shards and all(fair - 1 <= c <= fair for c in counts)

        def wait(condition, what, timeout=300):
            start = time.time()
            while not condition():
                if time.time() - start > timeout:
                    sys.exit(f"timed out waiting for {what}")
                time.sleep(0.1)
            return time.time() - start

        started = time.time()
        wait(lambda: settled(list(replicas)), "the replicas to settle")
        print(f"settled {time.time() - started:.1f} s after start ({args.shards} shards, {args.replicas} replicas)")

        def calls():
            return sum(scrape(port, "lease_table_calls_total") or 0 for _, port in replicas.values())

        def rate(window):
            before, t0 = calls(), time.time()
            time.sleep(window)
            return (calls() - before) / (time.time() - t0)

        print(f"at rest: {rate(args.window):.2f} DynamoDB calls/s (all replicas)")

        stop = threading.Event()

        def load():
            n = 0
            while not stop.is_set():
                t0 = time.time()
                records = [{"Data": f"line-{n + i:09} payload".encode(), "PartitionKey": f"k{n + i}"}
                           for i in range(min(500, args.rate))]
                kinesis.put_records(StreamName=STREAM, Records=records)
                n += len(records)
                time.sleep(max(0.0, len(records) / args.rate - (time.time() - t0)))

        loader = threading.Thread(target=load)
        loader.start()
        try:
            print(f"under load ({args.rate} records/s): {rate(args.window):.2f} DynamoDB calls/s (all replicas)")
        finally:
            stop.set()
            loader.join()

        victim = "r1"
        process, _ = replicas.pop(victim)
        process.send_signal(signal.SIGKILL)
        process.wait()
        taken = wait(lambda: victim not in (owners() or [victim]), "the victim's shards to move")
        print(f"kill -9 {victim}: its shards taken {taken:.1f} s later (failover {args.failover})")
        settle = taken + wait(lambda: settled(list(replicas)), "the survivors to settle")
        print(f"the {len(replicas)} survivors settled {settle:.1f} s after the kill")
    finally:
        # Replicas first (they release their leases), then the endpoints.
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    main()
