"""vswitchd: runs the switch in the foreground.

    vswitchd --config /etc/vswitch/vswitch.yaml

Logs to stderr; SIGINT/SIGTERM stop it cleanly (ports closed, sockets removed,
workers joined); SIGHUP (or `vswitchctl reload`) re-reads the file and applies
the difference (vswitch/reconcile.py). A second daemon on the same runtime
directory refuses to start instead of stealing the first one's sockets (a
lock file is held). Under systemd (Type=notify) it reports READY/RELOADING/
STOPPING and pings the watchdog only while every worker makes progress.

Before it starts a thread or serves anything, it raises its soft
RLIMIT_NOFILE to what the configuration may need (vswitch/limits.py) and
confines itself with a seccomp filter (vswitch/seccomp.py, security.seccomp).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
import time

from . import __version__
from . import cpus
from . import privileges
from . import reconcile
from . import seccomp
from .api import SwitchAPI
from .cli import EXIT_NOT_CONFIGURED
from .config import Config, ConfigError, load_config
from .control import ControlServer
from .dpcontrol import DatapathControl
from .fdb import TICK_S as FDB_TICK_S, FdbControl, entries_by_name
from .limits import NofileCheck, ensure_nofile
from .metrics import MetricsServer
from .policy import apply_mirrors
from .ports import ChangeResult, Port, PortEnv, RateLimitedLog, create_port
from .safefiles import UnsafePath, check_directory, open_lock_file
from .sdnotify import Notifier
from .watchdog import WorkerWatchdog

log = logging.getLogger("vswitch")

HEALTH_PERIOD_S = 1.0
LOCK_NAME = "vswitchd.lock"
CONTROL_NAME = "vswitchd.ctl"


class AlreadyRunning(Exception):
    pass


def take_runtime_lock(runtime_dir: str) -> int:
    """Create the runtime directory and hold its lock for the daemon's life.
    UnsafePath if others could write into the directory, or the lock file
    is not ours (a symbolic or hard link to another file)."""
    check_directory(runtime_dir)
    os.makedirs(runtime_dir, mode=0o755, exist_ok=True)
    path = os.path.join(runtime_dir, LOCK_NAME)
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another vswitchd holds {path}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def check_nofile(config: Config) -> NofileCheck:
    """RLIMIT_NOFILE against the configuration's worst case, raised if it can be."""
    check = ensure_nofile(config)
    if check.raised:
        log.info("RLIMIT_NOFILE: soft limit raised from %d to %d (the configuration may hold up "
                 "to %d file descriptors)", check.soft_before, check.soft, check.needed)
    if check.warning:
        log.warning("%s", check.warning)
    return check


def confine(config: Config) -> str:
    """Install the seccomp filter unless security.seccomp is off; returns its
    state for `show`. Raises seccomp.SeccompError if it was asked for and the
    kernel refuses it. Called while the daemon has one thread."""
    if not config.security.seccomp:
        log.warning("seccomp: no filter (security.seccomp is false)")
        return "off"
    reason = seccomp.unsupported_reason()
    if reason is not None:
        # A filter with another architecture's numbers would deny the wrong calls.
        log.warning("seccomp: no filter: %s", reason)
        return f"unsupported: {reason}"
    how = seccomp.install()
    log.info("seccomp: filter installed by %s: %d system calls that a switch never makes "
             "fail with EPERM, in every thread", how, len(seccomp.DENIED))
    return "on"


class Switch:
    """The running switch: datapath, ports, control socket, metrics."""

    def __init__(self, config: Config, notifier: Notifier | None = None,
                 seccomp_state: str = "off", nofile: NofileCheck | None = None) -> None:
        from ._datapath import Datapath  # the extension: imported once we run

        self.config = config
        self.notifier = notifier or Notifier()
        self.seccomp_state = seccomp_state
        self.nofile = nofile
        # Once: the user and capabilities do not change, and a name lookup (NSS)
        # may be slow - not something for every `show` on the event loop.
        self.privileges = privileges.describe()
        self.dp = Datapath(config.datapath.workers, config.datapath.mode, config.datapath.cpus,
                           config.datapath.tap_io)
        self.dp.set_memory_limits(config.limits.guest_memory_per_port, config.limits.guest_memory_total)
        if config.debug:  # the control commands meant for tests (debug stall-worker) answer
            self.dp.enable_test_hooks()
        # From here every change to the datapath runs on its control thread:
        # the event loop never waits for the workers (vswitch/dpcontrol.py).
        self.ctl = DatapathControl()
        self.dp.bind_control_thread(self.ctl.ident)
        self._reap_posted = False
        fallback = sorted({w["tap_io"] for w in self.dp.worker_stats()} - {config.datapath.tap_io})
        if fallback:  # io_uring asked for, not available: said once, not once per worker
            log.warning("workers write into TAP queues one frame per syscall: %s", ", ".join(fallback))
        notify_io = sorted({w["notify_io"] for w in self.dp.worker_stats()} - {"io_uring"})
        if notify_io:
            log.warning("workers notify guests with write(2) (%s): a front-end that blocks its "
                        "call eventfd can stall a worker and every port it serves "
                        "(docs/security.md)", ", ".join(notify_io))
        if not all(w["io_uring_restricted"] for w in self.dp.worker_stats()):
            log.warning("the kernel does not restrict the workers' io_uring rings to writes "
                        "(IORING_REGISTER_RESTRICTIONS, Linux 5.10): their requests bypass the "
                        "seccomp filter (docs/service.md)")
        self.ports: dict[str, Port] = {}
        self.control_cpus: str | None = None    # where the control plane's threads run (cpulist)
        self.fdb_ctl = FdbControl(self.dp)
        self.ratelog = RateLimitedLog()
        self.env = PortEnv(self.dp, self.ctl, self.ratelog, config.limits,
                           on_slot_changed=self._slot_changed, log_requests=config.debug)
        # While ports start or a reload applies, slot changes wait for the
        # full pass at its end (_apply_switch_settings): a mirror's target
        # may not be started yet. Read and cleared on the control thread.
        self._settling = True
        self.api = SwitchAPI(self)     # what the control socket and the metrics see of us
        self.control = ControlServer(self.api, os.path.join(config.runtime_dir, CONTROL_NAME),
                                     group=config.control.group)
        self.metrics: MetricsServer | None = None
        self.reload_counts = {"success": 0, "failure": 0}
        self.last_reload_ok = True
        self.last_reload_time: float | None = None
        self._reload_lock = asyncio.Lock()
        self._stopping = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        self.dp.start()
        self._place_control_plane(self.config.datapath.cpus)
        if self.dp.control_notify_fd >= 0:
            # the control plane's own notification writes (injected frames)
            # complete in io_uring's threads: account them, submit what follows
            asyncio.get_running_loop().add_reader(self.dp.control_notify_fd, self._reap_notifications)
        tasks: list[asyncio.Task] = []
        try:
            for name, pc in self.config.ports.items():
                self.ports[name] = await self._start_port(pc)
            await self.ctl.call(self._apply_switch_settings, self.config, dict(self.ports))
            await self.control.start()
            await self._start_metrics()
            log.info("vswitchd %s running: %d port(s), %d worker(s) in %s mode, runtime dir %s",
                     __version__, len(self.ports), self.config.datapath.workers,
                     self.config.datapath.mode, self.config.runtime_dir)
            # Sockets bound, TAPs opened, workers running: ready (guests come when they come).
            self.notifier.ready(self.status_line())
            tasks.append(asyncio.create_task(self._health(), name="health"))
            tasks.append(asyncio.create_task(self._fdb_tick(), name="fdb-aging"))
            interval = self.notifier.watchdog_interval()
            if interval is not None:
                tasks.append(asyncio.create_task(
                    WorkerWatchdog(self.dp, self.notifier, interval, status=self.status_line).run(),
                    name="watchdog"))
            await self._stopping.wait()
        finally:
            self.notifier.stopping()
            for task in tasks:
                task.cancel()
            if self.metrics:
                await self.metrics.stop()
            await self.control.stop()
            self._settling = True          # ports go: nothing to follow
            for port in self.ports.values():
                await port.stop()
            if self.dp.control_notify_fd >= 0:
                asyncio.get_running_loop().remove_reader(self.dp.control_notify_fd)
            await self.ctl.call(self.dp.stop)
            self.ctl.close()
            log.info("vswitchd stopped")

    def stop(self) -> None:
        self._stopping.set()

    def _reap_notifications(self) -> None:
        """The control ring has completions: reap them on the control thread
        (its one user). Not watched meanwhile, so that a readable fd does not
        post a reap per loop iteration."""
        loop = asyncio.get_running_loop()
        fd = self.dp.control_notify_fd
        loop.remove_reader(fd)

        def reap() -> None:
            try:
                self.dp.reap_notifications()
            finally:
                if not self._stopping.is_set():
                    loop.call_soon_threadsafe(loop.add_reader, fd, self._reap_notifications)
        self.ctl.post(reap)

    def _apply_switch_settings(self, config: Config, ports: dict[str, Port]) -> None:
        """On the control thread, after a start or a reload: the settings
        that name ports (mirrors name their targets' slots; the FDB's static
        entries and caps) and the FDB's aging. From here a port's new slot
        is followed as it happens (_slot_changed)."""
        apply_mirrors(self.dp, ports)
        self.fdb_ctl.configure(config, ports)
        self._settling = False

    def _slot_changed(self, port: Port) -> None:
        """On the control thread, in the job that gave `port` a new slot (a
        vhost-user port re-created for a new number of queue pairs at the
        guest's reconnection): its static entries and cap, and every mirror
        (its own, and those that point at it), follow at once."""
        if self._settling:
            return
        ports = dict(self.ports)
        ports[port.name] = port
        self.fdb_ctl.port_slot_changed(port)
        apply_mirrors(self.dp, ports)

    async def _start_port(self, pc) -> Port:
        """Create and start one port; its failure is reported, never fatal."""
        port = create_port(pc, self.env)
        await port.start()
        return port

    async def _start_metrics(self) -> None:
        m = self.config.metrics
        if not m.enabled:
            return
        self.metrics = MetricsServer(self.api, m.host, m.port)
        try:
            await self.metrics.start()
        except OSError as exc:
            # Metrics are for watching the switch; their absence must not stop it.
            log.error("metrics: cannot listen on %s port %d: %s", m.host, m.port, exc.strerror or exc)
            self.metrics = None

    def _place_control_plane(self, worker_cpus) -> None:
        """Every thread but the workers off the workers' CPUs, when there is
        another CPU to go to (vswitch/cpus.py says why)."""
        placed = cpus.place_control_plane(worker_cpus)
        self.control_cpus = cpus.cpu_list(placed) if placed is not None else None
        if placed is None or not worker_cpus:
            return
        if placed & set(worker_cpus):
            log.warning("control plane shares CPU(s) %s with the workers (datapath.cpus takes every "
                        "CPU vswitchd may use): its work takes turns with theirs", self.control_cpus)
        else:
            log.info("control plane on CPU(s) %s, workers on %s", self.control_cpus,
                     cpus.cpu_list(set(worker_cpus)))

    def status_line(self) -> str:
        up = sum(1 for p in self.ports.values() if p.state in ("connected", "up"))
        return (f"{len(self.ports)} port(s), {up} up, {self.config.datapath.workers} worker(s), "
                f"{self.config.datapath.mode} mode")

    async def _health(self) -> None:
        """Every HEALTH_PERIOD_S, and only here (never from `show` or a
        metrics scrape): each port's checks, which may end a connection
        whose guest memory vanished or retry a failed release."""
        while True:
            await asyncio.sleep(HEALTH_PERIOD_S)
            await self.ctl.call(self.dp.reap_notifications)
            for port in list(self.ports.values()):
                try:
                    await port.check_health()
                except Exception:
                    log.exception("port %s: health check failed", port.name)

    async def _fdb_tick(self) -> None:
        """The FDB's aging sweep, every second."""
        while True:
            await asyncio.sleep(FDB_TICK_S)
            try:
                await self.ctl.call(self.fdb_ctl.tick)
            except Exception:
                log.exception("fdb: aging sweep failed")

    # --- reload --------------------------------------------------------------------

    async def reload(self, force: bool = False) -> dict:
        """Re-read the config file and apply the difference. An invalid file
        changes nothing. Returns {"ok", "errors" | "changes", "warnings"}."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                result = await self._reload(force)
            finally:
                self.notifier.ready(self.status_line())
            self.reload_counts["success" if result["ok"] else "failure"] += 1
            self.last_reload_ok = result["ok"]
            if result["ok"]:
                self.last_reload_time = time.time()
            return result

    async def _reload(self, force: bool) -> dict:
        path = self.config.path
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("reload: %s is invalid, nothing changed:\n%s", path, exc)
            return {"ok": False, "errors": [str(e) for e in exc.errors]}
        except OSError as exc:
            log.error("reload: cannot read %s: %s", path, exc.strerror or exc)
            return {"ok": False, "errors": [f"{path}: {exc.strerror or exc}"]}
        # Planned against what each port runs: a change an earlier reload
        # left pending is planned again (and forced, with force), or withdrawn.
        plan = reconcile.plan(self.config, new, running=self.ports)
        if plan.errors:
            for e in plan.errors:
                log.error("reload: %s; nothing changed", e)
            return {"ok": False, "errors": plan.errors}
        # Before new ports open their fds. A low limit is worth a warning, not a refusal:
        # the worst case needs every guest to use every queue and memory slot.
        self.nofile = ensure_nofile(new)
        if self.nofile.raised:
            log.info("reload: RLIMIT_NOFILE: soft limit raised from %d to %d", self.nofile.soft_before,
                     self.nofile.soft)
        if self.nofile.warning:
            plan.warnings.append(self.nofile.warning)
        warnings = list(plan.warnings)
        # Slots change below (restarts, additions): mirrors and the FDB follow
        # in one pass at the end, whatever happens in between.
        self._settling = True
        try:
            outcome = await self._apply_port_changes(plan, new, force, warnings)
            if "mode" in plan.datapath_in_place:
                await self.ctl.call(self.dp.set_mode, new.datapath.mode)
            if "cpus" in plan.datapath_in_place:
                await self.ctl.call(self.dp.set_cpus, new.datapath.cpus, cpus.daemon_cpus())
                self._place_control_plane(new.datapath.cpus)
            if plan.control_changed:
                problem = self.control.set_group(new.control.group)
                if problem:
                    warnings.append(problem)
            if plan.limits_changed:
                # Applied to what comes next: memory mapped already stays mapped.
                await self.ctl.call(self.dp.set_memory_limits, new.limits.guest_memory_per_port,
                                    new.limits.guest_memory_total)
            self.env.limits = new.limits
            self.env.log_requests = new.debug
            if new.debug and not self.config.debug:
                # the test hooks behind the debug commands (debug stall-worker)
                await self.ctl.call(self.dp.enable_test_hooks)
            self.config = new
        finally:
            # Mirrors (they name slots), the FDB's aging, caps and static entries: in place.
            await self.ctl.call(self._apply_switch_settings, self.config, dict(self.ports))
        if plan.metrics_changed:
            if self.metrics:
                await self.metrics.stop()
                self.metrics = None
            await self._start_metrics()
        for w in warnings:
            log.warning("reload: %s", w)
        log.info("reload: %s applied (%d added, %d removed, %d changed, %d untouched)", path,
                 len(plan.added), len(plan.removed), len(plan.changed), len(plan.unchanged))
        return {"ok": True, "ports": outcome, "unchanged": plan.unchanged,
                "warnings": warnings, "plan": plan.summary()}

    async def _apply_port_changes(self, plan: reconcile.Plan, new: Config, force: bool,
                                  warnings: list[str]) -> dict[str, str]:
        """Removed ports, each planned change (once, as planned), added
        ports; returns what happened to each port, by name."""
        outcome: dict[str, str] = {}
        # Removed first, so that a socket path or MAC moved to another port is free.
        for name in plan.removed:
            await self.ports.pop(name).stop()
            outcome[name] = "removed"
            log.info("reload: port %s removed", name)
        # In-place changes to all ports take effect together: the workers wait
        # between rounds meanwhile, so no frame is switched by half of them
        # (two ports moved to a new VLAN in one reload lose nothing between).
        results: dict[str, ChangeResult] = {}
        await self.ctl.call(self.dp.pause)
        try:
            for change in plan.changed:
                try:
                    results[change.name] = await self.ports[change.name].reconfigure(change, force=force)
                except Exception as exc:   # one port's trouble: restart it alone
                    log.exception("reload: port %s: reconfigure failed", change.name)
                    results[change.name] = ChangeResult.RESTART
                    outcome[change.name] = f"restart after error: {exc}"
        finally:
            await self.ctl.call(self.dp.resume)
        for change in plan.changed:
            result = results[change.name]
            if result is ChangeResult.RESTART:
                await self.ports[change.name].stop()
                self.ports[change.name] = await self._start_port(change.new)
                log.info("reload: port %s restarted (%s changed)", change.name, ", ".join(change.fields))
            outcome.setdefault(change.name, "restarted" if result is ChangeResult.RESTART else result.value)
            if {"socket_owner", "socket_group", "socket_mode"} & set(change.fields):
                alert = self.ports[change.name].show()["alerts"].get("socket")
                if alert:
                    warnings.append(f"port {change.name}: {alert}")
        for name in plan.added:
            self.ports[name] = await self._start_port(new.ports[name])
            outcome[name] = "added"
            log.info("reload: port %s added", name)
        # Keep the file order of the new config (show, metrics, port list).
        self.ports = {name: self.ports[name] for name in new.ports}
        return outcome

    # --- queries ---------------------------------------------------------------------

    def show(self) -> dict:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "config": self.config.path,
            "runtime_dir": self.config.runtime_dir,
            "mode": self.dp.mode,
            "workers": self.dp.worker_stats(),
            "control_cpus": self.control_cpus,
            "ports": [port.show() for port in self.ports.values()],
            "reloads": dict(self.reload_counts),
            "last_reload_ok": self.last_reload_ok,
            "security": {"seccomp": self.seccomp_state, "privileges": self.privileges,
                         **({"fds_needed": self.nofile.needed, "nofile_soft": self.nofile.soft,
                             "nofile_hard": self.nofile.hard} if self.nofile else {})},
            "guest_memory": {"mapped": self.dp.mapped_bytes(), **self.dp.memory_limits()},
        }

    def fdb(self, port: str | None = None, vlan: int | None = None) -> list[dict]:
        """The MAC table, optionally of one port (name) and/or VLAN. KeyError: no such port."""
        return entries_by_name(self.dp, self.ports.values(), port, vlan)

    async def fdb_flush(self, port: str | None = None, vlan: int | None = None) -> int:
        """Forget learned entries (of a port, a VLAN, or all); returns how many."""
        slot = None
        if port is not None:
            if port not in self.ports:
                raise KeyError(port)
            slot = self.ports[port].slot
        n = await self.ctl.call(self.dp.fdb_flush, port=slot, vlan=vlan)
        log.info("fdb: flushed %d learned entr%s (port %s, VLAN %s)", n, "y" if n == 1 else "ies",
                 port or "any", "any" if vlan is None else vlan)
        return n

    def fdb_stats(self) -> dict:
        """Table counters, with the per-port ones by port name."""
        st = self.dp.fdb_stats()
        per_port = st.pop("ports")
        names = {port.slot: port.name for port in self.ports.values()}
        st["entries"] = st["learned"] + st["static"]
        st["ports"] = {names[slot]: info for slot, info in per_port.items() if slot in names}
        return st

    def stats(self) -> dict:
        """Totals per port (both directions, drops by reason), per worker, FDB."""
        ports = {}
        for port in self.ports.values():
            info = port.show()
            tot = {"receive_packets": 0, "receive_bytes": 0, "transmit_packets": 0,
                   "transmit_bytes": 0, "receive_drops": {}, "transmit_drops": {}}
            for q in info["queues"]:
                # the guest's tx ring is what the switch receives, its rx ring what it sends
                for ring, way in (("tx", "receive"), ("rx", "transmit")):
                    tot[f"{way}_packets"] += q[ring]["packets"]
                    tot[f"{way}_bytes"] += q[ring]["bytes"]
                    for reason, n in q[ring]["drops"].items():
                        tot[f"{way}_drops"][reason] = tot[f"{way}_drops"].get(reason, 0) + n
            ports[port.name] = {"state": info["state"], **tot}
        return {"ports": ports, "workers": self.dp.worker_stats(),
                "fdb": self.fdb_stats(),
                "reloads": dict(self.reload_counts)}


def argument_parser() -> argparse.ArgumentParser:
    """vswitchd's command line (man/vswitchd.8 documents each option)."""
    parser = argparse.ArgumentParser(
        prog="vswitchd", description="vhost-user virtio-net switch",
        epilog=f"exit status: 0 stopped by SIGINT/SIGTERM, {EXIT_NOT_CONFIGURED} invalid "
               "configuration (\"not configured\" as in LSB and systemd; the unit does not "
               "restart on it), 1 any other failure to start, 2 usage error")
    parser.add_argument("--config", "-c", required=True, help="YAML configuration file")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"vswitchd {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # before any thread exists or moves: datapath.cpus is checked against,
    # and the control plane placed within, the mask the daemon started with
    cpus.remember_daemon_cpus()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"vswitchd: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_NOT_CONFIGURED
    try:
        lock_fd = take_runtime_lock(config.runtime_dir)
    except AlreadyRunning as exc:
        print(f"vswitchd: {exc}; refusing to start", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"vswitchd: runtime directory {config.runtime_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    log.info("vswitchd %s: %s", __version__, privileges.describe())
    nofile = check_nofile(config)
    try:
        seccomp_state = confine(config)
    except seccomp.SeccompError as exc:
        print(f"vswitchd: security.seccomp: cannot install the seccomp filter: {exc.strerror}; "
              "refusing to run unconfined (set security.seccomp: false to run without it)",
              file=sys.stderr)
        os.close(lock_fd)
        return 1
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run

    async def amain() -> None:
        switch = Switch(config, seccomp_state=seccomp_state, nofile=nofile)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, switch.stop)
        # SIGHUP: the same reload as `vswitchctl reload`, result in the log.
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(switch.reload()))
        await switch.run()

    try:
        runner(amain())
    except UnsafePath as exc:
        # the control socket's path holds something that is not ours to replace
        print(f"vswitchd: {exc.strerror}; refusing to start", file=sys.stderr)
        return 1
    finally:
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
