"""Overload and abuse cost nobody else (docs/faults.md).

One vswitchd for the module. DPDK testpmd's virtio-user is the healthy pair
("in" -> "out", every frame checked byte for byte); the front-end written in
the tests (tests/harness/frontend) plays the guests that misbehave:

* a guest that never posts RX buffers: every frame flooded to it is dropped
  and counted (exact count), and the healthy pair loses nothing;
* a flood of extra connections on a port that already has its front-end:
  each is closed and counted as refused, the daemon's fd count is flat, the
  connected front-end keeps forwarding;
* a flood of malformed messages on new connections, and of malformed
  descriptor chains on a connected ring: counters carry every one of them,
  the log gets a bounded number of lines;
* YAML syntax errors on reload while frames flow: refused, nothing changes,
  no frame is lost.

Throughput under these conditions belongs to `make bench`; here the counts
are exact.
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import threading
import time

import pytest

from tests.harness import traffic
from tests.harness.frontend import Hostile
from tests.harness.peers.testpmd import verify_delivery, virtio_user_vdev
from tests.harness.switch import Vswitchd
from tests.harness.traffic import exchange, healthy_delivery, wait_until
from vswitch.cli import request

PORTS = ("in", "out", "starve", "one", "two", "junk")
# testpmd's frames go to a MAC nobody has: the switch floods them to every
# other connected port.
UNKNOWN_DST = "02:00:00:00:99:99"
# The log may say a few things about a flood (rate-limited lines, a summary),
# never one line per event.
MAX_LOG_LINES = 30


@pytest.fixture(scope="module")
def sw(tmp_path_factory):
    work = tmp_path_factory.mktemp("overload")
    with Vswitchd(work / "switch", {n: {"type": "vhost-user"} for n in PORTS}, cpus="1") as sw:
        sw.work = work
        yield sw


def log_lines(sw: Vswitchd) -> int:
    return len(sw.log_path.read_bytes().splitlines())


def connect(sw: Vswitchd, port: str, rx_buffers: int):
    return traffic.connect(sw, port, rx_buffers=rx_buffers, wait=True)


@pytest.mark.dpdk
def test_guest_without_rx_buffers_costs_the_healthy_pair_nothing(sw):
    starving = connect(sw, "starve", rx_buffers=0)
    try:
        lines, dropped = log_lines(sw), sw.drops("starve").get("no_rx_buffer", 0)
        n = 3000
        result = healthy_delivery(sw, "starve", n)
        assert result.ok, result.describe()
        assert sum(result.sent.values()) == n and sum(result.received.values()) == n
        # every frame was flooded to the starving port too, and dropped there
        assert sw.drops("starve") == {"no_rx_buffer": dropped + n}
        assert sw.drops("in") == {} and sw.drops("out") == {}
        assert starving.frontend.connected()
        assert sw.port("starve")["queues"][0]["rx"]["packets"] == 0
        assert log_lines(sw) - lines <= MAX_LOG_LINES
    finally:
        starving.close()


MAC1, MAC2 = b"\x02\x00\x00\x00\x06\x01", b"\x02\x00\x00\x00\x06\x02"


def test_extra_connections_are_refused_counted_and_leak_nothing(sw):
    one, two = connect(sw, "one", rx_buffers=128), connect(sw, "two", rx_buffers=128)
    try:
        exchange(one, two, MAC1, MAC2)
        exchange(two, one, MAC2, MAC1)
        path = sw.socket("one")
        base = sw.port("one")
        fds, lines = sw.fd_count(), log_lines(sw)
        for _ in range(600):                           # connect and hang up at once
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.close()
        held = []
        for _ in range(100):                           # or stay connected, unanswered
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            held.append(s)
        for s in held:
            s.settimeout(10)
            assert s.recv(64) == b""                   # the switch closed it
            s.close()
        port = wait_until(lambda: (p := sw.port("one"))["refused"] == base["refused"] + 700 and p,
                          what="700 refusals")
        assert (port["state"], port["connections"], port["disconnects"], port["protocol_errors"]) == \
            ("connected", base["connections"], base["disconnects"], base["protocol_errors"]), port
        assert sw.fd_count() == fds
        assert log_lines(sw) - lines <= MAX_LOG_LINES
        # the front-end that was there first never noticed
        assert one.frontend.connected()
        exchange(one, two, MAC1, MAC2)
        exchange(two, one, MAC2, MAC1)
        assert sw.drops("one") == {} and sw.drops("two") == {}
    finally:
        one.close()
        two.close()


def lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in range(len(used) + 1) if fd not in used)


def test_out_of_fds_refuses_for_a_while_and_never_ends_a_port(sw):
    """accept() fails with EMFILE while the daemon is at its fd limit: the
    connections wait in the backlog, the ports keep listening, and once fds
    are available again they are served (refused, or accepted) as usual."""
    one, two = connect(sw, "one", rx_buffers=128), connect(sw, "two", rx_buffers=128)
    waiting = []
    try:
        base_one, base_starve = sw.port("one"), sw.port("starve")
        pid = sw.proc.pid
        limit = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        # No fd number below the soft limit is free: the next fd is EMFILE.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), limit[1]))
        try:
            for port, n in (("one", 3), ("starve", 1)):
                for _ in range(n):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.setblocking(False)
                    s.connect(sw.socket(port))         # queued in the backlog
                    waiting.append((port, s))
            time.sleep(1.5)                            # a dozen failed accepts per port
            exchange(one, two, MAC1, MAC2)             # forwarding needs no new fd
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)
        wait_until(lambda: sw.port("one")["refused"] == base_one["refused"] + 3, what="3 refusals")
        wait_until(lambda: sw.port("starve")["connections"] == base_starve["connections"] + 1,
                   what="the waiting front-end accepted")
        for _, s in waiting:
            s.close()
        waiting.clear()
        sw.wait_port("starve", lambda p: p["state"] == "listening", timeout=30, what="listening")
        assert sw.alive()
        assert one.frontend.connected()
        exchange(two, one, MAC2, MAC1)
        late = connect(sw, "starve", rx_buffers=0)     # and a new front-end is welcome
        late.close()
    finally:
        for _, s in waiting:
            s.close()
        one.close()
        two.close()


def _header(request: int, flags: int, size: int) -> bytes:
    return struct.pack("=III", request, flags, size)


# Each malformed message ends its connection with a protocol error.
GARBAGE = [
    ("unknown request", _header(255, 1, 0), False),
    ("reply flag from a front-end", _header(1, 0x5, 0), False),
    ("bad version", _header(1, 0x2, 0), False),
    ("payload too large", _header(5, 1, 1 << 20), False),
    ("fd on GET_FEATURES", _header(1, 1, 0), True),
    ("mem table with 100 regions", _header(5, 1, 8) + struct.pack("=II", 100, 0), False),
]


def test_garbage_cannot_flood_the_log_and_counters_carry_the_totals(sw):
    path = sw.socket("junk")
    base = sw.port("junk")
    fds, lines = sw.fd_count(), log_lines(sw)
    n = 1002                                          # 167 rounds of the six kinds
    r, w = os.pipe()
    try:
        for i in range(n):
            _, data, with_fd = GARBAGE[i % len(GARBAGE)]
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))] if with_fd else []
            s.sendmsg([data], anc)
            s.settimeout(10)
            try:
                assert s.recv(64) == b""               # the switch hung up
            except ConnectionResetError:
                pass
            s.close()
    finally:
        os.close(r)
        os.close(w)
    port = wait_until(lambda: (p := sw.port("junk"))["protocol_errors"] == base["protocol_errors"] + n
                      and p["state"] == "listening" and p, what=f"{n} protocol errors")
    assert port["connections"] == base["connections"] + n
    assert port["disconnects"] == base["disconnects"] + n
    grew = log_lines(sw) - lines
    print(f"{n} malformed connections: {grew} log lines")
    assert grew <= MAX_LOG_LINES, sw.log_tail(60)
    assert sw.fd_count() == fds                       # the passed fds were closed too
    assert sw.alive()

    # Malformed descriptor chains from a connected guest: dropped, counted, not logged.
    one, two = connect(sw, "one", rx_buffers=128), connect(sw, "two", rx_buffers=128)
    try:
        lines = log_lines(sw)
        total = 0
        for _ in range(10):
            for _ in range(50):
                Hostile(one.tx(0)).addr_outside_memory(kick=False)
            one.tx(0).kick()
            total += 50
            wait_until(lambda: sum(sw.drops("one").values()) == total, what=f"{total} drops")
            one.tx(0).reap()
        assert sum(sw.drops("one").values()) == 500
        assert log_lines(sw) - lines <= MAX_LOG_LINES
        exchange(one, two, MAC1, MAC2)                # the ring still works
        assert sw.drops("two") == {}
    finally:
        one.close()
        two.close()


BAD_YAML = [
    "ports:\n  in:\n\ttype: vhost-user\n",                        # a tab in the indentation
    "ports: {in: {type: vhost-user}, out: [1, 2\n",               # unclosed brackets
    "ports:\n  in:\n    type: vhost-user\n   out: {\n",           # bad indentation, unclosed
    "\x00\x01binary",                                             # not text
]


@pytest.mark.dpdk
def test_yaml_syntax_errors_on_reload_change_nothing_while_frames_flow(sw):
    good = sw.config_path.read_text()
    before = sw.ctl("show")
    ports_before = {p["name"]: p for p in before["ports"]}
    done = threading.Event()
    outcomes: list = []

    def bad_reloads() -> None:
        # Through the control socket (what vswitchctl and SIGHUP do), as fast
        # as the daemon answers, for as long as frames flow.
        i = 0
        while not done.is_set() or i < len(BAD_YAML):
            sw.config_path.write_text(BAD_YAML[i % len(BAD_YAML)])
            outcomes.append(request(str(sw.runtime_dir / "vswitchd.ctl"), "reload", {}, timeout=60))
            i += 1

    reloader = threading.Thread(target=bad_reloads)

    def ready() -> None:
        for port in ("in", "out"):
            sw.wait_port(port, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                         timeout=30, what="enabled")
        reloader.start()                 # the frames start right after this

    try:
        result = verify_delivery(virtio_user_vdev(0, sw.socket("in")), virtio_user_vdev(1, sw.socket("out")),
                                 count=5000, dst_mac=UNKNOWN_DST, workdir=sw.work / "yaml", cpus=(0,),
                                 timeout=120, ready=ready, name="yaml")
    finally:
        done.set()
        if reloader.ident is not None:      # started by ready()
            reloader.join()
    print(f"{len(outcomes)} bad reloads while {sum(result.sent.values())} frames crossed")
    assert result.ok, result.describe()
    assert outcomes and all(not o["ok"] and str(sw.config_path) in o["error"] for o in outcomes), outcomes
    # and what an operator sees
    r = sw.reload()
    assert r.returncode == 1 and str(sw.config_path) in r.stderr, r
    after = sw.ctl("show")
    assert after["reloads"]["failure"] == before["reloads"]["failure"] + len(outcomes) + 1
    assert after["last_reload_ok"] is False
    assert [p["name"] for p in after["ports"]] == list(PORTS)
    for p in after["ports"]:          # the running ports were not touched
        assert (p["socket"], p["state"]) == (ports_before[p["name"]]["socket"], "listening"), p
    assert sw.drops("in") == {} and sw.drops("out") == {}
    sw.config_path.write_text(good)
    r = sw.reload()
    assert r.returncode == 0 and "6 port(s) untouched" in r.stdout, r
    assert sw.ctl("show")["last_reload_ok"] is True
