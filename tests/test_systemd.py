"""The installed service: `make install`, the unit, sd_notify, the watchdog.

Needs root (installs into /opt/vswitch, /usr/local/bin, /etc), systemd-analyze
(package systemd), unshare/nsenter/setpriv (util-linux) and /dev/net/tun. No
running systemd is needed: the unit's command lines are parsed out of the
installed file and run as written, and the daemon's notifications are read
from a datagram socket the test binds and passes as $NOTIFY_SOCKET.

The installed daemon runs in a private mount namespace with a tmpfs on /run,
so /run/vswitch (the unit's RuntimeDirectory, which the installed config and
`vswitchctl reload` use) is its own even if a developer's daemon has one.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from vswitch.cli import request

REPO = Path(__file__).resolve().parents[1]
UNIT = Path("/etc/systemd/system/vswitchd.service")
CONFIG = Path("/etc/vswitch/vswitch.yaml")
# systemd-analyze security --offline=yes rates the unit 2.4 (systemd 252);
# below 3.0 ("OK" on systemd-analyze's scale) is the bar, docs/service.md gives
# the rating. A regression above this fails.
SECURITY_SCORE_MAX = 2.5
NOBODY = 65534     # nobody / nogroup on Debian

pytestmark = [
    pytest.mark.root,
    pytest.mark.systemd,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs into /opt and /etc: needs root"),
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"),
]


# --- the unit file ------------------------------------------------------------------

def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values, in order (systemd unit syntax, minus the
    rarely used line continuations, which the unit does not use)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: assignment outside a section: {raw!r}"
        assert not line.endswith("\\"), f"{path}: continuation lines not supported here"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_argv(value: str) -> list[str]:
    """An Exec*= value as argv: systemd's prefixes (-, @, :, +, !) must not be
    there (they would change how the line runs), and the path is absolute."""
    assert value[0] == "/", f"Exec line with a prefix or a relative path: {value!r}"
    argv = shlex.split(value)
    assert "$" not in value and "%" not in value, f"specifiers/variables not expected: {value!r}"
    return argv


@pytest.fixture(scope="module")
def unit():
    """`make install` once (a minute the first time: builds the extension)."""
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "install"], capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, f"make install failed:\n{proc.stdout}\n{proc.stderr}"
    assert UNIT.is_file() and CONFIG.is_file()
    return parse_unit(UNIT)


def test_install_layout(unit):
    for cmd in ("vswitchd", "vswitchctl"):
        link = Path("/usr/local/bin") / cmd
        assert link.is_symlink() and os.readlink(link) == f"/opt/vswitch/bin/{cmd}"
        assert os.access(link, os.X_OK)
    # the package is installed, not linked to the work tree
    out = subprocess.run(["/opt/vswitch/bin/python", "-c",
                          "import vswitch._datapath, vswitch.sdnotify; print(vswitch._datapath.__file__)"],
                         cwd="/", capture_output=True, text=True, check=True).stdout
    assert out.startswith("/opt/vswitch/lib/"), out
    assert Path("/usr/local/share/vswitch/vswitch.yaml.default").is_file()
    for extra in ("config/grafana/vswitch-dashboard.json", "config/vswitch.schema.json"):
        if (REPO / extra).exists():
            assert (Path("/usr/local/share/vswitch") / Path(extra).name).is_file()
    # the manual pages, where man(1) looks for them
    for page in ("man8/vswitchd.8", "man8/vswitchctl.8", "man5/vswitch.yaml.5"):
        installed = Path("/usr/local/share/man") / page
        assert installed.read_bytes() == (REPO / "man" / installed.name).read_bytes(), page


def test_unit_shape(unit):
    s = unit["Service"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["RuntimeDirectory"] == ["vswitch"] and s["RuntimeDirectoryPreserve"] == ["yes"]
    for key in ("ExecStart", "ExecReload"):
        assert len(s[key]) == 1
        exec_argv(s[key][0])
    # vswitchd checks the file itself and exits 6, which the unit does not
    # restart; a failed ExecStartPre= check would be retried to the start limit
    assert "ExecStartPre" not in s and s["RestartPreventExitStatus"] == ["6"]


def test_systemd_analyze_verify(unit, tmp_path):
    """verify works without systemd as PID 1 (it loads the unit offline); it
    exits non-zero on missing executables, and prints unknown keys and bad
    values (without failing), so its output must be empty as well."""
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", output

    # The check above would catch a real error: a misspelt key in a copy.
    bad = tmp_path / "vswitchd.service"
    bad.write_text(UNIT.read_text().replace("WatchdogSec=", "WatchDogSec="))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert "WatchDogSec" in proc.stdout + proc.stderr


def test_security_score(unit):
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for vswitchd\.service: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security --offline=yes: {score}")
    assert score <= SECURITY_SCORE_MAX, proc.stdout


def test_exec_start_as_written_refuses_an_invalid_file_with_status_6(unit, tmp_path):
    """The unit's ExecStart on a broken file: exit 6 (RestartPreventExitStatus)
    with the error, before anything is bound or opened."""
    argv = exec_argv(unit["Service"]["ExecStart"][0])
    broken = tmp_path / "broken.yaml"
    broken.write_text("ports:\n  vm1:\n    type: vhost-user\n    queues: 0\n")
    argv = [str(broken) if a == str(CONFIG) else a for a in argv]
    assert str(broken) in argv
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 6 and "queues" in proc.stderr, proc.stdout + proc.stderr


# --- the installed daemon, as the unit starts it ------------------------------------

class NotifyListener:
    """The systemd side of sd_notify: a datagram socket, messages with the
    time they arrived."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def wait_for(self, predicate, timeout: float, what: str) -> tuple[float, dict[str, str]]:
        """The first message from the start that satisfies predicate."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, m in self.messages:
                    if predicate(m):
                        return t, m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} notification; got {self.messages}")
                self._cond.wait(left)

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        self.sock.close()


class InstalledDaemon:
    """ExecStart as written, in a private mount namespace whose /run is a
    tmpfs (so /run/vswitch is ours); other commands reach it with nsenter."""

    def __init__(self, unit, workdir: Path, env: dict[str, str], config: Path | None = None) -> None:
        self.argv = exec_argv(unit["Service"]["ExecStart"][0])
        self.log_path = workdir / "vswitchd.log"
        script = "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -m 0755 /run/vswitch "
        if config is not None:
            # another configuration at the installed path, in this namespace only
            script += f"&& mount --bind {shlex.quote(str(config))} {shlex.quote(str(CONFIG))} "
        script += '&& exec "$@"'
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--",
                                      "sh", "-c", script, "sh", *self.argv],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd="/")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ctl_path(self) -> str:
        # The daemon's /run seen from our namespace.
        return f"/proc/{self.pid}/root/run/vswitch/vswitchd.ctl"

    def ctl(self, command: str, **args):
        reply = request(self.ctl_path(), command, args)
        assert reply.get("ok"), reply
        return reply["result"]

    def run_in_ns(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", "--", *argv],
                              capture_output=True, text=True, timeout=timeout, cwd="/")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def notified_daemon(unit, tmp_path, config: Path | None = None):
    """The installed daemon under a simulated Type=notify + WatchdogSec=2s:
    NOTIFY_SOCKET and WATCHDOG_USEC, without WATCHDOG_PID (which
    sd_watchdog_enabled(3) treats as optional: the daemon then takes the
    watchdog as its own)."""
    listener = NotifyListener(tmp_path / "notify")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID")}
    env.update(NOTIFY_SOCKET=listener.path, WATCHDOG_USEC="2000000")
    d = InstalledDaemon(unit, tmp_path, env, config)
    d.notify = listener
    try:
        listener.wait_for(lambda m: m.get("READY") == "1", 30, "READY=1")
    except TimeoutError:
        d.stop()
        listener.close()
        raise AssertionError(f"no READY=1 from vswitchd:\n{d.log_tail()}")
    yield d
    d.stop()
    listener.close()


@pytest.fixture
def daemon(unit, tmp_path):
    yield from notified_daemon(unit, tmp_path)


@pytest.fixture
def debug_daemon(unit, tmp_path):
    """The daemon on the installed configuration plus `debug: true`: its test
    hooks (debug stall-worker) answer."""
    doc = yaml.safe_load(CONFIG.read_text()) or {}
    doc["debug"] = True
    config = tmp_path / "vswitch-debug.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    yield from notified_daemon(unit, tmp_path, config)


def kinds(messages) -> list[str]:
    """Each message as its first key (READY, STATUS, WATCHDOG, RELOADING, STOPPING)."""
    return [next(iter(m)) for _, m in messages]


def pings(messages) -> list[float]:
    return [t for t, m in messages if m.get("WATCHDOG") == "1"]


def test_notifications_in_order(unit, daemon):
    n = daemon.notify
    _, ready = n.wait_for(lambda m: m.get("READY") == "1", 1, "READY=1")
    assert ready.get("STATUS"), "READY=1 comes with a STATUS= line"
    # READY=1 means the sockets are bound already (no guest needed).
    assert Path(f"/proc/{daemon.pid}/root/run/vswitch/vm1.sock").exists()
    # Pings every second (half of WATCHDOG_USEC) while the workers idle.
    deadline = time.monotonic() + 10
    while len(pings(n.snapshot())) < 3:
        assert time.monotonic() < deadline, f"no watchdog pings: {n.snapshot()}\n{daemon.log_tail()}"
        time.sleep(0.1)

    # ExecReload as written, in the daemon's namespace (its /run/vswitch).
    argv = exec_argv(unit["Service"]["ExecReload"][0])
    before = time.monotonic_ns() // 1000
    proc = daemon.run_in_ns(argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr + daemon.log_tail()
    t_rel, reloading = n.wait_for(lambda m: m.get("RELOADING") == "1", 5, "RELOADING=1")
    usec = int(reloading["MONOTONIC_USEC"])
    assert before <= usec <= time.monotonic_ns() // 1000
    deadline = time.monotonic() + 5
    while not any(m.get("READY") == "1" for t, m in n.snapshot() if t >= t_rel and "RELOADING" not in m):
        assert time.monotonic() < deadline, f"no READY=1 after RELOADING=1: {n.snapshot()}"
        time.sleep(0.05)

    assert daemon.stop() == 0, daemon.log_tail()
    msgs = n.snapshot()
    order = [k for k in kinds(msgs) if k != "WATCHDOG" and k != "STATUS"]
    assert order == ["READY", "RELOADING", "READY", "STOPPING"], msgs
    # ... and the pings are between READY and STOPPING.
    k = kinds(msgs)
    assert k.index("READY") < k.index("WATCHDOG") and k[-1] == "STOPPING", msgs
    assert "WATCHDOG" not in k[k.index("STOPPING"):]


def test_exec_reload_reports_a_bad_config(unit, daemon, tmp_path):
    """Synchronous reload: a config that does not validate makes the
    ExecReload command fail (so `systemctl reload` does), and the daemon runs on."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("ports:\n  vm1:\n    type: vhost-user\n    queues: 0\n")
    # Only the daemon's namespace sees the broken file at the config's path.
    proc = daemon.run_in_ns(["mount", "--bind", str(broken), str(CONFIG)])
    assert proc.returncode == 0, proc.stderr
    proc = daemon.run_in_ns(exec_argv(unit["Service"]["ExecReload"][0]))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "queues" in proc.stderr
    assert daemon.proc.poll() is None
    assert daemon.ctl("version")


def test_watchdog_pings_stop_while_a_worker_is_stalled(debug_daemon):
    daemon = debug_daemon
    n = daemon.notify
    deadline = time.monotonic() + 10
    while len(pings(n.snapshot())) < 2:
        assert time.monotonic() < deadline, f"no watchdog pings: {n.snapshot()}"
        time.sleep(0.1)
    stall_s = 5.0
    daemon.ctl("debug stall-worker", worker=0, seconds=stall_s)
    t0 = time.monotonic()
    # Pings resume once the worker does.
    n.wait_for(lambda m: m.get("STATUS") == "worker 0 stalled", stall_s + 2, "STATUS=worker 0 stalled")
    deadline = t0 + stall_s + 5
    while not [t for t in pings(n.snapshot()) if t > t0 + stall_s]:
        assert time.monotonic() < deadline, f"pings did not resume: {n.snapshot()}\n{daemon.log_tail()}"
        time.sleep(0.1)
    times = pings(n.snapshot())
    # Healthy: a ping a second (WATCHDOG_USEC=2 s). Stalled: none from the
    # moment the worker is 2 s behind (an idle worker's round may take 1 s)
    # until it moves again.
    before = [t for t in times if t < t0]
    assert max(b - a for a, b in zip(before, before[1:])) < 1.6, times
    silent = [t for t in times if t0 + 2.5 <= t <= t0 + stall_s - 0.2]
    assert silent == [], f"pings while worker 0 was stalled: {[round(t - t0, 2) for t in times]}"
    assert "worker 0 stalled" in daemon.log_tail(100)


# --- the capability set ---------------------------------------------------------------

CAP_EFFECTS = {
    # capability -> the check (in socket_permission_effects) that needs it
    "CAP_CHOWN": "server socket owner",
    "CAP_DAC_OVERRIDE": "client connected",
    "CAP_NET_ADMIN": "tap created",
}


def unit_capabilities(unit) -> list[str]:
    caps = " ".join(unit["Service"]["CapabilityBoundingSet"]).split()
    assert caps and all(c.startswith("CAP_") for c in caps)
    return caps


def test_unit_capabilities_are_justified(unit):
    """Every capability in the bounding set has a check below that fails
    without it (and none is missing: the checks pass with exactly the set)."""
    assert sorted(unit_capabilities(unit)) == sorted(CAP_EFFECTS)
    assert "AmbientCapabilities" not in unit["Service"]   # runs as root


@pytest.mark.parametrize("dropped", [None, *sorted(CAP_EFFECTS)])
def test_socket_permissions_under_unit_capabilities(unit, tmp_path, dropped):
    """The daemon under the unit's CapabilityBoundingSet (as root, as the unit
    runs it): server socket chowned and chmodded for QEMU's user, a client
    port connecting to a socket QEMU's user owns, a TAP port. With one
    capability dropped, the check that needs it fails."""
    caps = [c for c in unit_capabilities(unit) if c != dropped]
    tmp_path.chmod(0o755)
    run = tmp_path / "run"
    qemu_dir = tmp_path / "qemu"            # like /var/lib/libvirt/qemu/...: QEMU's own
    qemu_dir.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(qemu_dir / "client.sock"))
    listener.listen(4)
    listener.settimeout(0.2)
    os.chown(qemu_dir / "client.sock", NOBODY, NOBODY)
    os.chmod(qemu_dir / "client.sock", 0o755)
    os.chown(qemu_dir, NOBODY, NOBODY)
    ifname = f"vswcap{os.getpid() % 10000}"
    config = tmp_path / "vswitch.yaml"
    config.write_text(yaml.safe_dump({
        "runtime_dir": str(run),
        "control": {"group": NOBODY},
        "metrics": {"enabled": False},
        "ports": {
            "srv": {"type": "vhost-user", "mode": "server", "socket": str(run / "srv.sock"),
                    "socket_owner": NOBODY, "socket_group": NOBODY, "socket_mode": 0o660},
            "cli": {"type": "vhost-user", "mode": "client", "socket": str(qemu_dir / "client.sock")},
            "up": {"type": "tap", "ifname": ifname, "create": True},
        },
        "datapath": {"workers": 1, "mode": "event"},
    }))
    bounding = "-all," + ",".join("+" + c[4:].lower() for c in caps)
    log_path = tmp_path / "vswitchd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["setpriv", "--bounding-set", bounding, "--inh-caps", "-all", "--",
                                 "/usr/local/bin/vswitchd", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, cwd="/")
    effects = {name: False for name in CAP_EFFECTS.values()}
    effects["server socket mode"] = False      # needs no capability (chmod before chown)
    try:
        srv, ctl = run / "srv.sock", run / "vswitchd.ctl"
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and proc.poll() is None:
            if srv.exists():
                st = srv.stat()
                effects["server socket owner"] = (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
                effects["server socket mode"] = stat.S_IMODE(st.st_mode) == 0o660
            if not effects["client connected"]:
                try:
                    conn, _ = listener.accept()
                    conn.close()
                    effects["client connected"] = True
                except socket.timeout:
                    pass
            effects["tap created"] = Path("/sys/class/net", ifname).exists()
            if all(effects.values()) and ctl.exists() and ctl.stat().st_gid == NOBODY:
                break
            time.sleep(0.1)
        # With the capability set, the daemon's own status agrees.
        if dropped is None:
            assert proc.poll() is None, log_path.read_text()
            assert ctl.stat().st_gid == NOBODY and stat.S_IMODE(ctl.stat().st_mode) == 0o660
            ports = {p["name"]: p for p in request(str(ctl), "show")["result"]["ports"]}
            assert not ports["srv"].get("last_error"), ports["srv"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        listener.close()
        subprocess.run(["ip", "link", "del", ifname], capture_output=True)
    log = log_path.read_text(errors="replace")
    print(f"without {dropped}: {effects}")
    if dropped is None:
        assert all(effects.values()), f"{effects}\n{log}"
    else:
        assert not effects[CAP_EFFECTS[dropped]], \
            f"{dropped} is in the unit's CapabilityBoundingSet but not needed: {effects}\n{log}"
