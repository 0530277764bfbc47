"""TAP uplink control plane (vswitch/ports/tapdev.py) against the real kernel.

Needs root and /dev/net/tun. Every interface and namespace is named
vst<pid><letter> and removed at the end of its test, pass or fail.
The kernel behaviours documented in vswitch/ports/tapdev.py (EIO while down, EBADFD
and POLLERR once deleted, fds surviving a move to another namespace) are
asserted here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from tests.harness.linux.netns import NetNs, delete_link, link_exists, move_link, wait_for
from vswitch.ports import tapdev as tap
from vswitch.ports.tapdev import (TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, VNET_HDR_LEN,
                         TapError, open_tap_queues, tap_exists, tap_fd_ifname, tap_gone,
                         tap_ifindex, tap_link_state, validate_ifname)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
        reason="needs root and /dev/net/tun"),
]

ETH_TEST = 0x88B5                       # IEEE local experimental ethertype
ETH_P_ALL = 0x0003
PEER_MAC = bytes.fromhex("020000000002")
VNET_HDR = struct.Struct("<BBHHHHH")    # flags gso_type hdr_len gso_size csum_start csum_offset num_buffers
F_NEEDS_CSUM = 1
ZERO_HDR = bytes(VNET_HDR_LEN)


# --- fixtures -----------------------------------------------------------------

class Env:
    """Unique names, and cleanup of every fd, link and namespace a test made."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.links: list[str] = []
        self.namespaces: list[NetNs] = []
        self.fds: list[int] = []

    def name(self, letter: str) -> str:
        n = f"vst{self.pid}{letter}"
        assert validate_ifname(n) is None
        delete_link(n)                  # a leftover from a crashed run
        self.links.append(n)
        return n

    def netns(self, letter: str) -> NetNs:
        ns = NetNs(f"vst{self.pid}{letter}")
        self.namespaces.append(ns)
        return ns.create()

    def own(self, fds: list[int]) -> list[int]:
        self.fds.extend(fds)
        return fds

    def close(self, fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
            self.fds.remove(fd)

    def cleanup(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        for ns in self.namespaces:
            ns.delete()
        for n in self.links:
            delete_link(n)
        for n in self.links:
            assert wait_for(lambda: not link_exists(n), 5), f"{n} still exists"


@pytest.fixture
def env():
    e = Env()
    try:
        yield e
    finally:
        e.cleanup()


# --- helpers ------------------------------------------------------------------

def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def tryop(fn):
    """fn()'s result, or the errno name it failed with."""
    try:
        return fn()
    except OSError as e:
        return errno.errorcode[e.errno]


def poll_events(fd: int, timeout_ms: int = 0) -> int:
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLOUT)
    ev = p.poll(timeout_ms)
    return ev[0][1] if ev else 0


def drain(fds: list[int]) -> None:
    for fd in fds:
        while True:
            try:
                os.read(fd, 65536 + VNET_HDR_LEN)
            except BlockingIOError:
                break


def read_queues(fds: list[int], match, timeout: float = 5.0) -> tuple[int, bytes]:
    """First (queue, frame-with-vnet-header) on any queue for which match(frame)
    holds; other frames (IPv6 autoconf noise, ...) are skipped."""
    deadline = time.monotonic() + timeout
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        for fd, _ in p.poll(int(left * 1000) + 1):
            while True:
                try:
                    data = os.read(fd, 65536 + VNET_HDR_LEN)
                except BlockingIOError:
                    break
                if match(data):
                    return fds.index(fd), data
    raise AssertionError("expected frame never arrived on any queue")


def packet_socket(ifname: str, proto: int = ETH_P_ALL) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    s.bind((ifname, 0))
    s.settimeout(5.0)
    return s


def recv_matching(s: socket.socket, match, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = s.recv(65536)
        if match(data):
            return data
    raise AssertionError("expected frame never arrived on the AF_PACKET socket")


def csum(data: bytes, start: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ipv4_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes,
             partial: bool = False) -> bytes:
    """IPv4/UDP packet; partial=True leaves the UDP checksum as the folded
    pseudo-header sum, to be finished by whoever honours NEEDS_CSUM."""
    ulen = 8 + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 1, 0x4000, 64, 17, 0, src, dst))
    struct.pack_into("!H", ip, 10, ~csum(bytes(ip)) & 0xFFFF)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
    udp = bytearray(struct.pack("!HHHH", sport, dport, ulen, 0) + payload)
    if partial:
        struct.pack_into("!H", udp, 6, csum(pseudo))
    else:
        struct.pack_into("!H", udp, 6, (~csum(pseudo + bytes(udp)) & 0xFFFF) or 0xFFFF)
    return bytes(ip) + bytes(udp)


# --- names --------------------------------------------------------------------

def test_validate_ifname():
    assert validate_ifname("eth0") is None
    assert validate_ifname("a" * 15) is None
    assert validate_ifname("tap-uplink_1.2") is None
    for bad, word in [("", "empty"), ("a" * 16, "16 bytes"), ("a/b", "'/'"), ("a b", "' '"),
                      ("a\tb", "'\\t'"), (".", "not allowed"), ("..", "not allowed"),
                      ("a:1", "':'"), ("tap%d", "'%'")]:
        problem = validate_ifname(bad)
        assert problem is not None and word in problem, (bad, problem)
    assert "bytes" in validate_ifname("é" * 8)        # 16 bytes in UTF-8


def test_16_byte_name_refused(env):
    name = "vst" + "x" * 13
    assert len(name) == 16
    with pytest.raises(TapError) as ei:
        open_tap_queues(name, 1)
    assert ei.value.errno == errno.EINVAL
    assert name in str(ei.value) and "16 bytes" in str(ei.value) and "15" in str(ei.value)
    assert ei.value.ifname == name and ei.value.operation == "open"
    assert isinstance(ei.value, OSError)


@pytest.mark.parametrize("queues", [0, tap.MAX_TAP_QUEUES + 1, -1])
def test_bad_queue_count_refused(env, queues):
    name = env.name("q")
    with pytest.raises(TapError, match="queues"):
        open_tap_queues(name, queues)
    assert not link_exists(name)


# --- create -------------------------------------------------------------------

def test_create_two_queues(env):
    name = env.name("a")
    assert not tap_exists(name) and tap_ifindex(name) is None
    assert tap_link_state(name)["exists"] is False
    fds = env.own(open_tap_queues(name, 2, mtu=1400))
    assert len(fds) == 2 and len(set(fds)) == 2

    sysfs = f"/sys/class/net/{name}"
    assert int(open(f"{sysfs}/flags").read(), 16) & 0x1          # IFF_UP
    assert int(open(f"{sysfs}/mtu").read()) == 1400
    tun_flags = int(open(f"{sysfs}/tun_flags").read(), 16)
    assert tun_flags == tap.IFF_TAP | tap.IFF_NO_PI | tap.IFF_VNET_HDR | tap.IFF_MULTI_QUEUE
    assert not tun_flags & tap.IFF_PERSIST
    detail = subprocess.run(["ip", "-d", "link", "show", name], capture_output=True, text=True).stdout
    assert "numqueues 2" in detail and "vnet_hdr on" in detail and "persist off" in detail

    st = tap_link_state(name)
    assert st["exists"] and st["up"] and st["mtu"] == 1400
    assert st["ifindex"] == int(open(f"{sysfs}/ifindex").read()) == tap_ifindex(name)
    assert st["carrier"] is True and st["tun_flags"] == tun_flags
    assert tap_exists(name)
    assert not tap_gone(name, st["ifindex"]) and tap_gone(name, st["ifindex"] + 1000)

    for fd in fds:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert struct.unpack("i", fcntl.ioctl(fd, tap.TUNGETVNETHDRSZ, b"\0" * 4))[0] == 12
        assert tap_fd_ifname(fd) == name

    # The kernel may send us checksum-partial and TSO frames.
    k = subprocess.run(["ethtool", "-k", name], capture_output=True, text=True)
    if k.returncode == 0:
        feats = dict(line.strip().split(": ", 1) for line in k.stdout.splitlines()[1:] if ": " in line)
        for f in ("tx-checksumming", "tx-tcp-segmentation", "tx-tcp6-segmentation",
                  "tx-tcp-ecn-segmentation"):
            assert feats[f].startswith("on"), (f, feats[f])

    # Non-persistent: gone with the last fd.
    env.close(fds[:1])
    assert link_exists(name)
    env.close(fds[1:])
    assert wait_for(lambda: not link_exists(name), 5)
    assert tap_gone(name, st["ifindex"]) and not tap_exists(name)


def test_offloads_zero_leaves_features_off(env):
    name = env.name("o")
    env.own(open_tap_queues(name, 1, offloads=0))
    k = subprocess.run(["ethtool", "-k", name], capture_output=True, text=True)
    if k.returncode:
        pytest.skip("no ethtool")
    feats = dict(line.strip().split(": ", 1) for line in k.stdout.splitlines()[1:] if ": " in line)
    assert feats["tx-checksumming"].startswith("off")
    assert feats["tx-tcp-segmentation"].startswith("off")


def test_failure_closes_everything(env):
    name = env.name("f")
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(TapError) as ei:
        open_tap_queues(name, 3, mtu=10)                 # below the minimum (68)
    assert ei.value.errno == errno.EINVAL
    assert "MTU 10" in str(ei.value) and name in str(ei.value)
    assert set(os.listdir("/proc/self/fd")) == before
    assert wait_for(lambda: not link_exists(name), 5)   # it was created, then closed


def test_create_refuses_someone_elses_tap(env):
    """A non-persistent TAP exists only while someone holds it: never join it."""
    name = env.name("b")
    fds = env.own(open_tap_queues(name, 2))
    with pytest.raises(TapError) as ei:
        open_tap_queues(name, 1)
    assert ei.value.errno == errno.EBUSY and "not persistent" in str(ei.value)
    detail = subprocess.run(["ip", "-d", "link", "show", name], capture_output=True, text=True).stdout
    assert "numqueues 2" in detail
    assert tap_fd_ifname(fds[0]) == name


def test_existing_non_tap_refused():
    with pytest.raises(TapError) as ei:
        open_tap_queues("lo", 1)
    assert "'lo'" in str(ei.value) and "not a TUN/TAP" in str(ei.value)
    assert ei.value.errno == errno.EEXIST
    assert not tap_exists("lo") and tap_ifindex("lo") == 1


# --- frames both ways -----------------------------------------------------------

def test_frames_both_ways(env):
    name = env.name("c")
    fds = env.own(open_tap_queues(name, 2))
    src = bytes.fromhex("02aabbccdd01")

    # Ours -> kernel: a 12-byte zero header, then the frame, on each queue.
    with packet_socket(name) as s:
        for q, fd in enumerate(fds):
            payload = b"to kernel via queue %d " % q + os.urandom(40)
            frame = eth(b"\xff" * 6, src, ETH_TEST, payload)
            assert os.write(fd, ZERO_HDR + frame) == VNET_HDR_LEN + len(frame)
            got = recv_matching(s, lambda d: payload in d)
            assert got == frame

    # Kernel -> ours: AF_PACKET send on the interface; read with its header.
    with packet_socket(name, ETH_TEST) as s:
        for i in range(4):
            payload = b"from kernel %d " % i + os.urandom(40)
            frame = eth(PEER_MAC, src, ETH_TEST, payload)
            s.send(frame)
            q, data = read_queues(fds, lambda d: payload in d)
            assert data[:VNET_HDR_LEN] == ZERO_HDR
            assert data[VNET_HDR_LEN:] == frame

    # Too short for the header: refused.
    assert tryop(lambda: os.write(fds[0], bytes(VNET_HDR_LEN - 1))) == "EINVAL"


def test_link_down_gives_eio(env):
    """Down: write fails with EIO, read finds nothing, poll reports no POLLOUT;
    bringing it up wakes a writer polling for POLLOUT."""
    name = env.name("d")
    fds = env.own(open_tap_queues(name, 1))
    fd = fds[0]
    frame = ZERO_HDR + eth(b"\xff" * 6, PEER_MAC, ETH_TEST, bytes(50))
    assert poll_events(fd) & select.POLLOUT
    subprocess.run(["ip", "link", "set", name, "down"], check=True)
    drain(fds)
    assert tryop(lambda: os.write(fd, frame)) == "EIO"
    assert tryop(lambda: os.read(fd, 2048)) == "EAGAIN"
    assert poll_events(fd) == 0
    assert not tap_link_state(name)["up"] and tap_link_state(name)["carrier"] is False
    assert not tap_gone(name, tap_ifindex(name)) and tap_fd_ifname(fd) == name

    woke: list[int] = []
    t = threading.Thread(target=lambda: woke.append(poll_events(fd, 5000)))
    t.start()
    time.sleep(0.1)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    t.join(6)
    assert woke and woke[0] & select.POLLOUT
    assert os.write(fd, frame) == len(frame)


# --- attach -------------------------------------------------------------------

def tuntap_add(name: str, *opts: str) -> None:
    subprocess.run(["ip", "tuntap", "add", "dev", name, *opts], check=True, capture_output=True)


def test_attach_persistent(env):
    name = env.name("p")
    tuntap_add(name, "mode", "tap", "multi_queue", "vnet_hdr")
    idx = tap_ifindex(name)
    assert tap_exists(name) and not tap_link_state(name)["up"]
    fds = env.own(open_tap_queues(name, 2, create=False, mtu=9000))
    st = tap_link_state(name)
    assert st["up"] and st["mtu"] == 9000 and st["ifindex"] == idx
    assert st["tun_flags"] & tap.IFF_PERSIST
    # it works
    with packet_socket(name, ETH_TEST) as s:
        payload = os.urandom(64)
        frame = eth(PEER_MAC, bytes.fromhex("02aabbccdd02"), ETH_TEST, payload)
        s.send(frame)
        _, data = read_queues(fds, lambda d: payload in d)
        assert data == ZERO_HDR + frame
    # closing our fds leaves the persistent device in place
    env.close(fds)
    time.sleep(0.1)
    assert link_exists(name) and tap_ifindex(name) == idx
    # ... and create=True on an existing persistent device attaches as well
    fds = env.own(open_tap_queues(name, 1, create=True))
    assert tap_ifindex(name) == idx


def test_tuntap_del_while_attached_only_unpersists(env):
    name = env.name("u")
    tuntap_add(name, "mode", "tap", "multi_queue", "vnet_hdr")
    fds = env.own(open_tap_queues(name, 2, create=False))
    subprocess.run(["ip", "tuntap", "del", "dev", name, "mode", "tap", "multi_queue"],
                   check=True, capture_output=True)
    st = tap_link_state(name)
    assert st["exists"] and not st["tun_flags"] & tap.IFF_PERSIST
    assert all(tap_fd_ifname(fd) == name for fd in fds)
    env.close(fds)
    assert wait_for(lambda: not link_exists(name), 5)


def test_attach_missing_fails(env):
    name = env.name("m")
    with pytest.raises(TapError) as ei:
        open_tap_queues(name, 2, create=False)
    assert ei.value.errno == errno.ENODEV
    msg = str(ei.value)
    assert name in msg and "attach" in msg and "no such device" in msg
    assert not link_exists(name)                        # and nothing was created


@pytest.mark.parametrize("opts, words", [
    (("mode", "tap", "vnet_hdr"), "multi_queue"),
    (("mode", "tap", "multi_queue"), "vnet_hdr"),
    (("mode", "tap"), "multi_queue and vnet_hdr"),
    (("mode", "tun", "multi_queue", "vnet_hdr"), "TUN"),
])
def test_attach_wrong_kind_fails(env, opts, words):
    name = env.name("w")
    tuntap_add(name, *opts)
    flags_before = open(f"/sys/class/net/{name}/tun_flags").read()
    with pytest.raises(TapError) as ei:
        open_tap_queues(name, 1, create=False)
    msg = str(ei.value)
    assert name in msg, msg
    assert ("is a TUN (layer 3)" if words == "TUN" else f"not created with {words} (") in msg, msg
    assert open(f"/sys/class/net/{name}/tun_flags").read() == flags_before
    assert not tap_link_state(name)["up"]


# --- device deleted under us ----------------------------------------------------

def test_delete_while_open(env):
    """`ip link del` succeeds at once; our fds stay open but dead: EBADFD on
    read, write and ioctls, POLLERR only; tap_gone() and tap_fd_ifname() say so."""
    name = env.name("x")
    fds = env.own(open_tap_queues(name, 2))
    idx = tap_ifindex(name)
    ready = threading.Event()
    woke: list[int] = []

    def waiter():                           # a reader idling on queue 1
        p = select.poll()
        p.register(fds[1], select.POLLIN)
        ready.set()
        deadline = time.monotonic() + 5
        while (left := deadline - time.monotonic()) > 0:
            ev = p.poll(int(left * 1000) + 1)
            if ev and not ev[0][1] & select.POLLERR:
                drain(fds[1:])              # IPv6 autoconf noise
                continue
            woke.append(ev[0][1] if ev else 0)
            return

    t = threading.Thread(target=waiter)
    t.start()
    ready.wait(5)
    time.sleep(0.1)
    subprocess.run(["ip", "link", "del", "dev", name], check=True)
    t.join(6)
    assert woke and woke[0] & select.POLLERR

    assert tap_gone(name, idx) and not tap_exists(name)
    frame = ZERO_HDR + eth(b"\xff" * 6, PEER_MAC, ETH_TEST, bytes(50))
    for fd in fds:
        assert tryop(lambda: os.read(fd, 2048)) == "EBADFD"
        assert tryop(lambda: os.write(fd, frame)) == "EBADFD"
        assert tryop(lambda: fcntl.ioctl(fd, tap.TUNGETIFF, b"\0" * 40)) == "EBADFD"
        assert poll_events(fd) == select.POLLERR
        assert tap_fd_ifname(fd) is None

    # A new device of the same name is another device.
    fds2 = env.own(open_tap_queues(name, 1))
    assert tap_ifindex(name) is not None
    assert tap_gone(name, idx) == (tap_ifindex(name) != idx)
    assert tap_fd_ifname(fds[0]) is None and tap_fd_ifname(fds2[0]) == name


# --- namespaces -----------------------------------------------------------------

NS_IP, PEER_IP = "10.213.7.1", "10.213.7.2"
UDP_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(5)
print("ready", flush=True)
for _ in range(int(sys.argv[3])):
    data, addr = s.recvfrom(2048)
    print(data.hex(), addr[0], addr[1], flush=True)
"""
TCP_CONNECT = r"""
import socket, sys
s = socket.socket()
s.settimeout(1)
s.connect_ex((sys.argv[1], int(sys.argv[2])))
"""


def configure_in_ns(ns: NetNs, name: str) -> None:
    ns.ip("addr", "add", f"{NS_IP}/24", "dev", name)
    ns.ip("link", "set", name, "up")
    ns.ip("neigh", "replace", PEER_IP, "lladdr", PEER_MAC.hex(":"), "dev", name, "nud", "permanent")
    ns.run(f"echo 1 > /proc/sys/net/ipv6/conf/{name}/disable_ipv6", check=False)


@pytest.mark.parametrize("offloads", [TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN, 0],
                         ids=["offloads", "no-offloads"])
def test_moved_into_netns_keeps_working(env, offloads):
    name = env.name("n")
    fds = env.own(open_tap_queues(name, 2, offloads=offloads))
    mac = bytes.fromhex(open(f"/sys/class/net/{name}/address").read().strip().replace(":", ""))
    idx = tap_ifindex(name)
    ns = env.netns("s")
    move_link(name, ns.name)

    # Gone from our namespace, but the fds follow the device.
    assert tap_gone(name, idx) and not tap_exists(name) and not tap_link_state(name)["exists"]
    assert all(tap_fd_ifname(fd) == name for fd in fds)
    # It arrives down in the namespace: EIO until brought up there.
    frame = ZERO_HDR + eth(b"\xff" * 6, PEER_MAC, ETH_TEST, bytes(50))
    assert tryop(lambda: os.write(fds[0], frame)) == "EIO"
    configure_in_ns(ns, name)
    drain(fds)

    # Kernel (in the namespace) -> us: a TCP SYN to the "peer".
    ns.run([sys.executable, "-c", TCP_CONNECT, PEER_IP, "7777"])

    def is_syn(d: bytes) -> bool:
        f = d[VNET_HDR_LEN:]
        return (f[12:14] == b"\x08\x00" and f[23] == 6 and f[30:34] == socket.inet_aton(PEER_IP)
                and f[36:38] == struct.pack("!H", 7777))

    _, data = read_queues(fds, is_syn)
    flags, gso_type, _, _, cstart, coff, _ = VNET_HDR.unpack(data[:VNET_HDR_LEN])
    f = data[VNET_HDR_LEN:]
    assert f[:6] == PEER_MAC and f[6:12] == mac
    assert gso_type == 0
    tcp = f[34:]
    pseudo = f[26:34] + struct.pack("!BBH", 0, 6, len(tcp))
    if offloads & TUN_F_CSUM:
        # checksum left to us: the field holds the pseudo-header sum only
        assert flags == F_NEEDS_CSUM and cstart == 34 and coff == 16
        assert struct.unpack("!H", tcp[16:18])[0] == csum(pseudo)
    else:
        assert flags == 0
        assert csum(pseudo + tcp) == 0xFFFF            # complete, valid checksum

    # Us -> kernel in the namespace: UDP datagrams, checksum complete and
    # checksum-partial (NEEDS_CSUM), on queue 1 then queue 0.
    server = ns.popen([sys.executable, "-c", UDP_SERVER, NS_IP, "7778", "2"],
                      stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        src, dst = socket.inet_aton(PEER_IP), socket.inet_aton(NS_IP)
        full = ipv4_udp(src, dst, 5555, 7778, b"complete checksum")
        part = ipv4_udp(src, dst, 5556, 7778, b"partial checksum", partial=True)
        os.write(fds[1], ZERO_HDR + eth(mac, PEER_MAC, 0x0800, full))
        hdr = VNET_HDR.pack(F_NEEDS_CSUM, 0, 0, 0, 34, 6, 0)
        os.write(fds[0], hdr + eth(mac, PEER_MAC, 0x0800, part))
        out, _ = server.communicate(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    lines = out.split("\n")[:2]
    assert lines == [f"{b'complete checksum'.hex()} {PEER_IP} 5555",
                     f"{b'partial checksum'.hex()} {PEER_IP} 5556"], out

    # Deleting the namespace destroys the TAP inside it: the fds die.
    ns.delete()
    assert wait_for(lambda: tap_fd_ifname(fds[0]) is None, 10)
    assert tryop(lambda: os.read(fds[1], 2048)) == "EBADFD"
    assert not link_exists(name)


# --- the datapath's io_uring holds TAP files: they must be let go -----------------

@pytest.mark.parametrize("tap_io", ["io_uring", "write"])
def test_datapath_lets_go_of_a_removed_tap(env, tap_io):
    """With io_uring, each TAP queue fd is also registered in every worker's
    ring (registered files: no fd lookup per frame), and a registered file
    keeps the device alive after close(). Removing the port must empty those
    slots: a TAP the switch created disappears with its port, and its slots
    serve the next port."""
    from vswitch._datapath import Datapath

    dp = Datapath(workers=2, mode="event", tap_io=tap_io)
    name = env.name("f")
    p = dp.port_add(2, "tap")
    dp.tap_attach(p, open_tap_queues(name, 2, create=True), 1500)   # the datapath owns the fds
    slots = dp.tap_fixed_files(p)
    if tap_io == "io_uring" and all(w["tap_io"] == "io_uring" for w in dp.worker_stats()):
        assert len(set(slots)) == 2 and min(slots) >= 0
    else:
        assert slots == [-1, -1]
    dp.port_remove(p)
    assert wait_for(lambda: not link_exists(name), 5), "the removed TAP is still held open"
    name2 = env.name("g")
    q = dp.port_add(2, "tap")
    dp.tap_attach(q, open_tap_queues(name2, 2, create=True), 1500)
    assert sorted(dp.tap_fixed_files(q)) == sorted(slots)     # the freed slots, reused
    dp.port_remove(q)
    assert wait_for(lambda: not link_exists(name2), 5)
