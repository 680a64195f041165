"""``s3mount completion bash``: print the shell completion script.

``install-helpers`` installs the same script system-wide (as root); this prints it for a user who
cannot or would not: ``source <(s3mount completion bash)`` in ``~/.bashrc``, or redirected into
``~/.local/share/bash-completion/completions/s3mount``.
"""

from __future__ import annotations

import argparse
import sys

SHELLS = ("bash",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("completion", help="print the shell completion script",
                       description="Print the completion script for SHELL (install-helpers "
                                   "installs it system-wide). For one user: "
                                   "source <(s3mount completion bash) in ~/.bashrc.")
    p.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..completion import bash_script

    sys.stdout.write(bash_script())
    return 0
