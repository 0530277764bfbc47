"""The vhost-user codec under arbitrary bytes (hypothesis; vhost-user.rst, "Message Specification").

* decode of any bytes raises nothing but ProtocolError (or returns);
* encode/decode round trips for headers, replies, vring state, memory tables;
* header flag and size bounds; every payload decoder rejects too short, too
  long and lying sizes; regions whose gpa/uaddr/offset + size wrap are refused;
* fd counts per message: surplus, missing and unexpected fds close the
  connection and every fd that came with the message is closed - counted on
  real fds in /proc/self/fd (CVE-2019-14818 class).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.fuzz.model import FdSpec, open_fd_count, open_fds
from vswitch.vhost import protocol as p
from vswitch.vhost.protocol import ProtocolError
from vswitch.vhost.protocol import Request as R
from vswitch.vhost.session import Offer, Session
from tests.fuzz.model import ModelBackend

FAST = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)

# Every payload decoder the codec has (new ones are picked up by name).
DECODERS = {name: getattr(p, name) for name in dir(p)
            if name.startswith("decode_") and name not in ("decode_header", "decode_bits")}


def _call(name, fn, data):
    import inspect
    params = [q for q in inspect.signature(fn).parameters.values() if q.default is q.empty]
    return fn(data, "X") if len(params) >= 2 else fn(data)


@FAST
@given(st.binary(max_size=600))
def test_any_bytes_decode_or_raise_protocol_error(data):
    try:
        p.decode_header(data[:p.HEADER_SIZE].ljust(p.HEADER_SIZE, b"\0"))
    except ProtocolError:
        pass
    for name, fn in DECODERS.items():
        try:
            _call(name, fn, data)
        except ProtocolError:
            pass


@FAST
@given(u32, u32, u32)
def test_header_flags_and_size_bounds(request_, flags, size):
    raw = p.HEADER.pack(request_, flags, size)
    ok = (flags & p.VERSION_MASK == p.VERSION and not flags & ~p.KNOWN_FLAGS
          and not flags & p.FLAG_REPLY and size <= p.MAX_PAYLOAD)
    try:
        h = p.decode_header(raw)
    except ProtocolError:
        assert not ok
        return
    assert ok and (h.request, h.flags, h.size) == (request_, flags, size)
    assert h.need_reply == bool(flags & p.FLAG_NEED_REPLY)


@FAST
@given(u32, st.binary(max_size=p.MAX_PAYLOAD))
def test_reply_encoding_round_trips(request_, payload):
    raw = p.encode_reply(request_, payload)
    req, flags, size = p.HEADER.unpack_from(raw)
    assert (req, flags, size, raw[p.HEADER_SIZE:]) == (request_, p.VERSION | p.FLAG_REPLY, len(payload), payload)
    with pytest.raises(ProtocolError):       # a reply is never accepted as a request
        p.decode_header(raw[:p.HEADER_SIZE])


@FAST
@given(u32, u32)
def test_vring_state_round_trips(i, n):
    assert p.decode_vring_state(p.encode_vring_state(i, n), "X") == p.VringState(i, n)


region = st.builds(p.MemRegion, u64, st.integers(1, 2**64 - 1), u64, u64)


@FAST
@given(st.lists(region, min_size=0, max_size=10), st.integers(0, 8))
def test_mem_table_round_trips_or_refuses(regions, pad_slots):
    payload = p.encode_mem_table(regions) + bytes(32 * pad_slots)
    def wraps(r):
        return any(b + r.memory_size > 2**64 - 1 for b in (r.guest_phys_addr, r.userspace_addr, r.mmap_offset))
    valid = (1 <= len(regions) <= p.MAX_MEM_REGIONS and len(payload) <= 8 + 32 * p.MAX_MEM_REGIONS
             and not any(wraps(r) for r in regions))
    try:
        assert p.decode_mem_table(payload) == regions and valid
    except ProtocolError:
        assert not valid


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(0, 300))
def test_mem_table_with_a_lying_region_count(nregions, nbytes):
    payload = struct.pack("=II", nregions, 0) + bytes(range(256))[:nbytes]
    try:
        regions = p.decode_mem_table(payload)
    except ProtocolError:
        return
    assert 1 <= len(regions) == nregions <= p.MAX_MEM_REGIONS and len(payload) >= 8 + 32 * nregions


FIXED = {  # decoder -> the only payload size it accepts
    "decode_u64": 8, "decode_vring_state": 8, "decode_vring_addr": 40,
    "decode_log": 16, "decode_single_mem_region": 40,
}


@pytest.mark.parametrize("name", sorted(n for n in FIXED if n in DECODERS))
@FAST
@given(data=st.binary(max_size=100))
def test_fixed_size_payloads_reject_every_other_size(name, data):
    fn = DECODERS[name]
    try:
        _call(name, fn, data)
    except ProtocolError:
        # the region and log decoders also refuse well-sized payloads whose values wrap
        assert len(data) != FIXED[name] or name in ("decode_single_mem_region", "decode_log")
        return
    assert len(data) == FIXED[name]


@FAST
@given(u64, u64)
def test_log_offsets_that_wrap_never_decode_into_a_mapping_request(size, offset):
    # CVE-2020-10722 class: size + offset is checked without overflow before any mmap.
    if "decode_log" not in DECODERS:
        pytest.skip("no SET_LOG_BASE codec")
    valid = size != 0 and offset + size <= 2**64 - 1
    try:
        got = p.decode_log(struct.pack("=QQ", size, offset))
    except ProtocolError:
        assert not valid
        return
    assert valid and tuple(got) == (size, offset)


# --- fds per message --------------------------------------------------------------------------

KINDS = ["eventfd", "pipe", "memfd", "devnull", "socket"]


@FAST
@given(st.sampled_from([int(r) for r in R] + [0, 99, 2**32 - 1]),
       st.binary(max_size=80),
       st.lists(st.sampled_from(KINDS), max_size=10),
       st.booleans())
def test_every_fd_of_a_message_is_closed_or_kept_once(request_, payload, kinds, need_reply):
    """Real fds on any message: after the session handled it (or refused it)
    and closed, no fd is left open; the model backend asserts nobody is
    handed the same fd twice."""
    before = open_fd_count()
    model = ModelBackend(2)
    s = Session(Offer(queue_pairs=1), model)
    fds = open_fds([FdSpec(k, 0x1000) for k in kinds])
    h = p.decode_header(p.HEADER.pack(request_, p.VERSION | (p.FLAG_NEED_REPLY if need_reply else 0),
                                      len(payload)))
    try:
        s.handle(h, payload, fds)
    except ProtocolError:
        pass
    s.close()
    assert not model.owned
    assert open_fd_count() == before


@pytest.mark.parametrize("request_, nfds", [
    (R.SET_OWNER, 1), (R.SET_VRING_NUM, 3), (R.SET_VRING_KICK, 2), (R.SET_MEM_TABLE, 9),
    (R.GET_FEATURES, 8), (R.SET_VRING_CALL, 0),
])
def test_wrong_fd_counts_close_the_connection_and_every_fd(request_, nfds):
    before = open_fd_count()
    s = Session(Offer(queue_pairs=1), ModelBackend(2))
    payload = {R.SET_VRING_NUM: struct.pack("=II", 0, 256), R.SET_VRING_KICK: struct.pack("=Q", 0),
               R.SET_VRING_CALL: struct.pack("=Q", 0),
               R.SET_MEM_TABLE: p.encode_mem_table([p.MemRegion(0, 4096, 1 << 40, 0)])}.get(request_, b"")
    fds = open_fds([FdSpec("memfd", 4096)] * nfds)
    h = p.decode_header(p.HEADER.pack(request_, p.VERSION, len(payload)))
    with pytest.raises(ProtocolError):
        s.handle(h, payload, fds)
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    s.close()
    assert open_fd_count() == before
