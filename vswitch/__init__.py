"""vswitch: a userspace virtio-net switch for vhost-user guests."""

__version__ = "0.1.0"
