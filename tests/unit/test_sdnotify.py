"""sd_notify client and worker watchdog: no privileges, no daemon."""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest

from vswitch import sdnotify
from vswitch.sdnotify import Notifier
from vswitch.watchdog import IDLE_ROUND_MAX_S, WorkerWatchdog


@pytest.fixture
def dgram(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_dgram():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"vswitch-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock.bind("\0" + name)
    sock.settimeout(2)
    yield "@" + name, sock
    sock.close()


def recv(sock) -> list[str]:
    return sock.recv(4096).decode().split("\n")


# --- Notifier ----------------------------------------------------------------------

def test_path_socket_messages_in_order(dgram):
    path, sock = dgram
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("2 ports, 1 worker")
    assert n.status("busy")
    assert n.watchdog()
    assert n.stopping()
    assert recv(sock) == ["READY=1", "STATUS=2 ports, 1 worker"]
    assert recv(sock) == ["STATUS=busy"]
    assert recv(sock) == ["WATCHDOG=1"]
    assert recv(sock) == ["STOPPING=1"]
    n.close()


def test_abstract_socket(abstract_dgram):
    name, sock = abstract_dgram
    n = Notifier({"NOTIFY_SOCKET": name})
    assert n.ready()
    assert recv(sock) == ["READY=1"]


def test_reloading_carries_monotonic_usec(dgram):
    path, sock = dgram
    n = Notifier({"NOTIFY_SOCKET": path})
    before = time.monotonic_ns() // 1000
    n.reloading()
    after = time.monotonic_ns() // 1000
    lines = recv(sock)
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    # the same clock systemd compares against: CLOCK_MONOTONIC
    assert abs(int(value) - sdnotify.monotonic_usec()) < 1_000_000


def test_status_is_one_line(dgram):
    path, sock = dgram
    Notifier({"NOTIFY_SOCKET": path}).status("two\nlines")
    assert recv(sock) == ["STATUS=two lines"]


def test_noop_when_unset():
    n = Notifier({})
    assert not n.enabled
    assert n.ready("x") is False
    assert n.watchdog() is False
    assert n.reloading() is False
    assert n.stopping() is False
    assert n.watchdog_interval() is None


def test_environment_is_cleared_for_children(dgram, monkeypatch):
    path, _ = dgram
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.enabled and n.watchdog_interval() == 1.0
    assert "NOTIFY_SOCKET" not in os.environ
    assert "WATCHDOG_USEC" not in os.environ


def test_send_error_logged_once_never_raised(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger="vswitch.sdnotify"):
        assert n.ready() is False
        assert n.watchdog() is False
        assert n.stopping() is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1


@pytest.mark.parametrize("env,expected", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),      # someone else's
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "junk"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(env, expected):
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", **env})
    assert n.watchdog_interval() == expected


def test_watchdog_without_notify_socket_is_still_reported():
    # the interval depends on WATCHDOG_USEC only; sending is what is a no-op
    n = Notifier({"WATCHDOG_USEC": "4000000"})
    assert n.watchdog_interval() == 2.0
    assert n.watchdog() is False


# --- WorkerWatchdog.check ----------------------------------------------------------

class FakeNotifier:
    def __init__(self):
        self.sent: list[str] = []

    def watchdog(self):
        self.sent.append("WATCHDOG=1")
        return True

    def status(self, text):
        self.sent.append(f"STATUS={text}")
        return True


class FakeDatapath:
    def __init__(self, n):
        self.rounds = [0] * n

    def worker_stats(self):
        return [{"rounds": r, "idle_sleeps": 0} for r in self.rounds]


def stats(*rounds):
    return [{"rounds": r} for r in rounds]


def test_check_healthy_while_all_workers_advance():
    wd = WorkerWatchdog(FakeDatapath(2), FakeNotifier(), period=15)
    assert wd.check(stats(0, 0), 0).healthy          # baseline
    assert wd.check(stats(10, 5), 15).healthy
    assert wd.check(stats(20, 6), 30).healthy


def test_check_one_stuck_worker_is_unhealthy_and_named_once():
    wd = WorkerWatchdog(FakeDatapath(3), FakeNotifier(), period=15)
    wd.check(stats(1, 1, 1), 0)
    v = wd.check(stats(2, 1, 2), 15.5)
    assert not v.healthy and v.stalled == [1] and v.newly_stalled == [1]
    v = wd.check(stats(3, 1, 3), 31)
    assert not v.healthy and v.stalled == [1] and v.newly_stalled == []
    v = wd.check(stats(4, 2, 4), 46)
    assert v.healthy and v.recovered == [1]


def test_check_short_period_tolerates_idle_worker_round_time():
    # WatchdogSec=2s: checks every second, but an idle worker in epoll_wait
    # finishes a round only every ~1 s; that is not a stall.
    wd = WorkerWatchdog(FakeDatapath(1), FakeNotifier(), period=1.0)
    assert wd.grace == IDLE_ROUND_MAX_S
    wd.check(stats(7), 0.0)
    assert wd.check(stats(7), 1.0).healthy       # round not finished yet
    assert wd.check(stats(8), 2.0).healthy
    assert wd.check(stats(8), 3.0).healthy
    assert wd.check(stats(8), 3.5).healthy
    v = wd.check(stats(8), 4.0)                  # grace (2 s) without a round
    assert not v.healthy and v.newly_stalled == [0]


def test_check_worker_count_change_rebaselines():
    wd = WorkerWatchdog(FakeDatapath(1), FakeNotifier(), period=15)
    wd.check(stats(1), 0)
    assert not wd.check(stats(1), 16).healthy
    v = wd.check(stats(1, 1), 17)
    assert v.healthy and v.recovered == [0]


def test_check_counter_going_backwards_is_progress():
    # a datapath rebuilt on reload starts its counters at zero again
    wd = WorkerWatchdog(FakeDatapath(1), FakeNotifier(), period=15)
    wd.check(stats(100), 0)
    assert wd.check(stats(3), 15).healthy


# --- WorkerWatchdog.tick: what is sent ---------------------------------------------

def test_tick_pings_stop_while_stalled_and_status_names_worker(caplog):
    dp, notifier = FakeDatapath(2), FakeNotifier()
    now = [0.0]
    wd = WorkerWatchdog(dp, notifier, period=15, status=lambda: "2 ports, 2 workers",
                        clock=lambda: now[0])

    def step(advance):
        now[0] += 15
        for i in advance:
            dp.rounds[i] += 1
        sent = len(notifier.sent)
        wd.tick()
        return notifier.sent[sent:]

    with caplog.at_level(logging.ERROR, logger="vswitch.watchdog"):
        assert step([0, 1]) == ["WATCHDOG=1"]          # baseline
        assert step([0, 1]) == ["WATCHDOG=1"]
        assert step([1]) == ["STATUS=worker 0 stalled"]
        assert step([1]) == []
        assert step([0, 1]) == ["STATUS=2 ports, 2 workers", "WATCHDOG=1"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("worker 0 stalled")


def test_tick_two_stalled_workers():
    dp, notifier = FakeDatapath(3), FakeNotifier()
    now = [0.0]
    wd = WorkerWatchdog(dp, notifier, period=15, clock=lambda: now[0])
    wd.tick()
    now[0] = 16
    dp.rounds[1] += 1
    wd.tick()
    assert notifier.sent[-1] == "STATUS=workers 0, 2 stalled"


def test_tick_stats_error_means_no_ping():
    class Broken:
        def worker_stats(self):
            raise RuntimeError("boom")
    notifier = FakeNotifier()
    wd = WorkerWatchdog(Broken(), notifier, period=1)
    assert wd.tick() is None
    assert notifier.sent == []


def test_run_pings_each_period(dgram):
    import asyncio
    path, sock = dgram
    dp = FakeDatapath(1)
    wd = WorkerWatchdog(dp, Notifier({"NOTIFY_SOCKET": path}), period=0.05)

    async def main():
        task = asyncio.create_task(wd.run())
        for _ in range(4):
            dp.rounds[0] += 1
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    assert recv(sock) == ["WATCHDOG=1"]
    assert recv(sock) == ["WATCHDOG=1"]
