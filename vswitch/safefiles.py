"""Files the daemon creates, changes and removes, made so that nobody can
redirect them.

The daemon runs as root and works in directories (the runtime directory, the
directories of server sockets) that other users may reach. Whoever can write
into such a directory could put a symbolic link, a hard link or a file of
their own where the daemon expects its own file, and have root chmod, chown,
truncate or unlink something else. So:

* a directory the daemon creates files in must be writable by nobody but
  root and the daemon (`directory_problem`), like each directory on the way
  to it; a sticky one (/tmp) is fine, since others cannot remove or rename
  what is ours in it;
* a listening socket is bound with its final mode (under a umask), and the
  file bind(2) made is then held by an O_PATH descriptor (`SocketFile`):
  owner, group and mode changes go to that inode through the descriptor,
  never through the path, and only while the path still names it;
* a socket file is unlinked only when it is ours (the same inode) or a dead
  socket nobody listens on (`remove_stale_socket`), never anything else;
* the lock file is opened without following a symbolic link, and must be a
  regular file of ours with no other name (`open_lock_file`).

fchmod(2)/fchown(2) on a bound socket's own descriptor change the socket's
inode in sockfs, not the file at its path: that is why the file is opened
separately, with O_PATH (which works on a socket file, where a plain open
fails with ENXIO), and changed through /proc/self/fd.
"""

from __future__ import annotations

import errno
import os
import posixpath
import pwd
import socket
import stat
from collections.abc import Iterator

# How many symbolic links resolving one path may meet (the kernel's MAXSYMLINKS).
MAX_SYMLINKS = 40


class UnsafePath(OSError):
    """The daemon refuses a path: it is not what the daemon made there, or
    others could replace what it makes there. `strerror` says why and what
    to do."""


class NotOurSocket(UnsafePath):
    """The path of one of our sockets names something else now."""


# --- directories ------------------------------------------------------------------------


def directory_problem(path: str) -> str | None:
    """Why vswitchd must not create files in the directory `path`, or None.

    Every directory that resolving `path` passes through is checked, as far
    as they exist (vswitchd creates the rest, mode 0755), with symbolic links
    followed the way the kernel follows them, their targets included: each
    must be owned by root or by this process, and not writable by group or
    others unless it is sticky. Otherwise its owner, or whoever may write
    into it, could swap what vswitchd creates below it (a socket, the lock)
    for a link to another file, or swap a directory on the way."""
    euid = os.geteuid()
    for directory, st, last in _directories_on_the_way(path):
        if not last:
            where = f"{directory} (on the way to {path})"
        elif directory != posixpath.normpath(path):
            where = f"{directory} (where {path} leads)"
        else:
            where = directory
        if st.st_uid not in (0, euid):
            who = "root" if euid == 0 else f"root or by vswitchd's user (uid {euid})"
            fix = "chown root" if euid == 0 else f"chown {euid}"
            return (f"{where} is owned by uid {st.st_uid}{_user_name(st.st_uid)}, not by {who}: "
                    "that user could replace the files vswitchd creates in it; "
                    f"run {fix} {directory}, or use another directory")
        mode = stat.S_IMODE(st.st_mode)
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            return (f"{where} is mode {mode:04o}: writable by group or others (and not sticky), "
                    "who could replace the files vswitchd creates in it; "
                    f"run chmod go-w {directory}, or use a directory only root can write")
    return None


def check_directory(path: str) -> None:
    """Raise UnsafePath if vswitchd must not create files in `path`."""
    problem = directory_problem(path)
    if problem is not None:
        raise UnsafePath(errno.EPERM, problem)


def _directories_on_the_way(path: str) -> Iterator[tuple[str, os.stat_result, bool]]:
    """(directory, lstat, is it `path` itself) for "/" and each existing
    directory that resolving the absolute `path` goes through, in order. A
    symbolic link is replaced by its target, whose directories are then
    visited too; ".." goes to the parent of the directory actually reached,
    as in the kernel. Stops at the first component that does not exist or is
    not a directory (creating it will fail, or be done by vswitchd)."""
    pending = [part for part in path.split("/") if part]
    current = "/"
    yield current, os.lstat(current), not pending
    pending.reverse()           # a stack: the next component last
    links = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            current = posixpath.dirname(current)
            continue
        candidate = posixpath.join(current, name)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            pending.extend(reversed([part for part in target.split("/") if part]))
            continue
        if not stat.S_ISDIR(st.st_mode):
            return
        yield candidate, st, not pending
        current = candidate


def _user_name(uid: int) -> str:
    try:
        return f" ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return ""


# --- sockets ----------------------------------------------------------------------------


def describe(st: os.stat_result) -> str:
    """What kind of file st is, for messages."""
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a regular file"),
             (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(st.st_mode)), "a file of unknown type")


def socket_is_live(path: str) -> bool:
    """True if a process accepts connections on the AF_UNIX socket at path."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        # EAGAIN: the listener's backlog is full - it is alive.
        return exc.errno in (errno.EAGAIN,)
    finally:
        probe.close()


def remove_stale_socket(path: str) -> None:
    """Make room for binding a socket at path: leave nothing there, or
    remove a socket file nobody listens on (left by a process that died).
    Raise UnsafePath, and remove nothing, if path is anything else: a file
    that is not a socket (a symbolic link included: lstat, never stat), or a
    socket another process listens on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafePath(errno.EEXIST, f"{path} exists and is not a socket ({describe(st)}); "
                                       "not removed")
    if socket_is_live(path):
        raise UnsafePath(errno.EADDRINUSE, f"{path}: another process is listening on it")
    # The probe follows a symbolic link: what is removed must still be the
    # socket file that was looked at.
    try:
        again = os.lstat(path)
    except FileNotFoundError:
        return
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
        raise UnsafePath(errno.EEXIST, f"{path} changed while it was checked; not removed")
    os.unlink(path)


class SocketFile:
    """The file that bind(2) created for one of our listening sockets.

    It is held open (O_PATH) from right after bind until it is removed: its
    inode cannot be freed and its number given to another file meanwhile, so
    "the path still names our socket" is an exact test, and changes of owner,
    group and mode go to this inode through the descriptor, whatever the
    path names by then. Create it right after binding, in a directory that
    passed `check_directory`: nobody else can have replaced the file yet."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise NotOurSocket(errno.EEXIST, f"{path} was replaced right after it was bound "
                                             f"(it is {describe(st)} of uid {st.st_uid})")
        self._fd: int | None = fd
        self.identity = (st.st_dev, st.st_ino)

    def replaced_by(self) -> str | None:
        """None while the path names our socket file; else what it names now."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return "missing (removed)"
        if (st.st_dev, st.st_ino) == self.identity:
            return None
        what = describe(st)
        if stat.S_ISLNK(st.st_mode):
            try:
                what += f" to {os.readlink(self.path)}"
            except OSError:
                pass
        elif stat.S_ISSOCK(st.st_mode):
            what = "another socket"
        return f"{what}, owned by uid {st.st_uid}"

    def set_permissions(self, mode: int | None = None, uid: int | None = None,
                        gid: int | None = None) -> None:
        """Mode, then owner and group (None: unchanged) of our socket file.
        NotOurSocket, and nothing changed, if its path names something else:
        the new permissions were meant for what is reached by that path."""
        assert self._fd is not None, "socket file already removed"
        now = self.replaced_by()
        if now is not None:
            raise NotOurSocket(errno.EPERM, f"{self.path} is no longer the socket vswitchd created "
                                            f"(it is now {now}); its owner, group and mode were "
                                            "left as they are")
        # The magic link resolves to the held inode, not through the path.
        inode = f"/proc/self/fd/{self._fd}"
        try:
            # Mode first: once the file belongs to someone else, changing its
            # mode would need CAP_FOWNER, which the service does not have.
            if mode is not None:
                os.chmod(inode, mode)
            if uid is not None or gid is not None:
                os.chown(inode, -1 if uid is None else uid, -1 if gid is None else gid)
        except FileNotFoundError:
            raise OSError(errno.ENOENT, "cannot change it through its descriptor: "
                                        "/proc is not mounted", self.path) from None
        except PermissionError as exc:
            # An unprivileged daemon (docs/service.md) may give its sockets to
            # a group it is a member of; anything else needs CAP_CHOWN.
            who = ", ".join(f"{what} {ident}" for what, ident in (("user", uid), ("group", gid))
                            if ident is not None)
            raise PermissionError(exc.errno, f"cannot give the socket to {who}: {exc.strerror} "
                                  "(needs CAP_CHOWN, unless the owner is the daemon's own user "
                                  "and the group one the daemon's user is a member of)",
                                  self.path) from None
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, self.path) from None

    def remove(self) -> str | None:
        """Unlink the path if it still names our socket file, and let the
        file go. Returns None, or what the path names instead (left alone).

        Between the check and unlink(2) the owner of the file (who may
        rename it in a sticky directory) could put something else there:
        unlink(2) never follows a link, so that only removes their own entry."""
        if self._fd is None:
            return None
        now = self.replaced_by()
        if now is None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self._fd)
        self._fd = None
        return now


def bind_unix_socket(path: str, mode: int) -> tuple[socket.socket, SocketFile]:
    """A new AF_UNIX stream socket bound at path, its file created with
    exactly `mode` (no chmod follows, so none can be redirected), not yet
    listening. A stale socket file at path is removed first (see
    remove_stale_socket); anything else there is an error."""
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask is per process: nothing else in the daemon creates files
        # (the datapath threads never do), and it is back before we return.
        old = os.umask(~mode & 0o777)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        return sock, SocketFile(path)
    except BaseException:
        sock.close()
        raise


# --- the lock file ----------------------------------------------------------------------


def open_lock_file(path: str) -> int:
    """Open (creating it, mode 0644) the lock file at path, read-write.
    Never through a symbolic link, and only a regular file of ours with no
    other name: it is truncated and written once locked, so a hard link to
    another file (or a file someone else prepared) must not pass."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(errno.ELOOP, f"{path} is a symbolic link, not vswitchd's lock file: "
                                          "refusing to follow it; remove it") from None
        raise
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"is {describe(st)}, not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}{_user_name(st.st_uid)}, not by this process (uid {os.geteuid()})"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} names (hard links), so it is another file too"
    if problem is not None:
        os.close(fd)
        raise UnsafePath(errno.EPERM, f"{path} {problem}: not vswitchd's lock file; "
                                      "refusing to use it; remove it")
    return fd
