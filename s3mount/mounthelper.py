"""``mount.s3mount``: the helper mount(8) runs for ``mount -t s3mount`` and fstab entries.

mount(8) calls ``/sbin/mount.s3mount SOURCE DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`` with an
almost empty environment (no PATH, no HOME) and mixes its own generic options (``rw``, ``nosuid``,
``_netdev``, ``x-systemd.*``...) into ``-o``. This module translates that into
``s3mount mount -o OPTIONS -- SOURCE DIR``:

- generic options that mean nothing to us (``options.IGNORED``) are dropped; options we do not
  know are refused with one line *before* anything is mounted (``-s``, sloppy, drops them with a
  warning instead, as mount(8) documents);
- every kept option is validated by ``options.parse_options`` and SOURCE must look like
  ``s3://bucket[/prefix]`` or a profile name: no comma, backslash, space or control character can
  reach the FUSE option string (where a comma would start a new FUSE option such as
  ``allow_other``), and no word can start with ``-`` (where it would become a command option);
- the mount runs in this process through the CLI with an argument list, never a shell.

Exit codes follow mount(8): 1 for a bad invocation or option, 32 when the mount itself failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import shlex
import sys

from .options import IGNORED, IGNORED_PREFIXES, OPTIONS, OptionError, parse_options, split_options
from .sources import SourceError, parse_source

log = logging.getLogger(__name__)

EX_USAGE = 1  # mount(8): incorrect invocation or permissions
EX_FAIL = 32  # mount(8): mount failure

# S3 bucket naming rules (lower case, digits, dots, hyphens), then an optional key prefix.
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class UsageError(Exception):
    """A bad invocation: one line on stderr, exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mount.s3mount", add_help=False,
                description="mount(8) helper for s3mount; see mount.s3mount(8).")
    p.add_argument("source", metavar="SOURCE", help="s3://bucket[/prefix] or a profile name")
    p.add_argument("directory", metavar="DIR", help="the mountpoint")
    p.add_argument("-o", dest="options", action="append", metavar="OPTIONS",
                   help="comma-separated mount options (see s3mount(1), MOUNT OPTIONS)")
    p.add_argument("-s", dest="sloppy", action="store_true",
                   help="drop unknown options with a warning instead of refusing them")
    p.add_argument("-f", dest="fake", action="store_true",
                   help="fake: check SOURCE, DIR and options, but do not mount")
    p.add_argument("-n", dest="nomtab", action="store_true",
                   help="do not write /etc/mtab (accepted; s3mount never writes it)")
    p.add_argument("-v", dest="verbose", action="store_true",
                   help="print the s3mount command before running it")
    p.add_argument("-N", dest="namespace", metavar="NS",
                   help="mount namespace (not supported: refused)")
    p.add_argument("-t", dest="type", metavar="TYPE", help="filesystem type (accepted, unused)")
    p.add_argument("-h", "--help", action="help", help="show this help and exit")
    return p


def check_source(source: str) -> None:
    """SOURCE ends up in the FUSE ``fsname=`` option; ``sources.parse_source`` holds the rules."""
    try:
        parse_source(source)
    except SourceError as exc:
        raise UsageError(str(exc)) from None


def check_directory(directory: str) -> None:
    if directory.startswith("-") or "\0" in directory or "\n" in directory:
        raise UsageError(f"bad mountpoint {directory!r}")
    if not os.path.isdir(directory):
        raise UsageError(f"mountpoint {directory} is not a directory")


def translate_options(values: list[str] | None, *, sloppy: bool) -> list[str]:
    """Our options from mount(8)'s ``-o`` values: generic ones dropped, unknown ones refused."""
    try:
        items = split_options(values)
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    kept: list[str] = []
    for item in items:
        name = item.partition("=")[0]
        if name in IGNORED or item.startswith(IGNORED_PREFIXES):
            continue
        if name not in OPTIONS:
            if not sloppy:
                raise UsageError(f"unknown mount option {name!r} (see s3mount(1), MOUNT OPTIONS)")
            print(f"mount.s3mount: ignoring unknown mount option {name!r}", file=sys.stderr)
            continue
        kept.append(item)
    try:
        parse_options(kept)
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    return kept


def mount_argv(source: str, directory: str, options: list[str]) -> list[str]:
    """Arguments for ``s3mount``; ``--`` ends option parsing whatever SOURCE and DIR look like."""
    argv = ["mount"]
    if options:
        argv += ["-o", ",".join(options)]
    return argv + ["--", source, directory]


def _complete_environment() -> None:
    """mount(8) runs helpers without HOME and PATH; profiles and fusermount3 need them."""
    if not os.environ.get("HOME"):
        os.environ["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
    os.environ.setdefault("PATH", _DEFAULT_PATH)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if os.geteuid() != os.getuid():
            # mount(8) drops to the real user before running helpers for "user" fstab entries; a
            # setuid start would let that user's environment steer a root process.
            raise UsageError("refusing to run setuid; install mount.s3mount without the setuid "
                             "bit")
        args = build_parser().parse_args(argv)
        if args.namespace is not None:
            raise UsageError("mounting into another namespace (-N) is not supported")
        check_source(args.source)
        check_directory(args.directory)
        options = translate_options(args.options, sloppy=args.sloppy)
    except UsageError as exc:
        print(f"mount.s3mount: {exc}", file=sys.stderr)
        return EX_USAGE
    command = mount_argv(args.source, args.directory, options)
    if args.verbose:
        print("mount.s3mount: running s3mount " + shlex.join(command), file=sys.stderr)
    if args.fake:
        return 0
    _complete_environment()
    from .cli import main as s3mount_main

    return 0 if s3mount_main(command) == 0 else EX_FAIL
