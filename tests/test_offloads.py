"""Offloads between real guests: checksum and TSO switched on and off on the
sender and the receiver through QEMU's device properties (a guest's
`ethtool -K` never reaches a vhost-user back-end). In every combination the
negotiated bits are what QEMU was told, iperf3 TCP completes, the receiver's
kernel counts no checksum errors, and the switch's counter of the path it had
to take (pass-through, software checksum, software segmentation) moved.
"""

from __future__ import annotations

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 240
OFF = "off"
RX_OFFLOADS_OFF = {"guest_csum": OFF, "guest_tso4": OFF, "guest_tso6": OFF, "guest_ecn": OFF, "guest_ufo": OFF}
TX_TSO_OFF = {"host_tso4": OFF, "host_tso6": OFF, "host_ecn": OFF, "host_ufo": OFF}
TX_OFFLOADS_OFF = {"csum": OFF, **TX_TSO_OFF}

# name: (sender device properties, receiver device properties, path counter expected to move)
COMBINATIONS = {
    "all-on": ({}, {}, "gso_passthrough"),
    "receiver-without-rx-offloads": ({}, RX_OFFLOADS_OFF, "sw_gso"),
    "sender-csum-only-receiver-without": (TX_TSO_OFF, RX_OFFLOADS_OFF, "sw_csum"),
    "sender-csum-only-receiver-csum": (TX_TSO_OFF, {}, "csum_passthrough"),
    "sender-without-tx-offloads": (TX_OFFLOADS_OFF, {}, None),
}
PATHS = ("gso_passthrough", "csum_passthrough", "sw_csum", "sw_gso")


@pytest.fixture(scope="module")
def switch(tmp_path_factory):
    work = tmp_path_factory.mktemp("offload")
    ports = {name: {"type": "vhost-user", "queues": 1} for name in ("tx", "rx")}
    with Vswitchd(work, ports) as sw:
        yield sw


def tcp_csum_errors(guest: QemuGuest) -> int:
    """InCsumErrors of the guest kernel's TCP MIB (/proc/net/snmp)."""
    text = guest.check_output("cat /proc/net/snmp")
    lines = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("InCsumErrors")])


def path_counters(sw: Vswitchd) -> dict[str, int]:
    return dict(sw.port("rx")["queues"][0]["rx"]["offload"])


@pytest.mark.parametrize("combo", list(COMBINATIONS))
def test_iperf3_through_every_offload_combination(switch, image, tmp_path, combo):
    sender_props, receiver_props, path = COMBINATIONS[combo]
    before = path_counters(switch)
    tx = QemuGuest("tx", image, switch.socket("tx"), mac="52:54:00:00:02:01", ip="10.2.0.1/24",
                   device_props=sender_props, workdir=tmp_path / "tx")
    rx = QemuGuest("rx", image, switch.socket("rx"), mac="52:54:00:00:02:02", ip="10.2.0.2/24",
                   device_props=receiver_props, workdir=tmp_path / "rx")
    with tx, rx:
        tx.wait_booted(BOOT_TIMEOUT)
        rx.wait_booted(BOOT_TIMEOUT)
        for name in ("tx", "rx"):
            switch.wait_port(name, lambda p: p["state"] == "connected" and p["queues_enabled"] == 1,
                             timeout=60, what="connected")
        # negotiated bits follow the device properties
        sent_features = set(switch.port("tx")["features"])
        recv_features = set(switch.port("rx")["features"])
        assert ("NET_CSUM" in sent_features) == (sender_props.get("csum") != OFF)
        assert ("NET_HOST_TSO4" in sent_features) == (sender_props.get("host_tso4") != OFF)
        assert ("NET_GUEST_CSUM" in recv_features) == (receiver_props.get("guest_csum") != OFF)
        assert ("NET_GUEST_TSO4" in recv_features) == (receiver_props.get("guest_tso4") != OFF)
        errors_before = tcp_csum_errors(rx)
        rx.iperf3_server()
        result = tx.iperf3_client("10.2.0.2", seconds=5)
        assert result.received_bps > 10e6, result
        print(f"\n{combo}: {result.gbps:.2f} Gbit/s")
        assert tcp_csum_errors(rx) == errors_before
        after = path_counters(switch)
        moved = {k for k in PATHS if after[k] > before[k]}
        if path is None:
            assert moved == set(), after
        else:
            assert path in moved, (before, after)
        if path == "sw_gso":
            assert after["sw_gso_segments"] - before["sw_gso_segments"] > after["sw_gso"] - before["sw_gso"]
        assert "bad_offload" not in switch.drops("tx")
        for g in (tx, rx):
            g.assert_no_kernel_errors()
