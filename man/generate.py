"""Regenerate the tables in the man pages from the code they document.

The man pages are written by hand, except the blocks between ``.\\" BEGIN GENERATED: NAME`` and
``.\\" END GENERATED: NAME``, which this script rewrites from the argparse parsers
(``s3mount.cli.build_parser``, ``s3mount.mounthelper.build_parser``), the mount option table
(``s3mount.options.OPTIONS``/``IGNORED``), the profile keys (``s3mount.config.PROFILE_KEYS``) and
the status fields (``s3mount.runtime.STATE_KEYS``). A test runs ``--check``, so a new option or
subcommand cannot be left out of the documentation.

    python man/generate.py           rewrite the pages in place
    python man/generate.py --check   exit 1 and name the stale pages if any would change
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

MAN_DIR = Path(__file__).resolve().parent
PAGES = ("s3mount.1", "mount.s3mount.8", "s3mount.conf.5")
_BLOCK = re.compile(r'(^\.\\" BEGIN GENERATED: (?P<name>[\w-]+)\n)(?P<body>.*?)'
                    r'(^\.\\" END GENERATED: (?P=name)\n)', re.M | re.S)


def esc(text: str) -> str:
    r"""Plain text -> roff: backslashes, minus signs, `code` -> bold, no leading control chars."""
    text = text.replace("\\", r"\e").replace("-", r"\-")
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)
    return "\n".join(r"\&" + line if line[:1] in (".", "'") else line
                     for line in text.split("\n"))


def _arg_label(action: argparse.Action) -> str:
    """``\\fB\\-o\\fR \\fIOPTIONS\\fR`` or ``\\fISOURCE\\fR`` for one argument."""
    if not action.option_strings:
        return rf"\fI{esc(_metavar(action))}\fR"
    names = ", ".join(rf"\fB{esc(s)}\fR" for s in action.option_strings)
    if action.nargs == 0:
        return names
    return rf"{names} \fI{esc(_metavar(action))}\fR"


def _metavar(action: argparse.Action) -> str:
    if action.metavar:
        return str(action.metavar)
    if action.choices:
        return "{" + "|".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _synopsis(prog: str, parser: argparse.ArgumentParser) -> list[str]:
    out = [f'.SY "{esc(prog)}"']
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    # options first, then operands, as synopses usually read
    for a in sorted(actions, key=lambda a: not a.option_strings):
        if a.option_strings:
            flag = esc(a.option_strings[0])
            out.append(f".OP {flag}" if a.nargs == 0 else f".OP {flag} {esc(_metavar(a))}")
        elif a.nargs == "?":
            out.append(rf"[\fI{esc(_metavar(a))}\fR]")
        elif a.nargs in ("*", "+"):
            out.append(rf"\fI{esc(_metavar(a))}\fR ...")
        else:
            out.append(f".I {esc(_metavar(a))}")
    out.append(".YS")
    return out


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
            continue
        out += [".TP", _arg_label(a), esc(formatter._expand_help(a) if a.help else "")]
    return out


def _subcommands() -> list[tuple[str, str, argparse.ArgumentParser]]:
    from s3mount.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def block_commands() -> list[str]:
    out = []
    for name, helptext, p in _subcommands():
        out += [f".SS {esc(name)}", *_synopsis(f"s3mount {name}", p), ".PP",
                esc(p.description or helptext), *_arguments(p)]
    return out


def block_synopsis() -> list[str]:
    out = []
    for name, _help, p in _subcommands():
        out += _synopsis(f"s3mount {name}", p)
    return out


def block_mount_options() -> list[str]:
    from s3mount.options import OPTIONS

    out = []
    for name, opt in OPTIONS.items():
        if opt.kind is bool:
            label = rf"\fB{esc(name)}\fR"
        else:
            kind = "octal" if opt.octal else {int: "integer", float: "seconds" if "timeout" in name
                                              else "number", str: "text"}[opt.kind]
            label = rf"\fB{esc(name)}=\fR\fI{kind}\fR"
        out += [".TP", label, esc(opt.help)]
    return out


def block_ignored_options() -> list[str]:
    from s3mount.options import IGNORED, IGNORED_PREFIXES

    names = ", ".join(rf"\fB{esc(n)}\fR" for n in sorted(IGNORED))
    prefixes = ", ".join(rf"\fB{esc(p)}\fR..." for p in IGNORED_PREFIXES)
    return [names + ",", "and every option starting with " + prefixes + "."]


def block_helper_options() -> list[str]:
    from s3mount.mounthelper import build_parser

    return _arguments(build_parser())


def block_helper_synopsis() -> list[str]:
    from s3mount.mounthelper import build_parser

    return _synopsis("mount.s3mount", build_parser())


def block_profile_keys() -> list[str]:
    from s3mount.config import KEY_TYPES, PROFILE_KEYS

    out = []
    for key, text in PROFILE_KEYS.items():
        kind = "integer" if KEY_TYPES.get(key) is int else "string"
        out += [".TP", rf"\fB{esc(key)}\fR = \fI{kind}\fR", esc(text)]
    return out


def block_status_fields() -> list[str]:
    from s3mount.runtime import STATE_KEYS

    out = []
    for key, text in STATE_KEYS.items():
        out += [".TP", rf"\fB{esc(key)}\fR", esc(text)]
    return out


BLOCKS: dict[str, Callable[[], list[str]]] = {
    "synopsis": block_synopsis,
    "commands": block_commands,
    "mount-options": block_mount_options,
    "ignored-options": block_ignored_options,
    "helper-synopsis": block_helper_synopsis,
    "helper-options": block_helper_options,
    "profile-keys": block_profile_keys,
    "status-fields": block_status_fields,
}


def render(text: str) -> str:
    """``text`` with every generated block rewritten."""
    def replace(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise SystemExit(f"unknown generated block {name!r}")
        return m.group(1) + "".join(line + "\n" for line in BLOCKS[name]()) + m.group(4)
    return _BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Regenerate the generated blocks of the man pages.")
    p.add_argument("--check", action="store_true", help="only report pages that are out of date")
    args = p.parse_args(argv)
    stale = []
    for page in PAGES:
        path = MAN_DIR / page
        old = path.read_text()
        new = render(old)
        if new != old:
            stale.append(page)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run: python man/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
