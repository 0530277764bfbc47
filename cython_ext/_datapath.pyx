# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The vswitch datapath: guest memory, split virtqueues, FDB and worker threads.

One extension module, laid out as uvloop's and asyncpg's: the C it calls is
declared in includes/*.pxd (cimported here, once), the datapath is a set of
.pxi files included here, one per concern, and the control plane drives it
through the `Datapath` class (datapath.pxi). Workers run `worker_loop`
without the GIL; the control plane changes what a worker may see by flipping
a flag, waits for every worker to finish the round it was in (`_quiesce`),
and only then touches the ring, the memory map or the fds it used.

Naming: functions of the datapath say the switch's point of view.
  <type>_ingress_burst   frames entering the switch from a port of that type:
                         vhost_ingress_burst (the guest's TX ring),
                         tap_ingress_burst (read from the TAP queue),
                         vxlan_ingress_burst (datagrams from the remotes)
  deliver_to_<type>      frames leaving the switch to a port of that type:
                         deliver_to_vhost (into the guest's RX ring),
                         deliver_to_tap, deliver_to_vxlan; deliver_to_port
                         picks one by the port's type
  ingress / egress       policy and capture directions (ingress_policy,
                         CAP_IN = "in": from the port into the switch)
Virtio's own words stay for the rings themselves, which are named from the
guest's side: a port's "TX ring" (vq[2q+1]) is what its guest sends, its
"RX ring" (vq[2q]) what it receives (rx_enqueue, vring_*).

Files (cython_ext/):
  includes/system.pxd   libc, POSIX and Linux calls (unistd, uio, mman, stat,
                        statfs, eventfd, epoll, time, socket, prctl)
  includes/virtio.pxd   split-ring layouts in guest memory (vs_defs.h)
  includes/atomics.pxd  atomics, barriers, spinlock, prefetch (vs_defs.h)
  includes/uring.pxd    io_uring without liburing (vs_uring.h)
  includes/memguard.pxd the SIGBUS guard of guest memory (vs_memguard.h)
  types.pxi     the datapath's structs, limits, drop reasons
  notify.pxi    call/err eventfd writes that never block a worker
  mem.pxi       guest memory: translation (workers), mapping (control plane)
  vring.pxi     split virtqueues: chains, used ring, RX buffers, dirty log
  packed.pxi    packed virtqueues: the same for VIRTIO_F_RING_PACKED rings
  fdb.pxi       the MAC table
  offload.pxi   software checksum and TSO
  policy.pxi    VLANs, port security, storm control, policers
  worker.pxi    the worker loop and the port-independent switching
  vhost.pxi     vhost-user ports: ingress and delivery
  tap.pxi       TAP ports: ingress and delivery
  vxlan.pxi     VXLAN ports: ingress and delivery
  capture.pxi   live capture
  datapath.pxi  the Datapath class
  testing.pxi   test hooks, refused until enabled

The Datapath's methods, by concern (sections of datapath.pxi, in this order):
  workers   start stop set_mode mode set_cpus pause resume workers
            bind_control_thread
  ports     port_add port_remove port_reset port_set_features port_set_mtu
            inject_rarp
  memory    set_mem_table set_memory_limits memory_limits mapped_bytes
            memory_faults memory_regions set_log_base log_info
  vrings    vring_set_num vring_set_addr vring_set_base vring_start
            vring_stop vring_set_enabled vring_info
  notify    vring_set_kick vring_set_call vring_set_err reap_notifications
            control_notify_fd
  policy    port_set_vlan port_set_allowed_macs port_set_storm_control
            port_set_policer port_set_mirror port_policy
  fdb       fdb_entries fdb_set_static fdb_flush fdb_set_aging fdb_age
            fdb_set_default_max port_set_fdb_max port_fdb_info fdb_stats
            fdb_forget
  tap       tap_attach tap_fixed_files tap_errno
  vxlan     vxlan_attach vxlan_set_remotes vxlan_set_vni vxlan_learned
  capture   capture_start capture_drain capture_info capture_stop
  stats     worker_stats vring_counters
  testing   enable_test_hooks; once called: debug_stall_worker
            debug_fdb_learn debug_fdb_learn_many debug_fdb_lookup
Module functions: memory_guard_info, memory_guard_ranges (mem.pxi);
enable_test_hooks and the _offload_* hooks (testing.pxi).
"""

import os
import threading
import time

from libc.errno cimport errno, EAGAIN, EBADFD, EIO, EINTR
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from includes.system cimport *
from includes.virtio cimport *
from includes.atomics cimport *
from includes.uring cimport *
from includes.memguard cimport *

cdef extern from "vs_cpucheck.h" nogil:
    const char *vs_build_target
    const char *vs_build_feature(size_t i)
    int vs_cpu_missing(const char *pretend_absent, char *out, size_t size)


def _build_features() -> tuple:
    cdef size_t i = 0
    cdef const char *name
    names = []
    while True:
        name = vs_build_feature(i)
        if name == NULL:
            return tuple(names)
        names.append(name.decode())
        i += 1


# What the module was compiled for (setup.py, VSWITCH_MARCH): "x86-64-v2" or
# "native" (or another -march), and the instruction-set extensions the
# compiler assumed (vs_cpucheck.h). A build for a newer CPU than this one
# would die of SIGILL in the hot loop: refuse it here, naming what lacks.
# VSWITCH_TEST_CPU_ABSENT (comma-separated names) pretends features absent,
# for the tests.
BUILD_TARGET = vs_build_target.decode()
BUILD_FEATURES = _build_features()


def _check_cpu() -> None:
    cdef char missing[512]
    pretend = os.environ.get("VSWITCH_TEST_CPU_ABSENT", "").encode()
    cdef const char *pretend_c = pretend
    if vs_cpu_missing(pretend_c if pretend else NULL, missing, sizeof(missing)) > 0:
        raise ImportError(
            f"vswitch._datapath was built for -march={BUILD_TARGET} and this CPU lacks "
            f"{missing.decode()}: rebuild it for this machine (make build; VSWITCH_MARCH=native "
            f"or unset for the x86-64-v2 baseline, README 'Build')"
        )


_check_cpu()


class DatapathError(Exception):
    """A request the datapath cannot honour (bad address, size, index)."""


include "types.pxi"
include "notify.pxi"
include "mem.pxi"
include "iotlb.pxi"
include "vring.pxi"
include "packed.pxi"
include "fdb.pxi"
include "offload.pxi"
include "policy.pxi"
include "worker.pxi"
include "vhost.pxi"
include "tap.pxi"
include "vxlan.pxi"
include "capture.pxi"
include "datapath.pxi"
include "testing.pxi"


DROP_REASONS = (
    None,  # 0 is success, not a reason
    "bad_head", "bad_address", "bad_length", "bad_chain", "bad_indirect",
    "bad_flags", "too_many_segments", "runt", "ring_disabled", "no_rx_buffer",
    "rx_buffer_too_small", "rx_bad_chain", "no_rx_queue", "same_port",
    "ring_broken", "bad_offload", "mtu_exceeded", "tap_write_failed",
    "spoofed_source", "storm_control", "rate_limited", "vlan_filtered",
    "vxlan_bad_header", "vxlan_wrong_vni", "vxlan_unknown_remote", "vxlan_send_failed",
    "over_budget", "iotlb_miss", "iotlb_denied",
)
assert len(DROP_REASONS) == DROP_MAX

MODES = {"poll": MODE_POLL, "event": MODE_EVENT, "adaptive": MODE_ADAPTIVE}
MAX_PORTS = VS_MAX_PORTS
MAX_QUEUE_PAIRS = VS_MAX_QP
MAX_REGIONS = VS_MAX_REGIONS
MAX_ALLOWED_MACS = VS_MAX_ALLOWED_MACS
BURST = VS_BURST
