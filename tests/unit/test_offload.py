"""Software offload fallback (cython_ext/offload.pxi): finishing a NEEDS_CSUM
checksum and cutting a TCP GSO super-frame into MSS-sized frames (virtio spec,
"Network Device", "Device Operation"; docs/architecture.md, "Offloads between
guests").

Frames are built here with struct and checked against a Python RFC 1071
reference. The C code is reached through the `_offload_*` test hooks of
vswitch._datapath, which copy the frame into a buffer of exactly its length.
"""

from __future__ import annotations

import os
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness.packets import (
    ACK, CWR, ECE, FIN, PSH, TCP, UDP, URG,
    eth, ipv4, ipv6, l4_ok, partial, pseudo, ref_csum, ref_sum, tcp, tcp_frame, udp,
)

dp = pytest.importorskip("vswitch._datapath")
dp.enable_test_hooks()                # the _offload_* hooks (testing.pxi)

GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 1, 3, 4, 5, 0x80


# --- csum_add / csum_fold ----------------------------------------------------

@given(data=st.binary(max_size=300), start=st.integers(0, 0xFFFFFFFF),
       skew=st.integers(0, 7))
def test_csum_add_matches_reference(data, start, skew):
    # `skew` moves the data off 8-byte alignment.
    buf = bytes(skew) + data
    got = dp._offload_csum_add(memoryview(buf)[skew:], start)
    assert got == ref_sum(data, start)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 31, 32, 33, 63, 64, 65, 1499, 65535, 65536])
def test_csum_add_lengths(n):
    data = os.urandom(n)
    assert dp._offload_csum_add(data) == ref_sum(data)
    ones = b"\xff" * n                      # carries at every step
    assert dp._offload_csum_add(ones) == ref_sum(ones)


def test_csum_add_speed(capsys):
    data = os.urandom(65536)
    reps = 2000
    t = time.perf_counter()
    dp._offload_csum_add(data, 0, reps)
    dt = time.perf_counter() - t
    with capsys.disabled():
        print(f"\ncsum_add: {len(data) * reps / dt / 1e9:.1f} GB/s on a 64 KiB buffer")
    assert dp._offload_csum_add(data, 0, reps) == ref_sum(data)


# --- finish_csum -------------------------------------------------------------

def csum_case(payload: bytes, v6: bool, proto: int, vlan: int | None):
    l4hdr = tcp(flags=PSH | ACK) if proto == TCP else udp(len(payload))
    field = 16 if proto == TCP else 6
    l3 = 18 if vlan is not None else 14
    if v6:
        frame = eth(0x86DD, vlan) + ipv6(len(l4hdr) + len(payload), nxt=proto) + l4hdr + payload
        l4 = l3 + 40
    else:
        frame = eth(0x0800, vlan) + ipv4(len(l4hdr) + len(payload), proto=proto) + l4hdr + payload
        l4 = l3 + 20
    return partial(frame, l3, l4, v6, proto, field), l3, l4, field


@given(payload=st.binary(max_size=3000), v6=st.booleans(), proto=st.sampled_from([TCP, UDP]),
       vlan=st.sampled_from([None, 100]))
def test_finish_csum_matches_reference(payload, v6, proto, vlan):
    frame, l3, l4, field = csum_case(payload, v6, proto, vlan)
    out = dp._offload_finish_csum(frame, l4, field)
    assert out is not None and len(out) == len(frame)
    assert out[:l4 + field] == frame[:l4 + field]
    assert out[l4 + field + 2:] == frame[l4 + field + 2:]
    (c,) = struct.unpack_from("!H", out, l4 + field)
    zeroed = out[:l4 + field] + b"\0\0" + out[l4 + field + 2:]
    src, dst = (zeroed[l3 + 8:l3 + 24], zeroed[l3 + 24:l3 + 40]) if v6 else \
        (zeroed[l3 + 12:l3 + 16], zeroed[l3 + 16:l3 + 20])
    expect = ref_csum(pseudo(v6, src, dst, proto, len(frame) - l4) + zeroed[l4:])
    assert c == (expect or 0xFFFF)
    assert l4_ok(out, l3, l4, v6, proto)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1460, 1461])
def test_finish_csum_payload_lengths(n):
    for v6 in (False, True):
        for proto in (TCP, UDP):
            frame, l3, l4, field = csum_case(os.urandom(n), v6, proto, None)
            out = dp._offload_finish_csum(frame, l4, field)
            assert l4_ok(out, l3, l4, v6, proto)


def test_finish_csum_zero_result_is_ffff():
    # Search for a UDP payload whose checksum comes out 0: then 0xFFFF is stored.
    frame, l3, l4, field = csum_case(b"\0\0", False, UDP, None)
    target = ref_sum(frame[l4:])                     # sum with a zero last word
    last = 0xFFFF - target                           # makes the folded sum 0xFFFF
    frame = frame[:-2] + struct.pack("!H", last)
    assert ref_sum(frame[l4:]) == 0xFFFF
    out = dp._offload_finish_csum(frame, l4, field)
    assert struct.unpack_from("!H", out, l4 + field) == (0xFFFF,)
    assert l4_ok(out, l3, l4, False, UDP)


@given(frame=st.binary(max_size=200), start=st.integers(0, 300), off=st.integers(0, 300))
def test_finish_csum_generic(frame, start, off):
    out = dp._offload_finish_csum(frame, start, off)
    if start >= len(frame) or start + off + 2 > len(frame):
        assert out is None
        return
    assert out is not None and len(out) == len(frame)
    expect = ref_csum(frame[start:]) or 0xFFFF
    assert struct.unpack_from("!H", out, start + off) == (expect,)
    assert out[:start + off] == frame[:start + off] and out[start + off + 2:] == frame[start + off + 2:]


@pytest.mark.parametrize("n,start,off", [
    (0, 0, 0), (1, 0, 0), (2, 2, 0), (20, 19, 0), (20, 10, 9), (20, 0, 19),
    (20, 18, 0), (20, 0xFFFF, 16), (20, 4, 0xFFFFF),
])
def test_finish_csum_bad(n, start, off):
    ok = start < n and start + off + 2 <= n
    assert (dp._offload_finish_csum(bytes(n), start, off) is not None) == ok


# --- TSO ---------------------------------------------------------------------

def check_segments(frame: bytes, segs: list[bytes], gso_size: int, v6: bool, l3: int,
                   payload: bytes, flags: int, ident: int = 0x1234, seq: int = 1000):
    ipl = 40 if v6 else (frame[l3] & 0xF) * 4
    l4 = l3 + ipl
    doff = (frame[l4 + 12] >> 4) * 4
    hdr = l4 + doff
    n = max(1, -(-len(payload) // gso_size))
    assert len(segs) == n
    got = b""
    for i, s in enumerate(segs):
        seg_payload = s[hdr:]
        want_len = min(gso_size, len(payload) - i * gso_size)
        assert len(seg_payload) == want_len
        got += seg_payload
        assert s[:l3] == frame[:l3]                                  # L2 untouched
        if v6:
            assert struct.unpack_from("!H", s, l3 + 4)[0] == doff + want_len
            assert s[l3:l3 + 4] == frame[l3:l3 + 4] and s[l3 + 6:l4] == frame[l3 + 6:l4]
        else:
            tot, sid = struct.unpack_from("!HH", s, l3 + 2)
            assert tot == len(s) - l3
            assert sid == (ident + i) & 0xFFFF
            assert ref_sum(s[l3:l4]) == 0xFFFF                       # IP header csum
            assert s[l3 + 6:l3 + 10] == frame[l3 + 6:l3 + 10]
            assert s[l3 + 12:l4] == frame[l3 + 12:l4]                # addrs + options
        sq, ak = struct.unpack_from("!II", s, l4 + 4)
        assert sq == (seq + i * gso_size) & 0xFFFFFFFF
        assert ak == struct.unpack_from("!I", frame, l4 + 8)[0]
        f = s[l4 + 13]
        want = flags
        if i:
            want &= ~CWR
        if i != n - 1:
            want &= ~(FIN | PSH)
        assert f == want
        assert s[l4:l4 + 4] == frame[l4:l4 + 4]
        assert s[l4 + 12] == frame[l4 + 12] and s[l4 + 14:l4 + 16] == frame[l4 + 14:l4 + 16]
        assert s[l4 + 18:hdr] == frame[l4 + 18:hdr]                  # urg ptr + options
        assert l4_ok(s, l3, l4, v6, TCP)
    assert got == payload


tcp_flags = st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, ACK | CWR,
                             ACK | CWR | ECE | PSH | FIN, ACK | URG])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plen=st.integers(0, 20000), mss=st.integers(64, 9000), v6=st.booleans(),
       vlan=st.sampled_from([None, 7]), flags=tcp_flags, seq=st.integers(0, 0xFFFFFFFF),
       ident=st.integers(0, 0xFFFF), ipopts=st.sampled_from([b"", b"\x01\x01\x01\x00"]),
       tcpopts=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]),
       ecn=st.booleans(), check=st.integers(0, 0xFFFF))
def test_tso_segments(plen, mss, v6, vlan, flags, seq, ident, ipopts, tcpopts, ecn, check):
    payload = os.urandom(plen)
    kw = dict(seq=seq, flags=flags, options=tcpopts, check=check)
    if not v6:
        kw.update(ident=ident, ipopts=ipopts)
    frame = tcp_frame(payload, v6, vlan, **kw)
    gso_type = (GSO_TCPV6 if v6 else GSO_TCPV4) | (GSO_ECN if ecn else 0)
    plan = dp._offload_tso_plan(frame, gso_type, mss)
    l3 = 18 if vlan is not None else 14
    assert plan["l3_off"] == l3 and plan["is_v6"] == v6 and plan["ecn"] == ecn
    assert plan["payload_len"] == plen and plan["payload_off"] == len(frame) - plen
    segs = dp._offload_tso(frame, gso_type, mss)
    check_segments(frame, segs, mss, v6, l3, payload, flags, ident, seq)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("plen,mss", [(0, 1448), (1, 1448), (1448, 1448), (1449, 1448),
                                      (2896, 1448), (65000, 1448), (10, 1), (9, 2),
                                      (1000, 65535), (64000, 9000)])
def test_tso_edges(v6, plen, mss):
    payload = os.urandom(plen)
    flags = ACK | PSH | FIN | CWR
    frame = tcp_frame(payload, v6, flags=flags)
    segs = dp._offload_tso(frame, GSO_TCPV6 if v6 else GSO_TCPV4, mss)
    check_segments(frame, segs, mss, v6, 14, payload, flags)


def test_tso_wraps_seq_and_id():
    payload = os.urandom(5000)
    frame = tcp_frame(payload, seq=0xFFFFFF00, ident=0xFFFE, flags=ACK)
    segs = dp._offload_tso(frame, GSO_TCPV4, 1000)
    check_segments(frame, segs, 1000, False, 14, payload, ACK, 0xFFFE, 0xFFFFFF00)
    assert struct.unpack_from("!H", segs[2], 18)[0] == 0


def test_tso_drops_link_padding():
    payload = os.urandom(3000)
    frame = tcp_frame(payload) + b"\xAA" * 7          # bytes beyond IP total length
    segs = dp._offload_tso(frame, GSO_TCPV4, 1448)
    check_segments(frame[:-7], segs, 1448, False, 14, payload, ACK)


def test_tso_zero_ip_length_means_frame_length():
    payload = os.urandom(3000)
    f4 = tcp_frame(payload)
    f4 = f4[:16] + b"\0\0" + f4[18:]                   # IPv4 tot_len 0 (BIG TCP style)
    segs = dp._offload_tso(f4, GSO_TCPV4, 1448)
    assert b"".join(s[54:] for s in segs) == payload
    assert all(ref_sum(s[14:34]) == 0xFFFF and l4_ok(s, 14, 34, False, TCP) for s in segs)
    f6 = tcp_frame(payload, v6=True)
    f6 = f6[:18] + b"\0\0" + f6[20:]
    segs = dp._offload_tso(f6, GSO_TCPV6, 1448)
    assert b"".join(s[74:] for s in segs) == payload
    assert all(l4_ok(s, 14, 54, True, TCP) for s in segs)


def test_tso_8021ad_tag():
    payload = os.urandom(4000)
    th = tcp(flags=ACK)
    frame = eth(0x0800, 5, tpid=0x88A8) + ipv4(len(th) + len(payload)) + th + payload
    segs = dp._offload_tso(frame, GSO_TCPV4, 1000)
    check_segments(frame, segs, 1000, False, 18, payload, ACK)


def test_tso_segment_too_big_for_ip_length():
    # 64 KiB of payload behind a zero IP length: one 65535-byte MSS segment would
    # need an IP length field > 65535.
    payload = bytes(65535)
    th = tcp()
    f4 = eth(0x0800) + ipv4(0, tot_len=0) + th + payload
    f6 = eth(0x86DD) + ipv6(0, plen=0) + th + payload
    for frame, gso in ((f4, GSO_TCPV4), (f6, GSO_TCPV6)):
        assert dp._offload_tso(frame, gso, 65535) is None
        segs = dp._offload_tso(frame, gso, 65535 - 40)
        assert segs is not None and len(segs) == 2
        assert b"".join(s[len(frame) - len(payload):] for s in segs) == payload


# --- hostile input -----------------------------------------------------------

def test_tso_truncated_headers():
    for v6, vlan in [(False, None), (True, None), (False, 3), (True, 3)]:
        frame = tcp_frame(b"x" * 100, v6, vlan, options=b"\x01" * 12)
        gso = GSO_TCPV6 if v6 else GSO_TCPV4
        assert dp._offload_tso(frame, gso, 50) is not None
        for n in range(len(frame)):
            assert dp._offload_tso(frame[:n], gso, 50) is None, n


def mutate(frame: bytes, off: int, val: bytes) -> bytes:
    return frame[:off] + val + frame[off + len(val):]


def test_tso_bad_headers():
    p = b"y" * 3000
    f4, f6 = tcp_frame(p), tcp_frame(p, True)
    good4, good6 = dp._offload_tso(f4, GSO_TCPV4, 1000), dp._offload_tso(f6, GSO_TCPV6, 1000)
    assert good4 and good6
    bad4 = [
        mutate(f4, 14, b"\x44"),                       # IHL 4
        mutate(f4, 14, b"\x40"),                       # IHL 0
        mutate(f4, 14, b"\x55"),                       # IP version 5
        mutate(f4, 14, b"\x65"),                       # version 6 in an IPv4 ethertype
        mutate(f4, 16, struct.pack("!H", 19)),         # tot_len < IHL
        mutate(f4, 16, struct.pack("!H", 39)),         # tot_len cuts the TCP header
        mutate(f4, 16, struct.pack("!H", len(f4) - 13)),   # tot_len beyond the buffer
        mutate(f4, 16, b"\xff\xff"),
        mutate(f4, 20, b"\x20\x00"),                   # MF
        mutate(f4, 20, b"\x00\x01"),                   # fragment offset
        mutate(f4, 23, bytes([UDP])),                  # not TCP
        mutate(f4, 46, b"\x40"),                       # TCP data offset 4
        mutate(f4, 46, b"\x00"),                       # data offset 0
        mutate(f4, 12, b"\x08\x06"),                   # ARP
        mutate(f4, 12, b"\x81\x00"),                   # tag with garbage behind it
        eth(0x8100, 1, tpid=0x88A8)[:-2] + b"\x81\x00\x00\x02\x08\x00" + f4[14:],  # QinQ
    ]
    for i, f in enumerate(bad4):
        assert dp._offload_tso(f, GSO_TCPV4, 1000) is None, i
    # IHL 15 (60-byte IP header) in a 40-byte IP packet
    assert dp._offload_tso(mutate(tcp_frame(b""), 14, b"\x4f"), GSO_TCPV4, 1000) is None
    # ... and in a 40-byte frame with no IP length
    assert dp._offload_tso(mutate(tcp_frame(b""), 14, b"\x4f\x00\x00\x00"), GSO_TCPV4, 1) is None
    bad6 = [
        mutate(f6, 14, b"\x40"),                       # version 4 in an IPv6 ethertype
        mutate(f6, 20, bytes([0])),                    # hop-by-hop extension header
        mutate(f6, 20, bytes([44])),                   # fragment header
        mutate(f6, 20, bytes([UDP])),
        mutate(f6, 18, struct.pack("!H", 19)),         # payload length cuts TCP header
        mutate(f6, 18, struct.pack("!H", len(f6) - 53)),   # payload length beyond buffer
        mutate(f6, 66, b"\x30"),                       # data offset 3
        mutate(tcp_frame(b"", True), 66, b"\xf0"),     # 60-byte TCP header in 20 bytes
    ]
    for i, f in enumerate(bad6):
        assert dp._offload_tso(f, GSO_TCPV6, 1000) is None, i
    # gso_type / gso_size
    for gso_type in (0, GSO_UDP, GSO_UDP_L4, GSO_TCPV6, 2, 0x7F, 0xFF, GSO_ECN):
        assert dp._offload_tso(f4, gso_type, 1000) is None, gso_type
    for gso_type in (GSO_TCPV4, GSO_TCPV4 | GSO_ECN, GSO_UDP, 0):
        assert dp._offload_tso(f6, gso_type, 1000) is None, gso_type
    for gso_size in (0, 65536, 1 << 20):
        assert dp._offload_tso(f4, GSO_TCPV4, gso_size) is None
        assert dp._offload_tso(f6, GSO_TCPV6, gso_size) is None


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200), gso_type=st.integers(0, 255), mss=st.integers(0, 70000))
def test_tso_random_bytes(data, gso_type, mss):
    segs = dp._offload_tso(data, gso_type, mss)
    assert segs is None or (0 < len(segs) <= max(1, len(data)))


@settings(max_examples=500, deadline=None)
@given(v6=st.booleans(), vlan=st.sampled_from([None, 9]), plen=st.integers(0, 300),
       edits=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 400), mss=st.integers(1, 200))
def test_tso_mutated_frames(v6, vlan, plen, edits, cut, mss):
    """Valid frames with random bytes changed and a random length: never a
    crash; whatever is accepted comes out as well-formed segments."""
    frame = bytearray(tcp_frame(bytes(i * 7 & 255 for i in range(plen)), v6, vlan, flags=ACK | PSH))
    for off, val in edits:
        if off < len(frame):
            frame[off] = val
    frame = bytes(frame[:cut])
    gso = GSO_TCPV6 if v6 else GSO_TCPV4
    plan = dp._offload_tso_plan(frame, gso, mss)
    segs = dp._offload_tso(frame, gso, mss)
    assert (plan is None) == (segs is None)
    if segs is None:
        return
    assert plan["payload_off"] + plan["payload_len"] <= len(frame)
    assert len(segs) == plan["nsegs"]
    hdr = plan["payload_off"]
    assert b"".join(s[hdr:] for s in segs) == frame[hdr:hdr + plan["payload_len"]]
    for s in segs:
        assert hdr <= len(s) <= hdr + mss
        assert l4_ok(s, plan["l3_off"], plan["l4_off"], v6, TCP)
        if not v6:
            assert ref_sum(s[plan["l3_off"]:plan["l4_off"]]) == 0xFFFF
