"""The examples in docs/SEMANTICS.md, run against a real mount: the document cannot drift."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mountlib import Mount

DOC = Path(__file__).resolve().parent.parent / "docs" / "SEMANTICS.md"
TOOL = Path(__file__).resolve().parent / "bucket_tool.py"


def examples() -> list[tuple[int, list[tuple[str, str]]]]:
    """Each ```console block as (line number, [(command, expected output)])."""
    out = []
    text = DOC.read_text()
    for m in re.finditer(r"```console\n(.*?)```", text, re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in m.group(1).splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        lineno = text[: m.start()].count("\n") + 1
        out.append((lineno, [(c, "\n".join(o)) for c, o in steps]))
    return out


@pytest.mark.parametrize("lineno,steps", examples(), ids=lambda v: f"line{v}"
                         if isinstance(v, int) else "")
def test_semantics_example(mnt: Mount, sandbox, lineno: int, steps: list[tuple[str, str]],
                           tmp_path: Path) -> None:
    workdir = mnt.path / f"example{lineno}"
    workdir.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bucket").write_text(f'#!/bin/sh\nexec {sys.executable} {TOOL} "$@"\n')
    (bindir / "bucket").chmod(0o755)
    admin = sandbox.admin
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", LC_ALL="C.UTF-8", TZ="UTC",
               BUCKET_ENDPOINT=sandbox.url, BUCKET_NAME=mnt.bucket,
               BUCKET_PREFIX=f"example{lineno}/", AWS_ACCESS_KEY_ID=admin.access_key,
               AWS_SECRET_ACCESS_KEY=admin.secret_key)
    env.pop("AWS_SESSION_TOKEN", None)
    for cmd, want in steps:
        r = subprocess.run(["bash", "-c", cmd], cwd=workdir, env=env, capture_output=True,
                           text=True, timeout=60)
        got = (r.stdout + r.stderr).rstrip("\n")
        assert got == want, f"docs/SEMANTICS.md line {lineno}: `{cmd}` printed {got!r}"
