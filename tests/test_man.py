"""Man pages: generated blocks up to date, every option/command/key documented, clean rendering."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from s3mount.cli import build_parser
from s3mount.config import PROFILE_KEYS
from s3mount.mounthelper import build_parser as helper_parser
from s3mount.options import IGNORED, OPTIONS
from s3mount.runtime import STATE_KEYS

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = ["s3mount.1", "mount.s3mount.8", "s3mount.conf.5"]


def _generator():
    spec = importlib.util.spec_from_file_location("man_generate", MAN / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page(name: str) -> str:
    return (MAN / name).read_text()


def _bold(word: str) -> str:
    return r"\fB" + word.replace("-", r"\-")


def test_generated_blocks_are_up_to_date(capsys):
    assert _generator().main(["--check"]) == 0, capsys.readouterr().err


def test_every_mount_option_is_documented():
    for page in ("s3mount.1", "mount.s3mount.8"):
        text = _page(page)
        missing = [o for o in OPTIONS if _bold(o) not in text]
        assert not missing, f"{page} lacks {missing}"
        assert all(_bold(o) in text for o in IGNORED)


def test_every_subcommand_and_argument_is_documented():
    text = _page("s3mount.1")
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, parser in sub.choices.items():
        assert f".SS {name.replace('-', chr(92) + '-')}\n" in text, name
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert _bold(flag) in text, f"{name} {flag}"


def test_mount_helper_options_are_documented():
    text = _page("mount.s3mount.8")
    for action in helper_parser()._actions:
        if not isinstance(action, argparse._HelpAction):
            for flag in action.option_strings:
                assert _bold(flag) in text, flag


def test_every_profile_key_is_documented():
    text = _page("s3mount.conf.5")
    missing = [k for k in PROFILE_KEYS if _bold(k) + r"\fR = " not in text]
    assert not missing


def test_every_status_field_is_documented():
    text = _page("s3mount.1")
    assert all(_bold(k) in text for k in STATE_KEYS)


def test_generator_escapes_roff():
    esc = _generator().esc
    assert esc(".starts with a dot\n'and a quote") == "\\&.starts with a dot\n\\&'and a quote"
    assert esc(r"C:\path -o `cmd x`") == r"C:\epath \-o \fBcmd x\fR"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("page", PAGES)
def test_groff_renders_without_warnings(page):
    r = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(MAN / page)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == ""


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.parametrize("page", PAGES)
def test_man_renders(page):
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0"}
    r = subprocess.run(["man", "--warnings", "-l", str(MAN / page)], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0 and r.stderr == ""
    plain = re.sub(".\b", "", r.stdout)  # overstrike bold/underline
    assert "\nNAME\n" in plain and "\nSEE ALSO\n" in plain


def test_pages_are_installed_as_data_files():
    with open(ROOT / "pyproject.toml", "rb") as f:
        data_files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    for page in PAGES:
        section = page.rsplit(".", 1)[1]
        assert f"man/{page}" in data_files[f"share/man/man{section}"]
    assert "systemd/s3mount@.service" in data_files["share/s3mount/systemd"]
