"""TAP uplink, control-plane side: open a multi-queue TAP device, one fd per queue.

Every fd carries frames prefixed by a 12-byte virtio_net_hdr (the virtio 1.0
layout with num_buffers, little-endian on this host - the same header a
vhost-user ring carries with VIRTIO_NET_F_MRG_RXBUF/VERSION_1), so the
datapath can move frames between a TAP queue and a virtio ring without
rewriting the header.

Kernel behaviour the datapath has to live with (observed on Linux 6.18, see
tests/unit/test_tap.py, which asserts each of these):

* Link administratively down (``ip link set X down``, or right after the
  device was moved to another network namespace): ``write`` fails with
  **EIO** (the frame is dropped); ``read`` returns what was queued before,
  then EAGAIN; ``poll`` reports no POLLOUT (a writer waiting for POLLOUT is
  woken when the link comes back up). Transient: count and drop, do not
  close the port.
* Device deleted (``ip link del X``, or its namespace was destroyed) while
  our fds are open: the deletion succeeds at once, the fds stay open but are
  detached: ``read``, ``write`` and every TUN ioctl fail with **EBADFD**
  (errno 77, "File descriptor in bad state"), and ``poll``/``epoll`` report
  **POLLERR** only (no POLLIN/POLLOUT), so an event-driven worker wakes up.
  Permanent: the fds must be closed; `tap_gone` / `tap_fd_ifname` detect it.
* Device moved to another namespace (``ip link set X netns NS``): the fds
  keep working (same device, same ifindex if free there); the link comes up
  down in NS (EIO on write until ``ip -n NS link set X up``). Seen from our
  namespace the name is gone, so `tap_gone` says True; `tap_fd_ifname` on a
  queue fd still answers, it follows the device wherever it goes.
* Deleting the namespace a TAP was moved into destroys the TAP (no refund
  to ours; asynchronous, ~20 ms here): as if deleted.
* A write shorter than the header, or of the header alone, fails with EINVAL.
* ``ip tuntap del`` on a persistent device we are attached to only clears
  IFF_PERSIST; the device lives on until our last fd closes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct

log = logging.getLogger("vswitch.tap")

# linux/if_tun.h
TUNSETIFF = 0x400454CA        # _IOW('T', 202, int)
TUNSETPERSIST = 0x400454CB    # _IOW('T', 203, int)
TUNGETFEATURES = 0x800454CF   # _IOR('T', 207, unsigned int)
TUNSETOFFLOAD = 0x400454D0    # _IOW('T', 208, unsigned int)
TUNGETIFF = 0x800454D2        # _IOR('T', 210, unsigned int)
TUNGETVNETHDRSZ = 0x800454D7  # _IOR('T', 215, int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000         # TUNSETIFF: fail with EBUSY if the name exists

TUN_F_CSUM = 0x01     # the kernel may hand us checksum-partial frames (NEEDS_CSUM)
TUN_F_TSO4 = 0x02     # ... TCPv4 GSO frames
TUN_F_TSO6 = 0x04     # ... TCPv6 GSO frames
TUN_F_TSO_ECN = 0x08  # ... GSO frames with the ECN bit (CWR) to be carried on
DEFAULT_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN

VNET_HDR_LEN = 12     # struct virtio_net_hdr_mrg_rxbuf
MAX_TAP_QUEUES = 256  # drivers/net/tun.c
TUN_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE

# linux/sockios.h, net/if.h
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFINDEX = 0x8933
IFF_UP = 0x1
IFF_RUNNING = 0x40

IFNAMSIZ = 16
# struct ifreq: 16-byte name + 24-byte union (40 bytes on 64-bit)
_IFR_FLAGS = struct.Struct("16sH22x")
_IFR_INT = struct.Struct("16si20x")
assert _IFR_FLAGS.size == _IFR_INT.size == 40

TUN_DEV = "/dev/net/tun"
SYSFS_NET = "/sys/class/net"


class TapError(OSError):
    """A TAP operation failed. ``str()`` names the interface and the operation;
    ``errno`` is the kernel's (or the closest) error number."""

    def __init__(self, ifname: str, operation: str, err: int, detail: str | None = None) -> None:
        self.ifname = ifname
        self.operation = operation
        super().__init__(err, f"TAP {ifname!r}: {operation}: {detail or os.strerror(err)}")


def validate_ifname(name: str) -> str | None:
    """None if `name` is a usable interface name, else what is wrong with it.

    The kernel's dev_valid_name() rules (non-empty, < IFNAMSIZ bytes, not '.'
    or '..', no '/', ':' or whitespace), plus no '%': TUNSETIFF would expand
    'tap%d' to a fresh name, and every queue would land on a different device.
    """
    if not isinstance(name, str):
        return f"interface name must be a string, not {type(name).__name__}"
    if not name:
        return "interface name is empty"
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) >= IFNAMSIZ:
            return f"interface name {name!r} is {len(raw)} bytes, at most {IFNAMSIZ - 1} allowed"
        return f"interface name {name!r} is not ASCII"
    if len(raw) >= IFNAMSIZ:
        return f"interface name {name!r} is {len(raw)} bytes, at most {IFNAMSIZ - 1} allowed"
    if name in (".", ".."):
        return f"interface name {name!r} is not allowed"
    for ch in name:
        if ch in "/:%" or ch.isspace() or ch == "\0" or not ch.isprintable():
            return f"interface name {name!r} contains {ch!r}"
    return None


# --- small ioctl helpers --------------------------------------------------------

def _net_admin_hint(err: int) -> str | None:
    """The detail for a device ioctl refused with EPERM: the capability it needs."""
    return "not permitted (needs CAP_NET_ADMIN)" if err == errno.EPERM else None


def _ifr_name(ifname: str) -> bytes:
    return ifname.encode("ascii")


def _ctl_socket() -> socket.socket:
    # Device ioctls act in the network namespace of the socket, i.e. ours.
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)


def _get_int(sock: socket.socket, req: int, ifname: str) -> int:
    res = fcntl.ioctl(sock.fileno(), req, _IFR_INT.pack(_ifr_name(ifname), 0))
    return _IFR_INT.unpack(res)[1]


def _get_flags(sock: socket.socket, ifname: str) -> int:
    res = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, _IFR_FLAGS.pack(_ifr_name(ifname), 0))
    return _IFR_FLAGS.unpack(res)[1]


def _sysfs_read(ifname: str, attr: str) -> str | None:
    try:
        with open(os.path.join(SYSFS_NET, ifname, attr)) as f:
            return f.read().strip()
    except OSError:
        return None


def _tun_flags(ifname: str, ifindex: int) -> int | None:
    """The device's tun_flags from sysfs; None if it is not a TUN/TAP device or
    sysfs does not describe our namespace's device of that name."""
    if _sysfs_read(ifname, "ifindex") != str(ifindex):
        return None
    raw = _sysfs_read(ifname, "tun_flags")
    return int(raw, 16) if raw else None


def tun_features() -> int:
    """IFF_* flags this kernel's TUNSETIFF understands (TUNGETFEATURES)."""
    fd = os.open(TUN_DEV, os.O_RDWR | os.O_CLOEXEC)
    try:
        res = fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4)
        return struct.unpack("I", res)[0]
    finally:
        os.close(fd)


# --- queries ------------------------------------------------------------------

def tap_ifindex(ifname: str) -> int | None:
    """The ifindex of the network device `ifname` in our namespace, or None."""
    if validate_ifname(ifname):
        return None
    try:
        with _ctl_socket() as s:
            return _get_int(s, SIOCGIFINDEX, ifname)
    except OSError:
        return None


def tap_exists(ifname: str) -> bool:
    """True if `ifname` exists in our namespace and is a TUN/TAP device in TAP mode."""
    idx = tap_ifindex(ifname)
    if idx is None:
        return False
    flags = _tun_flags(ifname, idx)
    return flags is not None and bool(flags & IFF_TAP)


def tap_link_state(ifname: str) -> dict:
    """The link as seen from our namespace.

    {"exists", "up" (admin IFF_UP), "mtu", "ifindex" (SIOCGIF* ioctls),
    "carrier" (sysfs: a queue is attached and the link is up), "tun_flags"
    (sysfs; None if not a TUN/TAP device)}; everything but "exists" is None
    when it does not exist. ("carrier" rather than IFF_RUNNING: the latter
    follows the operstate, which linkwatch updates late, up to a second.)
    """
    state = {"exists": False, "up": None, "mtu": None, "ifindex": None,
             "carrier": None, "tun_flags": None}
    if validate_ifname(ifname):
        return state
    try:
        with _ctl_socket() as s:
            idx = _get_int(s, SIOCGIFINDEX, ifname)
            flags = _get_flags(s, ifname)
            mtu = _get_int(s, SIOCGIFMTU, ifname)
    except OSError:
        return state
    carrier = None
    if _sysfs_read(ifname, "ifindex") == str(idx):
        # reading `carrier` of a down link fails with EINVAL
        carrier = _sysfs_read(ifname, "carrier") == "1" if flags & IFF_UP else False
    state.update(exists=True, up=bool(flags & IFF_UP), mtu=mtu, ifindex=idx,
                 carrier=carrier, tun_flags=_tun_flags(ifname, idx))
    return state


def tap_gone(ifname: str, ifindex: int) -> bool:
    """True if the device we opened (`ifindex`) is no longer `ifname` in our
    namespace: deleted (``ip link del``), renamed, replaced by another device
    of the same name, or moved to another namespace.

    Only the first is fatal for the fds (they fail with EBADFD and poll
    POLLERR); to tell it from a move or rename ask a queue fd, see
    `tap_fd_ifname`.
    """
    return tap_ifindex(ifname) != ifindex


def tap_fd_ifname(fd: int) -> str | None:
    """Name of the device a queue fd is attached to, wherever the device now
    is (renamed, other namespace); None if the device was deleted (the fd is
    then dead: EBADFD on read/write). Raises OSError for other failures
    (e.g. EBADF: not an open fd)."""
    try:
        res = fcntl.ioctl(fd, TUNGETIFF, b"\0" * _IFR_FLAGS.size)
    except OSError as e:
        if e.errno == errno.EBADFD:
            return None
        raise
    return _IFR_FLAGS.unpack(res)[0].rstrip(b"\0").decode("ascii", "replace")


# --- opening ------------------------------------------------------------------

def _describe_flags(flags: int) -> str:
    names = [(IFF_TUN, "tun"), (IFF_TAP, "tap"), (IFF_MULTI_QUEUE, "multi_queue"),
             (IFF_PERSIST, "persist"), (IFF_NO_PI, "no_pi"), (IFF_VNET_HDR, "vnet_hdr")]
    return "|".join(n for bit, n in names if flags & bit) or "0"


def _check_existing(ifname: str, ifindex: int) -> None:
    """Refuse an existing device we must not or cannot use as our uplink."""
    flags = _tun_flags(ifname, ifindex)
    if flags is None:
        if _sysfs_read(ifname, "ifindex") == str(ifindex):
            raise TapError(ifname, "attach", errno.EEXIST,
                           "a network device of that name exists and is not a TUN/TAP device")
        # sysfs is not our namespace's: leave the checks to TUNSETIFF.
        return
    if not flags & IFF_TAP:
        raise TapError(ifname, "attach", errno.EINVAL,
                       f"existing device is a TUN (layer 3) device, not a TAP ({_describe_flags(flags)})")
    missing = [n for bit, n in ((IFF_MULTI_QUEUE, "multi_queue"), (IFF_VNET_HDR, "vnet_hdr"))
               if not flags & bit]
    if missing:
        raise TapError(ifname, "attach", errno.EINVAL,
                       f"existing device was not created with {' and '.join(missing)} "
                       f"(tun_flags {_describe_flags(flags)}); recreate it with "
                       f"`ip tuntap add dev {ifname} mode tap multi_queue vnet_hdr`")
    if not flags & IFF_PERSIST:
        raise TapError(ifname, "attach", errno.EBUSY,
                       "existing device is not persistent: it belongs to another "
                       "open TAP (another process, or this port opened twice)")


def _open_queue(ifname: str, flags: int, op: str, ours: bool) -> int:
    try:
        fd = os.open(TUN_DEV, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TapError(ifname, f"open {TUN_DEV}", e.errno,
                       f"cannot open {TUN_DEV}: {e.strerror} (tun module loaded? device node present?)") from e
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFR_FLAGS.pack(_ifr_name(ifname), flags))
    except OSError as e:
        os.close(fd)
        detail = None
        if e.errno == errno.EBUSY and flags & IFF_TUN_EXCL:
            detail = "a device of that name appeared while we were creating it"
        elif e.errno == errno.EINVAL and not ours:
            detail = ("the existing device does not match (not a TAP, or not multi_queue)")
        elif e.errno == errno.E2BIG:
            detail = f"too many queues (the kernel allows {MAX_TAP_QUEUES})"
        elif e.errno == errno.EPERM:
            detail = "not permitted (needs CAP_NET_ADMIN, or to be the device's owner/group)"
        raise TapError(ifname, op, e.errno, f"TUNSETIFF: {detail or e.strerror}") from e
    return fd


def open_tap_queues(ifname: str, queues: int, *, create: bool = True, mtu: int | None = None,
                    offloads: int = DEFAULT_OFFLOADS) -> list[int]:
    """Open `queues` fds on the multi-queue TAP `ifname` and bring the link up.

    create=True: create the device if it does not exist, non-persistent (it
    disappears when the last fd closes); an existing device is used only if it
    is persistent and was made with multi_queue and vnet_hdr (as create=False).
    create=False: attach to an existing persistent TAP made with
    ``ip tuntap add dev X mode tap multi_queue vnet_hdr``; anything else fails.

    Each fd: TUNSETIFF (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|IFF_MULTI_QUEUE),
    O_NONBLOCK|O_CLOEXEC, vnet header size 12; then TUNSETOFFLOAD `offloads`
    (the TUN_F_* the kernel may send us: checksum-partial and TSO frames;
    vnet_hdr_sz and offloads are per device in the kernel, so they apply to
    all queues), the MTU if given, IFF_UP. Returns the fds, queue 0 first;
    the caller owns them. Raises TapError (having closed whatever it opened).
    """
    problem = validate_ifname(ifname)
    if problem:
        raise TapError(str(ifname), "open", errno.EINVAL, problem)
    if not isinstance(queues, int) or not 1 <= queues <= MAX_TAP_QUEUES:
        raise TapError(ifname, "open", errno.EINVAL,
                       f"queues must be 1..{MAX_TAP_QUEUES}, not {queues!r}")
    if offloads & ~0xFF or offloads < 0:
        raise TapError(ifname, "TUNSETOFFLOAD", errno.EINVAL, f"bad offload mask {offloads:#x}")

    existing = tap_ifindex(ifname)
    if existing is not None:
        _check_existing(ifname, existing)
    elif not create:
        raise TapError(ifname, "attach", errno.ENODEV,
                       "no such device (create=False attaches to an existing persistent TAP; "
                       f"make one with `ip tuntap add dev {ifname} mode tap multi_queue vnet_hdr`)")
    creating = existing is None
    op = "create" if creating else "attach"

    fds: list[int] = []
    try:
        for q in range(queues):
            flags = TUN_FLAGS | (IFF_TUN_EXCL if creating and q == 0 else 0)
            fds.append(_open_queue(ifname, flags, f"{op} queue {q}", ours=creating or q > 0))

        # What did we get? (Catches a persistent device deleted between our
        # check and TUNSETIFF: the kernel would have created a fresh one.)
        try:
            res = fcntl.ioctl(fds[0], TUNGETIFF, b"\0" * _IFR_FLAGS.size)
        except OSError as e:
            raise TapError(ifname, "TUNGETIFF", e.errno) from e
        got_name, got = _IFR_FLAGS.unpack(res)
        got_name = got_name.rstrip(b"\0").decode("ascii", "replace")
        if got_name != ifname or (got & TUN_FLAGS) != TUN_FLAGS:
            raise TapError(ifname, op, errno.EINVAL,
                           f"kernel gave device {got_name!r} with flags {_describe_flags(got)}")
        if not creating and not got & IFF_PERSIST:
            raise TapError(ifname, op, errno.ENODEV,
                           "the persistent device disappeared while attaching")

        hdr = struct.pack("i", VNET_HDR_LEN)
        for q, fd in enumerate(fds):
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, hdr)
            except OSError as e:
                raise TapError(ifname, f"TUNSETVNETHDRSZ {VNET_HDR_LEN} (queue {q})", e.errno) from e
        try:
            fcntl.ioctl(fds[0], TUNSETOFFLOAD, offloads)
        except OSError as e:
            raise TapError(ifname, f"TUNSETOFFLOAD {offloads:#x}", e.errno) from e

        with _ctl_socket() as s:
            if mtu is not None:
                try:
                    fcntl.ioctl(s.fileno(), SIOCSIFMTU, _IFR_INT.pack(_ifr_name(ifname), mtu))
                except OSError as e:
                    raise TapError(ifname, f"set MTU {mtu} (SIOCSIFMTU)", e.errno,
                                   _net_admin_hint(e.errno)) from e
            try:
                flags = _get_flags(s, ifname)
                if not flags & IFF_UP:
                    fcntl.ioctl(s.fileno(), SIOCSIFFLAGS,
                                _IFR_FLAGS.pack(_ifr_name(ifname), flags | IFF_UP))
            except OSError as e:
                raise TapError(ifname, "bring link up (SIOCSIFFLAGS IFF_UP)", e.errno,
                               _net_admin_hint(e.errno)) from e
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    log.info("TAP %s: %s, %d queue(s), offloads %#x%s", ifname,
             "created" if creating else "attached", queues, offloads,
             f", mtu {mtu}" if mtu is not None else "")
    return fds


def set_tap_mtu(ifname: str, mtu: int) -> None:
    """Change a device's MTU (config reload); raises TapError."""
    with _ctl_socket() as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCSIFMTU, _IFR_INT.pack(_ifr_name(ifname), mtu))
        except OSError as e:
            raise TapError(ifname, f"set MTU {mtu} (SIOCSIFMTU)", e.errno, _net_admin_hint(e.errno)) from e
