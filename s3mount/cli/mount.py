"""``s3mount mount SOURCE MOUNTPOINT``: mount a bucket (or a profile's bucket).

Without ``-f`` the command starts the mount process in the background (a new session, logging to a
file) and returns only once the mount is live, or fails with the child's one-line reason. The child
is the same command with ``-f``; it reports readiness through the pipe named by
``S3MOUNT_READY_FD`` (and to systemd through ``NOTIFY_SOCKET``), so no state is shared by ``fork``
with threads already running.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import subprocess
import sys
import time

from ..config import load_profile, profile_problems
from ..credentials.build import FirstUseLogin, provider_from_profile
from ..credentials.static import EnvironmentProvider
from ..errors import S3MountError
from ..mount import MountRunner, MountSpec, check_mountpoint, prepare, protect_process
from ..notify import notify
from ..options import OPTIONS, check_endpoint_url, parse_options
from ..sources import parse_source
from . import CliError

log = logging.getLogger(__name__)

READY_FD_ENV = "S3MOUNT_READY_FD"
STARTUP_TIMEOUT = 120.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount", help="mount a bucket or a profile's bucket",
                       description="Mount s3://BUCKET[/PREFIX] or a profile's bucket on MOUNTPOINT.")
    p.add_argument("source", metavar="SOURCE", help="s3://BUCKET[/PREFIX] or a profile name")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?",
                   help="an existing directory (for a profile: default its mountpoint key, "
                        "else ~/S3/PROFILE)")
    p.add_argument("--endpoint-url", help="S3 endpoint URL (e.g. http://127.0.0.1:9000)")
    p.add_argument("--region", help="S3 signing region")
    p.add_argument("-o", dest="options", action="append", metavar="OPT[,OPT...]",
                   help="mount options (listed below); may be repeated")
    p.add_argument("--read-only", action="store_true",
                   help="mount read-only, as -o ro (the spelling of mountpoint-s3 and rclone)")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground and log to stderr")
    p.set_defaults(func=run)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = options_help()


def options_help() -> str:
    """Every ``-o`` option with its meaning, one line each, for ``mount --help``: the table the
    man pages print in full, so a user without them installed still sees every option."""
    labels = {name: name if opt.kind is bool else
              f"{name}={'OCTAL' if opt.octal else {int: 'N', float: 'N', str: 'TEXT'}[opt.kind]}"
              for name, opt in OPTIONS.items()}
    width = max(map(len, labels.values())) + 2
    lines = ["mount options (-o NAME or -o NAME=VALUE, comma-separated; see s3mount(1)):"]
    lines += [f"  {labels[name]:<{width}}{opt.help}" for name, opt in OPTIONS.items()]
    return "\n".join(lines)


def default_mountpoint(profile: str) -> str:
    return os.path.join(os.path.expanduser("~"), "S3", profile)


def build_spec(args: argparse.Namespace) -> MountSpec:
    src = parse_source(args.source)
    profile_name = src.profile
    prof: dict = {}
    if profile_name is None and args.options:
        profile_name = parse_options(args.options).profile
    if profile_name is not None:
        prof = load_profile(profile_name)
        for problem in profile_problems(but=profile_name):
            print(f"s3mount: warning: {problem}", file=sys.stderr)
    # The profile's options first, so the command line's can override them.
    opts = parse_options([prof["options"], *(args.options or [])] if prof.get("options")
                         else args.options)
    opts.endpoint_url = args.endpoint_url or opts.endpoint_url or prof.get("endpoint_url")
    if opts.endpoint_url is not None:
        check_endpoint_url(opts.endpoint_url)
    opts.region = args.region or opts.region or prof.get("region")
    if opts.aws_profile and profile_name is not None:
        if prof["provider"] != "env":
            raise CliError(f"-o aws_profile= names an AWS profile, for keys from the AWS "
                           f"environment; profile {profile_name!r} takes its keys from "
                           f"{prof['provider']}")
        prof = {**prof, "aws_profile": opts.aws_profile}
    if args.read_only:
        if opts.rw:
            raise CliError("--read-only and -o rw contradict each other")
        opts.ro = True
    mountpoint = args.mountpoint
    if mountpoint is None:
        if profile_name is None:
            raise CliError("MOUNTPOINT is required when mounting s3://BUCKET")
        mountpoint = os.path.expanduser(prof.get("mountpoint") or default_mountpoint(profile_name))
        os.makedirs(mountpoint, exist_ok=True)
    if profile_name is None:
        provider = EnvironmentProvider(opts.aws_profile, endpoint_url=opts.endpoint_url,
                                       region=opts.region)
    else:
        # From a terminal, a mount may run the provider's login on first use; from fstab or
        # systemd nobody could answer, so a missing login is an error there.
        provider = provider_from_profile(prof, interactive=sys.stdin.isatty())
    return MountSpec(bucket=src.bucket or prof.get("bucket"),
                     prefix=src.prefix or prof.get("prefix", ""), mountpoint=mountpoint,
                     provider=provider, options=opts, profile=profile_name, source=args.source)


def run(args: argparse.Namespace) -> int:
    if not args.foreground:
        return _start_background(args)
    from ..logsetup import setup_logging

    # Started by _start_background: a daemon that leaves the user's directory, once the paths
    # given relative to it are made absolute.
    background = READY_FD_ENV in os.environ
    spec = build_spec(args)
    setup_logging(debug=spec.options.debug, log_file=None, log_size=spec.options.log_size)
    if background:
        spec.mountpoint = os.path.abspath(spec.mountpoint)
        if spec.options.cache_dir:
            spec.options.cache_dir = os.path.abspath(spec.options.cache_dir)
    protect_process(background=background)
    return _serve(spec)


def _serve(spec: MountSpec) -> int:
    ready_fd = int(os.environ.pop(READY_FD_ENV, "-1"))

    def report(line: str) -> None:
        if ready_fd >= 0:
            try:
                os.write(ready_fd, (line + "\n").encode())
                os.close(ready_fd)
            except OSError:
                pass

    try:
        prepared = prepare(spec)
        runner = MountRunner(prepared)
        runner.mount()
    except S3MountError as exc:
        report(f"error: {exc}")
        raise
    def on_ready() -> None:
        log.info("mounted s3://%s/%s on %s", prepared.bucket, spec.prefix, spec.mountpoint)
        notify("READY=1", f"STATUS=mounted s3://{prepared.bucket}/{spec.prefix}")
        report("ok")

    failed = runner.serve(on_ready)
    if failed:
        print(f"s3mount: {failed} file(s) could not be uploaded; they are kept in the cache "
              "directory and uploaded by the next mount", file=sys.stderr)
        return 1
    return 0


def _child_argv(args: argparse.Namespace, spec: MountSpec) -> list[str]:
    argv = [sys.executable, "-m", "s3mount", "mount", args.source, spec.mountpoint, "-f"]
    if args.endpoint_url:
        argv += ["--endpoint-url", args.endpoint_url]
    if args.region:
        argv += ["--region", args.region]
    if args.read_only:
        argv.append("--read-only")
    for o in args.options or []:
        argv += ["-o", o]
    return argv


def _start_background(args: argparse.Namespace) -> int:
    # Parse and check here too, so bad options, sources and mountpoints fail at once, before a
    # mount process is started (and imports all it runs on) only to report them.
    spec = build_spec(args)
    check_mountpoint(spec.mountpoint, nonempty=spec.options.nonempty)
    if isinstance(spec.provider, FirstUseLogin):
        # From a terminal: log in now if the profile has no login yet, while someone is there
        # to answer (the background process has no terminal).
        spec.provider.fetch()
    from ..logsetup import log_path_for, open_private

    log_file = os.path.abspath(spec.options.log_file or log_path_for(spec.mountpoint))
    try:
        os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
        log_fd = open_private(log_file)
    except OSError as exc:
        raise CliError(f"cannot write the log file {log_file}: {exc.strerror}") from None
    r, w = os.pipe()
    env = dict(os.environ, **{READY_FD_ENV: str(w), "S3MOUNT_LOG_FILE": log_file})
    with os.fdopen(log_fd, "ab") as logf:
        proc = subprocess.Popen(_child_argv(args, spec), stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=logf, pass_fds=(w,), env=env, start_new_session=True)
    os.close(w)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    buf = b""
    with os.fdopen(r, "rb", buffering=0) as pipe:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.terminate()
                raise CliError(f"the mount did not come up within {STARTUP_TIMEOUT:.0f}s; "
                               f"see {log_file}")
            ready, _, _ = select.select([pipe], [], [], min(left, 1.0))
            if ready:
                chunk = pipe.read(4096)
                if not chunk:
                    break
                buf += chunk
    line = buf.decode(errors="replace").strip()
    if line == "ok":
        return 0
    if line.startswith("error: "):
        raise CliError(line[len("error: "):])
    code = proc.wait(timeout=10) if proc.poll() is None else proc.returncode
    raise CliError(f"the mount process exited ({code}) before the mount was live; see {log_file}")
