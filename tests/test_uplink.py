"""The TAP uplink against the Linux kernel: a TAP created by the switch is moved
into a network namespace with an address; a QEMU guest (two queue pairs)
pings it both ways and runs iperf3 to and from it; DPDK testpmd's virtio-user
exchanges frames with the kernel; oversized frames are dropped with their
reason; a deleted TAP is re-created by the switch. A burst of frames of mixed
sizes reaches the kernel whole and in order with either way of writing into
the TAP (a burst per io_uring_enter, or a write per frame).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.harness.frontend import Feature, VirtioNetHdr, bits
from tests.harness.guests import QemuGuest
from tests.harness.linux.netns import NetNs, link_exists, snmp
from tests.harness.packets import partial, tcp_frame
from tests.harness.peers.testpmd import TestPmd, virtio_user_vdev
from tests.harness.switch import Vswitchd
from tests.harness.traffic import ETHERTYPE, FULL, wait_until
from tests.harness.traffic import connect as connect_device

pytestmark = pytest.mark.root

BOOT_TIMEOUT = 240
GUEST_IP, HOST_IP = "10.8.0.1", "10.8.0.254"


@pytest.fixture(scope="module")
def uplink(tmp_path_factory, image):
    work = tmp_path_factory.mktemp("uplink")
    ifname = f"vsu{os.getpid() % 100000}"
    ns = NetNs(f"vsu{os.getpid()}").create()
    sw = Vswitchd(work / "switch", {
        "up": {"type": "tap", "ifname": ifname, "queues": 2, "mtu": 1500},
        "vm": {"type": "vhost-user", "queues": 2},
        "pmd": {"type": "vhost-user", "queues": 1},
    })
    guest = None
    try:
        sw.start()
        wait_until(lambda: link_exists(ifname), 30, "TAP created")

        def plug() -> None:
            ns.move_in(ifname)
            # a fixed MAC: after a re-creation the guest's ARP entry stays right
            ns.ip("link", "set", ifname, "address", "02:00:00:00:08:fe")
            ns.ip("addr", "add", f"{HOST_IP}/24", "dev", ifname)
            ns.ip("link", "set", ifname, "up")
        plug()
        guest = QemuGuest("g", image, sw.socket("vm"), mac="52:54:00:00:08:01", ip=f"{GUEST_IP}/24",
                          queues=2, smp=2, workdir=work / "g")
        guest.start()
        guest.wait_booted(BOOT_TIMEOUT)
        sw.wait_port("vm", lambda p: p["queues_enabled"] == 2, timeout=60, what="2 queue pairs")
        yield sw, ns, guest, ifname, plug
    finally:
        if guest:
            guest.stop()
        sw.stop()
        ns.delete()


@pytest.mark.qemu
def test_guest_and_kernel_ping_both_ways(uplink):
    sw, ns, guest, ifname, _ = uplink
    r = guest.ping(HOST_IP, count=20, interval=0.2)
    assert (r.sent, r.loss_pct) == (20, 0), r
    out = ns.run(["ping", "-c", "20", "-i", "0.2", "-W", "2", GUEST_IP]).stdout
    assert " 0% packet loss" in out, out


@pytest.mark.qemu
def test_iperf3_to_and_from_the_kernel_with_offloads_and_no_checksum_errors(uplink):
    sw, ns, guest, ifname, _ = uplink
    ns_before = ns.run(["cat", "/proc/net/snmp"]).stdout
    guest_before = guest.check_output("cat /proc/net/snmp")
    ns.run(["iperf3", "-s", "-D", "-1"])
    time.sleep(0.5)
    up = guest.iperf3_client(HOST_IP, seconds=5)
    ns.run(["iperf3", "-s", "-D", "-1"])
    time.sleep(0.5)
    down = guest.iperf3_client(HOST_IP, seconds=5, reverse=True)
    print(f"\nguest->kernel {up.gbps:.2f} Gbit/s, kernel->guest {down.gbps:.2f} Gbit/s")
    assert up.received_bps > 10e6 and down.received_bps > 10e6
    ns_after = ns.run(["cat", "/proc/net/snmp"]).stdout
    guest_after = guest.check_output("cat /proc/net/snmp")
    for before, after in ((ns_before, ns_after), (guest_before, guest_after)):
        assert snmp(after, "Tcp", "InCsumErrors") == snmp(before, "Tcp", "InCsumErrors")
    port = sw.port("up")
    # GSO frames of the guest's TSO reached the kernel whole (judged by their
    # segment size against the MTU, not their length) and the kernel's came back
    assert sum(q["rx"]["offload"]["gso_passthrough"] for q in port["queues"]) > 0
    assert sum(q["rx"]["packets"] for q in port["queues"]) > 1000
    assert sum(q["tx"]["packets"] for q in port["queues"]) > 1000
    assert "mtu_exceeded" not in sw.drops("up")


@pytest.mark.qemu
def test_frames_over_the_mtu_are_dropped_with_their_reason(uplink):
    sw, ns, guest, ifname, _ = uplink
    before = sw.drops("up").get("mtu_exceeded", 0)
    guest.check_output("ip link set eth0 mtu 4000")
    try:
        rc, out = guest.run(f"ping -c 3 -W 1 -s 3000 {HOST_IP}", timeout=60)
        assert rc != 0 and " 100% packet loss" in out, out
    finally:
        guest.check_output("ip link set eth0 mtu 1500")
    assert sw.drops("up").get("mtu_exceeded", 0) - before >= 3
    r = guest.ping(HOST_IP, count=3, interval=0.2)       # normal frames still pass
    assert r.loss_pct == 0


@pytest.mark.dpdk
@pytest.mark.qemu
def test_testpmd_virtio_user_exchanges_frames_with_the_kernel(uplink, tmp_path):
    sw, ns, guest, ifname, _ = uplink

    def kernel_rx() -> int:
        return int(ns.run(["cat", f"/sys/class/net/{ifname}/statistics/rx_packets"]).stdout)

    with TestPmd([virtio_user_vdev(0, sw.socket("pmd"))], cpus=(0,), total_mbufs=8192,
                 forward_mode="rxonly", workdir=tmp_path) as tp:
        tp.wait_links_up([0], timeout=30)
        sw.wait_port("pmd", lambda p: p["queues_enabled"] == 1, timeout=30, what="pmd enabled")
        tp.start_fwd()
        # kernel -> testpmd: ARP requests for an absent host are broadcast to every port
        # (the kernel sends one ARP request a second)
        ns.run(["ping", "-c", "4", "-i", "1", "-W", "1", "10.8.0.77"], check=False)
        received = tp.port_stats()[0].rx_packets
        assert received >= 2, received
        # testpmd -> kernel: txonly frames (to an unknown MAC: flooded to the uplink too)
        before = kernel_rx()
        tp.stop_fwd()
        tp.set_fwd("txonly")
        tp.start_fwd()
        time.sleep(1)
        tp.stop_fwd()
        sent = tp.port_stats()[0].tx_packets
    delivered = kernel_rx() - before
    assert sent > 1000 and delivered > 1000, (sent, delivered)
    print(f"\ntestpmd sent {sent}, the kernel received {delivered}")


@pytest.mark.qemu
def test_deleted_tap_is_reported_and_recreated(uplink):
    sw, ns, guest, ifname, plug = uplink
    before = sw.port("up")
    ns.ip("link", "del", ifname)
    port = sw.wait_port("up", lambda p: p["disconnects"] == before["disconnects"] + 1
                        and p["connections"] == before["connections"] + 1, timeout=30,
                        what="TAP loss seen and the device re-created")
    assert "disappeared" in port["last_error"]
    assert sw.port("vm")["disconnects"] == 0          # the guest's port never noticed
    wait_until(lambda: link_exists(ifname), 30, "TAP re-created in the switch's namespace")
    plug()
    r = guest.ping(HOST_IP, count=10, interval=0.3)
    assert r.received >= 8, r                        # ARP settles within the first replies


# --- how frames are written into the TAP -----------------------------------------------------

TAP_MAC = bytes.fromhex("0200000008fe")
FE_MAC = bytes.fromhex("020000000811")
# A packet socket in the namespace: prints each frame of our ethertype that the
# kernel received on the TAP, in arrival order, as "TCI HEX": the kernel takes
# an 802.1Q tag off into metadata (TCI, "-" if untagged) before sockets see it.
RECEIVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
s.setsockopt(263, 8, 1)                                                  # PACKET_AUXDATA
s.bind((sys.argv[1], 0))
s.settimeout(10)
print("ready", flush=True)
n = 0
while n < int(sys.argv[2]):
    try:
        data, anc, _, addr = s.recvmsg(65536, socket.CMSG_SPACE(20))
    except socket.timeout:
        break
    if addr[2] == socket.PACKET_OUTGOING or data[12:14] != b"\x88\xb5":
        continue
    tci = "-"
    for level, kind, aux in anc:
        status, _, _, _, _, vlan_tci, _ = struct.unpack("IIIHHHH", aux[:20])
        if level == 263 and kind == 8 and status & 0x10:                 # TP_STATUS_VLAN_VALID
            tci = str(vlan_tci)
    print(tci, data.hex(), flush=True)
    n += 1
"""
# Small frames (<= 256 bytes) are staged in the worker's buffers, larger ones
# are written from the guest's: runs of both in every burst.
SIZES = [60, 60, 128, 256, 257, 1514, 64, 200, 1000, 60]


IO_URING_SYSCTL = "/proc/sys/kernel/io_uring_disabled"


@pytest.fixture(scope="module", params=["io_uring", "write", "io_uring-unavailable"])
def tap_only(request, tmp_path_factory):
    """A switch with a TAP (in a namespace, up) and a port for the test
    front-end, writing into the TAP with datapath.tap_io = the param;
    "io_uring-unavailable" asks for io_uring on a host that forbids it
    (sysctl kernel.io_uring_disabled = 2 while the daemon starts)."""
    work = tmp_path_factory.mktemp(f"tapio-{request.param}")
    ifname = f"vst{os.getpid() % 100000}"
    ns = NetNs(f"vst{os.getpid()}").create()
    sw = Vswitchd(work / "switch", {
        "up": {"type": "tap", "ifname": ifname, "queues": 1, "mtu": 1500},
        "fe": {"type": "vhost-user", "queues": 1},
    }, extra={"datapath": {"workers": 1, "tap_io": request.param.split("-")[0]}})
    try:
        if request.param == "io_uring-unavailable":
            with open(IO_URING_SYSCTL) as f:
                saved = f.read()
            with open(IO_URING_SYSCTL, "w") as f:
                f.write("2\n")
            try:
                sw.start()
            finally:
                with open(IO_URING_SYSCTL, "w") as f:
                    f.write(saved)
        else:
            sw.start()
        wait_until(lambda: link_exists(ifname), 30, "TAP created")
        ns.move_in(ifname)
        ns.ip("link", "set", ifname, "address", TAP_MAC.hex(":"))
        ns.ip("link", "set", ifname, "up")
        yield sw, ns, ifname, request.param
    finally:
        sw.stop()
        ns.delete()


def test_a_burst_of_mixed_sizes_reaches_the_kernel_whole_and_in_order(tap_only):
    sw, ns, ifname, tap_io = tap_only
    bursts, per_burst = 3, 30
    sent = []
    for i in range(bursts * per_burst):
        size = SIZES[i % len(SIZES)]
        head = TAP_MAC + FE_MAC + ETHERTYPE + i.to_bytes(4, "big")
        sent.append(head + bytes((i * 7 + k) & 0xFF for k in range(size - len(head))))
    kernel_rx = f"/sys/class/net/{ifname}/statistics/rx_packets"
    rx_before = int(ns.run(["cat", kernel_rx]).stdout)
    workers_before = sw.ctl("stats")["workers"]
    receiver = ns.popen([sys.executable, "-c", RECEIVER, ifname, str(len(sent))],
                        stdout=subprocess.PIPE, text=True)
    dev = connect_device(sw, "fe", rx_buffers=64)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        for b in range(bursts):
            # one publish and one kick: the worker takes the burst in one round
            dev.tx(0).post_tx_frames(sent[b * per_burst:(b + 1) * per_burst])
            wait_until(lambda: dev.tx(0).pending_used() == per_burst, 10, "burst consumed")
            dev.tx(0).reap()
        out, _ = receiver.communicate(timeout=30)
    finally:
        dev.close()
        if receiver.poll() is None:
            receiver.kill()
    got = [line.split() for line in out.splitlines()]
    assert len(got) == len(sent)
    assert [bytes.fromhex(h) for _, h in got] == sent
    assert {tci for tci, _ in got} == {"-"}
    assert int(ns.run(["cat", kernel_rx]).stdout) - rx_before == len(sent)
    port = sw.port("up")
    assert sum(q["rx"]["packets"] for q in port["queues"]) == len(sent)
    assert not sw.drops("up")
    (before,), (after,) = workers_before, sw.ctl("stats")["workers"]
    if tap_io == "io_uring":
        assert after["tap_io"] == "io_uring"
        # every frame went through the ring, each burst in one system call
        assert after["tap_batched_writes"] - before["tap_batched_writes"] == len(sent)
        assert after["tap_batches"] - before["tap_batches"] == bursts
    elif tap_io == "write":
        assert after["tap_io"] == "write" and after["tap_batched_writes"] == 0
    else:
        # no io_uring on this host: one write per frame, and the operator is told why
        assert after["tap_io"] == "write (io_uring: Operation not permitted)"
        assert after["tap_batched_writes"] == 0
        assert "workers write into TAP queues one frame per syscall: write (io_uring: " \
               "Operation not permitted)" in sw.log_path.read_text()


def test_mtu_counts_the_ethernet_and_vlan_header_and_judges_gso_by_segment(tap_only):
    """MTU 1500: 1514 bytes untagged and 1518 with an 802.1Q tag reach the
    kernel, one byte more is dropped as mtu_exceeded; a TSO frame of 2 x 1448
    bytes of payload (2950 bytes in all) passes: its segments fit."""
    sw, ns, ifname, _ = tap_only

    def sized(n: int, tagged: bool = False) -> bytes:
        head = TAP_MAC + FE_MAC + (b"\x81\x00\x00\x05" if tagged else b"") + ETHERTYPE
        return head + bytes(n - len(head))

    payload = bytes(range(256)) * 11 + bytes(2896 - 2816)
    tso = TAP_MAC + FE_MAC + partial(tcp_frame(payload), 14, 34, False, 6, 16)[12:]
    tso_hdr = VirtioNetHdr(flags=1, gso_type=1, hdr_len=54, gso_size=1448, csum_start=34,
                           csum_offset=16)
    kernel_rx = f"/sys/class/net/{ifname}/statistics/rx_packets"
    rx_before = int(ns.run(["cat", kernel_rx]).stdout)
    drops_before = sw.drops("up").get("mtu_exceeded", 0)
    gso_before = sum(q["rx"]["offload"]["gso_passthrough"] for q in sw.port("up")["queues"])
    dev = connect_device(sw, "fe", rx_buffers=64,
                         features=FULL | bits(Feature.CSUM, Feature.HOST_TSO4))
    try:
        tx = dev.tx(0)
        for f in (sized(1514), sized(1515), sized(1518, True), sized(1519, True)):
            tx.post_tx(f, publish=False, kick=False)
        tx.post_tx(tso, hdr=tso_hdr, publish=False, kick=False)
        tx.publish(kick=True)
        wait_until(lambda: tx.pending_used() == 5, 10, "frames consumed")
        tx.reap()
        wait_until(lambda: int(ns.run(["cat", kernel_rx]).stdout) - rx_before >= 3, 10, "kernel rx")
    finally:
        dev.close()
    time.sleep(0.2)
    assert int(ns.run(["cat", kernel_rx]).stdout) - rx_before == 3
    assert sw.drops("up").get("mtu_exceeded", 0) - drops_before == 2
    assert sum(q["rx"]["offload"]["gso_passthrough"] for q in sw.port("up")["queues"]) - gso_before == 1


def test_a_burst_pushed_to_a_trunk_reaches_the_kernel_with_each_frames_tag(tmp_path):
    """An access port's priority-tagged frames, each with its own priority,
    leave through a trunk TAP tagged with the port's VLAN and their priority:
    each frame's tag, not the last one's (a burst goes to the kernel at once)."""
    ifname = f"vsv{os.getpid() % 100000}"
    with NetNs(f"vsv{os.getpid()}") as ns:
        sw = Vswitchd(tmp_path / "switch", {
            "up": {"type": "tap", "ifname": ifname, "mtu": 1500,
                   "vlan": {"mode": "trunk", "allowed": [10]}},
            "acc": {"type": "vhost-user", "vlan": {"mode": "access", "id": 10}},
        }, extra={"datapath": {"workers": 1, "tap_io": "io_uring"}})
        with sw:
            wait_until(lambda: link_exists(ifname), 30, "TAP created")
            ns.move_in(ifname)
            ns.ip("link", "set", ifname, "up")
            sent, expect = [], []
            for i in range(30):
                size = SIZES[i % len(SIZES)] - 4
                pcp = i % 8
                inner = TAP_MAC + FE_MAC + ETHERTYPE + i.to_bytes(4, "big")
                inner += bytes((i * 5 + k) & 0xFF for k in range(size - len(inner)))
                sent.append(inner[:12] + b"\x81\x00" + (pcp << 13).to_bytes(2, "big") + inner[12:])
                expect.append([str((pcp << 13) | 10), inner.hex()])
            receiver = ns.popen([sys.executable, "-c", RECEIVER, ifname, str(len(sent))],
                                stdout=subprocess.PIPE, text=True)
            dev = connect_device(sw, "acc", rx_buffers=64)
            try:
                assert receiver.stdout.readline().strip() == "ready"
                dev.tx(0).post_tx_frames(sent)
                out, _ = receiver.communicate(timeout=30)
            finally:
                dev.close()
                if receiver.poll() is None:
                    receiver.kill()
            assert [line.split() for line in out.splitlines()] == expect
            assert sw.ctl("stats")["workers"][0]["tap_batched_writes"] == len(sent)
