"""The control socket: one JSON request per line, one JSON reply per line.

Request: {"command": "show" | "port list" | "port show" | "fdb show" | "fdb flush" | "stats"
          | "reload" | "version" | "debug stall-worker" | "debug seccomp-probe"
          | "capture start" | "capture read" | "capture stop" (capture.py), "args": {...}}
Reply:   {"ok": true, "result": ...} or {"ok": false, "error": "...", "result"?: ...}

The socket is mode 0660 in the runtime directory, group `control.group` of
the config: who may reach it is decided by the file system, like a QEMU
monitor socket. `config check` needs no daemon and runs in vswitchctl itself.
The socket file is made and removed the way port sockets are
(vswitch/safefiles.py): a dead daemon's socket is replaced, never a file or
a socket someone else listens on, and only our own socket file is removed.

`debug seccomp-probe` exists for the tests of the seccomp filter and answers
only when the configuration says `debug: true`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING

from . import __version__
from . import seccomp
from .capture import CaptureManager
from .safefiles import NotOurSocket, SocketFile, bind_unix_socket

if TYPE_CHECKING:
    from .daemon import Switch

log = logging.getLogger("vswitch.control")

MAX_REQUEST = 64 * 1024
SOCKET_MODE = 0o660


class ControlServer:
    def __init__(self, switch: "Switch", path: str, group: int | None = None) -> None:
        self.switch = switch
        self.path = path
        self.group = group
        self.server: asyncio.AbstractServer | None = None
        self.file: SocketFile | None = None
        self.captures = CaptureManager(switch)

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
                await self.captures.release(owner)
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
        sw = self.switch
        try:
            if command == "show":
                return {"ok": True, "result": sw.show()}
            if command == "port list":
                return {"ok": True, "result": [
                    {"name": p["name"], "type": p["type"], "state": p["state"],
                     "socket": p["socket"] or p.get("ifname"), "pending": bool(p.get("pending"))}
                    for p in sw.show()["ports"]]}
            if command == "port show":
                port = sw.ports.get(args.get("name"))
                if port is None:
                    return {"ok": False, "error": f"no port named {args.get('name')!r}"}
                return {"ok": True, "result": {**port.show(), "fdb": sw.dp.port_fdb_info(port.slot)}}
            if command in ("fdb show", "fdb flush"):
                return await self._fdb(command, args)
            if command == "stats":
                return {"ok": True, "result": sw.stats()}
            if command == "reload":
                result = await sw.reload(force=bool(args.get("force")))
                if not result["ok"]:
                    return {"ok": False, "error": "configuration not applied:\n"
                            + "\n".join(result["errors"]), "result": result}
                return {"ok": True, "result": result}
            if command == "version":
                return {"ok": True, "result": {"version": __version__}}
            if command.startswith("capture "):
                return await self.captures.dispatch(command, args, owner)
            if command == "debug vring":
                port = sw.ports.get(args.get("name") or args.get("port"))
                if port is None:
                    return {"ok": False, "error": "no such port"}
                return {"ok": True, "result": sw.dp.vring_info(port.slot, int(args.get("index", 0)))}
            if command == "debug stall-worker":
                # For the watchdog tests: make a worker stop making progress.
                sw.dp.debug_stall_worker(int(args.get("worker", 0)), float(args.get("seconds", 5)))
                return {"ok": True, "result": {}}
            if command == "debug seccomp-probe":
                if not sw.config.debug:
                    return {"ok": False, "error": "debug seccomp-probe is for test systems: it "
                            "answers only with `debug: true` in the configuration"}
                # Denied calls chosen to be harmless without the filter too.
                return {"ok": True, "result": {"calls": seccomp.probe(sw.config.runtime_dir),
                                               **seccomp.status()}}
        except Exception as exc:  # never let a query take the daemon down
            log.exception("control command %r failed", command)
            return {"ok": False, "error": f"internal error: {exc}"}
        return {"ok": False, "error": f"unknown command {command!r}"}

    async def _fdb(self, command: str, args: dict) -> dict:
        """fdb show / fdb flush, args {"port": name, "vlan": 0..4095}, both optional."""
        port, vlan = args.get("port"), args.get("vlan")
        if port is not None and (not isinstance(port, str) or port not in self.switch.ports):
            return {"ok": False, "error": f"no port named {port!r}"}
        if vlan is not None and (not isinstance(vlan, int) or isinstance(vlan, bool)
                                 or not 0 <= vlan <= 4095):
            return {"ok": False, "error": f"VLAN must be 0..4095 (got {vlan!r})"}
        if command == "fdb show":
            return {"ok": True, "result": self.switch.fdb(port, vlan)}
        return {"ok": True, "result": {"forgotten": await self.switch.fdb_flush(port, vlan)}}
