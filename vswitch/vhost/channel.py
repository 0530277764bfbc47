"""The back-end channel: the socket a front-end hands over with SET_BACKEND_REQ_FD.

The switch uses it to ask for IOTLB entries it misses (BACKEND_IOTLB_MSG
with type MISS, vhost-user.rst "IOMMU support"); it never asks for a reply
(NEED_REPLY clear), so it never reads from it.

The front-end picks the fd and shares its open file description with us:
it may be no socket at all, and it may clear O_NONBLOCK at any time. So the
fd must be a unix stream socket (checked when it arrives), every send is
MSG_DONTWAIT (non-blocking whatever the file's flags say), and a message
that does not fit in the socket's buffer is dropped and counted: a
front-end that never reads its channel slows its own guest, never the
event loop that serves every port. A message is never half sent on a unix
stream socket with room for it; if the kernel ever took part of one, the
stream would be out of step, so the channel is then closed (`broken`).
"""

from __future__ import annotations

import os
import socket
import stat


class ChannelRefused(Exception):
    """The fd is not a unix stream socket."""


class BackendChannel:
    def __init__(self, fd: int) -> None:
        """Takes ownership of fd only when it returns; on ChannelRefused the
        fd is still the caller's."""
        mode = os.fstat(fd).st_mode
        if not stat.S_ISSOCK(mode):
            raise ChannelRefused("the back-end channel fd is not a socket")
        probe = socket.socket(fileno=os.dup(fd))
        try:
            family, kind = probe.family, probe.type
        finally:
            probe.close()
        if family != socket.AF_UNIX or kind != socket.SOCK_STREAM:
            raise ChannelRefused(f"the back-end channel is a {family.name}/{kind.name} socket, "
                                 "not a unix stream socket")
        # Python leaves the file's flags alone (no default timeout): every
        # send below passes MSG_DONTWAIT instead of trusting O_NONBLOCK.
        self.sock = socket.socket(fileno=fd)
        self.sent = 0
        self.dropped = 0            # the front-end's buffer was full
        self.broken: str | None = None

    def send(self, message: bytes) -> bool:
        """Send one whole message now or drop it; True if it went out."""
        if self.broken is not None:
            self.dropped += 1
            return False
        try:
            n = self.sock.send(message, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1
            return False
        except OSError as exc:
            self.broken = exc.strerror or str(exc)
            self.dropped += 1
            return False
        if n != len(message):
            self.broken = f"partial write of {n} of {len(message)} bytes"
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self.sock.close()

    def info(self) -> dict:
        return {"sent": self.sent, "dropped": self.dropped, "broken": self.broken}
