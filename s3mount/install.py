"""Make an s3mount installed in a virtualenv visible where mount(8) and systemd look for it.

mount(8) runs ``/sbin/mount.<type>`` for ``-t s3mount`` and fstab; ``mount -t fuse.s3mount`` runs
``mount.fuse3``, which starts ``s3mount`` through ``/bin/sh`` with no PATH of its own (the shell's
default includes /usr/local/bin); systemd resolves ``ExecStart=s3mount`` in /usr/local/bin,
/usr/bin, ... only. A pip install into a venv or ~/.local puts the scripts elsewhere, so this
links them into those places. Links (not copies) keep working across upgrades of the venv, and
the shebang of the linked script picks the venv's interpreter.

The user unit ``s3mount@.service`` is copied (not linked: systemd refuses unit symlinks into a
home directory that is not mounted yet at boot) to /etc/systemd/user so every user can
``systemctl --user enable --now s3mount@PROFILE``. The man pages are copied to
/usr/local/share/man (on man's default path; the unit's ``Documentation=`` points there), and the
bash completion, written from the parser, to /usr/local/share/bash-completion/completions.

The links point into the install's venv; when a user other than its owner could not run that
(a venv in a mode 0700 home), ``unusable_by_others`` says why, so the admin is warned instead of
users meeting "permission denied" from mount(8) and systemd.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .errors import S3MountError

log = logging.getLogger(__name__)

UNIT = "s3mount@.service"


class InstallError(S3MountError):
    """A helper cannot be installed; the message says which and why."""


MAN_PAGES = ("s3mount.1", "s3mount.conf.5", "mount.s3mount.8")


@dataclass(frozen=True)
class Targets:
    sbin_dir: str = "/sbin"
    bin_dir: str = "/usr/local/bin"
    unit_dir: str = "/etc/systemd/user"
    man_dir: str = "/usr/local/share/man"
    completion_dir: str = "/usr/local/share/bash-completion/completions"


def scripts_dir() -> Path:
    """Where pip put our console scripts (the venv's bin, or ~/.local/bin for --user)."""
    for candidate in (Path(sys.argv[0]).resolve().parent, Path(sys.executable).parent,
                      Path(sysconfig.get_path("scripts"))):
        if (candidate / "mount.s3mount").is_file() and (candidate / "s3mount").is_file():
            return candidate
    raise InstallError("cannot find the s3mount and mount.s3mount scripts next to "
                       f"{sys.executable}; run install-helpers with the s3mount of your install")


def unit_file() -> Path:
    """The shipped unit: installed as data next to the package, or in a source checkout."""
    for candidate in (Path(sys.prefix) / "share" / "s3mount" / "systemd" / UNIT,
                      Path(__file__).resolve().parent.parent / "systemd" / UNIT):
        if candidate.is_file():
            return candidate
    raise InstallError(f"cannot find {UNIT} (neither in {sys.prefix}/share/s3mount/systemd nor "
                       "in a source checkout)")


def man_page(name: str) -> Path:
    """A shipped man page: installed as data (pip's share/man), or in a source checkout."""
    section = f"man{name.rsplit('.', 1)[1]}"
    for candidate in (Path(sys.prefix) / "share" / "man" / section / name,
                      Path(__file__).resolve().parent.parent / "man" / name):
        if candidate.is_file():
            return candidate
    raise InstallError(f"cannot find the man page {name} (neither in {sys.prefix}/share/man nor "
                       "in a source checkout)")


def plan(targets: Targets) -> list[tuple[Path, Path | str, str]]:
    """(destination, source, "link"|"copy"|"write") for every file we install; for "write" the
    source is the text itself."""
    from .completion import bash_script

    scripts = scripts_dir()
    pages: list[tuple[Path, Path | str, str]] = [
        (Path(targets.man_dir) / f"man{name.rsplit('.', 1)[1]}" / name, man_page(name), "copy")
        for name in MAN_PAGES]
    return [
        (Path(targets.sbin_dir) / "mount.s3mount", scripts / "mount.s3mount", "link"),
        (Path(targets.bin_dir) / "s3mount", scripts / "s3mount", "link"),
        (Path(targets.unit_dir) / UNIT, unit_file(), "copy"),
        *pages,
        (Path(targets.completion_dir) / "s3mount", bash_script(), "write"),
    ]


def install(targets: Targets = Targets()) -> list[str]:
    """Install every helper; return one line per action. Refuses to replace foreign files."""
    done = []
    for dest, src, how in plan(targets):
        _check_replaceable(dest, src, how)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: two installs at once (parallel test workers, two admins) must not
        # remove or rename each other's temporary file; the last rename wins, both succeed.
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.s3mount-tmp")
        try:
            if how == "link":
                tmp.symlink_to(src)
            elif how == "write":
                tmp.write_text(str(src))
                tmp.chmod(0o644)
            else:
                shutil.copyfile(src, tmp)
                tmp.chmod(0o644)
            os.replace(tmp, dest)
        except PermissionError:
            raise InstallError(f"cannot write {dest}: permission denied (run as root: "
                               f"sudo {sys.argv[0]} install-helpers)") from None
        finally:  # gone after the rename; after a failure, cleaning up must not hide why
            with contextlib.suppress(OSError):
                tmp.unlink()
        done.append({"link": f"{dest} -> {src}", "copy": f"{dest} (copied from {src})",
                     "write": f"{dest} (written)"}[how])
    return done


def unusable_by_others(path: Path) -> str | None:
    """Why a user other than root and the owner could not run ``path`` (a linked script) and the
    interpreter of its ``#!`` line, or None if every user can.

    Every directory on the way needs ``x`` for others and the files ``r`` and ``x``: a venv in a
    mode 0700 home fails on the home directory. Symlinks are followed as exec would.
    """
    targets = [path.resolve()]
    try:
        first = targets[0].read_bytes()[:256].split(b"\n", 1)[0]
    except OSError as exc:
        return f"cannot read {targets[0]}: {exc.strerror}"
    if first.startswith(b"#!") and first[2:].split():
        targets.append(Path(first[2:].split()[0].decode(errors="replace")).resolve())
    for target in targets:
        for directory in reversed(target.parents):
            mode = directory.stat().st_mode
            if not mode & 0o001:
                return f"{directory} (on the way to {target}) is mode {mode & 0o7777:04o}"
        mode = target.stat().st_mode
        if mode & 0o005 != 0o005:
            return f"{target} is mode {mode & 0o7777:04o}"
    return None


def uninstall(targets: Targets = Targets()) -> list[str]:
    """Remove what ``install`` created; leave anything that is not ours alone."""
    done = []
    for dest, src, how in plan(targets):
        if not os.path.lexists(dest):
            continue
        if not _is_ours(dest, src, how):
            done.append(f"{dest}: left alone (not installed by s3mount install-helpers)")
            continue
        dest.unlink()
        done.append(f"removed {dest}")
    return done


def _is_ours(dest: Path, src: Path | str, how: str) -> bool:
    if how == "link":
        return dest.is_symlink() and Path(os.readlink(dest)).name == Path(src).name
    return (dest.is_file() and not dest.is_symlink()
            and "s3mount" in dest.read_text(errors="replace")[:200])


def _check_replaceable(dest: Path, src: Path | str, how: str) -> None:
    """A link to another s3mount install is replaced; a real file someone put there is not."""
    if os.path.lexists(dest) and not _is_ours(dest, src, how):
        raise InstallError(f"{dest} exists and is not from s3mount; remove it first")
