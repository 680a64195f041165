"""The Lyve Cloud emulator is strict: Account API v2 and LC2 STS refusals (PROVIDERS.md 4.11)."""

from __future__ import annotations

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from provider_support import emulator_fixtures, s3_client

from s3mount.sandbox.lyvecloud import LyveCloudEmulator, LyveSettings
from s3mount.store.base import KeySet

started, emu, info = emulator_fixtures(LyveCloudEmulator, LyveSettings)


def login(info, account: str = "acme", **override) -> requests.Response:
    acc = info["accounts"][account]
    body = {"accountId": account, "accessKey": acc["access_key"], "secret": acc["secret"],
            **override}
    return requests.post(f"{info['api']}/auth/token", json=body, timeout=10)


class Api:
    def __init__(self, info, account: str = "acme") -> None:
        self.base = info["api"]
        self.headers = {"Authorization": f"Bearer {login(info, account).json()['token']}"}

    def __call__(self, method: str, path: str, body=None) -> requests.Response:
        return requests.request(method, f"{self.base}{path}", json=body, headers=self.headers,
                                timeout=10)


def error(r: requests.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["code"] == code


def test_auth_token_shapes(emu, info):
    r = login(info)
    assert r.status_code == 200 and r.json()["expirationSec"] == "86400"  # a string, as live
    emu.settings.expiration_sec_as_int = True
    assert login(info).json()["expirationSec"] == 86400
    token = login(info).json()["token"]
    emu.sandbox.clock.advance(100)
    r = requests.get(f"{info['api']}/auth/token", headers={"Authorization": f"Bearer {token}"},
                     timeout=10)
    assert 86290 <= r.json()["expirationSec"] <= 86300


def test_auth_failures(emu, info):
    error(login(info, secret="wrong"), 403, "AuthenticationFailed ")  # trailing space, as live
    emu.settings.auth_failed_trailing_space = False
    error(login(info, secret="wrong"), 403, "AuthenticationFailed")
    error(login(info, accountId="nobody"), 403, "AuthenticationFailed")
    error(login(info, secret=""), 400, "InvalidArgument")
    get = f"{info['api']}/permissions"
    error(requests.get(get, timeout=10), 400, "InvalidToken")
    error(requests.get(get, headers={"Authorization": "Bearer nope"}, timeout=10), 400,
          "InvalidToken")
    token = login(info).json()["token"]
    emu.sandbox.clock.advance(86401)
    error(requests.get(get, headers={"Authorization": f"Bearer {token}"}, timeout=10), 400,
          "ExpiredToken")


def test_permissions(emu, info):
    api = Api(info)
    bucket = info["accounts"]["acme"]["buckets"][0]
    perm = {"name": "p-one", "description": "d", "type": "bucket-names",
            "actions": "all-operations", "buckets": [bucket]}
    emu.settings.ready_delay = 10
    pid = api("POST", "/permissions/", perm).json()["id"]  # trailing slash accepted
    error(api("POST", "/permissions", perm), 409, "PermissionNameAlreadyExists")
    assert api("GET", f"/permissions/{pid}").json()["readyState"] is False
    error(api("DELETE", f"/permissions/{pid}"), 409, "PermissionNotReady")
    emu.sandbox.clock.advance(10)
    listed = api("GET", "/permissions?name=p-one").json()
    assert [p["id"] for p in listed] == [pid] and listed[0]["readyState"] is True
    r = api("PUT", f"/permissions/{pid}", {**perm, "description": "new"})
    assert r.status_code == 200 and r.text == "Successfully updated the permission."
    error(api("POST", "/permissions", {**perm, "name": "p-two", "buckets": ["not-mine"]}), 404,
          "BucketNotFound")
    error(api("POST", "/permissions", {**perm, "name": "p-3", "description": ""}), 400,
          "InvalidArgument")
    error(api("GET", "/permissions/nope"), 404, "PermissionNotFound")
    emu.sandbox.clock.advance(10)
    assert api("DELETE", f"/permissions/{pid}").text == "Permission deleted successfully."


def test_service_account_lifecycle_drives_the_s3_key(emu, info):
    api = Api(info)
    acme = info["accounts"]["acme"]
    pid = api("POST", "/permissions", {"name": "ro", "description": "d", "type": "bucket-prefix",
                                       "actions": "read-only",
                                       "prefix": acme["buckets"][0]}).json()["id"]
    error(api("POST", "/service-accounts", {"name": "sa", "permissions": []}), 400,
          "InvalidArgument")
    emu.settings.ready_delay = 5
    emu.settings.sa_expiration_days = 1
    sa = api("POST", "/service-accounts", {"name": "sa", "permissions": [pid]}).json()
    assert set(sa) == {"id", "accessKey", "secret", "expirationDate"}
    error(api("POST", "/service-accounts", {"name": "sa", "permissions": [pid]}), 409,
          "ServiceAccountNameAlreadyExists")
    error(api("DELETE", f"/service-accounts/{sa['id']}/enabled"), 409, "ServiceAccountNotReady")
    emu.sandbox.clock.advance(5)
    keys = KeySet(sa["accessKey"], sa["secret"], endpoint_url=info["s3"])
    s3 = s3_client(keys)
    s3.list_objects_v2(Bucket=acme["buckets"][0])  # read-only on the prefix's bucket
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.put_object(Bucket=acme["buckets"][0], Key="x", Body=b"x")  # ... read only
    assert api("DELETE", f"/service-accounts/{sa['id']}/enabled").status_code == 200
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        s3.list_objects_v2(Bucket=acme["buckets"][0])
    assert api("PUT", f"/service-accounts/{sa['id']}/enabled").status_code == 200
    s3.list_objects_v2(Bucket=acme["buckets"][0])
    got = api("GET", f"/service-accounts/{sa['id']}").json()
    assert got["enabled"] is True and got["permissions"] == [pid]
    assert "secret" not in got  # shown only once
    emu.sandbox.clock.advance(2 * 86400 + 1)  # past expirationDate 23:59:59
    api.headers = Api(info).headers  # (the session token expired too)
    error(api("PUT", f"/service-accounts/{sa['id']}/enabled"), 404, "ServiceAccountExpired")
    with pytest.raises(ClientError, match="ExpiredToken"):
        s3.list_objects_v2(Bucket=acme["buckets"][0])
    assert api("DELETE", f"/service-accounts/{sa['id']}").status_code == 200
    error(api("GET", f"/service-accounts/{sa['id']}"), 404, "ServiceAccountNotFound")


def test_trailing_slash_switch_and_down(emu, info):
    api = Api(info)
    emu.settings.trailing_slash_required = True
    assert api("GET", "/service-accounts").status_code == 404
    assert api("GET", "/service-accounts/").status_code == 200
    emu.down = True
    error(api("GET", "/service-accounts/"), 503, "ServiceNotReady")


def sts(info, account="acme", secret=None):
    acc = info["accounts"][account]
    return boto3.client("sts", endpoint_url=info["sts"], region_name="us-east-1",
                        aws_access_key_id=acc["lc2_access_key"],
                        aws_secret_access_key=secret or acc["lc2_secret_key"],
                        config=Config(retries={"max_attempts": 1}))


ARN = "arn:aws:iam::000000000000:role/x"


def test_sts_assume_role(emu, info):
    creds = sts(info).assume_role(RoleArn=ARN, RoleSessionName="test",
                                  DurationSeconds=900)["Credentials"]
    assert abs(creds["Expiration"].timestamp() - (emu.now() + 900)) < 5
    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        sts(info, secret="wrong").assume_role(RoleArn=ARN, RoleSessionName="test")


@pytest.mark.parametrize("form, code", [
    ({"Version": "2010-05-08"}, "InvalidAction"),
    ({"DurationSeconds": "899"}, "ValidationError"),
    ({"DurationSeconds": "43201"}, "ValidationError"),
    ({"RoleArn": ""}, "MissingParameter"),
])
def test_sts_parameter_checks(emu, info, form, code):
    """Raw signed requests, since botocore itself refuses most of these before sending."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    acc = info["accounts"]["acme"]
    body = {"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": ARN,
            "RoleSessionName": "test", **form}
    req = AWSRequest("POST", info["sts"] + "/", data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    SigV4Auth(Credentials(acc["lc2_access_key"], acc["lc2_secret_key"]), "sts",
              "us-east-1").add_auth(req)
    prepared = req.prepare()
    r = requests.post(prepared.url, data=prepared.body, headers=dict(prepared.headers),
                      timeout=10)
    assert r.status_code == 400 and f"<Code>{code}</Code>" in r.text
