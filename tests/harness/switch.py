"""Run vswitchd as the tests' switch under test: a real process, a real config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from vswitch.cli import request

VENV_BIN = Path(sys.executable).parent
VSWITCHD = str(VENV_BIN / "vswitchd")


class Vswitchd:
    """vswitchd on a config built from `ports` (name -> port mapping)."""

    def __init__(self, workdir: Path, ports: dict[str, dict], workers: int = 1,
                 cpus: str | None = None, extra: dict | None = None,
                 runtime_dir: Path | None = None, wrapper: list[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.runtime_dir = Path(runtime_dir) if runtime_dir else self.workdir / "run"
        self.wrapper = list(wrapper or [])   # e.g. setpriv with the unit's capability set
        self.config_path = self.workdir / "vswitch.yaml"
        self.log_path = self.workdir / "vswitchd.log"
        self.ports = ports
        self.cpus = cpus
        self.workers = workers
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config(ports, extra)
        self.proc: subprocess.Popen | None = None

    def write_config(self, ports: dict[str, dict], extra: dict | None = None) -> None:
        """(Re)write the config file; a running daemon reads it on reload."""
        self.ports = ports
        # No metrics listener unless a test asks for one: tests run side by side.
        doc = {"runtime_dir": str(self.runtime_dir), "ports": ports,
               "datapath": {"workers": self.workers}, "metrics": {"enabled": False},
               **(extra or {})}
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def reload(self, *flags: str) -> subprocess.CompletedProcess:
        """`vswitchctl reload` as an operator runs it."""
        return subprocess.run([str(VENV_BIN / "vswitchctl"), "--runtime-dir", str(self.runtime_dir),
                               "reload", *flags], capture_output=True, text=True, timeout=180)

    def socket(self, port: str) -> str:
        return self.ports[port].get("socket") or str(self.runtime_dir / f"{port}.sock")

    def start(self, timeout: float = 30.0) -> "Vswitchd":
        cmd = [VSWITCHD, "--config", str(self.config_path), "--log-level", "debug"]
        if self.cpus:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        cmd = [*self.wrapper, *cmd]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        ctl = self.runtime_dir / "vswitchd.ctl"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vswitchd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if ctl.exists():
                try:
                    self.ctl("version")
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"vswitchd did not start:\n{self.log_tail()}")

    def ctl(self, command: str, **args) -> dict | list:
        reply = request(str(self.runtime_dir / "vswitchd.ctl"), command, args)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        return reply["result"]

    def port(self, name: str) -> dict:
        return self.ctl("port show", name=name)

    def wait_port(self, name: str, predicate, timeout: float = 60.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = self.port(name)
            if predicate(info):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {name}: {what or 'condition'} not reached:\n"
                                   f"{json.dumps(info, indent=1)}\n{self.log_tail()}")
            time.sleep(0.1)

    def drops(self, name: str) -> dict[str, int]:
        """Drop counters of a port summed over its queues, by reason."""
        totals: dict[str, int] = {}
        for q in self.port(name)["queues"]:
            for direction in ("rx", "tx"):
                for reason, n in q[direction]["drops"].items():
                    totals[reason] = totals.get(reason, 0) + n
        return totals

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def fd_count(self) -> int:
        """Open fds of the daemon; the least of a few samples, so that the
        server side of a just-finished control request is not counted."""
        assert self.proc is not None
        samples = []
        for _ in range(5):
            samples.append(len(os.listdir(f"/proc/{self.proc.pid}/fd")))
            time.sleep(0.05)
        return min(samples)

    def __enter__(self) -> "Vswitchd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
