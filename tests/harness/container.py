"""A minimal Debian booted by systemd-nspawn: vswitchd's unit under a real
systemd (tests/test_appliance.py).

The root file system is made once with ``debootstrap --variant=minbase``
(systemd, dbus, python3: about a minute and 300 MB) into the guest image's
cache (`tests.harness.guests.default_cache_dir`) and reused by every later run;
it is rebuilt only when its recipe (suite, packages, the tweaks below) changes.
A stamp file written last marks a complete build, and a lock serialises
builders, as for the guest image.

Each `Container` boots an overlay of that root (the cache itself is never
written), so what a test installs goes away with the container. The container
shares the host's network namespace (TAP devices made inside appear on the
host), gets /dev/net/tun, and may have host directories bind-mounted in.
Commands run inside with nsenter into the namespaces of the container's
systemd (`Container.run`); systemd-nspawn runs with ``--register=no
--keep-unit`` because the host has no systemd (nor system bus) to register
with.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from .guests import default_cache_dir

__all__ = ["CONTAINER_PACKAGES", "Container", "ContainerError", "build_rootfs", "default_cache_dir",
           "nspawn_available"]

SUITE = "bookworm"
#: What the container has beyond minbase: a real systemd as PID 1 and the
#: interpreter vswitch's virtualenv is made from (the venv is built on the
#: host, where the same Debian release has the same /usr/bin/python3).
CONTAINER_PACKAGES: tuple[str, ...] = ("systemd", "systemd-sysv", "dbus", "python3")
#: Bump when the tweaks in `_prepare` change.
ROOTFS_FORMAT_VERSION = 1
HOSTNAME = "vswitch-appliance"
_STAMP = "container-rootfs.stamp"


class ContainerError(RuntimeError):
    pass


def nspawn_available() -> bool:
    return all(shutil.which(t) for t in ("debootstrap", "systemd-nspawn", "nsenter"))


def _mirror() -> list[str]:
    """debootstrap's default mirror unless $VSWITCH_DEBIAN_MIRROR names one."""
    m = os.environ.get("VSWITCH_DEBIAN_MIRROR")
    return [m] if m else []


def _recipe() -> str:
    h = hashlib.sha256()
    h.update(f"{ROOTFS_FORMAT_VERSION}\0{SUITE}\0{','.join(CONTAINER_PACKAGES)}\0{_mirror()}".encode())
    return h.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_rootfs(cache_dir: Path | None = None, timeout: float = 600) -> Path:
    """The cached root file system, built first if missing or stale."""
    cache_dir = Path(cache_dir or default_cache_dir()).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    root = cache_dir / f"container-{SUITE}"
    stamp = cache_dir / _STAMP
    recipe = _recipe()
    with _locked(cache_dir / ".lock"):
        if root.is_dir() and stamp.exists() and stamp.read_text().strip() == recipe:
            return root
        stamp.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="container-build-") as tmp:
            new = Path(tmp) / "root"
            cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(CONTAINER_PACKAGES)}",
                   SUITE, str(new), *_mirror()]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0:
                raise ContainerError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                                     f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            _prepare(new)
            if root.exists():
                shutil.rmtree(root)
            new.rename(root)
        stamp.write_text(recipe + "\n")
    return root


def _prepare(root: Path) -> None:
    (root / "etc/hostname").write_text(HOSTNAME + "\n")
    # No getty on the container's console: nothing reads it (--console=passive).
    wants = root / "etc/systemd/system/getty.target.wants"
    if wants.is_dir():
        shutil.rmtree(wants)
    # A package's postinst must not start services while the rootfs is built
    # (none does with minbase), but must when a test installs vswitch in the
    # booted container: nothing to add.


class Container:
    """One booted container on an overlay of `rootfs`; a context manager.

    ``binds`` maps host directories to paths inside (created on both sides)."""

    def __init__(self, rootfs: Path, workdir: Path, binds: Mapping[str | Path, str] | None = None,
                 boot_timeout: float = 90) -> None:
        self.rootfs = Path(rootfs)
        self.workdir = Path(workdir)
        self.binds = {Path(h): c for h, c in (binds or {}).items()}
        self.boot_timeout = boot_timeout
        self.root = self.workdir / "root"
        self.log_path = self.workdir / "nspawn.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        self._mounted = False
        self._log = None

    # --- life cycle ---------------------------------------------------------------

    def __enter__(self) -> Container:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for d in ("upper", "work", "root"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.rootfs},upperdir={self.workdir / 'upper'},"
                        f"workdir={self.workdir / 'work'}", str(self.root)],
                       check=True, capture_output=True, timeout=30)
        self._mounted = True
        argv = ["systemd-nspawn", "-D", str(self.root), "--boot", "--register=no", "--keep-unit",
                "--console=passive", f"--hostname={HOSTNAME}",
                "--bind=/dev/net/tun", "--capability=CAP_NET_ADMIN"]
        for host, inside in self.binds.items():
            host.mkdir(parents=True, exist_ok=True)
            argv.append(f"--bind={host}:{inside}")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.init_pid = self._find_init()
        # `is-system-running --wait` returns once boot is over: "running", or
        # "degraded" with a failed unit, which the caller may judge.
        # Until systemd has its private socket, systemctl fails at once (or
        # says "offline"): ask again.
        self.boot_state = ""
        while self.boot_state in ("", "offline") and time.monotonic() < self.deadline:
            left = max(1.0, self.deadline - time.monotonic())
            proc = self.run(["systemctl", "is-system-running", "--wait"], timeout=left, check=False)
            self.boot_state = proc.stdout.strip()
            if self.boot_state in ("", "offline"):
                time.sleep(0.2)
        if self.boot_state not in ("running", "degraded"):
            raise ContainerError(f"container did not boot: {self.boot_state!r}\n{self.log_tail()}")

    def _find_init(self) -> int:
        """The container's systemd: the child of systemd-nspawn."""
        assert self.proc is not None
        self.deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < self.deadline:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except FileNotFoundError:
                children = []
            for c in children:
                try:
                    comm = Path(f"/proc/{c}/comm").read_text().strip()
                except FileNotFoundError:
                    continue
                if comm == "systemd":
                    return int(c)
            time.sleep(0.1)
        raise ContainerError(f"no systemd in the container after {self.boot_timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> None:
        """Power off (SIGTERM to nspawn: SIGRTMIN+3 to the container's
        systemd), SIGKILL if that takes longer than `timeout`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._mounted:
            subprocess.run(["umount", str(self.root)], capture_output=True, timeout=30)
            self._mounted = False

    # --- inside ---------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout: float = 60, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """argv in the container (all its namespaces), as root."""
        cmd = ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "--", *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                              cwd="/", env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                            "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
        if check and proc.returncode != 0:
            raise ContainerError(f"{' '.join(argv)} exited {proc.returncode} in the container:\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def path(self, inside: str) -> Path:
        """A path inside the container as seen from the host (the overlay)."""
        return self.root / inside.lstrip("/")

    def systemctl(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], timeout=timeout, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, lines: int = 60) -> str:
        return self.run(["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines), "-u", unit],
                        check=False, timeout=30).stdout

    def host_pid(self, pid: int) -> int:
        """The host's pid of the container's process `pid`."""
        want = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != want:
                    continue
                for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == pid:
                        return int(entry)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        raise ContainerError(f"no process {pid} in the container")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""
