"""A front-end that attacks the switch's resources costs nobody else.

Whoever can connect to a port socket controls every byte of its messages
and every fd it passes. One vswitchd for the module, with short limits; each
attack is run against one port, many times over, and afterwards the daemon
holds exactly the fds and the guest memory mappings it held before, and a
well-behaved front-end (tests/harness/frontend) connects and its frames cross:

* kick, call and err fds that are not eventfds (an O_PATH fd, a pipe, a
  regular file, a socket, another anonymous inode) are refused when they
  arrive, and closed;
* memory fds on a disk filesystem are refused unless the port allows them
  (`allow_file_memory`); memfd, /dev/shm and disk files on a port that
  allows them work;
* memory beyond the per-port and daemon-wide caps (`limits`) is refused
  before anything is mapped, only the region itself is mapped (not the file
  from offset 0), and no guest mapping goes into a core dump;
* a message that never completes (nothing sent, part of a header, a header
  without its payload, bytes trickling in) ends its connection after
  `limits.message_timeout` and is counted; a guest idle between complete
  messages keeps its connection however long it waits.
"""

from __future__ import annotations

import array
import os
import select
import socket
import struct
import subprocess
import time

import pytest

from tests.harness import traffic
from tests.harness.frontend import Feature as F
from tests.harness.frontend import GuestMemory, ProtocolFeature as PF, VhostMemRegion, VhostUserFrontend, bits
from tests.harness.switch import VENV_BIN, Vswitchd
from tests.harness.traffic import exchange, wait_until

FULL = bits(F.VERSION_1, F.MRG_RXBUF, F.INDIRECT_DESC, F.EVENT_IDX)
GiB, MiB, TiB = 1 << 30, 1 << 20, 1 << 40
PAGE = os.sysconf("SC_PAGE_SIZE")
LOG_ALL = 26                        # VHOST_F_LOG_ALL
TIMEOUT = 0.5                       # limits.message_timeout of the daemon under test
PER_PORT, TOTAL = GiB, GiB + GiB // 2
LIMITS = {"message_timeout": TIMEOUT, "guest_memory_per_port": PER_PORT, "guest_memory_total": TOTAL}
PORTS = {name: {"type": "vhost-user"} for name in ("one", "two", "fds", "mem", "hog", "hog2", "slow", "idle")}
PORTS["files"] = {"type": "vhost-user", "allow_file_memory": True}
N = 1000                            # hostile connections per kind of attack
MAX_LOG_LINES = 30                  # rate-limited: a flood writes a few lines, never one per event
# A tolerance for VmSize: thread stacks and malloc arenas come and go; what
# these attacks would leave behind is a GiB or TiBs.
VM_SLACK = 256 * MiB

# vhost-user requests (QEMU docs/interop/vhost-user.rst)
GET_FEATURES, SET_FEATURES, SET_MEM_TABLE, SET_LOG_BASE = 1, 2, 5, 6
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR, ADD_MEM_REG = 12, 13, 14, 37
VERSION = 0x1


def header(request: int, size: int) -> bytes:
    return struct.pack("=III", request, VERSION, size)


def message(request: int, payload: bytes = b"") -> bytes:
    return header(request, len(payload)) + payload


def mem_table(*regions: tuple[int, int, int, int]) -> bytes:
    return struct.pack("=II", len(regions), 0) + b"".join(struct.pack("=QQQQ", *r) for r in regions)


def one_region(gpa: int, size: int, offset: int = 0) -> bytes:
    return struct.pack("=Q", 0) + struct.pack("=QQQQ", gpa, size, 0x7F00_0000_0000 + gpa, offset)


UADDR = 0x7F00_0000_0000


@pytest.fixture(scope="module")
def sw(tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile")
    with Vswitchd(work / "switch", PORTS, cpus="1", extra={"limits": LIMITS}) as sw:
        sw.work = work
        yield sw


def log_lines(sw: Vswitchd) -> int:
    return len(sw.log_path.read_bytes().splitlines())


def vm_size(sw: Vswitchd) -> int:
    """The daemon's address space, bytes (/proc/PID/status VmSize)."""
    for line in open(f"/proc/{sw.proc.pid}/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def mapped(sw: Vswitchd, port: str | None = None) -> int:
    """Guest memory the daemon maps (all ports, or one), as it reports it."""
    if port is None:
        return sw.ctl("show")["guest_memory"]["mapped"]
    return sw.port(port)["memory_mapped"]


def attempt(path: str, data: bytes, fds: list[int]) -> bool:
    """One hostile connection: `data` with `fds`, then a GET_FEATURES. True
    if the switch refused it (closed the connection without a word); False
    if it answered, i.e. took the message."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.settimeout(10)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        s.sendmsg([data + header(GET_FEATURES, 0)], anc)
        try:
            return s.recv(64) == b""
        except ConnectionResetError:      # closed with our GET_FEATURES unread
            return True


MAC = {"one": b"\x02\x00\x00\x00\x0d\x01", "two": b"\x02\x00\x00\x00\x0d\x02"}


def connect(sw: Vswitchd, port: str, mem: GuestMemory | None = None):
    return traffic.connect(sw, port, rx_buffers=128, wait=True, mem=mem)


def assert_port_forwards(sw: Vswitchd, port: str, mem: GuestMemory | None = None) -> None:
    """A well-behaved front-end on `port` exchanges frames with one on "two"."""
    guest, peer = connect(sw, port, mem), connect(sw, "two")
    try:
        mine = b"\x02\x00\x00\x00\x0d\x09"
        exchange(guest, peer, mine, MAC["two"])
        exchange(peer, guest, MAC["two"], mine)
        assert sw.drops(port) == {} and sw.drops("two") == {}
    finally:
        guest.close()
        peer.close()
    for name in (port, "two"):
        sw.wait_port(name, lambda p: p["state"] == "listening", timeout=30, what="closed")


def assert_back_to_baseline(sw: Vswitchd, fds: int, vm: int, lines: int) -> None:
    assert sw.fd_count() == fds
    assert mapped(sw) == 0
    assert vm_size(sw) - vm < VM_SLACK, (vm_size(sw) - vm) >> 20
    assert log_lines(sw) - lines <= MAX_LOG_LINES, sw.log_tail(60)
    assert sw.alive()


@pytest.fixture
def baseline(sw):
    """fd count, address space and log length before the test; nothing connected."""
    for name in PORTS:
        sw.wait_port(name, lambda p: p["state"] == "listening", timeout=30, what="listening")
    return sw.fd_count(), vm_size(sw), log_lines(sw)


# --- fds that are not eventfds as kick, call and err ---------------------------------------------

BAD_VRING_FDS = ("o_path", "o_path_to_an_eventfd", "pipe", "regular_file", "socket", "epoll")


@pytest.fixture(scope="module")
def bad_fds(tmp_path_factory):
    path = tmp_path_factory.mktemp("fds") / "file"
    path.write_bytes(bytes(4096))
    ev = os.eventfd(0)
    r, w = os.pipe()
    a, b = socket.socketpair()
    ep = select.epoll()
    fds = {
        "o_path": os.open(path, os.O_PATH),
        # readlink says anon_inode:[eventfd], but nothing can be read or written through it
        "o_path_to_an_eventfd": os.open(f"/proc/self/fd/{ev}", os.O_PATH),
        "pipe": r,
        "regular_file": os.open(path, os.O_RDWR),
        "socket": a.fileno(),
        "epoll": ep.fileno(),            # an anonymous inode, but not an eventfd
    }
    yield fds
    for name in ("o_path", "o_path_to_an_eventfd", "regular_file"):
        os.close(fds[name])
    for fd in (ev, r, w):
        os.close(fd)
    a.close()
    b.close()
    ep.close()


@pytest.mark.parametrize("kind", BAD_VRING_FDS)
def test_a_vring_fd_that_is_not_an_eventfd_is_refused_and_closed(sw, baseline, bad_fds, kind):
    path = sw.socket("fds")
    before = sw.port("fds")
    t0 = time.monotonic()
    for i in range(N):
        request = (SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR)[i % 3]
        assert attempt(path, message(request, struct.pack("=Q", i % 2)), [bad_fds[kind]]), \
            f"{kind} as the fd of request {request} was taken (connection {i})"
    print(f"{N} connections with a {kind} as vring fd: {time.monotonic() - t0:.1f} s")
    port = wait_until(lambda: (p := sw.port("fds"))["protocol_errors"] == before["protocol_errors"] + N
                      and p["state"] == "listening" and p, what=f"{N} refusals")
    assert "not an eventfd" in port["last_error"], port["last_error"]
    assert_back_to_baseline(sw, *baseline)
    assert_port_forwards(sw, "fds")


def test_with_reply_ack_a_bad_vring_fd_is_answered_with_a_failure(sw, baseline, bad_fds):
    fe = VhostUserFrontend(sw.socket("fds"))
    ev = os.eventfd(0)
    try:
        fe.get_features()
        fe.set_protocol_features(bits(PF.REPLY_ACK))
        assert fe.set_vring_kick(0, bad_fds["pipe"], need_reply=True) != 0
        assert fe.set_vring_call(1, bad_fds["socket"], need_reply=True) != 0
        assert fe.set_vring_err(0, bad_fds["o_path_to_an_eventfd"], need_reply=True) != 0
        # the "no fd" flag stays allowed (the ring is polled), and so does an eventfd
        assert fe.set_vring_kick(0, None, need_reply=True) == 0
        assert fe.set_vring_call(0, ev, need_reply=True) == 0
        assert fe.connected()
    finally:
        os.close(ev)
        fe.close()
    sw.wait_port("fds", lambda p: p["state"] == "listening", timeout=30, what="closed")
    assert_back_to_baseline(sw, *baseline)


# --- memory on a disk filesystem -------------------------------------------------------------------

DISK_DIR = "/var/tmp"
TMPFS_MAGIC, HUGETLBFS_MAGIC = 0x01021994, 0x958458F6


def fs_type(path: str) -> int:
    return int(subprocess.run(["stat", "-f", "-c", "%t", path], capture_output=True, text=True,
                              check=True).stdout, 16)


@pytest.fixture(scope="module")
def disk_fd():
    if fs_type(DISK_DIR) in (TMPFS_MAGIC, HUGETLBFS_MAGIC):
        pytest.skip(f"{DISK_DIR} is not on a disk filesystem here")
    fd = os.open(DISK_DIR, os.O_TMPFILE | os.O_RDWR, 0o600)
    os.ftruncate(fd, 64 * MiB)
    yield fd
    os.close(fd)


def test_guest_memory_on_a_disk_filesystem_is_refused_and_closed(sw, baseline, disk_fd):
    path = sw.socket("mem")
    before = sw.port("mem")
    attacks = [
        message(SET_MEM_TABLE, mem_table((0, MiB, UADDR, 0))),
        message(ADD_MEM_REG, one_region(0, MiB)),
        message(SET_LOG_BASE, struct.pack("=QQ", 4096, 0)),
    ]
    t0 = time.monotonic()
    for i in range(N):
        assert attempt(path, attacks[i % len(attacks)], [disk_fd]), \
            f"a memory fd on {DISK_DIR} was taken (attack {i % len(attacks)}, connection {i})"
    print(f"{N} connections with guest memory on {DISK_DIR}: {time.monotonic() - t0:.1f} s")
    port = wait_until(lambda: (p := sw.port("mem"))["protocol_errors"] == before["protocol_errors"] + N
                      and p["state"] == "listening" and p, what=f"{N} refusals")
    assert "allow_file_memory" in port["last_error"], port["last_error"]
    assert_back_to_baseline(sw, *baseline)
    # memory-backend-memfd and memory-backend-file on /dev/shm work as ever
    assert_port_forwards(sw, "mem")
    with GuestMemory(32 * MiB, directory="/dev/shm") as shm:
        assert_port_forwards(sw, "mem", mem=shm)


def test_a_port_that_allows_file_memory_takes_a_guest_on_disk(sw, baseline, disk_fd):
    with GuestMemory(32 * MiB, directory=DISK_DIR) as disk:
        assert_port_forwards(sw, "files", mem=disk)
    assert_back_to_baseline(sw, *baseline)


# --- how much guest memory is mapped -------------------------------------------------------------

def sparse_memfd(size: int) -> int:
    fd = os.memfd_create("sparse-guest")
    os.ftruncate(fd, size)
    return fd


def negotiated(port_path: str) -> VhostUserFrontend:
    fe = VhostUserFrontend(port_path)
    fe.get_features()
    fe.set_protocol_features(bits(PF.REPLY_ACK, PF.CONFIGURE_MEM_SLOTS, PF.LOG_SHMFD))
    return fe


def test_memory_beyond_the_port_cap_is_refused_before_it_is_mapped(sw, baseline):
    big, huge = sparse_memfd(2 * GiB), sparse_memfd(16 * TiB)
    try:
        attacks = [
            (message(SET_MEM_TABLE, mem_table((0, 2 * GiB, UADDR, 0))), [big]),
            # eight regions of a quarter of a GiB: twice the cap together
            (message(SET_MEM_TABLE, mem_table(*[(i * GiB, GiB // 4, UADDR + i * GiB, i * GiB // 4)
                                                for i in range(8)])), [big] * 8),
            # the address space: six regions of 16 TiB, all of one sparse file
            (message(SET_MEM_TABLE, mem_table(*[(i * 16 * TiB, 16 * TiB, UADDR, 0) for i in range(6)])),
             [huge] * 6),
            (message(SET_LOG_BASE, struct.pack("=QQ", 2 * GiB, 0)), [big]),
        ]
        path = sw.socket("hog")
        before = sw.port("hog")
        t0 = time.monotonic()
        for i in range(N):
            data, fds = attacks[i % len(attacks)]
            assert attempt(path, data, fds), f"memory over the cap was taken (attack {i % len(attacks)})"
        print(f"{N} connections with memory over the cap: {time.monotonic() - t0:.1f} s")
        port = wait_until(lambda: (p := sw.port("hog"))["protocol_errors"] == before["protocol_errors"] + N
                          and p["state"] == "listening" and p, what=f"{N} refusals")
        assert "guest_memory_per_port" in port["last_error"], port["last_error"]
    finally:
        os.close(big)
        os.close(huge)
    assert_back_to_baseline(sw, *baseline)
    assert_port_forwards(sw, "hog")


def test_a_guest_at_its_cap_cannot_starve_the_others(sw, baseline):
    """One guest maps all it may; another's memory is refused once the
    daemon-wide cap would be passed, with the reason in the log; the guests
    already there keep forwarding, and new ones within the cap connect."""
    big = sparse_memfd(2 * GiB)
    hog = hog2 = None
    try:
        hog = negotiated(sw.socket("hog"))
        assert hog.set_mem_table([VhostMemRegion(0, PER_PORT, UADDR, 0, big)], need_reply=True) == 0
        hog2 = negotiated(sw.socket("hog2"))
        over_total = [VhostMemRegion(0, GiB, UADDR, 0, big)]         # 1 + 1 GiB > 1.5 GiB
        assert hog2.set_mem_table(over_total, need_reply=True) != 0
        assert hog2.add_mem_reg(over_total[0], need_reply=True) != 0
        assert hog2.connected()
        assert mapped(sw, "hog") == PER_PORT and mapped(sw, "hog2") == 0
        assert "guest_memory_total" in sw.port("hog2")["last_error"]
        # what still fits under both caps is mapped, added region by region
        quarter = GiB // 4
        assert hog2.add_mem_reg(VhostMemRegion(0, quarter, UADDR, 0, big), need_reply=True) == 0
        assert hog2.add_mem_reg(VhostMemRegion(GiB, 64 * MiB, UADDR + GiB, quarter, big),
                                need_reply=True) == 0
        assert mapped(sw, "hog2") == quarter + 64 * MiB
        log = sw.log_path.read_text(errors="replace")
        assert "port hog2: refused SET_MEM_TABLE" in log and "guest_memory_total" in log
        assert_port_forwards(sw, "one")
    finally:
        for fe in (hog, hog2):
            if fe is not None:
                fe.close()
        os.close(big)
    for name in ("hog", "hog2"):
        sw.wait_port(name, lambda p: p["state"] == "listening", timeout=30, what="closed")
    assert_back_to_baseline(sw, *baseline)


def test_a_dirty_log_at_an_offset_is_written_there_and_nowhere_else(sw, baseline):
    """Only the log's own pages are mapped: the bitmap starts at its offset
    within the first of them (here not even page aligned)."""
    offset, size = PAGE + 0x10, (32 * MiB // PAGE + 7) // 8
    fd = os.memfd_create("dirty-log")
    os.ftruncate(fd, 3 * PAGE)
    os.pwrite(fd, b"\xaa" * 3 * PAGE, 0)
    os.pwrite(fd, bytes(size), offset)
    guest, peer = connect(sw, "one"), connect(sw, "two")
    try:
        fe = peer.frontend
        assert fe.set_log_base(fd, size, offset).u64() == 0
        fe.set_features(peer.features | 1 << LOG_ALL, need_reply=True)
        for ring in peer.rings:
            fe.set_vring_addr_of(ring, flags=1, log=ring.used_gpa, need_reply=True)
        assert sw.port("two")["dirty_log"]["active"]
        assert mapped(sw, "two") == 32 * MiB + PAGE
        exchange(guest, peer, MAC["one"], MAC["two"])
        data = os.pread(fd, 3 * PAGE, 0)
        assert any(data[offset:offset + size]), "no page marked"
        assert data[:offset] == b"\xaa" * offset and data[offset + size:] == b"\xaa" * (3 * PAGE - offset - size)
    finally:
        guest.close()
        peer.close()
        os.close(fd)
    for name in ("one", "two"):
        sw.wait_port(name, lambda p: p["state"] == "listening", timeout=30, what="closed")
    assert_back_to_baseline(sw, *baseline)


def smaps_of(pid: int, name: str) -> list[tuple[int, int, str]]:
    """(start, end, VmFlags) of the mappings of files called `name`."""
    found, current = [], None
    for line in open(f"/proc/{pid}/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            current = (start, end) if len(fields) >= 6 and name in line else None
        elif fields[0] == "VmFlags:" and current is not None:
            found.append((*current, " ".join(fields[1:])))
            current = None
    return found


def test_only_the_region_is_mapped_and_never_into_a_core_dump(sw, baseline):
    """A region at an offset deep in its file maps that region's pages, not
    the file from its start; every guest mapping, log included, is left out
    of core dumps (the default coredump_filter includes shared memfd maps)."""
    fd = os.memfd_create("deep-region")
    os.ftruncate(fd, GiB + 4 * MiB)
    fe = None
    try:
        fe = negotiated(sw.socket("hog"))
        vm = vm_size(sw)
        # an offset that is not even page aligned
        region = VhostMemRegion(0, MiB, UADDR, GiB + 0x1234, fd)
        assert fe.set_mem_table([region], need_reply=True) == 0
        assert vm_size(sw) - vm < 16 * MiB
        assert mapped(sw, "hog") == MiB + 4096           # the pages the region touches
        log_fd = os.memfd_create("dirty-log")
        os.ftruncate(log_fd, 2 * MiB)
        assert fe.set_log_base(log_fd, 4096, MiB).u64() == 0
        os.close(log_fd)
        maps = smaps_of(sw.proc.pid, "memfd:deep-region") + smaps_of(sw.proc.pid, "memfd:dirty-log")
        assert len(maps) == 2 and all(" dd" in f" {flags}" for _, _, flags in maps), maps
        assert sorted(end - start for start, end, _ in maps) == [4096, MiB + 4096]
    finally:
        if fe is not None:
            fe.close()
        os.close(fd)
    sw.wait_port("hog", lambda p: p["state"] == "listening", timeout=30, what="closed")
    assert_back_to_baseline(sw, *baseline)


# --- messages that never complete ------------------------------------------------------------------

def _stall_memfd() -> int:
    fd = os.memfd_create("stall")
    os.ftruncate(fd, MiB)
    return fd


TABLE = mem_table((0, MiB, UADDR, 0))
STALLS = {
    "nothing": b"",
    "part of a header": header(SET_MEM_TABLE, len(TABLE))[:5],
    "a header without its payload": header(SET_MEM_TABLE, len(TABLE)),
    "a header and part of its payload": header(SET_MEM_TABLE, len(TABLE)) + TABLE[:20],
    "half a message after a complete one": message(GET_FEATURES) + header(SET_FEATURES, 8) + b"\0" * 3,
}


def read_until_closed(s: socket.socket, limit: float) -> float:
    """Seconds until the switch closes s (replies are read and dropped)."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still connected after {limit} s") from None
    return time.monotonic() - t0


@pytest.mark.parametrize("stall", STALLS)
def test_a_message_that_never_completes_ends_its_connection(sw, baseline, stall):
    before = sw.port("slow")
    memfd = _stall_memfd()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(sw.socket("slow"))
            data = STALLS[stall]
            if data:
                # the fd travels with the first byte of the incomplete message
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [memfd]).tobytes())]
                s.sendmsg([data], anc if "header" in stall else [])
            # the port is held meanwhile: a second front-end is turned away
            assert attempt(sw.socket("slow"), b"", [])
            elapsed = read_until_closed(s, TIMEOUT + 5)
    finally:
        os.close(memfd)
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 2, elapsed
    port = wait_until(lambda: (p := sw.port("slow"))["message_timeouts"] == before["message_timeouts"] + 1
                      and p["state"] == "listening" and p, what="the timeout counted")
    assert port["disconnects"] == before["disconnects"] + 1
    assert port["protocol_errors"] == before["protocol_errors"]
    assert "incomplete" in port["last_error"], port["last_error"]
    assert_back_to_baseline(sw, *baseline)
    assert_port_forwards(sw, "slow")


def test_a_message_trickling_in_byte_by_byte_ends_its_connection(sw, baseline):
    """The bound is on the whole message, not on the gaps between its bytes."""
    before = sw.port("slow")
    data = header(SET_MEM_TABLE, len(TABLE)) + TABLE
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sw.socket("slow"))
        t0 = time.monotonic()
        closed = False
        for i in range(len(data)):
            try:
                s.send(data[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(TIMEOUT / 10)
        elapsed = time.monotonic() - t0
        if not closed:
            elapsed += read_until_closed(s, 5)
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 2, elapsed
    port = wait_until(lambda: (p := sw.port("slow"))["message_timeouts"] == before["message_timeouts"] + 1
                      and p, what="the timeout counted")
    assert "bytes of a header received" in port["last_error"], port["last_error"]
    # what an operator sees
    shown = subprocess.run([str(VENV_BIN / "vswitchctl"), "--runtime-dir", str(sw.runtime_dir),
                            "port", "show", "slow"], capture_output=True, text=True, check=True).stdout
    assert f"message timeouts {port['message_timeouts']}" in shown, shown
    assert_back_to_baseline(sw, *baseline)


@pytest.mark.slow
def test_a_guest_idle_between_messages_keeps_its_connection(sw, baseline):
    """QEMU started with -S or -incoming says nothing for as long as it
    likes between two messages: that is never a timeout."""
    before = sw.port("idle")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sw.socket("idle"))
        s.settimeout(5)
        for _ in range(2):
            s.sendall(message(GET_FEATURES))
            assert len(s.recv(64)) == 20                     # the reply: header + u64
            time.sleep(3 * TIMEOUT)
    dev = connect(sw, "idle")
    peer = connect(sw, "two")
    try:
        time.sleep(4 * TIMEOUT)
        assert dev.frontend.connected()
        mine = b"\x02\x00\x00\x00\x0d\x0a"
        exchange(dev, peer, mine, MAC["two"])
        exchange(peer, dev, MAC["two"], mine)
        dev.frontend.get_features()
    finally:
        dev.close()
        peer.close()
    port = sw.wait_port("idle", lambda p: p["state"] == "listening", timeout=30, what="closed")
    assert port["message_timeouts"] == before["message_timeouts"]
    assert port["disconnects"] == before["disconnects"] + 2
    assert_back_to_baseline(sw, *baseline)
