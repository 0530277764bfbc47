"""QEMU 10 guests on the switch, beside the system's QEMU 7.2.

QEMU 10 comes from Debian's bookworm-backports, unpacked into the guest cache
(the ``qemu10`` fixture, image.py's fetch_qemu10). Two QEMU 10 guests on
server ports (QEMU is the client, with ``reconnect-ms``: 9.2 deprecated
``reconnect``) with two queue pairs negotiate and ping both ways; a QEMU 7.2
guest booted beside them is the reference for what each version negotiates.
The QEMU 10 guests run with MSI-X under TCG too (no ``vectors=0``), which
QEMU 7.2 cannot do with vhost-user.
"""

from __future__ import annotations

import pytest

from tests.harness.guests import QemuGuest
from tests.harness.switch import Vswitchd

pytestmark = pytest.mark.qemu

IP_A, IP_B, IP_REF = "10.0.10.1", "10.0.10.2", "10.0.10.3"
MAC_A, MAC_B, MAC_REF = "52:54:00:00:10:0a", "52:54:00:00:10:0b", "52:54:00:00:10:0c"
BOOT_TIMEOUT = 240


def _up(port: dict) -> bool:
    return port["state"] == "connected" and port["queues_enabled"] == 2


@pytest.fixture(scope="module")
def topology(tmp_path_factory, image, qemu10):
    work = tmp_path_factory.mktemp("qemu10")
    sw = Vswitchd(work / "switch", {
        name: {"type": "vhost-user", "mode": "server", "queues": 2} for name in ("a", "b", "ref")
    })
    sw.start()
    guests = []
    try:
        a = QemuGuest("a", image, sw.socket("a"), mac=MAC_A, ip=f"{IP_A}/24", queues=2,
                      qemu=qemu10, msix=True, workdir=work / "a")
        b = QemuGuest("b", image, sw.socket("b"), mac=MAC_B, ip=f"{IP_B}/24", queues=2,
                      qemu=qemu10, msix=True, workdir=work / "b")
        # the system's QEMU 7.2 with the same NIC: the reference negotiation
        ref = QemuGuest("ref", image, sw.socket("ref"), mac=MAC_REF, ip=f"{IP_REF}/24",
                        queues=2, workdir=work / "ref")
        for g in (a, b, ref):
            g.start()
            guests.append(g)
        for g in (a, b, ref):
            g.wait_booted(BOOT_TIMEOUT)
        ports = {name: sw.wait_port(name, _up, timeout=60, what="connected with 2 queue pairs")
                 for name in ("a", "b", "ref")}
        ref.stop()   # only its negotiation is needed: give the CPU back
        yield sw, a, b, ports
    finally:
        for g in guests:
            g.stop()
        sw.stop()


def test_qemu10_runs_with_its_own_options(topology, qemu10):
    sw, a, b, ports = topology
    assert qemu10.version[0] == 10, qemu10.version
    argv = " ".join(a.command_line())
    assert "reconnect-ms=1000" in argv and "reconnect=1" not in argv
    assert "vectors=0" not in argv


def test_negotiation_against_qemu72(topology):
    """QEMU 10.0.2 negotiates exactly what QEMU 7.2 does with vswitch
    (measured here under TCG): the same virtio features (everything vswitch
    offers except F_ANY_LAYOUT, NET_MTU without host_mtu, and VHOST_F_LOG_ALL,
    which is set only while migrating) and the same vhost-user protocol
    features (all seven vswitch offers: MQ LOG_SHMFD RARP REPLY_ACK NET_MTU
    RESET_DEVICE CONFIGURE_MEM_SLOTS). The newer protocol features QEMU 10's
    front-end knows (e.g. SHARED_OBJECT, DEVICE_STATE) are not offered, so
    nothing more is agreed. The one difference: QEMU 10 runs
    vhost-user with MSI-X under TCG, where 7.2 needs vectors=0."""
    sw, a, b, ports = topology
    new, old = ports["a"], ports["ref"]
    for name, port in (("QEMU 10", new), ("QEMU 7.2", old)):
        print(f"{name} features: {' '.join(port['features'])}")
        print(f"{name} protocol features: {' '.join(port['protocol_features'])}")
    print("offered, not taken by QEMU 10:",
          sorted(set(new["features_offered"]) - set(new["features"])))
    assert new["features"] == ports["b"]["features"]
    assert set(new["features"]) == set(old["features"])
    assert set(new["protocol_features"]) == set(old["protocol_features"])
    assert set(new["features_offered"]) - set(new["features"]) <= {
        "F_ANY_LAYOUT", "NET_MTU", "VHOST_F_LOG_ALL", "F_RING_PACKED"}   # packed=off by default
    for feature in ("NET_MQ", "F_VERSION_1", "NET_MRG_RXBUF", "RING_F_EVENT_IDX",
                    "RING_F_INDIRECT_DESC", "VHOST_USER_F_PROTOCOL_FEATURES"):
        assert feature in new["features"], feature
    assert {"MQ", "REPLY_ACK"} <= set(new["protocol_features"])
    # MSI-X (also under TCG): the guest's virtio interrupts are message-signalled
    assert "PCI-MSI" in a.check_output("grep virtio /proc/interrupts")


def test_ping_both_ways_over_both_queue_pairs(topology):
    sw, a, b, ports = topology
    r = a.ping(IP_B, count=10, interval=0.2)
    assert (r.sent, r.loss_pct) == (10, 0), r
    r = b.ping(IP_A, count=10, interval=0.2)
    assert (r.sent, r.loss_pct) == (10, 0), r
    # XPS maps vCPU c to TX queue c: a ping pinned to each vCPU uses each pair
    before = a.ethtool_stats()
    for cpu in (0, 1):
        rc, out = a.run(f"taskset -c {cpu} ping -c 5 -i 0.2 -W 2 {IP_B}", timeout=120)
        assert rc == 0 and " 0% packet loss" in out, out
    after = a.ethtool_stats()
    for q in (0, 1):
        assert after[f"tx_queue_{q}_packets"] - before.get(f"tx_queue_{q}_packets", 0) >= 5, q
    fdb = {e["mac"]: e["port"] for e in sw.ctl("fdb show")}
    assert fdb[MAC_A] == "a" and fdb[MAC_B] == "b"
    for g in (a, b):
        g.assert_no_kernel_errors()
