"""The workers' io_uring rings run writes and nothing else.

Requests submitted through io_uring do not pass through the daemon's seccomp
filter (docs/service.md), so the kernel is told at ring setup which requests
a ring may run (IORING_REGISTER_RESTRICTIONS); anything else fails -EACCES.
"""
import errno
import os

import pytest

from vswitch import _datapath
from vswitch._datapath import Datapath

# include/uapi/linux/io_uring.h
IORING_OP_NOP = 0
IORING_OP_READV = 1
IORING_OP_OPENAT = 18
IORING_OP_READ = 22
IORING_OP_WRITE = 23
IORING_OP_CONNECT = 16


@pytest.fixture(autouse=True)
def hooks():
    _datapath.enable_test_hooks()


@pytest.mark.parametrize("tap_ring", [True, False], ids=["tap-ring", "notification-ring"])
@pytest.mark.parametrize("opcode", [IORING_OP_NOP, IORING_OP_READV, IORING_OP_READ, IORING_OP_OPENAT,
                                    IORING_OP_CONNECT])
def test_a_worker_ring_refuses_every_request_but_writes(tap_ring, opcode):
    r, w = os.pipe()
    try:
        restricted, res = _datapath._uring_try(opcode, r, tap_ring)
    finally:
        os.close(r)
        os.close(w)
    assert restricted
    assert res == -errno.EACCES


@pytest.mark.parametrize("tap_ring", [True, False], ids=["tap-ring", "notification-ring"])
def test_a_worker_ring_still_writes(tap_ring):
    r, w = os.pipe()
    try:
        restricted, res = _datapath._uring_try(IORING_OP_WRITE, w, tap_ring)   # 0 bytes
    finally:
        os.close(r)
        os.close(w)
    assert restricted
    assert res == 0


def test_the_datapath_reports_its_workers_rings_restricted():
    stats = Datapath(2, "event").worker_stats()
    assert [(w["tap_io"], w["notify_io"]) for w in stats] == [("io_uring", "io_uring")] * 2
    assert all(w["io_uring_restricted"] for w in stats)
