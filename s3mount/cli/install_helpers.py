"""``s3mount install-helpers [--uninstall]``: link s3mount where mount(8) and systemd find it."""

from __future__ import annotations

import argparse

from ..install import Targets, install, uninstall


def register(sub: argparse._SubParsersAction) -> None:
    defaults = Targets()
    p = sub.add_parser(
        "install-helpers", help="make mount(8), fstab and systemd find s3mount (run as root)",
        description="Link mount.s3mount into /sbin and s3mount into /usr/local/bin, and copy the "
                    "s3mount@.service user unit to /etc/systemd/user, so that mount -t s3mount, "
                    "mount -t fuse.s3mount, fstab entries and systemctl --user work with an "
                    "s3mount installed in a virtualenv. Run as root.")
    p.add_argument("--uninstall", action="store_true", help="remove what install-helpers created")
    p.add_argument("--sbin-dir", default=defaults.sbin_dir, metavar="DIR",
                   help=f"where mount(8) looks for mount.s3mount (default {defaults.sbin_dir})")
    p.add_argument("--bin-dir", default=defaults.bin_dir, metavar="DIR",
                   help=f"a directory on root's and systemd's PATH (default {defaults.bin_dir})")
    p.add_argument("--unit-dir", default=defaults.unit_dir, metavar="DIR",
                   help=f"where to put the systemd user unit (default {defaults.unit_dir})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    targets = Targets(sbin_dir=args.sbin_dir, bin_dir=args.bin_dir, unit_dir=args.unit_dir)
    for line in (uninstall if args.uninstall else install)(targets):
        print(line)
    return 0
