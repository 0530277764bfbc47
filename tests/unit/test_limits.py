"""The worst case of file descriptors a configuration can hold (vswitch/limits.py)."""

from __future__ import annotations

import configparser
import resource
import socket
import textwrap
from pathlib import Path

import pytest

from vswitch import limits
from vswitch.config import parse_config
from vswitch.vhost import session, transport

ROOT = Path(__file__).resolve().parents[2]


def config(text: str):
    return parse_config(textwrap.dedent(text).lstrip("\n"), check_host=False)


def test_worst_case_per_port() -> None:
    c = config("""
        datapath: {workers: 2}
        ports:
          small: {type: vhost-user}
          big: {type: vhost-user, queues: 64}
          qemu: {type: vhost-user, mode: client, queues: 2}
          up: {type: tap, queues: 4}
          vx: {type: vxlan, local: 192.0.2.1, remotes: [192.0.2.2], vni: 7}
        """)
    budget = limits.fd_budget(c)
    # 3 eventfds x 2 vrings x queues + 2 x 32 memory-region dups + 1 in flight + sockets
    assert budget.ports == {
        "small": 3 * 2 * 1 + 64 + 1 + 3,       # 74: listener, connection, a refused one
        "big": 3 * 2 * 64 + 64 + 1 + 3,        # 452
        "qemu": 3 * 2 * 2 + 64 + 1 + 1,        # 78: client mode, the connection only
        "up": 4,                               # a TAP: one fd per queue
        "vx": 1,                               # a VXLAN port: its socket
    }
    assert budget.workers == 2 * 3 and budget.daemon == 64
    assert budget.total == 74 + 452 + 78 + 4 + 1 + 6 + 64 == 679
    assert budget.describe(c) == ("3 vhost-user port(s): 604, 1 tap port(s): 4, "
                                  "1 vxlan port(s): 1, 2 worker(s): 6, the daemon itself: 64")


def test_the_constants_follow_the_protocol_code() -> None:
    assert limits.MEM_SLOTS == session.MAX_MEM_SLOTS
    # The transport receives more fds than a message may carry (and closes the
    # surplus): a full memory table plus a message full of fds fits the budget.
    room = (transport._CMSG_SPACE - socket.CMSG_LEN(0)) // transport._FD_SIZE
    assert room == 32
    assert limits.MEM_SLOTS + room <= limits.MEM_TABLE_FDS + limits.FDS_IN_FLIGHT


class FakeLimits:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, soft: int, hard: int,
                 refuse: bool = False) -> None:
        self.value = (soft, hard)
        self.calls: list[tuple[int, int]] = []
        self.refuse = refuse
        monkeypatch.setattr(limits.resource, "getrlimit", lambda which: self.value)
        monkeypatch.setattr(limits.resource, "setrlimit", self.set)

    def set(self, which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        self.calls.append(value)
        if self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        self.value = value


ONE_PORT = "ports: {vm1: {type: vhost-user, queues: 4}}\n"      # 24 + 65 + 3 + 3 + 64 = 159


def test_enough_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLimits(monkeypatch, 1024, 4096)
    check = limits.ensure_nofile(config(ONE_PORT))
    assert (check.needed, check.soft, check.hard, check.raised, check.warning) == \
        (159, 1024, 4096, False, None)
    assert fake.calls == []


def test_a_low_soft_limit_is_raised_to_the_worst_case(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLimits(monkeypatch, 100, 4096)
    check = limits.ensure_nofile(config(ONE_PORT))
    assert fake.calls == [(159, 4096)]
    assert check.raised and check.soft_before == 100 and check.soft == 159 and check.warning is None


def test_unlimited_hard_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLimits(monkeypatch, 100, resource.RLIM_INFINITY)
    assert limits.ensure_nofile(config(ONE_PORT)).soft == 159
    assert fake.calls == [(159, resource.RLIM_INFINITY)]


def test_a_hard_limit_below_the_worst_case_is_used_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLimits(monkeypatch, 100, 150)
    check = limits.ensure_nofile(config(ONE_PORT))
    assert fake.calls == [(150, 150)]
    assert check.soft == 150 and check.raised
    assert check.warning == (
        "RLIMIT_NOFILE: this configuration can hold up to 159 file descriptors (1 vhost-user "
        "port(s): 92, 1 worker(s): 3, the daemon itself: 64), but the limit is 150 (hard limit 150): "
        "a guest may fail to connect or to map its memory; raise LimitNOFILE= of the service "
        "(or `ulimit -n` before starting vswitchd)")


def test_a_refused_raise_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeLimits(monkeypatch, 100, 4096, refuse=True)
    check = limits.ensure_nofile(config(ONE_PORT))
    assert check.soft == 100 and not check.raised
    assert "but the limit is 100 (hard limit 4096) (raising it failed: not allowed" in check.warning


def test_never_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLimits(monkeypatch, 50_000, 50_000)
    assert limits.ensure_nofile(config("ports: {}\n")).soft == 50_000
    assert fake.calls == []


def test_the_unit_allows_every_port_the_datapath_has_at_full_size() -> None:
    from vswitch._datapath import MAX_PORTS, MAX_QUEUE_PAIRS
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ROOT / "systemd" / "vswitchd.service")
    nofile = int(unit["Service"]["LimitNOFILE"])
    ports = "\n".join(f"  p{i}: {{type: vhost-user, queues: {MAX_QUEUE_PAIRS}}}"
                      for i in range(MAX_PORTS))
    worst = limits.fd_budget(config(f"datapath: {{workers: 64}}\nports:\n{ports}\n")).total
    assert worst <= nofile, (worst, nofile)
