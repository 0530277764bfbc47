"""vswitchd confines itself with a seccomp filter (security.seccomp), in every thread.

Started by hand, as here, not by systemd: the daemon's own filter is what
holds; and under an outer filter that denies seccomp(2), as the unit's does. `debug seccomp-probe` (answered only with `debug: true`) makes two
denied calls that are harmless even without the filter: mount(2) of a file
system type that does not exist onto a path that does not exist, and
unshare(0).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.harness.linux.netns import link_exists
from tests.harness.switch import Vswitchd
from tests.harness.traffic import connect, exchange_by_name
from vswitch import seccomp

VHOST = {"type": "vhost-user"}


def thread_status(pid: int) -> list[dict[str, int]]:
    return [seccomp.status(f"{pid}/task/{tid}") for tid in os.listdir(f"/proc/{pid}/task")]


@pytest.fixture
def ifname():
    name = f"vsc{os.getpid() % 100000}"
    yield name
    subprocess.run(["ip", "link", "del", name], capture_output=True)


@pytest.mark.root
def test_every_thread_is_confined_and_ports_still_open_at_reload(tmp_path, ifname):
    udp_port = 20000 + os.getpid() % 20000
    sw = Vswitchd(tmp_path, {"a": VHOST, "b": VHOST}, workers=2, extra={"debug": True})
    with sw:
        pid = sw.proc.pid
        threads = thread_status(pid)
        assert len(threads) >= 3, threads             # the control thread and two workers
        assert all(t["Seccomp"] == 2 and t["NoNewPrivs"] == 1 for t in threads), threads
        probe = sw.ctl("debug seccomp-probe")
        assert probe["calls"] == {"mount": "EPERM", "unshare": "EPERM"}
        assert probe["Seccomp"] == 2 and probe["NoNewPrivs"] == 1
        assert sw.ctl("show")["security"]["seccomp"] == "on"
        assert "seccomp: filter installed by seccomp(2)" in sw.log_tail(100)

        # The datapath runs under it: frames cross both ways.
        a, b = connect(sw, "a"), connect(sw, "b")
        exchange_by_name(a, b, "a", "b")
        exchange_by_name(b, a, "b", "a")

        # What a reload may open stays allowed: a TAP (/dev/net/tun, TUNSETIFF and
        # the ioctls that set it up) and a VXLAN socket.
        sw.write_config({"a": VHOST, "b": VHOST,
                         "up": {"type": "tap", "ifname": ifname, "mtu": 1400},
                         "vx": {"type": "vxlan", "local": "127.0.0.1", "remotes": ["127.0.0.2"],
                                "vni": 42, "udp_port": udp_port}},
                        extra={"debug": True})
        result = sw.reload()
        assert result.returncode == 0, result.stdout + result.stderr + sw.log_tail()
        sw.wait_port("up", lambda p: p["state"] == "up", timeout=10, what="TAP attached")
        sw.wait_port("vx", lambda p: p["state"] == "up", timeout=10, what="VXLAN bound")
        assert link_exists(ifname) and sw.port("up")["mtu"] == 1400
        threads = thread_status(pid)
        assert all(t["Seccomp"] == 2 for t in threads), threads
        assert sw.port("a")["state"] == "connected"
    assert "Traceback" not in sw.log_path.read_text()


def test_probe_needs_debug_and_debug_applies_at_reload(tmp_path):
    with Vswitchd(tmp_path, {"a": VHOST}) as sw:
        with pytest.raises(RuntimeError, match=r"answers only with `debug: true`"):
            sw.ctl("debug seccomp-probe")
        sw.write_config({"a": VHOST}, extra={"debug": True})
        assert sw.reload().returncode == 0
        assert sw.ctl("debug seccomp-probe")["calls"]["mount"] == "EPERM"


def test_without_the_filter_the_same_calls_get_past_seccomp(tmp_path):
    """The EPERM above is the filter's: with security.seccomp false the
    kernel itself answers (no such mount point; unshare(0) does nothing)."""
    with Vswitchd(tmp_path, {"a": VHOST},
                  extra={"debug": True, "security": {"seccomp": False}}) as sw:
        probe = sw.ctl("debug seccomp-probe")
        assert probe["calls"] == {"mount": "ENOENT", "unshare": "ok"}
        assert probe["Seccomp"] == 0
        assert all(t["Seccomp"] == 0 for t in thread_status(sw.proc.pid))
        assert sw.ctl("show")["security"]["seccomp"] == "off"
        # turning it on is for the next start
        sw.write_config({"a": VHOST}, extra={"debug": True})
        out = sw.reload()
        assert "security.seccomp: false -> true takes effect at the next start" in out.stdout


# Installs a filter that denies seccomp(2) - as the unit's SystemCallFilter= does -
# then becomes the daemon (the filter stays across execve).
OUTER_FILTER = ("import os, sys\n"
                "from vswitch import seccomp as sc\n"
                "sc.install(sc.build_filter({'seccomp': sc.NR_SECCOMP}))\n"
                "os.execvp(sys.argv[1], sys.argv[1:])\n")


def test_under_a_supervisor_that_denies_seccomp_itself(tmp_path):
    """systemd's @system-service has no seccomp(2): the daemon installs its
    filter with prctl(2) before its first thread, and every thread has both."""
    wrapper = [sys.executable, "-c", OUTER_FILTER]
    with Vswitchd(tmp_path, {"a": VHOST, "b": VHOST}, workers=2, extra={"debug": True},
                  wrapper=wrapper) as sw:
        assert "seccomp: filter installed by prctl(PR_SET_SECCOMP)" in sw.log_tail(100)
        threads = thread_status(sw.proc.pid)
        assert len(threads) >= 3
        assert all((t["Seccomp"], t["Seccomp_filters"]) == (2, 2) for t in threads), threads
        assert sw.ctl("debug seccomp-probe")["calls"] == {"mount": "EPERM", "unshare": "EPERM"}
        a, b = connect(sw, "a"), connect(sw, "b")
        exchange_by_name(a, b, "a", "b")
