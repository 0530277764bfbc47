"""vhost-user sockets on asyncio: reading messages with their fds, both roles.

A message is read as its 12-byte header with recvmsg (the fds travel as
SCM_RIGHTS on the first byte of the front-end's sendmsg), then exactly
`size` payload bytes. Reading the header alone keeps fds attached to the
message they came with.
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

    async def _wait_readable(self) -> None:
        fut = self.loop.create_future()
        fd = self.sock.fileno()
        self.loop.add_reader(fd, fut.set_result, None)
        try:
            await fut
        finally:
            self.loop.remove_reader(fd)

    async def _recv_exact(self, n: int, want_fds: bool) -> tuple[bytes, list[int]]:
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
                    await self._wait_readable()
                    continue
                except ConnectionResetError:
                    raise PeerClosed() from None
                if not data:
                    raise PeerClosed()
                buf += data
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return bytes(buf), fds

    async def read_message(self) -> tuple[p.Header, bytes, list[int]]:
        """Next message; raises PeerClosed or ProtocolError (fds closed)."""
        raw, fds = await self._recv_exact(p.HEADER_SIZE, want_fds=True)
        try:
            header = p.decode_header(raw)
            if len(fds) > p.MAX_FDS:
                raise p.ProtocolError(f"{len(fds)} fds attached (at most {p.MAX_FDS})")
            payload = b""
            if header.size:
                payload, more = await self._recv_exact(header.size, want_fds=False)
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
