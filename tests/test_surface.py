"""What a user meets (issue 20): errors that say what to do, mount(8) conventions, logs.

Every test runs the real ``s3mount`` command (a subprocess, as a user would) and mounts for real
where a mount is what the item is about.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mountlib import S3MOUNT, Mount, Mounter, run

from s3mount.sandbox.client import SandboxProcess


def cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*S3MOUNT, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def one_line(r: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """``r`` failed with exactly one stderr line holding every fragment; that line."""
    assert r.returncode != 0, r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("s3mount: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def write_profiles(home: Path, text: str) -> dict[str, str]:
    """A private XDG_CONFIG_HOME holding ``text`` as config.toml; the environment for it."""
    (home / "s3mount").mkdir(parents=True, mode=0o700)
    os.chmod(home, 0o700)
    cfg = home / "s3mount" / "config.toml"
    cfg.write_text(text)
    cfg.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(XDG_CONFIG_HOME=str(home), XDG_STATE_HOME=str(home / "state"),
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    return env


def adopt(mounter: Mounter, path: Path, bucket: str, env: dict[str, str], log: Path) -> Mount:
    """Hand a mount made by hand to ``mounter``, so teardown unmounts it."""
    m = Mount(path, bucket, env, [], mounter.cache_dir, log)
    mounter.mounts.append(m)
    return m


# -- 1: a mountpoint with files in it ----------------------------------------------------------

def test_nonempty_mountpoint_is_refused_unless_nonempty(mounter: Mounter, bucket: str, s3,
                                                        sandbox: SandboxProcess,
                                                        tmp_path: Path) -> None:
    mp = tmp_path / "full"
    mp.mkdir()
    (mp / "mine.txt").write_text("keep me")
    env = mounter.env_for(sandbox.issue_keys([bucket]))
    adopt(mounter, mp, bucket, env, mounter.state_dir)  # unmounted in teardown if it mounted
    r = cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url", sandbox.url], env=env)
    one_line(r, f"mountpoint {mp} is not empty", "-o nonempty")
    assert not os.path.ismount(mp) and (mp / "mine.txt").read_text() == "keep me"
    assert not mounter.state_dir.exists()  # refused before a mount process (and its log) started

    m = mounter(bucket, "nonempty", path=mp)
    assert os.listdir(mp) == []  # the bucket's (empty) root hides the directory's file
    (mp / "new.txt").write_text("in the bucket")
    m.unmount()
    assert s3.get_object(Bucket=bucket, Key="new.txt")["Body"].read() == b"in the bucket"
    assert os.listdir(mp) == ["mine.txt"]


# -- 2: bad endpoint URLs, refused before any process starts ---------------------------------

@pytest.mark.parametrize("url, what", [
    ("127.0.0.1:19300", "no http:// or https://"),
    ("ftp://s3.example.com", "scheme 'ftp' is not http or https"),
    ("http://host:notaport", "port is not a number"),
    ("http://:9000", "names no host"),
])
@pytest.mark.parametrize("how", ["flag", "option", "profile", "mount.s3mount"])
def test_bad_endpoint_url_is_one_line_before_anything_starts(url: str, what: str, how: str,
                                                             tmp_path: Path) -> None:
    mp = tmp_path / "mp"
    mp.mkdir()
    env = write_profiles(tmp_path / "config", f'[profiles.p]\nprovider = "static"\n'
                         f'bucket = "b-1"\nendpoint_url = "{url}"\naccess_key = "AK"\n'
                         f'secret_key = "SK"\n')
    argv = {"flag": ["mount", "s3://b-1", str(mp), "--endpoint-url", url],
            "option": ["mount", "s3://b-1", str(mp), "-o", f"endpoint_url={url}"],
            "profile": ["mount", "p", str(mp)]}.get(how)
    if argv is None:
        helper = Path(sys.executable).parent / "mount.s3mount"
        r = subprocess.run([str(helper), "s3://b-1", str(mp), "-o", f"endpoint_url={url}"],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("mount.s3mount: bad endpoint URL")
        line = r.stderr
    else:
        line = one_line(cli(argv, env=env))
    assert f"bad endpoint URL {url!r}: " in line and what in line
    assert "https://s3.example.com or http://127.0.0.1:9000" in line
    assert not (tmp_path / "config" / "state").exists()  # no mount process, no log


# -- 3: keys the server refuses ----------------------------------------------------------------

def test_wrong_keys_say_which_keys_which_bucket_what_to_check(bucket: str,
                                                              sandbox: SandboxProcess,
                                                              tmp_path: Path) -> None:
    mp = tmp_path / "mp"
    mp.mkdir()
    ak, sk = "AKIAWRONGWRONG7Q2Z", "wrong-secret-0123456789abcdefghijklmnop"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=ak, AWS_SECRET_ACCESS_KEY=sk, AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null", XDG_STATE_HOME=str(tmp_path / "state"))
    r = cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url", sandbox.url], env=env)
    line = one_line(r, "the environment (AWS_ACCESS_KEY_ID)", "ending '7Q2Z'", repr(bucket),
                    sandbox.url, "check that this key id and its secret are right")
    assert ak[:-4] not in line and sk not in line and "''" not in line

    # The same keys from a shared credentials file, chosen with -o aws_profile= (s3fs's profile=)
    creds = tmp_path / "credentials"
    creds.write_text(f"[other]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\n")
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
    r = cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url", sandbox.url, "-o",
             "aws_profile=other"], env=env)
    one_line(r, f"{creds} (profile other)", "ending '7Q2Z'")
    assert not os.path.ismount(mp)


def test_aws_profile_picks_the_keys(mounter: Mounter, bucket: str, sandbox: SandboxProcess,
                                    s3, tmp_path: Path) -> None:
    keys = sandbox.issue_keys([bucket])
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = AKIAWRONGWRONGWRONG\n"
                     f"aws_secret_access_key = nope\n[work]\n"
                     f"aws_access_key_id = {keys.access_key}\n"
                     f"aws_secret_access_key = {keys.secret_key}\n"
                     + (f"aws_session_token = {keys.session_token}\n" if keys.session_token
                        else ""))
    env = {k: v for k, v in mounter.env_for(keys).items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE=str(creds))
    m = mounter(bucket, "aws_profile=work", env=env)
    (m.path / "a.txt").write_text("via aws_profile")
    assert s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"via aws_profile"


# -- 5 and 6: profiles ---------------------------------------------------------------------------

def test_one_bad_profile_does_not_break_the_others(mounter: Mounter, bucket: str, s3,
                                                   sandbox: SandboxProcess,
                                                   tmp_path: Path) -> None:
    keys = sandbox.issue_keys([bucket])
    env = write_profiles(tmp_path / "config", (
        f'[profiles.typo]\nprovider = "static"\nbuckett = "{bucket}"\n\n'
        f'[profiles.good]\nprovider = "static"\nbucket = "{bucket}"\n'
        f'endpoint_url = "{sandbox.url}"\naccess_key = "{keys.access_key}"\n'
        f'secret_key = "{keys.secret_key}"\n'
        + (f'session_token = "{keys.session_token}"\n' if keys.session_token else "")))
    env["XDG_STATE_HOME"] = str(mounter.state_dir)
    mp = tmp_path / "good"
    mp.mkdir()
    log = tmp_path / "good.log"
    r = cli(["mount", "good", str(mp), "-o", f"cache_dir={mounter.cache_dir},log_file={log}"],
            env=env)
    adopt(mounter, mp, bucket, env, log)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("s3mount: warning: " + str(tmp_path / "config" / "s3mount" / "config.toml")
                        + " [profiles.typo]: unknown key(s) buckett (did you mean bucket?) "
                        "(profile 'typo' cannot be used until this is fixed)\n")
    (mp / "x.txt").write_text("good profile")
    assert s3.get_object(Bucket=bucket, Key="x.txt")["Body"].read() == b"good profile"

    other = tmp_path / "typo"
    other.mkdir()
    one_line(cli(["mount", "typo", str(other)], env=env),
             "[profiles.typo]: unknown key(s) buckett (did you mean bucket?)")
    assert not os.path.ismount(other)


# -- 7: commands misread as profile names ------------------------------------------------------

@pytest.mark.parametrize("word, meant", [("unmount", "umount"), ("stat", "status"),
                                         ("stauts", "status"), ("mont", "mount")])
def test_a_misspelt_command_gets_a_suggestion(word: str, meant: str, tmp_path: Path) -> None:
    env = write_profiles(tmp_path / "config", '[profiles.work]\nprovider = "env"\n')
    r = cli([word, str(tmp_path)], env=env)
    assert r.returncode == 2
    one_line(r, f"unknown command {word!r}; did you mean `s3mount {meant}`?")


@pytest.mark.parametrize("args, fragments", [
    (["--bogus"], ["unrecognized arguments: --bogus"]),
    ([], ["a command is required", "mount, umount, status"]),
    (["status", "--json", "x", "y"], ["status: unrecognized arguments: y",
                                      "s3mount status --help"]),
    (["status", "--bogus"], ["status: unrecognized arguments: --bogus"]),
    (["login", "--nope"], ["login: unrecognized arguments: --nope"]),
    (["umount"], ["umount: the following arguments are required: MOUNTPOINT"]),
    (["mount", "-o"], ["mount: argument -o: expected one argument"]),
    (["completion", "tcsh"], ["completion: argument SHELL: invalid choice: 'tcsh'"]),
])
def test_bad_arguments_are_one_line_naming_what_was_wrong(args: list[str],
                                                          fragments: list[str],
                                                          tmp_path: Path) -> None:
    """argparse's own failures: no usage block, the word at fault named (an unknown option
    before a missing argument), exit status 2."""
    env = write_profiles(tmp_path / "config", "")
    r = cli(args, env=env)
    assert r.returncode == 2
    one_line(r, *fragments)


def test_a_profile_named_like_a_command_still_mounts(tmp_path: Path) -> None:
    """``s3mount stat DIR`` is a mount of profile "stat" when there is one (as mount.fuse3 runs
    it): here it gets as far as the mountpoint check."""
    env = write_profiles(tmp_path / "config", '[profiles.stat]\nprovider = "env"\n'
                         'bucket = "b-1"\n')
    one_line(cli(["stat", str(tmp_path / "nowhere")], env=env),
             f"mountpoint {tmp_path / 'nowhere'} does not exist")


# -- 11: --read-only, mount --help -----------------------------------------------------------

def test_read_only_flag(mounter: Mounter, bucket: str, s3) -> None:
    s3.put_object(Bucket=bucket, Key="r.txt", Body=b"read me")
    m = mounter(bucket)
    m.unmount()
    m.args.append("--read-only")
    r = cli(m.args, env=m.env)
    assert r.returncode == 0, r.stderr
    assert (m.path / "r.txt").read_text() == "read me"
    with pytest.raises(OSError) as ei:
        (m.path / "w.txt").write_text("no")
    assert ei.value.errno == errno.EROFS
    assert "'read_only': true" in run([*S3MOUNT, "status", "--json", str(m.path)],
                                       env=m.env).stdout.replace('"', "'")


def test_mount_help_lists_every_option_on_one_line() -> None:
    from s3mount.options import OPTIONS

    out = run([*S3MOUNT, "mount", "--help"], env={**os.environ, "COLUMNS": "80"}).stdout
    table = out.split("mount options (-o NAME", 1)[1]
    listed = [ln for ln in table.splitlines()[1:] if ln.strip()]
    assert [line.split()[0].split("=")[0] for line in listed] == list(OPTIONS)
    for line, (name, opt) in zip(listed, OPTIONS.items(), strict=True):
        assert line.rstrip().endswith(opt.help), name


# -- 12: logs ------------------------------------------------------------------------------------

def test_log_is_private_and_rotated(mounter: Mounter, bucket: str) -> None:
    m = mounter(bucket, "debug", "log_size=0.02")  # 20 KiB
    for i in range(60):
        (m.path / f"f{i}.txt").write_text("x" * i)
        os.stat(m.path / f"f{i}.txt")
    m.unmount()
    logs = sorted(m.log_file.parent.glob(m.log_file.name + "*"))
    names = [p.name for p in logs]
    assert names[:2] == [m.log_file.name, m.log_file.name + ".1"], names
    assert len(logs) <= 4  # the file and at most 3 older ones
    for p in logs:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert p.stat().st_size <= 20 * 1024 + 4096, p
    text = "".join(p.read_text() for p in logs)
    assert "expire in never" not in text and "key key" not in text
    assert "credentials obtained from env (key …" in text and ", not expiring)" in text


def test_default_log_file_is_private(mounter: Mounter, bucket: str, sandbox: SandboxProcess,
                                     tmp_path: Path) -> None:
    """Without -o log_file: the file under XDG_STATE_HOME, mode 0600 even if it was 0644."""
    from s3mount.logsetup import log_path_for

    mp = tmp_path / "mp"
    mp.mkdir()
    env = mounter.env_for(sandbox.issue_keys([bucket]))
    log = Path(log_path_for(str(mp)).replace(
        os.path.join(os.path.expanduser("~"), ".local", "state"), str(mounter.state_dir), 1))
    log.parent.mkdir(parents=True)
    log.write_text("an old line\n")
    log.chmod(0o644)
    r = cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url", sandbox.url, "-o",
             f"cache_dir={mounter.cache_dir}"], env=env)
    adopt(mounter, mp, bucket, env, log)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert log.read_text().startswith("an old line\n") and "mounted s3://" in log.read_text()


# -- 4: why the kernel mount failed ----------------------------------------------------------

needs_root = pytest.mark.skipif(os.getuid() != 0 or shutil.which("unshare") is None
                                or shutil.which("setpriv") is None,
                                reason="needs root, unshare and setpriv")


@needs_root
def test_mount_failure_shows_libfuse_cause(bucket: str, sandbox: SandboxProcess,
                                           mounter: Mounter, tmp_path: Path) -> None:
    """A user who may not open /dev/fuse (as ``setuid=`` in fstab runs the mount) sees libfuse's
    reason, not pyfuse3's "fuse_session_mount failed". Reproduced for root in a private mount
    namespace: /dev/fuse replaced by a file of another user, and no CAP_DAC_OVERRIDE."""
    mp = tmp_path / "mp"
    mp.mkdir()
    fake = tmp_path / "fuse"
    fake.write_text("")
    fake.chmod(0o600)
    os.chown(fake, 65534, 65534)
    env = mounter.env_for(sandbox.issue_keys([bucket]))
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" /dev/fuse && shift && '
         'exec setpriv --bounding-set -dac_override,-dac_read_search "$@"', "sh", str(fake),
         *S3MOUNT, "mount", f"s3://{bucket}", str(mp), "--endpoint-url", sandbox.url,
         "-o", f"cache_dir={mounter.cache_dir}"],
        capture_output=True, text=True, timeout=120, env=env)
    one_line(r, f"cannot mount on {mp}: ", "failed to open /dev/fuse: Permission denied")
    assert not os.path.ismount(mp)


# -- 8: mount -a, twice --------------------------------------------------------------------------

def _mounts_at(mp: Path) -> list[tuple[str, str]]:
    """(fstype, source) of every mount stacked on ``mp``."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == str(mp):
            out.append(tuple(fields[fields.index("-") + 1:][:2]))
    return out


@needs_root
@pytest.mark.skipif(shutil.which("mount.fuse3") is None, reason="needs mount.fuse3")
def test_mount_a_twice(bucket: str, sandbox: SandboxProcess, mounter: Mounter, s3,
                       tmp_path: Path) -> None:
    """fstab's source is what gets mounted, so libmount sees both entries mounted the second time
    (it failed with "already a mount point" when the source read s3mount:BUCKET)."""
    from s3mount.install import Targets, install

    install(Targets(unit_dir=str(tmp_path / "units"), man_dir=str(tmp_path / "man"),
                    completion_dir=str(tmp_path / "completion")))
    keys = sandbox.issue_keys([bucket])
    env = write_profiles(tmp_path / "config", (
        f'[profiles.work]\nprovider = "static"\nbucket = "{bucket}"\n'
        f'endpoint_url = "{sandbox.url}"\naccess_key = "{keys.access_key}"\n'
        f'secret_key = "{keys.secret_key}"\n'
        + (f'session_token = "{keys.session_token}"\n' if keys.session_token else "")))
    env.update(AWS_ACCESS_KEY_ID=keys.access_key, AWS_SECRET_ACCESS_KEY=keys.secret_key)
    if keys.session_token:
        env["AWS_SESSION_TOKEN"] = keys.session_token
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for mp, log in ((a, tmp_path / "a.log"), (b, tmp_path / "b.log")):
        adopt(mounter, mp, bucket, env, log)
    common = f"cache_dir={mounter.cache_dir},_netdev,nofail"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"s3://{bucket}/pre {a} s3mount endpoint_url={sandbox.url},{common},"
        f"log_file={tmp_path / 'a.log'} 0 0\n"
        f"work {b} fuse.s3mount {common},log_file={tmp_path / 'b.log'} 0 0\n")
    for attempt in (1, 2):
        r = subprocess.run(["mount", "-T", str(fstab), "-a"], env=env, capture_output=True,
                           text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"attempt {attempt}: {r.stderr}"
        assert len(_mounts_at(a)) == len(_mounts_at(b)) == 1, attempt
    assert _mounts_at(a) == [("fuse.s3mount", f"s3://{bucket}/pre")]
    assert _mounts_at(b) == [("fuse.s3mount", "work")]
    (a / "x.txt").write_text("under the prefix")
    assert s3.get_object(Bucket=bucket, Key="pre/x.txt")["Body"].read() == b"under the prefix"
    assert (b / "pre" / "x.txt").read_text() == "under the prefix"


# -- 5: a Clever Cloud profile as s3mount.conf(5) shows it ---------------------------------------

def test_clevercloud_profile_message_leads_to_a_working_mount(tmp_path: Path) -> None:
    """The man page's example names the bucket; a profile without one is told what to add, and
    adding just that mounts."""
    from s3mount.cli.demo import PROFILES

    man = (Path(__file__).resolve().parent.parent / "man" / "s3mount.conf.5").read_text()
    example = man.split("[profiles.cellar]\n", 1)[1].split("\n\n", 1)[0]
    assert 'bucket = "' in example and 'provider = "clevercloud"' in example

    with SandboxProcess(providers=["clevercloud"]) as sb:
        prof = PROFILES["clevercloud"](sb.state["clevercloud"])
        bucket = prof.pop("bucket")
        body = "".join(f'{k} = "{v}"\n' for k, v in prof.items())
        env = write_profiles(tmp_path / "config", f"[profiles.cellar]\n{body}")
        env["S3MOUNT_TEST_BROWSER"] = "http"
        assert cli(["login", "cellar"], env=env).returncode == 0
        mounter = Mounter(sb, tmp_path)
        try:
            mp = tmp_path / "mp"
            mp.mkdir()
            line = one_line(cli(["mount", "cellar", str(mp)], env=env),
                            'add bucket = "NAME" to [profiles.cellar] in '
                            f'{tmp_path / "config" / "s3mount" / "config.toml"}')
            assert "clevercloud does not assign one" in line
            cfg = tmp_path / "config" / "s3mount" / "config.toml"
            cfg.write_text(cfg.read_text() + f'bucket = "{bucket}"\n')
            m = mounter("", env=env, profile="cellar", path=mp)
            (m.path / "hello.txt").write_text("hello cellar")
            assert sb.s3().get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == \
                b"hello cellar"
        finally:
            mounter.close()


def test_renewal_log_lines_read_right(caplog: pytest.LogCaptureFixture) -> None:
    """"credentials renewed (new key …WXYZ, expiring in 60s)", never "new key key" or "expire in
    never"."""
    import logging
    import time

    from s3mount.credentials.refresher import Refresher
    from s3mount.store.base import KeySet

    class Rotating:
        name = "rotating"
        issued = iter(["AKIA0000000000AAAA", "AKIA0000000000BBBB", "AKIA0000000000BBBB"])

        def fetch(self) -> KeySet:
            ak = next(self.issued)
            return KeySet(ak, "secret", expires_at=None if ak.endswith("AAAA")
                          else time.time() + 60)

    caplog.set_level(logging.INFO, logger="s3mount.credentials.refresher")
    r = Refresher(Rotating())
    first = r.current()
    second = r.renew_after_rejection(first)
    assert second is not None and second.access_key.endswith("BBBB")
    with r._lock:  # a renewal that keeps the key id, as the background thread makes it
        r._fetch_locked()
    lines = [rec.getMessage() for rec in caplog.records]
    assert lines[0] == "credentials obtained from rotating (key …AAAA, not expiring)"
    assert lines[1].startswith("credentials renewed (new key …BBBB, expiring in ")
    assert lines[2].startswith("credentials renewed (same key …BBBB, expiring in ")


@needs_root
def test_a_device_as_log_file_keeps_its_mode(mounter: Mounter, bucket: str,
                                             sandbox: SandboxProcess, tmp_path: Path) -> None:
    """``-o log_file=/dev/null`` must not make /dev/null 0600 (shown on a null device of our own)."""
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    null.chmod(0o666)
    mp = tmp_path / "mp"
    mp.mkdir()
    env = mounter.env_for(sandbox.issue_keys([bucket]))
    adopt(mounter, mp, bucket, env, null)
    r = cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url", sandbox.url, "-o",
             f"cache_dir={mounter.cache_dir},log_file={null},log_size=0.001"], env=env)
    assert r.returncode == 0, r.stderr
    (mp / "f").write_text("logged to nowhere")
    assert stat.S_IMODE(null.stat().st_mode) == 0o666 and stat.S_ISCHR(null.stat().st_mode)


@pytest.mark.parametrize("option, what", [
    ("uid=4294967296", "option 'uid': 4294967296 is not a user or group id"),
    ("gid=99999999999", "option 'gid': 99999999999 is not a user or group id"),
    ("uid=4294967295", "is not a user or group id"),  # (uid_t)-1: "no owner" to chown(2)
    ("log_size=1e308", "option 'log_size' must be at most"),
])
def test_option_out_of_range_is_one_line_before_anything_starts(option: str, what: str,
                                                                 tmp_path: Path) -> None:
    """Found by trying: uid=99999999999 mounted, then every stat on the mount was EIO (an
    internal error per call in the log); log_size=1e308 killed the mount process at start."""
    mp = tmp_path / "mp"
    mp.mkdir()
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    one_line(cli(["mount", "s3://b-1", str(mp), "--endpoint-url", "http://127.0.0.1:9",
                  "-o", option], env=env), what)
    assert not (tmp_path / "state").exists()  # no mount process, no log


def test_a_log_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """Found by trying: ``-o log_file=/proc/nope/x`` ended in a traceback."""
    mp = tmp_path / "mp"
    mp.mkdir()
    one_line(cli(["mount", "s3://b-1", str(mp), "--endpoint-url", "http://127.0.0.1:9",
                  "-o", "log_file=/proc/nope/x.log"]),
             "cannot write the log file /proc/nope/x.log: No such file or directory")


def test_a_relative_log_file_is_beside_the_caller(mounter: Mounter, bucket: str,
                                                  sandbox: SandboxProcess,
                                                  tmp_path: Path) -> None:
    """Found by trying: ``-o log_file=name.log`` (no directory) ended in a traceback."""
    mp = tmp_path / "rel"
    mp.mkdir()
    env = mounter.env_for(sandbox.issue_keys([bucket]))
    r = subprocess.run([*S3MOUNT, "mount", f"s3://{bucket}", str(mp), "--endpoint-url",
                        sandbox.url, "-o", f"cache_dir={mounter.cache_dir},log_file=rel.log"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    adopt(mounter, mp, bucket, env, tmp_path / "rel.log")
    assert r.returncode == 0, r.stderr
    assert "mounted s3://" in (tmp_path / "rel.log").read_text()


def test_a_dead_mount_on_the_mountpoint_is_one_line(mounter: Mounter, bucket: str,
                                                   sandbox: SandboxProcess) -> None:
    """Found by trying: mounting again where a mount process had died (its FUSE mount left
    behind, ENOTCONN) ended in a traceback."""
    m = mounter(bucket)
    assert m.pid is not None
    os.kill(m.pid, signal.SIGKILL)  # the kernel mount stays, with nobody serving it
    try:
        for _ in range(100):
            if not Path(f"/proc/{m.pid}").exists():
                break
            time.sleep(0.05)
        env = mounter.env_for(sandbox.issue_keys([bucket]))
        one_line(cli(["mount", f"s3://{bucket}", str(m.path), "--endpoint-url", sandbox.url],
                     env=env),
                 f"mountpoint {m.path} is not accessible (", f"fusermount3 -u {m.path}")
    finally:
        subprocess.run(["fusermount3", "-uz", str(m.path)], capture_output=True, timeout=30)


def test_a_cache_dir_that_cannot_be_used_is_one_line(bucket: str, sandbox: SandboxProcess,
                                                    mounter: Mounter, tmp_path: Path) -> None:
    """Found by trying: ``-o cache_dir=`` naming a file made the mount process exit with a
    traceback in its log, and the command said only 'see the log'."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "mp").mkdir()
    env = mounter.env_for(sandbox.issue_keys([bucket]))
    one_line(cli(["mount", f"s3://{bucket}", str(tmp_path / "mp"), "--endpoint-url",
                  sandbox.url, "-o", f"cache_dir={tmp_path / 'afile'}"], env=env),
             f"cannot use cache directory {tmp_path / 'afile'}: Not a directory")
    assert not os.path.ismount(tmp_path / "mp")


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs needs root")
def test_umount_leaves_other_file_systems_alone(tmp_path: Path) -> None:
    """Found by trying: as root, ``s3mount umount`` of a tmpfs unmounted it (fusermount3 -u
    unmounts whatever root names)."""
    other = tmp_path / "tmpfs"
    other.mkdir()
    run(["mount", "-t", "tmpfs", "tmpfs", str(other)], timeout=30)
    try:
        one_line(cli(["umount", str(other)]), f"{other} is not an s3mount mount")
        assert os.path.ismount(other)
    finally:
        subprocess.run(["umount", str(other)], capture_output=True, timeout=30)
