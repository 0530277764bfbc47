"""Dirty logging for live migration, and SEND_RARP, against the datapath.

QEMU migrates a vhost-user guest by giving the back-end a bitmap
(SET_LOG_BASE), turning on VHOST_F_LOG_ALL and VHOST_VRING_F_LOG, and
copying every page whose bit the back-end set. A page written and not
marked is silently corrupt on the destination. Here our own front-end does
what QEMU does and checks, bit by bit, that every page the switch wrote
(frame data in RX buffers, used rings of both directions) is marked, and
that nothing is marked while logging is off.
"""

from __future__ import annotations

import mmap
import os
import time

import pytest

from tests.harness.frontend import VhostUserFrontend
from tests.harness.frontend.vhost_frontend import PeerClosed
from tests.harness.switch import Vswitchd
from tests.harness.traffic import FULL, MAC, exchange_by_name, frame

PAGE = 4096
VRING_F_LOG = 1
LOG_ALL = 26


class DirtyLog:
    """The bitmap QEMU would share: one bit per 4 KiB page of guest memory."""

    def __init__(self, mem_size: int) -> None:
        self.size = (mem_size // PAGE + 7) // 8
        self.fd = os.memfd_create("vswitch-test-log")
        os.ftruncate(self.fd, self.size)
        self.map = mmap.mmap(self.fd, self.size)

    def pages(self) -> set[int]:
        data = bytes(self.map)
        return {i * 8 + b for i, byte in enumerate(data) if byte for b in range(8) if byte >> b & 1}

    def clear(self) -> None:
        self.map[:] = bytes(self.size)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def pages_of(gpa: int, length: int) -> set[int]:
    return set(range(gpa // PAGE, (gpa + length - 1) // PAGE + 1)) if length else set()


def start_logging(fe: VhostUserFrontend, dev, log: DirtyLog, features: int) -> None:
    """QEMU's order (vhost_dev_log_start): SET_LOG_BASE, SET_FEATURES with
    LOG_ALL, then every ring's addresses again with VHOST_VRING_F_LOG."""
    fe.set_log_base(log.fd, log.size)
    fe.set_features(features | (1 << LOG_ALL), need_reply=True)
    for ring in dev.rings:
        fe.set_vring_addr_of(ring, flags=VRING_F_LOG, log=ring.used_gpa, need_reply=True)


@pytest.fixture
def pair(tmp_path):
    ports = {name: {"type": "vhost-user"} for name in ("a", "b")}
    with Vswitchd(tmp_path, ports) as sw:
        fa, fb = VhostUserFrontend(sw.socket("a")), VhostUserFrontend(sw.socket("b"))
        a = fa.setup_net_device(1, 256, FULL)
        b = fb.setup_net_device(1, 256, FULL, mem_size=16 << 20)
        a.rx(0).post_rx(64, 2048)
        yield sw, fb, a, b
        fa.close()
        fb.close()


def test_every_page_the_switch_writes_is_marked_and_nothing_else(pair):
    sw, fb, a, b = pair
    log = DirtyLog(16 << 20)
    try:
        b.rx(0).post_rx(8, 2048)
        exchange_by_name(a, b, "a", "b", n=2)              # FDB learned; logging still off
        assert log.pages() == set()
        assert "VHOST_F_LOG_ALL" not in sw.port("b")["features"]
        start_logging(fb, b, log, b.features)
        assert "VHOST_F_LOG_ALL" in sw.port("b")["features"]
        # RX: frames from a into buffers of b posted at known addresses
        rx = b.rx(0)
        rx.post_rx(6, 2048, descs_per_chain=2)
        buffers = {h: list(chain.writable) for h, chain in rx.inflight.items()}
        sent = [frame("b", "a", 500 + i, 1500) for i in range(6)]
        for f in sent:
            a.tx(0).post_tx(f)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 6 and time.monotonic() < deadline:
            got += rx.recv_frames(6 - len(got), timeout=0.2)
        assert [g.frame for g in got] == sent
        written = set()
        for elem in (e for g in got for e in g.elems):
            left = elem.len                         # bytes the switch wrote into this chain, in order
            for gpa, length in buffers[elem.id]:
                n = min(left, length)
                written |= pages_of(gpa, n)
                left -= n
        # both used rings: a worker going to sleep re-arms the TX ring's
        # notifications, which writes (and logs) its used ring too
        tx = b.tx(0)
        used = pages_of(rx.used_gpa, 4 + 8 * rx.num + 2) | pages_of(tx.used_gpa, 4 + 8 * tx.num + 2)
        marked = log.pages()
        assert written <= marked, f"data pages not marked: {sorted(written - marked)}"
        assert pages_of(rx.used_gpa, 4 + 8 * rx.num + 2) & marked, "RX used ring not marked"
        # only what was written: buffers still posted were not written and
        # their pages (unless shared with written ones) must not be marked
        unwritten = set()
        for chain in rx.inflight.values():
            for gpa, length in chain.writable:
                unwritten |= pages_of(gpa, length)
        assert unwritten - written - used, "test needs untouched pages to be meaningful"
        assert not (unwritten - written - used) & marked, sorted((unwritten - written - used) & marked)
        # TX: completing b's transmit buffers writes b's TX used ring
        log.clear()
        exchange_by_name(b, a, "b", "a", n=3)
        # the switch returns TX buffers just after delivering their frames
        deadline = time.monotonic() + 5
        while not pages_of(tx.used_gpa, 4 + 8 * tx.num + 2) & log.pages():
            assert time.monotonic() < deadline, "TX used ring not marked"
            time.sleep(0.01)
        assert sw.drops("b") == {}
    finally:
        log.close()


def test_logging_stops_when_log_all_is_cleared(pair):
    sw, fb, a, b = pair
    log = DirtyLog(16 << 20)
    try:
        start_logging(fb, b, log, b.features)
        b.rx(0).post_rx(8, 2048)
        exchange_by_name(a, b, "a", "b", n=2)
        assert log.pages()
        fb.set_features(b.features, need_reply=True)     # migration cancelled
        for ring in b.rings:
            fb.set_vring_addr_of(ring, need_reply=True)
        log.clear()
        exchange_by_name(a, b, "a", "b", n=4)
        assert log.pages() == set()
    finally:
        log.close()


def test_log_that_the_file_does_not_back_is_refused(pair):
    sw, fb, a, b = pair
    fd = os.memfd_create("short-log")
    os.ftruncate(fd, 4096)
    try:
        # larger than its file (CVE-2020-10722 class): mapping it would let a
        # worker touch pages past the end of the file. The connection closes.
        with pytest.raises(PeerClosed):
            fb.set_log_base(fd, 1 << 20)
    finally:
        os.close(fd)
    assert "SET_LOG_BASE: log needs" in sw.port("b")["last_error"]
    # the other port never noticed
    assert sw.port("a")["state"] == "connected"


def test_send_rarp_broadcasts_from_the_guest_and_moves_its_fdb_entry(pair):
    sw, fb, a, b = pair
    moved = bytes.fromhex("52540000ab01")
    b.rx(0).post_rx(8, 2048)
    exchange_by_name(a, b, "a", "b", n=1)
    fa_mac = MAC["a"]
    # the MAC is on port a's side first: a sends with it as source
    a.tx(0).post_tx(frame("b", "a", 1)[:6] + moved + frame("b", "a", 1)[12:])
    deadline = time.monotonic() + 5
    while {e["mac"]: e["port"] for e in sw.ctl("fdb show")}.get(moved.hex(":")) != "a":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    fb.send_rarp(moved, need_reply=True)
    fdb = {e["mac"]: e["port"] for e in sw.ctl("fdb show")}
    assert fdb[moved.hex(":")] == "b", fdb
    got = [f for f in a.rx(0).recv_frames(4, timeout=2.0) if f.frame[6:12] == moved]
    assert got, "no RARP reached port a"
    rarp = got[0].frame
    assert rarp[:6] == b"\xff" * 6 and rarp[12:14] == b"\x80\x35"
    assert rarp[20:22] == b"\x00\x03" and rarp[22:28] == moved and rarp[32:38] == moved
    assert fa_mac != moved
