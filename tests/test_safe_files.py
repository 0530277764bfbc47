"""Files the daemon touches cannot be redirected.

Whoever can write into a directory the daemon uses (a socket's directory,
the runtime directory) could swap what the daemon created there for a
symbolic link, a hard link or a file of their own, and have root chmod,
chown, truncate or unlink something else. Here the swaps are made for real
(as root, standing in for the attacker) against a running vswitchd:

* socket owner/group/mode are never applied through a symlink, at start or
  at reload; a socket path that is no longer ours is left alone and reported;
* the runtime lock file is never opened through a symlink;
* the control socket and port sockets are only unlinked when they are ours
  (same inode) or dead sockets; never a file, never a live foreign socket;
* a socket directory others can write into is refused, with what to do.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

from tests.harness.switch import VSWITCHD, Vswitchd
from vswitch.cli import request

NOBODY = 65534


def start_refused(sw: Vswitchd, wait: float = 5.0) -> subprocess.CompletedProcess:
    """Start vswitchd on sw's config, expecting it to refuse: it must exit at
    once. One still running after `wait` seconds is stopped, with returncode
    None, so that a test checks the damage done before its exit code."""
    proc = subprocess.Popen([VSWITCHD, "--config", str(sw.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=wait)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate()
        rc = None
    return subprocess.CompletedProcess(proc.args, rc, out, err)


def listening_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen()
    return s


def identity(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


# --- socket owner, group and mode ------------------------------------------------------


def test_reload_does_not_chmod_through_a_symlink_swapped_for_the_socket(tmp_path):
    """The socket's owner (QEMU's user, in a sticky directory) replaced it by
    a symlink to a 0600 file: the reload that opens the socket to 0666 and
    another group must not reach the file, and says why."""
    victim = tmp_path / "secret"
    victim.write_text("keys\n")
    victim.chmod(0o600)
    ports = {"vm": {"type": "vhost-user", "socket_mode": 0o600}}
    with Vswitchd(tmp_path / "sw", ports) as sw:
        path = Path(sw.socket("vm"))
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        path.rename(path.with_name("vm.moved"))
        path.symlink_to(victim)
        sw.write_config({"vm": {"type": "vhost-user", "socket_mode": 0o666, "socket_group": NOBODY}})
        out = sw.reload()
        st = os.stat(victim)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, 0), "chmod/chown followed the symlink"
        assert path.is_symlink() and os.readlink(path) == str(victim)   # left as it is
        assert out.returncode == 0, out.stderr
        assert "is no longer the socket vswitchd created" in out.stdout, out.stdout
        alert = sw.port("vm")["alerts"].get("socket", "")
        assert "is no longer the socket vswitchd created" in alert and "symbolic link" in alert, alert
        assert "left as they are" in sw.log_tail()


def test_reload_does_not_chmod_another_socket_put_in_place_of_ours(tmp_path):
    """Swapped for a socket of someone else's (a hard link to another
    daemon's socket looks just like this): not ours, not touched."""
    with Vswitchd(tmp_path / "sw", {"vm": {"type": "vhost-user", "socket_mode": 0o600}}) as sw:
        path = Path(sw.socket("vm"))
        path.rename(path.with_name("vm.moved"))
        other = listening_socket(path)
        try:
            os.chmod(path, 0o600)
            sw.write_config({"vm": {"type": "vhost-user", "socket_mode": 0o666}})
            out = sw.reload()
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            assert "is no longer the socket vswitchd created" in out.stdout, out.stdout
        finally:
            other.close()


def test_reload_applies_mode_and_group_to_our_own_socket(tmp_path):
    with Vswitchd(tmp_path / "sw", {"vm": {"type": "vhost-user", "socket_mode": 0o600}}) as sw:
        path = Path(sw.socket("vm"))
        sw.write_config({"vm": {"type": "vhost-user", "socket_mode": 0o666, "socket_group": NOBODY}})
        out = sw.reload()
        assert out.returncode == 0 and "warning" not in out.stdout, out
        st = os.lstat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o666, NOBODY)
        assert sw.port("vm")["alerts"] == {}


def test_reload_does_not_chgrp_through_a_symlink_swapped_for_the_control_socket(tmp_path):
    victim = tmp_path / "secret"
    victim.write_text("keys\n")
    victim.chmod(0o600)
    with Vswitchd(tmp_path / "sw", {}) as sw:
        ctl = sw.runtime_dir / "vswitchd.ctl"
        moved = ctl.with_name("moved.ctl")
        ctl.rename(moved)                     # still our listening socket, by another name
        ctl.symlink_to(victim)
        sw.write_config({}, extra={"control": {"group": NOBODY}})
        reply = request(str(moved), "reload", {})
        st = os.stat(victim)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, 0), "chmod/chown followed the symlink"
        assert reply["ok"], reply
        assert any("control socket: " in w and "is no longer the socket vswitchd created" in w
                   for w in reply["result"]["warnings"]), reply


# --- what is unlinked --------------------------------------------------------------------


def test_file_at_the_control_socket_path_is_not_unlinked(tmp_path):
    sw = Vswitchd(tmp_path / "sw", {})
    sw.runtime_dir.mkdir(mode=0o755)
    ctl = sw.runtime_dir / "vswitchd.ctl"
    ctl.write_text("not a socket\n")
    out = start_refused(sw)
    assert ctl.exists() and ctl.read_text() == "not a socket\n", "the daemon removed a file"
    assert out.returncode == 1 and "is not a socket" in out.stderr, out


def test_live_socket_at_the_control_socket_path_is_not_stolen(tmp_path):
    sw = Vswitchd(tmp_path / "sw", {})
    sw.runtime_dir.mkdir(mode=0o755)
    ctl = sw.runtime_dir / "vswitchd.ctl"
    holder = listening_socket(ctl)
    try:
        before = identity(ctl)
        out = start_refused(sw)
        assert ctl.exists() and identity(ctl) == before, "the daemon unlinked a live socket"
        assert out.returncode == 1 and "another process is listening" in out.stderr, out
    finally:
        holder.close()


def test_dead_control_socket_is_replaced(tmp_path):
    """A crashed daemon's control socket (nobody listens) is stale: replaced."""
    sw = Vswitchd(tmp_path / "sw", {})
    sw.runtime_dir.mkdir(mode=0o755)
    listening_socket(sw.runtime_dir / "vswitchd.ctl").close()
    with sw:
        assert sw.ctl("version")


def test_file_and_live_socket_at_a_port_path_are_not_unlinked(tmp_path):
    taken, plain = tmp_path / "taken.sock", tmp_path / "plain.sock"
    plain.write_text("data\n")
    holder = listening_socket(taken)
    try:
        before = identity(taken)
        with Vswitchd(tmp_path / "sw", {"p1": {"type": "vhost-user", "socket": str(taken)},
                                        "p2": {"type": "vhost-user", "socket": str(plain)}}) as sw:
            assert "another process is listening" in sw.port("p1")["last_error"]
            assert "is not a socket" in sw.port("p2")["last_error"]
        assert identity(taken) == before and plain.read_text() == "data\n"
    finally:
        holder.close()


def test_stop_does_not_unlink_a_socket_path_that_was_replaced(tmp_path):
    with Vswitchd(tmp_path / "sw", {"keep": {"type": "vhost-user"}, "gone": {"type": "vhost-user"}}) as sw:
        kept, gone = Path(sw.socket("keep")), Path(sw.socket("gone"))
        for path in (kept, gone):
            path.rename(path.with_name(path.name + ".moved"))
            path.write_text("theirs\n")
        sw.write_config({"keep": {"type": "vhost-user"}})
        assert sw.reload().returncode == 0        # port "gone" removed: stopped
        assert gone.exists(), "removing a port unlinked a path that is no longer its socket"
        # the control socket too (replaced only now: vswitchctl needed it above)
        ctl = sw.runtime_dir / "vswitchd.ctl"
        ctl.rename(ctl.with_name("vswitchd.ctl.moved"))
        ctl.write_text("theirs\n")
    for path in (kept, gone, ctl):
        assert path.exists() and path.read_text() == "theirs\n", f"stop unlinked {path}, not ours"
    assert "vswitchd stopped" in sw.log_tail()


def test_stop_unlinks_our_own_sockets(tmp_path):
    sw = Vswitchd(tmp_path / "sw", {"p1": {"type": "vhost-user"}}).start()
    assert sw.stop(signal.SIGTERM) == 0
    assert not Path(sw.socket("p1")).exists() and not (sw.runtime_dir / "vswitchd.ctl").exists()


# --- the runtime lock ------------------------------------------------------------------


def test_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    sw = Vswitchd(tmp_path / "sw", {})
    sw.runtime_dir.mkdir(mode=0o755)
    (sw.runtime_dir / "vswitchd.lock").symlink_to(victim)
    out = start_refused(sw)
    assert victim.read_text() == "precious\n", "the lock was opened through the symlink"
    assert out.returncode == 1, out
    assert "vswitchd.lock" in out.stderr and "symbolic link" in out.stderr, out.stderr
    assert not (sw.runtime_dir / "vswitchd.ctl").exists()


def test_lock_file_that_is_a_hard_link_is_refused_and_not_truncated(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    sw = Vswitchd(tmp_path / "sw", {})
    sw.runtime_dir.mkdir(mode=0o755)
    os.link(victim, sw.runtime_dir / "vswitchd.lock")
    out = start_refused(sw)
    assert victim.read_text() == "precious\n", "the lock truncated a file linked elsewhere"
    assert out.returncode == 1 and "vswitchd.lock" in out.stderr, out


# --- socket directories ------------------------------------------------------------------


def test_world_writable_socket_directory_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    sw = Vswitchd(tmp_path / "sw", {"vm": {"type": "vhost-user", "socket": str(shared / "vm.sock")}})
    out = start_refused(sw)
    assert not (shared / "vm.sock").exists()
    assert out.returncode == 6, out
    assert (f"ports.vm.socket: {shared} is mode 0777: writable by group or others (and not sticky)"
            in out.stderr), out.stderr
    assert "chmod go-w" in out.stderr


def test_world_writable_runtime_dir_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o757)
    out = start_refused(Vswitchd(tmp_path / "sw", {}, runtime_dir=run))
    assert out.returncode == 6, out
    assert f"runtime_dir: {run} is mode 0757: writable by group or others" in out.stderr, out.stderr
    assert not (run / "vswitchd.lock").exists()


def test_socket_directory_owned_by_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    sw = Vswitchd(tmp_path / "sw", {"vm": {"type": "vhost-user", "socket": str(theirs / "vm.sock")}})
    out = start_refused(sw)
    assert out.returncode == 6, out
    assert f"ports.vm.socket: {theirs} is owned by uid {NOBODY}" in out.stderr, out.stderr


def test_reload_into_an_unsafe_directory_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o770)
    with Vswitchd(tmp_path / "sw", {"p1": {"type": "vhost-user"}}) as sw:
        sw.write_config({"p1": {"type": "vhost-user"},
                         "p2": {"type": "vhost-user", "socket": str(shared / "p2.sock")}})
        out = sw.reload()
        assert out.returncode == 1, out
        assert f"{shared} is mode 0770: writable by group or others" in out.stderr, out.stderr
        assert [p["name"] for p in sw.ctl("port list")] == ["p1"]
        assert not (shared / "p2.sock").exists()


def test_sticky_world_writable_directory_is_allowed(tmp_path):
    """Like /tmp: others may create entries but not remove or rename ours."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    with Vswitchd(tmp_path / "sw", {"vm": {"type": "vhost-user", "socket": str(sticky / "vm.sock")}}) as sw:
        port = sw.port("vm")
        assert port["state"] == "listening" and port["last_error"] is None, port
