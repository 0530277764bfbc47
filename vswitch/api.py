"""The daemon's interface to its clients: the control socket, captures, metrics.

Two parts:

- COMMANDS, the one list of control commands. The control socket's dispatch
  (control.py), vswitchctl's parser and help (cli.py), and which commands
  answer only on a test system (`debug: true`) are all read from it. It is
  plain data, so vswitchctl imports this module without the datapath.
- SwitchAPI, the operations those commands run, over a running Switch
  (daemon.py), returning plain dicts. Everything that knows the datapath's
  slots, the Switch's port objects or the Datapath itself is here: the
  control server, the capture sessions and the metrics collector go through
  SwitchAPI only (tests/unit/test_api.py keeps it so).

Changes to the datapath (capture start and stop, FDB flush, the stall hook)
run on the datapath's control thread (vswitch/dpcontrol.py); reads stay on
the event loop.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from . import __version__

if TYPE_CHECKING:
    from .capture import CaptureManager
    from .daemon import Switch

log = logging.getLogger("vswitch.api")


# --- the command table ---------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """Bounds of a number argument; `above` excludes the low bound (seconds > 0)."""
    low: float | None = None
    high: float | None = None
    above: bool = False

    def problem(self, value: float) -> str | None:
        """Why value is out of range (to follow the argument's name), or None."""
        if self.above and self.low is not None and not value > self.low:
            return f"must be above {self.low:g} (got {value!r})"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            if self.low is not None and self.high is not None:
                return f"must be {self.low:g}..{self.high:g} (got {value!r})"
            if self.low is not None:
                return f"must be at least {self.low:g} (got {value!r})"
            return f"must be at most {self.high:g} (got {value!r})"
        return None


@dataclass(frozen=True)
class Arg:
    """One argument of a command: a key of the request's "args", and how
    vswitchctl takes it (a positional word, or an option `--name VALUE`; a
    bool is a flag without value)."""
    name: str
    help: str
    type: type = str
    positional: bool = False
    required: bool = False          # options only: positionals are required unless they have a default
    default: Any = None
    choices: tuple[str, ...] = ()
    range: Range | None = None
    flag: str | None = None         # vswitchctl's spelling when not --name
    metavar: str | None = None
    aliases: tuple[str, ...] = ()   # other keys the control socket accepts for it

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def word(self) -> str:
        """What stands for the value in usage lines."""
        if self.metavar:
            return self.metavar
        if self.choices:
            return "|".join(self.choices)
        return self.name.upper() if self.positional else self.name[0].upper()

    @property
    def display(self) -> str:
        """How usage lines show it."""
        if self.positional:
            return f"[{self.word}]" if self.default is not None else self.word
        if self.type is bool:
            return f"[{self.option}]"
        word = self.word
        return f"{self.option} {word}" if self.required else f"[{self.option} {word}]"


@dataclass(frozen=True)
class Command:
    """A control command. `runs_in` "daemon": sent over the control socket
    and answered by the SwitchAPI method of the same name (spaces and dashes
    as underscores); "vswitchctl": done by vswitchctl itself, which the
    daemon does not know. `cli` False: part of a protocol between vswitchctl
    and the daemon (capture start/read/stop), not typed by anyone.
    `connection`: the method gets the control connection (`owner`) that
    sent it. `debug`: answered only when the configuration says
    `debug: true` (test systems), and left out of vswitchctl's main help."""
    name: str
    help: str
    args: tuple[Arg, ...] = ()
    runs_in: Literal["daemon", "vswitchctl"] = "daemon"
    cli: bool = True
    debug: bool = False
    connection: bool = False
    timeout: float = 10.0           # vswitchctl's wait for the reply
    # vswitchctl's global options that mean something to this command; any
    # other one given is a usage error, not silently ignored
    global_options: tuple[str, ...] = ("runtime_dir", "config", "json")

    @property
    def method(self) -> str:
        return self.name.replace(" ", "_").replace("-", "_")

    @property
    def synopsis(self) -> str:
        return " ".join([self.name, *(a.display for a in self.args)])


_FDB_FILTER = (
    Arg("port", "only the entries of this port", metavar="P"),
    # 0: ports without VLAN settings; 4095 is reserved (802.1Q) and never learned
    Arg("vlan", "only the entries of this VLAN (0: of ports without VLAN settings)", type=int,
        range=Range(0, 4094), metavar="V"),
)
MAX_SNAPLEN = 262144

COMMANDS: tuple[Command, ...] = (
    Command("show", "the daemon, its workers and every port"),
    Command("port list", "one line per port"),
    Command("port show", "one port: state, negotiated features, queues, counters, pending changes",
            args=(Arg("name", "the port's name", positional=True),)),
    Command("fdb show", "the MAC table (VLAN, MAC, port, static or learned, age)", args=_FDB_FILTER),
    Command("fdb flush", "forget learned MACs (all, of a port, of a VLAN); static ones stay",
            args=_FDB_FILTER),
    Command("stats", "totals per port and direction, drops by reason, workers"),
    Command("config check", "validate a configuration file (no daemon needed)", runs_in="vswitchctl",
            args=(Arg("file", "the configuration file (default: the file of -c)", positional=True,
                      default=""),),
            global_options=("config", "json")),
    Command("reload", "re-read the daemon's file and apply the difference",
            args=(Arg("force", "restart ports whose guest-negotiated settings changed now (else "
                      "those changes wait until the guest reconnects)", type=bool),),
            timeout=120.0),   # a reload waits for ports to close and open
    Command("version", "daemon and vswitchctl versions"),
    Command("capture", "live capture into a pcap file (-w -: stdout), until --count N frames, "
            "--duration S seconds or Ctrl-C", runs_in="vswitchctl",
            args=(Arg("port", "the port to capture", positional=True),
                  Arg("write", "pcap file to write, - for stdout", flag="-w", required=True,
                      metavar="FILE"),
                  Arg("direction", "frames from the port (in), to it (out), or both", default="both",
                      choices=("in", "out", "both")),
                  Arg("count", "stop after N frames", type=int, range=Range(1), metavar="N"),
                  Arg("duration", "stop after S seconds", type=float, range=Range(0, above=True),
                      metavar="S"),
                  Arg("snaplen", "bytes kept per frame", type=int, default=MAX_SNAPLEN,
                      range=Range(1, MAX_SNAPLEN), metavar="B")),
            global_options=("runtime_dir", "config")),   # its output is the pcap file
    # The protocol of `vswitchctl capture` (vswitch/capture.py).
    Command("capture start", "start capturing a port on this connection", cli=False, connection=True,
            args=(Arg("port", "the port"), Arg("direction", "in, out or both"),
                  Arg("snaplen", "bytes kept per frame", type=int),
                  Arg("ring_bytes", "size of the capture ring", type=int))),
    Command("capture read", "the frames captured since the last read", cli=False, connection=True),
    Command("capture stop", "the last frames, and the capture ends", cli=False, connection=True),
    # For tests of the switch itself.
    Command("debug vring", "the datapath's view of one virtqueue", debug=True,
            args=(Arg("port", "the port's name", positional=True, aliases=("name",)),
                  Arg("index", "the virtqueue (2q: RX of pair q, 2q+1: its TX)", type=int,
                      positional=True, default=0))),
    Command("debug stall-worker", "make a worker stop making progress (for the watchdog's tests)",
            debug=True,
            args=(Arg("worker", "the worker", type=int, positional=True),
                  Arg("seconds", "how long it sleeps at the end of its round", type=float,
                      positional=True))),
    Command("debug seccomp-probe", "try system calls the seccomp filter denies (for its tests)",
            debug=True),
)

BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}


class CommandError(Exception):
    """A command that failed: `message` for the reply's "error", and the
    reply's "result" when there is one to give (a refused reload's errors)."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


def debug_refusal(command: str) -> str:
    return (f"{command} is for test systems: it answers only with `debug: true` in the "
            "configuration")


# --- the operations ------------------------------------------------------------------

@dataclass(frozen=True)
class CaptureTarget:
    """A port as it was when its capture started. A reload may remove the
    port or rebuild it with a new slot; the datapath freed the capture with
    the old slot then."""
    name: str
    port: Any
    slot: int


class SwitchAPI:
    """The running switch, as its clients see it."""

    def __init__(self, switch: "Switch") -> None:
        from . import capture      # it imports this module
        self.switch = switch
        self.captures: CaptureManager = capture.CaptureManager(self)

    # --- dispatch ------------------------------------------------------------------

    async def run(self, name: str, args: dict, owner: object = None) -> Any:
        """Answer one control request: the command's method with the args it
        declares (other keys are ignored). CommandError: unknown command,
        debug command on a production switch, or the command failed."""
        command = BY_NAME.get(name)
        if command is None or command.runs_in != "daemon":
            raise CommandError(f"unknown command {name!r}")
        if command.debug and not self.switch.config.debug:
            raise CommandError(debug_refusal(name))
        kwargs: dict[str, Any] = {}
        for arg in command.args:
            for key in (arg.name, *arg.aliases):
                if args.get(key) is not None:
                    kwargs[arg.name] = args[key]
                    break
        if command.connection:
            kwargs["owner"] = owner
        method: Callable[..., Any] = getattr(self, command.method)
        result = method(**kwargs)
        return await result if inspect.isawaitable(result) else result

    # --- queries -------------------------------------------------------------------

    def show(self) -> dict:
        return self.switch.show()

    def port_list(self) -> list[dict]:
        return [{"name": p["name"], "type": p["type"], "state": p["state"],
                 "socket": p["socket"] or p.get("ifname"), "pending": bool(p.get("pending"))}
                for p in self.switch.show()["ports"]]

    def _port(self, name: object) -> Any:
        port = self.switch.ports.get(name) if isinstance(name, str) else None
        if port is None:
            raise CommandError(f"no port named {name!r}")
        return port

    def port_show(self, name: object = None) -> dict:
        port = self._port(name)
        return {**port.show(), "fdb": self.switch.dp.port_fdb_info(port.slot)}

    def stats(self) -> dict:
        return self.switch.stats()

    def version(self) -> dict:
        from . import _datapath   # which CPU the datapath was compiled for (setup.py, VSWITCH_MARCH)
        return {"version": __version__, "build": getattr(_datapath, "BUILD_TARGET", "unknown")}

    def _fdb_filter(self, port: object, vlan: object) -> tuple[str | None, int | None]:
        if port is not None:
            self._port(port)
        if vlan is not None and (not isinstance(vlan, int) or isinstance(vlan, bool)
                                 or not 0 <= vlan <= 4094):
            raise CommandError(f"VLAN must be 0..4094 (got {vlan!r})")
        return port, vlan      # type: ignore[return-value]

    def fdb_show(self, port: object = None, vlan: object = None) -> list[dict]:
        return self.switch.fdb(*self._fdb_filter(port, vlan))

    async def fdb_flush(self, port: object = None, vlan: object = None) -> dict:
        return {"forgotten": await self.switch.fdb_flush(*self._fdb_filter(port, vlan))}

    async def reload(self, force: object = False) -> dict:
        result = await self.switch.reload(force=bool(force))
        if not result["ok"]:
            raise CommandError("configuration not applied:\n" + "\n".join(result["errors"]), result)
        return result

    # --- captures (the sessions are in vswitch/capture.py) -------------------------

    async def capture_start(self, owner: object, port: object = None, direction: object = None,
                            snaplen: object = None, ring_bytes: object = None) -> dict:
        return await self.captures.start(owner, port, direction, snaplen, ring_bytes)

    def capture_read(self, owner: object) -> dict:
        return self.captures.read(owner)

    async def capture_stop(self, owner: object) -> dict:
        return await self.captures.stop(owner)

    async def release_captures(self, owner: object) -> None:
        """A control connection closed: its capture ends with it."""
        await self.captures.release(owner)

    def capture_target(self, name: object) -> CaptureTarget:
        port = self._port(name)
        return CaptureTarget(port.name, port, port.slot)

    def capture_alive(self, target: CaptureTarget) -> bool:
        port = self.switch.ports.get(target.name)
        return port is target.port and port.slot == target.slot

    async def capture_begin(self, target: CaptureTarget, direction: str, snaplen: int,
                            ring_bytes: int) -> None:
        from ._datapath import DatapathError
        sw = self.switch
        try:
            await sw.ctl.call(sw.dp.capture_start, target.slot, direction, snaplen, ring_bytes)
        except (DatapathError, OverflowError) as exc:
            raise CommandError(f"port {target.name!r}: {exc}") from exc

    def capture_drain(self, target: CaptureTarget) -> dict:
        """{frames: [(ts_ns, direction, orig_len, bytes)], captured, lost}.
        CaptureGone: the port's slot went away (the daemon is stopping)."""
        from ._datapath import DatapathError
        dp = self.switch.dp
        try:
            frames = dp.capture_drain(target.slot)
            info = dp.capture_info(target.slot)
        except DatapathError as exc:
            raise CaptureGone(str(exc)) from exc
        return {"frames": frames, "captured": info["captured"], "lost": info["lost"]}

    async def capture_end(self, target: CaptureTarget) -> dict:
        """Stop it: the last frames and the counts, as capture_drain."""
        from ._datapath import DatapathError
        sw = self.switch
        try:
            return await sw.ctl.call(sw.dp.capture_stop, target.slot)
        except DatapathError as exc:
            raise CaptureGone(str(exc)) from exc

    # --- for tests of the switch (debug: true) -------------------------------------

    def debug_vring(self, port: object = None, index: object = 0) -> dict:
        found = self.switch.ports.get(port) if isinstance(port, str) else None
        if found is None:
            raise CommandError("no such port")
        return self.switch.dp.vring_info(found.slot, int(index))  # type: ignore[arg-type]

    async def debug_stall_worker(self, worker: object = 0, seconds: object = 5) -> dict:
        sw = self.switch
        await sw.ctl.call(sw.dp.debug_stall_worker, int(worker), float(seconds))  # type: ignore[arg-type]
        return {}

    def debug_seccomp_probe(self) -> dict:
        from . import seccomp
        # Denied calls chosen to be harmless without the filter too.
        return {"calls": seccomp.probe(self.switch.config.runtime_dir), **seccomp.status()}

    # --- metrics -------------------------------------------------------------------

    def scrape(self) -> "Scrape":
        """What a metrics scrape reports, read now, by port name."""
        sw = self.switch
        snap = Scrape()
        slot_names: dict[int, str] = {}
        for name, port in list(sw.ports.items()):
            try:
                show = port.show()
            except Exception:   # a port being torn down by a reload: left out of this scrape
                log.debug("port %s not readable", name, exc_info=True)
                continue
            name = str(show.get("name", name))
            slot = getattr(port, "slot", None)
            if slot is not None:
                slot_names[slot] = name
            snap.port_info.append((name, show))
        snap.fdb_entries = {name: 0 for name in slot_names.values()}
        for entry in sw.dp.fdb_entries():
            owner = slot_names.get(entry["port"], f"#{entry['port']}")
            snap.fdb_entries[owner] = snap.fdb_entries.get(owner, 0) + 1
        stats = sw.dp.fdb_stats()
        snap.fdb_aged = stats.get("aged", 0)
        # a slot no port owns any more has no name to report its counters under
        snap.fdb_ports = {slot_names[slot]: info for slot, info in sorted((stats.get("ports") or {}).items())
                          if slot in slot_names}
        snap.workers = sw.dp.worker_stats()
        # a switch that made no reload yet (or a test's stand-in) has the defaults
        snap.reload_counts.update(getattr(sw, "reload_counts", None) or {})
        snap.last_reload_ok = bool(getattr(sw, "last_reload_ok", True))
        snap.last_reload_time = getattr(sw, "last_reload_time", None) or getattr(sw, "started_time", None)
        return snap


@dataclass
class Scrape:
    """The switch as a metrics scrape sees it. port_info: (name, port.show())
    of every port that could be read; fdb_entries: MAC table entries by the
    port they point to (0 for a port without any, `#slot` for a slot no port
    owns any more); fdb_ports: per-port FDB counters {learned, max,
    limit_refused}; workers: the datapath's worker_stats()."""
    port_info: list[tuple[str, dict]] = field(default_factory=list)
    fdb_entries: dict[str, int] = field(default_factory=dict)
    fdb_aged: int = 0
    fdb_ports: dict[str, dict] = field(default_factory=dict)
    workers: list[dict] = field(default_factory=list)
    reload_counts: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    last_reload_ok: bool = True
    last_reload_time: float | None = None


class CaptureGone(Exception):
    """The captured port's slot is gone from the datapath."""
