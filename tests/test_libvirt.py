"""A guest started by a real libvirtd (9.0, Debian's) on a vswitch port.

libvirt runs QEMU as libvirt-qemu, so the port's socket carries that group
(`socket_group: libvirt-qemu`, mode 0660) and QEMU connects as a member of
it. The domain is the one the README documents: `<interface
type='vhostuser'>` with `mode='client'` (QEMU connects) and reconnect,
guest RAM a shared memfd, the harness's kernel and initramfs as a direct
kernel boot, and, under TCG, `vectors=0` on the NIC through
`<qemu:override>` (QEMU 7.2 crashes with vhost-user and MSI-X under TCG: a
domain without it ends "shutting down, reason=crashed" as soon as the guest
driver starts). A harness QEMU guest on a second port pings it.

No systemd: the test starts `virtlogd -d` and `libvirtd -d` itself when
none answers, and stops what it started (by the pid files it asked for).
`make test` installs libvirt without starting it (Makefile LIBVIRT_DEBS).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.qemu

URI = "qemu:///system"
DOMAIN = "vswitch-test-libvirt"
QEMU_USER = "libvirt-qemu"
IP_LV, IP_A = "10.0.7.2", "10.0.7.1"
MAC_LV, MAC_A = "52:54:00:00:07:02", "52:54:00:00:07:01"
LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")
VIRTLOGD_SOCK = Path("/run/libvirt/virtlogd-sock")
BOOT_TIMEOUT = 120

# The README's libvirt domain, filled in: TCG (type='qemu'), direct kernel boot.
DOMAIN_XML = """\
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet vs.name=lv vs.ip={ip}/24</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <interface type='vhostuser'>
      <alias name='ua-net0'/>
      <mac address='{mac}'/>
      <source type='unix' path={socket} mode='client'>
        <reconnect enabled='yes' timeout='1'/>
      </source>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path={serial}/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <qemu:override>
    <qemu:device alias='ua-net0'>
      <qemu:frontend>
        <qemu:property name='vectors' type='unsigned' value='0'/>
      </qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
"""


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(2)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def virsh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True,
                          timeout=timeout)


class Libvirt:
    """virtlogd and libvirtd as daemons of this test, unless already running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[tuple[str, Path]] = []     # (name, its pid file)

    def _start(self, name: str, sock: Path) -> None:
        if _answers(sock):
            return
        pidfile = self.workdir / f"{name}.pid"
        subprocess.run([name, "-d", "--pid-file", str(pidfile)], check=True, timeout=30)
        self.started.append((name, pidfile))
        deadline = time.monotonic() + 30
        while not _answers(sock):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} -d: {sock} does not answer after 30 s")
            time.sleep(0.1)

    def start(self) -> Libvirt:
        self._start("virtlogd", VIRTLOGD_SOCK)
        self._start("libvirtd", LIBVIRT_SOCK)
        deadline = time.monotonic() + 30
        while (out := virsh("version")).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"libvirtd does not answer: {out.stderr}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        for name, pidfile in reversed(self.started):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        self.started.clear()


def _wait_file(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if text in path.read_text(errors="replace"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            tail = path.read_text(errors="replace")[-2000:] if path.exists() else "(no file)"
            raise TimeoutError(f"{path}: no {text!r} after {timeout:.0f} s:\n{tail}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def libvirt_topology(image):
    for tool in ("libvirtd", "virtlogd", "virsh"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make deps-libvirt installs libvirt)")
    try:
        gid = grp.getgrnam(QEMU_USER).gr_gid
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        pytest.skip(f"no {QEMU_USER} user or group (libvirt-daemon-system creates them)")
    # Outside pytest's tmp dirs (mode 0700): QEMU, run as libvirt-qemu, must
    # reach its kernel, initramfs, serial log and socket.
    base = Path(tempfile.mkdtemp(prefix="vswlibvirt-", dir="/tmp"))
    base.chmod(0o755)
    boot = base / "boot"
    boot.mkdir(mode=0o755)
    kernel, initrd = boot / "vmlinuz", boot / "initramfs.cpio.gz"
    shutil.copyfile(image.kernel, kernel)       # a copy: libvirt relabels what it boots
    shutil.copyfile(image.initrd, initrd)
    for f in (kernel, initrd):
        f.chmod(0o644)
    serial = base / "lv.serial.log"
    sw = Vswitchd(base / "switch", {
        "lv": {"type": "vhost-user", "socket_group": QEMU_USER, "socket_mode": 0o660},
        "a": {"type": "vhost-user"},
    }, runtime_dir=base / "run")
    lv = Libvirt(base)
    guest = None
    created = False
    try:
        sw.start()
        lv.start()
        virsh("destroy", DOMAIN)          # a leftover of an interrupted run
        xml = base / "domain.xml"
        xml.write_text(DOMAIN_XML.format(name=DOMAIN, kernel=kernel, initrd=initrd, ip=IP_LV,
                                         mac=MAC_LV, socket=quoteattr(sw.socket("lv")),
                                         serial=quoteattr(str(serial))))
        out = virsh("create", str(xml))
        assert out.returncode == 0, out.stderr
        created = True
        guest = QemuGuest("a", image, sw.socket("a"), mac=MAC_A, ip=f"{IP_A}/24",
                          workdir=base / "a").start()
        guest.wait_booted(BOOT_TIMEOUT)
        _wait_file(serial, "VS-GUEST-BOOTED lv", BOOT_TIMEOUT)
        sw.wait_port("lv", lambda p: p["state"] == "connected" and p["queues_enabled"] >= 1,
                     timeout=60, what="the libvirt guest connected")
        yield sw, guest, base, gid
    finally:
        if guest is not None:
            guest.stop()
        if created:
            virsh("destroy", DOMAIN)
        lv.stop()
        sw.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_libvirt_runs_qemu_as_libvirt_qemu_on_a_socket_of_that_group(libvirt_topology):
    sw, _, _, gid = libvirt_topology
    st = os.stat(sw.socket("lv"))
    assert (st.st_gid, st.st_mode & 0o777) == (gid, 0o660)
    pid = int(Path(f"/run/libvirt/qemu/{DOMAIN}.pid").read_text())
    with open(f"/proc/{pid}/status") as f:
        uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
    assert int(uid) == pwd.getpwnam(QEMU_USER).pw_uid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert '"vectors":0' in cmdline            # the <qemu:override> reached the device
    port = sw.port("lv")
    assert port["state"] == "connected" and "F_VERSION_1" in port["features"]


def test_libvirt_guest_and_harness_guest_ping_through_the_switch(libvirt_topology):
    sw, guest, _, _ = libvirt_topology
    r = guest.ping(IP_LV, count=10, interval=0.2, timeout=30)
    assert (r.sent, r.loss_pct) == (10, 0), r
    fdb = {e["mac"]: e["port"] for e in sw.ctl("fdb show")}
    assert fdb[MAC_LV] == "lv" and fdb[MAC_A] == "a"
    assert not sw.drops("lv") and not sw.drops("a")
