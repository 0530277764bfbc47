"""QEMU memory hot-plug (pc-dimm) while frames flow.

A guest gets 256 MiB more RAM (`object_add` + `device_add pc-dimm`, kernel
booted with memhp_default_state=online_kernel, so that the kernel's own
allocations - network buffers among them - may use it) while a peer pings it. With
CONFIGURE_MEM_SLOTS QEMU hands the switch the new region alone
(ADD_MEM_REG); without it, the whole table again (SET_MEM_TABLE). The guest
fills its boot memory beforehand, so that afterwards its network buffers can
only come from the new region, and an iperf3 stream into it must arrive with
no frame read from or written to memory the switch has not mapped
(bad_address drops).
"""

from __future__ import annotations

import re
import time

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 240
IP_P = "10.0.5.100"
GUESTS = {"slots": ("10.0.5.1", "52:54:00:00:05:01", True),
          "table": ("10.0.5.2", "52:54:00:00:05:02", False)}


@pytest.fixture(scope="module")
def rig(tmp_path_factory, image):
    work = tmp_path_factory.mktemp("hotplug")
    ports = {name: {"type": "vhost-user", "memory_slots": slots} for name, (_, _, slots) in GUESTS.items()}
    ports["peer"] = {"type": "vhost-user"}
    sw = Vswitchd(work / "switch", ports)
    sw.start()
    guests = {}
    try:
        for name, (ip, mac, _) in GUESTS.items():
            guests[name] = QemuGuest(name, image, sw.socket(name), mac=mac, ip=f"{ip}/24",
                                     maxmem="1G", append="memhp_default_state=online_kernel",
                                     workdir=work / name)
        guests["peer"] = QemuGuest("peer", image, sw.socket("peer"), ip=f"{IP_P}/24", workdir=work / "peer")
        for g in guests.values():
            g.start()
        for g in guests.values():
            g.wait_booted(BOOT_TIMEOUT)
        yield sw, guests
    finally:
        for g in guests.values():
            g.stop()
        sw.stop()


def meminfo(g: QemuGuest, key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", g.check_output("cat /proc/meminfo"), re.M).group(1))


@pytest.mark.parametrize("name", list(GUESTS))
def test_hotplugged_memory_carries_frames(rig, name):
    sw, guests = rig
    g, peer = guests[name], guests["peer"]
    ip = GUESTS[name][0]
    port = sw.wait_port(name, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                        timeout=60, what="connected")
    assert ("CONFIGURE_MEM_SLOTS" in port["protocol_features"]) == GUESTS[name][2]
    regions_before = port["memory_regions"]
    # Fill the boot memory first (ramfs: never reclaimed): afterwards nearly
    # every free page - so every new receive buffer - is in the new DIMM.
    fill_mb = max(0, meminfo(g, "MemFree") // 1024 - 24)
    g.check_output(f"mkdir -p /mnt/fill && mount -t ramfs none /mnt/fill && "
                   f"dd if=/dev/zero of=/mnt/fill/x bs=1M count={fill_mb} 2>/dev/null")
    assert meminfo(g, "MemFree") < (40 << 10)
    # a peer pings the guest throughout
    peer.check_output(f"setsid sh -c 'ping -i 0.1 -c 100 -W 5 {ip} > /tmp/ping-{name}.log 2>&1' "
                      "</dev/null >/dev/null 2>&1 &")
    time.sleep(2)
    total_before = meminfo(g, "MemTotal")
    g.qmp("object-add", **{"qom-type": "memory-backend-memfd", "id": f"hp-{name}", "size": 256 << 20,
                           "share": True})
    g.qmp("device_add", driver="pc-dimm", id=f"dimm-{name}", memdev=f"hp-{name}")
    deadline = time.monotonic() + 60
    while meminfo(g, "MemTotal") < total_before + (200 << 10):
        assert time.monotonic() < deadline, "the guest did not online the new memory"
        time.sleep(0.5)
    port = sw.wait_port(name, lambda p: len(p["memory_regions"]) > len(regions_before), timeout=30,
                        what="the new region mapped")
    new = [r for r in port["memory_regions"] if r not in regions_before]
    assert sum(r["size"] for r in new) == 256 << 20, port["memory_regions"]
    # the pings went on while the table changed
    peer.check_output(f"i=0; while ! grep -q 'packet loss' /tmp/ping-{name}.log; do i=$((i+1)); "
                      "[ $i -gt 600 ] && exit 1; usleep 100000; done", timeout=90)
    summary = peer.check_output(f"tail -3 /tmp/ping-{name}.log")
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) packets received",
                                        summary).groups())
    assert (sent, received) == (100, 100), summary
    assert meminfo(g, "MemFree") > (256 << 10)                    # the DIMM is free memory now
    g.iperf3_server()
    try:
        result = peer.iperf3_client(ip, seconds=4)                # the guest receives
    except Exception as exc:
        raise AssertionError((str(exc)[:300], sw.drops(name), sw.port(name)["last_error"],
                              g.run("cat /tmp/iperf3-server-5201.log; dmesg | tail -20")[1]))
    assert result.gbps > 0, result
    drops = sw.drops(name)
    assert "bad_address" not in drops and "rx_bad_chain" not in drops, drops
    g.check_output("rm -f /mnt/fill/x && umount /mnt/fill")
