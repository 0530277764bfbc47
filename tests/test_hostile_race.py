"""A guest that rewrites its frames while the switch reads them.

A hostile guest controls every byte of its memory at every moment: a value
the switch reads twice can differ between the reads, because a second vCPU
rewrites it. Here that second vCPU is tests/harness/racer.c, a C process
that maps the attacker's guest memory and, as fast as the CPU allows, flips
in each of its TX buffers

* the source MAC between the one port security allows (A) and a spoofed
  one (B), and
* the EtherType between the frame's own (0x88b5) and 0x8100, the next two
  bytes being 00 14: read at the wrong moment, the frame carries an 802.1Q
  tag of VLAN 20.

The attacker (allowed_macs [A], access VLAN 10) sends 100 000 broadcast
frames from a fixed set of buffers the racer hammers the whole time. Every
frame the switch lets in must reach every receiver exactly as port security
and VLAN classification judged it - source A, EtherType 0x88b5, in VLAN 10:

* `acc`   access VLAN 10 (vhost-user): untagged;
* `trk`   trunk [10, 20] (vhost-user): tagged VID 10, one tag, inner 0x88b5;
* `acc20` access VLAN 20 (vhost-user): nothing at all;
* `up`    TAP without VLAN config (carries every VLAN, VLAN 10 leaves tagged
          10): read by an AF_PACKET socket on the interface (the kernel moves
          the tag into the packet's metadata);
* `vx`    VXLAN, trunk [20] with native VLAN 10 (VLAN 10 leaves untagged):
          its remote is a UDP socket of this test on 127.0.0.2.

The race must happen (frames dropped as spoofed_source and as vlan_filtered
because the racer had flipped before the switch looked, and frames
delivered), and the totals add up per receiver: frames received + the
receiver's own drops = frames the switch let in = frames sent - ingress drops.
Before "Every decision about a guest's frame is made on the bytes that are
delivered" the delivery paths read the header again from guest memory and
this test saw spoofed sources and VLAN 20 tags reach every receiver.

Runs a daemon: use the shared lock, flock /tmp/vswitch-heavy.lock.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.harness.frontend import VhostUserFrontend
from tests.harness.linux.netns import NetNs, link_exists, wait_for
from tests.harness.racer import Racer, flip
from tests.harness.switch import Vswitchd
from tests.harness.traffic import FULL

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                       reason="needs root (TAP, network namespace) and /dev/net/tun"),
]

FRAMES = 100_000
NBUF = 128                   # the attacker's TX buffers, all of them raced the whole time
RXN = 1024                   # RX buffers per receiver: > 2 * NBUF, no receiver runs dry
SIZES = [64, 128, 300, 1000]  # <= 256 bytes are staged by TAP writes, larger ones gathered

A = bytes.fromhex("02000000000a")           # the attacker's own (and only allowed) MAC
B = bytes.fromhex("02bbbbbbbbbb")           # the spoofed one
BCAST = b"\xff" * 6
OWN_TYPE = b"\x88\xb5"
TPID = b"\x81\x00"
FOREIGN_TCI = b"\x00\x14"                   # bytes 14..15: VID 20 when 12..13 read 0x8100
VLAN, FOREIGN_VLAN = 10, 20
VNI = 4242
PATTERNS = {size: [bytes((s * 7 + k) & 0xFF for k in range(size - 20)) for s in range(251)]
            for size in SIZES}

CLONE_NEWNET = 0x40000000
SOL_PACKET, PACKET_AUXDATA, PACKET_STATISTICS = 263, 8, 6
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
SO_RXQ_OVFL = 40
SO_RCVBUFFORCE = 33
AUX = struct.Struct("IIIHHHH")    # tpacket_auxdata


def expected(seq: int, size: int) -> bytes:
    """Frame `seq` as it left the attacker's buffer when the racer had it at A and 0x88b5."""
    return BCAST + A + OWN_TYPE + FOREIGN_TCI + struct.pack("!I", seq) + PATTERNS[size][seq % 251]


def tagged(frame: bytes, vid: int) -> bytes:
    return frame[:12] + TPID + struct.pack("!H", vid) + frame[12:]


# --- receivers ----------------------------------------------------------------------------

@dataclass
class Tally:
    """What one receiver got: frames, and every way a frame was not what it must be."""

    name: str
    frames: int = 0
    seen: bytearray = field(default_factory=lambda: bytearray(FRAMES))
    foreign_source: int = 0          # source MAC other than A
    wrong_tag: int = 0               # a tag where there must be none, another VID, two tags
    wrong_type: int = 0              # EtherType (after the tag) other than 0x88b5
    corrupt: int = 0                 # anything else differs from the frame sent
    duplicate: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self) -> int:
        return self.foreign_source + self.wrong_tag + self.wrong_type + self.corrupt + self.duplicate

    def check(self, got: bytes, want_vid: int | None) -> None:
        """`got` as the receiver sees it (a TAP's tag already put back in)."""
        self.frames += 1
        if got[6:12] != A:
            self.foreign_source += 1
            self._example("source", got)
            return
        inner = got
        if want_vid is not None:
            if got[12:16] != TPID + struct.pack("!H", want_vid):
                self.wrong_tag += 1
                self._example("tag", got)
                return
            inner = got[:12] + got[16:]
        if inner[12:14] != OWN_TYPE:
            if inner[12:14] == TPID:
                self.wrong_tag += 1
                self._example("tag", got)
            else:
                self.wrong_type += 1
                self._example("type", got)
            return
        if len(inner) not in PATTERNS or len(inner) < 20:
            self.corrupt += 1
            self._example("length", got)
            return
        seq = struct.unpack_from("!I", inner, 16)[0]
        if seq >= FRAMES or inner != expected(seq, len(inner)):
            self.corrupt += 1
            self._example("bytes", got)
            return
        if self.seen[seq]:
            self.duplicate += 1
            return
        self.seen[seq] = 1

    def _example(self, what: str, got: bytes) -> None:
        if len(self.examples) < 3:
            self.examples.append(f"{what}: {got[:24].hex()}")

    def summary(self) -> str:
        return (f"{self.name}: {self.frames} frames, {self.foreign_source} with a foreign source, "
                f"{self.wrong_tag} with a wrong/extra 802.1Q tag, {self.wrong_type} with another EtherType, "
                f"{self.corrupt} corrupt, {self.duplicate} duplicates {self.examples}")


class FixedRing:
    """A split ring whose descriptors each own one buffer for good: chained once
    with add_chain, then re-posted by head as the switch hands them back (no
    allocation per frame). Reads and writes guest memory through the memfd's
    mapping, for speed. `offer`: make the chains available at once (RX);
    else (TX) the caller fills the buffers and offers them with repost."""

    def __init__(self, ring, lengths: list[int], writable: bool, offer: bool) -> None:
        self.ring = ring
        mem = ring.mem
        region = mem.regions[0]
        self.mm = region.backing.mm
        self.fd = region.fd
        self.shift = region.mmap_offset - region.gpa      # file offset = gpa + shift
        self.used_off = ring.used_gpa + self.shift
        self.avail_ring_off = ring.avail_gpa + 4 + self.shift
        self.mask = ring.num - 1
        self.buf: dict[int, int] = {}                     # head -> file offset of its buffer
        self.length: dict[int, int] = {}                  # head -> its descriptor's length
        for n in lengths:
            gpa = mem.alloc(2048, 64)
            head = ring.add_chain([(gpa, n, writable)], publish=False, kick=False)
            self.buf[head] = gpa + self.shift
            self.length[head] = n
        if offer:
            ring.publish()
        else:
            ring.avail_idx = (ring.avail_idx - len(lengths)) & 0xFFFF   # written, not published: taken back

    def used(self) -> list[tuple[int, int]]:
        """(head, len) of every entry the switch put in the used ring since the last call."""
        r = self.ring
        idx = r.used_idx()
        n = (idx - r.last_used) & 0xFFFF
        out = []
        for k in range(n):
            out.append(struct.unpack_from("<II", self.mm, self.used_off + 4 + 8 * ((r.last_used + k) & self.mask)))
        r.last_used = idx
        return out

    def repost(self, heads: list[int], kick: bool) -> None:
        r = self.ring
        for h in heads:
            struct.pack_into("<H", self.mm, self.avail_ring_off + 2 * (r.avail_idx & self.mask), h)
            r.avail_idx = (r.avail_idx + 1) & 0xFFFF
        r.publish(kick=kick)


class VhostReceiver:
    def __init__(self, sw: Vswitchd, name: str, want_vid: int | None) -> None:
        self.name = name
        self.dev = VhostUserFrontend(sw.socket(name)).setup_net_device(1, RXN, FULL)
        self.rx = FixedRing(self.dev.rx(0), [2048] * RXN, writable=True, offer=True)
        self.hdr_len = self.dev.rx(0).hdr_len
        self.want_vid = want_vid
        self.tally = Tally(name)

    def drain(self) -> int:
        got = self.rx.used()
        if not got:
            return 0
        mm, buf, hl = self.rx.mm, self.rx.buf, self.hdr_len
        for head, length in got:
            off = buf[head]
            if struct.unpack_from("<H", mm, off + 10)[0] != 1:     # num_buffers: frames fit in one
                self.tally.frames += 1
                self.tally.corrupt += 1
                self.tally._example("num_buffers", mm[off:off + 12])
                continue
            self.tally.check(mm[off + hl:off + length], self.want_vid)
        self.rx.repost([h for h, _ in got], kick=False)
        return len(got)

    def close(self) -> None:
        self.dev.close()


def socket_in_netns(netns: str, *args) -> socket.socket:
    """A socket created in network namespace `netns` (by a short-lived thread
    that enters it: only that thread changes namespace)."""
    out: dict = {}

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out["sock"] = socket.socket(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["error"] = e
        finally:
            os.close(fd)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["sock"]


class TapReceiver:
    """What the kernel received on the TAP: an AF_PACKET socket (ETH_P_ALL) bound
    to it, with PACKET_AUXDATA for the tag the kernel took into metadata."""

    def __init__(self, netns: str, ifname: str, want_vid: int | None) -> None:
        self.sock = socket_in_netns(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.bind((ifname, 0))
        self.sock.setblocking(False)
        self.want_vid = want_vid
        self.tally = Tally("up (TAP)")
        self.outgoing = 0
        self.stats()            # reading PACKET_STATISTICS resets it: start from zero

    def drain(self) -> int:
        n = 0
        while True:
            try:
                data, anc, _, addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(AUX.size))
            except BlockingIOError:
                return n
            if addr[2] == socket.PACKET_OUTGOING:
                self.outgoing += 1       # the kernel sent something into the switch: it must not
                continue
            n += 1
            frame = data
            for level, kind, aux in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, _, _, _, _, tci, tpid = AUX.unpack(aux[:AUX.size])
                    if status & TP_STATUS_VLAN_VALID:
                        if not status & TP_STATUS_VLAN_TPID_VALID:
                            tpid = 0x8100
                        frame = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
            self.tally.check(frame, self.want_vid)

    def stats(self) -> tuple[int, int]:
        """(packets, drops) since the last call (PACKET_STATISTICS)."""
        return struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))

    def close(self) -> None:
        self.sock.close()


class VxlanReceiver:
    """The VXLAN port's remote: a UDP socket; the inner frame follows the 8-byte header."""

    def __init__(self, sock: socket.socket, want_vid: int | None) -> None:
        self.sock = sock
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        self.sock.setblocking(False)
        self.want_vid = want_vid
        self.tally = Tally("vx (VXLAN)")
        self.bad_header = 0
        self.overflow = 0           # datagrams the kernel dropped on this socket (SO_RXQ_OVFL)

    def drain(self) -> int:
        n = 0
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(4))
            except BlockingIOError:
                return n
            n += 1
            for level, kind, val in anc:
                if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
                    self.overflow = struct.unpack("I", val[:4])[0]
            if data[:8] != bytes([0x08, 0, 0, 0]) + VNI.to_bytes(3, "big") + b"\0":
                self.bad_header += 1
                continue
            self.tally.check(data[8:], self.want_vid)

    def close(self) -> None:
        self.sock.close()


def free_udp_port() -> socket.socket:
    """A UDP socket on 127.0.0.2:P such that 127.0.0.1:P is free as well (both ends use P)."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(("127.0.0.1", port))
            return s
        except OSError:
            s.close()
        finally:
            probe.close()
    raise RuntimeError("no free UDP port pair on 127.0.0.1/127.0.0.2")


# --- the test ------------------------------------------------------------------------------

def ingress(sw: Vswitchd, port: str) -> tuple[int, dict[str, int]]:
    """Frames the switch took from `port`'s TX ring, and its drops from there."""
    q = sw.port(port)["queues"][0]["tx"]
    return q["packets"], dict(q["drops"])


def egress(sw: Vswitchd, port: str) -> tuple[int, dict[str, int]]:
    """Frames the switch delivered to `port`, and the drops counted there."""
    q = sw.port(port)["queues"][0]["rx"]
    return q["packets"], dict(q["drops"])


@pytest.fixture
def race_rig(tmp_path):
    pid = os.getpid()
    ifname = f"vsr{pid % 100000}"
    ns = NetNs(f"vsr{pid}").create()
    udp = free_udp_port()
    ports = {
        "att": {"type": "vhost-user", "mac": A.hex(":"), "allowed_macs": [A.hex(":")],
                "vlan": {"mode": "access", "id": VLAN}},
        "acc": {"type": "vhost-user", "vlan": {"mode": "access", "id": VLAN}},
        "trk": {"type": "vhost-user", "vlan": {"mode": "trunk", "allowed": [VLAN, FOREIGN_VLAN]}},
        "acc20": {"type": "vhost-user", "vlan": {"mode": "access", "id": FOREIGN_VLAN}},
        "up": {"type": "tap", "ifname": ifname, "queues": 1},
        "vx": {"type": "vxlan", "local": "127.0.0.1", "remotes": ["127.0.0.2"], "vni": VNI,
               "udp_port": udp.getsockname()[1],
               "vlan": {"mode": "trunk", "allowed": [FOREIGN_VLAN], "native": VLAN}},
    }
    sw = Vswitchd(tmp_path / "switch", ports, workers=1)
    closers = [udp.close]
    try:
        sw.start()
        assert wait_for(lambda: link_exists(ifname), 30), "TAP not created"
        # the kernel must not send anything of its own into the switch (IPv6 DAD, RS...)
        ns.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1"], check=False)
        ns.move_in(ifname)
        ns.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{ifname}.disable_ipv6=1"], check=False)
        ns.ip("link", "set", ifname, "arp", "off", "multicast", "off")
        ns.ip("link", "set", ifname, "up")
        sw.wait_port("vx", lambda p: p["state"] == "up", timeout=30, what="VXLAN socket bound")
        tap = TapReceiver(ns.name, ifname, want_vid=VLAN)      # VLAN-unaware port: VLAN 10 tagged
        closers.append(tap.close)
        vx = VxlanReceiver(udp, want_vid=None)                   # native VLAN 10: untagged
        receivers = {"tap": tap, "vx": vx}
        for name, vid in (("acc", None), ("trk", VLAN), ("acc20", None)):
            receivers[name] = VhostReceiver(sw, name, want_vid=vid)
            closers.append(receivers[name].close)
        att = VhostUserFrontend(sw.socket("att")).setup_net_device(1, 256, FULL)
        closers.append(att.close)
        yield sw, att, receivers
    finally:
        for close in reversed(closers):
            try:
                close()
            except OSError:
                pass
        sw.stop()
        ns.delete()


def test_a_racing_writer_never_gets_a_spoofed_source_or_a_foreign_tag_out(race_rig):
    sw, att, rx = race_rig
    vhost = [rx["acc"], rx["trk"], rx["acc20"]]
    receivers = [*vhost, rx["tap"], rx["vx"]]
    tx = FixedRing(att.tx(0), [12 + SIZES[i % len(SIZES)] for i in range(NBUF)], writable=False, offer=False)
    size_of = {head: n - 12 for head, n in tx.length.items()}
    for head, off in tx.buf.items():
        size = size_of[head]
        # virtio-net header, then the frame; bytes 0..16 stay, the racer flips 6..14
        tx.mm[off:off + 12 + 16] = bytes(12) + expected(0, size)[:16]
    specs = []
    for off in tx.buf.values():
        specs.append(flip(off + 12 + 6, A, B, bit=0))              # source MAC
        specs.append(flip(off + 12 + 12, OWN_TYPE, TPID, bit=1))    # EtherType: tagged VID 20 or not
    heads = sorted(tx.buf)

    sent = 0

    def load(head: int) -> None:
        nonlocal sent
        off, size = tx.buf[head] + 12, size_of[head]
        tx.mm[off + 16:off + size] = expected(sent, size)[16:]
        sent += 1

    t0 = time.monotonic()
    with Racer(tx.fd, specs, limit_s=120) as racer:
        for h in heads:
            load(h)
        tx.repost(heads, kick=True)
        deadline = time.monotonic() + 80
        idle = 0
        while True:
            progress = 0
            back = tx.used()
            progress += len(back)
            if back:
                again = [h for h, _ in back[:max(0, FRAMES - sent)]]
                for h in again:
                    load(h)
                if again:
                    tx.repost(again, kick=True)
            for r in receivers:
                progress += r.drain()
            if sent >= FRAMES and tx.ring.last_used == tx.ring.avail_idx:
                break
            if progress:
                idle = 0
            else:
                idle += 1
                if idle > 3:
                    time.sleep(0.0002)
                    if sent < FRAMES:
                        tx.ring.kick()           # never rely on a lost notification
            assert time.monotonic() < deadline, f"stuck: sent {sent}, back {tx.ring.last_used}"
        flips = racer.stop()
    elapsed = time.monotonic() - t0

    # everything the switch let in has been delivered: wait until the receivers have it all
    taken, in_drops = ingress(sw, "att")
    let_in = taken - sum(in_drops.values())
    out = {name: egress(sw, name) for name in ("acc", "trk", "acc20", "up", "vx")}

    def received_all() -> bool:
        for r in receivers:
            r.drain()
        return all(r.tally.frames >= out[n][0] for n, r in
                   (("acc", rx["acc"]), ("trk", rx["trk"]), ("up", rx["tap"]), ("vx", rx["vx"])))
    wait_for(received_all, timeout=10)
    time.sleep(0.2)
    for r in receivers:
        r.drain()
    tap_packets, tap_sock_drops = rx["tap"].stats()

    report = "\n".join([f"sent {sent} in {elapsed:.1f}s, racer {flips} rounds; switch took {taken}, "
                        f"ingress drops {in_drops}, let in {let_in}; egress {out}",
                        *(r.tally.summary() for r in receivers),
                        f"tap socket: {tap_packets} packets {tap_sock_drops} drops, outgoing {rx['tap'].outgoing}; "
                        f"vxlan socket overflow {rx['vx'].overflow}, bad headers {rx['vx'].bad_header}"])
    print("\n" + report)

    # 1. nothing but A, untagged 0x88b5 in VLAN 10, reached anyone
    leaks = {r.tally.name: r.tally.bad() for r in receivers}
    assert sum(leaks.values()) == 0, f"frames the switch must never deliver: {leaks}\n{report}"
    assert rx["acc20"].tally.frames == 0 and out["acc20"][0] == 0, report
    assert rx["vx"].bad_header == 0 and rx["tap"].outgoing == 0, report
    learned = {(e["mac"], e["vlan"], e["port"]) for e in sw.ctl("fdb show")}
    assert not any(mac == B.hex(":") for mac, _, _ in learned), learned
    assert not any(vlan == FOREIGN_VLAN for _, vlan, _ in learned), learned

    # 2. the race happened: the racer was caught at both flips before the copy, and not always
    assert taken == sent == FRAMES, report
    assert in_drops.get("spoofed_source", 0) > 0, report
    assert in_drops.get("vlan_filtered", 0) > 0, report
    assert set(in_drops) <= {"spoofed_source", "vlan_filtered"}, report
    assert let_in > 0, report

    # 3. the totals add up, per receiver: received + the receiver's drops = let in
    for name, r in (("acc", rx["acc"]), ("trk", rx["trk"]), ("up", rx["tap"]), ("vx", rx["vx"])):
        delivered, drops = out[name]
        assert delivered + sum(drops.values()) == let_in, (name, report)
        if name in ("acc", "trk"):
            assert r.tally.frames == delivered, (name, report)
        elif name == "up":
            assert r.tally.frames + tap_sock_drops == delivered, (name, report)
        else:
            assert r.tally.frames + r.overflow == delivered, (name, report)
        assert r.tally.frames > 0, (name, report)
    assert sw.alive()
