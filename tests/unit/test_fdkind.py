"""vhost/fdkind.py: what an fd from a front-end really is, on real fds of every kind."""

from __future__ import annotations

import mmap
import os
import select
import socket
import subprocess
from pathlib import Path

import pytest

from vswitch.vhost import fdkind
from vswitch.vhost.fdkind import FdRefused, check_eventfd, check_memory_fd


@pytest.fixture
def fds():
    """Open fds, closed after the test."""
    opened: list[int] = []

    def keep(fd: int) -> int:
        opened.append(fd)
        return fd
    yield keep
    for fd in opened:
        try:
            os.close(fd)
        except OSError:
            pass


def memfd(keep, size: int = 1 << 20, flags: int = 0) -> int:
    fd = keep(os.memfd_create("fdkind-test", flags))
    os.ftruncate(fd, size)
    return fd


def fs_type(path: str) -> int:
    return int(subprocess.run(["stat", "-f", "-c", "%t", path], capture_output=True, text=True,
                              check=True).stdout, 16)


def disk_file(keep, directory: str = "/var/tmp") -> int:
    if fs_type(directory) in fdkind.MEMORY_FILESYSTEMS:
        pytest.skip(f"{directory} is on a memory filesystem here")
    fd = keep(os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600))
    os.ftruncate(fd, 1 << 20)
    return fd


# --- eventfds ----------------------------------------------------------------------

def test_an_eventfd_passes(fds):
    check_eventfd(fds(os.eventfd(0)))
    check_eventfd(fds(os.eventfd(5, os.EFD_NONBLOCK | os.EFD_SEMAPHORE)))


def not_eventfds(keep, tmp_path: Path) -> dict[str, int]:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    r, w = os.pipe()
    keep(w)
    a, b = socket.socketpair()
    keep(b.detach())
    ev = keep(os.eventfd(0))
    ep = select.epoll()
    epfd = keep(os.dup(ep.fileno()))
    ep.close()
    return {
        "a pipe": keep(r),
        "a socket": keep(a.detach()),
        "a regular file": keep(os.open(path, os.O_RDWR)),
        "a directory": keep(os.open(tmp_path, os.O_RDONLY)),
        "a character device": keep(os.open("/dev/null", os.O_RDWR)),
        "an anonymous inode [eventpoll]": epfd,
        "an O_PATH fd of a regular file": keep(os.open(path, os.O_PATH)),
        # /proc/self/fd names it anon_inode:[eventfd], yet it cannot be read or written
        "an O_PATH fd of an anonymous inode [eventfd]": keep(os.open(f"/proc/self/fd/{ev}", os.O_PATH)),
        "a memfd": memfd(keep),
    }


def test_anything_else_is_not_an_eventfd_and_says_what_it_is(fds, tmp_path):
    for what, fd in not_eventfds(fds, tmp_path).items():
        with pytest.raises(FdRefused, match="is not an eventfd") as info:
            check_eventfd(fd)
        expected = "a regular file" if what == "a memfd" else what
        assert f"(it is {expected})" in str(info.value), (what, str(info.value))


def test_a_closed_fd_is_refused_not_crashed_on(fds):
    fd = os.eventfd(0)
    os.close(fd)
    with pytest.raises(FdRefused, match="cannot be examined"):
        check_eventfd(fd)
    with pytest.raises(FdRefused, match="cannot be examined"):
        check_memory_fd(fd, allow_file=True)


# --- memory fds ---------------------------------------------------------------------

def test_memfd_and_tmpfs_files_pass(fds):
    check_memory_fd(memfd(fds), allow_file=False)
    shm = fds(os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR, 0o600))
    check_memory_fd(shm, allow_file=False)
    assert fdkind.fs_magic(shm) == fdkind.TMPFS_MAGIC


def test_hugetlbfs_passes(fds):
    try:
        fd = fds(os.memfd_create("fdkind-huge", os.MFD_HUGETLB))
    except OSError as exc:
        pytest.skip(f"no hugetlbfs memfd here: {exc.strerror}")
    assert fdkind.fs_magic(fd) == fdkind.HUGETLBFS_MAGIC
    check_memory_fd(fd, allow_file=False)


def test_a_file_on_a_disk_filesystem_needs_allow_file_memory(fds):
    fd = disk_file(fds)
    with pytest.raises(FdRefused, match="in a file on .* is refused: only memfd, tmpfs and hugetlbfs "
                                        "are mapped unless the port sets allow_file_memory"):
        check_memory_fd(fd, allow_file=False)
    check_memory_fd(fd, allow_file=True)


@pytest.mark.parametrize("allow_file", [False, True])
def test_what_cannot_be_guest_memory_is_refused_even_when_files_are_allowed(fds, tmp_path, allow_file):
    mem = memfd(fds)
    cases = {
        # devtmpfs says TMPFS_MAGIC: the file type is what keeps /dev/zero and /dev/mem out
        "/dev/null": (fds(os.open("/dev/null", os.O_RDWR)), "is a character device"),
        "a directory": (fds(os.open("/dev/shm", os.O_RDONLY)), "is a directory"),
        "a pipe": (fds(os.pipe()[0]), "is a pipe"),
        "an eventfd": (fds(os.eventfd(0)), "is an anonymous inode [eventfd]"),
        "O_PATH": (fds(os.open(f"/proc/self/fd/{mem}", os.O_PATH)), "O_PATH fd of a regular file"),
        "read-only": (fds(os.open(f"/proc/self/fd/{mem}", os.O_RDONLY)), "not open for reading and writing"),
    }
    for what, (fd, message) in cases.items():
        with pytest.raises(FdRefused, match=message.replace("[", r"\[").replace("]", r"\]")):
            check_memory_fd(fd, allow_file=allow_file)


def test_fs_magic_of_known_filesystems(fds):
    assert fdkind.fs_magic(memfd(fds)) == fdkind.TMPFS_MAGIC
    assert fdkind.fs_magic(fds(os.eventfd(0))) == fdkind.ANON_INODE_FS_MAGIC
    assert fdkind.fs_name(0xEF53) == "ext2/3/4"
    assert fdkind.fs_name(0x65735546) == "fuse"
    assert fdkind.fs_name(0x12345678) == "filesystem type 0x12345678"


def test_a_checked_memfd_maps_as_the_datapath_maps_it(fds):
    fd = memfd(fds)
    check_memory_fd(fd, allow_file=False)
    with mmap.mmap(fd, 1 << 20, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
        m[0] = 1
