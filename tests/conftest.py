"""Fixtures the daemon-level tests share, and the test groups.

The drivers of what the tests run against (the switch, the test front-end,
testpmd, QEMU guests, namespaces) are plain code in tests.harness; only what
pytest must set up and tear down lives here.

Markers (registered in pyproject.toml, --strict-markers) say what a test
needs, so that a run can leave it out:

    qemu     starts QEMU guests (minutes: a guest boots under TCG here)
    dpdk     runs DPDK testpmd
    root     needs root: TAP devices, network namespaces, other users
    systemd  installs the unit and runs systemd's tools on it
    slow     takes 5 s or more by itself

Each test module also belongs to one of the groups docs/testing.md lists under
"What it runs" (GROUPS below; tests/unit is the unit group); the group is a marker
too, so `pytest -m hostile` runs the hostile-guest group and
`pytest -m "datapath and not slow"` part of the datapath one. `make
test-quick` runs `-m "not qemu and not dpdk and not systemd and not slow"`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.guests import GuestImage, QemuBinary, build_image, default_cache_dir, fetch_qemu10

TESTS = Path(__file__).resolve().parent

# The groups of daemon-level test modules (docs/testing.md, "What it runs").
GROUPS: dict[str, str] = {
    "test_datapath.py": "datapath",
    "test_guest_mapping.py": "datapath",
    "test_daemon.py": "appliance",
    "test_fd_limits.py": "appliance",
    "test_metrics.py": "appliance",
    "test_permissions.py": "appliance",
    "test_reload.py": "appliance",
    "test_systemd.py": "appliance",
    "test_appliance.py": "appliance",
    "test_testpmd.py": "interop",
    "test_packed.py": "interop",
    "test_qemu_guests.py": "interop",
    "test_qemu10.py": "interop",
    "test_hugepages.py": "interop",
    "test_offloads.py": "interop",
    "test_idle.py": "interop",
    "test_iotlb.py": "interop",
    "test_libvirt.py": "interop",
    "test_demo.py": "interop",
    "test_uplink.py": "linux",
    "test_policy.py": "tenants",
    "test_vlan_guests.py": "tenants",
    "test_fdb.py": "tenants",
    "test_capture.py": "tenants",
    "test_vxlan.py": "tenants",
    "test_hostile_notify.py": "hostile",
    "test_hostile_race.py": "hostile",
    "test_hostile_work.py": "hostile",
    "test_hostile_iotlb.py": "hostile",
    "test_hostile_resources.py": "hostile",
    "test_hostile_rarp.py": "hostile",
    "test_safe_files.py": "hostile",
    "test_seccomp.py": "hostile",
    "test_unprivileged.py": "hostile",
    "test_hostile_packed.py": "hostile",
    "test_restarts.py": "reliability",
    "test_migration.py": "reliability",
    "test_dirty_log.py": "reliability",
    "test_memory_hotplug.py": "reliability",
    "test_memory_faults.py": "reliability",
    "test_overload.py": "reliability",
    "test_fuzz_rings.py": "reliability",
    "test_portable_build.py": "datapath",
}


def group_of(path: Path) -> str:
    if path.parent == TESTS / "unit":
        return "unit"
    try:
        return GROUPS[path.name]
    except KeyError:
        raise pytest.UsageError(f"{path}: not in a test group: add it to GROUPS in tests/conftest.py") from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(group_of(Path(item.path)))
        # `-m "not qemu"` must never start a guest: the image fixture is the sign of one
        if "image" in getattr(item, "fixturenames", ()) and item.get_closest_marker("qemu") is None:
            raise pytest.UsageError(f"{item.nodeid} boots QEMU guests (image fixture) but is not marked qemu")


@pytest.fixture(scope="session")
def image() -> GuestImage:
    """The guest kernel and initramfs, built once into the shared cache."""
    return build_image(default_cache_dir())


@pytest.fixture(scope="session")
def qemu10() -> QemuBinary:
    """QEMU 10 from Debian's bookworm-backports, beside the system's 7.2:
    fetched on first use into the guest image's cache (no network after)."""
    return QemuBinary.from_prefix(fetch_qemu10(default_cache_dir()))
