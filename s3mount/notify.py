"""The systemd notify protocol (sd_notify), so a ``Type=notify`` unit knows when the mount is live.

The protocol is one datagram of newline-separated ``KEY=value`` lines sent to the AF_UNIX socket
named in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace); a dozen lines here
beat a dependency on libsystemd. Outside systemd the variable is unset and ``notify`` does nothing.
A notification that cannot be delivered is logged, never raised: telling systemd is a courtesy
that must not take the mount down.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=..."``) in one datagram; True if sent."""
    for line in lines:
        if "\n" in line or "=" not in line:
            raise ValueError(f"not a notify line: {line!r}")
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]  # abstract namespace
    elif address.startswith("/"):
        target = address
    else:
        log.warning("NOTIFY_SOCKET %r is not a unix socket address; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.warning("cannot notify systemd via %s: %s", address, exc)
        return False
    return True
