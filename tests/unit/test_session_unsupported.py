"""Every message id and protocol-feature bit of vhost-user.rst has a name, and
a request the switch does not implement is answered or refused, never left
hanging (docs/architecture.md, "A vhost-user message, from the socket to the
datapath").

A front-end that waits for a reply gets a failure: with NEED_REPLY once
REPLY_ACK is negotiated, or for a request the spec always answers
(protocol.FAILURE_REPLIES), in that request's reply layout. Any other
unimplemented request closes the connection (ProtocolError) with its name in
the reason. Either way the fds that came with it are closed.
"""

from __future__ import annotations

import os
import struct

import pytest

from tests.unit.test_session import RecordingBackend, eventfd, negotiate, reply_u64, send, u64
from vswitch.vhost import protocol as p
from vswitch.vhost.protocol import BackendRequest as BR
from vswitch.vhost.protocol import ProtocolError
from vswitch.vhost.protocol import ProtocolFeature as PF
from vswitch.vhost.protocol import Request as R
from vswitch.vhost.session import Offer, Session


@pytest.fixture
def refused():
    reasons: list[str] = []
    backend = RecordingBackend()
    s = Session(Offer(queue_pairs=1), backend, on_refused=reasons.append)
    yield s, reasons
    backend.reset()


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


# --- names -------------------------------------------------------------------

def test_ids_and_bits_match_the_spec_tables():
    # vhost-user.rst, "Front-end message types" / "Back-end message types" / "Protocol features"
    assert [(r.name, r.value) for r in R][:3] == [("GET_FEATURES", 1), ("SET_FEATURES", 2), ("SET_OWNER", 3)]
    assert R.SET_BACKEND_REQ_FD == 21 and R.VRING_KICK == 35 and R.GET_MAX_MEM_SLOTS == 36
    assert (R.SET_STATUS, R.GET_STATUS) == (39, 40)
    assert (R.GET_SHARED_OBJECT, R.SET_DEVICE_STATE_FD, R.CHECK_DEVICE_STATE) == (41, 42, 43)
    assert [r.value for r in R] == list(range(1, 44))          # no gap, none missing
    assert (BR.IOTLB_MSG, BR.VRING_HOST_NOTIFIER_MSG, BR.SHARED_OBJECT_LOOKUP) == (1, 3, 8)
    assert [b.value for b in BR] == list(range(1, 9))
    assert (PF.REPLY_ACK, PF.CONFIGURE_MEM_SLOTS, PF.STATUS) == (3, 15, 16)
    assert (PF.XEN_MMAP, PF.SHARED_OBJECT, PF.DEVICE_STATE) == (17, 18, 19)
    assert [f.value for f in PF] == list(range(20))


def test_names_for_logs_and_port_show():
    assert p.request_name(42) == "SET_DEVICE_STATE_FD"
    assert p.request_name(999) == "UNKNOWN(999)"
    assert p.decode_bits(1 << PF.STATUS | 1 << PF.DEVICE_STATE | 1 << 40, PF) == \
        ["STATUS", "DEVICE_STATE", "bit40"]


def test_every_request_the_spec_always_answers_is_implemented_or_has_a_failure_reply():
    implemented = set(Session._HANDLERS)
    always = {R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_VRING_BASE, R.GET_QUEUE_NUM,
              R.GET_MAX_MEM_SLOTS, R.SET_LOG_BASE, R.IOTLB_MSG, R.GET_CONFIG,
              R.CREATE_CRYPTO_SESSION, R.POSTCOPY_ADVISE, R.POSTCOPY_END, R.GET_INFLIGHT_FD,
              R.GET_STATUS, R.GET_SHARED_OBJECT, R.SET_DEVICE_STATE_FD, R.CHECK_DEVICE_STATE}
    assert always - implemented == set(p.FAILURE_REPLIES)


# --- unimplemented requests ------------------------------------------------------

def test_an_unimplemented_request_without_need_reply_closes_with_its_name(refused):
    s, reasons = refused
    negotiate(s)
    with pytest.raises(ProtocolError, match=r"unsupported request SET_CONFIG \(25\)"):
        send(s, R.SET_CONFIG, bytes(12))
    with pytest.raises(ProtocolError, match="unknown request 77"):
        send(s, 77, u64(0))
    assert reasons == []


def test_an_unimplemented_request_with_need_reply_is_answered_with_a_failure(refused):
    s, reasons = refused
    negotiate(s)                                               # REPLY_ACK
    fd = eventfd()
    assert reply_u64(send(s, R.SET_INFLIGHT_FD, bytes(24), [fd], need_reply=True)) == 1
    assert closed(fd)
    assert reply_u64(send(s, R.SET_STATUS, u64(15), need_reply=True)) == 1
    assert reply_u64(send(s, 200, b"", need_reply=True)) == 1
    assert reasons == ["unsupported request SET_INFLIGHT_FD (32)",
                       "unsupported request SET_STATUS (39)", "unknown request 200"]
    # the session goes on
    assert reply_u64(send(s, R.GET_QUEUE_NUM)) == 1


def test_need_reply_without_reply_ack_still_closes(refused):
    s, _ = refused
    with pytest.raises(ProtocolError, match="SET_VRING_ENDIAN"):
        send(s, R.SET_VRING_ENDIAN, struct.pack("=II", 0, 0), need_reply=True)


@pytest.mark.parametrize("request_, payload, nfds, expected", [
    (R.GET_STATUS, b"", 0, u64(0)),                   # no status tracked: 0
    (R.CHECK_DEVICE_STATE, b"", 0, u64(1)),           # non-zero: error
    (R.POSTCOPY_END, b"", 0, u64(1)),
    (R.SET_DEVICE_STATE_FD, struct.pack("=II", 0, 0), 1, u64(0x101)),  # error 1, no fd back
    (R.GET_SHARED_OBJECT, bytes(16), 0, u64(1)),
    (R.GET_CONFIG, struct.pack("=III", 0, 8, 0) + bytes(8), 0, b""),   # zero length: error
    (R.GET_INFLIGHT_FD, bytes(20), 0, b""),
    (R.POSTCOPY_ADVISE, b"", 0, b""),
])
def test_a_request_the_spec_always_answers_gets_a_failure_even_without_need_reply(
        refused, request_, payload, nfds, expected):
    s, reasons = refused
    fds = [eventfd() for _ in range(nfds)]
    reply = send(s, request_, payload, fds)   # REPLY_ACK not even negotiated
    assert reply == p.encode_reply(request_, expected)
    assert all(closed(fd) for fd in fds)
    assert reasons == [f"unsupported request {request_.name} ({int(request_)})"]


def test_status_is_not_offered():
    # QEMU sends SET_STATUS/GET_STATUS only when the back-end offers STATUS
    # (docs/architecture.md explains why the switch does not).
    assert not Offer(queue_pairs=1).protocol_features & (1 << PF.STATUS)
