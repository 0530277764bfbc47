"""Boot a QEMU guest with a vhost-user virtio-net NIC and drive it from a test.

The guest (see image.py) runs an interactive busybox shell on its serial
console, which QEMU connects to this process's pipes (``-chardev stdio``). A
reader thread copies everything the guest prints into a log file and an
in-memory buffer; :meth:`QemuGuest.run` sends one command line and waits for an
end marker that carries the exit status.

Command protocol (helpers defined in the guest's /etc/vsrc):
``vsrun TOKEN BASE64`` runs the decoded command in a subshell with stdin from
/dev/null and prints ``VS-BEGIN-TOKEN`` before and ``VS-END-TOKEN RC`` after.
TOKEN is random per call, the command travels base64-encoded (no quoting
issues, and its text can never look like a marker), and echo is off on the
guest tty (``stty -echo``), so the output between the markers is exactly the
command's stdout+stderr, apart from kernel console messages, which are
filtered out when they form whole lines. Long commands are sent in chunks
(``vsput``) because the tty's line buffer is limited.

Why the flags are what they are: under TCG, vhost-user needs
``vectors=0`` (QEMU 7.2 crashes with MSI-X), guest RAM must be a shared memfd,
and QEMU as vhost-user client retries with ``reconnect=1`` (``reconnect-ms=1000``
from QEMU 9.2 on, which deprecates ``reconnect``).

Which QEMU runs is a :class:`QemuBinary`: by default the system's (Debian 12:
7.2, or $VSWITCH_QEMU); ``QemuBinary.from_prefix`` runs one unpacked beside it
(QEMU 10 from bookworm-backports, image.py's ``fetch_qemu10``).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from .image import BOOT_MARKER, INIT_ERROR_MARKER, GuestImage

__all__ = [
    "QemuBinary",
    "QemuGuest",
    "QmpClient",
    "GuestError",
    "GuestBootError",
    "GuestTimeout",
    "GuestCommandError",
    "QmpError",
    "PingResult",
    "IperfResult",
    "default_accel",
    "probe_kvm",
    "KERNEL_ERROR_RE",
]

QEMU_BINARY = os.environ.get("VSWITCH_QEMU", "qemu-system-x86_64")

#: Firmware the unpacked QEMU 10 finds on the host: its own data package has
#: no BIOS (Debian ships SeaBIOS apart, installed with the system QEMU).
SEABIOS_DIR = "/usr/share/seabios"

_versions: dict[str, tuple[int, int, int]] = {}


@dataclass(frozen=True)
class QemuBinary:
    """Which qemu-system-x86_64 a guest runs, and how to invoke it.

    data_dirs become ``-L`` options (searched for firmware and option ROMs);
    env is added to QEMU's environment (QEMU_MODULE_DIR, so an unpacked QEMU
    does not load the system QEMU's modules, built for another version).
    """

    path: str = QEMU_BINARY
    data_dirs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_prefix(cls, prefix: Path | str) -> QemuBinary:
        """A QEMU unpacked with ``dpkg -x`` into ``prefix`` (not installed)."""
        prefix = Path(prefix)
        return cls(
            path=str(prefix / "usr/bin/qemu-system-x86_64"),
            data_dirs=(str(prefix / "usr/share/qemu"), SEABIOS_DIR),
            env=(("QEMU_MODULE_DIR", str(prefix / "usr/lib/x86_64-linux-gnu/qemu")),),
        )

    @property
    def version(self) -> tuple[int, int, int]:
        """(major, minor, micro) from ``--version``, asked once per binary."""
        if self.path not in _versions:
            out = subprocess.run([self.path, "--version"], capture_output=True, text=True,
                                 env=self.environ(), check=True).stdout
            m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
            if not m:
                raise GuestError(f"{self.path} --version: no version in {out!r}")
            _versions[self.path] = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        return _versions[self.path]

    def argv(self) -> list[str]:
        """The binary and its ``-L`` options: the start of a command line."""
        return [self.path, *(arg for d in self.data_dirs for arg in ("-L", d))]

    def environ(self) -> dict[str, str] | None:
        """QEMU's environment (None: inherit this process's unchanged)."""
        return {**os.environ, **dict(self.env)} if self.env else None

    def reconnect_option(self, seconds: int = 1) -> str:
        """The client chardev's retry option: 9.2 deprecated ``reconnect``."""
        if self.version >= (9, 2, 0):
            return f"reconnect-ms={seconds * 1000}"
        return f"reconnect={seconds}"

#: Longest base64 command sent on one line; the guest tty's canonical line
#: buffer is 4 KiB and busybox's line reader is smaller still.
_MAX_LINE_B64 = 512

#: A kernel console line ("[   12.345678] ..."): printed asynchronously by the
#: guest kernel, so it is removed from command output and kept separately.
_PRINTK_LINE_RE = re.compile(r"^\s*\[\s*\d+\.\d+\] ")
# A kernel message printed on the console while a command writes there starts
# wherever the command's line had got to ("rtt":[   14.157159] DMAR: ...): the
# printk timestamp (six decimals, as printk writes it) anywhere in a line.
_PRINTK_ANYWHERE_RE = re.compile(r"\[\s*\d+\.\d{6}\] ")

_PANIC_RE = re.compile(r"^\s*\[\s*\d+\.\d+\] Kernel panic[^\n]*", re.MULTILINE)

#: Kernel log lines that indicate a virtio / networking problem in the guest.
#: "failover" is a module name, so words are matched, not substrings.
KERNEL_ERROR_RE = re.compile(
    r"(?i:(?:virtio|\beth\d|net_failover).*?"
    r"(?:\berror\b|\bfail(?:ed|ure)?\b|not a head|timed out|\bbad\b|unexpected|exceeds|"
    r"\binvalid\b|corrupt|too (?:many|big|short)|\bdrop))"
    # Generic trouble, case-sensitive ("loops_per_jiffy" is not an "Oops").
    r"|NETDEV WATCHDOG|\bBUG: |\bWARNING: |\bOops\b|Call Trace|Kernel panic|soft lockup"
    r"|blocked for more than",
)


class GuestError(RuntimeError):
    """Something went wrong with a guest; the message includes log tails."""


class GuestBootError(GuestError):
    """QEMU exited, the kernel panicked, or /init reported an error."""


class GuestTimeout(GuestError, TimeoutError):
    """The guest did not answer in time."""


class GuestCommandError(GuestError):
    """A command run with ``check=True`` returned a non-zero status."""

    def __init__(self, message: str, rc: int, output: str) -> None:
        super().__init__(message)
        self.rc = rc
        self.output = output


class QmpError(GuestError):
    """QMP returned an error or the monitor could not be reached."""


class PingResult(NamedTuple):
    """Parsed busybox ``ping`` summary. ``avg_rtt_ms`` is None with no replies."""

    sent: int
    received: int
    loss_pct: float
    avg_rtt_ms: float | None


@dataclass(frozen=True)
class IperfResult:
    """Summary of an iperf3 client run (``-J`` output); rates in bits/s."""

    sent_bps: float
    received_bps: float
    seconds: float
    retransmits: int | None
    lost_pct: float | None  # UDP only
    raw: dict[str, Any] = field(repr=False)

    @property
    def gbps(self) -> float:
        """Receiver-side throughput in Gbit/s (what actually crossed the switch)."""
        return self.received_bps / 1e9


# --------------------------------------------------------------------------
# acceleration
# --------------------------------------------------------------------------

_kvm_probe_result: bool | None = None


def default_accel(image: GuestImage | None = None) -> str:
    """Pick "kvm" or "tcg" from $VSWITCH_GUEST_ACCEL (kvm|tcg|auto; default auto).

    "auto" boots a throw-away guest under KVM once per process (see
    :func:`probe_kvm`): /dev/kvm can exist yet not run normal kernels, so only a
    boot that works proves KVM usable. Without an image, "auto" means "tcg".
    """
    choice = os.environ.get("VSWITCH_GUEST_ACCEL", "auto").strip().lower()
    if choice in ("kvm", "tcg"):
        return choice
    if choice != "auto":
        raise ValueError(f"VSWITCH_GUEST_ACCEL must be kvm, tcg or auto, not {choice!r}")
    if image is None:
        return "tcg"
    return "kvm" if probe_kvm(image) else "tcg"


def probe_kvm(image: GuestImage, timeout: float = 30.0) -> bool:
    """True when a guest without NIC boots to its shell under KVM (cached)."""
    global _kvm_probe_result
    if _kvm_probe_result is not None:
        return _kvm_probe_result
    ok = False
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        workdir = Path(tempfile.mkdtemp(prefix="vsguest-kvmprobe-"))
        guest = QemuGuest("kvmprobe", image, socket_path=None, accel="kvm", workdir=workdir)
        try:
            guest.start()
            guest.wait_booted(timeout=timeout)
            ok = guest.run("echo ok", timeout=timeout) == (0, "ok\n")
        except GuestError:
            ok = False
        finally:
            guest.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    _kvm_probe_result = ok
    return ok


# --------------------------------------------------------------------------
# QMP
# --------------------------------------------------------------------------


class QmpClient:
    """Minimal synchronous QMP client over a unix socket.

    Asynchronous events that arrive while waiting for a reply are kept in
    :attr:`events` (oldest first) for :meth:`wait_event`.
    """

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.events: list[dict[str, Any]] = []
        self._buf = bytearray()
        self._next_id = 0
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except OSError as exc:
                sock.close()
                # QEMU creates the socket during startup; retry until then.
                if time.monotonic() > deadline:
                    raise QmpError(f"cannot connect to QMP socket {path}: {exc}") from exc
                time.sleep(0.1)
        self._sock = sock
        greeting = self._read_message(deadline)
        if "QMP" not in greeting:
            raise QmpError(f"unexpected QMP greeting: {greeting}")
        self.command("qmp_capabilities", timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def command(self, name: str, timeout: float = 60.0, **args: Any) -> Any:
        """Execute ``name`` with ``args``; return its "return" value or raise QmpError."""
        self._next_id += 1
        msg_id = f"vs-{self._next_id}"
        msg: dict[str, Any] = {"execute": name, "id": msg_id}
        if args:
            msg["arguments"] = args
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"QMP {name}: send failed: {exc}") from exc
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != msg_id:
                continue  # reply to an earlier, timed-out command
            if "error" in reply:
                err = reply["error"]
                raise QmpError(f"QMP {name} {args}: {err.get('class')}: {err.get('desc')}")
            return reply.get("return")

    def wait_event(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Return (and remove) the first event called ``name``, waiting if needed."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("event") == name:
                    return self.events.pop(i)
            msg = self._read_message(deadline)
            if "event" in msg:
                self.events.append(msg)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QmpError("timed out waiting for QMP")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise QmpError("timed out waiting for QMP") from exc
            except OSError as exc:
                raise QmpError(f"QMP connection failed: {exc}") from exc
            if not chunk:
                raise QmpError("QMP connection closed by QEMU")
            self._buf += chunk
        line, _, rest = self._buf.partition(b"\n")
        self._buf = bytearray(rest)
        result: dict[str, Any] = json.loads(line)
        return result


# --------------------------------------------------------------------------
# the guest
# --------------------------------------------------------------------------

# Guests still running at interpreter exit are killed, so a failing test run
# never leaves QEMU processes behind.
_live_guests: weakref.WeakSet[QemuGuest] = weakref.WeakSet()


@atexit.register
def _kill_leftover_guests() -> None:
    for guest in list(_live_guests):
        guest.stop(timeout=2.0)


# Resolved once in the parent: the child of a multi-threaded process must not
# dlopen/dlsym between fork and exec (another thread may hold the loader lock).
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    # If the test process dies (even by SIGKILL), the kernel kills QEMU too.
    # Note: PDEATHSIG follows the *thread* that forked, so start guests from a
    # thread that outlives them (normally the main thread).
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _mac_for(name: str) -> str:
    digest = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _qemu_opt_escape(path: Path) -> str:
    # QEMU option values are comma-separated; a literal comma is doubled.
    return str(path).replace(",", ",,")


def _qemu_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


class QemuGuest:
    """One QEMU guest with (optionally) one vhost-user virtio-net NIC.

    Typical use::

        with QemuGuest("g1", image, sock, ip="10.0.0.1/24", workdir=tmp_path) as g:
            g.wait_booted()
            assert g.ping("10.0.0.2").loss_pct == 0

    ``server=False`` makes QEMU the vhost-user client (the backend listens;
    QEMU retries every second). ``server=True`` makes QEMU listen; it then
    does not run the guest until a backend has connected.
    """

    def __init__(
        self,
        name: str,
        image: GuestImage,
        socket_path: Path | str | None,
        *,
        server: bool = False,
        mac: str | None = None,
        ip: str | None = None,
        queues: int = 1,
        smp: int | None = None,
        mem: str = "256M",
        device_props: Mapping[str, str | int | bool] | None = None,
        netdev_props: Mapping[str, str | int | bool] | None = None,
        share: bool = True,
        workdir: Path | str | None = None,
        accel: str | None = None,
        append: str = "",
        extra_args: Sequence[str] = (),
        run_as: str | None = None,
        maxmem: str | None = None,
        qemu: QemuBinary | None = None,
        msix: bool | None = None,
        mem_path: Path | str | None = None,
        machine: str | None = None,
        platform_args: Sequence[str] = (),
    ) -> None:
        """Describe a guest; nothing runs until :meth:`start`.

        name: used for the hostname, log file names and the default MAC.
        socket_path: vhost-user socket; None boots without a NIC.
        ip: CIDR address for eth0 (e.g. "10.0.0.1/24"); None leaves it down.
        queues: vhost-user queue pairs; >1 enables mq and ``ethtool -L``.
        smp: vCPUs, default max(1, queues) so every queue pair gets a vCPU.
        device_props / netdev_props: extra ``-device virtio-net-pci`` /
            ``-netdev vhost-user`` properties, e.g. {"mrg_rxbuf": "off"};
            they override the defaults chosen here.
        share: share=on for guest RAM. share=off is only useful to test that
            a backend notices unshared memory (no frame can pass).
        accel: "tcg" or "kvm"; default from :func:`default_accel`.
        append: extra kernel command line words (e.g. "ipv6.disable=1").
        extra_args: appended verbatim to the QEMU command line
            (e.g. ["-incoming", "defer"] for migration tests).
        run_as: run QEMU as this user (with its groups), as libvirt runs it
            as libvirt-qemu; the workdir is given to that user.
        maxmem: room for memory hot-plug (``-m MEM,slots=4,maxmem=MAXMEM``).
        qemu: the QEMU to run (default: the system's, see :class:`QemuBinary`).
        msix: give the NIC MSI-X vectors. Default: under KVM only, because
            QEMU 7.2 under TCG crashes with vhost-user and MSI-X (vectors=0).
        mem_path: back guest RAM with a file in this directory, e.g. a
            hugetlbfs mount (``memory-backend-file,mem-path=...``) instead of a
            memfd; preallocated, so that a short huge page pool fails the start
            instead of faulting later.
        machine: ``-machine`` value (e.g. "q35"); default QEMU's (pc).
        platform_args: placed before the NIC (which may name what they make):
            a machine type, a vIOMMU, a PCIe root port for ``bus=``.
        """
        if queues < 1:
            raise ValueError("queues must be >= 1")
        self.name = name
        self.image = image
        self.socket_path = Path(socket_path) if socket_path is not None else None
        self.server = server
        self.mac = mac or _mac_for(name)
        self.ip = ip
        self.queues = queues
        self.smp = smp if smp is not None else max(1, queues)
        self.mem = mem
        self.device_props = dict(device_props or {})
        self.netdev_props = dict(netdev_props or {})
        self.share = share
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"vsguest-{name}-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.accel = accel or default_accel(image)
        self.append = append
        self.extra_args = list(extra_args)
        self.run_as = run_as
        self.maxmem = maxmem
        self.qemu = qemu or QemuBinary()
        self.msix = msix
        self.mem_path = Path(mem_path) if mem_path is not None else None
        self.machine = machine
        self.platform_args = list(platform_args)

        self.serial_log_path = self.workdir / f"{name}.serial.log"
        self.qemu_log_path = self.workdir / f"{name}.qemu.log"
        self.qmp_path = self._short_socket_path(self.workdir / f"{name}.qmp")

        self.proc: subprocess.Popen[bytes] | None = None
        self.booted = False
        #: Kernel console lines removed from command output, in arrival order.
        self.console_kernel_messages: list[str] = []
        self._qmp: QmpClient | None = None
        self._cond = threading.Condition()
        self._buf = ""  # serial output not yet consumed by run()/wait_*
        self._eof = False
        self._reader: threading.Thread | None = None
        self._serial_log: Any = None
        self._write_lock = threading.Lock()

    # ---------------------------------------------------------------- setup

    @staticmethod
    def _short_socket_path(path: Path) -> Path:
        # sun_path holds 108 bytes; pytest's tmp_path can be longer.
        if len(str(path)) < 100:
            return path
        return Path(tempfile.mkdtemp(prefix="vsqmp-")) / path.name

    def command_line(self) -> list[str]:
        """The full QEMU argv (also written at the top of the qemu log)."""
        kvm = self.accel == "kvm"
        share = "on" if self.share else "off"
        kernel_args = ["console=ttyS0", "panic=-1", "quiet", f"vs.name={self.name}"]
        if self.ip:
            kernel_args.append(f"vs.ip={self.ip}")
        if self.queues > 1:
            kernel_args.append(f"vs.queues={self.queues}")
        if self.append:
            kernel_args.append(self.append)
        argv = [
            *self.qemu.argv(),
            "-name", self.name,
            *(["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg,thread=multi"]),
            "-smp", str(self.smp),
            "-m", f"{self.mem},slots=4,maxmem={self.maxmem}" if self.maxmem else self.mem,
            # vhost-user needs the backend to mmap guest RAM: shared memfd (or file).
            "-object", self._memory_backend(share),
            "-numa", "node,memdev=mem",
            *(["-machine", self.machine] if self.machine else []),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-chardev", "stdio,id=ser0,signal=off",
            "-serial", "chardev:ser0",
            "-qmp", f"unix:{_qemu_opt_escape(self.qmp_path)},server=on,wait=off",
            "-kernel", str(self.image.kernel),
            "-initrd", str(self.image.initrd),
            "-append", " ".join(kernel_args),
        ]
        argv += self.platform_args
        if self.socket_path is not None:
            role = "server=on,wait=off" if self.server else self.qemu.reconnect_option()
            path = _qemu_opt_escape(self.socket_path)
            argv += ["-chardev", f"socket,id=vhu0,path={path},{role}"]
            netdev: dict[str, str | int | bool] = {"queues": self.queues}
            netdev.update(self.netdev_props)
            argv += ["-netdev", ",".join(
                ["vhost-user", "id=net0", "chardev=vhu0"]
                + [f"{k}={_qemu_value(v)}" for k, v in netdev.items()]
            )]
            # MSI-X with vhost-user crashes QEMU 7.2 under TCG; INTx works.
            msix = kvm if self.msix is None else self.msix
            props: dict[str, str | int | bool] = {
                "mac": self.mac,
                "vectors": 2 * self.queues + 2 if msix else 0,
            }
            if self.queues > 1:
                props["mq"] = True
            props.update(self.device_props)
            argv += ["-device", ",".join(
                ["virtio-net-pci", "netdev=net0"]
                + [f"{k}={_qemu_value(v)}" for k, v in props.items()]
            )]
        argv += self.extra_args
        return argv

    def _memory_backend(self, share: str) -> str:
        if self.mem_path is None:
            return f"memory-backend-memfd,id=mem,size={self.mem},share={share}"
        path = _qemu_opt_escape(self.mem_path)
        return f"memory-backend-file,id=mem,size={self.mem},mem-path={path},share={share},prealloc=on"

    def start(self) -> QemuGuest:
        """Launch QEMU. Returns immediately; see :meth:`wait_booted`."""
        if self.proc is not None:
            raise GuestError(f"{self.name}: already started")
        argv = self.command_line()
        self.qmp_path.unlink(missing_ok=True)
        qemu_log = open(self.qemu_log_path, "wb")  # noqa: SIM115 - handed to the child
        qemu_log.write(("# " + shlex.join(argv) + "\n").encode())
        qemu_log.flush()
        # Kept open for the reader thread until stop().
        self._serial_log = open(  # noqa: SIM115
            self.serial_log_path, "w", encoding="utf-8", errors="replace"
        )
        as_user: dict[str, Any] = {}
        if self.run_as is not None:
            pw = pwd.getpwnam(self.run_as)
            as_user = {"user": pw.pw_uid, "group": pw.pw_gid,
                       "extra_groups": os.getgrouplist(self.run_as, pw.pw_gid)}
            for path in (self.workdir, self.qmp_path.parent):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=qemu_log,
                cwd=self.workdir,
                preexec_fn=_set_pdeathsig,
                env=self.qemu.environ(),
                **as_user,
            )
        finally:
            qemu_log.close()  # the child holds its own descriptor
        _live_guests.add(self)
        self._reader = threading.Thread(
            target=self._read_serial, name=f"serial-{self.name}", daemon=True
        )
        self._reader.start()
        return self

    def _read_serial(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            # Per-chunk decoding may split a multi-byte character; the guest
            # prints ASCII, so a rare replacement character is acceptable.
            text = chunk.decode("utf-8", errors="replace").replace("\r", "")
            log = self._serial_log
            if log is not None and not log.closed:
                log.write(text)
                log.flush()
            with self._cond:
                self._buf += text
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    # ---------------------------------------------------------- diagnostics

    def serial_tail(self, chars: int = 3000) -> str:
        """Last ``chars`` characters of the serial log (for error messages)."""
        try:
            text = self.serial_log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:]

    def qemu_log_tail(self, chars: int = 2000) -> str:
        try:
            return self.qemu_log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _diagnostics(self) -> str:
        rc = self.proc.poll() if self.proc else None
        state = "running" if rc is None else f"exited rc={rc}"
        return (
            f"\n--- QEMU {self.name} ({state}); logs in {self.workdir} ---"
            f"\n--- serial tail ---\n{self.serial_tail()}"
            f"\n--- qemu stderr tail ---\n{self.qemu_log_tail()}"
        )

    # ----------------------------------------------------------- waiting

    def _wait_for(self, pattern: re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
        """Wait until ``pattern`` matches the unconsumed serial output."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = pattern.search(self._buf)
                if m:
                    return m
                if self._eof:
                    raise GuestBootError(
                        f"{self.name}: QEMU exited while waiting for {what}" + self._diagnostics()
                    )
                panic = _PANIC_RE.search(self._buf)
                if panic:
                    raise GuestBootError(f"{self.name}: {panic.group(0)}" + self._diagnostics())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GuestTimeout(
                        f"{self.name}: no {what} after {timeout:.0f} s" + self._diagnostics()
                    )
                self._cond.wait(min(remaining, 1.0))

    def _consume(self, upto: int) -> str:
        """Drop and return the first ``upto`` characters of the buffer (lock held)."""
        consumed, self._buf = self._buf[:upto], self._buf[upto:]
        return consumed

    def wait_booted(self, timeout: float = 180.0) -> float:
        """Wait for the shell prompt marker; return the guest uptime at that point.

        Raises GuestBootError if /init reported an error (module load, eth0
        missing, ``ethtool -L`` failure) or the kernel panicked.
        """
        if self.proc is None:
            self.start()
        if self.booted:
            return 0.0
        m = self._wait_for(
            re.compile(re.escape(BOOT_MARKER) + r" (\S+) ([\d.]+)\n"), timeout, "boot marker"
        )
        with self._cond:
            boot_text = self._consume(m.end())
        errors = [line for line in boot_text.splitlines() if INIT_ERROR_MARKER in line]
        if errors:
            raise GuestBootError(f"{self.name}: /init failed: {errors}" + self._diagnostics())
        self.booted = True
        return float(m.group(2))

    # ----------------------------------------------------------- commands

    def _write(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        with self._write_lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError) as exc:
                raise GuestError(f"{self.name}: QEMU stdin closed" + self._diagnostics()) from exc

    def run(
        self, cmd: str, timeout: float = 120.0, check: bool = False, strip_kernel: bool = True
    ) -> tuple[int, str]:
        """Run ``cmd`` with the guest's /bin/sh; return (exit status, output).

        Output is stdout and stderr combined. With ``strip_kernel`` (default),
        whole lines that look like kernel console messages ("[  1.23] ...")
        are moved to :attr:`console_kernel_messages`; pass False for commands
        that print such lines themselves (dmesg; or use :meth:`dmesg`). A
        kernel message printed in the middle of an output line cannot be
        separated and stays in the output. On timeout the
        command is interrupted with ^C and GuestTimeout is raised; the guest
        stays usable. With ``check=True`` a non-zero status raises
        GuestCommandError.
        """
        if not self.booted:
            self.wait_booted()
        token = secrets.token_hex(8)
        encoded = base64.b64encode(cmd.encode()).decode()
        if len(encoded) <= _MAX_LINE_B64:
            lines = [f"vsrun {token} {encoded}\n"]
        else:
            lines = [
                f"vsput {token} {encoded[i:i + _MAX_LINE_B64]}\n"
                for i in range(0, len(encoded), _MAX_LINE_B64)
            ] + [f"vsrunf {token}\n"]
        self._write("".join(lines).encode())

        end_re = re.compile(rf"\nVS-END-{token} (\d+)\n")
        try:
            m = self._wait_for(end_re, timeout, f"end of command {cmd[:80]!r}")
        except GuestTimeout:
            # ^C interrupts the subshell (the shell has a controlling tty);
            # later calls use other tokens, so stale output is harmless.
            self._write(b"\x03")
            raise
        with self._cond:
            text = self._consume(m.end())
        begin = f"VS-BEGIN-{token}\n"
        start = text.find(begin)
        if start < 0:
            raise GuestError(
                f"{self.name}: lost begin marker of {cmd[:80]!r}" + self._diagnostics()
            )
        rc = int(m.group(1))
        output = text[start + len(begin):m.start()]
        if strip_kernel:
            output = self._strip_kernel_lines(output)
        if check and rc != 0:
            raise GuestCommandError(
                f"{self.name}: {cmd!r} exited {rc}:\n{output}", rc, output
            )
        return rc, output

    def check_output(self, cmd: str, timeout: float = 120.0) -> str:
        """Run ``cmd``; return its output or raise GuestCommandError."""
        return self.run(cmd, timeout=timeout, check=True)[1]

    def _strip_kernel_lines(self, text: str) -> str:
        """The command's output without the kernel's console messages; they
        go to console_kernel_messages. A message that began in the middle of
        a line of output is cut out of it: the output's line goes on after
        the message's newline."""
        kept = []
        for line in text.splitlines(keepends=True):
            if _PRINTK_LINE_RE.match(line):
                self.console_kernel_messages.append(line.rstrip("\n"))
                continue
            m = _PRINTK_ANYWHERE_RE.search(line)
            if m is not None:
                self.console_kernel_messages.append(line[m.start():].rstrip("\n"))
                line = line[:m.start()]
            kept.append(line)
        return "".join(kept)

    # ----------------------------------------------------------- helpers

    def ping(
        self, addr: str, count: int = 5, interval: float = 0.2, size: int | None = None,
        timeout: float | None = None,
    ) -> PingResult:
        """Ping ``addr`` from the guest with busybox ping; parse its summary.

        Packet loss is reported, not raised: the caller decides what is
        acceptable. Raises GuestCommandError only when no summary is printed
        (e.g. "Network is unreachable").
        """
        size_opt = f" -s {size}" if size is not None else ""
        # -W: wait for late replies after the last request (TCG guests are slow).
        cmd = f"ping -c {count} -i {interval} -W 5{size_opt} {shlex.quote(addr)}"
        budget = timeout if timeout is not None else count * interval + 60
        rc, out = self.run(cmd, timeout=budget)
        stats = re.search(
            r"(\d+) packets transmitted, (\d+) packets received"
            r"(?:, \+\d+ duplicates)?, ([\d.]+)% packet loss",
            out,
        )
        if not stats:
            raise GuestCommandError(f"{self.name}: {cmd!r} printed no summary:\n{out}", rc, out)
        rtt = re.search(r"round-trip min/avg/max = [\d.]+/([\d.]+)/[\d.]+ ms", out)
        return PingResult(
            sent=int(stats.group(1)),
            received=int(stats.group(2)),
            loss_pct=float(stats.group(3)),
            avg_rtt_ms=float(rtt.group(1)) if rtt else None,
        )

    def ethtool_stats(self, iface: str = "eth0") -> dict[str, int]:
        """``ethtool -S`` counters, e.g. {"rx_queue_1_packets": 12, ...}."""
        out = self.check_output(f"ethtool -S {shlex.quote(iface)}")
        stats: dict[str, int] = {}
        for line in out.splitlines():
            m = re.match(r"\s+([\w.\-\[\]]+):\s+(-?\d+)\s*$", line)
            if m:
                stats[m.group(1)] = int(m.group(2))
        return stats

    def iperf3_server(self, port: int = 5201) -> None:
        """Start ``iperf3 -s -D`` in the guest and wait until it listens."""
        self.check_output(f"iperf3 -s -D -p {port} --logfile /tmp/iperf3-server-{port}.log")
        # -D returns before the socket listens; poll so a client can't race it.
        self.check_output(
            f"i=0; while ! netstat -ltn | grep -q ':{port} '; do "
            f"i=$((i+1)); [ $i -gt 300 ] && {{ cat /tmp/iperf3-server-{port}.log; exit 1; }}; "
            f"usleep 100000; done"
        )

    def iperf3_client(
        self,
        addr: str,
        seconds: int = 5,
        parallel: int = 1,
        *,
        port: int = 5201,
        reverse: bool = False,
        udp: bool = False,
        bitrate: str | None = None,
        cpu: int | None = None,
        extra: str = "",
        timeout: float | None = None,
    ) -> IperfResult:
        """Run an iperf3 client to ``addr``; parse its JSON summary.

        cpu: pin the client to one vCPU with taskset (XPS maps vCPU c to TX
        queue c, so this chooses the TX queue for multiqueue tests).
        """
        opts = [f"-c {shlex.quote(addr)}", f"-p {port}", f"-t {seconds}", f"-P {parallel}",
                "-J", "-i 0"]  # -i 0: no per-second intervals, keeps the JSON small
        if reverse:
            opts.append("-R")
        if udp:
            opts.append("-u")
        if bitrate:
            opts.append(f"-b {bitrate}")
        if extra:
            opts.append(extra)
        prefix = f"taskset -c {cpu} " if cpu is not None else ""
        cmd = prefix + "iperf3 " + " ".join(opts)
        rc, out = self.run(cmd, timeout=timeout if timeout is not None else seconds + 120)
        first, last = out.find("{"), out.rfind("}")
        try:
            data: dict[str, Any] = json.loads(out[first:last + 1]) if first >= 0 else {}
        except ValueError:
            data = {}
        if rc != 0 or not data or "error" in data:
            err = data.get("error", "") if data else ""
            raise GuestCommandError(f"{self.name}: {cmd!r} failed (rc={rc}) {err}\n{out}", rc, out)
        end = data["end"]
        if udp:
            s = end["sum"]
            lost = float(s.get("lost_percent", 0))
            return IperfResult(
                sent_bps=float(s["bits_per_second"]),
                received_bps=float(s["bits_per_second"]) * (1 - lost / 100),
                seconds=float(s["seconds"]), retransmits=None, lost_pct=lost, raw=data,
            )
        sent, received = end["sum_sent"], end["sum_received"]
        return IperfResult(
            sent_bps=float(sent["bits_per_second"]),
            received_bps=float(received["bits_per_second"]),
            seconds=float(received["seconds"]),
            retransmits=sent.get("retransmits"),
            lost_pct=None,
            raw=data,
        )

    def dmesg(self) -> list[str]:
        """The guest kernel log, one string per line."""
        return self.run("dmesg", check=True, strip_kernel=False)[1].splitlines()

    def kernel_errors(self) -> list[str]:
        """virtio/networking error lines from the guest's dmesg and console."""
        lines = [ln for ln in self.dmesg() if KERNEL_ERROR_RE.search(ln)]
        # Console copies of the same messages are also in dmesg; add the rest.
        lines += [ln for ln in self.console_kernel_messages
                  if KERNEL_ERROR_RE.search(ln) and ln not in lines]
        return lines

    def assert_no_kernel_errors(self) -> None:
        errors = self.kernel_errors()
        if errors:
            raise GuestError(f"{self.name}: kernel reported errors:\n" + "\n".join(errors))

    # ----------------------------------------------------------- QMP

    def qmp(self, cmd: str, timeout: float = 60.0, **args: Any) -> Any:
        """Execute a QMP command (connecting on first use); return its result."""
        if self.proc is None:
            raise GuestError(f"{self.name}: not started")
        if self._qmp is None:
            self._qmp = QmpClient(self.qmp_path, timeout=timeout)
        return self._qmp.command(cmd, timeout=timeout, **args)

    def qmp_wait_event(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for a QMP event (e.g. "MIGRATION", "DEVICE_DELETED")."""
        if self._qmp is None:
            self.qmp("query-status")
        assert self._qmp is not None
        return self._qmp.wait_event(name, timeout=timeout)

    # ----------------------------------------------------------- teardown

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop QEMU (QMP quit, then SIGTERM, then SIGKILL) and reap it.

        Idempotent; returns QEMU's exit status (None if never started).
        The guest holds no disk state, so there is nothing to shut down
        gracefully inside it.
        """
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            quit_sent = False
            try:
                if self._qmp is None:
                    self._qmp = QmpClient(self.qmp_path, timeout=min(timeout, 2.0))
                self._qmp.command("quit", timeout=min(timeout, 2.0))
                quit_sent = True
            except (QmpError, OSError, ValueError):
                pass  # QEMU may be blocked (e.g. waiting for a backend)
            if not (quit_sent and self._wait_exit(proc, timeout)):
                proc.terminate()
                if not self._wait_exit(proc, timeout):
                    proc.kill()
        rc = proc.wait()  # always reap: no zombie even after SIGKILL
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        if proc.stdout is not None:
            proc.stdout.close()
        if self._serial_log is not None:
            self._serial_log.close()
            self._serial_log = None
        _live_guests.discard(self)
        self.booted = False
        return rc

    @staticmethod
    def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def __enter__(self) -> QemuGuest:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"QemuGuest({self.name!r}, pid={pid}, accel={self.accel}, queues={self.queues})"
