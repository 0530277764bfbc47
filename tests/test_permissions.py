"""Sockets the way libvirt needs them, under the service's capability set.

libvirt runs QEMU as an unprivileged user (libvirt-qemu); operators run
vswitchctl as members of an admin group. Here the daemon runs as root with
only the capabilities the unit file grants (CapabilityBoundingSet, read from
systemd/vswitchd.service), its vhost-user socket is group `vswtest-qemu`
mode 0660, its control socket group `vswtest-admin` mode 0660:

* a QEMU started as user `vswqemu`, a member of the socket group, connects and
  its guest's frames reach the switch;
* a user outside the socket group cannot connect to the vhost-user socket;
* `vswitchctl` works for a member of the admin group and is refused for a
  user outside it (exit 1, "Permission denied" on stderr).
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "vswitchd.service"
SOCKET_GROUP, ADMIN_GROUP = "vswtest-qemu", "vswtest-admin"
USERS = {"vswqemu": SOCKET_GROUP, "vswadmin": ADMIN_GROUP, "vswoutsider": None}
BOOT_TIMEOUT = 240


def ensure_group(name: str) -> int:
    subprocess.run(["groupadd", "-f", name], check=True)
    return grp.getgrnam(name).gr_gid


def ensure_user(name: str, group: str | None) -> int:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "-g", "nogroup", name], check=True)
    if group:
        subprocess.run(["usermod", "-a", "-G", group, name], check=True)
    return pwd.getpwnam(name).pw_uid


def unit_capabilities() -> list[str]:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    caps = unit["Service"]["CapabilityBoundingSet"].split()
    assert caps and all(c.startswith("CAP_") for c in caps), caps
    return caps


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    """Run argv as `user` with its groups, with the system Python (the
    test venv's interpreter lives under /root, which others cannot enter)."""
    pw = pwd.getpwnam(user)
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, cwd=REPO,
                          user=pw.pw_uid, group=pw.pw_gid,
                          extra_groups=os.getgrouplist(user, pw.pw_gid),
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


@pytest.fixture(scope="module")
def switch(tmp_path_factory):
    gids = {g: ensure_group(g) for g in (SOCKET_GROUP, ADMIN_GROUP)}
    for user, group in USERS.items():
        ensure_user(user, group)
    # Outside pytest's tmp dirs (mode 0700): QEMU's user must reach the socket.
    base = Path(tempfile.mkdtemp(prefix="vswperm-", dir="/tmp"))
    base.chmod(0o755)
    work = tmp_path_factory.mktemp("permissions")
    bounding = "-all," + ",".join("+" + c[4:].lower() for c in unit_capabilities())
    sw = Vswitchd(work / "switch", {
        "vm": {"type": "vhost-user", "socket_group": gids[SOCKET_GROUP], "socket_mode": 0o660},
    }, runtime_dir=base / "run", extra={"control": {"group": gids[ADMIN_GROUP]}},
        wrapper=["setpriv", "--bounding-set", bounding, "--inh-caps", "-all", "--"])
    sw.start()
    try:
        yield sw, base
    finally:
        sw.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_daemon_runs_with_only_the_units_capabilities(switch):
    sw, _ = switch
    status = Path(f"/proc/{sw.proc.pid}/status").read_text()
    bounding = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapBnd:")), 16)
    numbers = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_NET_ADMIN": 12}  # linux/capability.h
    want = sum(1 << numbers[c] for c in unit_capabilities())
    assert bounding == want, f"CapBnd {bounding:#x}, unit grants {want:#x}"


def test_socket_files_carry_the_configured_group_and_mode(switch):
    sw, _ = switch
    st = os.stat(sw.socket("vm"))
    assert (st.st_gid, st.st_mode & 0o777) == (grp.getgrnam(SOCKET_GROUP).gr_gid, 0o660)
    ctl = os.stat(sw.runtime_dir / "vswitchd.ctl")
    assert (ctl.st_gid, ctl.st_mode & 0o777) == (grp.getgrnam(ADMIN_GROUP).gr_gid, 0o660)


def test_control_socket_admits_the_admin_group_only(switch):
    sw, _ = switch
    ctl = [SYSTEM_PYTHON, "-m", "vswitch.cli", "--runtime-dir", str(sw.runtime_dir)]
    member = as_user("vswadmin", *ctl, "port", "list")
    assert member.returncode == 0, member.stderr
    assert member.stdout.split()[0] == "vm"
    outsider = as_user("vswoutsider", *ctl, "port", "list")
    assert outsider.returncode == 1 and "Permission denied" in outsider.stderr, outsider
    # QEMU's user may connect to its vhost-user socket, not administer the switch
    assert as_user("vswqemu", *ctl, "show").returncode == 1


def test_vhost_socket_refuses_a_user_outside_its_group(switch):
    sw, _ = switch
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n")
    assert as_user("vswoutsider", SYSTEM_PYTHON, "-c", probe, sw.socket("vm")).returncode == 13
    assert sw.port("vm")["connections"] == 0


@pytest.mark.qemu
def test_qemu_as_an_unprivileged_member_of_the_socket_group_connects(switch, image):
    sw, base = switch
    guest = QemuGuest("perm", image, sw.socket("vm"), server=False, ip="10.0.9.1/24",
                      workdir=base / "guest", run_as="vswqemu")
    guest.start()
    try:
        guest.wait_booted(BOOT_TIMEOUT)
        assert pwd.getpwuid(os.stat(f"/proc/{guest.proc.pid}").st_uid).pw_name == "vswqemu"
        port = sw.wait_port("vm", lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                            timeout=60, what="QEMU connected")
        assert "F_VERSION_1" in port["features"]
        guest.ping("10.0.9.2", count=2, interval=0.2)      # nobody answers: ARP goes out
        sw.wait_port("vm", lambda p: p["queues"][0]["tx"]["packets"] > 0, timeout=30,
                     what="frames from the guest")
    finally:
        guest.stop()
    print(f"QEMU ran as vswqemu (groups {os.getgrouplist('vswqemu', pwd.getpwnam('vswqemu').pw_gid)}), "
          f"python {sys.version.split()[0]}")
