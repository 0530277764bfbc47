"""TCP/IP frames built with struct, for the offload tests: TCP or UDP over
IPv4 or IPv6, optionally 802.1Q/802.1ad tagged, the L4 checksum left as a
guest's stack leaves it for CHECKSUM_PARTIAL (`partial`), and an RFC 1071
reference to check a finished checksum with (`l4_ok`). Used by the unit tests
of the software offload and by the daemon tests that send such frames.
"""

from __future__ import annotations

import struct

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80
TCP, UDP = 6, 17

SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd0000000000000000000000000000fe")
MACS = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")


# --- reference checksum ------------------------------------------------------

def ref_sum(data: bytes, start: int = 0) -> int:
    """One's complement sum of big-endian 16-bit words, folded, not inverted."""
    if len(data) % 2:
        data = data + b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ref_csum(data: bytes, start: int = 0) -> int:
    """The checksum to store: inverted folded sum."""
    return ~ref_sum(data, start) & 0xFFFF


def pseudo(v6: bool, src: bytes, dst: bytes, proto: int, l4len: int) -> bytes:
    if v6:
        return src + dst + struct.pack("!I3xB", l4len, proto)
    return src + dst + struct.pack("!xBH", proto, l4len)


# --- frame builders ----------------------------------------------------------

def eth(ethertype: int, vlan: int | None = None, tpid: int = 0x8100) -> bytes:
    if vlan is None:
        return MACS + struct.pack("!H", ethertype)
    return MACS + struct.pack("!HHH", tpid, vlan, ethertype)


def ipv4(payload_len: int, proto: int = TCP, ident: int = 0x1234, frag: int = 0x4000,
         options: bytes = b"", ttl: int = 64, tot_len: int | None = None,
         ihl: int | None = None) -> bytes:
    assert len(options) % 4 == 0
    if ihl is None:
        ihl = 5 + len(options) // 4
    if tot_len is None:
        tot_len = ihl * 4 + payload_len
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot_len, ident, frag, ttl, proto, 0,
                    SRC4, DST4) + options
    return h[:10] + struct.pack("!H", ref_csum(h)) + h[12:]


def ipv6(payload_len: int, nxt: int = TCP, plen: int | None = None) -> bytes:
    if plen is None:
        plen = payload_len
    return struct.pack("!IHBB16s16s", 0x60012345, plen, nxt, 64, SRC6, DST6)


def tcp(seq: int = 1000, ack: int = 2000, flags: int = ACK, options: bytes = b"",
        check: int = 0, doff: int | None = None, urg: int = 0) -> bytes:
    assert len(options) % 4 == 0
    if doff is None:
        doff = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", 40000, 5201, seq, ack, doff << 4, flags, 65535,
                       check, urg) + options


def udp(payload_len: int, check: int = 0) -> bytes:
    return struct.pack("!HHHH", 40000, 5201, 8 + payload_len, check)


def tcp_frame(payload: bytes, v6: bool = False, vlan: int | None = None, **kw) -> bytes:
    ipopts = kw.pop("ipopts", b"")
    ident = kw.pop("ident", 0x1234)
    th = tcp(**kw)
    if v6:
        return eth(0x86DD, vlan) + ipv6(len(th) + len(payload)) + th + payload
    return eth(0x0800, vlan) + ipv4(len(th) + len(payload), ident=ident, options=ipopts) \
        + th + payload


def partial(frame: bytes, l3: int, l4: int, v6: bool, proto: int, field: int) -> bytes:
    """Store the pseudo-header seed (not inverted) in the L4 checksum field, as
    a guest's stack does for CHECKSUM_PARTIAL."""
    src, dst = (frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40]) if v6 else \
        (frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20])
    seed = ref_sum(pseudo(v6, src, dst, proto, len(frame) - l4))
    off = l4 + field
    return frame[:off] + struct.pack("!H", seed) + frame[off + 2:]


def l4_ok(frame: bytes, l3: int, l4: int, v6: bool, proto: int, end: int | None = None) -> bool:
    end = len(frame) if end is None else end
    src, dst = (frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40]) if v6 else \
        (frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20])
    return ref_sum(pseudo(v6, src, dst, proto, end - l4) + frame[l4:end]) == 0xFFFF
