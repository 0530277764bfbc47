"""vswitchd under a real systemd: the unit as an operator runs it.

A minimal Debian 12 (debootstrap, cached: tests/harness/container.py) boots
once for the module under systemd-nspawn; vswitch is installed into it as an
operator would (`make install` staged into the container's root, or the
Debian package of `make deb` with `apt install ./vswitch_*.deb` when
$VSWITCH_DEB names one or the tree has debian/; VSWITCH_DEB=staged
forces `make install`), and the tests drive it with
systemctl, in file order:

* `systemctl start` returns (active) only after READY=1: sockets bound;
* the hardening in force, read from inside: /proc/MAINPID/status, the
  daemon's mountinfo and /dev, a denied system call; what the container cannot
  enforce is printed as not verified (docs: README "Running as a service");
* `systemd-analyze security vswitchd` on the loaded unit;
* a testpmd virtio-user front-end on the host connects through the
  container's /run/vswitch (a bind mount) and frames cross;
* a TAP port created by the service;
* `systemctl reload`: a change applied in place, an invalid file refused
  while the old config runs on;
* a stalled worker: the watchdog pings stop, systemd restarts the service
  (a test drop-in shortens WatchdogSec), and the front-end is connected
  again without anyone touching it;
* `systemctl stop` removes the sockets and leaves the runtime directory.

The container shares the host's network namespace (the TAP appears on the
host) and the vswitchd control socket is reached from the host through the
bind-mounted runtime directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.harness.container import Container, build_rootfs, nspawn_available
from tests.harness.peers.testpmd import TestPmd, verify_delivery, virtio_user_vdev
from tests.harness.peers.testpmd import testpmd_available as have_testpmd
from vswitch.cli import request

REPO = Path(__file__).resolve().parents[1]
CONFIG = "/etc/vswitch/vswitch.yaml"
DROPIN = "/etc/systemd/system/vswitchd.service.d/50-test.conf"
# Where client-mode ports find the sockets front-ends on the host listen on
# (a bind mount; read-only for the service under ProtectSystem=strict, which
# is enough to connect).
FRONTENDS = "/var/lib/vswitch-test"
# The unit's own systemd-analyze rating, measured here on systemd 252 (2.4):
# the loaded unit must not do worse than test_systemd's offline bar.
SECURITY_SCORE_MAX = 2.5
# Test drop-in: the watchdog sooner than the unit's 30 s, so that a stalled
# worker is caught within seconds.
WATCHDOG_S = 4

pytestmark = [
    pytest.mark.root,
    pytest.mark.systemd,
    pytest.mark.skipif(os.geteuid() != 0, reason="boots a container: needs root"),
    pytest.mark.skipif(not nspawn_available(),
                       reason="needs debootstrap and systemd-nspawn (packages debootstrap, systemd-container)"),
    pytest.mark.skipif(not Path("/dev/net/tun").exists(), reason="needs /dev/net/tun"),
]

BASE_PORTS = {
    "vm1": {"type": "vhost-user", "mode": "server", "socket": "/run/vswitch/vm1.sock"},
    "vm2": {"type": "vhost-user", "mode": "server", "socket": "/run/vswitch/vm2.sock"},
}


def config_text(ports: dict) -> str:
    """A test system's config: the debug commands answer (debug: true), no
    metrics listener (the host's network namespace is shared: no port taken)."""
    return yaml.safe_dump({
        "version": 1,
        "runtime_dir": "/run/vswitch",
        "debug": True,
        "metrics": {"enabled": False},
        "defaults": {"queues": 1},
        "ports": ports,
        "datapath": {"workers": 1, "mode": "adaptive"},
    }, sort_keys=False)


@dataclass
class Appliance:
    c: Container
    runtime: Path        # the container's /run/vswitch, on the host
    frontends: Path      # the container's FRONTENDS, on the host
    work: Path
    installed: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def ctl(self, command: str, **args):
        reply = request(str(self.runtime / "vswitchd.ctl"), command, args)
        assert reply.get("ok"), reply
        return reply["result"]

    def write_config(self, ports: dict) -> None:
        self.c.path(CONFIG).write_text(config_text(ports))

    def state(self) -> dict[str, str]:
        return self.c.show("vswitchd", "ActiveState", "SubState", "MainPID", "NRestarts", "Result",
                           "ActiveEnterTimestampMonotonic", "ExecMainStartTimestampMonotonic")

    def main_pid(self) -> int:
        pid = int(self.state()["MainPID"])
        assert pid > 0, self.c.journal("vswitchd")
        return pid

    def ensure_running(self, ports: dict | None = None) -> None:
        if ports is not None:
            self.write_config(ports)
        if self.state()["ActiveState"] != "active":
            self.c.systemctl("start", "vswitchd", timeout=60)
        elif ports is not None:
            self.c.systemctl("reload", "vswitchd", timeout=60)

    def wait_port(self, name: str, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        info: dict = {}
        while time.monotonic() < deadline:
            try:
                info = self.ctl("port show", name=name)
                if predicate(info):
                    return info
            except (OSError, ValueError, AssertionError):
                pass     # the daemon is restarting
            time.sleep(0.2)
        raise AssertionError(f"port {name}: {what} not reached in {timeout}s: {info}\n"
                             f"{self.c.journal('vswitchd')}")


def find_deb() -> Path | None:
    """The package to install: $VSWITCH_DEB, or `make deb`'s output (built
    here when the tree has debian/)."""
    env = os.environ.get("VSWITCH_DEB")
    if env:
        return None if env == "staged" else Path(env)
    if not (REPO / "debian" / "control").exists():
        return None
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "deb"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"make deb failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    debs = sorted((REPO / "dist").glob("vswitch_*_amd64.deb"), key=lambda p: p.stat().st_mtime)
    assert debs, "make deb made no dist/vswitch_*_amd64.deb"
    return debs[-1]


def install_vswitch(c: Container, deb: Path | None) -> dict[str, str]:
    """Install as an operator would; returns what the tests check about it.
    The test config is put in place first: the package's conffile does not
    replace it (--force-confold, as answering "keep" to dpkg's question)."""
    c.path("/etc/vswitch").mkdir(parents=True, exist_ok=True)
    c.path(CONFIG).write_text(config_text(BASE_PORTS))
    if deb is not None:
        shutil.copy(deb, c.path(f"/root/{deb.name}"))
        # Its dependencies are in the container already: nothing is downloaded.
        c.run(["apt-get", "install", "-y",
               "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
               f"/root/{deb.name}"], timeout=300, input="")
        # postinst (dh_installsystemd) enabled and started the unit
        after = c.show("vswitchd", "ActiveState", "UnitFileState")
        return {"how": f"apt install ./{deb.name}", **after}
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "install", f"DESTDIR={c.root}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"make install failed:\n{proc.stdout}\n{proc.stderr}"
    c.systemctl("daemon-reload")
    return {"how": "make install DESTDIR=<container root>"}


@pytest.fixture(scope="module")
def deb() -> Path | None:
    return find_deb()


@pytest.fixture(scope="module")
def appliance(tmp_path_factory, deb):
    t0 = time.monotonic()
    rootfs = build_rootfs()
    t_rootfs = time.monotonic()
    work = tmp_path_factory.mktemp("appliance")
    runtime, frontends = work / "run-vswitch", work / "frontends"
    with Container(rootfs, work / "container", binds={runtime: "/run/vswitch", frontends: FRONTENDS}) as c:
        t_boot = time.monotonic()
        installed = install_vswitch(c, deb)
        t_install = time.monotonic()
        app = Appliance(c, runtime, frontends, work, installed)
        app.timings = {"rootfs": t_rootfs - t0, "boot": t_boot - t_rootfs, "install": t_install - t_boot}
        print(f"container: boot state {c.boot_state}; vswitch installed by {installed['how']}; "
              + ", ".join(f"{k} {v:.1f}s" for k, v in app.timings.items()))
        yield app
        c.systemctl("stop", "vswitchd", check=False, timeout=60)


# --- start ----------------------------------------------------------------------------

def test_start_reaches_active_only_after_ready(appliance):
    c = appliance.c
    c.systemctl("stop", "vswitchd", timeout=60)     # the package's postinst started it
    assert appliance.state()["ActiveState"] == "inactive"
    # Type=notify: `systemctl start` waits for READY=1 (TimeoutStartSec=30s)
    c.systemctl("start", "vswitchd", timeout=60)
    st = appliance.state()
    assert (st["ActiveState"], st["SubState"]) == ("active", "running"), c.journal("vswitchd")
    # ... which the daemon sends once every socket is bound: they are there
    # the moment start returns, and the control socket answers.
    for name in ("vm1.sock", "vm2.sock", "vswitchd.ctl"):
        assert (appliance.runtime / name).is_socket(), sorted(os.listdir(appliance.runtime))
    assert appliance.ctl("version")
    # "active" came after the start, not at the fork (as Type=simple would be)
    assert int(st["ActiveEnterTimestampMonotonic"]) > int(st["ExecMainStartTimestampMonotonic"])
    journal = c.journal("vswitchd")
    assert journal.index("vswitchd 0.") < journal.index("Started vswitchd.service"), journal


def test_an_invalid_file_fails_the_start_once_with_its_errors_and_no_restart_loop(appliance):
    """vswitchd exits 6 ("not configured") on an invalid file, and
    RestartPreventExitStatus=6 keeps systemd from restarting it: one try,
    the unit failed, the FILE:LINE:COL error in the journal."""
    c = appliance.c
    c.systemctl("stop", "vswitchd", timeout=60)
    c.systemctl("reset-failed", "vswitchd", check=False)
    restarts0 = int(appliance.state()["NRestarts"])
    try:
        c.path(CONFIG).write_text("ports:\n  vm1:\n    type: vhost-user\n    queues: 0\n")
        proc = c.systemctl("start", "vswitchd", timeout=60, check=False)
        assert proc.returncode != 0
        time.sleep(3)                        # RestartSec=1: a restart would have come by now
        st = c.show("vswitchd", "ActiveState", "Result", "NRestarts", "ExecMainStatus")
        assert st["ActiveState"] == "failed" and st["ExecMainStatus"] == "6", st
        assert int(st["NRestarts"]) == restarts0, st
        journal = c.journal("vswitchd", 40)
        assert f"{CONFIG}:4:" in journal and "queues" in journal, journal
    finally:
        c.systemctl("reset-failed", "vswitchd", check=False)
        appliance.ensure_running(BASE_PORTS)


# --- the sandbox, seen from inside -------------------------------------------------

CAP_BITS = {"cap_chown": 0, "cap_dac_override": 1, "cap_dac_read_search": 2, "cap_fowner": 3,
            "cap_kill": 5, "cap_setgid": 6, "cap_setuid": 7, "cap_net_bind_service": 10,
            "cap_net_admin": 12, "cap_net_raw": 13, "cap_ipc_lock": 14, "cap_sys_admin": 21}
# /dev under PrivateDevices=yes (systemd's pseudo devices) plus BindPaths=/dev/net/tun.
PRIVATE_DEVICES = {"null", "zero", "full", "random", "urandom", "tty", "net/tun", "pts/ptmx"}
# Hardening the container cannot enforce or this test cannot observe; printed,
# and listed in the README.
NOT_VERIFIED = {
    "DeviceAllow=/dev/net/tun rw, DevicePolicy=closed":
        "the cgroup v1 devices controller is mounted read-only in the container "
        "(the host's cgroup layout), so systemd cannot apply a device list",
    "RestrictAddressFamilies, MemoryDenyWriteExecute, RestrictRealtime, LockPersonality, "
    "ProtectClock, ProtectKernelModules, ProtectKernelLogs, SystemCallArchitectures":
        "seccomp filters in force (Seccomp: 2, several filters) but no probe of each "
        "from inside the daemon (seccomp-probe tries mount and unshare only)",
    "ProtectKernelTunables": "/sys and /proc/sys are read-only in the container already",
    "KeyringMode=private": "not observable from outside the process",
}


def mountinfo(c: Container, pid: int) -> dict[str, tuple[list[str], str, list[str]]]:
    """mount point -> (mount options, fs type, super options), the last mount wins."""
    mounts = {}
    for line in c.run(["cat", f"/proc/{pid}/mountinfo"]).stdout.splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        mounts[f[4]] = (f[5].split(","), r[0], r[2].split(","))
    return mounts


def test_hardening_in_force(appliance):
    c = appliance.c
    appliance.ensure_running()
    pid = appliance.main_pid()
    status = dict(line.split(":", 1) for line in c.run(["cat", f"/proc/{pid}/status"]).stdout.splitlines())
    status = {k: v.strip() for k, v in status.items()}
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    # the unit's filters and the daemon's own (vswitch/seccomp.py)
    assert int(status.get("Seccomp_filters", "2")) >= 2
    caps = c.show("vswitchd", "CapabilityBoundingSet")["CapabilityBoundingSet"].split()
    want = sum(1 << CAP_BITS[name] for name in caps)
    assert sorted(caps) == ["cap_chown", "cap_dac_override", "cap_net_admin"]
    assert int(status["CapBnd"], 16) == want, (status["CapBnd"], caps)
    assert int(status["CapEff"], 16) & ~want == 0
    assert status["Umask"] == "0027"

    mounts = mountinfo(c, pid)
    # ProtectSystem=strict: / and so /usr read-only, the runtime directory not
    usr = mounts.get("/usr") or mounts["/"]
    assert "ro" in usr[0], usr
    assert "rw" in mounts["/run/vswitch"][0], mounts["/run/vswitch"]
    # PrivateDevices=yes: a /dev of its own (tmpfs), holding only pseudo devices and the TUN device
    assert mounts["/dev"][1] == "tmpfs"
    # stat, not find's -type: /dev/net/tun is a bind mount over a file
    # systemd made, and readdir() reports that file's type
    listing = c.run(["find", f"/proc/{pid}/root/dev", "-mindepth", "1",
                     "-exec", "stat", "-c", "%F|%n", "{}", "+"]).stdout.splitlines()
    devs = [n for kind, _, n in (ln.partition("|") for ln in listing) if kind == "character special file"]
    # (terminals on the container's devpts, which the service shares, aside)
    names = {d.split("/root/dev/", 1)[1] for d in devs} - {f"pts/{n}" for n in range(64)}
    assert "net/tun" in names, names
    assert names <= PRIVATE_DEVICES, names
    # ... not the container's (which has a console)
    assert c.run(["test", "-c", "/dev/console"], check=False).returncode == 0
    assert "console" not in names
    # ProtectProc=invisible, ProcSubset=pid
    assert {"hidepid=invisible", "subset=pid"} <= set(mounts["/proc"][2]), mounts["/proc"]
    # PrivateTmp=yes, ProtectHome=yes
    assert "/tmp" in mounts and mounts["/tmp"][1] == "tmpfs"
    assert "/home" in mounts and "/root" in mounts
    # PrivateIPC=yes, ProtectHostname=yes, PrivateMounts=yes: namespaces of its own
    for ns in ("ipc", "uts", "mnt"):
        mine = c.run(["readlink", f"/proc/{pid}/ns/{ns}"]).stdout
        init = c.run(["readlink", f"/proc/1/ns/{ns}"]).stdout
        assert mine != init, ns
    # LimitNOFILE=524288, LimitMEMLOCK=8M: hard limits; systemd cannot raise
    # one past the container's own (its PID 1 inherits the host's)
    hard = {" ".join(line.split()[:3]): line.split()[4]
            for line in c.run(["cat", f"/proc/{pid}/limits"]).stdout.splitlines()[1:]}
    ceiling = {" ".join(line.split()[:3]): line.split()[4]
               for line in c.run(["cat", "/proc/1/limits"]).stdout.splitlines()[1:]}
    assert hard["Max locked memory"] == str(8 << 20), hard
    if ceiling["Max open files"] == "unlimited" or int(ceiling["Max open files"]) >= 524288:
        assert hard["Max open files"] == "524288", hard
    else:
        assert hard["Max open files"] == ceiling["Max open files"], (hard, ceiling)
        print(f"not verified: LimitNOFILE=524288: the container's PID 1 has a hard limit of "
              f"{ceiling['Max open files']} (the host's), which systemd cannot raise; the service got it")

    # a denied system call fails with EPERM (SystemCallFilter=, RestrictNamespaces=,
    # and the daemon's own filter)
    probe = appliance.ctl("debug seccomp-probe")
    assert probe["calls"] == {"mount": "EPERM", "unshare": "EPERM"}, probe

    # what could not be checked here, and why
    devices_cg = "/sys/fs/cgroup/devices/system.slice/vswitchd.service/devices.list"
    assert c.run(["test", "-e", devices_cg], check=False).returncode != 0, \
        "the service has a devices cgroup here: check DeviceAllow and take it out of NOT_VERIFIED"
    for option, why in NOT_VERIFIED.items():
        print(f"not verified: {option}: {why}")


def test_systemd_analyze_security_on_the_loaded_unit(appliance):
    out = appliance.c.run(["systemd-analyze", "security", "--no-pager", "vswitchd.service"]).stdout
    line = [ln for ln in out.splitlines() if "Overall exposure level for vswitchd.service" in ln]
    assert line, out
    score = float(line[0].split(":")[1].split()[0])
    print(f"systemd-analyze security vswitchd (loaded, in the container): {score}")
    assert score <= SECURITY_SCORE_MAX, out


# --- front-ends and ports --------------------------------------------------------------

@pytest.mark.dpdk
@pytest.mark.skipif(not have_testpmd(), reason="needs dpdk-testpmd")
def test_host_frontend_through_bind_mounted_runtime_dir(appliance):
    """testpmd's virtio-user on the host connects to the service's server
    sockets in the container's /run/vswitch and frames cross byte for byte."""
    appliance.ensure_running(BASE_PORTS)
    socks = [appliance.runtime / "vm1.sock", appliance.runtime / "vm2.sock"]

    def ready() -> None:
        for name in ("vm1", "vm2"):
            appliance.wait_port(name, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                                timeout=30, what="connected")

    result = verify_delivery(virtio_user_vdev(0, socks[0]), virtio_user_vdev(1, socks[1]), count=200,
                             workdir=appliance.work / "delivery", cpus=(0,), ready=ready)
    assert result.ok, result.describe()
    assert sum(result.sent.values()) == 200


def test_tap_port(appliance):
    """A TAP port the service creates appears on the host (shared network
    namespace) and carries what the kernel sends into it."""
    ifname = f"vswapp{os.getpid() % 10000}"
    ports = {**BASE_PORTS, "up": {"type": "tap", "ifname": ifname, "create": True}}
    appliance.ensure_running(ports)
    try:
        info = appliance.wait_port("up", lambda p: p["state"] == "up", timeout=15, what="up")
        assert Path("/sys/class/net", ifname).exists()
        before = sum(q["tx"]["packets"] for q in info["queues"])
        frame = bytes.fromhex("ffffffffffff" "020000000001" "88b5") + b"vswitch appliance".ljust(46, b"\0")
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((ifname, 0))
            for _ in range(5):
                s.send(frame)
        appliance.wait_port("up", lambda p: sum(q["tx"]["packets"] for q in p["queues"]) >= before + 5,
                            timeout=10, what="5 frames from the kernel")
    finally:
        appliance.write_config(BASE_PORTS)
        appliance.c.systemctl("reload", "vswitchd", timeout=60)
    assert not Path("/sys/class/net", ifname).exists()


# --- reload ------------------------------------------------------------------------------

def test_reload_in_place_and_invalid_file_refused(appliance):
    c = appliance.c
    appliance.ensure_running(BASE_PORTS)
    pid = appliance.main_pid()
    ports = {**BASE_PORTS, "vm3": {"type": "vhost-user", "mode": "server", "socket": "/run/vswitch/vm3.sock"}}
    appliance.write_config(ports)
    c.systemctl("reload", "vswitchd", timeout=60)
    assert (appliance.runtime / "vm3.sock").is_socket()
    assert appliance.main_pid() == pid                       # in place: the same process
    assert appliance.state()["ActiveState"] == "active"

    c.path(CONFIG).write_text("version: 1\nports:\n  vm1:\n    type: vhost-user\n    queues: 0\n")
    proc = c.systemctl("reload", "vswitchd", timeout=60, check=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "queues" in c.journal("vswitchd", 30)
    st = appliance.state()
    assert st["ActiveState"] == "active" and int(st["MainPID"]) == pid, (st, c.journal("vswitchd"))
    # the old config runs on: vm3 still there
    assert {p["name"] for p in appliance.ctl("show")["ports"]} == {"vm1", "vm2", "vm3"}
    appliance.write_config(BASE_PORTS)
    c.systemctl("reload", "vswitchd", timeout=60)
    assert not (appliance.runtime / "vm3.sock").exists()


# --- the watchdog ------------------------------------------------------------------------

@pytest.mark.dpdk
@pytest.mark.slow
@pytest.mark.skipif(not have_testpmd(), reason="needs dpdk-testpmd")
def test_stalled_worker_restarted_by_watchdog_and_frontend_reconnects(appliance):
    """Client-mode ports towards testpmd's virtio-user in server mode (as
    QEMU's server=on): after systemd kills the stalled daemon and starts it
    again, the new one connects to the same front-end by itself and frames
    cross on its rings as they were."""
    c = appliance.c
    c.run(["mkdir", "-p", str(Path(DROPIN).parent)])
    c.path(DROPIN).write_text(f"[Service]\nWatchdogSec={WATCHDOG_S}s\n")
    socks = {n: appliance.frontends / f"{n}.sock" for n in ("pa", "pb")}
    ports = {n: {"type": "vhost-user", "mode": "client", "socket": f"{FRONTENDS}/{n}.sock"} for n in socks}
    appliance.write_config(ports)
    c.systemctl("daemon-reload")
    c.systemctl("restart", "vswitchd", timeout=60)
    assert c.show("vswitchd", "WatchdogUSec")["WatchdogUSec"] == f"{WATCHDOG_S}s"
    restarts0 = int(appliance.state()["NRestarts"])
    pid0 = appliance.main_pid()

    def counters() -> dict:
        return {n: [(q["rx"]["packets"], q["tx"]["packets"], q["rx"]["drops"], q["tx"]["drops"])
                    for q in appliance.ctl("port show", name=n)["queues"]] for n in socks}

    def connected(tp: TestPmd, what: str) -> None:
        for n in socks:
            appliance.wait_port(n, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                                timeout=30, what=f"connected ({what})")
        tp.wait_links_up([0, 1], timeout=30)

    def flows(tp: TestPmd) -> tuple[bool, str]:
        tp.start_fwd(tx_first=2)
        time.sleep(1.5)
        stats = tp.stop_fwd()
        ok = stats.ports[0].rx_packets > 100 and stats.ports[1].rx_packets > 100
        return ok, f"testpmd rx {stats.ports[0].rx_packets}/{stats.ports[1].rx_packets}, switch {counters()}"

    try:
        with TestPmd([virtio_user_vdev(0, socks["pa"], server=True), virtio_user_vdev(1, socks["pb"], server=True)],
                     cpus=(0,), total_mbufs=8192, mem_mb=512, workdir=appliance.work / "watchdog") as tp:
            connected(tp, "before the stall")
            ok, how = flows(tp)
            assert ok, how
            appliance.ctl("debug stall-worker", worker=0, seconds=120)
            t0 = time.monotonic()
            deadline = t0 + 4 * WATCHDOG_S + 15
            while True:
                st = appliance.state()
                if int(st["NRestarts"]) > restarts0 and st["ActiveState"] == "active":
                    break
                assert time.monotonic() < deadline, (st, c.journal("vswitchd"))
                time.sleep(0.2)
            print(f"restarted by the watchdog {time.monotonic() - t0:.1f}s after the stall")
            assert int(st["MainPID"]) != pid0
            journal = c.journal("vswitchd", 80)
            assert "Watchdog timeout" in journal, journal
            # The new daemon connects to the same front-end by itself.
            connected(tp, "after the restart")
            assert all(appliance.ctl("port show", name=n)["connections"] == 1 for n in socks)
            # Frames cross on testpmd's rings as they were: DPDK's virtio-user
            # keeps its ring indexes across the reconnection and sends base 0;
            # the new daemon resumes from the used index (docs/architecture.md).
            ok, how = flows(tp)
            assert ok, how
            for n in socks:
                q = appliance.ctl("port show", name=n)["queues"][0]
                assert not q["tx"]["broken"] and not q["rx"]["broken"], q
    finally:
        c.run(["rm", "-f", DROPIN])
        appliance.write_config(BASE_PORTS)
        c.systemctl("daemon-reload")
        c.systemctl("restart", "vswitchd", timeout=60, check=False)


# --- stop ---------------------------------------------------------------------------------

def test_stop_removes_sockets_keeps_runtime_dir(appliance):
    appliance.ensure_running(BASE_PORTS)
    appliance.c.systemctl("stop", "vswitchd", timeout=60)
    st = appliance.state()
    assert st["ActiveState"] == "inactive", st
    assert appliance.runtime.is_dir()
    left = [p.name for p in appliance.runtime.iterdir() if p.is_socket()]
    assert left == [], left
    # RuntimeDirectoryPreserve=yes: the directory itself stays for the next start
    assert appliance.c.run(["test", "-d", "/run/vswitch"], check=False).returncode == 0


# --- the Debian package ---------------------------------------------------------------------

needs_deb = pytest.mark.skipif(not (REPO / "debian" / "control").exists() and "VSWITCH_DEB" not in os.environ,
                               reason="no debian/ in this tree")


@needs_deb
def test_lintian_clean(deb):
    """No lintian error (warnings are printed), and every override says why
    (a comment right above it)."""
    if deb is None:
        pytest.skip("VSWITCH_DEB=staged")
    proc = subprocess.run(["lintian", "--fail-on", "error", str(deb)], capture_output=True, text=True,
                          timeout=300)
    print(f"lintian {deb.name}: {(proc.stdout + proc.stderr).strip() or 'no tags'}")
    assert proc.returncode == 0 and not any(ln.startswith("E:") for ln in proc.stdout.splitlines()), \
        proc.stdout + proc.stderr
    overrides = (REPO / "debian" / "vswitch.lintian-overrides").read_text().splitlines()
    for i, line in enumerate(overrides):
        if line.startswith("vswitch:"):
            above = overrides[i - 1] if i else ""
            assert above.startswith("#") or above.startswith("vswitch:"), f"override without a reason: {line}"


@needs_deb
def test_package_installed(appliance):
    """What `apt install ./vswitch_*.deb` left in the container."""
    if not appliance.installed["how"].startswith("apt "):
        pytest.skip("installed by make install")
    c = appliance.c
    # dh_installsystemd: enabled, and started at once (here on the test config)
    assert appliance.installed["UnitFileState"] == "enabled"
    assert appliance.installed["ActiveState"] == "active"
    assert c.run(["getent", "group", "vswitch"], check=False).returncode == 0
    conffiles = c.run(["dpkg-query", "-W", "-f=${Conffiles}", "vswitch"]).stdout
    assert "/etc/vswitch/vswitch.yaml" in conffiles
    files = set(c.run(["dpkg", "-L", "vswitch"]).stdout.split())
    assert {"/usr/bin/vswitchd", "/usr/bin/vswitchctl", "/lib/systemd/system/vswitchd.service",
            "/usr/share/vswitch/vswitch.schema.json", "/usr/share/vswitch/vswitch-dashboard.json"} <= files
    assert not [f for f in files if "/site-packages/tests" in f or f.startswith("/opt")], "harness or /opt shipped"
    out = c.run(["/usr/lib/vswitch/bin/python", "-c", "import vswitch._datapath as d; print(d.__file__)"]).stdout
    assert out.startswith("/usr/lib/vswitch/lib/python3.11/site-packages/vswitch/_datapath"), out
    # the installed unit runs the package's commands
    unit = c.path("/lib/systemd/system/vswitchd.service").read_text()
    assert "ExecStart=/usr/bin/vswitchd --config /etc/vswitch/vswitch.yaml" in unit
