"""Profiles (``config.toml``) and the per-profile token store.

Where things live (``$XDG_CONFIG_HOME`` defaults to ``~/.config``)::

    $XDG_CONFIG_HOME/s3mount/config.toml           profiles, written by the user (mode 0600)
    $XDG_CONFIG_HOME/s3mount/tokens/<profile>.json  what a login left behind (mode 0600, dir 0700)

``config.toml`` holds one table per profile under ``profiles``::

    [profiles.work]
    provider = "cleverbase"
    client_id = "..."
    client_secret = "..."
    mountpoint = "~/work-bucket"

Both files may hold secrets (a client secret, an OAuth token, a service-account secret), so like ssh
we refuse to read one that is group- or world-readable or owned by another user, and write token
files atomically (temporary file opened ``O_CREAT|O_EXCL`` with mode 0600, fsync, rename).
Short-lived S3 keys are never written anywhere: providers fetch them again after a restart.

Every profile key, with its meaning, is in ``PROFILE_KEYS`` (name -> description); the
s3mount.conf(5) man page is written from that table, and ``KEY_TYPES`` names the keys that are not
strings. Unknown keys are refused, so a typo fails loudly.
"""

from __future__ import annotations

import difflib
import errno
import json
import logging
import os
import re
import secrets
import stat
import tomllib
from pathlib import Path
from typing import Any

from .errors import S3MountError
from .options import OptionError, check_endpoint_url

log = logging.getLogger(__name__)

PROVIDER_KINDS = ("cleverbase", "clevercloud", "lyvecloud", "lc2", "static", "env")

PROFILE_KEYS: dict[str, str] = {
    # -- every provider ---------------------------------------------------------------------------
    "provider": "where the keys come from: cleverbase, clevercloud, lyvecloud (Lyve Cloud Account "
                "API v2 service account), lc2 (Lyve Cloud 2 STS AssumeRole), static (keys in this "
                "file) or env (the standard AWS chain: AWS_* variables, ~/.aws files)",
    "bucket": "bucket to mount; Cleverbase assigns one per user and this must then match it or "
              "be left out; required for the other providers (Clever Cloud: one of the "
              "Cellar add-on's buckets)",
    "prefix": "mount only keys under this prefix of the bucket (a directory inside the bucket)",
    "endpoint_url": "S3 endpoint URL; Cleverbase and Clever Cloud tell it themselves (this "
                    "overrides them), Lyve Cloud needs it (e.g. "
                    "https://s3.us-east-1.lyvecloud.seagate.com)",
    "region": "S3 signing region (default: us-east-1; Clever Cloud Cellar: default)",
    "mountpoint": "default mount point for `s3mount mount PROFILE` (~ is expanded)",
    "options": "default mount options, comma-separated as after -o (e.g. \"ro,uid=1000\")",
    # -- OAuth clients (cleverbase, clevercloud) ----------------------------------------------
    "issuer": "cleverbase: OpenID issuer URL (default https://connect.cleverbase.com; "
              "pre-production https://connect.acc.cleverbase.com)",
    "api_url": "base URL of the provider's API: cleverbase storage authorization API (default "
               "https://storage-authorization.cleverbase.com), clevercloud API (default "
               "https://api.clever-cloud.com), lyvecloud Account API (default "
               "https://api.lyvecloud.seagate.com/v2)",
    "client_id": "cleverbase: OAuth client id registered with Cleverbase",
    "client_secret": "cleverbase: OAuth client secret (this file must then be mode 0600)",
    "scope": "cleverbase: scopes to request (default \"openid com.cleverbase.storage\")",
    "redirect_port": "cleverbase, clevercloud: loopback port for the login redirect "
                     "(http://127.0.0.1:PORT/callback; default: a free port)",
    # -- Clever Cloud --------------------------------------------------------------------------
    "consumer_key": "clevercloud: OAuth1 consumer key (with token_source=clever-tools: "
                    "clever-tools' consumer, also read from OAUTH_CONSUMER_KEY or the "
                    "clever-tools profile overrides)",
    "consumer_secret": "clevercloud: OAuth1 consumer secret",
    "token_source": "clevercloud: s3mount (default: `s3mount login` runs the OAuth1 dance) or "
                    "clever-tools (reuse `clever login`: CLEVER_TOKEN/CLEVER_SECRET or "
                    "clever-tools.json)",
    "clever_tools_file": "clevercloud: path of clever-tools.json (default $CONFIGURATION_FILE or "
                         "$XDG_CONFIG_HOME/clever-cloud/clever-tools.json)",
    "addon_id": "clevercloud: the Cellar add-on: its id (addon_...), real id (cellar_...) or name",
    "owner_id": "clevercloud: organisation owning the add-on (orga_...); default: search the "
                "user's own add-ons and then every organisation",
    "credentials_api": "clevercloud: env (default: read the add-on's environment) or v4 (the beta "
                       "/v4/cellar credentials API)",
    # -- Lyve Cloud ----------------------------------------------------------------------------
    "account_id": "lyvecloud: Lyve Cloud account id",
    "account_access_key": "lyvecloud: Account API access key (asked for by `s3mount login` if "
                          "absent)",
    "account_secret": "lyvecloud: Account API secret (asked for by `s3mount login` if absent; "
                      "this file must then be mode 0600)",
    "service_account": "lyvecloud: name prefix of the service account s3mount creates "
                       "(default s3mount-PROFILE)",
    "sts_url": "lc2: STS endpoint URL (e.g. https://sts.global.lyve.seagate.com)",
    "duration_seconds": "lc2: lifetime of the temporary keys, 900-43200 (default 3600)",
    "role_arn": "lc2: RoleArn sent to AssumeRole (required but ignored by Lyve; default "
                "arn:aws:iam::000000000000:role/s3mount)",
    # -- static / lc2 long-lived keys, env -----------------------------------------------------
    "access_key": "static, lc2: access key id (lc2: the IAM user's long-lived key)",
    "secret_key": "static, lc2: secret access key (this file must then be mode 0600)",
    "session_token": "static: session token, for temporary keys",
    "aws_profile": "env: AWS profile name in ~/.aws/config (default: AWS_PROFILE or default)",
}

KEY_TYPES: dict[str, type] = {"redirect_port": int, "duration_seconds": int}
"""Keys whose TOML value is not a string."""

_TYPE_NAMES = {int: "an integer", str: "a string (in quotes)"}
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
"""Bucket names any S3-compatible server takes (botocore's rule); the bucket becomes part of the
FUSE ``fsname=`` option, where a comma or backslash would start or escape another option."""


class ConfigError(S3MountError):
    """A missing, unsafe or malformed config or token file; the message says which and why."""

    errno = errno.EINVAL


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "s3mount"


def config_path() -> Path:
    return config_dir() / "config.toml"


def check_private(path: Path, what: str, *, directory: bool = False) -> os.stat_result:
    """Refuse ``path`` unless it is ours and nobody else may read it (ssh's rule)."""
    st = path.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(f"{what} {path} is owned by uid {st.st_uid}, not by you; refusing it")
    if directory:
        if st.st_mode & 0o077:
            raise ConfigError(f"{what} {path} is accessible by group/others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 700 {path}")
    elif st.st_mode & 0o077:
        raise ConfigError(f"{what} {path} is readable by group/others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
    return st


def load_profiles(path: Path | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The valid profiles of ``config.toml`` (each dict carries its ``name``), and the one-line
    problem of each invalid one by name.

    A mistake in one profile (a typo'd key) must not stop the others from mounting: each is
    validated on its own, and only a file that cannot be read or parsed fails as a whole.
    """
    path = path or config_path()
    try:
        check_private(path, "config file")
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}; create it with a [profiles.NAME] table "
                          "(see s3mount.conf(5))") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    unknown = set(data) - {"profiles"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level table(s) {', '.join(sorted(unknown))}; "
                          "profiles go under [profiles.NAME]")
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: profiles must be tables ([profiles.NAME])")
    valid: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for name, body in profiles.items():
        try:
            valid[name] = _validate(name, body, path)
        except ConfigError as exc:
            problems[name] = str(exc)
    return valid, problems


def load_profile(name: str, path: Path | None = None) -> dict[str, Any]:
    """One profile by name (a ``ConfigError`` saying what is wrong with it, or naming the known
    ones if it does not exist)."""
    profiles, problems = load_profiles(path)
    if name in problems:
        raise ConfigError(problems[name])
    if name not in profiles:
        known = ", ".join(sorted([*profiles, *problems])) or "none"
        raise ConfigError(f"no profile {name!r} in {path or config_path()} (profiles: {known})")
    return profiles[name]


def profile_problems(but: str | None = None, path: Path | None = None) -> list[str]:
    """What is wrong with the profiles other than ``but``: a warning for whoever uses that one."""
    try:
        problems = load_profiles(path)[1]
    except ConfigError:
        return []  # the file as a whole: load_profile has said so already
    return [f"{problem} (profile {name!r} cannot be used until this is fixed)"
            for name, problem in problems.items() if name != but]


def _validate(name: str, body: Any, path: Path) -> dict[str, Any]:
    where = f"{path} [profiles.{name}]"
    if not _PROFILE_NAME.match(name):
        raise ConfigError(f"{where}: profile names are letters, digits, '_', '.', '-'")
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(body) - set(PROFILE_KEYS))
    if unknown:
        hints = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(
            k, PROFILE_KEYS, n=1)) else k for k in unknown]
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints)}")
    for key, value in body.items():
        want = KEY_TYPES.get(key, str)
        if not isinstance(value, want) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be {_TYPE_NAMES[want]}")
    if "bucket" in body and not _BUCKET_NAME.match(body["bucket"]):
        raise ConfigError(f"{where}: bucket {body['bucket']!r} is not a bucket name (letters, "
                          "digits, '.', '_', '-')")
    if "endpoint_url" in body:
        try:
            check_endpoint_url(body["endpoint_url"])
        except OptionError as exc:
            raise ConfigError(f"{where}: endpoint_url: {exc}") from None
    provider = body.get("provider")
    if provider not in PROVIDER_KINDS:
        raise ConfigError(f"{where}: provider must be one of {', '.join(PROVIDER_KINDS)}")
    return {**body, "name": name}


class TokenStore:
    """The secrets a login leaves for one profile, as one JSON file (see the module docstring)."""

    def __init__(self, profile: str, directory: Path | None = None) -> None:
        if not _PROFILE_NAME.match(profile):
            raise ConfigError(f"bad profile name {profile!r}")
        self.directory = directory or config_dir() / "tokens"
        self.path = self.directory / f"{profile}.json"

    def load(self) -> dict[str, Any] | None:
        """The stored dict, or None if there is none yet."""
        try:
            check_private(self.directory, "token directory", directory=True)
            check_private(self.path, "token file")
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read token file {self.path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"token file {self.path} is damaged; run `s3mount login` again")
        return data

    def save(self, data: dict[str, Any]) -> None:
        """Replace the stored dict atomically; readers see the old or the new file, never half."""
        self._ensure_dir()
        tmp = self.directory / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def update(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the stored dict and save it; returns the result."""
        data = {**(self.load() or {}), **changes}
        self.save(data)
        return data

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private(self.directory, "token directory", directory=True)
