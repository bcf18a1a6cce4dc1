#!/usr/bin/env python3
"""Create and delete the AWS resources the shipper's local tests use, against LocalStack.

Run it with the LocalStack venv's python (it has boto3):

    .localstack/venv/bin/python localstack/resources.py stream demo-logs --shards 2
    .localstack/venv/bin/python localstack/resources.py firehose demo-archive --bucket demo-archive
    .localstack/venv/bin/python localstack/resources.py delete-stream demo-logs
    .localstack/venv/bin/python localstack/resources.py cat-bucket demo-archive

Endpoint, region and credentials default to LocalStack's (http://127.0.0.1:$LOCALSTACK_PORT,
us-east-1, test/test); --endpoint-url and --region override them.
"""

import argparse
import os
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ACCOUNT_ID = "000000000000"
# LocalStack does not check IAM; any role ARN in its account is accepted.
FIREHOSE_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/any"


def default_endpoint() -> str:
    port = os.environ.get("LOCALSTACK_PORT", "4566")
    return os.environ.get("AWS_ENDPOINT_URL") or f"http://127.0.0.1:{port}"


def client(args, service: str):
    return boto3.client(
        service,
        endpoint_url=args.endpoint_url,
        region_name=args.region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            # The first CreateStream waits for LocalStack to install kinesis-mock.
            read_timeout=120,
            connect_timeout=5,
        ),
    )


def error_code(err: ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")


def wait_for(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            sys.exit(f"resources: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def cmd_stream(args) -> None:
    kinesis = client(args, "kinesis")
    try:
        kinesis.create_stream(StreamName=args.name, ShardCount=args.shards)
    except ClientError as err:
        if error_code(err) != "ResourceInUseException":
            raise
        summary = kinesis.describe_stream_summary(StreamName=args.name)["StreamDescriptionSummary"]
        if summary["OpenShardCount"] != args.shards:
            print(
                f"resources: stream {args.name} already exists with "
                f"{summary['OpenShardCount']} shards (asked for {args.shards}); keeping it",
                file=sys.stderr,
            )

    def active() -> bool:
        status = kinesis.describe_stream_summary(StreamName=args.name)["StreamDescriptionSummary"][
            "StreamStatus"
        ]
        return status == "ACTIVE"

    wait_for(f"stream {args.name} to become ACTIVE", active, args.timeout)


def cmd_delete_stream(args) -> None:
    kinesis = client(args, "kinesis")
    try:
        kinesis.delete_stream(StreamName=args.name, EnforceConsumerDeletion=True)
    except ClientError as err:
        if error_code(err) == "ResourceNotFoundException":
            return
        raise

    def gone() -> bool:
        try:
            kinesis.describe_stream_summary(StreamName=args.name)
        except ClientError as err:
            if error_code(err) == "ResourceNotFoundException":
                return True
            raise
        return False

    wait_for(f"stream {args.name} to be deleted", gone, args.timeout)


def cmd_firehose(args) -> None:
    s3 = client(args, "s3")
    try:
        # us-east-1 takes no LocationConstraint; other regions need one.
        if args.region == "us-east-1":
            s3.create_bucket(Bucket=args.bucket)
        else:
            s3.create_bucket(
                Bucket=args.bucket,
                CreateBucketConfiguration={"LocationConstraint": args.region},
            )
    except ClientError as err:
        if error_code(err) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise

    firehose = client(args, "firehose")
    try:
        firehose.create_delivery_stream(
            DeliveryStreamName=args.name,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": FIREHOSE_ROLE_ARN,
                "BucketARN": f"arn:aws:s3:::{args.bucket}",
                "BufferingHints": {"IntervalInSeconds": 1, "SizeInMBs": 1},
            },
        )
    except ClientError as err:
        if error_code(err) != "ResourceInUseException":
            raise

    def active() -> bool:
        desc = firehose.describe_delivery_stream(DeliveryStreamName=args.name)
        return desc["DeliveryStreamDescription"]["DeliveryStreamStatus"] == "ACTIVE"

    wait_for(f"delivery stream {args.name} to become ACTIVE", active, args.timeout)


def cmd_cat_bucket(args) -> None:
    """Every object of the bucket, in key order, written to stdout as they are."""
    s3 = client(args, "s3")
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.name):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    for key in sorted(keys):
        sys.stdout.buffer.write(s3.get_object(Bucket=args.name, Key=key)["Body"].read())
    sys.stdout.buffer.flush()


def cmd_delete_firehose(args) -> None:
    """Delete a delivery stream and its bucket (with the objects in it), if they exist."""
    firehose = client(args, "firehose")
    try:
        firehose.delete_delivery_stream(DeliveryStreamName=args.name)
    except ClientError as err:
        if error_code(err) != "ResourceNotFoundException":
            raise
    s3 = client(args, "s3")
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=args.bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=args.bucket)
    except ClientError as err:
        if error_code(err) != "NoSuchBucket":
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint-url", default=default_endpoint())
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for ACTIVE")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stream", help="create a Kinesis stream if missing and wait until ACTIVE")
    p.add_argument("name")
    p.add_argument("--shards", type=int, default=1)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("firehose", help="create an S3 bucket and a Direct-PUT delivery stream to it")
    p.add_argument("name")
    p.add_argument("--bucket", required=True)
    p.set_defaults(func=cmd_firehose)

    p = sub.add_parser("cat-bucket", help="print every object of a bucket, in key order")
    p.add_argument("name")
    p.set_defaults(func=cmd_cat_bucket)

    p = sub.add_parser("delete-firehose", help="delete a delivery stream and its bucket")
    p.add_argument("name")
    p.add_argument("--bucket", required=True)
    p.set_defaults(func=cmd_delete_firehose)

    p = sub.add_parser("delete-stream", help="delete a Kinesis stream if it exists")
    p.add_argument("name")
    p.set_defaults(func=cmd_delete_stream)

    args = parser.parse_args()
    try:
        args.func(args)
    except ClientError as err:
        sys.exit(f"resources: {args.command} {args.name}: {err}")


if __name__ == "__main__":
    main()
