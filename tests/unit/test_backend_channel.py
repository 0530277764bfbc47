"""SET_BACKEND_REQ_FD and the back-end channel (vswitch/vhost/channel.py):
the fd must be a unix stream socket, sends never block whatever the
front-end does to the file's flags, and a full channel drops and counts."""

from __future__ import annotations

import fcntl
import os
import socket

import pytest

from vswitch.vhost import protocol as p
from vswitch.vhost.channel import BackendChannel, ChannelRefused
from vswitch.vhost.protocol import Feature as F
from vswitch.vhost.protocol import ProtocolFeature as PF
from vswitch.vhost.protocol import Request as R
from vswitch.vhost.session import Offer, Session

from .test_session import RecordingBackend, eventfd, reply_u64, send, u64
from .test_session_unsupported import closed

ACK = 1 << PF.REPLY_ACK | 1 << PF.BACKEND_REQ


@pytest.fixture
def session():
    backend = RecordingBackend()
    reasons: list[str] = []
    s = Session(Offer(queue_pairs=1), backend, on_refused=reasons.append)
    yield s, reasons
    s.close()


def negotiate(s: Session, proto: int = ACK) -> None:
    send(s, R.GET_FEATURES)
    send(s, R.SET_PROTOCOL_FEATURES, u64(proto))
    send(s, R.SET_OWNER)


def test_access_platform_and_backend_req_are_offered():
    offer = Offer(queue_pairs=1)
    assert offer.features & (1 << F.F_ACCESS_PLATFORM)
    # QEMU requires both with ACCESS_PLATFORM (vhost_user_backend_init)
    assert offer.protocol_features & (1 << PF.BACKEND_REQ)
    assert offer.protocol_features & (1 << PF.REPLY_ACK)


def test_the_channel_is_kept_and_closed_with_the_session(session):
    s, reasons = session
    negotiate(s)
    ours, theirs = socket.socketpair()
    fd = ours.detach()
    assert reply_u64(send(s, R.SET_BACKEND_REQ_FD, b"", [fd], need_reply=True)) == 0
    assert s.channel is not None and s.channel.sock.fileno() == fd
    assert s.channel.send(p.encode_backend_request(p.BackendRequest.IOTLB_MSG, bytes(32)))
    data = theirs.recv(100)
    assert len(data) == 12 + 32
    request, flags, size = p.HEADER.unpack_from(data)
    assert (request, flags, size) == (1, p.VERSION, 32)      # no NEED_REPLY
    # a second channel replaces the first
    ours2, theirs2 = socket.socketpair()
    fd2 = ours2.detach()
    send(s, R.SET_BACKEND_REQ_FD, b"", [fd2])
    assert closed(fd) and s.channel.sock.fileno() == fd2
    s.close()
    assert closed(fd2) and s.channel is None
    assert reasons == []


@pytest.mark.parametrize("kind", ["eventfd", "pipe", "udp", "seqpacket"])
def test_a_channel_that_is_not_a_unix_stream_socket_is_refused(session, kind):
    s, reasons = session
    negotiate(s)
    keep = []
    if kind == "eventfd":
        fd = eventfd()
    elif kind == "pipe":
        fd, w = os.pipe()
        keep.append(w)
    elif kind == "udp":
        fd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = a.detach()
        keep.append(b.detach())
    assert reply_u64(send(s, R.SET_BACKEND_REQ_FD, b"", [fd], need_reply=True)) == 1
    assert closed(fd) and s.channel is None
    assert reasons and "SET_BACKEND_REQ_FD" in reasons[0]
    for k in keep:
        os.close(k)


def test_without_backend_req_negotiated_the_fd_is_refused(session):
    s, reasons = session
    negotiate(s, 1 << PF.REPLY_ACK)
    a, b = socket.socketpair()
    fd = a.detach()
    assert reply_u64(send(s, R.SET_BACKEND_REQ_FD, b"", [fd], need_reply=True)) == 1
    assert closed(fd)
    b.close()


def test_a_full_blocking_channel_drops_and_counts_without_blocking():
    a, b = socket.socketpair()
    # the front-end cleared O_NONBLOCK on the shared file description
    flags = fcntl.fcntl(a.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(a.fileno(), fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    ch = BackendChannel(a.detach())
    msg = p.encode_backend_request(p.BackendRequest.IOTLB_MSG, bytes(32))
    sent = 0
    for _ in range(100000):
        if not ch.send(msg):
            break
        sent += 1
    assert ch.dropped == 1 and ch.sent == sent > 0 and ch.broken is None
    assert not ch.send(msg) and ch.dropped == 2
    b.close()                                  # the peer went away
    assert not ch.send(msg) and ch.broken
    ch.close()


def test_a_channel_that_is_not_a_socket_is_refused_by_the_class():
    r, w = os.pipe()
    with pytest.raises(ChannelRefused):
        BackendChannel(r)
    os.close(r)
    os.close(w)
