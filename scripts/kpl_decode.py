#!/usr/bin/env python3
"""De-aggregate the shipper's records with the reference Python decoder (aws-kinesis-agg).

Reads what `shipper tail --stdout` printed on standard input: one Kinesis record per line, either
plain text or `base64:<data>`. Each record is decompressed first when asked (`--decompress gzip`,
`zstd` if the `zstandard` module is installed, or `auto` by magic bytes), then handed to
`aws_kinesis_agg.deaggregator.iter_deaggregate_records` exactly as a Lambda function would receive
it. Prints one JSON document:

    {"kinesis_records": N, "user_records": [{"record": i, "aggregated": bool,
      "partition_key": str|null, "explicit_hash_key": str|null, "data_base64": str}, ...]}

The reference decoder is lenient: a record with the KPL magic bytes whose MD5 trailer or protobuf
body is wrong is passed through as if it were not aggregated, and an exception while splitting an
aggregate is printed and the rest of it dropped. A consumer would then see garbage instead of log
lines. So this script is strict: a record that starts with the magic bytes must come out of the
decoder de-aggregated, with as many user records as its protobuf holds, or the script exits 2 and
says which record was refused.

Run it with the venv that scripts/install-tools.sh creates:

    .tools/venv/bin/python scripts/kpl_decode.py --decompress gzip < records.txt
"""
import argparse
import base64
import gzip
import io
import json
import sys

try:
    # The deaggregator first: it puts the package's directory on sys.path, which its generated
    # protobuf modules need to import each other.
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records
    import aws_kinesis_agg
    from aws_kinesis_agg import messages_pb2
except ImportError as error:  # pragma: no cover - a setup problem, said plainly
    sys.exit(f"kpl_decode: {error}; run scripts/install-tools.sh and use .tools/venv/bin/python")

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Refuse to inflate one record beyond this (the shipper's records are at most 10 MiB).
MAX_DECOMPRESSED = 64 << 20


class Refused(Exception):
    pass


def record_bytes(line):
    if line.startswith("base64:"):
        return base64.b64decode(line[len("base64:"):], validate=True)
    return line.encode("utf-8")


def bounded_gunzip(data):
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        out = stream.read(MAX_DECOMPRESSED + 1)
    if len(out) > MAX_DECOMPRESSED:
        raise Refused("decompresses beyond the bound")
    return out


def unzstd(data):
    try:
        import zstandard
    except ImportError:
        raise Refused("zstd record, but the zstandard module is not installed")
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
    out = reader.read(MAX_DECOMPRESSED + 1)
    if len(out) > MAX_DECOMPRESSED:
        raise Refused("decompresses beyond the bound")
    return out


def decompress(data, mode):
    if mode == "none":
        return data
    if mode == "auto":
        if data.startswith(GZIP_MAGIC):
            mode = "gzip"
        elif data.startswith(ZSTD_MAGIC):
            mode = "zstd"
        else:
            return data
    if mode == "gzip":
        if not data.startswith(GZIP_MAGIC):
            raise Refused("expected gzip data")
        try:
            return bounded_gunzip(data)
        except (OSError, EOFError) as error:
            raise Refused(f"gzip: {error}")
    if not data.startswith(ZSTD_MAGIC):
        raise Refused("expected zstd data")
    return unzstd(data)


def protobuf_record_count(payload):
    """User records the aggregate says it holds, parsed with the package's own protobuf schema."""
    body = payload[len(aws_kinesis_agg.MAGIC):-aws_kinesis_agg.DIGEST_SIZE]
    message = messages_pb2.AggregatedRecord()
    message.ParseFromString(body)
    return len(message.records)


def as_text(data):
    """The decoder gives aggregated user records' data as base64 bytes, others as base64 text."""
    return data.decode("ascii") if isinstance(data, bytes) else data


def decode(lines, mode):
    user_records = []
    count = 0
    for index, line in enumerate(lines):
        line = line.rstrip("\n")
        if not line:
            continue
        count += 1
        try:
            payload = decompress(record_bytes(line), mode)
        except Refused as refusal:
            raise Refused(f"record {index}: {refusal}")
        except ValueError as error:
            raise Refused(f"record {index}: bad base64: {error}")
        # The shape Lambda hands to a function; the decoder base64-decodes `data` itself.
        kinesis_record = {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "sequenceNumber": str(index),
                "approximateArrivalTimestamp": 0,
                "partitionKey": None,
                "data": base64.b64encode(payload).decode("ascii"),
            }
        }
        produced = list(iter_deaggregate_records(kinesis_record))
        looks_aggregated = payload.startswith(aws_kinesis_agg.MAGIC)
        aggregated = [r for r in produced if r["kinesis"].get("aggregated")]
        if looks_aggregated:
            if len(aggregated) != len(produced) or not aggregated:
                raise Refused(f"record {index}: has the KPL magic bytes but the reference decoder "
                              f"did not de-aggregate it (bad MD5 trailer or protobuf body)")
            try:
                expected = protobuf_record_count(payload)
            except Exception as error:  # the decoder accepted it; this cannot normally fail
                raise Refused(f"record {index}: protobuf: {error}")
            if expected != len(aggregated):
                raise Refused(f"record {index}: the reference decoder produced {len(aggregated)} of "
                              f"{expected} user records (bad key index?)")
        for user in produced:
            fields = user["kinesis"]
            user_records.append({
                "record": index,
                "aggregated": bool(fields.get("aggregated")),
                "partition_key": fields.get("partitionKey"),
                "explicit_hash_key": fields.get("explicitHashKey"),
                "data_base64": as_text(fields["data"]),
            })
    return {"kinesis_records": count, "user_records": user_records}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decompress", choices=["none", "gzip", "zstd", "auto"], default="none")
    args = parser.parse_args()
    try:
        result = decode(sys.stdin, args.decompress)
    except Refused as refusal:
        print(f"kpl_decode: refused: {refusal}", file=sys.stderr)
        sys.exit(2)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
