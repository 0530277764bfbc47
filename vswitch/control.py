"""The control socket: one JSON request per line, one JSON reply per line.

Request: {"command": "show" | "port list" | "port show" | "fdb show" | "version",
          "args": {...}}
Reply:   {"ok": true, "result": ...} or {"ok": false, "error": "..."}
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .daemon import Switch

log = logging.getLogger("vswitch.control")

MAX_REQUEST = 64 * 1024


class ControlServer:
    def __init__(self, switch: "Switch", path: str) -> None:
        self.switch = switch
        self.path = path
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        # We hold the runtime directory's lock, so any file here is stale.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_REQUEST)
        os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((json.dumps(self.dispatch(line)) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    def dispatch(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            command = request["command"]
            args = request.get("args") or {}
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request"}
        try:
            if command == "show":
                return {"ok": True, "result": self.switch.show()}
            if command == "port list":
                return {"ok": True, "result": [
                    {"name": p["name"], "type": p["type"], "state": p["state"], "socket": p["socket"]}
                    for p in self.switch.show()["ports"]]}
            if command == "port show":
                port = self.switch.ports.get(args.get("name"))
                if port is None:
                    return {"ok": False, "error": f"no port named {args.get('name')!r}"}
                return {"ok": True, "result": port.show()}
            if command == "fdb show":
                return {"ok": True, "result": self.switch.fdb()}
            if command == "version":
                return {"ok": True, "result": {"version": __version__}}
        except Exception as exc:  # never let a query take the daemon down
            log.exception("control command %r failed", command)
            return {"ok": False, "error": f"internal error: {exc}"}
        return {"ok": False, "error": f"unknown command {command!r}"}
