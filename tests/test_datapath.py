"""The datapath against a front-end written in the tests: exact bytes, ring
stop/resume, memory-table changes, call-fd swaps, and hostile guest rings.

The front-end (tests/harness/frontend) builds guest memory and split rings by hand, so
it can do what QEMU and DPDK never do: corrupt descriptors on purpose. Each
test runs its own vswitchd process.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.harness.frontend import Feature as F
from tests.harness.frontend import GuestMemory, Hostile, RegionSpec, VhostUserFrontend, VirtioNetHdr, bits
from tests.harness.frontend.vhost_frontend import readable
from tests.harness.packets import l4_ok, partial, tcp_frame
from tests.harness.switch import Vswitchd
from tests.harness.traffic import (
    FULL, MAC, OFFLOADS_RX, OFFLOADS_TX, connect, exchange_by_name, frame, seq_of, wait_until,
)


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def switch(request, tmp_path):
    ports = {name: {"type": "vhost-user", "queues": 2} for name in ("a", "b", "c", "d")}
    with Vswitchd(tmp_path, ports, workers=request.param) as sw:
        yield sw


@pytest.fixture
def switch1(tmp_path):
    ports = {name: {"type": "vhost-user", "queues": 2} for name in ("a", "b")}
    with Vswitchd(tmp_path, ports, workers=1) as sw:
        yield sw


# --- exact delivery ------------------------------------------------------------------------

def test_frames_cross_byte_for_byte_on_every_queue_pair(switch):
    a = connect(switch, "a", 2)
    b = connect(switch, "b", 2, rx_buffers=0)
    for q in (0, 1):
        b.rx(q).post_rx(200, 256)     # small buffers: big frames span several (MRG_RXBUF)
    layouts = [dict(), dict(split=[12]), dict(split=[5, 40]), dict(indirect=True),
               dict(split=[12, 30], indirect=True)]
    for q in (0, 1):
        sent = []
        for i, size in enumerate([60, 64, 200, 1514, 4000, 9000, 65000 // 8]):
            f = frame("b", "a", q * 100 + i, size)
            a.tx(q).post_tx(f, **layouts[i % len(layouts)])
            sent.append(f)
        got = b.rx(q).recv_frames(len(sent), timeout=10)
        assert [g.frame for g in got] == sent
        for g in got:
            assert g.num_buffers == len(g.elems) == -(-(12 + len(g.frame)) // 256)
    port_a = switch.port("a")
    assert all(port_a["queues"][q]["tx"]["packets"] == 7 for q in (0, 1))
    assert switch.drops("a") == {} and switch.drops("b") == {}


@pytest.mark.parametrize("fill", [0xA5, 0x00], ids=["poisoned", "zeroed"])
def test_a_burst_of_small_frames_arrives_whole_each_with_its_own_header(switch1, fill):
    """One burst of small frames: their copies into the receiver's buffers are
    made together at the end of the delivery, while the frames whose checksum
    the switch finishes (in its one scratch buffer, reused by the next such
    frame) are copied at once. Every frame arrives byte for byte with a
    header of its own, whatever the buffers held before: poison, or zeros
    (the header is written only where it differs: here only num_buffers)."""
    a = connect(switch1, "a", features=FULL | OFFLOADS_TX)
    b = connect(switch1, "b", features=FULL, rx_buffers=0)      # no GUEST_CSUM: the switch finishes them
    b.rx(0).post_rx(32, 2048, fill=fill)
    sent: list[tuple[bytes, bool]] = []
    for i in range(24):
        if i % 3 == 2:
            f = addressed(partial(tcp_frame(bytes([i]) * (40 + i)), L3, L4, False, 6, 16), "b", "a")
            a.tx(0).post_tx(f, hdr=VirtioNetHdr(flags=1, csum_start=L4, csum_offset=16),
                            publish=False, kick=False)
        else:
            f = frame("b", "a", i, 60 + 8 * i)
            a.tx(0).post_tx(f, publish=False, kick=False)
        sent.append((f, i % 3 == 2))
    a.tx(0).publish(kick=True)          # one burst
    got = b.rx(0).recv_frames(len(sent), timeout=10)
    assert len(got) == len(sent)
    for g, (f, finished) in zip(got, sent):
        if finished:
            assert l4_ok(g.frame, L3, L4, False, 6)
            assert g.frame[:L4 + 16] == f[:L4 + 16] and g.frame[L4 + 18:] == f[L4 + 18:]
        else:
            assert g.frame == f
        h = g.hdr
        assert (h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset, h.num_buffers) == \
            (0, 0, 0, 0, 0, 0, 1), h
    assert offload_counters(switch1, "b")["sw_csum"] == 8
    assert switch1.drops("a") == {} and switch1.drops("b") == {}


def test_in_order_buffers_come_back_in_the_order_they_were_made_available(switch1):
    """VIRTIO_F_IN_ORDER: "all buffers are used by the device in the same
    order in which they have been made available" (virtio 1.2), dropped
    frames' buffers included, so that a driver may free them by count. One
    publish of 40 TX chains (two bursts) mixing frames that cross, runts and
    offload requests the port did not negotiate, in one-, two-descriptor and
    indirect layouts; RX buffers of 256 bytes, which frames of up to 1500
    bytes span several of."""
    in_order = bits(F.IN_ORDER)
    a = connect(switch1, "a", features=FULL | in_order)
    b = connect(switch1, "b", features=FULL | in_order, rx_buffers=0)
    rx_heads = b.rx(0).post_rx(250, 256)
    layouts = [dict(), dict(split=[12]), dict(indirect=True)]
    tx_heads: list[int] = []
    sent: list[bytes] = []
    for i in range(40):
        layout = layouts[i % len(layouts)]
        if i % 5 == 3:      # shorter than an Ethernet header: dropped as a runt
            head = a.tx(0).post_tx(b"\x02" * 10, publish=False, kick=False, **layout)
        elif i % 5 == 4:    # asks for a checksum without CSUM negotiated: dropped
            f = addressed(tcp_frame(bytes([i]) * 100), "b", "a")
            head = a.tx(0).post_tx(f, hdr=VirtioNetHdr(flags=1, csum_start=L4, csum_offset=16),
                                   publish=False, kick=False, **layout)
        else:
            f = frame("b", "a", i, 60 + 37 * i)
            head = a.tx(0).post_tx(f, publish=False, kick=False, **layout)
            sent.append(f)
        tx_heads.append(head)
    a.tx(0).publish(kick=True)
    used = a.tx(0).wait_used(len(tx_heads), timeout=10)
    assert [u.id for u in used] == tx_heads
    got = b.rx(0).recv_frames(len(sent), timeout=10)
    assert [g.frame for g in got] == sent
    rx_used = [e.id for g in got for e in g.elems]
    assert len(rx_used) > len(sent)                 # frames that span several buffers
    assert rx_used == rx_heads[:len(rx_used)]
    assert not a.tx(0).errors and not b.rx(0).errors
    for name in ("a", "b"):
        assert "F_IN_ORDER" in switch1.port(name)["features"]
    assert switch1.drops("a") == {"runt": 8, "bad_offload": 8}
    assert switch1.drops("b") == {}


def test_without_mrg_rxbuf_a_frame_larger_than_the_buffer_is_dropped_and_counted(switch1):
    a = connect(switch1, "a")
    b = connect(switch1, "b", features=bits(F.VERSION_1), rx_buffers=16, rx_buf_len=1536)
    a.tx(0).post_tx(frame("b", "a", 1, 4000))
    a.tx(0).post_tx(frame("b", "a", 2, 1000))
    got = b.rx(0).recv_frames(1, timeout=10)
    assert [seq_of(g.frame) for g in got] == [2]
    assert got[0].hdr.num_buffers == 1          # set even without MRG_RXBUF
    assert switch1.drops("b") == {"rx_buffer_too_small": 1}


def test_two_regions_sharing_one_memfd_and_buffers_in_the_upper_one(switch1):
    mem = GuestMemory(regions=[RegionSpec(0, 16 << 20, backing="ram"),
                               RegionSpec(4 << 30, 16 << 20, backing="ram")])
    a = connect(switch1, "a", mem=mem, buf_region=1)
    b = connect(switch1, "b")
    exchange_by_name(a, b, "a", "b")


def test_a_rings_region_hint_survives_new_memory_tables(switch1):
    """Translation looks first in the region a ring's buffers were last found
    in (an index into the table, mem.pxi mem_find_gpa_hint). A new table may
    list the regions in another order, or lack that one: the index is then
    checked against the table in place, never trusted."""
    mem_a = GuestMemory(regions=[RegionSpec(0, 16 << 20, backing="ram"),
                                 RegionSpec(4 << 30, 16 << 20, backing="ram")])
    mem_b = GuestMemory(regions=[RegionSpec(0, 16 << 20, backing="ram"),
                                 RegionSpec(4 << 30, 16 << 20, backing="ram")])
    a = connect(switch1, "a", mem=mem_a, buf_region=1)      # TX buffers in the upper region
    b = connect(switch1, "b", mem=mem_b, buf_region=1)      # and RX buffers: hint 1 on both rings
    exchange_by_name(a, b, "a", "b")
    lower_a, upper_a = mem_a.regions
    lower_b, upper_b = mem_b.regions
    # the same regions, listed upper first: index 1 is now the lower region
    assert a.frontend.set_mem_table([upper_a, lower_a], need_reply=True) == 0
    assert b.frontend.set_mem_table([upper_b, lower_b], need_reply=True) == 0
    exchange_by_name(a, b, "a", "b")
    # a's table without the upper region: its hint (index 1) is past the
    # table's end, and a buffer up there is outside the guest's memory now
    assert a.frontend.set_mem_table([lower_a], need_reply=True) == 0
    before = switch1.drops("a").get("bad_address", 0)
    a.tx(0).post_tx(frame("b", "a", 1))
    wait_until(lambda: switch1.drops("a").get("bad_address", 0) == before + 1, what="bad_address")
    a.tx(0).buf_region = 0
    exchange_by_name(a, b, "a", "b")
    assert switch1.port("a")["connections"] == 1


def test_eight_regions_work_and_nine_are_refused(switch1):
    mem8 = GuestMemory(regions=[RegionSpec(i << 28, 4 << 20) for i in range(8)])
    a = connect(switch1, "a", mem=mem8, buf_region=7)
    b = connect(switch1, "b")
    exchange_by_name(a, b, "a", "b")
    mem9 = GuestMemory(regions=[RegionSpec(i << 28, 4 << 20) for i in range(9)])
    fe = VhostUserFrontend(switch1.socket("a"))     # a second front-end is refused while a runs
    assert fe.wait_closed(10)
    a.frontend.close()
    switch1.wait_port("a", lambda p: p["state"] == "listening", what="listening again")
    fe = VhostUserFrontend(switch1.socket("a"))
    with pytest.raises(Exception):
        fe.setup_net_device(1, 256, FULL, mem=mem9)
    assert fe.wait_closed(10)
    assert re.search(r"\b9 (fds|regions)", switch1.port("a")["last_error"])


# --- ring stop and resume --------------------------------------------------------------------

def test_get_vring_base_round_trip_loses_and_duplicates_nothing(switch1):
    a = connect(switch1, "a")
    b = connect(switch1, "b", rx_buffers=256)
    fe, tx = a.frontend, a.tx(0)
    sent = last_base = 0
    for round_ in range(5):
        for _ in range(20):
            tx.post_tx(frame("b", "a", sent))
            sent += 1
        base = fe.get_vring_base(tx.index)          # stop mid-stream
        assert last_base <= base <= tx.avail_idx      # never past what the guest offered
        last_base = base
        for _ in range(10):                         # posted while stopped: not processed
            tx.post_tx(frame("b", "a", sent))
            sent += 1
        time.sleep(0.05)
        assert switch1.port("a")["queues"][0]["tx"]["started"] is False
        fe.set_vring_base(tx.index, base)           # resume where the switch stopped
        fe.set_vring_addr_of(tx)
        fe.set_vring_kick(tx.index, tx.kick_fd)
        fe.sync()
    got = b.rx(0).recv_frames(sent, timeout=15)
    assert sorted(seq_of(g.frame) for g in got) == list(range(sent))   # each exactly once
    assert [seq_of(g.frame) for g in got] == list(range(sent))         # and in order
    assert b.rx(0).recv_frames(1, timeout=0.5) == []


def _stream(src, dst, src_name: str, dst_name: str, first: int, n: int) -> None:
    """n numbered frames src -> dst in batches the rings hold; dst gets each once, in order."""
    got: list[int] = []
    for start in range(first, first + n, 64):
        batch = list(range(start, min(start + 64, first + n)))
        src.tx(0).post_tx_frames([frame(dst_name, src_name, i) for i in batch])
        deadline = time.monotonic() + 10
        while len(got) < batch[-1] - first + 1 and time.monotonic() < deadline:
            for g in dst.rx(0).recv_frames(64, timeout=0.2):
                dst.rx(0).post_rx(1, 2048)
                if g.frame[6:12] == MAC[src_name]:
                    got.append(seq_of(g.frame))
        src.tx(0).reap()
    assert got == list(range(first, first + n))


def test_a_front_end_that_resumes_its_rings_with_base_zero_is_resynchronised_from_the_used_ring(switch1):
    """DPDK's virtio-user reconnects (its back-end restarted) with its rings
    as they were and SET_VRING_BASE 0 (virtio_user_kick_queue: "no
    reservation"): the used index in guest memory is where the back-end
    stopped, and DPDK's vhost takes it (translate_ring_addresses). Here a's
    rings are 300 frames past their start when the connection drops; without
    taking the used index the avail index is more than a ring ahead of the
    base and the ring would be stopped as broken."""
    a = connect(switch1, "a", rx_buffers=256)
    b = connect(switch1, "b", rx_buffers=256)
    _stream(a, b, "a", "b", 0, 300)
    _stream(b, a, "b", "a", 0, 300)
    a.frontend.close()
    switch1.wait_port("a", lambda p: p["state"] == "listening", what="listening again")
    fe = VhostUserFrontend(switch1.socket("a"))
    fe.get_features()
    fe.get_protocol_features()
    fe.set_protocol_features(a.protocol_features)
    fe.set_owner()
    fe.set_features(a.features)
    fe.set_mem_table(a.mem)
    for ring in a.rings:
        assert ring.avail_idx - 0 > ring.num            # a base of 0 is more than a ring behind
        fe.set_vring_num(ring.index, ring.num)
        fe.set_vring_base(ring.index, 0)
        fe.set_vring_addr_of(ring)
        fe.set_vring_kick(ring.index, ring.kick_fd)
        fe.set_vring_call(ring.index, ring.call_fd)
        fe.set_vring_enable(ring.index, True)
    fe.sync()
    a.frontend = fe
    _stream(a, b, "a", "b", 300, 100)
    _stream(b, a, "b", "a", 300, 100)
    assert "ring_broken" not in switch1.drops("a")
    q = switch1.port("a")["queues"][0]
    assert not q["tx"]["broken"] and not q["rx"]["broken"]
    assert q["tx"]["base_resyncs"] == 1 and q["rx"]["base_resyncs"] == 1
    fe.close()


def test_call_fd_swapped_while_traffic_flows(switch1):
    a = connect(switch1, "a")
    b = connect(switch1, "b", features=bits(F.VERSION_1, F.MRG_RXBUF), rx_buffers=256)
    exchange_by_name(a, b, "a", "b")
    new_call = os.eventfd(0, os.EFD_NONBLOCK)
    old_call = b.rx(0).call_fd
    b.frontend.set_vring_call(b.rx(0).index, new_call)
    b.frontend.sync()
    b.rx(0).call_fd = new_call
    b.rx(0).drain_call()
    os.set_blocking(old_call, False)
    try:
        os.read(old_call, 8)
    except BlockingIOError:
        pass
    for i in range(4):
        a.tx(0).post_tx(frame("b", "a", i))
    assert readable(new_call, 10)                 # the switch now signals the new fd
    assert not readable(old_call, 0.2)            # and no longer the old one
    assert [seq_of(g.frame) for g in b.rx(0).recv_frames(4, timeout=10)] == [0, 1, 2, 3]


def test_mem_table_resent_while_rings_run(switch1):
    a = connect(switch1, "a")
    b = connect(switch1, "b", rx_buffers=256)
    for i in range(5):
        exchange_by_name(a, b, "a", "b", n=4)
        assert a.frontend.set_mem_table(a.mem, need_reply=True) == 0
        assert b.frontend.set_mem_table(b.mem, need_reply=True) == 0
    exchange_by_name(a, b, "a", "b", n=4)
    assert switch1.port("a")["connections"] == 1


# --- hostile guests ----------------------------------------------------------------------------

HOSTILE_TX = [
    ("addr_outside_memory", {"bad_address"}),
    ("straddle_end_of_memory", {"bad_address"}),
    ("len_overflow_64", {"bad_address", "bad_length"}),
    ("len_overflow_32", {"bad_length"}),
    ("zero_length", {"runt"}),
    ("short_header", {"runt"}),
    ("wrong_direction", {"bad_flags"}),
    ("write_before_read", {"bad_flags"}),
    ("loop", {"bad_chain"}),
    ("chain_longer_than_ring", {"bad_chain"}),
    ("next_out_of_range", {"bad_chain"}),
    ("head_out_of_range", {"bad_head"}),
    ("indirect_bad_len", {"bad_indirect"}),
    ("indirect_zero_len", {"bad_indirect"}),
    ("indirect_outside_memory", {"bad_indirect"}),
    ("indirect_nested", {"bad_indirect"}),
    ("indirect_with_next", {"bad_indirect"}),
    ("indirect_loop", {"bad_chain"}),
    ("indirect_next_out_of_table", {"bad_chain"}),
    ("indirect_too_long", {"bad_chain", "too_many_segments", "bad_length"}),
]


def test_hostile_tx_chains_are_dropped_counted_and_cost_nobody_else(switch):
    a = connect(switch, "a")
    b = connect(switch, "b", rx_buffers=256)
    c = connect(switch, "c", rx_buffers=256)
    d = connect(switch, "d", rx_buffers=256)
    exchange_by_name(c, d, "c", "d")
    exchange_by_name(d, c, "d", "c")
    fds = switch.fd_count()
    for recipe, reasons in HOSTILE_TX:
        before = switch.drops("a")
        getattr(Hostile(a.tx(0)), recipe)()
        deadline = time.monotonic() + 10
        while switch.drops("a") == before and time.monotonic() < deadline:
            time.sleep(0.02)
        after = switch.drops("a")
        grew = {r for r in after if after[r] != before.get(r, 0)}
        assert grew and grew <= reasons, (recipe, before, after)
        assert sum(after.values()) == sum(before.values()) + 1, recipe
        # the guilty ring still works, and the healthy pair never noticed
        exchange_by_name(a, b, "a", "b", n=2)
        exchange_by_name(c, d, "c", "d", n=2)
    assert a.frontend.connected() and switch.alive()
    assert switch.drops("c") == {} and switch.drops("d") == {}
    assert switch.fd_count() <= fds


HOSTILE_RX = ["addr_outside_memory", "loop", "wrong_direction", "indirect_outside_memory", "zero_length"]


def test_hostile_rx_buffers_drop_only_that_frame(switch):
    a = connect(switch, "a")
    b = connect(switch, "b", rx_buffers=0)
    for recipe in HOSTILE_RX:
        getattr(Hostile(b.rx(0)), recipe)()
        b.rx(0).post_rx(1, 2048)
        a.tx(0).post_tx(frame("b", "a", 1))       # lands in the bad buffer: dropped
        a.tx(0).post_tx(frame("b", "a", 2))       # lands in the good one
        got = b.rx(0).recv_frames(1, timeout=10)
        assert [seq_of(g.frame) for g in got] == [2], recipe
    assert switch.drops("b") == {"rx_bad_chain": len(HOSTILE_RX)}


def test_wild_avail_index_breaks_only_that_ring_until_reset(switch):
    a = connect(switch, "a")
    b = connect(switch, "b", rx_buffers=256)
    c = connect(switch, "c", rx_buffers=256)
    d = connect(switch, "d", rx_buffers=256)
    Hostile(a.tx(0)).wild_avail_idx(0x8000)
    # the ring stops at once; the alert comes from the health task, within its period
    port = switch.wait_port("a", lambda p: p["queues"][0]["tx"]["broken"] and "vring1" in p["alerts"],
                            timeout=10, what="tx ring 0 marked broken")
    assert "avail index jumped" in port["last_error"]
    assert port["queues"][0]["tx"]["drops"] == {"ring_broken": 1}
    exchange_by_name(c, d, "c", "d")                      # others keep forwarding
    assert a.frontend.connected()
    # RESET_DEVICE brings the port back without a reconnect
    a.frontend.reset_device()
    a2 = a.frontend.setup_net_device(1, 256, FULL)
    a2.rx(0).post_rx(64, 2048)
    switch.wait_port("a", lambda p: not p["queues"][0]["tx"]["broken"], timeout=10, what="ring reset")
    exchange_by_name(a2, b, "a", "b")
    assert switch.port("a")["connections"] == 1


def test_vring_index_beyond_configured_queues_closes_the_connection(switch1):
    fe = VhostUserFrontend(switch1.socket("a"))
    fe.get_features()
    fe.set_vring_num(4, 256)                       # 2 queue pairs: vrings 0..3
    assert fe.wait_closed(10)
    port = switch1.wait_port("a", lambda p: p["state"] == "listening", what="listening again")
    assert "vring index 4 beyond" in port["last_error"]


# --- offloads ----------------------------------------------------------------------------------

L3, L4 = 14, 34                      # untagged IPv4 without options


def offload_counters(sw: Vswitchd, port: str) -> dict[str, int]:
    return sw.port(port)["queues"][0]["rx"]["offload"]


def addressed(frame: bytes, dst: str, src: str) -> bytes:
    return MAC[dst] + MAC[src] + frame[12:]


@pytest.mark.parametrize("receiver_csum", [True, False], ids=["guest_csum", "no_guest_csum"])
def test_partial_checksum_is_handed_on_or_finished(switch1, receiver_csum):
    a = connect(switch1, "a", features=FULL | OFFLOADS_TX)
    b = connect(switch1, "b", features=FULL | (bits(F.GUEST_CSUM) if receiver_csum else 0))
    payload = bytes(range(256)) * 3 + b"odd"
    f = addressed(partial(tcp_frame(payload), L3, L4, False, 6, 16), "b", "a")
    a.tx(0).post_tx(f, hdr=VirtioNetHdr(flags=1, csum_start=L4, csum_offset=16))
    got = b.rx(0).recv_frames(1, timeout=10)[0]
    if receiver_csum:
        assert got.frame == f                      # untouched, still partial
        assert (got.hdr.flags, got.hdr.csum_start, got.hdr.csum_offset) == (1, L4, 16)
        assert offload_counters(switch1, "b")["csum_passthrough"] == 1
    else:
        assert got.hdr.flags == 0 and l4_ok(got.frame, L3, L4, False, 6)
        assert got.frame[:L4 + 16] == f[:L4 + 16] and got.frame[L4 + 18:] == f[L4 + 18:]
        assert offload_counters(switch1, "b")["sw_csum"] == 1


@pytest.mark.parametrize("receiver_tso", [True, False], ids=["guest_tso", "no_guest_tso"])
def test_gso_frame_is_handed_on_or_segmented(switch1, receiver_tso):
    a = connect(switch1, "a", features=FULL | OFFLOADS_TX)
    b = connect(switch1, "b", features=FULL | (OFFLOADS_RX if receiver_tso else 0), rx_buffers=200)
    payload = bytes((i * 7) & 0xFF for i in range(20000))
    f = addressed(partial(tcp_frame(payload), L3, L4, False, 6, 16), "b", "a")
    mss = 1448
    a.tx(0).post_tx(f, hdr=VirtioNetHdr(flags=1, gso_type=1, hdr_len=L4 + 20, gso_size=mss,
                                        csum_start=L4, csum_offset=16))
    nseg = -(-len(payload) // mss)
    if receiver_tso:
        got = b.rx(0).recv_frames(1, timeout=10)[0]
        assert got.frame == f
        assert (got.hdr.gso_type, got.hdr.gso_size, got.hdr.flags) == (1, mss, 1)
        assert offload_counters(switch1, "b")["gso_passthrough"] == 1
    else:
        got = b.rx(0).recv_frames(nseg, timeout=10)
        assert len(got) == nseg
        assert b"".join(g.frame[L4 + 20:] for g in got) == payload
        for g in got:
            assert g.hdr.gso_type == 0 and len(g.frame) <= 1514
            assert l4_ok(g.frame, L3, L4, False, 6)
        counters = offload_counters(switch1, "b")
        assert (counters["sw_gso"], counters["sw_gso_segments"]) == (1, nseg)


def test_offload_request_not_negotiated_is_dropped(switch1):
    a = connect(switch1, "a")                        # no CSUM, no HOST_TSO
    b = connect(switch1, "b")
    f = addressed(tcp_frame(b"x" * 100), "b", "a")
    a.tx(0).post_tx(f, hdr=VirtioNetHdr(flags=1, csum_start=L4, csum_offset=16))
    a.tx(0).post_tx(f, hdr=VirtioNetHdr(flags=1, gso_type=1, gso_size=1000, csum_start=L4, csum_offset=16))
    a.tx(0).post_tx(f)
    got = b.rx(0).recv_frames(1, timeout=10)
    assert [g.frame for g in got] == [f]
    assert switch1.drops("a") == {"bad_offload": 2}
