"""How the datapath maps guest memory, in process (workers never started).

A region is mapped from its offset rounded down to its file's page (the huge
page on hugetlbfs) to its end rounded up - nothing before it - and the
mapping is exactly what the SIGBUS guard covers and what `mapped_bytes`
counts; it never goes into a core dump; the per-port and total caps refuse a
table before anything is mapped; and everything is unmapped with the port.
"""

from __future__ import annotations

import gc
import os
import struct

import pytest

from vswitch._datapath import Datapath, DatapathError, memory_guard_ranges

PAGE = os.sysconf("SC_PAGE_SIZE")
MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
UADDR = 0x7F00_0000_0000


@pytest.fixture(autouse=True)
def collected():
    """Datapaths of these tests are freed (their fds closed) before the next
    test: later tests count this process's fds."""
    yield
    gc.collect()


@pytest.fixture
def dp():
    d = Datapath(workers=1)
    d.set_memory_limits(GiB, GiB + GiB // 2)
    yield d


@pytest.fixture
def memfds():
    opened: list[int] = []

    def make(size: int, flags: int = 0) -> int:
        fd = os.memfd_create("guest-mapping", flags)
        opened.append(fd)
        os.ftruncate(fd, size)
        return fd
    yield make
    for fd in opened:
        os.close(fd)


def mappings(name: str = "memfd:guest-mapping") -> list[dict]:
    """The process's mappings of files called `name`: start, end, file offset, VmFlags."""
    found, current = [], None
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            current = ({"start": start, "end": end, "offset": int(fields[2], 16)}
                       if len(fields) >= 6 and name in line else None)
        elif fields[0] == "VmFlags:" and current is not None:
            current["flags"] = fields[1:]
            found.append(current)
            current = None
    return found


def guarded(maps: list[dict]) -> bool:
    ranges = set(memory_guard_ranges())
    return all((m["start"], m["end"] - m["start"]) in ranges for m in maps)


def test_a_region_maps_only_the_pages_it_covers(dp, memfds):
    p = dp.port_add(1)
    fd = memfds(GiB + 4 * MiB)
    off = GiB + 0x1234                     # deep in the file, and not page aligned
    dp.set_mem_table(p, [(0, MiB, UADDR, off, fd)])
    [m] = mappings()
    assert m["offset"] == GiB + 0x1000 and m["end"] - m["start"] == MiB + PAGE
    assert "dd" in m["flags"]              # never into a core dump
    assert guarded([m]) and dp.mapped_bytes(p) == dp.mapped_bytes() == MiB + PAGE
    # guest addresses land where the front-end put them: the avail index of a
    # ring at uaddr + 0x1000 is read from file offset off + 0x1000 + 2
    os.pwrite(fd, struct.pack("<H", 0x4321), off + 0x1000 + 2)
    dp.vring_set_num(p, 1, 8)
    dp.vring_set_addr(p, 1, UADDR, UADDR + 0x2000, UADDR + 0x1000)
    dp.vring_start(p, 1)
    assert dp.vring_info(p, 1)["start_avail"] == 0x4321
    dp.port_remove(p)
    assert mappings() == [] and dp.mapped_bytes() == 0 and not guarded([m])


def test_the_dirty_log_maps_only_its_pages(dp, memfds):
    p = dp.port_add(1)
    fd = memfds(4 * MiB)
    dp.set_log_base(p, fd, 3 * PAGE, MiB + 0x10)
    [m] = mappings()
    assert m["offset"] == MiB and m["end"] - m["start"] == 4 * PAGE and "dd" in m["flags"]
    assert guarded([m]) and dp.mapped_bytes(p) == 4 * PAGE
    # a new log (QEMU resizes it while migrating) replaces the old mapping
    dp.set_log_base(p, fd, PAGE, 0)
    [m] = mappings()
    assert (m["offset"], m["end"] - m["start"]) == (0, PAGE) and guarded([m])
    dp.port_reset(p)
    assert mappings() == [] and dp.mapped_bytes() == 0


NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


@pytest.fixture
def huge_pages():
    """Four free 2 MiB pages for the test, and vm.nr_hugepages as it was after."""
    with open(NR_HUGEPAGES) as f:
        before = int(f.read())
    free = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("HugePages_Free")))
    if free < 4:
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(before + 4 - free))
    try:
        yield
    finally:
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(before))


def test_huge_pages_are_mapped_whole(dp, memfds, huge_pages):
    huge = 2 * MiB
    try:
        fd = memfds(4 * huge, os.MFD_HUGETLB)
    except OSError as exc:
        pytest.skip(f"no hugetlbfs memfd: {exc.strerror}")
    if os.fstat(fd).st_blksize != huge:
        pytest.skip("the default huge page is not 2 MiB here")
    p = dp.port_add(1)
    dp.set_mem_table(p, [(0, huge // 2, UADDR, huge + PAGE, fd)])
    [m] = mappings("memfd:guest-mapping")
    # from the huge page the region starts in, one whole huge page
    assert (m["offset"], m["end"] - m["start"]) == (huge, huge) and guarded([m])
    dp.port_reset(p)
    assert mappings() == []


def test_the_caps_refuse_a_table_before_anything_is_mapped(dp, memfds):
    a, b = dp.port_add(1), dp.port_add(1)
    sparse = memfds(16 * TiB)
    guards = len(memory_guard_ranges())
    with pytest.raises(DatapathError, match=r"would map 2 GiB .* over its cap of 1 GiB \(limits.guest_memory_per_port\)"):
        dp.set_mem_table(a, [(0, GiB, UADDR, 0, sparse), (GiB, GiB, UADDR + GiB, 0, sparse)])
    with pytest.raises(DatapathError, match=r"96 TiB .*limits.guest_memory_per_port"):
        dp.set_mem_table(a, [(i * 16 * TiB, 16 * TiB, UADDR, 0, sparse) for i in range(6)])
    with pytest.raises(DatapathError, match="limits.guest_memory_per_port"):
        dp.set_log_base(a, sparse, 2 * GiB, 0)
    assert mappings() == [] and len(memory_guard_ranges()) == guards
    dp.set_mem_table(a, [(0, GiB, UADDR, 0, sparse)])           # exactly the port's cap
    with pytest.raises(DatapathError, match=r"to 2 GiB, over its cap of 1.50 GiB \(limits.guest_memory_total\)"):
        dp.set_mem_table(b, [(0, GiB, UADDR, 0, sparse)])
    dp.set_mem_table(b, [(0, GiB // 2, UADDR, 0, sparse)])      # what is left
    # a port replacing its own table counts its old one out
    dp.set_mem_table(a, [(0, GiB, UADDR, GiB, sparse)])
    assert dp.mapped_bytes() == GiB + GiB // 2
    # the log counts against the cap of its port
    with pytest.raises(DatapathError, match="the dirty log would map"):
        dp.set_log_base(a, sparse, PAGE, 0)
    dp.port_reset(a)
    dp.set_memory_limits(2 * GiB, 4 * GiB)                       # a reload: for what comes next
    dp.set_mem_table(a, [(0, 2 * GiB, UADDR, 0, sparse)])
    assert dp.memory_limits() == {"per_port": 2 * GiB, "total": 4 * GiB}
    dp.port_reset(a)
    dp.port_reset(b)
    assert dp.mapped_bytes() == 0 and mappings() == []


def test_the_defaults_leave_room_for_large_guests():
    d = Datapath(workers=1)
    assert d.memory_limits() == {"per_port": TiB, "total": 32 * TiB}
    with pytest.raises(DatapathError):
        d.set_memory_limits(0, TiB)


def test_only_regular_files_are_mapped(dp, memfds):
    p = dp.port_add(1)
    for path in ("/dev/zero", "/dev/null"):
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(DatapathError, match="not a regular file"):
                dp.set_mem_table(p, [(0, PAGE, UADDR, 0, fd)])
            with pytest.raises(DatapathError, match="not a regular file"):
                dp.set_log_base(p, fd, PAGE, 0)
        finally:
            os.close(fd)
    assert dp.mapped_bytes() == 0
