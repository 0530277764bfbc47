"""The packed-ring walker's corner cases (cython_ext/packed.pxi), driven on a
Datapath that never starts its workers: a packed ring laid out by hand in a
memfd, one chain taken at a time through the debug_packed_* test hooks.

What the spec ("Packed Virtqueues") requires and is checked here: a ring
size that is not a power of two, a chain crossing the end of the ring (the
wrap counter flips in the middle of it), the used index moved by the number
of descriptors a chain took (an indirect one counts 1), the used element in
the chain's first slot with the id of its last descriptor, the batch's first
flags written last, NEXT ignored in indirect tables, the 32-bit vring base,
and the bounds split rings have (VS_MAX_CHAIN_DESCS, a chain with no end).
"""

from __future__ import annotations

import mmap
import os
import struct

import pytest

from vswitch._datapath import Datapath, DatapathError

NEXT, WRITE, INDIRECT = 1, 2, 4
AVAIL, USED = 1 << 7, 1 << 15
RING_PACKED, VERSION_1, INDIRECT_DESC = 34, 32, 28
MEM = 1 << 20
DESC, DRIVER_EVENT, DEVICE_EVENT = 0x1000, 0x100, 0x200   # guest addresses of the ring areas
BUFS = 0x10000
DESC_FMT = struct.Struct("<QIHH")


class Ring:
    """The driver's side of one packed ring in guest memory (gpa == uaddr)."""

    def __init__(self, mem: mmap.mmap, num: int) -> None:
        self.mem, self.num = mem, num
        self.avail, self.wrap = 0, 1

    def put(self, slot: int, addr: int, length: int, buf_id: int, flags: int) -> None:
        DESC_FMT.pack_into(self.mem, DESC + 16 * slot, addr, length, buf_id, flags)

    def read(self, slot: int) -> tuple[int, int, int, int]:
        return DESC_FMT.unpack_from(self.mem, DESC + 16 * slot)

    def offer(self, pieces: list[tuple[int, int]], buf_id: int, flags: int = 0) -> int:
        """Make a chain of (addr, len) pieces available at the driver's
        position, the head's flags last; returns the head's slot."""
        head = self.avail
        slots = []
        for i, (addr, length) in enumerate(pieces):
            f = flags | (NEXT if i < len(pieces) - 1 else 0)
            f |= (AVAIL if self.wrap else USED)
            slots.append((self.avail, addr, length, buf_id, f))
            self.avail += 1
            if self.avail == self.num:
                self.avail, self.wrap = 0, self.wrap ^ 1
        for s in reversed(slots):
            self.put(*s)
        return head

    def is_used(self, slot: int, wrap: int) -> bool:
        flags = self.read(slot)[3]
        return bool(flags & AVAIL) == bool(wrap) and bool(flags & USED) == bool(wrap)


@pytest.fixture
def ring_factory():
    made = []

    def make(num: int, base: int | None = None, features: int = 0):
        fd = os.memfd_create("packed-test")
        os.ftruncate(fd, MEM)
        mem = mmap.mmap(fd, MEM)
        dp = Datapath(1, "poll")
        dp.enable_test_hooks()
        p = dp.port_add(1)
        dp.set_mem_table(p, [(0, MEM, 0, 0, fd)])
        os.close(fd)
        dp.port_set_features(p, (1 << RING_PACKED) | (1 << VERSION_1) | features)
        dp.vring_set_num(p, 0, num)
        dp.vring_set_addr(p, 0, DESC, DEVICE_EVENT, DRIVER_EVENT)
        if base is not None:
            dp.vring_set_base(p, 0, base)
        dp.vring_start(p, 0)
        made.append((dp, mem))
        return dp, p, Ring(mem, num)

    yield make
    for dp, mem in made:
        del dp
    made.clear()


def test_a_ring_of_any_size_wraps_by_comparison(ring_factory):
    dp, p, ring = ring_factory(5)
    for n in range(12):             # over two laps of a 5-slot ring
        wrap = ring.wrap
        head = ring.offer([(BUFS + 64 * n, 64)], buf_id=n)
        got = dp.debug_packed_take(p, 0, False)
        assert got["drop"] is None and got["id"] == n and got["ndesc"] == 1 and got["bytes"] == 64
        dp.debug_packed_publish(p, 0)
        assert ring.is_used(head, wrap)
        assert dp.debug_packed_take(p, 0, False) is None        # nothing more available
    info = dp.vring_info(p, 0)
    assert (info["last_avail"], info["avail_wrap"]) == (12 % 5, 1 ^ (12 // 5 % 2))
    assert (info["used_idx"], info["used_wrap"]) == (info["last_avail"], info["avail_wrap"])


def test_a_chain_across_the_end_flips_the_wrap_counter_mid_chain(ring_factory):
    dp, p, ring = ring_factory(6)
    ring.offer([(BUFS, 100)] * 4, buf_id=1)                     # slots 0-3
    assert dp.debug_packed_take(p, 0, False)["ndesc"] == 4
    dp.debug_packed_publish(p, 0)
    # slots 4, 5, 0 (the last with the flipped wrap counter), id in the last descriptor
    head = ring.offer([(BUFS, 10), (BUFS + 100, 20), (BUFS + 200, 30)], buf_id=77)
    assert head == 4
    got = dp.debug_packed_take(p, 0, False)
    assert (got["drop"], got["id"], got["ndesc"], got["bytes"]) == (None, 77, 3, 60)
    assert got["pieces"] == [10, 20, 30]
    info = dp.vring_info(p, 0)
    assert (info["last_avail"], info["avail_wrap"]) == (1, 0)
    assert (info["used_idx"], info["used_wrap"]) == (1, 0)
    dp.debug_packed_publish(p, 0)
    addr, length, buf_id, flags = ring.read(4)      # the used element is in the chain's first slot
    assert (buf_id, length) == (77, 0) and flags & (AVAIL | USED) == AVAIL | USED


def test_the_first_used_element_of_a_batch_is_published_last(ring_factory):
    dp, p, ring = ring_factory(8)
    heads = [ring.offer([(BUFS + 256 * i, 128)], buf_id=10 + i) for i in range(3)]
    for _ in heads:
        dp.debug_packed_take(p, 0, False)
    # written, not published: the driver sees none of them (it looks at the first)
    assert not ring.is_used(heads[0], 1)
    assert ring.is_used(heads[1], 1) and ring.is_used(heads[2], 1)
    dp.debug_packed_publish(p, 0)
    assert all(ring.is_used(h, 1) for h in heads)
    assert [ring.read(h)[2] for h in heads] == [10, 11, 12]


def test_an_indirect_chain_counts_one_descriptor_and_ignores_next_inside(ring_factory):
    dp, p, ring = ring_factory(4, features=1 << INDIRECT_DESC)
    table = 0x8000
    # three entries used in order whatever their NEXT flags say
    for i, (length, flags) in enumerate(((20, 0), (30, NEXT), (40, 0))):
        DESC_FMT.pack_into(ring.mem, table + 16 * i, BUFS + 100 * i, length, 0, flags)
    ring.offer([(table, 48)], buf_id=5, flags=INDIRECT)
    got = dp.debug_packed_take(p, 0, False)
    assert (got["drop"], got["id"], got["ndesc"], got["bytes"]) == (None, 5, 1, 90)
    assert dp.vring_info(p, 0)["used_idx"] == 1


def test_indirect_without_the_feature_is_a_counted_drop_and_the_ring_goes_on(ring_factory):
    dp, p, ring = ring_factory(4)
    ring.offer([(0x8000, 48)], buf_id=5, flags=INDIRECT)
    ring.offer([(BUFS, 60)], buf_id=6)
    assert dp.debug_packed_take(p, 0, False)["drop"] == "bad_indirect"
    got = dp.debug_packed_take(p, 0, False)
    assert (got["drop"], got["id"]) == (None, 6)


@pytest.mark.parametrize("pieces, drop", [
    ([(BUFS, 10)] * 300, "bad_chain"),                   # more than VS_MAX_CHAIN_DESCS
    ([(MEM + 0x1000, 10), (BUFS, 10)], "bad_address"),   # outside guest memory
])
def test_a_bad_chain_is_consumed_whole_and_the_next_one_is_found(ring_factory, pieces, drop):
    dp, p, ring = ring_factory(512)
    ring.offer(pieces, buf_id=1)
    ring.offer([(BUFS, 60)], buf_id=2)
    got = dp.debug_packed_take(p, 0, False)
    assert (got["drop"], got["ndesc"], got["id"]) == (drop, len(pieces), 1)
    got = dp.debug_packed_take(p, 0, False)
    assert (got["drop"], got["id"], got["bytes"]) == (None, 2, 60)


def test_a_chain_with_no_end_in_the_ring_breaks_it_without_consuming(ring_factory):
    dp, p, ring = ring_factory(4)
    for slot in range(4):
        ring.put(slot, BUFS, 10, 0, NEXT | AVAIL)
    got = dp.debug_packed_take(p, 0, False)
    assert got["drop"] == "ring_broken" and got["work"] == 4
    assert dp.vring_info(p, 0)["last_avail"] == 0


def test_writable_buffers_are_refused_on_tx_and_read_only_ones_on_rx(ring_factory):
    dp, p, ring = ring_factory(4)
    ring.offer([(BUFS, 60)], buf_id=1, flags=WRITE)
    assert dp.debug_packed_take(p, 0, False)["drop"] == "bad_flags"
    ring.offer([(BUFS, 60)], buf_id=2)
    assert dp.debug_packed_take(p, 0, True)["drop"] == "bad_flags"


def test_used_slots_are_marked_in_the_dirty_log(ring_factory):
    """While migrating, the descriptor slots a batch wrote are logged (a
    packed ring has no used ring): here a chain across the end of a 300-slot
    ring (4800 bytes: two pages), so both ends of the ring are marked."""
    dp, p, ring = ring_factory(300, base=298 | 1 << 15, features=1 << 26)    # VHOST_F_LOG_ALL
    ring.avail = 298
    log_fd = os.memfd_create("packed-log")
    os.ftruncate(log_fd, MEM // 4096 // 8)
    dp.set_log_base(p, log_fd, MEM // 4096 // 8, 0)
    log = mmap.mmap(log_fd, MEM // 4096 // 8)
    os.close(log_fd)
    log[:] = bytes(len(log))                         # what starting the log marked: not this test's
    ring.offer([(BUFS, 60), (BUFS, 60), (BUFS, 60)], buf_id=3)       # slots 298, 299, 0
    assert dp.debug_packed_take(p, 0, False)["ndesc"] == 3
    assert not any(log[:])                            # nothing published, nothing marked

    def marked(page: int) -> bool:
        return bool(log[page // 8] >> (page % 8) & 1)

    dp.debug_packed_publish(p, 0)
    first, last = (DESC + 16 * 298) >> 12, DESC >> 12
    assert marked(first) and marked(last), log[:8].hex()
    assert not marked(BUFS >> 12)                    # TX: the device wrote no buffer
    log.close()


def test_vring_base_carries_both_positions_and_wrap_counters(ring_factory):
    base = 3 | 0 << 15 | 2 << 16 | 1 << 31
    dp, p, ring = ring_factory(7, base=base)
    info = dp.vring_info(p, 0)
    assert (info["last_avail"], info["avail_wrap"], info["used_idx"], info["used_wrap"]) == (3, 0, 2, 1)
    assert dp.vring_stop(p, 0) == base
    # only bits 0-15 (DPDK's front-end): the used position is the avail one
    dp.vring_set_base(p, 0, 5 | 1 << 15)
    dp.vring_start(p, 0)
    info = dp.vring_info(p, 0)
    assert (info["last_avail"], info["avail_wrap"], info["used_idx"], info["used_wrap"]) == (5, 1, 5, 1)
    assert dp.vring_stop(p, 0) == (5 | 1 << 15 | 5 << 16 | 1 << 31)
    dp.vring_start(p, 0)
    assert dp.vring_stop(p, 0) == (5 | 1 << 15 | 5 << 16 | 1 << 31)   # kept across stop/start


def test_a_fresh_ring_starts_at_zero_with_wrap_counters_one(ring_factory):
    dp, p, ring = ring_factory(7)
    assert dp.vring_stop(p, 0) == 1 << 15 | 1 << 31


def test_vring_base_beyond_the_ring_size_is_refused_at_start(ring_factory):
    dp, p, ring = ring_factory(7)
    dp.vring_stop(p, 0)
    dp.vring_set_base(p, 0, 7)
    with pytest.raises(DatapathError, match="beyond the ring size"):
        dp.vring_start(p, 0)


def test_a_split_ring_still_needs_a_power_of_two(ring_factory):
    dp, p, ring = ring_factory(8)
    dp.vring_stop(p, 0)
    dp.port_set_features(p, 1 << VERSION_1)
    with pytest.raises(DatapathError, match="power of 2"):
        dp.vring_set_num(p, 0, 6)


# --- the session: ring size and base of packed rings (vswitch/vhost/session.py) --------------

from tests.unit.test_session import RecordingBackend, negotiate, reply_u64, send, state, u64  # noqa: E402
from vswitch.vhost import protocol as vp  # noqa: E402
from vswitch.vhost.protocol import ProtocolError  # noqa: E402
from vswitch.vhost.session import BASE_FEATURES, Offer, Session  # noqa: E402

R = vp.Request
SPLIT_FEATURES = BASE_FEATURES & ~(1 << vp.Feature.F_RING_PACKED)


@pytest.fixture
def session():
    backend = RecordingBackend()
    s = Session(Offer(queue_pairs=1), backend)
    negotiate(s)
    yield s, backend
    backend.reset()


def test_ring_packed_is_offered(session):
    s, _ = session
    assert reply_u64(send(s, R.GET_FEATURES)) >> 34 & 1
    assert reply_u64(send(s, R.GET_FEATURES)) >> 35 & 1          # and IN_ORDER


def test_a_packed_ring_may_have_any_size_and_a_32_bit_base(session):
    s, backend = session
    send(s, R.SET_FEATURES, u64(BASE_FEATURES))
    send(s, R.SET_VRING_NUM, state(0, 100))
    base = 99 | 1 << 15 | 42 << 16 | 1 << 31
    send(s, R.SET_VRING_BASE, state(0, base))
    assert ("num", 0, 100) in backend.calls and backend.bases[0] == base
    reply = send(s, R.GET_VRING_BASE, state(0, 0))
    assert vp.decode_vring_state(reply[vp.HEADER_SIZE:], "reply").num == base + 7   # all 32 bits back


@pytest.mark.parametrize("base, what", [(100, "avail index 100"), (5 | 100 << 16, "used index 100")])
def test_a_packed_base_beyond_the_ring_size_is_a_protocol_error(session, base, what):
    s, backend = session
    send(s, R.SET_FEATURES, u64(BASE_FEATURES))
    send(s, R.SET_VRING_NUM, state(0, 100))
    with pytest.raises(ProtocolError, match=what):
        send(s, R.SET_VRING_BASE, state(0, base))
    assert 0 not in backend.bases


def test_split_rings_keep_their_rules(session):
    s, _ = session
    send(s, R.SET_FEATURES, u64(SPLIT_FEATURES))
    with pytest.raises(ProtocolError, match="power of 2"):
        send(s, R.SET_VRING_NUM, state(0, 100))
    with pytest.raises(ProtocolError, match="bits above 15"):
        send(s, R.SET_VRING_BASE, state(0, 0x8000 | 1 << 31))
