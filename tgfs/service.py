"""Telling systemd how the daemon is, by sd_notify(3)'s protocol: READY=1 once the mount
answers, STATUS= with jobs and the store, WATCHDOG=1 keep-alives, STOPPING=1.

The protocol is one datagram per message on the AF_UNIX socket named by $NOTIFY_SOCKET (a
leading "@" names Linux's abstract namespace), "KEY=value" lines. It is a few lines, so
no library: python-systemd needs libsystemd headers to build, and sdnotify (the small
pure-Python one) has not been released since 2019. Without $NOTIFY_SOCKET (not started by
systemd, or by a unit that is not Type=notify) every call does nothing.

Keep-alives are sent from the trio loop itself: a handler that never returns, or any other
hang of the loop, stops them, and systemd kills and restarts the service after WatchdogSec.
A datagram that cannot be sent ends the notifications (logged once), never the mount.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        # WatchdogSec= gives WATCHDOG_USEC; WATCHDOG_PID says which process it is for (a
        # child started by this one must not answer for it).
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_usec = int(usec) if usec.isdigit() and mine else 0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def keepalive_every(self) -> float | None:
        """Seconds between keep-alives (half of WatchdogSec, as sd_watchdog_enabled(3)
        advises); None if systemd expects none."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *fields: str) -> None:
        """One notification, e.g. send("READY=1", "STATUS=mounted")."""
        if not self.address:
            return
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message, self.address)
        except OSError as exc:
            # Whoever listened is gone (`tgfs SOURCE DIR` from fstab listens for READY=1
            # only): stop, and say so once.
            log.info("no more notifications to %s: %s", self.address.lstrip("\0"), exc)
            self.address = ""

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
