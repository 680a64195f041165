"""What radosgw answers when STS credentials are used past their expiry.

AWS answers ``400 ExpiredToken``; Ceph radosgw (what Clever Cloud's Cellar runs) is documented by the
team to answer ``403 AccessDenied`` instead. The store must treat both as "renew the keys", so this
script checks the claim on a real gateway: it mints temporary keys with AssumeRole (radosgw refuses
``DurationSeconds`` below 900, so the run takes a little over 15 minutes), uses them once while valid,
waits past their expiry, uses them again and prints the error code, HTTP status and message. For
comparison it also prints the answers to an unknown access key and to a wrong secret.

    python bench/rgw_sts_expiry.py                      # starts its own throwaway cluster
    python bench/rgw_sts_expiry.py --endpoint URL       # an existing one with the tester user
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from radosgw import TESTER, Radosgw, RadosgwError, interrupt_on_signal

log = logging.getLogger(__name__)

MIN_DURATION = 900  # radosgw refuses shorter STS sessions


@dataclass(frozen=True)
class TempKeys:
    access_key: str
    secret_key: str
    session_token: str
    expires_at: float


class Keys(Protocol):
    """Anything carrying a key triple (our ``TempKeys``, s3mount's ``KeySet``)."""

    access_key: str
    secret_key: str
    session_token: str | None


def _client(service: str, endpoint: str, ak: str, sk: str, token: str | None = None):  # noqa: ANN202
    cfg = Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                 retries={"mode": "standard", "max_attempts": 1},
                 connect_timeout=5, read_timeout=30,
                 request_checksum_calculation="when_required",
                 response_checksum_validation="when_required")
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=ak, aws_secret_access_key=sk, aws_session_token=token,
                        config=cfg)


def _compact(doc: dict) -> str:
    # radosgw rejects policy JSON that contains spaces.
    return json.dumps(doc, separators=(",", ":"))


class StsMinter:
    """Creates one role the ``tester`` user may assume, then mints temporary keys on demand."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        uid, ak, sk = TESTER
        self._iam = _client("iam", endpoint, ak, sk)
        self._sts = _client("sts", endpoint, ak, sk)
        self._s3 = _client("s3", endpoint, ak, sk)
        self.role_name = f"bench-{uuid.uuid4().hex[:8]}"
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": [f"arn:aws:iam:::user/{uid}"]},
            "Action": ["sts:AssumeRole"]}]}
        role = self._iam.create_role(RoleName=self.role_name, Path="/",
                                     AssumeRolePolicyDocument=_compact(trust))
        self.role_arn = role["Role"]["Arn"]
        allow = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["s3:*"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
        self._iam.put_role_policy(RoleName=self.role_name, PolicyName="bucket",
                                  PolicyDocument=_compact(allow))
        try:
            self._s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):
                raise

    def mint(self, duration: int = MIN_DURATION) -> TempKeys:
        r = self._sts.assume_role(RoleArn=self.role_arn, RoleSessionName="bench",
                                  DurationSeconds=duration)
        c = r["Credentials"]
        return TempKeys(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"],
                        c["Expiration"].timestamp())

    def s3(self, keys: Keys):  # noqa: ANN201
        return _client("s3", self.endpoint, keys.access_key, keys.secret_key, keys.session_token)


def probe(fn: object) -> str:
    """Run one S3 call; describe the outcome as ``OK`` or ``HTTP <status> <code> (<message>)``."""
    try:
        fn()  # type: ignore[operator]
    except ClientError as exc:
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"HTTP {status} {err.get('Code')} (message: {err.get('Message')!r})"
    return "OK"


def observe(endpoint: str, *, margin: float = 20.0) -> dict[str, str]:
    bucket = f"sts-{uuid.uuid4().hex[:8]}"
    minter = StsMinter(endpoint, bucket)
    keys = minter.mint()
    s3 = minter.s3(keys)
    results = {"fresh STS keys": probe(lambda: s3.list_objects_v2(Bucket=bucket, MaxKeys=1))}
    print(f"fresh STS keys: {results['fresh STS keys']}; they expire in "
          f"{keys.expires_at - time.time():.0f}s, waiting", flush=True)
    deadline = keys.expires_at + margin
    while (left := deadline - time.time()) > 0:
        time.sleep(min(left, 60))
        if left > 60:
            print(f"  {left:.0f}s to go", flush=True)
    results["expired STS keys, ListObjectsV2"] = probe(
        lambda: s3.list_objects_v2(Bucket=bucket, MaxKeys=1))
    results["expired STS keys, PutObject"] = probe(
        lambda: s3.put_object(Bucket=bucket, Key="x", Body=b"x"))
    # HEAD answers carry no body, so only the status is visible to a client.
    results["expired STS keys, HeadObject"] = probe(
        lambda: s3.head_object(Bucket=bucket, Key="x"))
    unknown = _client("s3", endpoint, "UNKNOWNACCESSKEY0000", "x" * 40)
    results["unknown access key"] = probe(lambda: unknown.list_objects_v2(Bucket=bucket))
    wrong = _client("s3", endpoint, TESTER[1], "y" * 40)
    results["wrong secret"] = probe(lambda: wrong.list_objects_v2(Bucket=bucket))
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", help="use this radosgw (with the tester user) instead of "
                                       "starting one")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    try:
        if args.endpoint:
            results = observe(args.endpoint)
        else:
            with Radosgw() as gw:
                results = observe(gw.url)
    except RadosgwError as exc:
        print(f"rgw_sts_expiry: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    width = max(map(len, results))
    for what, outcome in results.items():
        print(f"{what:<{width}}  {outcome}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
