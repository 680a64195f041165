"""``bucket`` for the examples in docs/SEMANTICS.md: the bucket seen directly, behind the mount.

Usage: bucket put KEY TEXT [CONTENT-TYPE] | exists KEY | size KEY | meta KEY NAME | type KEY.
Keys are relative to $BUCKET_PREFIX (the example's directory). Endpoint, bucket and admin keys
come from the environment.
"""

from __future__ import annotations

import os
import sys

import boto3
from botocore.config import Config


def main(argv: list[str]) -> int:
    s3 = boto3.client("s3", endpoint_url=os.environ["BUCKET_ENDPOINT"], region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}))
    bucket = os.environ["BUCKET_NAME"]
    cmd, key, *rest = argv
    key = os.environ.get("BUCKET_PREFIX", "") + key
    if cmd == "put":
        s3.put_object(Bucket=bucket, Key=key, Body=rest[0].encode(),
                      **({"ContentType": rest[1]} if len(rest) > 1 else {}))
    elif cmd == "exists":
        try:
            s3.head_object(Bucket=bucket, Key=key)
            print("yes")
        except s3.exceptions.ClientError:
            print("no")
    elif cmd == "size":
        print(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
    elif cmd == "type":
        print(s3.head_object(Bucket=bucket, Key=key)["ContentType"])
    elif cmd == "meta":
        print(s3.head_object(Bucket=bucket, Key=key)["Metadata"].get(rest[0], ""))
    else:
        print(f"bucket: unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
