"""Random hostile rings against a live vswitchd (what hurt other back-ends: unchecked
translation CVE-2020-10725, tiny chains CVE-2022-2132, loops, index truncation).

One daemon for the module, three ports with static MACs: a healthy pair a<->b
and a hostile guest h driven by tests/harness/frontend. For each hypothesis example h
is reset (RESET_DEVICE + a fresh start sequence) and then
* its TX ring gets random chains: descriptors with addresses at, across and
  beyond region edges and 2**64, lengths 0..2**32-1, random flags and next
  indices (loops, out of range), indirect tables, the Hostile recipes, valid
  frames in between, and sometimes a wild avail index;
* its RX ring gets random hostile buffers among good ones while a sends to it.
After each example: the daemon lives, h is still connected, every TX chain h
offered is counted once - as a packet or as a drop by reason (or the ring is
marked broken after a wild index) - every frame a sent to h is delivered or
counted as an RX drop, and a and b exchange frames byte for byte in both
directions. At the end the daemon's fd count (/proc/<pid>/fd) and VmRSS have
not grown beyond a small bound.

About half the TX and RX phases also run a concurrent writer
(tests/harness/racer.c, a second vCPU of h, in C) while the switch works on
h's rings: random stores or bit blinks over h's descriptor tables, avail
ring entries, used rings and buffers, a descriptor field flipping between
its value and a hostile one, or avail->idx flipping to a wild value - what
the switch reads twice may differ. The invariants stay (the ring is marked
broken or every chain is counted once, no-one else notices), and h has port
security: whatever the racer writes, nothing with a source MAC other than
h's reaches a or b.

Runs a daemon: use the shared lock, flock /tmp/vswitch-heavy.lock.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.harness.frontend import Desc, Hostile, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from tests.harness.racer import Racer, bits, flip, rand
from tests.harness.switch import Vswitchd
from tests.harness.traffic import FULL, MAC, connect, exchange_by_name

H_MAC = bytes([0x02, 0, 0, 0, 0, 0x10])
MACS = {"a": MAC["a"], "b": MAC["b"], "h": H_MAC}
RECIPES = ["addr_outside_memory", "straddle_end_of_memory", "len_overflow_64", "len_overflow_32",
           "zero_length", "short_header", "wrong_direction", "write_before_read", "loop",
           "next_out_of_range", "head_out_of_range", "indirect_bad_len", "indirect_zero_len",
           "indirect_outside_memory", "indirect_nested", "indirect_with_next", "indirect_loop",
           "indirect_next_out_of_table", "indirect_too_long"]
RX_RECIPES = ["addr_outside_memory", "loop", "wrong_direction", "indirect_outside_memory", "zero_length",
              "straddle_end_of_memory", "next_out_of_range", "indirect_loop"]


def vm_rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Hostile_port:
    def __init__(self, sw: Vswitchd) -> None:
        self.sw = sw
        self.dev = connect(sw, "h", rx_buffers=0)

    def reset(self):
        fe = self.dev.frontend
        fe.reset_device()
        for r in self.dev.rings:
            r.close()
        self.dev.mem.close()
        self.dev = fe.setup_net_device(1, 64, FULL)
        return self.dev


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzzrings")
    ports = {name: {"type": "vhost-user", "queues": 1, "mac": ":".join(f"{x:02x}" for x in mac)}
             for name, mac in MACS.items()}
    # port security on the hostile guest: a racer that rewrites a source MAC
    # between the check and the copy must not get the rewritten one out
    ports["h"]["allowed_macs"] = [ports["h"]["mac"]]
    with Vswitchd(tmp, ports, workers=1) as sw:
        a = connect(sw, "a", rx_buffers=256)
        b = connect(sw, "b", rx_buffers=256)
        h = Hostile_port(sw)
        exchange_by_name(a, b, "a", "b")
        exchange_by_name(b, a, "b", "a")
        # warm up (first connection allocates), then take the baseline
        h.reset()
        time.sleep(0.2)
        base = (sw.fd_count(), vm_rss_kb(sw.proc.pid))
        yield sw, a, b, h, base
        fds, rss = sw.fd_count(), vm_rss_kb(sw.proc.pid)
        assert sw.alive()
        assert fds <= base[0], f"daemon fds grew {base[0]} -> {fds}"
        assert rss <= base[1] + 16 * 1024, f"daemon VmRSS grew {base[1]} -> {rss} kB"


# Drops of frames the switch had already taken from the TX ring (and counted
# in `packets`): port security, VLAN filter, policers, forwarding. A chain is
# counted once as a packet or as one of the other reasons.
AFTER_DEQUEUE = {"spoofed_source", "vlan_filtered", "storm_control", "rate_limited", "same_port",
                 "no_rx_queue", "over_budget"}


def counters(sw, port, direction, chains: bool = False):
    """packets, frames dropped, drops by reason, broken. `ring_broken` counts a
    ring that stopped, not a frame (an RX frame that meets a head outside the
    ring is an rx_bad_chain drop, and the ring breaks as well). `chains`: only
    the drops of chains that never became packets."""
    q = sw.port(port)["queues"][0][direction]
    skip = {"ring_broken"} | (AFTER_DEQUEUE if chains else set())
    frames = sum(n for reason, n in q["drops"].items() if reason not in skip)
    return q["packets"], frames, q["drops"], q["broken"]


EDGE_LENS = [0, 1, 4, 11, 12, 13, 26, 60, 64, 2048, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def raw_chain(draw, mem_end: int, buf: int, num: int):
    """Descriptors for one chain, unlinked: flags and next are the fuzzer's."""
    n = draw(st.integers(1, 4))
    out = []
    for _ in range(n):
        addr = draw(st.sampled_from([buf, buf + 1, buf + 0xFFF, mem_end - 64, mem_end - 1, mem_end,
                                     mem_end + 0x1000, 0, 2**64 - 0x100, 2**64 - 1, 2**32, 2**63]))
        length = draw(st.sampled_from(EDGE_LENS))
        flags = draw(st.sampled_from([0, 0, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT,
                                      VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT, 0xFFFF]))
        nxt = draw(st.sampled_from([0, 1, num - 1, num, num + 1, 0xFFFF]))
        out.append(Desc(addr, length, flags, nxt))
    return out


CHAIN = st.one_of(
    st.tuples(st.just("valid"), st.sampled_from([None, [12], [5, 40], "indirect"])),
    st.tuples(st.just("recipe"), st.sampled_from(RECIPES)),
    st.tuples(st.just("raw"), st.integers(0, 2**32 - 1)),
)


# --- the concurrent writer ---------------------------------------------------------------
# Targets of the racer: parts of h's rings and buffers (GPA ranges, see race_specs).
TX_RACE = ["tx_desc", "tx_avail_ring", "tx_used", "bufs", "desc_field", "tx_avail_idx"]
RX_RACE = ["rx_desc", "rx_avail_ring", "rx_used", "bufs", "desc_field"]
DESC_FIELDS = {"addr": (0, 8), "len": (8, 4), "flags": (12, 2), "next": (14, 2)}
HOSTILE_FIELD = {
    "addr": [0, 2**64 - 0x100, 2**64 - 1, 2**32, 2**63, 1 << 40],
    "len": [0, 1, 11, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF],
    "flags": [0, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT,
              VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT, 0xFFFF],
    "next": [0, 1, 63, 64, 0x8000, 0xFFFF],
}


def race_specs(data, ring, lo: int, targets: list[str], label: str) -> tuple[list[str], bool]:
    """Racer specs for h's `ring` and its buffers (from GPA `lo` up to the
    highest allocation); True if avail->idx is raced."""
    mem = ring.mem
    region = mem.regions[0]
    shift = region.mmap_offset - region.gpa         # memfd offset of a GPA
    mode = data.draw(st.sampled_from([rand, bits]), label=f"{label} mode")
    hi = max(g + n for g, (_, _, n) in mem._allocs.items())
    spans = {"desc": (ring.desc_gpa, 16 * ring.num), "avail_ring": (ring.avail_gpa + 4, 2 * ring.num),
             "used": (ring.used_gpa, 4 + 8 * ring.num + 2), "bufs": (lo, hi - lo)}
    specs, idx = [], False
    for t in targets:
        if t == "desc_field":
            in_use = sorted(set(range(ring.num)) - set(ring.free_descs)) or [0]
            for _ in range(data.draw(st.integers(1, 3), label=f"{label} fields")):
                slot = data.draw(st.sampled_from(in_use), label=f"{label} slot")
                name = data.draw(st.sampled_from(sorted(DESC_FIELDS)), label=f"{label} field")
                off, size = DESC_FIELDS[name]
                gpa = ring.desc_gpa + 16 * slot + off
                now = mem.read(gpa, size)
                bad = data.draw(st.sampled_from(HOSTILE_FIELD[name]), label=f"{label} value")
                specs.append(flip(gpa + shift, now, bad.to_bytes(size, "little"),
                                  bit=data.draw(st.integers(0, 3), label=f"{label} bit")))
        elif t == "tx_avail_idx":
            gpa = ring.avail_gpa + 2
            wild = data.draw(st.sampled_from([1, 2, ring.num, ring.num + 1, 0x8000, 0xFFFF]), label="idx delta")
            # between the index being published (the racer leaves it there) and a wild one
            specs.append(flip(gpa + shift, ring.avail_idx.to_bytes(2, "little"),
                              ((ring.avail_idx + wild) & 0xFFFF).to_bytes(2, "little")))
            idx = True
        else:
            gpa, n = spans[t.split("_", 1)[1] if t != "bufs" else "bufs"]
            specs.append(mode(gpa + shift, n))
    return specs, idx


def start_racer(data, ring, lo: int, label: str, targets_from: list[str]) -> tuple[Racer | None, bool]:
    targets = data.draw(st.one_of(st.just([]), st.lists(st.sampled_from(targets_from), min_size=1,
                                                          max_size=3, unique=True)), label=label)
    if not targets:
        return None, False
    specs, idx = race_specs(data, ring, lo, targets, label)
    seed = data.draw(st.integers(1, 2**63), label=f"{label} seed")
    return Racer(ring.mem.regions[0].fd, specs, limit_s=10, seed=seed).start(), idx


def race_for(racer: Racer | None, settled, limit: float = 0.3) -> None:
    """Let the racer run until `settled()` or `limit` seconds, then stop it (flips back to their values)."""
    if racer is None:
        return
    start = time.monotonic()
    while time.monotonic() - start < limit and (time.monotonic() - start < 0.02 or not settled()):
        time.sleep(0.005)
    racer.stop()


def drain_foreign(dev, timeout: float = 0.05) -> list[bytes]:
    """Frames waiting in a healthy port's RX ring (buffers given back)."""
    got = []
    while True:
        frames = dev.rx(0).recv_frames(64, timeout=timeout)
        if not frames:
            return got
        dev.rx(0).post_rx(len(frames), 2048)
        got.extend(g.frame for g in frames)


# No shrinking: each example costs a device reset on a live daemon; the
# failure report prints every draw, which is enough to replay it.
@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(st.data())
def test_random_tx_and_rx_rings_cost_nobody_else(rig, data):
    sw, a, b, hp, _ = rig
    dev = hp.reset()
    tx, rx = dev.tx(0), dev.rx(0)
    mem = dev.mem
    buf = mem.alloc(4096)
    mem.write(buf, bytes(12) + MAC["b"] + H_MAC + b"\x88\xb5" + bytes(50))   # raw chains may point here
    chains = data.draw(st.lists(CHAIN, min_size=1, max_size=8), label="tx chains")
    # a jump of more than the ring size past what the device processed (delta counts from there)
    wild = data.draw(st.sampled_from([None] * 6 + [tx.num + 1, 0x8000, 0xFFF0]), label="wild avail")
    posted = 0
    for kind, arg in chains:
        if kind == "valid":
            f = MAC["b"] + H_MAC + b"\x88\xb5" + bytes(46)     # to b: b's FDB entry is static
            if arg == "indirect":
                tx.post_tx(f, indirect=True, publish=False, kick=False)
            else:
                tx.post_tx(f, split=arg, publish=False, kick=False)
        elif kind == "recipe":
            getattr(Hostile(tx), arg)(publish=False, kick=False)
        else:
            descs = data.draw(raw_chain(mem.end, buf, tx.num), label="raw descs")
            Hostile(tx).chain(descs, link=data.draw(st.booleans(), label="link"), publish=False, kick=False)
        posted += 1
    before = counters(sw, "h", "tx", chains=True)
    if wild is not None:
        tx.set_avail_idx(wild)          # avail idx = wild, the device is at 0: wild > num entries
    racer, idx_raced = start_racer(data, tx, buf, "tx racer", TX_RACE)
    try:
        tx.publish(kick=True)

        def tx_settled() -> bool:
            pk, dr, _, broken = counters(sw, "h", "tx", chains=True)
            return broken or pk + dr - before[0] - before[1] >= posted
        race_for(racer, tx_settled)
    finally:
        if racer is not None:
            racer.stop()
    if idx_raced:
        tx.kick()       # avail->idx is back at its value: the device looks at it once more

    deadline = time.monotonic() + 10
    while True:
        pk, dr, drops, broken = counters(sw, "h", "tx", chains=True)
        if (broken and (wild is not None or idx_raced)) or pk + dr - before[0] - before[1] >= posted:
            break
        assert time.monotonic() < deadline, (chains, posted, before, (pk, dr, drops, broken),
                                             sw.port("h")["queues"][0]["tx"], tx.avail_idx_in_memory())
        time.sleep(0.02)
    if wild is None and not idx_raced:
        # descriptors, avail entries, buffers rewritten under the device: each chain still counted once
        assert pk + dr - before[0] - before[1] == posted, (chains, before, (pk, dr, drops))
        assert not broken
    elif wild is None:
        # avail->idx seen wild for a while: the device stopped the ring, or it took what
        # was offered and counted each once
        if not broken:
            time.sleep(0.1)
            pk, dr, drops, broken = counters(sw, "h", "tx", chains=True)
        assert broken or pk + dr - before[0] - before[1] == posted, (chains, before, (pk, dr, drops))
    else:
        # avail->idx at rest is wild: the device stops the ring when it looks
        # again (a racer may have let it take the chains first, then the
        # kick above makes it look once more)
        deadline = time.monotonic() + 10
        while not broken:
            assert time.monotonic() < deadline, ("ring not stopped", chains, (pk, dr, drops))
            time.sleep(0.02)
            pk, dr, drops, broken = counters(sw, "h", "tx", chains=True)
        assert drops.get("ring_broken", 0) >= 1

    # RX: hostile buffers mixed with good ones; a sends to h
    rx_plan = data.draw(st.lists(st.sampled_from(RX_RECIPES + ["good"] * 3), min_size=1, max_size=6),
                        label="rx buffers")
    for r in rx_plan:
        if r == "good":
            rx.post_rx(1, 2048, publish=False, kick=False)
        else:
            getattr(Hostile(rx), r)(publish=False, kick=False)
    rbefore = counters(sw, "h", "rx")
    abefore = counters(sw, "a", "tx")
    n = len(rx_plan)

    def rx_done() -> int:
        rpk, rdr, _, _ = counters(sw, "h", "rx")
        _, adr, _, _ = counters(sw, "a", "tx")
        return (rpk - rbefore[0]) + (rdr - rbefore[1]) + (adr - abefore[1])
    racer, _ = start_racer(data, rx, buf, "rx racer", RX_RACE)
    try:
        rx.publish(kick=True)
        for i in range(n):
            a.tx(0).post_tx(H_MAC + MAC["a"] + b"\x88\xb5" + i.to_bytes(4, "big") + bytes(42))
        race_for(racer, lambda: rx_done() >= n)
    finally:
        if racer is not None:
            racer.stop()
    deadline = time.monotonic() + 10
    while True:
        rpk, rdr, rdrops, _ = counters(sw, "h", "rx")
        apk, adr, adrops, _ = counters(sw, "a", "tx")
        done = (rpk - rbefore[0]) + (rdr - rbefore[1]) + (adr - abefore[1])
        if done >= n:
            break
        assert time.monotonic() < deadline, (rx_plan, rbefore, rdrops, adrops)
        time.sleep(0.02)
    assert done == n, (rx_plan, rdrops, adrops)
    # a raced hostile buffer may pass for a good one at the moment it is read
    assert rpk - rbefore[0] <= (n if racer is not None else rx_plan.count("good"))

    # nothing else noticed, and nothing but h's own source MAC left h
    assert sw.alive() and hp.dev.frontend.connected()
    for peer in (a, b):
        foreign = [f[:14].hex() for f in drain_foreign(peer) if f[6:12] not in (MAC["a"], MAC["b"], H_MAC)]
        assert not foreign, f"frames from h with another source reached a peer: {foreign[:5]}"
    exchange_by_name(a, b, "a", "b", n=3)
    exchange_by_name(b, a, "b", "a", n=3)
    assert set(sw.drops("a")) <= {"no_rx_queue"}      # only frames a sent to h, counted above
    assert sw.drops("b") == {}
