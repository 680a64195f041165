"""A throwaway single-node Ceph cluster with radosgw on loopback, for benchmarks and realism checks.

Clever Cloud's Cellar runs on Ceph radosgw, so this is the closest thing to a provider's S3 that runs
on one machine; moto cannot show read-path speed (its ranged GETs copy the whole object).

Adapted from the team's ``ceph_up.sh`` so that the repo (which CI clones alone) carries its own copy,
and so that several clusters can run side by side: every port is picked free at start and all state
lives in a fresh temporary directory. The daemons run in the foreground as our children (``-f``), in
their own session so a Ctrl-C reaches us, not them; ``stop()`` (or leaving the ``with`` block, or an
interpreter exit) kills them and deletes the state.

Needs Debian's packages::

    apt-get install -y --no-install-recommends ceph-mon ceph-mgr ceph-osd radosgw ceph-common \
        uuid-runtime bc curl

Run alone (``python bench/radosgw.py``) it starts a cluster, prints the endpoint and waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGES = ["ceph-mon", "ceph-mgr", "ceph-osd", "radosgw", "ceph-common", "uuid-runtime", "bc",
            "curl"]
REQUIRED_BINARIES = ["ceph-mon", "ceph-mgr", "ceph-osd", "radosgw", "radosgw-admin", "ceph",
                     "ceph-authtool", "monmaptool"]

# The two users every cluster gets (fixed, documented test keys of a throwaway local cluster).
TESTER = ("tester", "TESTERACCESSKEY00000", "testersecretkey0000000000000000000000000")
OTHER = ("other", "OTHERACCESSKEY000000", "othersecretkey00000000000000000000000000")

# Ports the daemons other than the monitor and the gateway bind (msgr2, one or two per daemon).
DAEMON_PORTS = 30

CONF_TEMPLATE = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr1 = false
ms bind port min = {port_min}
ms bind port max = {port_max}
auth cluster required = none
auth service required = none
auth client required = none
run dir = {d}/run
admin socket = {d}/run/$cluster-$name.asok
log file = {d}/log/$cluster-$name.log
pid file = {d}/run/$name.pid
mon data = {d}/mon.$id
mgr data = {d}/mgr.$id
osd data = {d}/osd.$id
keyring = {d}/keyring
osd objectstore = bluestore
bluestore block path = {d}/osd.$id/block.file
bluestore block create = true
bluestore block size = {block_bytes}
bluestore fsck on mkfs = false
osd memory target = 1073741824
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd max object name len = 460
osd max object namespace len = 64
debug ms = 0
[mgr]
mgr initial modules =
[client.rgw.gw]
# radosgw defaults to ms_mon_client_mode=secure + cephx; with auth=none that fails with
# "get_initial_auth_request returned -13" forever, so force crc mode.
ms mon client mode = crc
ms client mode = crc
auth client required = none
# tcp_nodelay=1: without it a 4 KiB GET takes ~48 ms (Nagle + delayed ACK)
rgw frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw data = {d}/rgw
rgw enable usage log = false
# overwritten/deleted tails otherwise wait 2 h for garbage collection and fill a small OSD
rgw gc obj min wait = 5
rgw gc processor period = 10
rgw gc processor max time = 10
rgw sts key = abcdefghijklmnop
rgw s3 auth use sts = true
"""


class RadosgwError(RuntimeError):
    """The cluster could not be installed or started; the message says which step failed."""


@dataclass(frozen=True)
class RgwUser:
    uid: str
    access_key: str
    secret_key: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port_range(n: int, avoid: set[int]) -> int:
    """First port of ``n`` consecutive free ports (msgr2 wants a range, not single ports)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        ports = range(base, base + n)
        if not avoid.intersection(ports) and all(_port_free(p) for p in ports):
            return base
    raise RadosgwError(f"no range of {n} free ports found")


def ensure_installed() -> None:
    """Install the Debian packages when a binary is missing (apt-get; needs root)."""
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if not missing:
        return
    log.info("installing ceph packages (missing: %s)", ", ".join(missing))
    try:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
                       check=True, timeout=900, stdout=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (OSError, subprocess.SubprocessError) as exc:
        raise RadosgwError(f"could not install {' '.join(PACKAGES)}: {exc}") from None
    still = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if still:
        raise RadosgwError(f"still missing after apt-get: {', '.join(still)}")


class Radosgw:
    """One cluster: monitor, manager, one bluestore OSD on a sparse file, and the gateway.

    ``block_gib`` is the OSD's (sparse) size: benchmarks write several GiB, and deleted data only goes
    after the gateway's garbage collection (a few seconds here).
    """

    def __init__(self, *, base_dir: str | None = None, block_gib: int = 16,
                 ready_timeout: float = 180.0) -> None:
        self._base_dir = base_dir
        self._block_gib = block_gib
        self._ready_timeout = ready_timeout
        self.dir: Path | None = None
        self.port = 0
        self._procs: list[subprocess.Popen] = []
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tester(self) -> RgwUser:
        return RgwUser(*TESTER)

    @property
    def other(self) -> RgwUser:
        return RgwUser(*OTHER)

    @property
    def gateway_pid(self) -> int | None:
        return next((p.pid for p in self._procs if p.args[0] == "radosgw"), None)

    @property
    def request_log(self) -> Path:
        """The gateway's log: one ``beast:`` line per request (method, path, status)."""
        assert self.dir is not None
        return self.dir / "log" / "ceph-client.rgw.gw.log"

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Radosgw:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        ensure_installed()
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        t0 = time.monotonic()
        d = Path(tempfile.mkdtemp(prefix="s3mount-ceph-", dir=self._base_dir))
        self.dir = d
        for sub in ("mon.a", "mgr.x", "osd.0", "run", "log", "rgw"):
            (d / sub).mkdir()
        mon_port = _free_port()
        self.port = _free_port()
        port_min = _free_port_range(DAEMON_PORTS, {mon_port, self.port})
        fsid = str(uuid.uuid4())
        conf = d / "ceph.conf"
        conf.write_text(CONF_TEMPLATE.format(
            fsid=fsid, mon_port=mon_port, port_min=port_min, port_max=port_min + DAEMON_PORTS - 1,
            d=d, rgw_port=self.port, block_bytes=self._block_gib << 30))
        self._env = {**os.environ, "CEPH_CONF": str(conf)}
        c = ["-c", str(conf)]

        self._run(["ceph-authtool", "--create-keyring", str(d / "keyring"), "--gen-key", "-n",
                   "mon.", "--cap", "mon", "allow *"])
        self._run(["monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]",
                   "--fsid", fsid, str(d / "monmap")])
        self._run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"),
                   "--keyring", str(d / "keyring")])
        self._daemon("mon", ["ceph-mon", *c, "-f", "-i", "a"])
        self._wait("monitor", lambda: self._ok(["ceph", *c, "-s"]))
        self._daemon("mgr", ["ceph-mgr", *c, "-f", "-i", "x"])
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run(["ceph", *c, "osd", "new", osd_uuid], timeout=60).strip()
        self._run(["ceph-osd", *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], timeout=120)
        self._daemon("osd", ["ceph-osd", *c, "-f", "-i", osd_id])
        self._wait("OSD", lambda: "1 up" in self._run(["ceph", *c, "osd", "stat"], check=False))
        self._daemon("rgw", ["radosgw", *c, "-f", "-n", "client.rgw.gw"])
        self._wait("radosgw", self._answers)
        for uid, ak, sk in (TESTER, OTHER):
            # The keys go through radosgw-admin's argv: these are the fixed test keys of a
            # throwaway loopback cluster (documented above), not anyone's secrets.
            self._run(["radosgw-admin", *c, "user", "create", f"--uid={uid}",
                       f"--display-name={uid}", f"--access-key={ak}", f"--secret={sk}"],
                      timeout=60)
        self._run(["radosgw-admin", *c, "caps", "add", f"--uid={TESTER[0]}",
                   "--caps=roles=*;user-policy=*"], timeout=60)
        log.info("radosgw ready at %s after %.1fs (state in %s)", self.url,
                 time.monotonic() - t0, d)

    def stop(self) -> None:
        """Kill the daemons (TERM, then KILL) and delete the state; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        for p in reversed(self._procs):
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in reversed(self._procs):
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.stop)

    # -- clients ------------------------------------------------------------------------------

    def client(self, service: str = "s3", user: RgwUser | None = None,  # noqa: ANN201
               endpoint_url: str | None = None, **kw: object):
        """A boto3 client for this gateway (default: the ``tester`` user), or for a proxy in front
        of it (``endpoint_url``)."""
        import boto3
        from botocore.config import Config

        u = user or self.tester
        cfg = Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                     retries={"mode": "standard", "max_attempts": 4},
                     max_pool_connections=64, connect_timeout=5, read_timeout=120,
                     # Ceph 16 predates the flexible checksums newer botocore sends by default.
                     request_checksum_calculation="when_required",
                     response_checksum_validation="when_required")
        return boto3.client(service, endpoint_url=endpoint_url or self.url, region_name="us-east-1",
                            aws_access_key_id=u.access_key, aws_secret_access_key=u.secret_key,
                            config=cfg, **kw)

    # -- helpers ------------------------------------------------------------------------------

    def _run(self, argv: list[str], *, timeout: float = 30, check: bool = True) -> str:
        try:
            r = subprocess.run(argv, env=self._env, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            if check:
                raise RadosgwError(f"{argv[0]} {argv[-1]}: timed out after {timeout}s") from None
            return ""
        if check and r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise RadosgwError(f"{argv[0]} failed ({r.returncode}): {' | '.join(tail)}")
        return r.stdout

    def _ok(self, argv: list[str]) -> bool:
        return bool(self._run(argv, timeout=5, check=False))

    def _daemon(self, name: str, argv: list[str]) -> None:
        assert self.dir is not None
        out = open(self.dir / "log" / f"{name}.out", "wb")  # noqa: SIM115 - lives with the child
        p = subprocess.Popen(argv, env=self._env, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self._procs.append(p)

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/", timeout=2).close()
        except urllib.error.HTTPError:
            return True  # any HTTP answer means the gateway is serving
        except OSError:
            return False
        return True

    def _wait(self, what: str, ready: object) -> None:
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                raise RadosgwError(f"{dead[0].args[0]} exited ({dead[0].returncode}) while "
                                   f"waiting for the {what}; see {self.dir}/log")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.5)
        raise RadosgwError(f"the {what} was not ready within {self._ready_timeout:.0f}s")


def interrupt_on_signal(signum: int, frame: object) -> None:
    """SIGTERM handler: unwind like Ctrl-C so every ``finally`` (unmounts, cluster stop) runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description="Run a throwaway radosgw until Ctrl-C.")
    ap.add_argument("--block-gib", type=int, default=16, help="OSD size (sparse file), GiB")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    try:
        with Radosgw(block_gib=args.block_gib) as gw:
            print(f"endpoint {gw.url}  user tester (access key {gw.tester.access_key})",
                  flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except RadosgwError as exc:
        print(f"radosgw: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
