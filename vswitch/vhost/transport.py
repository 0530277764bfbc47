"""vhost-user sockets on asyncio: reading messages with their fds, both roles.

A message is read as its 12-byte header with recvmsg (the fds travel as
SCM_RIGHTS on the first byte of the front-end's sendmsg), then exactly
`size` payload bytes. Reading the header alone keeps fds attached to the
message they came with.

Once a message has begun it must be complete within a timeout (and the first
one of a connection within that time of the connect): a peer that sends half
a message, or nothing, would otherwise hold the port - it takes one
front-end at a time - and the fds it sent, for ever. Between complete
messages there is no limit: QEMU started with -S or -incoming is silent on
purpose, for as long as it likes.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket

from . import protocol as p
from ..safefiles import SocketFile, bind_unix_socket

_FD_SIZE = array.array("i").itemsize
# Room for more fds than anyone may send, so surplus fds are seen (and closed)
# rather than silently truncated (MSG_CTRUNC).
_CMSG_SPACE = socket.CMSG_SPACE(32 * _FD_SIZE)


class PeerClosed(Exception):
    """The other side closed the connection."""


class MessageTimeout(Exception):
    """A message did not arrive whole in time; the connection must close."""


class _MessageClock:
    """The deadline of the message being read: it starts with its first
    byte, or at once for the first message of a connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None, started: bool) -> None:
        self.loop = loop
        self.timeout = timeout
        self.deadline: float | None = None
        self.got = 0                       # bytes of the message so far
        if started:
            self.start()

    def start(self) -> None:
        if self.timeout is not None and self.deadline is None:
            self.deadline = self.loop.time() + self.timeout

    def remaining(self) -> float | None:
        """Seconds left, or None: no limit (the message has not begun)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.loop.time())


def _fds_from_ancdata(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - (len(data) % _FD_SIZE)
            fds.extend(array.array("i", data[:usable]))
    return fds


class Connection:
    """One accepted or connected vhost-user socket."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = loop

    async def _wait_readable(self, timeout: float | None) -> bool:
        """Wait until the socket is readable; False if timeout passed first."""
        fut = self.loop.create_future()
        fd = self.sock.fileno()
        self.loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            self.loop.remove_reader(fd)
        return True

    async def _recv_exact(self, n: int, want_fds: bool, clock: _MessageClock,
                          what: str) -> tuple[bytes, list[int]]:
        buf = bytearray()
        fds: list[int] = []
        try:
            while len(buf) < n:
                try:
                    if want_fds:
                        data, anc, flags, _ = self.sock.recvmsg(n - len(buf), _CMSG_SPACE)
                        fds.extend(_fds_from_ancdata(anc))
                        if flags & socket.MSG_CTRUNC:
                            raise p.ProtocolError("control data truncated (too many fds)")
                    else:
                        data = self.sock.recv(n - len(buf))
                except (BlockingIOError, InterruptedError):
                    if not await self._wait_readable(clock.remaining()):
                        got = (f"{len(buf)} of the {n} bytes of {what}" if clock.got
                               else "nothing")
                        raise MessageTimeout(f"{got} received in {clock.timeout:g} s") from None
                    continue
                except ConnectionResetError:
                    raise PeerClosed() from None
                if not data:
                    raise PeerClosed()
                buf += data
                clock.got += len(data)
                clock.start()
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return bytes(buf), fds

    async def read_message(self, timeout: float | None = None,
                           first: bool = False) -> tuple[p.Header, bytes, list[int]]:
        """Next message; raises PeerClosed, ProtocolError or MessageTimeout
        (fds closed). `timeout`: seconds the message may take from its first
        byte on (None: no limit); `first`: from now on, for the first
        message of a connection, which must come at once."""
        clock = _MessageClock(self.loop, timeout, started=first)
        raw, fds = await self._recv_exact(p.HEADER_SIZE, True, clock, "a header")
        try:
            header = p.decode_header(raw)
            if len(fds) > p.MAX_FDS:
                raise p.ProtocolError(f"{len(fds)} fds attached (at most {p.MAX_FDS})")
            payload = b""
            if header.size:
                payload, _ = await self._recv_exact(
                    header.size, False, clock, f"the payload of {p.request_name(header.request)}")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return header, payload, fds

    def send(self, data: bytes) -> None:
        # Replies are tiny; a full socket buffer means the peer stopped reading.
        try:
            sent = self.sock.send(data)
        except (BrokenPipeError, ConnectionResetError):
            raise PeerClosed() from None
        except BlockingIOError:
            sent = 0
        if sent != len(data):
            raise PeerClosed()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def bind_listener(path: str, mode: int, uid: int | None = None,
                  gid: int | None = None) -> tuple[socket.socket, SocketFile]:
    """Listen on path: a stale socket file left by a dead process is
    replaced, never a socket a live process listens on, nor a file that is
    not a socket (safefiles.bind_unix_socket). The file has its mode from
    bind(2) on, and its owner and group (None: ours) before listen(2), so
    no one can connect before the socket has its final permissions. The
    SocketFile is how to change them later, and remove the socket."""
    sock, file = bind_unix_socket(path, mode)
    try:
        if uid is not None or gid is not None:
            file.set_permissions(uid=uid, gid=gid)
        sock.listen(4)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        file.remove()     # ours: bound above, never listened on
        raise
    return sock, file
