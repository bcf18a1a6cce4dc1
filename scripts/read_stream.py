#!/usr/bin/env python3
"""Read every record of every shard of a Kinesis stream and summarise what arrived.

    scripts/read_stream.py demo-logs              # count per shard, then each shard's first 3 records
    scripts/read_stream.py demo-logs --head 20    # ... first 20
    scripts/read_stream.py demo-logs --count      # only the number of records
    scripts/read_stream.py demo-logs --json       # every record as a JSON line (summary on stderr)

It reads each shard from TRIM_HORIZON until it has caught up (an empty GetRecords with
MillisBehindLatest == 0, or two empty answers in a row, or the end of a closed shard).
Records starting with the KPL aggregation magic bytes (F3 89 9A C2) are counted and marked,
not de-aggregated. Endpoint, region and credentials default to LocalStack's; it needs boto3,
and re-runs itself with the repository's LocalStack venv python when boto3 is missing.
"""

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO_ROOT / ".localstack" / "venv" / "bin" / "python"

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
except ImportError:
    if VENV_PYTHON.exists() and Path(sys.executable).resolve() != VENV_PYTHON.resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])
    sys.exit(
        "read_stream: boto3 is not installed; run localstack/start.sh once to create "
        f"{VENV_PYTHON}, or install boto3"
    )

KPL_MAGIC = b"\xf3\x89\x9a\xc2"
GET_RECORDS_LIMIT = 10_000  # GetRecords returns at most 10,000 records per call
RETRYABLE = {"ProvisionedThroughputExceededException", "LimitExceededException"}


def make_client(args):
    port = os.environ.get("LOCALSTACK_PORT", "4566")
    endpoint = args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or f"http://127.0.0.1:{port}"
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name=args.region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5),
    )


def list_shards(kinesis, stream: str) -> list[str]:
    shards, token = [], None
    while True:
        resp = (
            kinesis.list_shards(NextToken=token)
            if token
            else kinesis.list_shards(StreamName=stream)
        )
        shards += [s["ShardId"] for s in resp["Shards"]]
        token = resp.get("NextToken")
        if not token:
            return shards


def call_with_retry(fn, **kwargs):
    delay = 0.2
    for _ in range(20):
        try:
            return fn(**kwargs)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in RETRYABLE:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    return fn(**kwargs)


def read_shard(kinesis, stream: str, shard_id: str) -> list[dict]:
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records, empty_in_a_row = [], 0
    while iterator:
        resp = call_with_retry(
            kinesis.get_records, ShardIterator=iterator, Limit=GET_RECORDS_LIMIT
        )
        batch = resp["Records"]
        iterator = resp.get("NextShardIterator")
        if batch:
            empty_in_a_row = 0
            records += [dict(r, ShardId=shard_id) for r in batch]
            continue
        empty_in_a_row += 1
        if resp.get("MillisBehindLatest") == 0 or empty_in_a_row >= 2:
            break
    return records


def to_json(rec: dict) -> dict:
    data: bytes = rec["Data"]
    out = {
        "shard_id": rec["ShardId"],
        "sequence_number": rec["SequenceNumber"],
        "partition_key": rec["PartitionKey"],
        "kpl_aggregate": data.startswith(KPL_MAGIC),
    }
    if "ApproximateArrivalTimestamp" in rec:
        out["arrival"] = rec["ApproximateArrivalTimestamp"].isoformat()
    text = None
    if not out["kpl_aggregate"]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if text is not None:
        out["encoding"], out["data"] = "utf-8", text
    else:
        out["encoding"], out["data"] = "base64", base64.b64encode(data).decode("ascii")
    return out


def describe(rec: dict, width: int = 200) -> str:
    j = to_json(rec)
    head = f"{j['shard_id']} #{j['sequence_number'][-8:]} key={j['partition_key']!r}"
    if j["kpl_aggregate"]:
        body = f"<KPL aggregate, {len(rec['Data'])} bytes, not de-aggregated>"
    elif j["encoding"] == "base64":
        body = f"<{len(rec['Data'])} bytes, not UTF-8> {j['data'][:width]}"
    else:
        body = j["data"].rstrip("\n")
        body = body if len(body) <= width else body[:width] + f"... ({len(body)} chars)"
        body = body.replace("\n", "\n    ")
    return f"  {head}\n    {body}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stream")
    parser.add_argument("--endpoint-url", default=None, help="default http://127.0.0.1:4566")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print every record as a JSON line")
    mode.add_argument("--count", action="store_true", help="print only the number of records")
    parser.add_argument("--head", type=int, default=3, help="records to show per shard (default 3)")
    args = parser.parse_args()

    kinesis = make_client(args)
    try:
        shards = list_shards(kinesis, args.stream)
        per_shard = {s: read_shard(kinesis, args.stream, s) for s in shards}
    except ClientError as err:
        sys.exit(f"read_stream: {args.stream}: {err}")

    records = [r for rs in per_shard.values() for r in rs]
    kpl = sum(1 for r in records if r["Data"].startswith(KPL_MAGIC))

    if args.count:
        print(len(records))
        return

    summary = f"{len(records)} records in stream {args.stream} (" + ", ".join(
        f"{s}: {len(rs)}" for s, rs in per_shard.items()
    ) + ")"
    if kpl:
        summary += (
            f"\n{kpl} of them are KPL aggregates (magic bytes F3 89 9A C2); "
            "they are not de-aggregated here"
        )

    if args.json:
        for r in records:
            print(json.dumps(to_json(r), ensure_ascii=False))
        print(summary, file=sys.stderr)
        return

    print(summary)
    if records and args.head > 0:
        # Kinesis orders records only within a shard: show each shard's first records.
        print(f"first {args.head} records of each shard:")
        for rs in per_shard.values():
            for r in rs[: args.head]:
                print(describe(r))

if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        sys.exit(0)
