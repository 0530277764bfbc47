"""Hostile packed virtqueues (VIRTIO_F_RING_PACKED) against a live vswitchd.

The test front-end (tests/harness/frontend, ``packed=True``) builds packed
rings by hand and breaks the driver rules the split-ring tests in
test_datapath.py and test_fuzz_rings.py break, plus the packed ring's own:
descriptors marked available for the wrong lap (wrap counter), AVAIL == USED
written by the driver, a wrap counter flipped without the index passing the
ring's end, buffer ids out of range or twice in flight, chains that never end
within the ring, NEXT inside an indirect table, indirect inside indirect,
lengths 0 and 2**32-1, ring sizes that are not a power of two, a vring base
beyond the ring, and a racing writer (tests/harness/racer.c) rewriting the
descriptor ring while the switch reads it.

Always: the switch keeps running, a well-behaved pair of ports keeps switching
byte for byte, and every chain the hostile driver made available is either
delivered or dropped and counted with a reason in `port show`.

Each test runs its own vswitchd process.
"""

from __future__ import annotations

import time

import pytest

from tests.harness.frontend import (
    VRING_DESC_F_NEXT,
    Feature,
    GuestMemory,
    PackedHostile,
    PeerClosed,
    PackedRing,
    RingFull,
    VhostUserFrontend,
    VirtioNetHdr,
    bits,
    packed_vring_base,
)
from tests.harness.racer import Racer, rand
from tests.harness.switch import Vswitchd
from tests.harness.traffic import FULL, MAC, connect, exchange_by_name, frame, seq_of

PACKED = FULL | bits(Feature.RING_PACKED)
# docs/metrics.md "Drop reasons": what a hostile packed driver may cost itself
GUEST_FAULTS = {"bad_head", "bad_address", "bad_length", "bad_chain", "bad_indirect", "bad_flags",
                "too_many_segments", "runt", "ring_broken", "rx_bad_chain", "no_rx_buffer",
                "rx_buffer_too_small", "over_budget", "same_port"}


# Devices and front-ends a test opened: closed after it (each holds a memfd,
# a socket and three eventfds per ring; a long run would run out of fds).
_OPEN: list = []


@pytest.fixture(autouse=True)
def _close_devices():
    yield
    for obj in reversed(_OPEN):
        try:
            obj.close()
        except Exception:
            pass
    _OPEN.clear()


def opened(obj):
    _OPEN.append(obj)
    return obj


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def switch(request, tmp_path):
    ports = {name: {"type": "vhost-user", "queues": 2} for name in ("a", "b", "c", "d")}
    with Vswitchd(tmp_path, ports, workers=request.param) as sw:
        yield sw


@pytest.fixture
def switch1(tmp_path):
    ports = {name: {"type": "vhost-user", "queues": 2} for name in ("a", "b", "c", "d")}
    with Vswitchd(tmp_path, ports, workers=1) as sw:
        yield sw


def packed(sw: Vswitchd, name: str, ring: int = 64, rx_buffers: int | None = None, **kw):
    """A started test device on `name` with packed rings of `ring` entries."""
    dev = opened(connect(sw, name, packed=True, ring=ring,
                         rx_buffers=min(ring, 32) if rx_buffers is None else rx_buffers, **kw))
    assert isinstance(dev.tx(0), PackedRing) and dev.packed
    return dev


def healthy_pair(sw: Vswitchd):
    """c (packed) and d (split) exchange frames both ways: the bystanders."""
    c = packed(sw, "c", 256, rx_buffers=200)
    d = opened(connect(sw, "d", rx_buffers=200))
    exchange_by_name(c, d, "c", "d")
    exchange_by_name(d, c, "d", "c")
    return c, d


def wait_drops(sw: Vswitchd, name: str, before: dict, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while (now := sw.drops(name)) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    return now


def grown(before: dict, after: dict) -> dict:
    return {r: after[r] - before.get(r, 0) for r in after if after[r] != before.get(r, 0)}


def tx_packets(sw: Vswitchd, name: str) -> int:
    return sum(q["tx"]["packets"] for q in sw.port(name)["queues"])


def trickle(src, dst, src_name: str, dst_name: str, n: int, q: int = 0) -> None:
    """n frames src->dst one at a time (rings smaller than n): each arrives intact, in order."""
    for i in range(n):
        f = frame(dst_name, src_name, 2000 + i, 200)
        src.tx(q).post_tx(f)
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            for g in dst.rx(q).recv_frames(1, timeout=0.2):
                dst.rx(q).post_rx(1, 2048)
                if g.frame[6:12] == MAC[src_name]:
                    got.append(g.frame)
        assert got == [f], (i, n)
        src.tx(q).reap()


def recv_seqs(dev, n: int, timeout: float = 5.0, q: int = 0, src: str = "a") -> list[int]:
    """Sequence numbers of up to n frames from `src` received on dev (buffers
    given back; frames flooded from others are skipped)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for g in dev.rx(q).recv_frames(n - len(got), timeout=0.1):
            dev.rx(q).post_rx(1, 2048)
            if g.frame[6:12] == MAC[src]:
                got.append(seq_of(g.frame))
    return got


# --- the front-end's packed rings through the switch ------------------------------------------

@pytest.mark.parametrize("ring", [1, 3, 13, 100, 255])
def test_packed_rings_of_any_size_switch_byte_for_byte_with_chains_across_the_ring_end(switch1, ring):
    a = packed(switch1, "a", ring)
    b = packed(switch1, "b", ring, rx_buffers=0)
    layouts = [dict(), dict(split=[12]), dict(split=[5, 40]), dict(indirect=True), dict(split=[12, 30], indirect=True)]
    if ring < 3:
        layouts = [dict(), dict(indirect=True), dict(split=[12, 30], indirect=True)]
    sent, got = [], []
    # several laps of both rings: chains start at every slot and cross the end
    for i in range(4 * ring + 7):
        size = [60, 64, 200, 1000, 1514][i % 5]
        buf = 256 if ring >= 100 and i % 2 == 0 else 2048       # MRG_RXBUF: several buffers per frame
        b.rx(0).post_rx(-(-(12 + size) // buf), buf, descs_per_chain=1 + i % 3 if ring >= 13 else 1)
        f = frame("b", "a", i, size)
        a.tx(0).post_tx(f, **layouts[i % len(layouts)])
        sent.append(f)
        got += [g.frame for g in b.rx(0).recv_frames(1, timeout=5)]
        a.tx(0).wait_used(1)
    assert got == sent
    assert a.tx(0).laps >= 2 and b.rx(0).laps >= 2
    assert not a.tx(0).errors and not b.rx(0).errors
    assert switch1.drops("a") == {} and switch1.drops("b") == {}
    port = switch1.port("a")
    assert "F_RING_PACKED" in port["features"]


def test_a_packed_port_and_a_split_port_switch_to_each_other(switch1):
    a = packed(switch1, "a", 255)
    b = opened(connect(switch1, "b", rx_buffers=256))
    exchange_by_name(a, b, "a", "b", n=200)
    exchange_by_name(b, a, "b", "a", n=30)


# --- hostile chains: dropped, counted, and nobody else notices ---------------------------------

HOSTILE_TX = [
    ("addr_outside_memory", {"bad_address"}),
    ("straddle_end_of_memory", {"bad_address"}),
    ("len_overflow_64", {"bad_address", "bad_length"}),
    ("len_overflow_32", {"bad_length"}),
    ("huge_length", {"bad_length", "bad_address"}),
    ("zero_length", {"runt"}),
    ("short_header", {"runt"}),
    ("wrong_direction", {"bad_flags"}),
    ("write_before_read", {"bad_flags"}),
    ("indirect_bad_len", {"bad_indirect"}),
    ("indirect_zero_len", {"bad_indirect"}),
    ("indirect_outside_memory", {"bad_indirect"}),
    ("indirect_nested", {"bad_indirect"}),
    ("indirect_with_next", {"bad_indirect"}),
    ("indirect_too_long", {"bad_chain", "too_many_segments", "bad_length"}),
]
RECIPE_ARGS = {"indirect_too_long": {"entries": 300}}      # more than the switch gathers, as a 256-ring's


def test_hostile_packed_tx_chains_are_dropped_counted_and_cost_nobody_else(switch):
    a = packed(switch, "a", 13)                # odd size: the recipes land across the ring's end
    b = packed(switch, "b", 64)
    c, d = healthy_pair(switch)
    fds = switch.fd_count()
    for rnd in range(2):
        for recipe, reasons in HOSTILE_TX:
            before = switch.drops("a")
            buf_id = getattr(PackedHostile(a.tx(0)), recipe)(**RECIPE_ARGS.get(recipe, {}))
            after = wait_drops(switch, "a", before)
            grew = grown(before, after)
            assert grew and set(grew) <= reasons and sum(grew.values()) == 1, (recipe, rnd, before, after)
            # the bad chain came back (used), the guilty ring still works, the bystanders never noticed
            exchange_by_name(a, b, "a", "b", n=2)
            a.tx(0).reap()
            assert buf_id not in a.tx(0).inflight, recipe
            exchange_by_name(c, d, "c", "d", n=2)
    assert a.frontend.connected() and switch.alive()
    assert a.tx(0).laps >= 2
    assert switch.drops("c") == {} and switch.drops("d") == {}
    assert switch.fd_count() <= fds


HOSTILE_RX = ["addr_outside_memory", "wrong_direction", "indirect_outside_memory", "zero_length",
              "straddle_end_of_memory", "indirect_nested", "indirect_with_next", "huge_length"]


def test_hostile_packed_rx_buffers_drop_only_that_frame(switch):
    a = packed(switch, "a", 64)
    b = packed(switch, "b", 13, rx_buffers=0)
    for i, recipe in enumerate(HOSTILE_RX * 2):
        getattr(PackedHostile(b.rx(0)), recipe)()
        b.rx(0).post_rx(1, 2048)
        a.tx(0).post_tx(frame("b", "a", 2 * i + 1))      # lands in the bad buffer: dropped
        a.tx(0).post_tx(frame("b", "a", 2 * i + 2))      # lands in the good one
        got = b.rx(0).recv_frames(1, timeout=10)
        assert [seq_of(g.frame) for g in got] == [2 * i + 2], recipe
        b.rx(0).reap()
        assert not b.rx(0).inflight, recipe               # the bad buffer came back too
    assert switch.drops("b") == {"rx_bad_chain": 2 * len(HOSTILE_RX)}
    assert switch.drops("a") == {}


# --- wrap counters and AVAIL/USED flags ---------------------------------------------------------

NOT_AVAILABLE = ["wrong_wrap", "used_this_lap", "used_last_lap"]


@pytest.mark.parametrize("lap", [1, 2, 3])
@pytest.mark.parametrize("kind", NOT_AVAILABLE)
def test_a_tx_head_not_available_in_this_lap_is_left_alone_until_the_driver_publishes_it(switch1, kind, lap):
    """The head's AVAIL/USED bits say "not available" for the ring's current
    lap: the switch must not take the chain (a device that looks only at
    AVAIL, or only at AVAIL != USED, would). Made available properly, it goes."""
    a = packed(switch1, "a", 7)
    b = packed(switch1, "b", 64)
    # bring a's TX ring to lap `lap`, mid-ring
    for i in range(7 * (lap - 1) + 3):
        a.tx(0).post_tx(frame("b", "a", i))
        assert recv_seqs(b, 1) == [i]
        a.tx(0).wait_used(1)
    assert a.tx(0).avail_wrap == (lap % 2) and a.tx(0).next_avail == 3
    sent = tx_packets(switch1, "a")
    f = frame("b", "a", 500)
    a.tx(0).post_tx(f, publish=False)
    ((slot, good),) = a.tx(0).pending_heads()
    bad = PackedHostile(a.tx(0)).head_flags_as(kind, PackedHostile.lap_of(good))
    a.tx(0).set_desc_flags(slot, bad)
    written = a.tx(0).read_desc(slot)
    a.tx(0).kick()
    time.sleep(0.5)
    assert recv_seqs(b, 1, timeout=0.5) == []
    assert tx_packets(switch1, "a") == sent and switch1.drops("a") == {}
    assert a.tx(0).read_desc(slot) == written      # not returned either (a used element rewrites it)
    a.tx(0).publish(kick=True)
    assert recv_seqs(b, 1) == [500]
    assert len(a.tx(0).wait_used(1)) == 1
    trickle(a, b, "a", "b", 10)
    assert switch1.drops("a") == {} and not switch1.port("a")["queues"][0]["tx"]["broken"]


@pytest.mark.parametrize("kind", NOT_AVAILABLE)
def test_an_rx_buffer_not_available_in_this_lap_is_not_written(switch1, kind):
    a = packed(switch1, "a", 64)
    b = packed(switch1, "b", 5, rx_buffers=0)
    for i in range(7):                          # b's RX ring into its second lap
        b.rx(0).post_rx(1, 2048)
        a.tx(0).post_tx(frame("b", "a", i))
        assert [seq_of(g.frame) for g in b.rx(0).recv_frames(1, timeout=5)] == [i]
    assert not b.rx(0).inflight and b.rx(0).avail_wrap == 0
    before = switch1.drops("b")
    b.rx(0).post_rx(1, 2048, fill=0x5A, publish=False)
    ((slot, good),) = b.rx(0).pending_heads()
    buf = b.rx(0).read_desc(slot).addr
    b.rx(0).set_desc_flags(slot, PackedHostile(b.rx(0)).head_flags_as(kind, PackedHostile.lap_of(good)))
    written = b.rx(0).read_desc(slot)
    a.tx(0).post_tx(frame("b", "a", 600))
    after = wait_drops(switch1, "b", before)
    assert grown(before, after) == {"no_rx_buffer": 1}
    assert b.mem.read(buf, 64) == b"\x5a" * 64         # the switch did not write into it
    assert b.rx(0).read_desc(slot) == written            # nor return it
    b.rx(0).publish(kick=True)
    a.tx(0).post_tx(frame("b", "a", 601))
    got = b.rx(0).recv_frames(1, timeout=5)
    assert [seq_of(g.frame) for g in got] == [601]


def test_flipping_the_wrap_counter_stalls_only_that_ring_until_reset(switch):
    a = packed(switch, "a", 16)
    b = packed(switch, "b", 64)
    c, d = healthy_pair(switch)
    for i in range(5):
        a.tx(0).post_tx(frame("b", "a", i))
    assert recv_seqs(b, 5) == list(range(5))
    a.tx(0).wait_used(5)
    sent = tx_packets(switch, "a")
    PackedHostile(a.tx(0)).flip_wrap()          # from now on a marks descriptors for the wrong lap
    for i in range(20):                         # more than the ring's end: the index wraps, the lap "fixes" itself
        a.tx(0).post_tx(frame("b", "a", 100 + i))
        if not a.tx(0).num_free:
            break
    a.tx(0).kick()
    time.sleep(0.5)
    # slots 5..15 carry the wrong lap: none of them may go out, nothing is dropped either
    assert recv_seqs(b, 1, timeout=0.5) == []
    assert tx_packets(switch, "a") == sent and switch.drops("a") == {}
    exchange_by_name(c, d, "c", "d")
    assert a.frontend.connected() and switch.alive()
    # RESET_DEVICE and a fresh start bring the port back without a reconnect
    a.frontend.reset_device()
    a2 = opened(a.frontend.setup_net_device(1, 16, PACKED, packed=True, mem=opened(GuestMemory(32 << 20))))
    a2.rx(0).post_rx(16, 2048)
    trickle(a2, b, "a", "b", 40)
    assert switch.port("a")["connections"] == 1


def test_a_chain_with_no_end_within_the_ring_breaks_only_that_ring_until_reset(switch):
    a = packed(switch, "a", 13, rx_buffers=0)
    b = packed(switch, "b", 64)
    c, d = healthy_pair(switch)
    for i in range(6):                          # start mid-ring, in the first lap
        a.tx(0).post_tx(frame("b", "a", i))
    assert recv_seqs(b, 6) == list(range(6))
    a.tx(0).wait_used(6)
    PackedHostile(a.tx(0)).chain_longer_than_ring()     # every slot has NEXT: the walk goes round
    port = switch.wait_port("a", lambda p: p["queues"][0]["tx"]["broken"], timeout=10, what="tx ring broken")
    assert port["queues"][0]["tx"]["drops"] == {"ring_broken": 1}
    assert recv_seqs(b, 1, timeout=0.5) == []
    exchange_by_name(c, d, "c", "d")
    assert a.frontend.connected() and switch.alive()
    a.frontend.reset_device()
    a2 = opened(a.frontend.setup_net_device(1, 13, PACKED, packed=True, mem=opened(GuestMemory(32 << 20))))
    a2.rx(0).post_rx(13, 2048)
    switch.wait_port("a", lambda p: not p["queues"][0]["tx"]["broken"], timeout=10, what="ring reset")
    trickle(a2, b, "a", "b", 30)


# --- buffer ids -----------------------------------------------------------------------------

def test_buffer_ids_out_of_range_or_twice_in_flight_come_back_as_given(switch1):
    """The buffer id is the driver's: the switch returns each chain under the
    id in its last descriptor, even one >= the queue size or one that is
    already in flight, and never uses it to index anything of its own."""
    a = packed(switch1, "a", 16)
    b = packed(switch1, "b", 64)
    tx = a.tx(0)
    h = PackedHostile(tx)
    blob = VirtioNetHdr().pack() + frame("b", "a", 700)
    ids = [16, 0xFFFF, 1000, 3, 3, 0x7FFF]
    for i, buf_id in enumerate(ids):
        g = h._buf(len(blob))
        f = frame("b", "a", 700 + i)
        tx.mem.write(g, VirtioNetHdr().pack() + f)
        h.chain([(g, len(blob), 0)], id=buf_id, publish=False, kick=False)
    tx.publish(kick=True)
    assert recv_seqs(b, len(ids)) == [700 + i for i in range(len(ids))]
    used = tx.wait_used(len(ids))
    assert [u.id for u in used] == ids
    # our driver's view of the duplicate: its second completion names no chain in flight
    assert tx.errors == ["used id 3 is not in flight"]
    assert switch1.drops("a") == {}
    trickle(a, b, "a", "b", 40)
    assert not tx.inflight


def test_a_buffer_id_that_differs_along_the_chain_is_taken_from_the_last_descriptor(switch1):
    """Spec ("Next Flag: Descriptor Chaining"): the buffer id is in the last
    descriptor of a chain."""
    a = packed(switch1, "a", 16)
    b = packed(switch1, "b", 64)
    tx = a.tx(0)
    f = frame("b", "a", 800)
    blob = VirtioNetHdr().pack() + f
    g1, g2 = tx.mem.alloc(12), tx.mem.alloc(len(blob) - 12)
    tx.mem.write(g1, blob[:12])
    tx.mem.write(g2, blob[12:])
    buf_id = tx.post_descs([(g1, 12, 0), (g2, len(blob) - 12, 0)], id=9, allocs=[g1, g2], raw=True,
                           publish=False, kick=False)
    tx.write_desc_body(tx.inflight[buf_id].descs[0], g1, 12, 4)     # first descriptor says 4
    tx.publish(kick=True)
    assert recv_seqs(b, 1) == [800]
    assert [u.id for u in tx.wait_used(1)] == [9]


# --- indirect tables ------------------------------------------------------------------------

def test_next_inside_an_indirect_table_is_ignored(switch1):
    """Spec: in an indirect table of a packed ring WRITE is the only valid
    flag, the others are reserved and ignored by the device: the entries are
    used in order, the frame goes out whole."""
    a = packed(switch1, "a", 16)
    b = packed(switch1, "b", 64)
    for i, pieces in enumerate([1, 2, 3, 5]):
        f = frame("b", "a", 900 + i, 300)
        PackedHostile(a.tx(0)).indirect_frame(VirtioNetHdr().pack() + f, pieces=pieces, entry_flags=VRING_DESC_F_NEXT)
        got = b.rx(0).recv_frames(1, timeout=5)
        assert [g.frame for g in got] == [f], pieces
    assert switch1.drops("a") == {}


def test_indirect_inside_indirect_is_dropped_and_counted(switch1):
    a = packed(switch1, "a", 16)
    b = packed(switch1, "b", 64, rx_buffers=0)
    for i in range(3):
        before = switch1.drops("b")
        PackedHostile(a.tx(0)).indirect_nested()
        PackedHostile(b.rx(0)).indirect_nested()
        a.tx(0).post_tx(frame("b", "a", 1))                  # into b's nested table: dropped
        wait_drops(switch1, "b", before)
    assert switch1.drops("a") == {"bad_indirect": 3}
    assert switch1.drops("b") == {"rx_bad_chain": 3}
    b.rx(0).post_rx(32, 2048)
    exchange_by_name(a, b, "a", "b", n=5)


# --- ring setup: sizes and bases --------------------------------------------------------------

def start_packed(fe: VhostUserFrontend, num: int, base: int | None = None, *, base_first: bool = False):
    """Negotiate packed rings and configure vring 1 (TX) with `num` entries
    and the given vring base (default: a fresh ring)."""
    opened(fe)
    fe.get_features()
    fe.set_owner()
    fe.set_features(bits(Feature.VERSION_1, Feature.RING_PACKED))
    mem = opened(GuestMemory(4 << 20))
    ring = opened(PackedRing(mem, max(num, 1), 1, check_num=False))
    fe.set_mem_table(mem)
    if base_first and base is not None:
        fe.set_vring_base(1, base)
    fe.set_vring_num(1, num)
    if not base_first:
        fe.set_vring_base(1, ring.vring_base() if base is None else base)
    fe.set_vring_addr_of(ring)
    fe.set_vring_kick(1, ring.kick_fd)
    fe.set_vring_call(1, ring.call_fd)
    return mem, ring


BAD_BASES = {
    "avail index = size": packed_vring_base(13, 1, 0, 1),
    "used index = size": packed_vring_base(0, 1, 13, 1),
    "both 0x7fff": packed_vring_base(0x7FFF, 1, 0x7FFF, 1),
    "avail 20, wrap 0": packed_vring_base(20, 0, 20, 0),
}


@pytest.mark.parametrize("order", ["num-then-base", "base-then-num"])
@pytest.mark.parametrize("what", list(BAD_BASES))
def test_a_vring_base_beyond_the_ring_size_is_refused_with_a_clear_error(switch1, what, order):
    c, d = healthy_pair(switch1)
    fe = VhostUserFrontend(switch1.socket("a"))
    try:
        mem, ring = start_packed(fe, 13, BAD_BASES[what], base_first=order == "base-then-num")
        fe.set_vring_enable(1, True)
    except PeerClosed:
        pass                                    # closed already at the base: what we want
    # as the split ring's bad base: the connection goes, the port listens again
    assert fe.wait_closed(10), "the switch kept a connection whose vring base is beyond its ring"
    port = switch1.wait_port("a", lambda p: p["state"] == "listening", what="listening again")
    assert "13" in port["last_error"] and ("base" in port["last_error"] or "index" in port["last_error"]), \
        port["last_error"]
    exchange_by_name(c, d, "c", "d")
    a = packed(switch1, "a", 13)                 # and the port works for the next front-end
    b = packed(switch1, "b", 13)
    trickle(a, b, "a", "b", 30)


@pytest.mark.parametrize("num", [0, 32769, 65535])
def test_a_packed_ring_size_outside_1_to_32768_is_refused(switch1, num):
    fe = VhostUserFrontend(switch1.socket("a"))
    try:
        start_packed(fe, num)
    except PeerClosed:
        pass
    assert fe.wait_closed(10)
    port = switch1.wait_port("a", lambda p: p["state"] == "listening", what="listening again")
    assert str(num) in port["last_error"]


def test_a_packed_ring_restarts_where_get_vring_base_said(switch1):
    """GET_VRING_BASE answers the 32-bit packed state (avail and used positions
    with their wrap counters); a ring resumed with it carries on in its lap."""
    a = packed(switch1, "a", 13)
    b = packed(switch1, "b", 64)
    for i in range(20):                                  # into the second lap of a's TX ring
        a.tx(0).post_tx(frame("b", "a", i))
        assert recv_seqs(b, 1) == [i]
        a.tx(0).wait_used(1)
    bases = a.stop()
    # the device's positions: every chain it took came back, so avail == used == the driver's used position
    for r in a.rings:
        want = packed_vring_base(r.next_used, r.used_wrap, r.next_used, r.used_wrap)
        assert bases[r.index] == want, (r.index, hex(bases[r.index]), hex(want))
    assert bases[1] == packed_vring_base(7, 0, 7, 0)
    fe = a.frontend
    for r in a.rings:
        fe.set_vring_num(r.index, r.num)
        fe.set_vring_base(r.index, bases[r.index])
        fe.set_vring_addr_of(r)
        fe.set_vring_kick(r.index, r.kick_fd)
        fe.set_vring_call(r.index, r.call_fd)
        fe.set_vring_enable(r.index, True)
    # a ring started but not yet enabled discards TX (vhost-user.rst "Ring
    # states"): send only once the switch handled every message above
    fe.sync()
    trickle(a, b, "a", "b", 30)
    assert switch1.drops("a") == {}


# --- a racing writer on the descriptor ring -----------------------------------------------------

def test_a_racing_writer_on_the_descriptor_ring_costs_only_its_own_guest(switch1):
    """racer.c rewrites random bytes of h's TX descriptor ring (flags, ids,
    lengths, addresses, even the head after the switch read it) while h sends
    and a and b exchange frames. The switch keeps running, a and b never
    notice, every drop of h has a documented reason, and after a reset h
    works again."""
    h = packed(switch1, "a", 16)
    b = packed(switch1, "b", 256, rx_buffers=200)
    c, d = healthy_pair(switch1)
    tx = h.tx(0)
    fd, off = h.mem.fd_offset(tx.desc_gpa)
    with Racer(fd, [rand(off, 16 * tx.num)], limit_s=30, cpu=0) as racer:
        deadline = time.monotonic() + 3
        i = 0
        while time.monotonic() < deadline:
            try:
                tx.post_tx(frame("b", "a", i))
            except RingFull:                      # the racer ate used flags, or the ring broke
                tx.kick()
            i += 1
            if i % 16 == 0:
                exchange_by_name(c, d, "c", "d", n=2)
                for g in b.rx(0).recv_frames(64, timeout=0):
                    b.rx(0).post_rx(1, 2048)
    assert racer.iterations > 0
    assert switch1.alive()
    exchange_by_name(c, d, "c", "d", n=20)
    exchange_by_name(d, c, "d", "c", n=20)
    assert set(switch1.drops("a")) <= GUEST_FAULTS, switch1.drops("a")
    assert switch1.drops("c") == {} and switch1.drops("d") == {}
    # h recovers after a reset, without a reconnect
    fe = h.frontend
    fe.reset_device()
    for r in h.rings:
        r.close()
    h.mem.close()
    h2 = opened(fe.setup_net_device(1, 16, PACKED, packed=True, mem=opened(GuestMemory(32 << 20))))
    h2.rx(0).post_rx(16, 2048)
    for g in b.rx(0).recv_frames(256, timeout=0.5):
        b.rx(0).post_rx(1, 2048)
    trickle(h2, b, "a", "b", 20)
    assert switch1.port("a")["connections"] == 1


# --- event suppression ----------------------------------------------------------------------

@pytest.mark.parametrize("pause", [0.0, 0.002, 0.05])
def test_a_driver_that_kicks_only_when_the_device_event_area_asks_never_stalls(switch1, pause):
    """Linux honours the device event suppression area: it kicks only when the
    switch asked (DESC: at the descriptor the switch looks at next). Whether
    the worker polls or sleeps, across laps of an odd-sized ring, no frame may
    wait for a kick the switch never asked for."""
    a = packed(switch1, "a", 13)
    b = packed(switch1, "b", 64)
    tx = a.tx(0)
    kicks = 0
    for i in range(60):
        old = (tx.next_avail, tx.avail_wrap)
        tx.post_tx(frame("b", "a", i), split=[12] if i % 3 else None, kick=False)
        if tx.kick_needed(*old):
            tx.kick()
            kicks += 1
        assert recv_seqs(b, 1, timeout=3) == [i], f"frame {i} stalled (device event area {tx.device_event()})"
        tx.reap()
        time.sleep(pause)
    assert tx.laps >= 4
    if pause >= 0.05:
        assert kicks > 0      # an idle worker sleeps and asks for kicks


def test_the_switch_interrupts_only_when_the_driver_event_area_asks(switch1):
    """Driver event suppression: DISABLE, no interrupt; DESC (EVENT_IDX) at a used
    descriptor, none before it and one at it, in every lap; ENABLE, one per batch."""
    a = packed(switch1, "a", 64)
    b = packed(switch1, "b", 7, rx_buffers=0)
    rx = b.rx(0)
    rx.event_idx = False            # the ring's own re-arming in wait_call stays off
    assert b.has(Feature.EVENT_IDX)

    def one(seq: int) -> int:
        """Send one frame into one fresh buffer; the interrupts it caused."""
        rx.post_rx(1, 2048)
        before = rx.interrupts
        a.tx(0).post_tx(frame("b", "a", seq))
        got = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = rx.reap()
            time.sleep(0.005)
        assert len(got) == 1 and seq_of(got[0].data[12:]) == seq
        time.sleep(0.05)
        return rx.interrupts - before + rx.drain_call()

    rx.drain_call()
    rx.set_driver_event(0, 1)                                 # DISABLE
    assert sum(one(i) for i in range(10)) == 0
    for lap in range(4):                                      # DESC, 7 slots: crosses the ring's end
        rx.set_used_event(rx.used_position(1))
        assert (one(100 + 2 * lap), one(101 + 2 * lap)) == (0, 1), (lap, rx.next_used, rx.used_wrap)
    rx.set_driver_event(0, 0)                                 # ENABLE
    assert all(one(200 + i) == 1 for i in range(5))


# --- mergeable RX buffers across the ring's end ------------------------------------------------

def test_a_frame_waits_for_enough_rx_buffers_across_the_ring_end_and_then_fills_them_all(switch1):
    """MRG_RXBUF: a 1514-byte frame needs 6 buffers of 256 bytes (header +
    frame). With only 3 posted (starting 2 slots before the ring's end) the
    frame is dropped as no_rx_buffer and the 3 stay available - the switch puts
    its position and wrap counter back; with 3 more, the next frame takes all 6."""
    a = packed(switch1, "a", 64)
    b = packed(switch1, "b", 13, rx_buffers=0)
    rx = b.rx(0)
    for i in range(11):                                   # b's RX position to slot 11 of lap 1
        rx.post_rx(1, 2048)
        a.tx(0).post_tx(frame("b", "a", i))
        assert [seq_of(g.frame) for g in rx.recv_frames(1, timeout=5)] == [i]
    assert (rx.next_avail, rx.avail_wrap) == (11, 1)
    for lap in range(3):
        rx.post_rx(3, 256)
        before = switch1.drops("b")
        a.tx(0).post_tx(frame("b", "a", 100 + lap, 1514))
        assert grown(before, wait_drops(switch1, "b", before)) == {"no_rx_buffer": 1}
        assert rx.reap() == [] and len(rx.inflight) == 3
        rx.post_rx(3, 256)
        f = frame("b", "a", 200 + lap, 1514)
        a.tx(0).post_tx(f)
        got = rx.recv_frames(1, timeout=5)
        assert [g.frame for g in got] == [f] and got[0].num_buffers == 6 == got[0].hdr.num_buffers, lap
        assert not rx.inflight and not rx.errors
    assert rx.laps >= 2


def test_tx_on_a_disabled_packed_ring_is_consumed_discarded_and_counted(switch1):
    """vhost-user.rst "Ring states": a started but disabled ring is processed
    without side effects - TX is consumed and discarded (ring_disabled), the
    buffers come back; enabled again, frames go."""
    a = packed(switch1, "a", 13)
    b = packed(switch1, "b", 64)
    trickle(a, b, "a", "b", 5)
    a.frontend.set_vring_enable(1, False)
    a.frontend.sync()
    for i in range(20):                                   # across the ring's end
        a.tx(0).post_tx(frame("b", "a", 300 + i))
        assert len(a.tx(0).wait_used(1)) == 1, i          # returned
    assert recv_seqs(b, 1, timeout=0.5) == []
    assert switch1.drops("a") == {"ring_disabled": 20}
    a.frontend.set_vring_enable(1, True)
    a.frontend.sync()
    trickle(a, b, "a", "b", 20)


# --- random mixes ------------------------------------------------------------------------

def _make_room(tx: PackedRing, n: int = 3, what: str = "") -> None:
    deadline = time.monotonic() + 5
    while tx.num_free < n or not tx.free_ids:
        tx.reap()
        assert time.monotonic() < deadline, f"the switch stopped returning the hostile ring's chains after {what}"
        time.sleep(0.002)


def tx_drops(sw: Vswitchd, name: str) -> dict[str, int]:
    """Drops counted on the port's TX queues (frames it sent)."""
    totals: dict[str, int] = {}
    for q in sw.port(name)["queues"]:
        for reason, n in q["tx"]["drops"].items():
            totals[reason] = totals.get(reason, 0) + n
    return totals


@pytest.mark.parametrize("seed", range(6))
def test_random_hostile_packed_tx_every_chain_is_counted_exactly_once(switch1, seed):
    """Good frames in every layout, the hostile recipes, and heads first made
    available for the wrong lap then fixed, in a random order on a ring of a
    random (odd) size: every chain the driver made available is counted once -
    as a packet taken or as a drop with a documented reason - and comes back;
    the bystanders never notice."""
    import random
    rng = random.Random(seed)
    size = rng.choice([3, 5, 13, 61])
    h = packed(switch1, "a", size)
    b = packed(switch1, "b", 256, rx_buffers=250)
    c, d = healthy_pair(switch1)
    tx = h.tx(0)
    recipes = [r for r, _ in HOSTILE_TX]
    offered = 0
    what = ""
    history: list[str] = []
    for step in range(200):
        _make_room(tx, what=f"{history[-5:]} (ring {size}, {switch1.port('a')['queues'][0]['tx']})")
        what = rng.choice(["good"] * 4 + ["late"] + recipes)
        if what == "good":
            layout = rng.choice([dict(), dict(split=[12]), dict(indirect=True), dict(split=[5, 40], indirect=True)]
                                + ([dict(split=[5, 40])] if tx.num >= 3 else []))
            tx.post_tx(frame("b", "a", step, rng.choice([60, 200, 1514])), **layout)
        elif what == "late":
            tx.post_tx(frame("b", "a", step), publish=False)
            ((slot, good),) = tx.pending_heads()
            tx.set_desc_flags(slot, PackedHostile(tx).head_flags_as(rng.choice(NOT_AVAILABLE),
                                                                    PackedHostile.lap_of(good)))
            tx.kick()
            time.sleep(rng.choice([0, 0.001, 0.01]))
            tx.publish(kick=True)
        else:
            getattr(PackedHostile(tx), what)(**RECIPE_ARGS.get(what, {}))
        history.append(f"{what}@{tx.next_avail}/{tx.avail_wrap}")
        offered += 1
        if step % 25 == 0:
            for _ in b.rx(0).recv_frames(256, timeout=0):
                b.rx(0).post_rx(1, 2048)
            exchange_by_name(c, d, "c", "d", n=2)

    def counted() -> int:
        return tx_packets(switch1, "a") + sum(tx_drops(switch1, "a").values())
    deadline = time.monotonic() + 10
    while counted() < offered and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted() == offered, (offered, tx_packets(switch1, "a"), tx_drops(switch1, "a"))
    assert set(tx_drops(switch1, "a")) <= GUEST_FAULTS - {"ring_broken"}, tx_drops(switch1, "a")
    tx.wait_used(len(tx.inflight), timeout=5)
    assert not tx.inflight and not tx.errors
    assert not switch1.port("a")["queues"][0]["tx"]["broken"]
    exchange_by_name(c, d, "c", "d", n=10)
    exchange_by_name(d, c, "d", "c", n=10)
    assert switch1.drops("c") == {} and switch1.drops("d") == {}


@pytest.mark.parametrize("seed", range(4))
def test_random_hostile_packed_rx_buffers_every_frame_is_delivered_or_counted(switch1, seed):
    """h posts good RX buffers (1..3 descriptors, indirect or not, 256 or 2048
    bytes) among hostile ones on a ring of a random size while a sends to it:
    every frame is either delivered intact or counted as a drop on h's RX,
    and a bad buffer costs only the frame that landed in it."""
    import random
    rng = random.Random(seed)
    size = rng.choice([5, 13, 61])
    a = packed(switch1, "a", 64)
    h = packed(switch1, "b", size, rx_buffers=0)
    c, d = healthy_pair(switch1)
    rx = h.rx(0)
    sent: list[bytes] = []
    got: list[bytes] = []

    def rx_counted() -> int:
        q = switch1.port("b")["queues"][0]["rx"]
        return q["packets"] + sum(q["drops"].values())
    base = rx_counted()                       # frames flooded to h while c and d were learned
    base_packets = switch1.port("b")["queues"][0]["rx"]["packets"]
    for step in range(150):
        got += [g.frame for g in rx.recv_frames(8, timeout=0)]
        if rx.num_free < 4 or not rx.free_ids:
            pass                              # the ring is full of buffers: only send
        elif rng.random() < 0.3:
            getattr(PackedHostile(rx), rng.choice(HOSTILE_RX))()
        else:
            buf = rng.choice([256, 2048])
            rx.post_rx(1, buf, descs_per_chain=rng.choice([1, 2, 3]), indirect=rng.random() < 0.3)
        f = frame("b", "a", step, rng.choice([60, 200, 600]))
        a.tx(0).post_tx(f)
        sent.append(f)
        got += [g.frame for g in rx.recv_frames(1, timeout=0.02)]
        a.tx(0).reap()
    deadline = time.monotonic() + 10
    while rx_counted() - base < len(sent) and time.monotonic() < deadline:
        got += [g.frame for g in rx.recv_frames(8, timeout=0.05)]
    got += [g.frame for g in rx.recv_frames(64, timeout=0.2)]
    q = switch1.port("b")["queues"][0]["rx"]
    assert rx_counted() - base == len(sent), q
    assert set(q["drops"]) <= {"rx_bad_chain", "no_rx_buffer", "rx_buffer_too_small"}, q["drops"]
    # what arrived from a is exactly what was sent, in order, less the frames counted as dropped
    got = [g for g in got if g[6:12] == MAC["a"]]
    assert len(got) == q["packets"] - base_packets and all(g in sent for g in got)
    assert [seq_of(g) for g in got] == sorted(seq_of(g) for g in got)
    exchange_by_name(c, d, "c", "d", n=10)
    assert switch1.drops("c") == {} and switch1.drops("d") == {}
