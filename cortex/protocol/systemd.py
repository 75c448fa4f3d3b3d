"""The service manager's notification protocol (``sd_notify(3)``), spoken by both daemons.

Under a ``Type=notify`` unit systemd hands the service a datagram socket in ``$NOTIFY_SOCKET``;
the service writes newline-separated ``KEY=VALUE`` assignments to it: ``READY=1`` once it serves
(so units ordered after it start only then, and ``systemctl start`` returns only then),
``RELOADING=1`` / ``READY=1`` around a reload, ``STOPPING=1`` when it begins to shut down,
``STATUS=…`` for the line ``systemctl status`` shows, and ``WATCHDOG=1`` keep-alives when the unit
sets ``WatchdogSec=`` (``$WATCHDOG_USEC``). Outside systemd (no ``$NOTIFY_SOCKET``) every call is a
no-op. No libsystemd: the protocol is one ``sendto`` on a Unix socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """The notifications of one service process. ``env`` defaults to the process environment,
    read once."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace (a leading NUL byte)
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # a watchdog meant for another process (WATCHDOG_PID names it) is not ours to feed
        mine = not pid or pid == str(os.getpid())
        self.watchdog_secs = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        """Sends ``KEY=VALUE`` assignments (keys upper-cased); whether it was delivered. A lost
        notification is logged once and never raises: serving matters more than telling."""
        if not self.address:
            return False
        text = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(text.encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager at %s: %s", self.address.lstrip("\0"), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status)

    def status(self, status: str) -> bool:
        return self.send(status=status)

    def reloading(self, status: str) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload units match the reload to its signal
        return self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000, status=status)

    def stopping(self, status: str) -> bool:
        return self.send(stopping=1, status=status)

    async def keep_alive(self) -> None:
        """Feeds the watchdog from the event loop until cancelled: a loop that stops turning for
        ``WatchdogSec`` gets the service restarted. Returns at once without a watchdog."""
        if self.watchdog_secs is None:
            return
        while True:
            self.send(watchdog=1)
            await asyncio.sleep(self.watchdog_secs / 3)
