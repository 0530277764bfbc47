"""Real QEMU guests for interop tests: image builder and guest driver.

``build_image(cache_dir)`` produces a Debian cloud kernel plus a small
initramfs; ``QemuGuest`` boots it with a vhost-user virtio-net NIC and runs
commands on its serial console; ``QemuBinary`` picks the QEMU it runs
(``fetch_qemu10`` unpacks QEMU 10 beside the system's 7.2). See qemu.py for
the console protocol and for why the QEMU flags are what they are.
"""

from .image import (
    QEMU10_VERSION,
    GuestImage,
    ImageBuildError,
    build_image,
    default_cache_dir,
    fetch_qemu10,
)
from .qemu import (
    GuestBootError,
    GuestCommandError,
    GuestError,
    GuestTimeout,
    IperfResult,
    PingResult,
    QemuBinary,
    QemuGuest,
    QmpClient,
    QmpError,
    default_accel,
    probe_kvm,
)

__all__ = [
    "GuestBootError",
    "GuestCommandError",
    "GuestError",
    "GuestImage",
    "GuestTimeout",
    "ImageBuildError",
    "IperfResult",
    "PingResult",
    "QEMU10_VERSION",
    "QemuBinary",
    "QemuGuest",
    "QmpClient",
    "QmpError",
    "build_image",
    "default_accel",
    "default_cache_dir",
    "fetch_qemu10",
    "probe_kvm",
]
