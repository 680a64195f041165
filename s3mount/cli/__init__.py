"""The ``s3mount`` command: one module per subcommand, each with ``register(subparsers)``.

Every failure the user can cause ends as one line on stderr and a non-zero exit (``CliError`` or
any of our own errors); a traceback is a bug.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..credentials.base import ProviderError
from ..errors import S3MountError

# Subcommand modules (s3mount/cli/<name>.py); each defines register(subparsers).
COMMANDS = ["mount", "umount", "status", "install_helpers", "login", "credentials", "demo",
            "completion"]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse, failing as the rest of the command does: one line (no usage block) naming what
    was wrong, exit status 2. An option no parser knows is named before a missing argument
    (argparse names the missing argument, ``s3mount --bogus`` then read "COMMAND is required"),
    and a subcommand reports its own unknown arguments (argparse left them to the top-level
    parser, which named none of the subcommand's usage)."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        self._given = list(sys.argv[1:] if args is None else args)
        ns, extras = super().parse_known_args(self._given, namespace)
        if extras and self.prog != "s3mount":
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras

    def error(self, message: str) -> NoReturn:
        unknown = self._unknown_options()
        if unknown and "required" in message:
            message = f"unrecognized arguments: {' '.join(unknown)}"
        elif message == "the following arguments are required: COMMAND":
            names = ", ".join(c.replace("_", "-") for c in COMMANDS)
            message = f"a command is required: {names}"
        where = self.prog.removeprefix("s3mount").strip()
        raise CliError(f"{where + ': ' if where else ''}{message}; see `{self.prog} --help`",
                       status=2)

    def _unknown_options(self) -> list[str]:
        """The words given before any ``--`` that look like options this parser lacks."""
        given = getattr(self, "_given", [])
        given = given[:given.index("--")] if "--" in given else given
        known = self._option_string_actions
        return [a for a in given if a.startswith("-") and a != "-"
                and not self._negative_number_matcher.match(a)
                and not any(o.startswith(a.partition("=")[0]) for o in known
                            if a.startswith("--"))
                and a.partition("=")[0] not in known]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser for all subcommands, or for ``only`` that one.

    Importing a subcommand's module imports what it runs on (``mount`` brings boto3, trio and
    pyfuse3: over a second of start-up on a slow machine), so ``s3mount status`` and ``umount``,
    which scripts and unit files call often, do not pay for the others.
    """
    parser = _Parser(
        prog="s3mount", description="Mount your own S3-compatible bucket as a directory.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [only] if only else COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0].replace("-", "_") if argv else None
    try:
        # mount.fuse3 runs "s3mount SOURCE DIR -o OPTS": a first word that is no command is a
        # mount, unless it reads as a misspelt command and names no profile.
        if first is not None and not argv[0].startswith("-") and first not in COMMANDS:
            _refuse_misspelt_command(argv[0])
            argv.insert(0, first := "mount")
        parser = build_parser(first if first in COMMANDS else None)
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"s3mount: {exc}", file=sys.stderr)
        return exc.status
    except (S3MountError, ProviderError) as exc:
        print(f"s3mount: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# Words users type for a command, as other tools spell it.
ALIASES = {"unmount": "umount", "stat": "status", "info": "status", "list": "status",
           "ls": "status", "df": "status", "install": "install-helpers", "logout": "login",
           "creds": "credentials"}


def _refuse_misspelt_command(word: str) -> None:
    """``s3mount unmount DIR`` would otherwise try to mount a profile named "unmount"."""
    names = [c.replace("_", "-") for c in COMMANDS]
    meant = ALIASES.get(word) or next(iter(difflib.get_close_matches(word, names, n=1)), None)
    if meant is None or _is_profile(word):
        return
    raise CliError(f"unknown command {word!r}; did you mean `s3mount {meant}`? (to mount a "
                   f"profile named {word!r}: s3mount mount {word})", status=2)


def _is_profile(word: str) -> bool:
    from ..config import ConfigError, load_profiles

    try:
        valid, broken = load_profiles()
    except ConfigError:
        return False
    return word in valid or word in broken


def _version() -> str:
    from .. import __version__

    return f"s3mount {__version__}"
