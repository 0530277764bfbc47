"""The sd_notify protocol, spoken directly (no libsystemd).

systemd hands a Type=notify service the address of a datagram socket in
$NOTIFY_SOCKET; the service sends it newline-separated KEY=VALUE lines, one
message per datagram (sd_notify(3), "Notes" has the reference implementation
this follows). An address starting with "@" is in the abstract namespace.

    notifier = Notifier()            # reads and removes $NOTIFY_SOCKET etc.
    notifier.ready("2 ports, 1 worker")
    notifier.watchdog()              # every watchdog_interval() seconds
    notifier.reloading()             # RELOADING=1 + MONOTONIC_USEC
    notifier.ready()                 # reload finished
    notifier.stopping()

Outside systemd (no $NOTIFY_SOCKET) every method does nothing. A failed send
is logged once and never raised: the switch must not stop forwarding because
its supervisor went away.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping, MutableMapping

log = logging.getLogger("vswitch.sdnotify")

# The variables systemd sets for the notification protocol. They describe
# this process only: they are removed from the environment once read, so that
# nothing we might ever spawn (QEMU helpers, scripts) notifies in our name.
_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock MONOTONIC_USEC is read on."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment.
    return " ".join(str(text).splitlines())


class Notifier:
    """A client of $NOTIFY_SOCKET; a no-op when the variable is unset."""

    def __init__(self, environ: MutableMapping[str, str] | None = None,
                 unset_environment: bool = True) -> None:
        env: Mapping[str, str] = os.environ if environ is None else environ
        self.address: str | bytes | None = None
        self._watchdog_usec: int | None = None
        raw = env.get("NOTIFY_SOCKET") or None
        if raw is not None:
            if raw.startswith("@"):
                # Abstract namespace: the leading "@" stands for a NUL byte.
                self.address = "\0" + raw[1:]
            elif raw.startswith("/"):
                self.address = raw
            else:
                # vsock: addresses (systemd >= 254, for VMs) are not needed here.
                log.warning("NOTIFY_SOCKET=%r: unsupported address, notifications disabled", raw)
        self._watchdog_usec = self._parse_watchdog(env)
        if unset_environment:
            target = os.environ if environ is None else environ
            for key in _ENV_KEYS:
                target.pop(key, None)
        self._sock: socket.socket | None = None
        self._error_logged = False

    @staticmethod
    def _parse_watchdog(env: Mapping[str, str]) -> int | None:
        usec = env.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = env.get("WATCHDOG_PID")
        if pid:
            # Set by systemd so that a child that inherited the variable does
            # not think the watchdog is its own.
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            value = int(usec)
        except ValueError:
            log.warning("WATCHDOG_USEC=%r is not a number; watchdog disabled", usec)
            return None
        return value if value > 0 else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_usec(self) -> int | None:
        """The service's WatchdogSec= in microseconds, or None if not armed."""
        return self._watchdog_usec

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, as
        sd_watchdog_enabled(3) recommends; None when there is no watchdog."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    # --- messages -------------------------------------------------------------

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of KEY=VALUE lines; True if it was sent."""
        if self.address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._error_logged:
                self._error_logged = True
                log.warning("sd_notify to %r failed: %s (further failures not logged)",
                            self.address, exc.strerror or exc)
            else:
                log.debug("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets systemd tell this reload from an earlier one
        # (required by Type=notify-reload, harmless for Type=notify).
        lines = ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify("STOPPING=1")
        return self.notify("STOPPING=1", f"STATUS={_one_line(status)}")

    def errno(self, code: int, status: str | None = None) -> bool:
        """ERRNO= for a fatal start failure (shown by `systemctl status`)."""
        lines = [f"ERRNO={int(code)}"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
