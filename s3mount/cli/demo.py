"""``s3mount demo [MOUNTPOINT]``: the whole story on one machine, no account needed.

Starts the sandbox (a local S3 server plus an emulator of the chosen storage provider), writes a
throw-away profile for it, logs in through the provider's real login flow (the emulator's test user
approves at once, so no browser is needed), mounts the profile's bucket with ``s3mount mount`` and
waits. Credentials are short-lived (``--credential-lifetime``), so ``s3mount status`` shows them
being renewed while the mount keeps working. Ctrl-C or SIGTERM unmounts (uploading what is
pending), stops the sandbox and deletes the profile and its tokens.

Nothing here is a shortcut: the mount process reads the profile and talks to the emulator and the
S3 server over HTTP exactly as it would to the real provider. Only the sandbox is imported here
(allowed for this command), and only to start and stop it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import load_profile
from ..credentials.browser import http_browser
from ..credentials.build import LoginProvider, provider_from_profile
from ..runtime import mounted_paths
from ..store.base import KeySet
from . import CliError

PROFILE = "demo"
SANDBOX_MODULES = ("moto", "flask", "flask_cors", "werkzeug")
"""What the sandbox imports beyond s3mount's own dependencies: the ``s3mount[sandbox]`` extra."""
DEFAULT_LIFETIME = 120.0
UMOUNT_TIMEOUT = 600.0


def _cleverbase(state: dict[str, Any]) -> dict[str, Any]:
    return {"provider": "cleverbase", "issuer": state["issuer"], "api_url": state["api"],
            "client_id": state["client_id"], "client_secret": state["client_secret"]}


def _clevercloud(state: dict[str, Any]) -> dict[str, Any]:
    (org,) = state["organisations"].values()  # the emulator's test organisation and its Cellar
    addon = org["addons"][0]
    return {"provider": "clevercloud", "api_url": state["api"],
            "consumer_key": state["consumer_key"], "consumer_secret": state["consumer_secret"],
            "addon_id": addon["id"], "bucket": addon["buckets"][0]}


def _lyvecloud(state: dict[str, Any]) -> dict[str, Any]:
    account = state["accounts"]["acme"]
    return {"provider": "lyvecloud", "api_url": state["api"], "endpoint_url": state["s3"],
            "account_id": account["account_id"], "account_access_key": account["access_key"],
            "account_secret": account["secret"], "bucket": account["buckets"][0]}


# provider -> profile keys built from its emulator's entry in the sandbox state
PROFILES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "cleverbase": _cleverbase,
    "clevercloud": _clevercloud,
    "lyvecloud": _lyvecloud,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="try s3mount against a local sandbox (no account needed)",
        description="Start a local S3 server with an emulated storage provider, log in through "
                    "the provider's login flow, mount the bucket and wait; Ctrl-C unmounts and "
                    "cleans up.")
    p.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT",
                   help="where to mount (default ~/s3mount-demo, created and removed again)")
    p.add_argument("--provider", choices=sorted(PROFILES), default="cleverbase",
                   help="which provider to emulate (default cleverbase)")
    p.add_argument("--credential-lifetime", type=float, default=DEFAULT_LIFETIME,
                   metavar="SECONDS",
                   help=f"lifetime of the S3 keys the provider hands out, to watch them being "
                        f"renewed (default {DEFAULT_LIFETIME:.0f})")
    p.set_defaults(func=run)


def say(line: str) -> None:
    print(f"s3mount demo: {line}", flush=True)


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the demo was still setting up."""


def run(args: argparse.Namespace) -> int:
    if args.credential_lifetime < 30:
        raise CliError("--credential-lifetime must be at least 30 seconds")
    _check_sandbox_installed()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def step() -> None:
        if stop.is_set():
            raise _Interrupted

    try:
        with contextlib.ExitStack() as cleanup:
            mountpoint = cleanup.enter_context(_mountpoint(args.mountpoint))
            say(f"starting the sandbox: S3 server and {args.provider} emulator")
            sandbox = cleanup.enter_context(_sandbox(args.provider, args.credential_lifetime))
            say(f"S3 server at {sandbox.url} (its admin keys are in {sandbox.state_file})")
            step()
            env = cleanup.enter_context(_demo_config(PROFILES[args.provider](
                sandbox.state[args.provider])))
            keys = _login(env)
            bucket = keys.bucket or "?"
            step()
            say(f"mounting profile {PROFILE} (bucket {bucket}) on {mountpoint}")
            cleanup.callback(_unmount, env, mountpoint)
            _mount(env, mountpoint)
            say(f"ready: bucket {bucket} is mounted on {mountpoint}")
            _print_tips(mountpoint, keys)
            while not stop.wait(1.0):
                if str(mountpoint) not in mounted_paths():
                    raise CliError(f"{mountpoint} was unmounted behind the demo's back")
            say("stopping: uploading pending files, unmounting, stopping the sandbox")
    except _Interrupted:
        say("interrupted")
        return 130
    say("done")
    return 0


@contextlib.contextmanager
def _mountpoint(given: str | None) -> Iterator[Path]:
    """The mountpoint; the default one is created here and removed again if still empty."""
    path = Path(os.path.realpath(given or Path.home() / "s3mount-demo"))
    if str(path) in mounted_paths():
        raise CliError(f"{path} is already a mountpoint")
    created = False
    if given is None and not path.exists():
        path.mkdir()
        created = True
    if not path.exists():
        raise CliError(f"mountpoint {path} does not exist (create it, or give no mountpoint "
                       "for ~/s3mount-demo)")
    if not path.is_dir():
        raise CliError(f"mountpoint {path} is not a directory")
    try:
        yield path
    finally:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()


@contextlib.contextmanager
def _sandbox(provider: str, lifetime: float) -> Iterator[Any]:
    """The sandbox process, always stopped (which removes its state, admin keys included)."""
    # Imported here: the sandbox (moto, flask) is heavy and only this command needs it.
    from ..sandbox.client import SandboxProcess

    sandbox = SandboxProcess(providers=[provider], credential_lifetime=lifetime)
    try:
        yield sandbox
    finally:
        sandbox.stop()


def _check_sandbox_installed() -> None:
    """One line naming the extra to install, instead of the sandbox process dying on an
    ImportError after the mountpoint was made."""
    missing = [m for m in SANDBOX_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(f"the demo needs the sandbox's packages ({', '.join(missing)} missing): "
                       "pip install 's3mount[sandbox]'")


@contextlib.contextmanager
def _demo_config(profile: dict[str, Any]) -> Iterator[dict[str, str]]:
    """A private XDG_CONFIG_HOME holding the one profile (it contains a client secret)."""
    home = Path(tempfile.mkdtemp(prefix="s3mount-demo-config-"))  # mode 0700
    try:
        (home / "s3mount").mkdir(mode=0o700)
        body = "".join(f"{k} = {_toml_string(v)}\n" for k, v in profile.items())
        fd = os.open(home / "s3mount" / "config.toml", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[profiles.{PROFILE}]\n{body}")
        yield {**os.environ, "XDG_CONFIG_HOME": str(home)}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _toml_string(value: Any) -> str:
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _login(env: dict[str, str]) -> KeySet:
    """The provider's own login, with the emulator's consent page fetched over HTTP."""
    config = Path(env["XDG_CONFIG_HOME"]) / "s3mount"
    profile = load_profile(PROFILE, config / "config.toml")
    provider = provider_from_profile(profile, interactive=False, token_dir=config / "tokens")
    if isinstance(provider, LoginProvider):
        say(f"logging in to {profile['provider']} as the emulator's test user (its consent "
            "page, if any, approves at once)")
        provider.login(open_browser=http_browser)
    keys = provider.fetch()
    return dataclasses.replace(keys, bucket=keys.bucket or profile.get("bucket"))


def _s3mount(*args: str) -> list[str]:
    return [sys.executable, "-m", "s3mount", *args]


def _mount(env: dict[str, str], mountpoint: Path) -> None:
    r = subprocess.run(_s3mount("mount", PROFILE, str(mountpoint)), env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        reason = (r.stderr.strip().splitlines() or ["s3mount mount failed"])[-1]
        raise CliError(reason.removeprefix("s3mount: "))


def _unmount(env: dict[str, str], mountpoint: Path) -> None:
    """``s3mount umount`` (waits for pending uploads), then the plain ways for a wedged mount."""
    for cmd, timeout in ((_s3mount("umount", str(mountpoint)), UMOUNT_TIMEOUT),
                         (["fusermount3", "-u", str(mountpoint)], 60),
                         (["fusermount3", "-uz", str(mountpoint)], 60)):
        if str(mountpoint) not in mounted_paths():
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
    if str(mountpoint) in mounted_paths():
        print(f"s3mount demo: could not unmount {mountpoint}", file=sys.stderr)


def _print_tips(mountpoint: Path, keys: KeySet) -> None:
    mp = str(mountpoint)
    if keys.expires_at is None:
        renewal = "This provider's keys do not expire; s3mount re-reads them now and then."
    else:
        renewal = (f"The provider's keys expire in {keys.expires_at - time.time():.0f}s; watch "
                   "`s3mount status` renew them while you work.")
    print(f"""
Try, in another terminal:
  ls -la {mp}
  cp /etc/os-release {mp}/ && cat {mp}/os-release
  mkdir {mp}/photos && echo hello > {mp}/photos/hello.txt && ls -R {mp}
  s3mount status                # provider, key expiry, renewals, pending uploads
{renewal}
Press Ctrl-C here to unmount and stop the sandbox.
""", flush=True)
