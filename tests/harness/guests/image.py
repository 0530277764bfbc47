"""Build the guest kernel + initramfs used by the QEMU interop tests.

The guest is Debian's ``linux-image-cloud-amd64`` kernel (fetched with
``apt-get download`` and unpacked with ``dpkg -x``; nothing is installed and
/boot is untouched) plus a small gzip'd cpio initramfs holding busybox-static,
the virtio-net modules, iperf3 and ethtool with their shared libraries, and an
``/init`` script that configures eth0 from ``vs.*`` kernel command line
parameters and then runs an interactive shell on the serial console.

The cpio archive is written in Python ("newc" format), which also lets it hold
device nodes (``/dev/console``) without needing root or the ``cpio`` tool.

Everything is cached in ``cache_dir``: the kernel is downloaded only when no
unpacked kernel is present, and the initramfs is rebuilt only when it is
missing or its recipe (init script, module list, host binaries) changed. A
stamp file written last marks a complete build; a lock file serialises
concurrent builders (e.g. pytest-xdist workers).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "GuestImage",
    "ImageBuildError",
    "QEMU10_VERSION",
    "build_image",
    "fetch_qemu10",
    "default_cache_dir",
    "KERNEL_METAPACKAGE",
    "MODULE_LOAD_ORDER",
]

#: Debian metapackage whose dependency names the real versioned kernel package.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"

#: virtio is modular in Debian's kernels and an unpacked package has no
#: modules.dep, so the load order is fixed here (from each module's
#: ``modinfo depends=``).
MODULE_LOAD_ORDER: tuple[str, ...] = (
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    # 802.1Q VLAN interfaces (a guest on a trunk port: tests/test_vlan_guests.py)
    "llc",
    "stp",
    "garp",
    "mrp",
    "8021q",
)

#: Host binaries copied (with their shared libraries) into the initramfs.
#: busybox-static has no ethtool, and its ping/ip/etc. cover the rest.
HOST_BINARIES: tuple[str, ...] = ("/usr/bin/iperf3", "/usr/sbin/ethtool")
BUSYBOX = "/bin/busybox"

#: Bump to force a rebuild of every cached initramfs when the layout changes in
#: a way the recipe hash would not notice.
IMAGE_FORMAT_VERSION = 1

# Markers printed by the guest; qemu.py waits for / checks them.
BOOT_MARKER = "VS-GUEST-BOOTED"
INIT_ERROR_MARKER = "VS-INIT-ERROR"

# The guest's PID 1. Kept POSIX/busybox-ash compatible. Parameters arrive as
# ``vs.NAME=VALUE`` words on the kernel command line; words containing a dot
# are not passed to init by the kernel, so they are read from /proc/cmdline.
INIT_SCRIPT = r"""#!/bin/sh
# vswitch test guest: PID 1.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm

fail() { echo "@INIT_ERROR@: $*"; }

# vs_param NAME: value of vs.NAME=VALUE from the kernel command line.
vs_param() {
    for w in $(cat /proc/cmdline); do
        case "$w" in "vs.$1="*) echo "${w#vs.$1=}"; return 0;; esac
    done
    return 1
}

NAME=$(vs_param name) || NAME=guest
IP=$(vs_param ip) || IP=
QUEUES=$(vs_param queues) || QUEUES=1
hostname "$NAME"

for m in @MODULES@; do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done
ip link set lo up

if [ -n "$IP" ]; then
    # virtio_net registers eth0 during probe, normally before insmod returns;
    # allow a few seconds anyway on a loaded host.
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do
        usleep 50000; i=$((i + 1))
    done
    if [ -e /sys/class/net/eth0 ]; then
        # virtio_net enables min(queues, vCPUs) pairs by itself; be explicit.
        if [ "$QUEUES" -gt 1 ]; then
            ethtool -L eth0 combined "$QUEUES" || fail "ethtool -L eth0 combined $QUEUES"
        fi
        ip addr add "$IP" dev eth0 || fail "ip addr add $IP"
        ip link set eth0 up || fail "ip link set eth0 up"
    else
        fail "eth0 did not appear"
    fi
fi

# busybox's line editor falls back to a plain, non-echoing line read when the
# tty has ICANON without ECHO, so the host sees only command output.
stty -echo
# ENV is read by every interactive ash: it defines the run helpers and prints
# the boot marker once the shell is actually reading the console.
export ENV=/etc/vsrc
while :; do
    # cttyhack gives the shell a controlling tty, so ^C from the host
    # interrupts a stuck foreground command.
    setsid cttyhack sh
    echo "@INIT_ERROR@: shell exited, respawning"
    sleep 1
done
"""

# Sourced by each interactive shell (via $ENV). The host sends one line per
# command: ``vsrun TOKEN BASE64`` (or vsput chunks + ``vsrunf TOKEN`` for long
# commands). Its stdin is /dev/null so it cannot swallow the next command line.
# The
# markers are assembled by printf, so an echoed command line never matches.
# The command runs in a subshell so that `exit`, `set -e` or a failing `cd`
# cannot kill or alter the interactive shell itself.
VSRC_SCRIPT = r"""# vswitch guest shell helpers
PS1='vs# '
vsexec() {
    printf '\n%s-%s\n' VS-BEGIN "$1"
    ( eval "$2" ) </dev/null
    printf '\n%s-%s %s\n' VS-END "$1" "$?"
}
vsrun() { vsexec "$1" "$(echo "$2" | base64 -d)"; }
vsput() { printf '%s' "$2" >> "/tmp/.vscmd-$1"; }
vsrunf() {
    __vs_c=$(base64 -d "/tmp/.vscmd-$1"); rm -f "/tmp/.vscmd-$1"
    vsexec "$1" "$__vs_c"
}
echo "@BOOT_MARKER@ $(hostname) $(cut -d' ' -f1 /proc/uptime)"
"""


class ImageBuildError(RuntimeError):
    """The guest image could not be built (download, unpack or packing)."""


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: pass ``kernel`` to ``-kernel`` and ``initrd`` to ``-initrd``."""

    kernel: Path
    initrd: Path
    kernel_release: str


def default_cache_dir() -> Path:
    """Cache location shared by test runs: $VSWITCH_GUEST_CACHE or /var/tmp.

    /var/tmp survives reboots and keeps the ~30 MB download out of the repo.
    """
    env = os.environ.get("VSWITCH_GUEST_CACHE")
    return Path(env) if env else Path("/var/tmp/vswitch-guest-image")


# --------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------


def build_image(cache_dir: Path) -> GuestImage:
    """Return the cached guest image in ``cache_dir``, building what is missing.

    Idempotent: a second call with an up-to-date cache only reads two small
    stamp files and stats the host binaries.
    """
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".lock"):
        kernel_dir, release = _ensure_kernel(cache_dir)
        initrd = _ensure_initramfs(cache_dir, kernel_dir, release)
        return GuestImage(kernel=kernel_dir / "vmlinuz", initrd=initrd, kernel_release=release)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------
# kernel: apt-get download + dpkg -x, pruned to vmlinuz and the modules we load
# --------------------------------------------------------------------------

_KERNEL_STAMP = "kernel.stamp"


def _ensure_kernel(cache_dir: Path) -> tuple[Path, str]:
    """Return (dir holding vmlinuz + modules/, kernel release)."""
    kernel_dir = cache_dir / "kernel"
    stamp = cache_dir / _KERNEL_STAMP
    if stamp.exists():
        try:
            info = json.loads(stamp.read_text())
            release = str(info["release"])
            if (kernel_dir / "vmlinuz").exists() and all(
                (kernel_dir / "modules" / f"{m}.ko").exists() for m in MODULE_LOAD_ORDER
            ):
                return kernel_dir, release
        except (ValueError, KeyError):
            pass  # corrupt stamp: rebuild below

    package = _resolve_kernel_package()
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="kernel-build-") as tmp:
        tmpdir = Path(tmp)
        deb = _apt_download(package, tmpdir)
        root = tmpdir / "root"
        _check_run(["dpkg", "-x", str(deb), str(root)], f"dpkg -x {deb.name}")

        vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
        if len(vmlinuz) != 1:
            raise ImageBuildError(f"expected one vmlinuz in {deb.name}, found {vmlinuz}")
        release = vmlinuz[0].name.removeprefix("vmlinuz-")
        mod_root = root / "lib" / "modules" / release
        if not mod_root.is_dir():  # pragma: no cover - merged-/usr layout
            mod_root = root / "usr" / "lib" / "modules" / release

        new_dir = tmpdir / "kernel"
        (new_dir / "modules").mkdir(parents=True)
        shutil.copy2(vmlinuz[0], new_dir / "vmlinuz")
        for name in MODULE_LOAD_ORDER:
            src = _find_module(mod_root, name)
            # busybox insmod may lack xz/zstd support; store plain .ko files.
            (new_dir / "modules" / f"{name}.ko").write_bytes(_decompress_module(src))

        # Swap in the complete tree, then stamp: a crash leaves no stale stamp.
        stamp.unlink(missing_ok=True)
        if kernel_dir.exists():
            shutil.rmtree(kernel_dir)
        new_dir.rename(kernel_dir)
        # The initramfs embeds these modules: invalidate it with the kernel.
        (cache_dir / _IMAGE_STAMP).unlink(missing_ok=True)
        stamp.write_text(json.dumps({"package": package, "release": release, "deb": deb.name}))
    return kernel_dir, release


def _resolve_kernel_package() -> str:
    """linux-image-cloud-amd64 -> linux-image-6.1.0-NN-cloud-amd64 (candidate)."""
    out = _check_run(["apt-cache", "depends", KERNEL_METAPACKAGE], "apt-cache depends")
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise ImageBuildError(
        f"no linux-image dependency for {KERNEL_METAPACKAGE} in apt-cache output "
        f"(run apt-get update?):\n{out}"
    )


def _apt_download(package: str, dest: Path) -> Path:
    # apt's _apt sandbox user cannot write to root-owned temp dirs; downloading
    # as root is fine here (the .deb is only unpacked, never installed).
    _check_run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
        f"apt-get download {package}",
        cwd=dest,
    )
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise ImageBuildError(f"apt-get download {package} produced no .deb in {dest}")
    return debs[-1]


def _find_module(mod_root: Path, name: str) -> Path:
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        hits = sorted(mod_root.rglob(name + suffix))
        if hits:
            return hits[0]
    raise ImageBuildError(f"module {name} not found under {mod_root}")


def _decompress_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko"):
        return data
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        # No zstd in the 3.11 stdlib; use the zstd tool if the kernel needs it.
        if not shutil.which("zstd"):
            raise ImageBuildError(f"{path.name} is zstd-compressed and zstd is not installed")
        return subprocess.run(
            ["zstd", "-dc", str(path)], check=True, capture_output=True
        ).stdout
    raise ImageBuildError(f"unknown module format: {path}")


# --------------------------------------------------------------------------
# QEMU 10 beside the system's QEMU 7.2: Debian bookworm-backports, unpacked
# --------------------------------------------------------------------------

#: The suite QEMU 10 comes from; read through a private sources list, so the
#: host's apt configuration (/etc/apt) is neither read nor changed.
QEMU10_SOURCE = "deb http://deb.debian.org/debian bookworm-backports main"

#: The exact version fetched (and the cache key). Backports keeps only its
#: newest version: when this one is gone from the mirror, update the pin (or
#: set $VSWITCH_QEMU10_VERSION to what `apt-cache policy` reports).
QEMU10_VERSION = os.environ.get("VSWITCH_QEMU10_VERSION", "1:10.0.2+ds-2+deb13u1~bpo12+1")

#: The emulator, its shared part (modules, helpers) and its firmware/data
#: files. The libraries it links are all in Debian 12 already (ldd finds
#: each), and the BIOS and option ROMs come from the host's seabios and
#: ipxe-qemu, which the system QEMU depends on.
QEMU10_PACKAGES: tuple[str, ...] = ("qemu-system-x86", "qemu-system-common", "qemu-system-data")

_QEMU10_STAMP = "qemu10.stamp"


def fetch_qemu10(cache_dir: Path) -> Path:
    """Return the prefix holding QEMU 10 unpacked (``PREFIX/usr/bin/qemu-system-x86_64``).

    Downloaded (about 13 MB) and unpacked with ``dpkg -x`` into
    ``cache_dir/qemu10`` once; later calls only read the stamp. Nothing is
    installed. Run the binary with ``-L PREFIX/usr/share/qemu`` (see
    qemu.py's ``QemuBinary.from_prefix``).
    """
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    prefix = cache_dir / "qemu10"
    stamp = cache_dir / _QEMU10_STAMP
    with _locked(cache_dir / ".lock"):
        try:
            if (json.loads(stamp.read_text()).get("version") == QEMU10_VERSION
                    and (prefix / "usr/bin/qemu-system-x86_64").exists()):
                return prefix
        except (OSError, ValueError):
            pass  # no or corrupt stamp: fetch below

        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="qemu10-build-") as tmp:
            tmpdir = Path(tmp)
            sources = tmpdir / "sources.list"
            sources.write_text(QEMU10_SOURCE + "\n")
            lists = tmpdir / "lists"
            (lists / "partial").mkdir(parents=True)
            apt_opts = [
                "-q",
                "-o", f"Dir::Etc::SourceList={sources}",
                "-o", "Dir::Etc::SourceParts=/nonexistent",
                "-o", f"Dir::State::Lists={lists}",
                "-o", "APT::Sandbox::User=root",  # as in _apt_download
            ]
            _check_run(["apt-get", *apt_opts, "update"], "apt-get update (bookworm-backports)")
            debs_dir = tmpdir / "debs"
            debs_dir.mkdir()
            _check_run(
                ["apt-get", *apt_opts, "download",
                 *(f"{p}={QEMU10_VERSION}" for p in QEMU10_PACKAGES)],
                f"apt-get download QEMU {QEMU10_VERSION}",
                cwd=debs_dir,
            )
            root = tmpdir / "root"
            debs = sorted(debs_dir.glob("*.deb"))
            if len(debs) != len(QEMU10_PACKAGES):
                raise ImageBuildError(f"expected {len(QEMU10_PACKAGES)} .debs, got {debs}")
            for deb in debs:
                _check_run(["dpkg", "-x", str(deb), str(root)], f"dpkg -x {deb.name}")
            binary = root / "usr/bin/qemu-system-x86_64"
            missing = [line.strip() for line in
                       _check_run(["ldd", str(binary)], "ldd qemu-system-x86_64").splitlines()
                       if "not found" in line]
            if missing:
                raise ImageBuildError(f"QEMU {QEMU10_VERSION} needs libraries Debian 12 "
                                      f"lacks: {missing}")
            # Swap in the complete tree, then stamp: a crash leaves no stale stamp.
            stamp.unlink(missing_ok=True)
            if prefix.exists():
                shutil.rmtree(prefix)
            root.rename(prefix)
            stamp.write_text(json.dumps({"version": QEMU10_VERSION,
                                         "debs": [d.name for d in debs]}))
    return prefix


# --------------------------------------------------------------------------
# initramfs
# --------------------------------------------------------------------------

_IMAGE_STAMP = "initramfs.stamp"
_INITRD_NAME = "initramfs.cpio.gz"


def _render_init() -> tuple[str, str]:
    init = (
        INIT_SCRIPT.replace("@MODULES@", " ".join(MODULE_LOAD_ORDER))
        .replace("@INIT_ERROR@", INIT_ERROR_MARKER)
    )
    vsrc = VSRC_SCRIPT.replace("@BOOT_MARKER@", BOOT_MARKER)
    return init, vsrc


def _recipe_hash(release: str) -> str:
    """Everything the initramfs content depends on, cheaply (stat, not read)."""
    h = hashlib.sha256()
    init, vsrc = _render_init()
    h.update(f"{IMAGE_FORMAT_VERSION}\0{release}\0{init}\0{vsrc}\0".encode())
    for path in (BUSYBOX, *HOST_BINARIES):
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _ensure_initramfs(cache_dir: Path, kernel_dir: Path, release: str) -> Path:
    initrd = cache_dir / _INITRD_NAME
    stamp = cache_dir / _IMAGE_STAMP
    for tool in (BUSYBOX, *HOST_BINARIES):
        if not os.access(tool, os.X_OK):
            raise ImageBuildError(
                f"{tool} missing: apt-get install busybox-static iperf3 ethtool"
            )
    recipe = _recipe_hash(release)
    if initrd.exists() and stamp.exists() and stamp.read_text().strip() == recipe:
        return initrd

    stamp.unlink(missing_ok=True)
    data = _build_initramfs(kernel_dir / "modules")
    tmp = initrd.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(initrd)
    stamp.write_text(recipe + "\n")
    return initrd


def _build_initramfs(module_dir: Path) -> bytes:
    cpio = _CpioWriter()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "lib", "lib64", "lib/modules",
              "etc", "proc", "sys", "dev", "tmp", "root", "var", "run"):
        cpio.add_dir(d)
    # The kernel opens /dev/console for init's stdio before /init can mount
    # devtmpfs, so the node must exist in the archive itself.
    cpio.add_dev("dev/console", stat.S_IFCHR, 5, 1, 0o600)
    cpio.add_dev("dev/null", stat.S_IFCHR, 1, 3, 0o666)
    cpio.add_dev("dev/ttyS0", stat.S_IFCHR, 4, 64, 0o600)

    init, vsrc = _render_init()
    cpio.add_file("init", init.encode(), 0o755)
    cpio.add_file("etc/vsrc", vsrc.encode(), 0o644)
    cpio.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
    cpio.add_file("etc/group", b"root:x:0:\n", 0o644)

    # busybox-static plus a symlink per applet: symlinks cost a few bytes and
    # spare us guessing which applets tests will want.
    cpio.add_file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in sorted(set(applets)):
        if applet != "busybox":
            cpio.add_symlink(f"bin/{applet}", "busybox")

    # Dynamically linked host tools: the binary plus every library ldd lists
    # (and the dynamic loader), each at the path the loader will look for.
    libs: dict[str, Path] = {}
    for binary in HOST_BINARIES:
        cpio.add_file(binary.lstrip("/"), Path(binary).read_bytes(), 0o755)
        libs.update(_shared_libraries(binary))
    for guest_path, host_path in sorted(libs.items()):
        cpio.add_file(guest_path.lstrip("/"), host_path.read_bytes(), 0o755)

    for name in MODULE_LOAD_ORDER:
        cpio.add_file(f"lib/modules/{name}.ko", (module_dir / f"{name}.ko").read_bytes(), 0o644)

    # mtime=0: identical inputs give an identical archive.
    return gzip.compress(cpio.finish(), compresslevel=9, mtime=0)


def _shared_libraries(binary: str) -> dict[str, Path]:
    """Map guest path -> host file for every library ``ldd binary`` reports."""
    out = _check_run(["ldd", binary], f"ldd {binary}")
    libs: dict[str, Path] = {}
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
            target = line.split("=>", 1)[1].split("(")[0].strip()
            if not target:
                continue  # vdso: "linux-vdso.so.1 (0x...)" has no file
            if target == "not":
                raise ImageBuildError(f"ldd {binary}: missing library: {line}")
        elif line.startswith("/"):
            target = line.split("(")[0].strip()  # the dynamic loader
        else:
            continue
        # ldd prints the loader's search path (e.g. /lib/...); the real file
        # may live elsewhere (merged /usr), so copy its resolved contents.
        libs[target] = Path(os.path.realpath(target))
    return libs


def _check_run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageBuildError(
            f"{what} failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


class _CpioWriter:
    """Minimal writer for the cpio "newc" (SVR4, no CRC) format the kernel reads.

    Each entry is a 110-byte ASCII header (magic 070701 + 13 8-digit hex
    fields), the NUL-terminated name padded to 4 bytes, then the data padded
    to 4 bytes. Parent directories must precede their entries.
    """

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1,
               rdev: tuple[int, int] = (0, 0)) -> None:
        if name in self._names:
            raise ImageBuildError(f"duplicate cpio entry {name}")
        self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, nlink, 0, len(data),
            0, 0, rdev[0], rdev[1], len(encoded), 0,
        )
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._buf.write(header + encoded)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int) -> None:
        self._ensure_parents(name)
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._ensure_parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_dev(self, name: str, kind: int, major: int, minor: int, perm: int) -> None:
        self._entry(name, kind | perm, rdev=(major, minor))

    def _ensure_parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self._names:
                self.add_dir(parent)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        return self._buf.getvalue()
