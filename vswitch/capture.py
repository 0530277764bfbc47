"""Live capture sessions over the control socket (vswitchctl capture).

A capture belongs to the control connection that started it: the control
server calls `release(owner)` when that connection closes, so a vswitchctl
that is killed never leaves a capture running. One capture per port; one per
connection. Frames travel base64-encoded in the replies to "capture read".

Commands (args):
  capture start  {port, direction?: in|out|both, snaplen?, ring_bytes?}
  capture read   {}   -> {frames: [[ts_ns, dir, orig_len, b64], ...], captured, lost}
  capture stop   {}   -> same shape, the last frames, and the capture is gone

The datapath side (which slot, starting and stopping on the datapath's
control thread) is SwitchAPI's (vswitch/api.py); this module keeps who
captures what.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .api import MAX_SNAPLEN, CaptureGone, CommandError

if TYPE_CHECKING:
    from .api import CaptureTarget, SwitchAPI

log = logging.getLogger("vswitch.capture")

DEFAULT_SNAPLEN = MAX_SNAPLEN
DEFAULT_RING_BYTES = 4 << 20


@dataclass
class CaptureSession:
    target: "CaptureTarget"   # the port as it was when the capture started
    direction: str
    snaplen: int

    @property
    def port_name(self) -> str:
        return self.target.name


def _encode(frames: list) -> list:
    return [[ts, direction, orig_len, base64.b64encode(data).decode("ascii")]
            for ts, direction, orig_len, data in frames]


def _reply(result: dict) -> dict:
    return {"frames": _encode(result["frames"]), "captured": result["captured"], "lost": result["lost"]}


class CaptureManager:
    def __init__(self, api: "SwitchAPI") -> None:
        self.api = api
        self.by_owner: dict[object, CaptureSession] = {}

    def _alive(self, s: CaptureSession) -> bool:
        """False when the port went away or got a new slot (a reload removed
        or rebuilt it): the datapath freed the capture with the old slot."""
        return self.api.capture_alive(s.target)

    def running_on(self, port_name: str) -> CaptureSession | None:
        for s in self.by_owner.values():
            if s.port_name == port_name and self._alive(s):
                return s
        return None

    def _session(self, owner: object) -> CaptureSession:
        if owner is None:       # called outside a connection: nobody could stop it
            raise CommandError("capture needs a control connection")
        session = self.by_owner.get(owner)
        if session is None:
            raise CommandError("no capture running on this connection")
        if not self._alive(session):
            del self.by_owner[owner]
            raise CommandError(f"port {session.port_name!r} was removed or rebuilt: capture ended")
        return session

    def _ended(self, owner: object, session: CaptureSession, exc: CaptureGone) -> CommandError:
        # the port's slot went away under us (the daemon is stopping)
        self.by_owner.pop(owner, None)
        return CommandError(f"capture of port {session.port_name!r} ended: {exc}")

    def read(self, owner: object) -> dict:
        session = self._session(owner)
        try:
            return _reply(self.api.capture_drain(session.target))
        except CaptureGone as exc:
            raise self._ended(owner, session, exc) from exc

    async def stop(self, owner: object) -> dict:
        session = self._session(owner)
        del self.by_owner[owner]
        try:
            result = await self.api.capture_end(session.target)
        except CaptureGone as exc:
            raise self._ended(owner, session, exc) from exc
        log.info("capture of port %s stopped: %d captured, %d lost", session.port_name,
                 result["captured"], result["lost"])
        return _reply(result)

    async def start(self, owner: object, name: object, direction: object = None,
                    snaplen: object = None, ring_bytes: object = None) -> dict:
        if owner is None:
            raise CommandError("capture needs a control connection")
        target = self.api.capture_target(name)
        if owner in self.by_owner:
            old = self.by_owner[owner]
            if self._alive(old):
                raise CommandError(f"this connection already captures port {old.port_name!r}")
            del self.by_owner[owner]
        if self.running_on(target.name) is not None:
            raise CommandError(f"port {target.name!r} is already being captured by another vswitchctl")
        direction = "both" if direction is None else direction
        if direction not in ("in", "out", "both"):
            raise CommandError(f"direction must be in, out or both, not {direction!r}")
        try:
            snaplen = int(DEFAULT_SNAPLEN if snaplen is None else snaplen)  # type: ignore[call-overload]
            ring_bytes = int(DEFAULT_RING_BYTES if ring_bytes is None else ring_bytes)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise CommandError("snaplen and ring_bytes must be integers") from None
        if not 1 <= snaplen <= DEFAULT_SNAPLEN:
            raise CommandError(f"snaplen must be 1..{DEFAULT_SNAPLEN} bytes")
        await self.api.capture_begin(target, direction, snaplen, ring_bytes)
        self.by_owner[owner] = CaptureSession(target, direction, snaplen)
        log.info("capture of port %s started (direction %s, snaplen %d)", target.name, direction, snaplen)
        return {"port": target.name, "direction": direction, "snaplen": snaplen}

    async def release(self, owner: object) -> None:
        """The owner's connection closed: stop its capture, if any."""
        session = self.by_owner.pop(owner, None)
        if session is None or not self._alive(session):
            return
        try:
            result = await self.api.capture_end(session.target)
        except CaptureGone as exc:
            # usually the daemon stopping: the port (and its capture) went first
            log.debug("capture of port %s: %s", session.port_name, exc)
            return
        log.info("capture of port %s ended with its control connection: %d captured, %d lost",
                 session.port_name, result["captured"], result["lost"])
