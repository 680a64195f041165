"""The two things the credential side needs from the AWS SDK, and the only module it imports it
in: the standard AWS credential chain (environment, profiles, shared files), and an STS
AssumeRole. Failures leave as ``ProviderError`` with one line that carries no secret."""

from __future__ import annotations

import os
from dataclasses import dataclass

import boto3
import botocore.exceptions
import botocore.session
from botocore.config import Config

from .base import ProviderError


@dataclass(frozen=True)
class ChainKeys:
    access_key: str
    secret_key: str
    session_token: str | None
    expires_at: float | None
    region: str | None
    source: str
    """Where the chain found them (``~/.aws/credentials (profile work)``), for messages."""


def keys_from_chain(profile: str | None) -> ChainKeys:
    """What the standard AWS chain finds now (read anew each time, so a rotated key in
    ``~/.aws/credentials`` is picked up without remounting)."""
    session = botocore.session.Session(profile=profile)
    try:
        creds = session.get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        raise ProviderError(f"AWS credentials could not be read: {exc}") from None
    if creds is None:
        raise ProviderError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or use a profile"
        )
    frozen = creds.get_frozen_credentials()
    expiry = getattr(creds, "_expiry_time", None)
    return ChainKeys(frozen.access_key, frozen.secret_key, frozen.token,
                     expiry.timestamp() if expiry is not None else None,
                     session.get_config_variable("region"), _describe(creds.method, profile))


def _describe(method: str, profile: str | None) -> str:
    """``~/.aws/credentials (profile work)`` for botocore's ``Credentials.method``."""
    if method == "env":
        return "the environment (AWS_ACCESS_KEY_ID)"
    config = os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")
    where = {"shared-credentials-file":
             os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
             "config-file": config,
             "custom-process": f"the credential_process of {config}"}.get(
                 method, f"the AWS credential chain ({method})")
    return f"{where} (profile {profile or os.environ.get('AWS_PROFILE') or 'default'})"


def assume_role(*, label: str, sts_url: str, region: str, access_key: str, secret_key: str,
                role_arn: str, session_name: str, duration: int, timeout: float
                ) -> dict[str, object]:
    """STS AssumeRole with long-lived keys: the ``Credentials`` of the answer. ``label`` names
    the service in error messages."""
    sts = boto3.client("sts", endpoint_url=sts_url, region_name=region,
                       aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                       config=Config(retries={"mode": "standard", "max_attempts": 3},
                                     connect_timeout=timeout, read_timeout=timeout))
    try:
        return dict(sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name,
                                    DurationSeconds=duration)["Credentials"])
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        raise ProviderError(f"{label} refused AssumeRole: {err.get('Code')} "
                            f"({err.get('Message', '')[:120]})",
                            retryable=status >= 500) from None
    except botocore.exceptions.ParamValidationError as exc:
        detail = " ".join(str(exc).split())
        raise ProviderError(f"bad AssumeRole parameter ({detail})") from None
    except (botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError) as exc:
        raise ProviderError(f"cannot reach the {label} at {sts_url} "
                            f"({type(exc).__name__})", retryable=True) from None
