"""``s3mount install-helpers [--uninstall]``: link s3mount where mount(8) and systemd find it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..install import Targets, install, uninstall, unusable_by_others


def register(sub: argparse._SubParsersAction) -> None:
    defaults = Targets()
    p = sub.add_parser(
        "install-helpers", help="make mount(8), fstab and systemd find s3mount (run as root)",
        description="Link mount.s3mount into /sbin and s3mount into /usr/local/bin, and copy the "
                    "s3mount@.service user unit to /etc/systemd/user, so that mount -t s3mount, "
                    "mount -t fuse.s3mount, fstab entries and systemctl --user work with an "
                    "s3mount installed in a virtualenv; copy the man pages where man finds them "
                    "and install the bash completion. Warns when other users could not run the "
                    "linked s3mount (a venv in a private home directory). Run as root.")
    p.add_argument("--uninstall", action="store_true", help="remove what install-helpers created")
    p.add_argument("--sbin-dir", default=defaults.sbin_dir, metavar="DIR",
                   help=f"where mount(8) looks for mount.s3mount (default {defaults.sbin_dir})")
    p.add_argument("--bin-dir", default=defaults.bin_dir, metavar="DIR",
                   help=f"a directory on root's and systemd's PATH (default {defaults.bin_dir})")
    p.add_argument("--unit-dir", default=defaults.unit_dir, metavar="DIR",
                   help=f"where to put the systemd user unit (default {defaults.unit_dir})")
    p.add_argument("--man-dir", default=defaults.man_dir, metavar="DIR",
                   help=f"man page tree for s3mount(1), s3mount.conf(5), mount.s3mount(8) "
                        f"(default {defaults.man_dir})")
    p.add_argument("--completion-dir", default=defaults.completion_dir, metavar="DIR",
                   help=f"where bash-completion looks (default {defaults.completion_dir})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    targets = Targets(sbin_dir=args.sbin_dir, bin_dir=args.bin_dir, unit_dir=args.unit_dir,
                      man_dir=args.man_dir, completion_dir=args.completion_dir)
    for line in (uninstall if args.uninstall else install)(targets):
        print(line)
    if not args.uninstall:
        link = Path(targets.bin_dir) / "s3mount"
        why = unusable_by_others(link)
        if why is not None:
            print(f"s3mount: warning: other users cannot run {link}: {why}; "
                  "for mounts by other users (fstab setuid=, user entries, systemctl --user) "
                  "install s3mount where all can read it (e.g. a venv in /opt) and run its "
                  "install-helpers", file=sys.stderr)
    return 0
