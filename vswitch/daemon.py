"""vswitchd: runs the switch in the foreground.

    vswitchd --config /etc/vswitch/vswitch.yaml

Logs to stderr; SIGINT/SIGTERM stop it cleanly (ports closed, sockets removed,
workers joined). A second daemon on the same runtime directory refuses to
start instead of stealing the first one's sockets (a lock file is held).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys

from . import __version__
from .config import Config, ConfigError, TapPortConfig, load_config
from .control import ControlServer
from .port import RateLimitedLog, VhostUserPort
from .uplink import TapPort

log = logging.getLogger("vswitch")

HEALTH_PERIOD_S = 1.0
LOCK_NAME = "vswitchd.lock"
CONTROL_NAME = "vswitchd.ctl"


class AlreadyRunning(Exception):
    pass


def take_runtime_lock(runtime_dir: str) -> int:
    """Create the runtime directory and hold its lock for the daemon's life."""
    os.makedirs(runtime_dir, mode=0o755, exist_ok=True)
    path = os.path.join(runtime_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another vswitchd holds {path}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Switch:
    """The running switch: datapath, ports, control socket."""

    def __init__(self, config: Config) -> None:
        from ._datapath import Datapath  # the extension: imported once we run

        self.config = config
        self.dp = Datapath(config.datapath.workers, config.datapath.mode)
        self.ports: dict[str, VhostUserPort | TapPort] = {}
        self.ratelog = RateLimitedLog()
        self.control = ControlServer(self, os.path.join(config.runtime_dir, CONTROL_NAME))
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        self.dp.start()
        try:
            for name, pc in self.config.ports.items():
                if isinstance(pc, TapPortConfig):
                    tap = TapPort(pc, self.dp)
                    tap.start()
                    self.ports[name] = tap
                    continue
                port = VhostUserPort(pc, self.dp, self.ratelog)
                os.makedirs(os.path.dirname(pc.socket), mode=0o755, exist_ok=True)
                try:
                    port.start()
                except OSError as exc:
                    # One port's trouble never stops another port.
                    log.error("port %s: cannot listen on %s: %s", name, pc.socket, exc.strerror or exc)
                    port.status.last_error = str(exc)
                self.ports[name] = port
            await self.control.start()
            log.info("vswitchd %s running: %d port(s), %d worker(s) in %s mode, runtime dir %s",
                     __version__, len(self.ports), self.config.datapath.workers,
                     self.config.datapath.mode, self.config.runtime_dir)
            health = asyncio.create_task(self._health())
            await self._stopping.wait()
            health.cancel()
        finally:
            await self.control.stop()
            for port in self.ports.values():
                await port.stop()
            self.dp.stop()
            log.info("vswitchd stopped")

    def stop(self) -> None:
        self._stopping.set()

    async def _health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PERIOD_S)
            for port in self.ports.values():
                if not isinstance(port, VhostUserPort):
                    continue      # a TAP port watches its device in its own task
                try:
                    port.check_health()
                except Exception:
                    log.exception("port %s: health check failed", port.name)

    def show(self) -> dict:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "config": self.config.path,
            "runtime_dir": self.config.runtime_dir,
            "mode": self.dp.mode,
            "workers": self.dp.worker_stats(),
            "ports": [port.show() for port in self.ports.values()],
        }

    def fdb(self) -> list[dict]:
        by_slot = {port.slot: port.name for port in self.ports.values()}
        return [{"mac": mac, "port": by_slot.get(slot, f"#{slot}")}
                for mac, slot in sorted(self.dp.fdb_entries())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vswitchd", description="vhost-user virtio-net switch")
    parser.add_argument("--config", "-c", required=True, help="YAML configuration file")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"vswitchd {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"vswitchd: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    try:
        lock_fd = take_runtime_lock(config.runtime_dir)
    except AlreadyRunning as exc:
        print(f"vswitchd: {exc}; refusing to start", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"vswitchd: runtime directory {config.runtime_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run

    async def amain() -> None:
        switch = Switch(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, switch.stop)
        await switch.run()

    try:
        runner(amain())
    finally:
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
