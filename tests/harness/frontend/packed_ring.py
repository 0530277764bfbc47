"""Packed virtqueues (VIRTIO_F_RING_PACKED) on the driver side of the test front-end.

A second, independent reading of the virtio 1.x "Packed Virtqueues" section
(OASIS virtio spec ``packed-ring.tex``), kept beside ``SplitRing`` with the
same driver API (``add_chain``, ``post_tx``, ``post_rx``, ``publish``,
``reap``, ``recv_frames``...), so that helpers written for split rings drive
packed rings unchanged.  ``setup_net_device(..., packed=True)`` negotiates
the feature and builds these rings.

Layout in guest memory::

    descriptor ring: Q x {le64 addr; le32 len; le16 id; le16 flags}   align 16
    driver event suppression: le16 off_wrap; le16 flags                align 4
    device event suppression: le16 off_wrap; le16 flags                align 4

vhost-user carries them in SET_VRING_ADDR as desc = ring, avail = driver
area, used = device area, and the ring position in SET_VRING_BASE /
GET_VRING_BASE as one 32-bit value: bits 0-14 next avail index, bit 15 the
driver's wrap counter, bits 16-30 next used index, bit 31 the used wrap counter.

Driver rules this module follows (and ``PackedHostile`` breaks on purpose):

* a descriptor is available in lap ``w`` when its AVAIL flag equals ``w`` and
  its USED flag does not; used when both equal the device's used wrap counter.
  Both wrap counters start at 1 and flip when the index passes the ring's end;
* a chain occupies consecutive ring slots (continuing at slot 0 after the
  last one); every descriptor but the last has NEXT; the driver writes the
  head's flags last, so the device never sees half a chain;
* the device writes one used descriptor per chain (buffer id + written
  length) and the driver skips as many slots as that chain had: the driver
  remembers each buffer id's chain length;
* the buffer id goes in the last descriptor of a chain (spec "Next Flag");
  Linux and QEMU read it from the first, so we write it in every descriptor;
* an indirect table is an array of the same 16-byte descriptors; only WRITE
  is meaningful in it ("the VIRTQ_DESC_F_WRITE flags bit is the only valid
  flag for descriptors in the indirect table"), entries follow each other.

Ordering: as ``SplitRing``, plain stores through an mmap are enough on x86
(TSO); the head's flags are one 16-bit store issued after the rest of the chain.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import NamedTuple

from .vhost_frontend import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    GuestMemory,
    RingDriver,
    RingFull,
    UsedElem,
    _Chain,
)

__all__ = [
    "VRING_PACKED_DESC_F_AVAIL", "VRING_PACKED_DESC_F_USED",
    "RING_EVENT_FLAGS_ENABLE", "RING_EVENT_FLAGS_DISABLE", "RING_EVENT_FLAGS_DESC",
    "PackedDesc", "PackedRing", "PackedHostile", "packed_vring_base", "split_packed_vring_base",
]

VRING_PACKED_DESC_F_AVAIL = 1 << 7
VRING_PACKED_DESC_F_USED = 1 << 15
#: Event suppression ``flags``: interrupts / kicks on, off, or at ``off_wrap`` (needs EVENT_IDX).
RING_EVENT_FLAGS_ENABLE = 0
RING_EVENT_FLAGS_DISABLE = 1
RING_EVENT_FLAGS_DESC = 2

_PDESC = struct.Struct("<QIHH")  # addr, len, id, flags
_EVENT = struct.Struct("<HH")  # off_wrap, flags


class PackedDesc(NamedTuple):
    """A packed-ring descriptor: ``le64 addr; le32 len; le16 id; le16 flags``."""

    addr: int
    len: int
    id: int = 0
    flags: int = 0

    def pack(self) -> bytes:
        # Masked so hostile callers may pass "overflowing" Python ints.
        return _PDESC.pack(self.addr & (2**64 - 1), self.len & 0xFFFFFFFF, self.id & 0xFFFF, self.flags & 0xFFFF)


def packed_vring_base(avail: int, avail_wrap: int, used: int, used_wrap: int) -> int:
    """The 32-bit SET_VRING_BASE / GET_VRING_BASE value of a packed ring."""
    return (avail & 0x7FFF) | (avail_wrap & 1) << 15 | (used & 0x7FFF) << 16 | (used_wrap & 1) << 31


def split_packed_vring_base(value: int) -> tuple[int, int, int, int]:
    """(avail index, avail wrap, used index, used wrap) of a packed vring base value."""
    return value & 0x7FFF, value >> 15 & 1, value >> 16 & 0x7FFF, value >> 31 & 1


def avail_bits(wrap: int) -> int:
    """AVAIL/USED flag bits that make a descriptor available in lap ``wrap``."""
    return VRING_PACKED_DESC_F_AVAIL if wrap else VRING_PACKED_DESC_F_USED


def used_bits(wrap: int) -> int:
    """AVAIL/USED flag bits of a descriptor the device marked used in lap ``wrap``."""
    return VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED if wrap else 0


class PackedRing(RingDriver):
    """One packed virtqueue laid out in guest memory (virtio 1.x "Packed Virtqueues").

    Same driver API as ``SplitRing``; ``add_chain`` returns the buffer id
    (what ``reap`` reports as ``UsedElem.id``).  Queue sizes need not be a
    power of two (1..32768).  Attribute names ``avail_gpa``/``used_gpa`` are
    the driver and device event areas, as in SET_VRING_ADDR.
    """

    def __init__(self, mem: GuestMemory, num: int = 256, index: int = 0, *,
                 desc_gpa: int | None = None, driver_gpa: int | None = None, device_gpa: int | None = None,
                 region: int | None = None, buf_region: int | None = None,
                 hdr_len: int = 12, mrg_rxbuf: bool = False, check_num: bool = True) -> None:
        if check_num and not 1 <= num <= 32768:
            raise ValueError("packed ring size must be in 1..32768")
        self.mem = mem
        self.num = num
        self.index = index
        self.hdr_len = hdr_len
        self.mrg_rxbuf = mrg_rxbuf
        self.event_idx = False
        self.interrupts = 0
        self.buf_region = buf_region
        self._owned: list[int] = []
        self.desc_gpa = desc_gpa if desc_gpa is not None else self._alloc(16 * max(num, 1), 16, region)
        self.driver_gpa = driver_gpa if driver_gpa is not None else self._alloc(4, 4, region)
        self.device_gpa = device_gpa if device_gpa is not None else self._alloc(4, 4, region)
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.err_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.free_ids: list[int] = list(range(num - 1, -1, -1))  # pop() hands out 0, 1, 2...
        self.num_free = num  # ring slots not holding an in-flight descriptor
        self.next_avail = 0  # slot the next chain starts at
        self.avail_wrap = 1
        self.next_used = 0  # slot of the next used descriptor the driver will read
        self.used_wrap = 1
        self.laps = 0  # times next_avail passed the ring's end (chains crossing it included)
        self.inflight: dict[int, _Chain] = {}
        self.errors: list[str] = []
        self.stale_len = 0  # used descriptors of read-only chains with a non-zero len
        self._rx_pending: list[UsedElem] = []
        # Heads written but not made available yet: (slot, flags), in ring order.
        self._unpublished: list[tuple[int, int]] = []

    # -- addresses and state for vhost-user ---------------------------------------

    # SET_VRING_ADDR's ``avail`` and ``used`` (avail_uaddr, used_uaddr) are
    # the driver and device event suppression areas.
    @property
    def avail_gpa(self) -> int:
        return self.driver_gpa

    @property
    def used_gpa(self) -> int:
        return self.device_gpa

    @property
    def avail_idx(self) -> int:
        """Next avail slot | wrap counter << 15: the low half of the vring base
        (what a back-end that reports only the avail side answers to GET_VRING_BASE)."""
        return self.next_avail | self.avail_wrap << 15

    def vring_base(self) -> int:
        """The driver's ring position as SET_VRING_BASE carries it (32 bits)."""
        return packed_vring_base(self.next_avail, self.avail_wrap, self.next_used, self.used_wrap)

    def set_position(self, avail: int, avail_wrap: int, used: int | None = None,
                     used_wrap: int | None = None) -> None:
        """Move the driver's ring position (resuming a stopped ring elsewhere than slot 0).

        Only for an idle ring: nothing may be in flight."""
        if self.inflight or self._unpublished:
            raise RuntimeError("set_position on a ring with buffers in flight")
        self.next_avail, self.avail_wrap = avail % self.num, avail_wrap & 1
        self.next_used = self.next_avail if used is None else used % self.num
        self.used_wrap = self.avail_wrap if used_wrap is None else used_wrap & 1

    # -- raw field access -----------------------------------------------------------

    def desc_addr(self, slot: int) -> int:
        """GPA of ring slot ``slot`` (taken modulo the ring size)."""
        return self.desc_gpa + 16 * (slot % self.num)

    def write_desc(self, slot: int, addr: int, length: int, id: int = 0, flags: int = 0) -> None:
        """Write ring slot ``slot`` verbatim, all 16 bytes (any values)."""
        self.mem.write(self.desc_addr(slot), PackedDesc(addr, length, id, flags).pack())

    def write_desc_body(self, slot: int, addr: int, length: int, id: int = 0) -> None:
        """Write addr, len and id of a slot, leaving its flags alone (a head before it is made available)."""
        self.mem.write(self.desc_addr(slot), PackedDesc(addr, length, id, 0).pack()[:14])

    def read_desc(self, slot: int) -> PackedDesc:
        return PackedDesc(*_PDESC.unpack(self.mem.read(self.desc_addr(slot), 16)))

    def desc_flags(self, slot: int) -> int:
        return self.mem.load16(self.desc_addr(slot) + 14)

    def set_desc_flags(self, slot: int, flags: int) -> None:
        """One 16-bit store of a slot's flags (how a head is made available)."""
        self.mem.store16(self.desc_addr(slot) + 14, flags)

    def set_driver_event(self, off_wrap: int, flags: int) -> None:
        """Driver event suppression area: when the device should interrupt us."""
        self.mem.write(self.driver_gpa, _EVENT.pack(off_wrap & 0xFFFF, flags & 0xFFFF))

    def device_event(self) -> tuple[int, int]:
        """Device event suppression area as the device wrote it: (off_wrap, flags)."""
        off_wrap, flags = _EVENT.unpack(self.mem.read(self.device_gpa, 4))
        return int(off_wrap), int(flags)

    # Names SplitRing callers use.
    def set_used_event(self, value: int) -> None:
        """Interrupt me when the device writes the used descriptor at ``value``
        (slot | wrap << 15); needs EVENT_IDX."""
        self.set_driver_event(value, RING_EVENT_FLAGS_DESC)

    def used_position(self, ahead: int = 0) -> int:
        """slot | wrap << 15 of the used descriptor ``ahead`` one-descriptor chains
        past the next one the driver will read (for ``set_used_event``)."""
        slot, wrap = self.next_used + ahead, self.used_wrap
        while slot >= self.num:
            slot -= self.num
            wrap ^= 1
        return slot | wrap << 15

    def kick_needed(self, old_avail: int, old_wrap: int) -> bool:
        """Whether a driver that honours device event suppression notifies now,
        having made available everything from position (old_avail, old_wrap) up
        to its next_avail (the rule of Linux's virtqueue_kick_prepare_packed):
        DISABLE never, DESC when the descriptor at off_wrap was among them,
        anything else always."""
        off_wrap, flags = self.device_event()
        if flags == RING_EVENT_FLAGS_DISABLE:
            return False
        if flags != RING_EVENT_FLAGS_DESC:
            return True
        new = self.next_avail
        old = old_avail if old_wrap == self.avail_wrap else old_avail - self.num
        event = off_wrap & 0x7FFF
        if off_wrap >> 15 != self.avail_wrap:
            event -= self.num
        return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF

    def set_avail_flags(self, flags: int) -> None:
        """Driver event flags (0 enable, 1 disable, 2 desc): SplitRing's avail->flags counterpart."""
        self.mem.store16(self.driver_gpa + 2, flags)

    def used_flags(self) -> int:
        """Device event flags (0 enable, 1 disable, 2 desc): SplitRing's used->flags counterpart."""
        return self.device_event()[1]

    def is_used(self, slot: int, wrap: int | None = None) -> bool:
        """True when ``slot`` holds a used descriptor of lap ``wrap`` (default: the one the driver expects)."""
        w = self.used_wrap if wrap is None else wrap
        f = self.desc_flags(slot)
        return bool(f & VRING_PACKED_DESC_F_AVAIL) == bool(f & VRING_PACKED_DESC_F_USED) == bool(w)

    def take_slots(self, n: int) -> tuple[list[int], list[int]]:
        """Claim the next ``n`` ring slots, continuing at slot 0 after the last one
        (the avail wrap counter flips there); return (slots, wrap counter of each)."""
        if n > self.num_free:
            self.reap()
        if n > self.num_free:
            raise RingFull(f"need {n} descriptors, {self.num_free} free")
        out = []
        for _ in range(n):
            out.append((self.next_avail, self.avail_wrap))
            self.next_avail += 1
            if self.next_avail >= self.num:
                self.next_avail = 0
                self.avail_wrap ^= 1
                self.laps += 1
        self.num_free -= n
        return [s for s, _ in out], [w for _, w in out]

    def take_id(self) -> int:
        if not self.free_ids:
            self.reap()
        if not self.free_ids:
            raise RingFull("no free buffer id")
        return self.free_ids.pop()

    def post_descs(self, descs: Sequence[PackedDesc | tuple[int, int, int]], *, id: int | None = None,
                   link: bool = True, head_flags: int | None = None, allocs: Sequence[int] = (),
                   writable: Sequence[tuple[int, int]] = (), raw: bool = False,
                   publish: bool = True, kick: bool = True) -> int:
        """Place ``descs`` in the next slots as one chain; return its buffer id.

        ``descs`` give addr, len, flags (a ``PackedDesc``'s id is ignored:
        ``id`` -- default a free one -- goes in every descriptor).  Each
        descriptor gets the AVAIL/USED bits of the lap its slot is in, plus
        NEXT on all but the last if ``link``.  ``head_flags`` replaces the
        head's flags entirely (hostile: wrong wrap bits, AVAIL==USED...).
        The chain is registered in flight under its id (``raw``: reaping
        it checks nothing about its data).
        """
        items = [(d.addr, d.len, d.flags) if isinstance(d, PackedDesc) else tuple(d) for d in descs]
        if not items:
            raise ValueError("a chain needs at least one descriptor")
        buf_id = self.take_id() if id is None else id
        try:
            slots, wraps = self.take_slots(len(items))
        except BaseException:
            if id is None:
                self.free_ids.append(buf_id)
            raise
        flags_out = []
        for i, ((addr, length, flags), slot, wrap) in enumerate(zip(items, slots, wraps, strict=True)):
            f = (flags & ~(VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED)) | avail_bits(wrap)
            if link and i + 1 < len(items):
                f |= VRING_DESC_F_NEXT
            flags_out.append(f)
            if i == 0:
                self.write_desc_body(slot, addr, length, buf_id)
            else:
                self.write_desc(slot, addr, length, buf_id, f)
        self.inflight[buf_id] = _Chain(slots, list(allocs), list(writable), raw=raw)
        self._unpublished.append((slots[0], flags_out[0] if head_flags is None else head_flags))
        if publish:
            self.publish(kick=kick)
        return buf_id

    def pending_heads(self) -> list[tuple[int, int]]:
        """Heads written but not made available yet: (slot, flags ``publish`` will store)."""
        return list(self._unpublished)

    def publish(self, *, kick: bool = False) -> None:
        """Make the chains added since the last publish available: store each head's
        flags, in ring order (the device takes chains in order, so it never skips one)."""
        for slot, flags in self._unpublished:
            self.set_desc_flags(slot, flags)
        self._unpublished = []
        if kick:
            self.kick()

    def write_indirect_table(self, descs: Sequence[PackedDesc | tuple[int, int, int]],
                             gpa: int | None = None) -> tuple[int, int]:
        """Write an indirect table of (addr, len, flags) entries; return (gpa, len in bytes)."""
        blob = b"".join(d.pack() if isinstance(d, PackedDesc) else PackedDesc(d[0], d[1], 0, d[2]).pack()
                        for d in descs)
        if gpa is None:
            gpa = self.mem.alloc(max(len(blob), 16), 16, region=self.buf_region)
        self.mem.write(gpa, blob)
        return gpa, len(blob)

    # -- notifications --------------------------------------------------------------

    def used_event_now(self) -> int:
        return self.next_used | self.used_wrap << 15

    # -- well-behaved driver operations ------------------------------------------------

    def add_chain(self, segments: Sequence[tuple[int, int, bool]], *, indirect: bool = False,
                  allocs: Sequence[int] = (), publish: bool = True, kick: bool = True) -> int:
        """Post one chain of (gpa, len, device_writable) segments; return its buffer id.

        With ``indirect`` the segments go into an indirect table and the ring
        gets one descriptor with only INDIRECT set (the device ignores WRITE on it).
        """
        if not segments:
            raise ValueError("a chain needs at least one segment")
        allocs = list(allocs)
        writable = [(g, n) for g, n, w in segments if w]
        if indirect:
            tgpa, tlen = self.write_indirect_table(
                [(g, n, VRING_DESC_F_WRITE if w else 0) for g, n, w in segments])
            allocs.append(tgpa)
            descs = [(tgpa, tlen, VRING_DESC_F_INDIRECT)]
        else:
            descs = [(g, n, VRING_DESC_F_WRITE if w else 0) for g, n, w in segments]
        try:
            return self.post_descs(descs, allocs=allocs, writable=writable, publish=publish, kick=kick)
        except RingFull:
            if indirect:
                self.mem.free(allocs.pop())
            raise


    def pending_used(self) -> int:
        """Used descriptors the device wrote that were not reaped yet (walks the ring)."""
        n, slot, wrap = 0, self.next_used, self.used_wrap
        seen = 0
        while seen < self.num and self.is_used(slot, wrap):
            d = self.read_desc(slot)
            chain = self.inflight.get(d.id)
            step = len(chain.descs) if chain is not None else 1
            n += 1
            seen += step
            slot += step
            if slot >= self.num:
                slot -= self.num
                wrap ^= 1
        return n

    def reap(self) -> list[UsedElem]:
        """Consume all new used descriptors, free their chains, return them.

        Back-end misbehaviour (an id that is not in flight, a length larger
        than the chain's writable buffers) goes to ``self.errors``; an
        unknown id is taken as a one-descriptor chain.
        """
        out: list[UsedElem] = []
        for _ in range(self.num):
            if not self.is_used(self.next_used):
                break
            d = self.read_desc(self.next_used)  # after the flags: x86 keeps loads in order
            chain = self.inflight.pop(d.id, None)
            step = len(chain.descs) if chain is not None else 1
            self.next_used += step
            if self.next_used >= self.num:
                self.next_used -= self.num
                self.used_wrap ^= 1
            self.num_free += step
            if chain is None:
                self.errors.append(f"used id {d.id} is not in flight")
                out.append(UsedElem(d.id, d.len, b"", False))
                continue
            if d.id < self.num and d.id not in self.free_ids:
                self.free_ids.append(d.id)
            cap = sum(n for _, n in chain.writable)
            if not chain.writable and d.len:
                # A chain without device-writable buffers: the device wrote
                # nothing, and len means nothing to a driver (Linux ignores it
                # on TX).  DPDK 22.11 leaves the slot's old len in place here.
                self.stale_len += 1
            elif d.len > cap and not chain.raw:
                self.errors.append(f"used len {d.len} > writable capacity {cap} (id {d.id})")
            data = self._gather(chain.writable, min(d.len, cap))
            for a in chain.allocs:
                self.mem.free(a)
            out.append(UsedElem(d.id, d.len, data))
        return out

class PackedHostile:
    """Recipes for malformed packed-ring chains, built with PackedRing's raw API.

    As ``Hostile`` for split rings: every recipe writes its descriptors in
    the next slots, makes the head available (unless ``publish=False``) and
    kicks, and returns the buffer id it used.  Buffers are device-readable on
    TX rings and device-writable on RX rings (even vring index = RX) unless
    ``writable`` says otherwise.  Recipes shared with ``Hostile`` keep its
    names, so a test can run the same list against both ring kinds.
    """

    def __init__(self, ring: PackedRing, *, writable: bool | None = None) -> None:
        self.ring = ring
        self.mem = ring.mem
        self.wflag = VRING_DESC_F_WRITE if (ring.index % 2 == 0 if writable is None else writable) else 0
        self._allocs: list[int] = []

    # -- plumbing ---------------------------------------------------------------------

    def _buf(self, n: int = 64) -> int:
        gpa = self.mem.alloc(n, 16, region=self.ring.buf_region)
        self._allocs.append(gpa)
        return gpa

    def _table(self, descs: Sequence[PackedDesc | tuple[int, int, int]]) -> tuple[int, int]:
        gpa, length = self.ring.write_indirect_table(descs)
        self._allocs.append(gpa)
        return gpa, length

    def chain(self, descs: Sequence[PackedDesc | tuple[int, int, int]], *, id: int | None = None,
              link: bool = True, head_flags: int | None = None, publish: bool = True, kick: bool = True) -> int:
        """Arbitrary (addr, len, flags) descriptors in the next slots (see ``PackedRing.post_descs``)."""
        allocs, self._allocs = self._allocs, []
        return self.ring.post_descs(descs, id=id, link=link, head_flags=head_flags, allocs=allocs, raw=True,
                                    publish=publish, kick=kick)

    def _one(self, addr: int, length: int, flags: int = 0, **kw: object) -> int:
        return self.chain([(addr, length, flags)], **kw)  # type: ignore[arg-type]

    # -- bad buffers (same names as Hostile) ------------------------------------------

    def addr_outside_memory(self, *, addr: int | None = None, length: int = 64, **kw: object) -> int:
        return self._one(self.mem.end + 0x10000 if addr is None else addr, length, self.wflag, **kw)

    def straddle_end_of_memory(self, **kw: object) -> int:
        last = max(self.mem.regions, key=lambda r: r.end)
        return self._one(last.end - 64, 64 + 4096, self.wflag, **kw)

    def len_overflow_64(self, *, addr: int = 2**64 - 0x100, length: int = 0x200, **kw: object) -> int:
        """addr + len wraps past 2**64 into guest memory."""
        return self._one(addr, length, self.wflag, **kw)

    def len_overflow_32(self, *, count: int = 3, **kw: object) -> int:
        """Chain whose total length exceeds 2**32."""
        g = self._buf()
        return self.chain([(g, 0x80000000, self.wflag)] * count, **kw)  # type: ignore[arg-type]

    def huge_length(self, **kw: object) -> int:
        """One descriptor of length 0xFFFFFFFF starting inside guest memory."""
        return self._one(self._buf(), 0xFFFFFFFF, self.wflag, **kw)

    def zero_length(self, **kw: object) -> int:
        return self._one(self._buf(), 0, self.wflag, **kw)

    def short_header(self, length: int = 4, **kw: object) -> int:
        return self._one(self._buf(), length, self.wflag, **kw)

    def wrong_direction(self, **kw: object) -> int:
        return self._one(self._buf(2048), 2048, self.wflag ^ VRING_DESC_F_WRITE, **kw)

    def write_before_read(self, **kw: object) -> int:
        return self.chain([(self._buf(), 64, VRING_DESC_F_WRITE), (self._buf(), 64, 0)], **kw)  # type: ignore[arg-type]

    # -- bad chains -------------------------------------------------------------------

    def chain_longer_than_ring(self, **kw: object) -> int:
        """Every slot of the ring holds a descriptor with NEXT: the chain runs past the
        ring's end and round again (the device must stop after Q descriptors).
        Needs an idle ring; takes all Q slots."""
        g = self._buf()
        n = self.ring.num
        return self.chain([(g, 16, self.wflag | VRING_DESC_F_NEXT)] * n, link=False, **kw)  # type: ignore[arg-type]

    def next_past_last(self, **kw: object) -> int:
        """The chain's last written descriptor still has NEXT: the device reads on
        into the following slot, which holds no descriptor of this lap."""
        return self._one(self._buf(), 64, self.wflag | VRING_DESC_F_NEXT, **kw)

    def id_out_of_range(self, id: int | None = None, **kw: object) -> int:
        """A valid buffer whose buffer id is >= the queue size."""
        buf_id = self.ring.num + 5 if id is None else id
        return self._one(self._buf(), 64, self.wflag, id=buf_id, **kw)

    # -- wrap counter and flag games ----------------------------------------------------

    def head_flags_as(self, kind: str, wrap: int | None = None) -> int:
        """Head flags of a descriptor in lap ``wrap`` (default: the ring's current
        lap; a pending head's own lap is ``lap_of(flags)``) that is *not*
        available: ``wrong_wrap`` (AVAIL/USED of the other lap),
        ``used_this_lap`` (AVAIL == USED == wrap), ``used_last_lap``
        (AVAIL == USED != wrap)."""
        w = self.ring.avail_wrap if wrap is None else wrap
        return {"wrong_wrap": avail_bits(w ^ 1), "used_this_lap": used_bits(w),
                "used_last_lap": used_bits(w ^ 1)}[kind]

    @staticmethod
    def lap_of(flags: int) -> int:
        """The wrap counter of the lap in which ``flags`` (of an available descriptor) make it available."""
        return 1 if flags & VRING_PACKED_DESC_F_AVAIL else 0

    def flip_wrap(self) -> None:
        """Flip the driver's avail wrap counter without the index passing the ring's end:
        every descriptor marked from now on is marked for the wrong lap."""
        self.ring.avail_wrap ^= 1

    # -- bad indirect tables ------------------------------------------------------------

    def _good_table(self, n: int = 2) -> list[tuple[int, int, int]]:
        return [(self._buf(), 64, self.wflag) for _ in range(n)]

    def _indirect(self, table: Sequence[PackedDesc | tuple[int, int, int]], *, tlen: int | None = None,
                  flags: int = VRING_DESC_F_INDIRECT, **kw: object) -> int:
        tgpa, blen = self._table(table)
        return self._one(tgpa, blen if tlen is None else tlen, flags, **kw)

    def indirect_bad_len(self, length: int = 24, **kw: object) -> int:
        return self._indirect(self._good_table(2), tlen=length, **kw)

    def indirect_zero_len(self, **kw: object) -> int:
        return self._indirect(self._good_table(1), tlen=0, **kw)

    def indirect_outside_memory(self, **kw: object) -> int:
        return self._one(self.mem.end + 0x100000, 64, VRING_DESC_F_INDIRECT, **kw)

    def indirect_nested(self, **kw: object) -> int:
        """An indirect table containing an INDIRECT descriptor."""
        inner, ilen = self._table(self._good_table(1))
        return self._indirect([(inner, ilen, VRING_DESC_F_INDIRECT)], **kw)

    def indirect_with_next(self, **kw: object) -> int:
        """INDIRECT together with NEXT on the ring descriptor, a second descriptor after it."""
        tgpa, blen = self._table(self._good_table(1))
        return self.chain([(tgpa, blen, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT),
                           (self._buf(), 64, self.wflag)], link=False, **kw)  # type: ignore[arg-type]

    def indirect_too_long(self, entries: int | None = None, **kw: object) -> int:
        """Indirect table with more entries than the ring size."""
        n = self.ring.num + 1 if entries is None else entries
        g = self._buf()
        return self._indirect([(g, 1, self.wflag)] * n, **kw)

    def indirect_frame(self, blob: bytes, *, pieces: int = 2, entry_flags: int = 0, **kw: object) -> int:
        """A well-formed frame (header + frame bytes ``blob``) in an indirect table of
        ``pieces`` entries whose flags also carry ``entry_flags`` (e.g. NEXT: reserved
        in an indirect table, the device ignores it)."""
        size = -(-len(blob) // pieces)
        table = []
        for i in range(pieces):
            part = blob[i * size:(i + 1) * size]
            g = self._buf(max(len(part), 1))
            self.mem.write(g, part)
            table.append((g, len(part), self.wflag | entry_flags))
        return self._indirect(table, **kw)
