"""``s3mount credentials PROFILE``: print the profile's current S3 keys for AWS tools.

The output is the JSON the AWS SDKs and CLI expect from a ``credential_process`` (Version 1,
AccessKeyId, SecretAccessKey, SessionToken, Expiration), so a profile in ``~/.aws/config`` can use
s3mount's providers::

    [profile cleverbase]
    credential_process = s3mount credentials work

Keys that do not expire get no ``Expiration`` (the SDK then never re-runs the process). This command
never prompts: without a stored login it fails with one line telling to run ``s3mount login``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from ..config import load_profile
from ..credentials.build import provider_from_profile


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("credentials", help="print a profile's S3 keys as credential_process JSON",
                       description="Print the current S3 keys of PROFILE in the AWS "
                                   "credential_process format.")
    p.add_argument("profile", metavar="PROFILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    keys = provider_from_profile(load_profile(args.profile), interactive=False).fetch()
    out: dict[str, object] = {"Version": 1, "AccessKeyId": keys.access_key,
                              "SecretAccessKey": keys.secret_key}
    if keys.session_token:
        out["SessionToken"] = keys.session_token
    if keys.expires_at is not None:
        out["Expiration"] = datetime.fromtimestamp(keys.expires_at, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    print(json.dumps(out))
    return 0
