"""A front-end that blocks its notification fds stops nobody but itself.

The front-end shares its call and err eventfds with the switch as open file
descriptions: it can clear O_NONBLOCK on them at any time and leave an
eventfd's counter at its maximum (0xfffffffffffffffe), or hand over a pipe
and fill it. A write(2) into such an fd blocks until the front-end reads -
forever, if it never does. A worker that made that write while holding a
guest RX ring's lock stopped every port: the other workers spun on the lock
and the control plane's quiescence wait stalled the control socket.

Workers now write notifications through an io_uring they never wait on
(cython_ext/notify.pxi): the blocked write sits in a kernel thread, the
ring's further interrupts are merged into it, and the port alerts. Here, with
1 and 2 workers, DPDK testpmd's virtio-user pair ("in" -> "out", every frame
checked byte for byte, flooded to the attacker's RX ring too) forwards while
the attack runs, `vswitchctl` answers throughout, and the attacked port takes
a new front-end afterwards.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from tests.frontend import Feature as F
from tests.frontend import VhostUserError, VhostUserFrontend, bits
from tests.helpers.traffic import exchange, healthy_delivery, wait_until
from tests.switch import Vswitchd

# No EVENT_IDX: the attacker asks for an interrupt after every used entry.
NO_EVENT_IDX = bits(F.VERSION_1, F.MRG_RXBUF, F.INDIRECT_DESC)
PORTS = ("in", "out", "bad", "peer")
UNKNOWN_DST = "02:00:00:00:99:99"      # testpmd's frames are flooded, to "bad" too
BAD_MAC, PEER_MAC = b"\x02\x00\x00\x00\x0d\x01", b"\x02\x00\x00\x00\x0d\x02"
EVENTFD_MAX = 0xFFFFFFFFFFFFFFFE
# vswitchctl while a worker may be stuck: a reply takes milliseconds; a
# stalled control plane took the quiescence wait's 10 s.
CTL_LATENCY_MAX_S = 1.0


@pytest.fixture(scope="module", params=[1, 2], ids=["1worker", "2workers"])
def sw(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"notify{request.param}")
    # the switch on CPU 1, testpmd on CPU 0 (its TX retry budget is short)
    # debug: true for `debug stall-worker`
    with Vswitchd(work / "switch", {n: {"type": "vhost-user"} for n in PORTS},
                  workers=request.param, cpus="1", extra={"debug": True}) as sw:
        sw.work = work
        yield sw


def connect(sw: Vswitchd, port: str, features: int = NO_EVENT_IDX, rx_buffers: int = 128):
    dev = VhostUserFrontend(sw.socket(port)).setup_net_device(1, 256, features)
    if rx_buffers:
        dev.rx(0).post_rx(rx_buffers, 2048)
    sw.wait_port(port, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                 timeout=30, what=f"{port} connected")
    return dev


def bad_drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


def block_eventfd(fd: int) -> None:
    """The counter at its maximum and O_NONBLOCK cleared on the open file
    description the switch shares: the next write of 1 blocks."""
    bad_drain(fd)
    os.eventfd_write(fd, EVENTFD_MAX)
    os.set_blocking(fd, True)


def full_pipe() -> tuple[int, int]:
    """A pipe whose write end is full and blocking."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"\0" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    return r, w


class ControlProbe:
    """vswitchctl requests in a loop while an attack runs: the slowest reply."""

    def __init__(self, sw: Vswitchd) -> None:
        self.sw = sw
        self.slowest = 0.0
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.sw.ctl("show")
            self.slowest = max(self.slowest, time.monotonic() - t0)
            self.requests += 1
            self._stop.wait(0.1)

    def __enter__(self) -> ControlProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "a vswitchctl request never returned"


def recovers(sw: Vswitchd) -> None:
    """After the attacker is gone the port takes a new front-end, which
    forwards both ways."""
    sw.wait_port("bad", lambda p: p["state"] == "listening", timeout=30, what="bad listening")
    fresh, peer = connect(sw, "bad", features=None), connect(sw, "peer", features=None)
    try:
        exchange(fresh, peer, BAD_MAC, PEER_MAC)
        exchange(peer, fresh, PEER_MAC, BAD_MAC)
    finally:
        fresh.close()
        peer.close()


def test_blocked_call_and_err_eventfds_cost_only_their_port(sw):
    bad = connect(sw, "bad")
    try:
        for ring in (bad.rx(0), bad.tx(0)):
            block_eventfd(ring.call_fd)
            block_eventfd(ring.err_fd)
        # its own TX ring's notification blocks too: a frame from the attacker
        bad.tx(0).post_tx_frames([PEER_MAC + BAD_MAC + b"\x88\xb5" + bytes(50)])
        with ControlProbe(sw) as probe:
            healthy_delivery(sw, f"eventfd-{sw.workers}", 2000)
            # the flood filled the attacker's RX ring: its interrupts were
            # asked for and held back, and the port says so
            port = wait_until(lambda: (p := sw.port("bad"))["alerts"].get("notify0") and p,
                              timeout=15, what="the blocked-notification alert")
        assert probe.slowest < CTL_LATENCY_MAX_S, probe.slowest
        assert probe.requests > 5
        rx = port["queues"][0]["rx"]
        assert rx["packets"] > 0
        assert rx["notify_merged"] > 0
        assert sw.drops("in") == {} and sw.drops("out") == {}
        # the attacker's ring broken on top (a wild avail index): the err fd
        # blocks too, nothing else does
        bad.tx(0).set_avail_idx(bad.tx(0).avail_idx_in_memory() + 0x8000)
        bad.tx(0).kick()
        wait_until(lambda: sw.port("bad")["queues"][0]["tx"]["broken"], what="ring broken")
        with ControlProbe(sw) as probe:
            healthy_delivery(sw, f"broken-{sw.workers}", count=500)
        assert probe.slowest < CTL_LATENCY_MAX_S, probe.slowest
    finally:
        bad.close()
    recovers(sw)
    assert sw.alive()


def _toggle_nonblock(fds: list[int], seconds: float) -> None:
    """Flip O_NONBLOCK on the shared open file descriptions as fast as a loop
    can, and now and then drain and refill the counter: a write that checked
    the flag while it was set finds it cleared inside eventfd_write, and a
    write parked on io_uring's poll is retried when the counter drains."""
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        for fd in fds:
            os.set_blocking(fd, i % 2 == 0)
        i += 1
        if i % 512 == 0:
            for fd in fds:
                os.set_blocking(fd, False)
                bad_drain(fd)
                try:
                    os.eventfd_write(fd, EVENTFD_MAX)
                except BlockingIOError:
                    pass            # a notification came in between


def test_call_eventfd_whose_o_nonblock_flips_costs_only_its_port(sw):
    """The counter full and O_NONBLOCK flipping under the switch: no check
    of the flag before a write can be trusted; workers never write inline."""
    bad = connect(sw, "bad")
    fds = [ring.call_fd for ring in (bad.rx(0), bad.tx(0))]
    for fd in fds:
        bad_drain(fd)
        os.eventfd_write(fd, EVENTFD_MAX)
    toggler = multiprocessing.get_context("fork").Process(target=_toggle_nonblock, args=(fds, 60),
                                                          daemon=True)
    toggler.start()
    try:
        bad.tx(0).post_tx_frames([PEER_MAC + BAD_MAC + b"\x88\xb5" + bytes(50)])
        with ControlProbe(sw) as probe:
            healthy_delivery(sw, f"toggle-{sw.workers}", 2000)
        assert probe.slowest < CTL_LATENCY_MAX_S, probe.slowest
        assert sw.drops("in") == {} and sw.drops("out") == {}
        assert sw.port("bad")["queues"][0]["rx"]["packets"] > 0
    finally:
        toggler.kill()
        toggler.join()
        bad.close()
    recovers(sw)
    assert sw.alive()


def test_full_pipe_as_call_fd_costs_only_its_port(sw):
    """A full, blocking pipe handed over as the call fds. Not an eventfd: a
    switch that checks fd kinds refuses it (the connection ends); one that
    took it must still not block on it."""
    bad = connect(sw, "bad")
    r, w = full_pipe()
    try:
        try:
            for index in (0, 1):
                bad.frontend.set_vring_call(index, w)
            bad.frontend.sync()
        except (OSError, VhostUserError):
            pass                    # refused
        with ControlProbe(sw) as probe:
            healthy_delivery(sw, f"pipe-{sw.workers}", 2000)
        assert probe.slowest < CTL_LATENCY_MAX_S, probe.slowest
        assert probe.requests > 5
        assert sw.drops("in") == {} and sw.drops("out") == {}
    finally:
        bad.close()
        os.close(r)
        os.close(w)
    recovers(sw)
    assert sw.alive()


def test_a_worker_that_misses_the_quiescence_wait_costs_the_port_a_delay_only(sw):
    """A worker that does not finish its round (a bug; here the debug stall
    hook, 8 s) while a front-end leaves: the wait for it gives up on the
    clock (5 s), the connection ends anyway, the port says why and takes no
    new front-end while the old one's memory is still mapped; once the worker
    is back the health check releases it and the port works again."""
    bad = connect(sw, "bad")
    sw.ctl("debug stall-worker", worker=0, seconds=8)
    t0 = time.monotonic()
    # The wait runs on the datapath's control thread: vswitchctl (the event
    # loop) answers throughout. When it ran on the event loop, every request
    # waited the 5 s with it.
    with ControlProbe(sw) as probe:
        bad.close()
        port = sw.wait_port("bad", lambda p: p["alerts"].get("release"), timeout=20,
                            what="the release alert")
    assert probe.slowest < CTL_LATENCY_MAX_S, probe.slowest
    assert probe.requests > 5
    assert port["state"] == "listening"
    assert "did not finish their round in 5 s" in port["alerts"]["release"]
    assert time.monotonic() - t0 < 7          # given up on the clock
    # a front-end that comes now is refused until the release succeeds
    late = VhostUserFrontend(sw.socket("bad"))
    with pytest.raises((OSError, VhostUserError)):
        late.setup_net_device(1, 256, NO_EVENT_IDX)
    late.close()
    sw.wait_port("bad", lambda p: "release" not in p["alerts"], timeout=30,
                 what="the release after the stall")
    assert time.monotonic() - t0 < 30
    assert "resources of the last connection released" in sw.log_path.read_text()
    recovers(sw)
    assert sw.alive()
