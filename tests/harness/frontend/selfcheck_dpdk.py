"""Prove ``vhost_frontend`` against a back-end nobody here wrote: DPDK testpmd's vhost PMD.

Topology (testpmd io-forwards port 0 queue q → port 1 queue q)::

    VhostUserFrontend A --SOCK0--> net_vhost0 (port 0) ─┐ testpmd
    VhostUserFrontend B --SOCK1--> net_vhost1 (port 1) <┘ --forward-mode=io

Frames posted on A's TX ring q must come out byte-for-byte on B's RX ring q.
Run for queues=1 and queues=2, in two phases per testpmd instance (the
second phase reconnects both front-ends, which also proves that reconnecting
to DPDK's vhost server works):

phase 1  plain single-descriptor TX; TX split in 2..4 descriptors (also
         inside the virtio-net header); indirect TX; RX chains of several
         descriptors, some through indirect tables; SEND_RARP (DPDK injects a
         RARP into port 0's dequeue, so it must arrive on B); REPLY_ACK;
         GET_VRING_BASE after traffic reports exactly the TX avail index.
phase 2  MRG_RXBUF + EVENT_IDX on B with small (256-byte) RX buffers, so
         frames come back in several used entries (num_buffers), including
         jumbo frames; B's RX call eventfd must fire via used_event;
         A's guest memory is two regions backed by ONE memfd (ring region at
         GPA 0, buffer region at GPA 4 GiB, mmap_offset 8 MiB).

Every phase runs for split rings and again for packed rings
(VIRTIO_F_RING_PACKED, ``setup_net_device(packed=True)``), the packed ones
with ring sizes that are not a power of two (255 in phase 1, 250 in phase 2),
so that chains of several descriptors cross the ring's end and both wrap
counters flip many times; GET_VRING_BASE must then report the avail slot and
wrap counter (DPDK 22.11 answers only the low 16 bits of the 32-bit packed
value).  Packed rings add

DPDK 22.11's packed RX batch path (virtio_dev_rx_sync_batch_check, still so
in later releases) takes four available descriptors at a 4-aligned position
as four one-descriptor buffers without looking at NEXT: RX chains of several
descriptors each large enough for a small frame lose frames there (seen as
"16 frames arrive: got 10" with 3 x 683-byte descriptors).  The packed
multi-descriptor RX cases therefore put the header in a descriptor of its
own (12 bytes), which that path never takes.

phase 3  a 13-entry ring: 3- and 4-descriptor TX chains, indirect TX,
         2-descriptor RX chains, so nearly every batch crosses the ring's end;
         then a reconnect that resumes at the ring position GET_VRING_BASE
         reported (SET_VRING_BASE with a wrap counter of 0).

Usage, from the repository root: ``python -m tests.harness.frontend.selfcheck_dpdk [--queues 1 2]
[--rings split packed] [-v]``
(as root; exit status 0 when every check passed).  testpmd is pinned to one
CPU and killed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .packed_ring import PackedRing, split_packed_vring_base
from .vhost_frontend import (
    Feature,
    GuestMemory,
    NetDevice,
    RegionSpec,
    RxFrame,
    SplitRing,
    VhostUserFrontend,
    bits,
    wait_for_socket,
)

TESTPMD = "/usr/bin/dpdk-testpmd"
RING = 256
#: Packed rings need not be a power of two: sizes that make chains cross the ring's end.
PACKED_RING = {1: 255, 2: 250, 3: 13}
ETH_P_TEST = 0x88B5  # IEEE "local experimental" ethertype
ETH_P_RARP = 0x8035
SIZES = (60, 64, 65, 128, 511, 1000, 1514)


@dataclass
class Report:
    verbose: bool = False
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, cond: bool, what: str, detail: str = "") -> bool:
        detail = detail if len(detail) <= 400 else detail[:400] + "..."
        (self.passed if cond else self.failed).append(what + ("" if cond or not detail else f": {detail}"))
        if self.verbose or not cond:
            print(("  ok    " if cond else "  FAIL  ") + what + ("" if cond or not detail else f"  -- {detail}"),
                  flush=True)
        return cond

    def note(self, text: str) -> None:
        self.notes.append(text)
        print("  note  " + text, flush=True)


def make_frame(seq: int, size: int, q: int) -> bytes:
    """Unique, reproducible Ethernet frame of ``size`` bytes."""
    dst = bytes([0x02, 0, 0, 0, 0x01, q])
    src = bytes([0x02, 0, 0, 0, 0x00, q])
    head = dst + src + struct.pack(">HIHH", ETH_P_TEST, seq, q, size)
    return head + random.Random(seq * 7919 + q).randbytes(size - len(head))


class TestPmd:
    """testpmd with two vhost server ports; started in its own session so it can be killed as a group."""

    def __init__(self, workdir: Path, queues: int, cpu: int | None) -> None:
        self.sock0 = str(workdir / "sock0")
        self.sock1 = str(workdir / "sock1")
        self.log_path = workdir / f"testpmd-q{queues}.log"
        self.prefix = f"fe{os.getpid()}q{queues}"
        cmd = [TESTPMD, "--no-pci", "--no-huge", "-m", "1024", f"--file-prefix={self.prefix}"]
        if cpu is not None:
            # Main and forwarding lcore share one CPU: the other stays free for us.
            cmd = ["taskset", "-c", str(cpu)] + cmd + [f"--lcores=0@{cpu},1@{cpu}"]
        cmd += ["--vdev", f"net_vhost0,iface={self.sock0},queues={queues},client=0",
                "--vdev", f"net_vhost1,iface={self.sock1},queues={queues},client=0",
                "--", "--forward-mode=io", "--stats-period", "1", f"--rxq={queues}", f"--txq={queues}"]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for path in (self.sock0, self.sock1):
            if not wait_for_socket(path, max(0.0, deadline - time.monotonic())) or self.proc.poll() is not None:
                raise RuntimeError(f"testpmd did not create {path}; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def dropped(self) -> int | None:
        """testpmd's final "TX-dropped" over all ports (after ``stop``), None if not printed."""
        text = self.log_path.read_text(errors="replace")
        tail = text[text.rfind("Accumulated forward statistics"):]
        m = re.search(r"TX-dropped:\s*(\d+)", tail) if tail else None
        return int(m.group(1)) if m else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # prints forward statistics, then exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        # EAL leaves its runtime directory (config, mp socket) behind.
        shutil.rmtree(f"/var/run/dpdk/{self.prefix}", ignore_errors=True)


def exchange(rep: Report, tx: SplitRing | PackedRing, rx: SplitRing | PackedRing, frames: list[bytes], what: str, *,
             mrg_buf_len: int | None = None, **post_kw: Any) -> list[RxFrame]:
    """Send ``frames`` on ``tx``, receive the same number on ``rx``, compare byte-for-byte.

    ``mrg_buf_len``: RX buffers are all this size and MRG_RXBUF is on, so each
    frame must use exactly ceil((hdr + frame) / mrg_buf_len) buffers.
    """
    for f in frames:
        tx.post_tx(f, publish=False, kick=False, **post_kw)
    tx.publish(kick=True)
    got = rx.recv_frames(len(frames), timeout=5.0)
    tx.reap()  # TX completions (len 0) free the TX buffers
    ok = rep.check(len(got) == len(frames), f"{what}: {len(frames)} frames arrive",
                   f"got {len(got)}; rx errors {rx.errors}")
    if ok:
        bad = [i for i, (g, f) in enumerate(zip(got, frames, strict=True)) if g.frame != f]
        rep.check(not bad, f"{what}: byte-for-byte equal", f"mismatch at {bad[:5]} "
                  f"(len {len(got[bad[0]].frame) if bad else 0} vs {len(frames[bad[0]]) if bad else 0})")
        hdr_bad = [g.hdr for g in got if g.hdr.flags or g.hdr.gso_type]
        rep.check(not hdr_bad, f"{what}: RX header flags/gso_type zero", str(hdr_bad[:2]))
        if mrg_buf_len:
            nb_bad = [(g.hdr.num_buffers, len(g.elems), len(g.frame)) for g in got
                      if g.hdr.num_buffers != len(g.elems)
                      or g.hdr.num_buffers != -(-(len(g.frame) + rx.hdr_len) // mrg_buf_len)]
            rep.check(not nb_bad, f"{what}: num_buffers = buffers used = ceil(len/buf)", str(nb_bad[:3]))
            if got and rep.verbose:
                print(f"        num_buffers seen: {sorted({g.hdr.num_buffers for g in got})}")
    rep.check(not rx.errors and not tx.errors, f"{what}: no ring errors", f"{rx.errors} {tx.errors}")
    return got


def check_bases(rep: Report, dev: NetDevice, bases: dict[int, int], what: str) -> None:
    """GET_VRING_BASE after traffic reports exactly where the driver is."""
    if not dev.packed:
        want = {r.index: r.avail_idx for r in dev.rings}
        rep.check(bases == want, f"{what}: GET_VRING_BASE == avail idx after traffic", f"{bases} vs {want}")
        return
    # Packed: avail slot | wrap << 15 in the low half; DPDK 22.11 leaves the
    # used half 0, a back-end that fills it must report the driver's used position.
    bad = {}
    for r in dev.rings:
        got = bases[r.index]
        full = r.vring_base()
        if got & 0xFFFF != full & 0xFFFF or got >> 16 not in (0, full >> 16):
            bad[r.index] = (split_packed_vring_base(got), split_packed_vring_base(full))
    rep.check(not bad, f"{what}: packed GET_VRING_BASE == (avail slot, wrap counter) after traffic",
              f"(avail, wrap, used, wrap) got vs driver: {bad}")
    stale = sum(r.stale_len for r in dev.rings)
    if stale:
        rep.note(f"{what}: {stale} used descriptors of read-only (TX) chains kept a non-zero len "
                 f"(the back-end did not write len; harmless, drivers ignore it there)")
    rep.check(all(r.laps >= 2 for r in dev.rings if r.index % 2 == 1),
              f"{what}: every packed TX ring wrapped at least twice", str([r.laps for r in dev.rings]))


def phase1(rep: Report, pmd: TestPmd, queues: int, packed: bool = False) -> None:
    feats = bits(Feature.VERSION_1, Feature.INDIRECT_DESC)
    kind = "packed " if packed else ""
    size = PACKED_RING[1] if packed else RING
    fe_a = VhostUserFrontend(pmd.sock0)
    fe_b = VhostUserFrontend(pmd.sock1)
    dev_a = dev_b = None
    try:
        dev_a = fe_a.setup_net_device(queues, size, feats, packed=packed)
        dev_b = fe_b.setup_net_device(queues, size, feats, packed=packed)
        describe(rep, dev_a, queues)
        want = feats | bits(Feature.PROTOCOL_FEATURES) | (bits(Feature.MQ) if queues > 1 else 0)
        want |= bits(Feature.RING_PACKED) if packed else 0
        rep.check(dev_a.features == want, f"{kind}phase1: negotiated features as asked", hex(dev_a.features))
        rep.check(all(isinstance(r, PackedRing) == packed and r.num == size for r in dev_a.rings + dev_b.rings),
                  f"{kind}phase1: {size}-entry {kind or 'split '}rings")
        rep.check(dev_b.rx(0).hdr_len == 12, f"{kind}phase1: 12-byte header with VERSION_1")
        seq = 0
        for q in range(queues):
            tx, rx = dev_a.tx(q), dev_b.rx(q)
            # (what, number of frames, TX post_tx options, RX post_rx options)
            cases: list[tuple[str, int, dict[str, Any], dict[str, Any]]] = [
                ("single-descriptor TX", 32, {}, {}),
                ("TX split [12] (header apart)", 8, {"split": [12]}, {}),
                ("TX split [5, 40] (cut inside header)", 8, {"split": [5, 40]}, {}),
                ("TX split [12, 14, 20]", 8, {"split": [12, 14, 20]}, {}),
                ("TX split [1, 1, 10]", 8, {"split": [1, 1, 10]}, {}),
                ("indirect TX, 3 descriptors", 16, {"indirect": True, "split": [12, 30]}, {}),
                ("indirect TX, 1 descriptor", 8, {"indirect": True}, {}),
                ("RX into 3-descriptor chains", 16, {},
                 {"sizes": [12, 1018, 1018]} if packed else {"descs_per_chain": 3}),
                ("RX into indirect 4-descriptor chains", 16, {}, {"descs_per_chain": 4, "indirect": True}),
            ]
            # Packed: three rounds, so that the rings wrap (chains crossing the end).
            for what, n, tx_kw, rx_kw in cases * (3 if packed else 1):
                rx.post_rx(n, 2048, **rx_kw)
                frames = [make_frame(seq + i, SIZES[i % len(SIZES)], q) for i in range(n)]
                seq += n
                exchange(rep, tx, rx, frames, f"{kind}q{q} {what}", **tx_kw)
            # RX buffers are poisoned with 0xA5, so an unwritten field reads 0xA5A5.
            rx.post_rx(1, 2048)
            probe = exchange(rep, tx, rx, [make_frame(seq, 60, q)], f"{kind}q{q} num_buffers probe")
            seq += 1
            if probe and q == 0:
                nb = probe[0].hdr.num_buffers
                if nb != 1:
                    rep.note(f"without MRG_RXBUF the device left num_buffers = {nb:#x} "
                             f"(virtio 1.x: device MUST set it to 1)")
            rep.check(not rx.inflight, f"{kind}q{q} every posted RX buffer was used exactly once",
                      f"{len(rx.inflight)} left")
        # REPLY_ACK round trip on a message without a natural reply.
        rep.check(fe_a.set_vring_enable(1, True, need_reply=True) == 0,
                  f"{kind}phase1: REPLY_ACK on SET_VRING_ENABLE is 0")
        # SEND_RARP: DPDK builds a RARP and hands it to the next dequeue of port 0.
        mac = bytes.fromhex("02aabbccddee")
        for q in range(queues):
            dev_b.rx(q).post_rx(4, 2048)
        fe_a.send_rarp(mac)
        got: list[RxFrame] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            for q in range(queues):
                got += dev_b.rx(q).recv_frames(1, 0.05)
        rarp = [g for g in got if g.frame[12:14] == struct.pack(">H", ETH_P_RARP)]
        rep.check(bool(rarp) and rarp[0].frame[6:12] == mac and rarp[0].frame[:6] == b"\xff" * 6,
                  f"{kind}phase1: SEND_RARP produces a broadcast RARP from the guest MAC",
                  repr([g.frame[:20].hex() for g in got]))
        # GET_VRING_BASE stops the ring and must report how far the device got.
        check_bases(rep, dev_a, dev_a.stop(), f"{kind}phase1")
        # Fired: consumed while waiting, or still pending (frames may all have
        # been there before the driver ever waited).
        rep.check(all(dev_b.rx(q).interrupts > 0 or dev_b.rx(q).drain_call() for q in range(queues)),
                  f"{kind}phase1: RX call eventfds fired", str([dev_b.rx(q).interrupts for q in range(queues)]))
        rep.check(pmd.alive(), f"{kind}phase1: testpmd still running")
    finally:
        for dev, fe in ((dev_a, fe_a), (dev_b, fe_b)):
            if dev is not None:
                dev.close()
            else:
                fe.close()


def describe(rep: Report, dev: NetDevice, queues: int) -> None:
    rep.note(f"queues={queues}: offered features {dev.offered_features:#x}, protocol features "
             f"{dev.offered_protocol_features:#x}, GET_QUEUE_NUM {dev.max_queue_pairs}, "
             f"acked protocol {dev.protocol_features:#x}")


def used_event_check(rep: Report, tx: PackedRing, rx: PackedRing, seq: int) -> None:
    """Packed + EVENT_IDX: the driver event area asks for an interrupt at the used
    descriptor one past the next; the first frame must not interrupt, the second must."""
    # The ring's own re-arming (wait_call asks for the next used descriptor)
    # is off meanwhile; interrupts consumed while waiting still count.
    rx.event_idx = False
    try:
        for attempt in range(3):
            rx.post_rx(2, 2048)
            rx.drain_call()
            rx.set_used_event(rx.used_position(1))
            before = rx.interrupts
            exchange(rep, tx, rx, [make_frame(seq + 2 * attempt, 100, 0)], "packed phase2 used_event: 1st frame")
            time.sleep(0.05)
            first = rx.interrupts - before + rx.drain_call()
            before = rx.interrupts
            exchange(rep, tx, rx, [make_frame(seq + 2 * attempt + 1, 100, 0)], "packed phase2 used_event: 2nd frame")
            time.sleep(0.05)
            second = rx.interrupts - before + rx.drain_call()
            if not first:
                break
    finally:
        rx.event_idx = True
    rep.check(not first and second > 0, f"packed phase2 vring {rx.index}: EVENT_IDX off_wrap honoured "
              "(no interrupt before the asked used descriptor, one at it)", f"{first} then {second}")


def phase2(rep: Report, pmd: TestPmd, queues: int, packed: bool = False) -> None:
    kind = "packed " if packed else ""
    size = PACKED_RING[2] if packed else RING
    # Two regions, one memfd: rings low, buffers at 4 GiB (mmap_offset 8 MiB).
    mem_a = GuestMemory(regions=[RegionSpec(0, 8 << 20, backing="ram"),
                                 RegionSpec(1 << 32, 24 << 20, backing="ram")])
    rep.check(mem_a.regions[0].fd == mem_a.regions[1].fd and mem_a.regions[1].mmap_offset == 8 << 20,
              f"{kind}phase2: two regions share one memfd at different offsets")
    fe_a = VhostUserFrontend(pmd.sock0)
    fe_b = VhostUserFrontend(pmd.sock1)
    dev_a = dev_b = None
    try:
        dev_a = fe_a.setup_net_device(queues, size, bits(Feature.VERSION_1, Feature.INDIRECT_DESC), mem=mem_a,
                                      ring_region=0, buf_region=1, packed=packed)
        dev_b = fe_b.setup_net_device(queues, size, bits(Feature.VERSION_1, Feature.MRG_RXBUF, Feature.EVENT_IDX),
                                      packed=packed)
        rep.check(dev_b.has(Feature.MRG_RXBUF) and dev_b.rx(0).mrg_rxbuf and dev_b.rx(0).event_idx,
                  f"{kind}phase2: MRG_RXBUF and EVENT_IDX negotiated on B")
        seq = 100000
        buf = 256
        for q in range(queues):
            tx, rx = dev_a.tx(q), dev_b.rx(q)
            cases: list[tuple[str, list[int], dict[str, Any], dict[str, Any]]] = [
                ("MRG_RXBUF 256-byte buffers, TX from GPA 4 GiB", [SIZES[i % len(SIZES)] for i in range(21)], {}, {}),
                ("MRG_RXBUF jumbo frames", [1515, 2048, 4000, 9000], {"split": [12, 1000]}, {}),
                ("MRG_RXBUF + indirect TX", [SIZES[i % len(SIZES)] for i in range(14)],
                 {"indirect": True, "split": [12, 20]}, {}),
                ("MRG_RXBUF into 2-descriptor RX chains", [SIZES[i % len(SIZES)] for i in range(14)],
                 {}, {"sizes": [12, buf - 12]} if packed else {"descs_per_chain": 2}),
            ]
            for what, sizes, tx_kw, rx_kw in cases:
                # Exactly the buffers the frames need: all must be used, none left over.
                rx.post_rx(sum(-(-(n + rx.hdr_len) // buf) for n in sizes), buf, **rx_kw)
                frames = [make_frame(seq + i, n, q) for i, n in enumerate(sizes)]
                seq += len(sizes)
                exchange(rep, tx, rx, frames, f"{kind}q{q} {what}", mrg_buf_len=buf, **tx_kw)
                rep.check(not rx.inflight, f"{kind}q{q} {what}: all RX buffers consumed", f"{len(rx.inflight)} left")
            rep.check({mem_a.region_of(tx.desc_gpa).gpa, mem_a.region_of(tx.used_gpa).gpa} == {0},
                      f"{kind}q{q} phase2: rings live in region 0")
        if packed:
            # Enough more traffic that every TX ring wraps twice (check_bases).
            for q in range(queues):
                tx, rx = dev_a.tx(q), dev_b.rx(q)
                for _ in range(-(-2 * size // 40)):
                    sizes = [SIZES[i % len(SIZES)] for i in range(20)]
                    rx.post_rx(sum(-(-(n + rx.hdr_len) // buf) for n in sizes), buf)
                    frames = [make_frame(seq + i, n, q) for i, n in enumerate(sizes)]
                    seq += len(sizes)
                    got = exchange(Report(), tx, rx, frames, "wrap", mrg_buf_len=buf, split=[12])
                    if [g.frame for g in got] != frames:
                        rep.check(False, f"{kind}q{q} phase2: laps of 2-descriptor TX chains arrive intact")
                        break
                else:
                    rep.check(True, f"{kind}q{q} phase2: laps of 2-descriptor TX chains arrive intact")
        if packed:
            for q in range(queues):
                used_event_check(rep, dev_a.tx(q), dev_b.rx(q), seq + 1000 * q)
        check_bases(rep, dev_a, dev_a.stop(), f"{kind}phase2")
        rep.check(packed or all(dev_b.rx(q).interrupts > 0 for q in range(queues)),
                  f"{kind}phase2: RX call eventfds fired with EVENT_IDX (used_event)",
                  str([dev_b.rx(q).interrupts for q in range(queues)]))
        rep.check(pmd.alive(), f"{kind}phase2: testpmd still running")
    finally:
        for dev, fe in ((dev_a, fe_a), (dev_b, fe_b)):
            if dev is not None:
                dev.close()
            else:
                fe.close()
        mem_a.close()


def phase3(rep: Report, pmd: TestPmd, queues: int) -> None:
    """Packed only: a tiny odd ring where nearly every batch crosses the ring's end,
    then a restart at the position GET_VRING_BASE reported."""
    size = PACKED_RING[3]
    feats = bits(Feature.VERSION_1, Feature.INDIRECT_DESC)
    fe_a = VhostUserFrontend(pmd.sock0)
    fe_b = VhostUserFrontend(pmd.sock1)
    dev_a = dev_b = None
    try:
        dev_a = fe_a.setup_net_device(queues, size, feats, packed=True)
        dev_b = fe_b.setup_net_device(queues, size, feats, packed=True)
        seq = 200000
        for q in range(queues):
            tx, rx = dev_a.tx(q), dev_b.rx(q)
            cases: list[tuple[str, int, dict[str, Any], dict[str, Any]]] = [
                ("3-descriptor TX, 2-descriptor RX", 3, {"split": [12, 20]}, {"sizes": [12, 2036]}),
                ("4-descriptor TX, 1-descriptor RX", 3, {"split": [5, 7, 30]}, {}),
                ("indirect TX, indirect RX", 6, {"indirect": True, "split": [12]},
                 {"descs_per_chain": 3, "indirect": True}),
                ("single descriptors, full ring", size, {}, {}),
            ]
            for what, n, tx_kw, rx_kw in cases:
                ok = True
                for _ in range(3 * size):  # many laps, each batch starting one slot later
                    rx.post_rx(n, 2048, **rx_kw)
                    frames = [make_frame(seq + i, SIZES[(seq + i) % len(SIZES)], q) for i in range(n)]
                    seq += n
                    sub = Report()
                    exchange(sub, tx, rx, frames, what, **tx_kw)
                    if sub.failed:
                        rep.check(False, f"packed phase3 q{q} {what}", "; ".join(sub.failed[:3]))
                        ok = False
                        break
                if ok:
                    rep.check(True, f"packed phase3 q{q} {what}: {3 * size} batches over {tx.laps} laps intact")
        # Stop where the busy rings' wrap counters are 0, so that the restart
        # below resumes in the second lap.
        for q in range(queues):
            for _ in range(2 * size):
                if dev_a.tx(q).avail_wrap == 0 and dev_b.rx(q).avail_wrap == 0:
                    break
                dev_b.rx(q).post_rx(1, 2048)
                exchange(rep, dev_a.tx(q), dev_b.rx(q), [make_frame(seq, 64, q)], "packed phase3 to lap 2")
                seq += 1
        bases = dev_a.stop()
        check_bases(rep, dev_a, bases, "packed phase3")
        # Restart: the same rings resume where GET_VRING_BASE said, as QEMU's
        # vhost_virtqueue_start does after a stop (DPDK closed kick and call fds).
        dev_b.stop()
        for dev in (dev_a, dev_b):
            fe = dev.frontend
            for r in dev.rings:
                fe.set_vring_num(r.index, r.num)
                fe.set_vring_base(r.index, r.vring_base())
                fe.set_vring_addr_of(r)
                fe.set_vring_kick(r.index, r.kick_fd)
                fe.set_vring_call(r.index, r.call_fd)
                fe.set_vring_enable(r.index, True)
            fe.sync()
        wraps = sorted({r.avail_wrap for q in range(queues) for r in (dev_a.tx(q), dev_b.rx(q))})
        for q in range(queues):
            frames = [make_frame(seq + i, SIZES[i % len(SIZES)], q) for i in range(2 * size)]
            seq += len(frames)
            for i in range(0, len(frames), 4):
                dev_b.rx(q).post_rx(len(frames[i:i + 4]), 2048)
                exchange(rep, dev_a.tx(q), dev_b.rx(q), frames[i:i + 4],
                         f"packed phase3 q{q} after restart at wrap counters {wraps}, batch {i // 4}",
                         split=[12])
        rep.check(pmd.alive(), "packed phase3: testpmd still running")
    finally:
        for dev, fe in ((dev_a, fe_a), (dev_b, fe_b)):
            if dev is not None:
                dev.close()
            else:
                fe.close()


def run(queues: int, rep: Report, cpu: int | None, keep: bool, rings: list[str]) -> None:
    print(f"== testpmd vhost PMD, queues={queues}, rings {' '.join(rings)}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"fe-selfcheck-q{queues}-"))
    pmd = TestPmd(workdir, queues, cpu)
    try:
        pmd.wait_ready()
        for kind in rings:
            packed = kind == "packed"
            phase1(rep, pmd, queues, packed)
            phase2(rep, pmd, queues, packed)
            if packed:
                phase3(rep, pmd, queues)
        pmd.stop()
        rep.check(pmd.dropped() == 0, f"queues={queues}: testpmd dropped no frame", f"TX-dropped {pmd.dropped()}")
    finally:
        pmd.stop()
        if keep:
            print(f"  log: {pmd.log_path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queues", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rings", nargs="+", choices=["split", "packed"], default=["split", "packed"])
    ap.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1,
                    help="CPU to pin testpmd to (-1: no pinning)")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if not os.access(TESTPMD, os.X_OK):
        print(f"SKIP: {TESTPMD} not installed")
        return 77
    rep = Report(verbose=args.verbose)
    for q in args.queues:
        run(q, rep, None if args.cpu < 0 or not shutil.which("taskset") else args.cpu, args.keep_logs, args.rings)
    print(f"== {len(rep.passed)} checks passed, {len(rep.failed)} failed")
    for f in rep.failed:
        print("  FAIL " + f)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
