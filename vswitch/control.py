"""The control socket: one JSON request per line, one JSON reply per line.

Request: {"command": one of vswitch/api.py's COMMANDS that run in the daemon, "args": {...}}
Reply:   {"ok": true, "result": ...} or {"ok": false, "error": "...", "result"?: ...}

The socket is mode 0660 in the runtime directory, group `control.group` of
the config: who may reach it is decided by the file system, like a QEMU
monitor socket. `config check` needs no daemon and runs in vswitchctl itself.
The socket file is made and removed the way port sockets are
(vswitch/safefiles.py): a dead daemon's socket is replaced, never a file or
a socket someone else listens on, and only our own socket file is removed.

The debug commands (`debug vring`, `debug stall-worker`, `debug
seccomp-probe`) exist for the switch's own tests and answer only when the
configuration says `debug: true`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING

from .api import CommandError
from .safefiles import NotOurSocket, SocketFile, bind_unix_socket

if TYPE_CHECKING:
    from .api import SwitchAPI

log = logging.getLogger("vswitch.control")

MAX_REQUEST = 64 * 1024
SOCKET_MODE = 0o660


class ControlServer:
    def __init__(self, api: "SwitchAPI", path: str, group: int | None = None) -> None:
        self.api = api
        self.path = path
        self.group = group
        self.server: asyncio.AbstractServer | None = None
        self.file: SocketFile | None = None

    async def start(self) -> None:
        """Listen. We hold the runtime directory's lock, so a socket file
        here is a dead daemon's; anything else raises UnsafePath."""
        sock, self.file = bind_unix_socket(self.path, SOCKET_MODE)
        try:
            self.set_group(self.group)      # before listen(2): nobody gets in early
            self.server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_REQUEST)
        except BaseException:
            sock.close()
            self.file.remove()
            self.file = None
            raise

    def set_group(self, group: int | None) -> str | None:
        """Admin group of the socket (config control.group); mode 0660.
        Returns why it could not be set, if so (the daemon runs on)."""
        self.group = group
        if self.file is None:
            return None
        try:
            self.file.set_permissions(SOCKET_MODE, gid=group)
        except NotOurSocket as exc:
            log.error("control socket: %s", exc.strerror)
            return f"control socket: {exc.strerror}"
        except OSError as exc:
            # Root keeps access; the admins of the group do not. Say so, run on.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            log.error("control socket %s: cannot give it to group %s: %s (needs CAP_CHOWN, "
                      "unless the daemon's user is a member of the group)", self.path, group, reason)
            return f"control socket {self.path}: cannot give it to group {group}: {reason}"
        return None

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        if self.file is not None:
            now = self.file.remove()        # only if the path still names our socket
            self.file = None
            if now is not None:
                log.warning("control socket %s is no longer ours (it is now %s): left in place",
                            self.path, now)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        owner = object()     # this connection: owns the captures it starts
        try:
            while line := await reader.readline():
                writer.write((json.dumps(await self.dispatch(line, owner)) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            # The daemon stops with this connection open (a running capture):
            # end quietly; re-raising makes asyncio's stream callback log an error.
            pass
        finally:
            try:
                await self.api.release_captures(owner)
            except Exception:
                log.exception("stopping the capture of a closed control connection failed")
            writer.close()

    async def dispatch(self, line: bytes, owner: object = None) -> dict:
        try:
            request = json.loads(line)
            command = request["command"]
            args = request.get("args") or {}
            if not isinstance(command, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request"}
        try:
            return {"ok": True, "result": await self.api.run(command, args, owner)}
        except CommandError as exc:
            reply = {"ok": False, "error": str(exc)}
            if exc.result is not None:
                reply["result"] = exc.result
            return reply
        except Exception as exc:  # never let a query take the daemon down
            log.exception("control command %r failed", command)
            return {"ok": False, "error": f"internal error: {exc}"}
