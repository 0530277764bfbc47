"""Guests whose memory is on huge pages (hugetlbfs), with real peers.

The switch maps a region of a hugetlbfs file in whole huge pages (its
st_blksize; mmap offsets and lengths must be multiples of it): from the
region's offset rounded down to its end rounded up (cython_ext/mem.pxi,
_map_page and _map_span). Checked here against
- a QEMU guest with ``memory-backend-file,mem-path=<hugetlbfs>`` pinging and
  streaming with iperf3 to a guest on a memfd;
- DPDK testpmd's virtio-user on huge pages (``--huge-dir``, not
  ``--no-huge``), forwarding byte for byte through the switch;
- the test front-end offering a hugetlbfs file with a region whose offset
  and size are not multiples of 2 MiB (allowed: the switch maps the huge
  pages it touches and translates inside them), and one that runs past its
  file (refused with a reason; the connection and the other ports carry on).

The module reserves the pages it needs (vm.nr_hugepages) and mounts a private
hugetlbfs when none with 2 MiB pages is mounted; both are put back
afterwards, also when a test fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import traffic
from tests.harness.frontend import GuestMemory, RegionSpec, VhostMemRegion, VhostUserFrontend, bits
from tests.harness.frontend import ProtocolFeature as PF
from tests.harness.guests import QemuGuest
from tests.harness.peers.testpmd import verify_delivery, virtio_user_vdev
from tests.harness.switch import Vswitchd

MiB = 1 << 20
HUGE = 2 * MiB
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
# a 256 MiB guest (128 pages), testpmd's 256 MiB (128), the front-ends' few
PAGES = 300
BOOT_TIMEOUT = 240
IP_H, IP_M = "10.0.11.1", "10.0.11.2"
MAC_H, MAC_M = "52:54:00:00:11:01", "52:54:00:00:11:02"


def meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def mounted_hugetlbfs() -> str | None:
    """A hugetlbfs mount with 2 MiB pages (the default size here), if any."""
    with open("/proc/mounts") as f:
        for line in f:
            _, path, fstype, options, *_ = line.split()
            if fstype == "hugetlbfs" and "pagesize=2M" in options.split(","):
                return path
    return None


@pytest.fixture(scope="module")
def hugetlbfs(tmp_path_factory) -> str:
    """A hugetlbfs mount point with PAGES free 2 MiB pages for the module."""
    if meminfo("Hugepagesize") != HUGE // 1024:
        pytest.skip("the default huge page is not 2 MiB here")
    with open(NR_HUGEPAGES) as f:
        before = int(f.read())
    ours: Path | None = None
    mount = mounted_hugetlbfs()
    try:
        if mount is None:
            ours = tmp_path_factory.mktemp("hugetlbfs")
            subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0700", "vswitch-test",
                            str(ours)], check=True, capture_output=True, timeout=30)
            mount = str(ours)
        free = meminfo("HugePages_Free")
        if free < PAGES:
            with open(NR_HUGEPAGES, "w") as f:
                f.write(str(before + PAGES - free))
        free = meminfo("HugePages_Free")
        # memory too fragmented for more huge pages: a host problem, not the switch's
        assert free >= PAGES, f"only {free} free huge pages after raising vm.nr_hugepages"
        yield mount
    finally:
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(before))
        if ours is not None:
            if subprocess.run(["umount", str(ours)], capture_output=True, timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", str(ours)], capture_output=True, timeout=30)


def huge_mappings(pid: int, mount: str) -> list[tuple[int, int]]:
    """(length, kernel page size) of every mapping of a file under `mount` in
    the process, from its smaps."""
    found: list[tuple[int, int]] = []
    current: int | None = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                current = end - start if len(fields) >= 6 and fields[5].startswith(mount + "/") else None
            elif fields[0] == "KernelPageSize:" and current is not None:
                found.append((current, int(fields[1]) * 1024))
                current = None
    return found


@pytest.mark.qemu
def test_qemu_guest_on_huge_pages_talks_to_a_memfd_guest(hugetlbfs, image, tmp_path):
    sw = Vswitchd(tmp_path / "switch", {name: {"type": "vhost-user"} for name in ("h", "m")})
    sw.start()
    # q35, as virt-install creates guests today; the memfd guest runs QEMU's default (pc)
    h = QemuGuest("h", image, sw.socket("h"), mac=MAC_H, ip=f"{IP_H}/24", mem_path=hugetlbfs,
                  machine="q35", workdir=tmp_path / "h")
    m = QemuGuest("m", image, sw.socket("m"), mac=MAC_M, ip=f"{IP_M}/24", workdir=tmp_path / "m")
    free = meminfo("HugePages_Free")
    try:
        for g in (h, m):
            g.start()
        for g in (h, m):
            g.wait_booted(BOOT_TIMEOUT)
        for name in ("h", "m"):
            sw.wait_port(name, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                         timeout=60, what="connected")
        # QEMU preallocated its 256 MiB from the pool
        assert free - meminfo("HugePages_Free") >= 128
        # the switch maps H's RAM from hugetlbfs, in whole huge pages
        maps = huge_mappings(sw.proc.pid, hugetlbfs)
        assert maps and all(page == HUGE and length % HUGE == 0 for length, page in maps), maps
        mapped = sw.port("h")["memory_mapped"]
        assert mapped % HUGE == 0 and mapped >= 256 * MiB, mapped
        r = h.ping(IP_M, count=10, interval=0.2)
        assert (r.sent, r.loss_pct) == (10, 0), r
        r = m.ping(IP_H, count=10, interval=0.2)
        assert (r.sent, r.loss_pct) == (10, 0), r
        m.iperf3_server()
        forward = h.iperf3_client(IP_M, seconds=3)
        reverse = h.iperf3_client(IP_M, seconds=3, reverse=True)
        print(f"iperf3 hugepages->memfd {forward.gbps:.2f} Gbit/s, back {reverse.gbps:.2f} Gbit/s")
        assert forward.received_bps > 10e6, forward
        assert reverse.received_bps > 10e6, reverse
        for name in ("h", "m"):
            assert set(sw.drops(name)) <= {"no_rx_buffer"}, (name, sw.drops(name))
            assert sw.port(name)["alerts"] == {}, sw.port(name)
        for g in (h, m):
            g.assert_no_kernel_errors()
    finally:
        for g in (h, m):
            g.stop()
        sw.stop()


@pytest.mark.dpdk
def test_testpmd_on_huge_pages_forwards_byte_for_byte(hugetlbfs, tmp_path):
    socks = {name: str(tmp_path / f"{name}.sock") for name in ("a", "b")}
    ports = {name: {"type": "vhost-user", "socket": socks[name], "queues": 2} for name in ("a", "b")}
    seen: dict[str, object] = {}
    with Vswitchd(tmp_path / "switch", ports, cpus="1") as sw:
        def ready() -> None:
            for name in ("a", "b"):
                sw.wait_port(name, lambda p: p["state"] == "connected" and p["queues_enabled"] == 2,
                             timeout=30, what="2 queue pairs enabled")
            # testpmd's memory reached the switch as hugetlbfs files
            seen["maps"] = huge_mappings(sw.proc.pid, hugetlbfs)
            seen["mapped"] = [sw.port(name)["memory_mapped"] for name in ("a", "b")]
        result = verify_delivery(
            virtio_user_vdev(0, socks["a"], queues=2), virtio_user_vdev(1, socks["b"], queues=2),
            queues=2, count=200, workdir=tmp_path / "run", cpus=(0,), ready=ready,
            testpmd_kwargs={"huge_dir": hugetlbfs, "mem_mb": 256})
        assert result.ok, result.describe()
        assert sum(result.sent.values()) == 400
        for q in range(2):
            assert result.queue_map[q] == {q: 200}, result.describe()
        assert sw.drops("a") == {} and sw.drops("b") == {}
    maps = seen["maps"]
    print(f"the switch maps testpmd's memory as {maps} (bytes, page size); ports map {seen['mapped']}")
    assert maps and all(page == HUGE and length % HUGE == 0 for length, page in maps), maps
    assert all(n > 0 and n % HUGE == 0 for n in seen["mapped"]), seen


def test_hostile_unaligned_regions_on_hugetlbfs(hugetlbfs, tmp_path):
    """A region of a hugetlbfs file at offset 1 MiB + 4 KiB, 3 MiB - 4 KiB long: the
    switch maps the two huge pages it touches and finds the rings and
    buffers inside them, so frames cross byte for byte to and from a memfd
    peer. A region that runs past the end of its hugetlbfs file is refused
    (REPLY_ACK failure, the reason in `port show`), the connection stays and
    the other port is not touched."""
    with Vswitchd(tmp_path / "switch", {name: {"type": "vhost-user"} for name in ("a", "b", "c")}) as sw:
        # the file: [0, 4 MiB) (hugetlbfs sizes are whole huge pages); the region: [1 MiB + 4 KiB, 4 MiB)
        mem = GuestMemory(regions=[RegionSpec(0x10000, 3 * MiB - 4096, fd_offset=MiB + 4096)],
                          directory=hugetlbfs)
        assert os.fstat(mem.regions[0].fd).st_blksize == HUGE
        a = traffic.connect(sw, "a", mem=mem, wait=True)
        b = traffic.connect(sw, "b", wait=True)
        try:
            assert sw.port("a")["memory_mapped"] == 2 * HUGE      # file bytes [0, 4 MiB)
            for _ in range(3):
                traffic.exchange_by_name(a, b, "a", "b", n=16, size=1400)
                traffic.exchange_by_name(b, a, "b", "a", n=16, size=1400)
            # past the end of its file: the file has 4 MiB, the region needs 1 MiB more
            fe = VhostUserFrontend(sw.socket("c"))
            try:
                fe.get_features()
                fe.set_protocol_features(bits(PF.REPLY_ACK))
                fd = mem.regions[0].fd
                assert fe.set_mem_table([VhostMemRegion(0, 4 * MiB, 0x7F0000000000, MiB, fd)],
                                        need_reply=True) != 0
                port = sw.port("c")
                assert port["state"] == "connected" and port["memory_mapped"] == 0, port
                assert "needs" in (port["last_error"] or ""), port
                print("refused:", port["last_error"])
            finally:
                fe.close()
            traffic.exchange_by_name(a, b, "a", "b", n=16, size=1400)
            assert sw.drops("a") == {} and sw.drops("b") == {}
            assert sw.port("b")["connections"] == 1 and sw.port("a")["connections"] == 1
        finally:
            a.close()
            b.close()
            mem.close()
