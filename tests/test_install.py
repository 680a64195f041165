"""``s3mount install-helpers``: links where mount(8)/systemd look, and what it refuses to touch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from s3mount.install import (
    UNIT,
    InstallError,
    Targets,
    install,
    scripts_dir,
    uninstall,
    unusable_by_others,
)


@pytest.fixture
def targets(tmp_path):
    return Targets(sbin_dir=str(tmp_path / "sbin"), bin_dir=str(tmp_path / "bin"),
                   unit_dir=str(tmp_path / "units"), man_dir=str(tmp_path / "man"),
                   completion_dir=str(tmp_path / "completion"))


def test_install_links_scripts_and_copies_unit(targets, tmp_path):
    lines = install(targets)
    assert len(lines) == 7
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
    assert len(install(targets)) == 7 and len(nested[0]) == 7
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
    assert len(uninstall(targets)) == 7
    assert not any(list(Path(d).iterdir())
                   for d in (targets.sbin_dir, targets.bin_dir, targets.unit_dir,
                             targets.completion_dir))
    assert not [p for p in Path(targets.man_dir).rglob("*") if p.is_file()]
    assert uninstall(targets) == []


def test_command_line(targets, tmp_path):
    cmd = [sys.executable, "-m", "s3mount", "install-helpers", "--sbin-dir", targets.sbin_dir,
           "--bin-dir", targets.bin_dir, "--unit-dir", targets.unit_dir, "--man-dir",
           targets.man_dir, "--completion-dir", targets.completion_dir]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sbin" / "mount.s3mount").is_symlink()
    # man finds the three pages in the tree install-helpers wrote (/usr/local/share/man by
    # default, which is on man's default path)
    for page, section in (("s3mount", "1"), ("s3mount.conf", "5"), ("mount.s3mount", "8")):
        found = subprocess.run(["man", "-M", targets.man_dir, "-w", section, page],
                               capture_output=True, text=True, timeout=60)
        assert found.stdout.strip() == f"{targets.man_dir}/man{section}/{page}.{section}", \
            found.stderr
    r = subprocess.run(cmd + ["--uninstall"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.count("removed") == 7
    assert subprocess.run(["man", "-M", targets.man_dir, "-w", "s3mount"], capture_output=True,
                          timeout=60).returncode != 0


def test_unprivileged_gets_one_line(tmp_path):
    """Run as nobody (setpriv) so the check also holds when the suite runs as root."""
    cmd = [sys.executable, "-m", "s3mount", "install-helpers", "--sbin-dir", "/sbin",
           "--bin-dir", "/usr/local/bin", "--unit-dir", "/etc/systemd/user"]
    if os.getuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "permission denied (run as root" in r.stderr


def test_warns_when_other_users_cannot_run_the_linked_s3mount(targets):
    """install-helpers run from an install in a mode 0700 directory (a venv in a private home):
    the links work for root only, and it says so. (Outside tmp_path: pytest's base is 0700.)"""
    base = Path(tempfile.mkdtemp(prefix="s3mount-install-test-"))
    try:
        base.chmod(0o755)
        home = base / "home"
        scripts = home / "venv" / "bin"
        scripts.mkdir(parents=True)
        for name in ("s3mount", "mount.s3mount"):
            shutil.copy(scripts_dir() / name, scripts / name)
        cmd = [str(scripts / "s3mount"), "install-helpers", "--sbin-dir", targets.sbin_dir,
               "--bin-dir", targets.bin_dir, "--unit-dir", targets.unit_dir, "--man-dir",
               targets.man_dir, "--completion-dir", targets.completion_dir]
        home.chmod(0o700)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stderr.startswith(f"s3mount: warning: other users cannot run "
                                   f"{targets.bin_dir}/s3mount: {home} (on the way to "
                                   f"{scripts / 's3mount'}) is mode 0700; "), r.stderr
        assert r.stderr.count("\n") == 1
        home.chmod(0o755)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0
        # past the home directory, the interpreter of the #! line is checked the same way
        why = unusable_by_others(Path(targets.bin_dir) / "s3mount")
        assert (r.stderr == "") == (why is None)
        assert why is None or str(home) not in why
    finally:
        shutil.rmtree(base)


def test_bash_completion(targets, tmp_path):
    """The installed script, sourced by a real bash, completes commands, flags, -o lists,
    profiles and directories."""
    install(targets)
    config = tmp_path / "config" / "s3mount"
    config.mkdir(parents=True)
    (config / "config.toml").write_text('[profiles.work]\nprovider = "env"\n[profiles.wiki]\n')
    (tmp_path / "wdir").mkdir()
    script = Path(targets.completion_dir) / "s3mount"
    probe = (f"source {script}\n"
             'c() { COMP_LINE="$1"; COMP_POINT=${#1}; _s3mount; local IFS="|"; '
             'echo "${COMPREPLY[*]}"; }\n'
             'c "s3mount mo"; c "s3mount um"; c "s3mount mount --read"; '
             'c "s3mount mount -o ro,cache_s"; c "s3mount mount -o ro,uid=1000,nonem"; '
             'c "s3mount mount w"; c "s3mount login wo"; c "s3mount umount w"\n')
    r = subprocess.run(["bash", "--norc", "-c", probe], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path,
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                            "XDG_CONFIG_HOME": str(tmp_path / "config")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "mount", "umount", "--read-only", "ro,cache_size=", "1000,nonempty", "work|wiki|wdir",
        "work", "wdir"]


def test_completion_command_prints_the_installed_script(targets, tmp_path):
    """``s3mount completion bash`` prints what install-helpers installs, and bash can source it
    from the command's output; another shell is refused."""
    install(targets)
    installed = (Path(targets.completion_dir) / "s3mount").read_text()
    s3mount = [sys.executable, "-m", "s3mount"]
    r = subprocess.run([*s3mount, "completion", "bash"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout == installed, r.stderr
    probe = ('source <("$@" completion bash)\n'
             'COMP_LINE="s3mount comp"; COMP_POINT=${#COMP_LINE}; _s3mount; echo "${COMPREPLY[*]}"')
    r = subprocess.run(["bash", "--norc", "-c", probe, "bash", *s3mount], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "completion\n", r
    r = subprocess.run([*s3mount, "completion", "fish"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "invalid choice: 'fish'" in r.stderr
