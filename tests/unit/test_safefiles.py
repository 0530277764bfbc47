"""vswitch.safefiles in-process: directories, socket files, the lock file.

tests/test_safe_files.py makes the same swaps against a running vswitchd;
here each rule is pinned down on its own (runs as root, like the suite).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from vswitch.safefiles import (
    NotOurSocket,
    UnsafePath,
    bind_unix_socket,
    check_directory,
    directory_problem,
    open_lock_file,
    remove_stale_socket,
)

NOBODY = 65534


def mkdir(path: Path, mode: int, uid: int = 0) -> Path:
    path.mkdir()
    path.chmod(mode)
    os.chown(path, uid, -1)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- directories ----------------------------------------------------------------------


def test_private_and_sticky_directories_are_safe(tmp_path):
    assert directory_problem(str(tmp_path)) is None                 # pytest's: 0700, root's
    assert directory_problem("/tmp") is None                        # 1777
    assert directory_problem(str(mkdir(tmp_path / "sticky", 0o1777))) is None
    assert directory_problem(str(mkdir(tmp_path / "open", 0o755))) is None
    # what does not exist yet is made by vswitchd, below a safe directory
    assert directory_problem(str(tmp_path / "open" / "new" / "dirs")) is None


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o730])
def test_group_or_other_writable_directory_is_unsafe(tmp_path, mode):
    shared = mkdir(tmp_path / "shared", mode)
    assert directory_problem(str(shared)) == (
        f"{shared} is mode {mode:04o}: writable by group or others (and not sticky), who could "
        f"replace the files vswitchd creates in it; run chmod go-w {shared}, or use a directory "
        "only root can write")
    with pytest.raises(UnsafePath, match="writable by group or others"):
        check_directory(str(shared))


def test_directory_of_another_user_is_unsafe(tmp_path):
    theirs = mkdir(tmp_path / "theirs", 0o755, uid=NOBODY)
    problem = directory_problem(str(theirs))
    assert problem.startswith(f"{theirs} is owned by uid {NOBODY}")
    assert "not by root" in problem and f"chown root {theirs}" in problem


def test_every_directory_on_the_way_is_checked(tmp_path):
    """A safe directory in an unsafe one can be renamed away and replaced."""
    shared = mkdir(tmp_path / "shared", 0o777)
    inner = mkdir(shared / "inner", 0o755)
    assert directory_problem(str(inner)).startswith(
        f"{shared} (on the way to {inner}) is mode 0777")
    assert directory_problem(str(inner / "not" / "yet")).startswith(f"{shared} (on the way to")


def test_symbolic_links_are_followed_to_where_they_lead(tmp_path):
    shared = mkdir(tmp_path / "shared", 0o777)
    safe = mkdir(tmp_path / "safe", 0o755)
    (safe / "there").symlink_to(shared)                 # a safe place, leading into an unsafe one
    assert directory_problem(str(safe / "there")).startswith(
        f"{shared} (where {safe / 'there'} leads) is mode 0777")
    (shared / "back").symlink_to(safe)                  # a link others could swap
    assert directory_problem(str(shared / "back")).startswith(f"{shared} (on the way to")
    (safe / "rel").symlink_to("../safe/./")             # relative, with . and ..
    assert directory_problem(str(safe / "rel")) is None
    (safe / "loop").symlink_to(safe / "loop")
    with pytest.raises(OSError, match="Too many levels"):
        directory_problem(str(safe / "loop"))


# --- socket files ---------------------------------------------------------------------


def test_socket_is_bound_with_exactly_its_mode(tmp_path):
    old = os.umask(0o022)
    try:
        for mode in (0o600, 0o660, 0o666):
            path = tmp_path / f"s{mode:o}"
            sock, file = bind_unix_socket(str(path), mode)
            assert mode_of(path) == mode
            sock.close()
            assert file.remove() is None and not path.exists()
        assert os.umask(0o022) == 0o022            # put back
    finally:
        os.umask(old)


def test_permissions_go_to_our_socket_file(tmp_path):
    path = tmp_path / "s"
    sock, file = bind_unix_socket(str(path), 0o600)
    with sock:
        file.set_permissions(0o660, gid=NOBODY)
        st = os.lstat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, 0, NOBODY)
        file.set_permissions(uid=NOBODY)
        assert os.lstat(path).st_uid == NOBODY
        assert file.remove() is None and not path.exists()


@pytest.mark.parametrize("swap", ["symlink", "hardlink", "socket", "file", "removed"])
def test_socket_file_replaced_is_neither_changed_nor_removed(tmp_path, swap):
    victim = tmp_path / "victim"
    path = tmp_path / "s"
    sock, file = bind_unix_socket(str(path), 0o600)
    path.rename(tmp_path / "moved")
    other = None
    if swap == "symlink":
        victim.write_text("x")
        victim.chmod(0o600)
        path.symlink_to(victim)
    elif swap == "hardlink":                       # another socket file, by a second name
        other = socket.socket(socket.AF_UNIX)
        other.bind(str(victim))
        victim.chmod(0o600)
        os.link(victim, path)
    elif swap == "socket":
        other = socket.socket(socket.AF_UNIX)
        other.bind(str(path))
        os.chmod(path, 0o600)
        victim = path
    elif swap == "file":
        path.write_text("theirs")
        path.chmod(0o600)
        victim = path
    try:
        with pytest.raises(NotOurSocket, match="is no longer the socket vswitchd created") as info:
            file.set_permissions(0o666, uid=NOBODY, gid=NOBODY)
        assert "left as they are" in str(info.value)
        if swap != "removed":
            st = os.stat(victim)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
            assert file.remove() is not None
            assert os.path.lexists(path)
        else:
            assert "missing" in file.remove()
        assert mode_of(tmp_path / "moved") == 0o600      # ours, untouched too: not ours to name
    finally:
        sock.close()
        if other is not None:
            other.close()


def test_stale_socket_is_removed_anything_else_is_not(tmp_path):
    dead = tmp_path / "dead"
    socket.socket(socket.AF_UNIX).bind(str(dead))     # closed at once: nobody listens
    remove_stale_socket(str(dead))
    assert not dead.exists()
    remove_stale_socket(str(tmp_path / "absent"))

    plain = tmp_path / "plain"
    plain.write_text("data")
    with pytest.raises(UnsafePath, match="exists and is not a socket"):
        remove_stale_socket(str(plain))
    assert plain.read_text() == "data"

    target = tmp_path / "target"
    socket.socket(socket.AF_UNIX).bind(str(target))   # a dead socket, through a link
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(UnsafePath, match=r"not a socket \(a symbolic link\)"):
        remove_stale_socket(str(link))
    assert link.is_symlink() and target.exists()

    live = tmp_path / "live"
    holder = socket.socket(socket.AF_UNIX)
    holder.bind(str(live))
    holder.listen()
    with holder, pytest.raises(UnsafePath, match="another process is listening"):
        bind_unix_socket(str(live), 0o600)
    assert live.exists()


# --- the lock file --------------------------------------------------------------------


def test_lock_file_is_created_and_reopened(tmp_path):
    path = tmp_path / "lock"
    for _ in range(2):
        fd = open_lock_file(str(path))
        os.close(fd)
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid()


@pytest.mark.parametrize("kind", ["symlink", "dangling", "hardlink", "fifo", "theirs"])
def test_lock_file_that_is_not_ours_is_refused(tmp_path, kind):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "lock"
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "dangling":                        # O_CREAT would create the target
        path.symlink_to(tmp_path / "created")
    elif kind == "hardlink":
        os.link(victim, path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("")
        os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match="lock"):
        open_lock_file(str(path))
    assert victim.read_text() == "precious"
    assert not (tmp_path / "created").exists()
