"""The IOTLB of one connection, as the front-end describes it (IOTLB_MSG).

With VIRTIO_F_ACCESS_PLATFORM and a vIOMMU, ring and buffer addresses are
IOVAs; the front-end maps them to its own user addresses with UPDATE
messages and takes them back with INVALIDATE (vhost-user.rst, "IOMMU
support"). This is the control plane's copy: entries sorted by IOVA and
never overlapping, so that the datapath (cython_ext/iotlb.pxi) can publish
it as an array and search it. Every value is the front-end's, so:

* an entry whose IOVA or user address range wraps, of size 0, or with a
  permission other than RO/WO/RW is refused;
* a new entry wins over what it overlaps (the older ones are cut around it,
  as an IOMMU's page tables would be rewritten);
* at most MAX_ENTRIES (2048, as DPDK): beyond, older entries are evicted in
  turn (a lookup that needs one again misses and asks for it), so no
  front-end grows our memory.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

MAX_ENTRIES = 2048
SPACE = 1 << 64          # the IOVA and user address spaces (exclusive end)
PERM_RO, PERM_WO, PERM_RW = 1, 2, 3


class IotlbRefused(Exception):
    """An entry the IOTLB will not hold."""


class Entry(NamedTuple):
    iova: int
    end: int             # exclusive; may be SPACE
    uaddr: int
    perm: int


class Iotlb:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._starts: list[int] = []
        self._entries: list[Entry] = []
        self._evict_at = 0
        self.updates = 0
        self.invalidations = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[int, int, int, int]]:
        """(iova, size, uaddr, perm), sorted by iova: what the datapath publishes."""
        return [(e.iova, e.end - e.iova, e.uaddr, e.perm) for e in self._entries]

    def covers(self, iova: int, perm: int) -> bool:
        """Whether an entry maps `iova` with (at least) `perm`."""
        i = bisect.bisect_right(self._starts, iova) - 1
        return i >= 0 and iova < self._entries[i].end and self._entries[i].perm & perm == perm

    def update(self, iova: int, size: int, uaddr: int, perm: int) -> bool:
        """Add an entry; True if it replaced part of another (then workers
        must stop using the old one before the update is acknowledged)."""
        if size == 0:
            raise IotlbRefused(f"entry iova={iova:#x} of size 0")
        if iova + size > SPACE or uaddr + size > SPACE:
            raise IotlbRefused(f"entry iova={iova:#x} size={size:#x} uaddr={uaddr:#x} wraps")
        if perm not in (PERM_RO, PERM_WO, PERM_RW):
            raise IotlbRefused(f"entry iova={iova:#x}: permission {perm} is not RO, WO or RW")
        replaced = self._cut(iova, iova + size)
        i = bisect.bisect_left(self._starts, iova)
        self._starts.insert(i, iova)
        self._entries.insert(i, Entry(iova, iova + size, uaddr, perm))
        self.updates += 1
        while len(self._entries) > self.max_entries:
            # an evicted entry is still the front-end's mapping: a worker
            # that uses it a moment longer reads the right memory
            self._evict(keep=iova)
        return replaced

    def invalidate(self, iova: int, size: int) -> bool:
        """Forget [iova, iova+size) (clipped at the top of the space); True
        if an entry changed."""
        self.invalidations += 1
        if size == 0:
            return False
        changed = self._cut(iova, min(iova + size, SPACE))
        while len(self._entries) > self.max_entries:
            self._evict(keep=None)       # a hole cut in an entry made two of it
        return changed

    def clear(self) -> None:
        self._starts.clear()
        self._entries.clear()

    def _cut(self, start: int, end: int) -> bool:
        """Remove [start, end) from every entry, keeping the parts outside."""
        i = bisect.bisect_right(self._starts, start) - 1
        if i < 0 or self._entries[i].end <= start:
            i += 1
        j = i
        keep: list[Entry] = []
        while j < len(self._entries) and self._entries[j].iova < end:
            e = self._entries[j]
            if e.iova < start:
                keep.append(Entry(e.iova, start, e.uaddr, e.perm))
            if e.end > end:
                keep.append(Entry(end, e.end, e.uaddr + (end - e.iova), e.perm))
            j += 1
        if j == i:
            return False
        self._entries[i:j] = keep
        self._starts[i:j] = [e.iova for e in keep]
        return True

    def _evict(self, keep: int | None) -> None:
        """Drop one entry other than the one starting at `keep`, in turn
        through the table (DPDK evicts at random: either way a front-end
        cannot choose which of its entries stay)."""
        i = self._evict_at % len(self._entries)
        if self._starts[i] == keep:
            i = (i + 1) % len(self._entries)
        del self._entries[i]
        del self._starts[i]
        self._evict_at = i + 1
        self.evicted += 1
