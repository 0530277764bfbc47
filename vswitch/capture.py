"""Live capture sessions over the control socket (vswitchctl capture).

A capture belongs to the control connection that started it: the control
server calls `release(owner)` when that connection closes, so a vswitchctl
that is killed never leaves a capture running. One capture per port; one per
connection. Frames travel base64-encoded in the replies to "capture read".

Commands (args):
  capture start  {port, direction?: in|out|both, snaplen?, ring_bytes?}
  capture read   {}   -> {frames: [[ts_ns, dir, orig_len, b64], ...], captured, lost}
  capture stop   {}   -> same shape, the last frames, and the capture is gone
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .daemon import Switch

log = logging.getLogger("vswitch.capture")

DEFAULT_SNAPLEN = 262144
DEFAULT_RING_BYTES = 4 << 20


@dataclass
class CaptureSession:
    port_name: str
    port: Any              # the port object; a reload may replace or remove it
    slot: int              # its datapath slot when the capture started
    direction: str
    snaplen: int


def _encode(frames: list) -> list:
    return [[ts, direction, orig_len, base64.b64encode(data).decode("ascii")]
            for ts, direction, orig_len, data in frames]


class CaptureManager:
    def __init__(self, switch: "Switch") -> None:
        self.switch = switch
        self.by_owner: dict[object, CaptureSession] = {}

    def _alive(self, s: CaptureSession) -> bool:
        """False when the port went away or got a new slot (a reload removed
        or rebuilt it): the datapath freed the capture with the old slot."""
        return self.switch.ports.get(s.port_name) is s.port and s.port.slot == s.slot

    def running_on(self, port_name: str) -> CaptureSession | None:
        for s in self.by_owner.values():
            if s.port_name == port_name and self._alive(s):
                return s
        return None

    async def dispatch(self, command: str, args: dict, owner: object) -> dict:
        if owner is None:       # dispatch() called outside a connection: nobody could stop it
            return {"ok": False, "error": "capture needs a control connection"}
        if command == "capture start":
            return await self._start(args, owner)
        session = self.by_owner.get(owner)
        if session is None:
            return {"ok": False, "error": "no capture running on this connection"}
        if not self._alive(session):
            del self.by_owner[owner]
            return {"ok": False, "error": f"port {session.port_name!r} was removed or rebuilt: capture ended"}
        from ._datapath import DatapathError
        dp = self.switch.dp
        try:
            if command == "capture read":
                frames = dp.capture_drain(session.slot)
                info = dp.capture_info(session.slot)
                return {"ok": True, "result": {"frames": _encode(frames), "captured": info["captured"],
                                               "lost": info["lost"]}}
            if command == "capture stop":
                del self.by_owner[owner]
                result = await self.switch.ctl.call(dp.capture_stop, session.slot)
                log.info("capture of port %s stopped: %d captured, %d lost", session.port_name,
                         result["captured"], result["lost"])
                return {"ok": True, "result": {"frames": _encode(result["frames"]),
                                               "captured": result["captured"], "lost": result["lost"]}}
        except DatapathError as exc:
            # the port's slot went away under us (the daemon is stopping)
            self.by_owner.pop(owner, None)
            return {"ok": False, "error": f"capture of port {session.port_name!r} ended: {exc}"}
        return {"ok": False, "error": f"unknown command {command!r}"}

    async def _start(self, args: dict, owner: object) -> dict:
        name = args.get("port")
        port = self.switch.ports.get(name) if isinstance(name, str) else None
        if port is None:
            return {"ok": False, "error": f"no port named {name!r}"}
        if owner in self.by_owner:
            old = self.by_owner[owner]
            if self._alive(old):
                return {"ok": False, "error": f"this connection already captures port {old.port_name!r}"}
            del self.by_owner[owner]
        if self.running_on(name) is not None:
            return {"ok": False, "error": f"port {name!r} is already being captured by another vswitchctl"}
        direction = args.get("direction", "both")
        if direction not in ("in", "out", "both"):
            return {"ok": False, "error": f"direction must be in, out or both, not {direction!r}"}
        try:
            snaplen = int(args.get("snaplen", DEFAULT_SNAPLEN))
            ring_bytes = int(args.get("ring_bytes", DEFAULT_RING_BYTES))
        except (TypeError, ValueError):
            return {"ok": False, "error": "snaplen and ring_bytes must be integers"}
        if not 1 <= snaplen <= DEFAULT_SNAPLEN:
            return {"ok": False, "error": f"snaplen must be 1..{DEFAULT_SNAPLEN} bytes"}
        from ._datapath import DatapathError
        try:
            await self.switch.ctl.call(self.switch.dp.capture_start, port.slot, direction, snaplen,
                                       ring_bytes)
        except (DatapathError, OverflowError) as exc:
            return {"ok": False, "error": f"port {name!r}: {exc}"}
        self.by_owner[owner] = CaptureSession(name, port, port.slot, direction, snaplen)
        log.info("capture of port %s started (direction %s, snaplen %d)", name, direction, snaplen)
        return {"ok": True, "result": {"port": name, "direction": direction, "snaplen": snaplen}}

    async def release(self, owner: object) -> None:
        """The owner's connection closed: stop its capture, if any."""
        session = self.by_owner.pop(owner, None)
        if session is None or not self._alive(session):
            return
        from ._datapath import DatapathError
        try:
            result = await self.switch.ctl.call(self.switch.dp.capture_stop, session.slot)
        except DatapathError as exc:
            # usually the daemon stopping: the port (and its capture) went first
            log.debug("capture of port %s: %s", session.port_name, exc)
            return
        log.info("capture of port %s ended with its control connection: %d captured, %d lost",
                 session.port_name, result["captured"], result["lost"])
