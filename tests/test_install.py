"""``s3mount install-helpers``: links where mount(8)/systemd look, and what it refuses to touch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3mount.install import UNIT, InstallError, Targets, install, scripts_dir, uninstall


@pytest.fixture
def targets(tmp_path):
    return Targets(sbin_dir=str(tmp_path / "sbin"), bin_dir=str(tmp_path / "bin"),
                   unit_dir=str(tmp_path / "units"))


def test_install_links_scripts_and_copies_unit(targets, tmp_path):
    lines = install(targets)
    assert len(lines) == 3
    helper = tmp_path / "sbin" / "mount.s3mount"
    assert helper.is_symlink() and helper.resolve() == (scripts_dir() / "mount.s3mount").resolve()
    assert (tmp_path / "bin" / "s3mount").resolve() == (scripts_dir() / "s3mount").resolve()
    unit = tmp_path / "units" / UNIT
    assert not unit.is_symlink() and "Type=notify" in unit.read_text()
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    # the linked helper runs with the venv's interpreter even with an empty environment
    r = subprocess.run([str(helper), "--help"], env={}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "mount.s3mount" in r.stdout


def test_install_is_idempotent_and_replaces_an_older_link(targets, tmp_path):
    install(targets)
    old = tmp_path / "old-venv" / "bin"
    old.mkdir(parents=True)
    (tmp_path / "bin" / "s3mount").unlink()
    (tmp_path / "bin" / "s3mount").symlink_to(old / "s3mount")
    install(targets)
    assert (tmp_path / "bin" / "s3mount").resolve() == (scripts_dir() / "s3mount").resolve()
    assert sorted(os.listdir(tmp_path / "bin")) == ["s3mount"]  # no temporary files left


def test_two_installs_at_once_both_succeed(targets, tmp_path, monkeypatch):
    """A second install running between the first one's temporary file and its rename (as two
    test workers or two admins can): both finish, the links are right, no temporary file is left."""
    real_replace = os.replace
    nested: list[list[str]] = []

    def replace_after_another_install(src, dst):
        if not nested:
            nested.append([])
            nested[0] = install(targets)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_another_install)
    assert len(install(targets)) == 3 and len(nested[0]) == 3
    assert (tmp_path / "sbin" / "mount.s3mount").resolve() == \
        (scripts_dir() / "mount.s3mount").resolve()
    assert sorted(os.listdir(tmp_path / "sbin")) == ["mount.s3mount"]
    assert sorted(os.listdir(tmp_path / "bin")) == ["s3mount"]


def test_a_failed_install_leaves_no_temporary_file(targets, tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(InstallError, match="permission denied"):
        install(targets)
    assert os.listdir(tmp_path / "sbin") == []


def test_foreign_files_are_not_replaced(targets, tmp_path):
    (tmp_path / "sbin").mkdir()
    foreign = tmp_path / "sbin" / "mount.s3mount"
    foreign.write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(InstallError, match="exists and is not from s3mount"):
        install(targets)
    assert foreign.read_text() == "#!/bin/sh\necho mine\n"
    assert any("left alone" in line for line in uninstall(targets))
    assert foreign.exists()


def test_uninstall_removes_what_install_created(targets, tmp_path):
    install(targets)
    assert len(uninstall(targets)) == 3
    assert not any(list(Path(d).iterdir())
                   for d in (targets.sbin_dir, targets.bin_dir, targets.unit_dir))
    assert uninstall(targets) == []


def test_command_line(targets, tmp_path):
    cmd = [sys.executable, "-m", "s3mount", "install-helpers", "--sbin-dir", targets.sbin_dir,
           "--bin-dir", targets.bin_dir, "--unit-dir", targets.unit_dir]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sbin" / "mount.s3mount").is_symlink()
    r = subprocess.run(cmd + ["--uninstall"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.count("removed") == 3


def test_unprivileged_gets_one_line(tmp_path):
    """Run as nobody (setpriv) so the check also holds when the suite runs as root."""
    cmd = [sys.executable, "-m", "s3mount", "install-helpers", "--sbin-dir", "/sbin",
           "--bin-dir", "/usr/local/bin", "--unit-dir", "/etc/systemd/user"]
    if os.getuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "permission denied (run as root" in r.stderr
