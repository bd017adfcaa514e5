"""The systemd notify protocol: READY=1, RELOADING=1, STOPPING=1 datagrams.

Sent to ``$NOTIFY_SOCKET`` when set (``Type=notify`` units); a no-op otherwise.
"""

from __future__ import annotations

import os
import socket
import time

from mtaserver.log import get_logger, kv

log = get_logger("notify")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(addr)
                sock.sendall("\n".join(lines).encode())
        except OSError as exc:
            log.warning(kv(event="notify_failed", error=str(exc)))

    def ready(self) -> None:
        self.send("READY=1", "STATUS=accepting mail")

    def reloading(self) -> None:
        # Type=notify-reload wants MONOTONIC_USEC with RELOADING=1.
        self.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining")
