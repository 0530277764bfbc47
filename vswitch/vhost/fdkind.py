"""What an fd passed by a front-end really is, checked before anything uses it.

A front-end picks every fd it sends with SCM_RIGHTS, and it keeps sharing
the open file description with us. vhost-user.rst says what each should be:

* SET_VRING_KICK/CALL/ERR: "an event file descriptor" (eventfd). The
  datapath reads kicks and writes calls on it; a pipe, socket or file there
  can block or fail, and an O_PATH fd cannot be read at all (and could not
  even be made non-blocking: the fd stayed open, one per connection).
* SET_MEM_TABLE, ADD_MEM_REG and SET_LOG_BASE: a file to mmap. QEMU passes
  a memfd, or a file of memory-backend-file (on /dev/shm or hugetlbfs).
  A file on any other filesystem is backed by something the front-end may
  control: on its own FUSE mount a page fault in a worker waits for the
  front-end to answer, forever if it never does. Such files are refused
  unless the port allows them (`allow_file_memory`).

Nothing here takes ownership of an fd: the caller closes a refused one.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat

# statfs(2) f_type values (linux/magic.h)
TMPFS_MAGIC = 0x01021994          # tmpfs, /dev/shm, memfd, devtmpfs
HUGETLBFS_MAGIC = 0x958458F6      # hugetlbfs, memfd with MFD_HUGETLB
ANON_INODE_FS_MAGIC = 0x09041934  # eventfd, epoll, signalfd, timerfd...
MEMORY_FILESYSTEMS = (TMPFS_MAGIC, HUGETLBFS_MAGIC)

_FS_NAMES = {
    TMPFS_MAGIC: "tmpfs", HUGETLBFS_MAGIC: "hugetlbfs", ANON_INODE_FS_MAGIC: "anon_inodefs",
    0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x65735546: "fuse",
    0x6969: "nfs", 0xFF534D42: "cifs", 0x794C7630: "overlayfs", 0x9FA0: "proc",
    0x62656572: "sysfs", 0x2FC12FC1: "zfs", 0xF2F52010: "f2fs", 0x4D44: "vfat",
}

EVENTFD_LINK = "anon_inode:[eventfd]"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
_libc.fstatfs.restype = ctypes.c_int
# struct statfs is 120 bytes on 64-bit Linux; f_type (a long) comes first.
_STATFS_SIZE = 256


class FdRefused(Exception):
    """The fd is not of the kind the message needs."""


def fs_magic(fd: int) -> int:
    """The f_type of the filesystem fd's file lives on (fstatfs(2))."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def fs_name(magic: int) -> str:
    return _FS_NAMES.get(magic, f"filesystem type {magic:#x}")


def _describe(st: os.stat_result, link: str) -> str:
    """A few words for a log line; never the path, which the peer chose."""
    kind = stat.S_IFMT(st.st_mode)
    if kind == 0 and link.startswith("anon_inode:"):
        return f"an anonymous inode {link.removeprefix('anon_inode:')}"
    return {
        stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory", stat.S_IFIFO: "a pipe",
        stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
        stat.S_IFLNK: "a symbolic link",
    }.get(kind, f"a file of type {kind:#o}")


def _examine(fd: int) -> tuple[os.stat_result, int, str]:
    try:
        return os.fstat(fd), fcntl.fcntl(fd, fcntl.F_GETFL), os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        raise FdRefused(f"the fd cannot be examined: {exc.strerror}") from None


def check_eventfd(fd: int) -> None:
    """Raise FdRefused unless fd is an eventfd open for reading and writing.

    eventfds are anonymous inodes that /proc/self/fd names
    "anon_inode:[eventfd]"; the file type bits are checked too, so no file
    can pass for one whatever its name. An O_PATH fd of an eventfd has the
    same name but cannot be read or written."""
    st, flags, link = _examine(fd)
    if flags & os.O_PATH:
        raise FdRefused(f"the fd is not an eventfd (it is an O_PATH fd of {_describe(st, link)})")
    if stat.S_IFMT(st.st_mode) != 0 or link != EVENTFD_LINK:
        raise FdRefused(f"the fd is not an eventfd (it is {_describe(st, link)})")
    if flags & os.O_ACCMODE != os.O_RDWR:
        raise FdRefused("the eventfd is not open for reading and writing")


def check_memory_fd(fd: int, allow_file: bool) -> None:
    """Raise FdRefused unless fd is a regular file we can map read-write,
    on memfd, tmpfs or hugetlbfs - or, with allow_file, on any filesystem."""
    st, flags, link = _examine(fd)
    if flags & os.O_PATH:
        raise FdRefused(f"the memory fd is an O_PATH fd of {_describe(st, link)}: it cannot be mapped")
    if not stat.S_ISREG(st.st_mode):
        raise FdRefused(f"the memory fd is {_describe(st, link)}, not a memfd or a file on tmpfs or hugetlbfs")
    if flags & os.O_ACCMODE != os.O_RDWR:
        raise FdRefused("the memory fd is not open for reading and writing (guest memory is mapped shared)")
    try:
        magic = fs_magic(fd)
    except OSError as exc:
        raise FdRefused(f"the memory fd's filesystem cannot be examined: {exc.strerror}") from None
    if magic not in MEMORY_FILESYSTEMS and not allow_file:
        raise FdRefused(
            f"guest memory in a file on {fs_name(magic)} is refused: only memfd, tmpfs and hugetlbfs "
            "are mapped unless the port sets allow_file_memory")
