"""vswitchd as a process: config errors, the runtime-directory lock, sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from tests.harness.switch import VSWITCHD, Vswitchd

VSWITCHCTL = VSWITCHD.replace("vswitchd", "vswitchctl")


def test_invalid_config_is_refused_naming_file_key_and_problem(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ports:\n  vm1:\n    type: vhost-user\n    queues: 0\n")
    proc = subprocess.run([VSWITCHD, "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 6       # "not configured": the unit's RestartPreventExitStatus
    assert f"{cfg}:4:13: ports.vm1.queues: must be 1..64 (got 0)" in proc.stderr
    check = subprocess.run([VSWITCHCTL, "config", "check", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 6 and f"{cfg}:4:13: ports.vm1.queues" in check.stderr
    missing = subprocess.run([VSWITCHD, "--config", str(tmp_path / "none.yaml")], capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 6 and "cannot read configuration file" in missing.stderr


def test_shipped_config_is_valid():
    from vswitch.config import load_config
    config = load_config(os.path.join(os.path.dirname(__file__), "..", "config", "vswitch.yaml"))
    assert [p.mode for p in config.ports.values()] == ["server", "server"]


def test_second_daemon_on_same_runtime_dir_refuses_and_first_keeps_its_sockets(tmp_path):
    with Vswitchd(tmp_path / "a", {"p1": {"type": "vhost-user"}}) as first:
        second = subprocess.run([VSWITCHD, "--config", str(first.config_path)],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "refusing to start" in second.stderr
        assert first.alive()
        assert first.port("p1")["state"] == "listening"
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(first.socket("p1"))     # still the first daemon's socket
        probe.close()


def test_stale_socket_of_a_killed_daemon_is_replaced(tmp_path):
    sw = Vswitchd(tmp_path, {"p1": {"type": "vhost-user"}})
    sw.start()
    sw.stop(signal.SIGKILL)
    assert os.path.exists(sw.socket("p1"))       # left behind by the crash
    with sw:
        assert sw.port("p1")["state"] == "listening"


def test_socket_held_by_another_live_process_is_not_stolen(tmp_path):
    path = str(tmp_path / "taken.sock")
    holder = socket.socket(socket.AF_UNIX)
    holder.bind(path)
    holder.listen()
    try:
        with Vswitchd(tmp_path / "sw", {"p1": {"type": "vhost-user", "socket": path},
                                        "p2": {"type": "vhost-user"}}) as sw:
            p1 = sw.port("p1")
            assert "another process is listening" in (p1["last_error"] or "")
            assert sw.port("p2")["state"] == "listening"    # the other port is unaffected
    finally:
        holder.close()


def test_sigint_stops_cleanly_and_removes_sockets(tmp_path):
    sw = Vswitchd(tmp_path, {"p1": {"type": "vhost-user"}}).start()
    sock = sw.socket("p1")
    assert sw.stop(signal.SIGINT) == 0
    assert not os.path.exists(sock)
    assert "vswitchd stopped" in sw.log_path.read_text()


def test_vswitchctl_text_json_and_exit_codes(tmp_path):
    with Vswitchd(tmp_path, {"p1": {"type": "vhost-user", "queues": 2}}) as sw:
        env = {**os.environ, "VSWITCH_RUNTIME_DIR": str(sw.runtime_dir)}
        out = subprocess.run([VSWITCHCTL, "port", "show", "p1"], capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "port p1 (vhost-user, server" in out.stdout
        out = subprocess.run([VSWITCHCTL, "-j", "port", "list"], capture_output=True, text=True, env=env)
        assert out.returncode == 0 and '"name": "p1"' in out.stdout
        out = subprocess.run([VSWITCHCTL, "port", "show", "nope"], capture_output=True, text=True, env=env)
        assert out.returncode == 1 and "no port named" in out.stderr
        out = subprocess.run([VSWITCHCTL, "frobnicate"], capture_output=True, text=True, env=env)
        assert out.returncode == 2


def test_malformed_messages_close_only_that_connection(tmp_path):
    """Garbage on one port's socket: that connection closes, the daemon and
    the other port carry on, and the port accepts the next front-end."""
    with Vswitchd(tmp_path, {"p1": {"type": "vhost-user"}, "p2": {"type": "vhost-user"}}) as sw:
        fds_before = sw.fd_count()
        for garbage in (b"\x01\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00",   # reply flag from a front-end
                        b"\xff\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00",   # unknown request 255
                        b"\x02\x00\x00\x00\x01\x00\x00\x00\x00\x10\x00\x00"):  # payload size 4096 then EOF
            s = socket.socket(socket.AF_UNIX)
            s.connect(sw.socket("p1"))
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            assert s.recv(100) == b""          # the switch closed it
            s.close()
        deadline = time.monotonic() + 10
        while sw.port("p1")["state"] != "listening" and time.monotonic() < deadline:
            time.sleep(0.05)
        p1 = sw.port("p1")
        assert p1["protocol_errors"] == 2 and p1["state"] == "listening"
        assert "unknown request 255" in sw.log_path.read_text()
        assert sw.port("p2")["connections"] == 0 and sw.alive()
        assert sw.fd_count() <= fds_before     # nothing leaked


def test_debug_commands_answer_only_with_debug_true(tmp_path):
    """The hooks for the switch's own tests (stall a worker, read a vring,
    probe the seccomp filter) are refused on a production config, over the
    socket and through vswitchctl; `debug: true` and a reload turn them on."""
    from vswitch.cli import request
    calls = {"debug vring": {"port": "p1", "index": 0}, "debug stall-worker": {"worker": 0, "seconds": 0.2},
             "debug seccomp-probe": {}}
    with Vswitchd(tmp_path, {"p1": {"type": "vhost-user"}}) as sw:
        ctl = str(sw.runtime_dir / "vswitchd.ctl")
        for command, args in calls.items():
            reply = request(ctl, command, args)
            assert reply == {"ok": False, "error": f"{command} is for test systems: it answers only "
                             "with `debug: true` in the configuration"}, reply
        env = {**os.environ, "VSWITCH_RUNTIME_DIR": str(sw.runtime_dir)}
        out = subprocess.run([VSWITCHCTL, "debug", "stall-worker", "0", "0.2"], capture_output=True,
                             text=True, env=env)
        assert out.returncode == 1 and "`debug: true`" in out.stderr
        help_text = subprocess.run([VSWITCHCTL, "--help"], capture_output=True, text=True).stdout
        assert "debug stall-worker WORKER" not in help_text and "debug: debug vring" in help_text
        sw.write_config(sw.ports, extra={"debug": True})
        assert sw.reload().returncode == 0
        assert sw.ctl("debug vring", **calls["debug vring"])["num"] == 0     # not started yet
        assert sw.ctl("debug stall-worker", **calls["debug stall-worker"]) == {}
        assert set(sw.ctl("debug seccomp-probe")["calls"]) == {"mount", "unshare"}
        out = subprocess.run([VSWITCHCTL, "-j", "debug", "vring", "p1", "1"], capture_output=True,
                             text=True, env=env)
        assert out.returncode == 0 and '"started": false' in out.stdout
        assert sw.alive()


def _threads(pid: int) -> dict[str, list[str]]:
    """The daemon's threads by name (comm) -> their CPU lists, io_uring's own left out."""
    out: dict[str, list[str]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                cpus = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("Cpus_allowed_list:"))
        except (OSError, StopIteration):
            continue        # a thread that ended meanwhile
        if not comm.startswith("iou-"):
            out.setdefault(comm, []).append(cpus)
    return out


def test_pinned_workers_have_their_cpus_to_themselves_and_a_reload_moves_them(tmp_path):
    """datapath.cpus pins the workers; every other thread (event loop,
    datapath control, thread pools) leaves their CPU when the daemon's mask
    has another: its wake-ups for messages, commands and periodic checks
    would otherwise take the workers' CPU from them (vswitch/cpus.py). A
    reload that moves the workers moves the rest too; unpinned, all share."""
    ports = {"p1": {"type": "vhost-user"}}
    pinned = {"datapath": {"workers": 1, "cpus": [1]}}
    with Vswitchd(tmp_path, ports, cpus="0-1", extra=pinned) as sw:
        threads = _threads(sw.proc.pid)
        assert threads.pop("vsw-worker-0") == ["1"], threads
        assert threads and all(c == ["0"] * len(c) for c in threads.values()), threads
        assert sw.ctl("show")["control_cpus"] == "0"
        text = subprocess.run([VSWITCHCTL, "--runtime-dir", str(sw.runtime_dir), "show"],
                              capture_output=True, text=True, timeout=30).stdout
        assert "control plane on CPU(s) 0, workers pinned to 1" in text

        sw.write_config(ports, {"datapath": {"workers": 1, "cpus": [0]}})
        assert sw.reload().returncode == 0
        threads = _threads(sw.proc.pid)
        assert threads.pop("vsw-worker-0") == ["0"], threads
        assert all(c == ["1"] * len(c) for c in threads.values()), threads

        sw.write_config(ports, {"datapath": {"workers": 1}})
        assert sw.reload().returncode == 0
        threads = _threads(sw.proc.pid)
        assert all(c == ["0-1"] * len(c) for c in threads.values()), threads
        assert sw.ctl("show")["control_cpus"] == "0-1"
