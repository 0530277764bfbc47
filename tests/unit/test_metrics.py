"""vswitch.metrics without a datapath: the collector against a fake switch
(plain objects with the shapes of port.show(), dp.worker_stats() and
dp.fdb_entries()) seen through SwitchAPI as the daemon's is, parsed back
with prometheus_client's own parser; Prometheus' naming rules
(https://prometheus.io/docs/practices/naming/); the HTTP endpoint on a real
socket (asyncio and uvloop); and the Grafana dashboard against what the
collector emits.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vswitch import __version__, metrics
from vswitch.api import SwitchAPI
from vswitch.metrics import MetricsServer, make_registry

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "vswitch-dashboard.json"


# --- a fake switch -------------------------------------------------------------------------

def ring(packets=0, nbytes=0, drops=None, enabled=True):
    return {"started": enabled, "enabled": enabled, "broken": False, "size": 256,
            "packets": packets, "bytes": nbytes, "notifications": 0, "notify_suppressed": 0,
            "kicks": 0, "offload": {}, "drops": dict(drops or {})}


class FakeVhostPort:
    def __init__(self, name, slot, queues=2, connected=True, enabled=2):
        self.name, self.slot = name, slot
        self.info = {
            "name": name, "type": "vhost-user", "mode": "server", "socket": f"/run/vswitch/{name}.sock",
            "queues_offered": queues, "state": "connected" if connected else "listening",
            "connections": 3, "disconnects": 2, "refused": 1, "protocol_errors": 1,
            "memory_faults": 1, "message_timeouts": 2, "last_error": None, "alerts": {},
            "features": ["MRG_RXBUF", "EVENT_IDX", "VERSION_1"] if connected else [],
            "protocol_features": [], "mtu": 1500 if connected else None,
            "queues_enabled": enabled if connected else 0,
            "queues": [{"pair": q, "rx": ring(100 + q, 6400 + q), "tx": ring(200 + q, 12800 + q)}
                       for q in range(queues)],
            "mac": None, "mtu_enforced": None,
            "iotlb": {"active": connected, "entries": 3, "hits": 10, "misses": 2, "denied": 1,
                      "updates": 4, "invalidations": 1, "evicted": 0, "refused": 0,
                      "miss_sent": 2, "miss_suppressed": 0, "miss_unsent": 0, "miss_queue_full": 0},
        }

    def show(self):
        return self.info


class FakeTapPort:
    def __init__(self, name, slot, attached=True):
        self.name, self.slot = name, slot
        self.info = {
            "name": name, "type": "tap", "ifname": "vstap0", "mode": "create", "socket": None,
            "state": "up" if attached else "down", "mtu": 9000,
            "queues_offered": 1, "queues_enabled": 1 if attached else 0,
            "connections": 4, "disconnects": 3, "protocol_errors": 0, "last_error": None,
            "alerts": {}, "features": [], "protocol_features": [],
            "queues": [{"pair": 0, "rx": ring(7, 700, {"tap_write_failed": 5}), "tx": ring(8, 800)}],
        }

    def show(self):
        return self.info


class BrokenPort:
    name, slot = "gone", 9

    def show(self):
        raise RuntimeError("no port 9")


class FakeDatapath:
    def __init__(self):
        self.workers = [{"rounds": 10, "idle_sleeps": 4, "wakeups": 3, "busy_ns": 2_500_000_000, "cpu": None,
                         "tap_io": "io_uring", "tap_batches": 7, "tap_batched_writes": 150},
                        {"rounds": 20, "idle_sleeps": 5, "wakeups": 1, "busy_ns": 0, "cpu": None}]
        self.fdb = [{"mac": mac, "vlan": 0, "port": slot, "static": False, "age_s": 1}
                    for mac, slot in (("02:00:00:00:00:01", 0), ("02:00:00:00:00:02", 0),
                                      ("02:00:00:00:00:03", 2), ("02:00:00:00:00:04", 7))]
        self.fdb_counters = {"learned": 4, "static": 0, "full": 0, "static_moves": 0, "aged": 12,
                             "aging_time": 300,
                             "ports": {0: {"learned": 2, "max": 2, "limit_refused": 40},
                                       1: {"learned": 0, "max": 1024, "limit_refused": 0},
                                       7: {"learned": 1, "max": 0, "limit_refused": 3}}}

    def worker_stats(self):
        return self.workers

    def fdb_entries(self):
        return self.fdb

    def fdb_stats(self):
        return self.fdb_counters


class FakeSwitch:
    def __init__(self):
        a, b, up = FakeVhostPort("a", 0), FakeVhostPort("b", 1, queues=1, connected=False), FakeTapPort("up", 2)
        a.info["queues"][1]["tx"]["drops"] = {"bad_chain": 3, "runt": 1}
        a.info["queues"][0]["rx"]["drops"] = {"no_rx_buffer": 9}
        self.ports = {"a": a, "b": b, "up": up}
        self.dp = FakeDatapath()
        self.reload_counts = {"success": 2, "failure": 1}
        self.last_reload_ok = False
        self.last_reload_time = 1_700_000_000.0


def scrape(switch) -> dict:
    """{sample name: {frozenset(labels.items()): value}} and the families."""
    from prometheus_client import generate_latest
    text = generate_latest(make_registry(SwitchAPI(switch))).decode()
    families = list(text_string_to_metric_families(text))
    samples: dict[str, dict] = {}
    for fam in families:
        for s in fam.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return {"families": families, "samples": samples, "text": text}


def value(samples, name, **labels):
    return samples[name][frozenset(labels.items())]


@pytest.fixture
def switch():
    return FakeSwitch()


# --- the collector ------------------------------------------------------------------------

def test_receive_comes_from_the_tx_ring_and_transmit_from_the_rx_ring(switch):
    s = scrape(switch)["samples"]
    assert value(s, "vswitch_port_receive_packets_total", port="a", queue="1") == 201
    assert value(s, "vswitch_port_receive_bytes_total", port="a", queue="1") == 12801
    assert value(s, "vswitch_port_transmit_packets_total", port="a", queue="0") == 100
    assert value(s, "vswitch_port_transmit_bytes_total", port="a", queue="0") == 6400
    assert value(s, "vswitch_port_receive_packets_total", port="up", queue="0") == 8
    assert value(s, "vswitch_port_transmit_bytes_total", port="up", queue="0") == 700
    # every queue of every port, connected or not
    assert {dict(k)["port"] for k in s["vswitch_port_receive_packets_total"]} == {"a", "b", "up"}


def test_drops_carry_queue_direction_and_reason(switch):
    s = scrape(switch)["samples"]
    drops = {tuple(sorted(dict(k).items())): v for k, v in s["vswitch_port_dropped_total"].items()}
    assert drops == {
        (("direction", "receive"), ("port", "a"), ("queue", "1"), ("reason", "bad_chain")): 3,
        (("direction", "receive"), ("port", "a"), ("queue", "1"), ("reason", "runt")): 1,
        (("direction", "transmit"), ("port", "a"), ("queue", "0"), ("reason", "no_rx_buffer")): 9,
        (("direction", "transmit"), ("port", "up"), ("queue", "0"), ("reason", "tap_write_failed")): 5,
    }


def test_port_state_info_queues_and_mtu(switch):
    s = scrape(switch)["samples"]
    assert value(s, "vswitch_port_up", port="a") == 1
    assert value(s, "vswitch_port_up", port="b") == 0
    assert value(s, "vswitch_port_up", port="up") == 1
    switch.ports["a"].info["queues_enabled"] = 0          # connected, nothing enabled yet
    switch.ports["up"].info["state"] = "down"
    s2 = scrape(switch)["samples"]
    assert value(s2, "vswitch_port_up", port="a") == 0 and value(s2, "vswitch_port_up", port="up") == 0
    assert value(s, "vswitch_port_info", port="a", type="vhost-user", mode="server",
                 socket="/run/vswitch/a.sock", ifname="", features="MRG_RXBUF,EVENT_IDX,VERSION_1") == 1
    assert value(s, "vswitch_port_info", port="up", type="tap", mode="create", socket="",
                 ifname="vstap0", features="") == 1
    assert value(s, "vswitch_port_queues", port="a", state="offered") == 2
    assert value(s, "vswitch_port_queues", port="a", state="enabled") == 2
    assert value(s, "vswitch_port_queues", port="b", state="enabled") == 0
    assert value(s, "vswitch_port_mtu_bytes", port="a") == 1500
    assert value(s, "vswitch_port_mtu_bytes", port="up") == 9000
    assert frozenset({("port", "b")}) not in s["vswitch_port_mtu_bytes"]   # unknown: absent, not 0


def test_connection_events_fdb_workers_reloads_and_build(switch):
    s = scrape(switch)["samples"]
    for event, n in (("connect", 3), ("disconnect", 2), ("refused", 1), ("protocol_error", 1),
                     ("memory_fault", 1), ("message_timeout", 2)):
        assert value(s, "vswitch_vhost_connections_total", port="a", event=event) == n
    assert not any(dict(k)["port"] == "up" for k in s["vswitch_vhost_connections_total"])
    assert value(s, "vswitch_tap_events_total", port="up", event="attach") == 4
    assert value(s, "vswitch_tap_events_total", port="up", event="detach") == 3
    assert value(s, "vswitch_fdb_entries", port="a") == 2
    assert value(s, "vswitch_fdb_entries", port="b") == 0
    assert value(s, "vswitch_fdb_entries", port="up") == 1
    assert value(s, "vswitch_fdb_entries", port="#7") == 1
    assert value(s, "vswitch_fdb_aged_total") == 12
    assert value(s, "vswitch_fdb_limit_refused_total", port="a") == 40
    assert value(s, "vswitch_fdb_limit_refused_total", port="b") == 0
    # a slot no port owns any more has no name to report its refusals under
    assert all(dict(k)["port"] in ("a", "b", "up") for k in s["vswitch_fdb_limit_refused_total"])
    assert value(s, "vswitch_worker_busy_seconds_total", worker="0") == 2.5
    assert value(s, "vswitch_worker_rounds_total", worker="1") == 20
    assert value(s, "vswitch_worker_sleeps_total", worker="0") == 4
    assert value(s, "vswitch_worker_wakeups_total", worker="0") == 3
    assert value(s, "vswitch_worker_tap_batches_total", worker="0") == 7
    assert value(s, "vswitch_worker_tap_batched_writes_total", worker="0") == 150
    assert value(s, "vswitch_worker_tap_batched_writes_total", worker="1") == 0
    assert value(s, "vswitch_config_reloads_total", result="success") == 2
    assert value(s, "vswitch_config_reloads_total", result="failure") == 1
    assert value(s, "vswitch_config_last_reload_successful") == 0
    assert value(s, "vswitch_config_last_reload_success_timestamp_seconds") == 1_700_000_000.0
    (labels,) = s["vswitch_build_info"]
    assert dict(labels)["version"] == __version__ and dict(labels)["cython"] and dict(labels)["python"]
    assert "process_open_fds" in s


def test_a_switch_without_reload_state_yet_reports_start_time(switch):
    del switch.reload_counts, switch.last_reload_ok, switch.last_reload_time
    s = scrape(switch)["samples"]
    assert value(s, "vswitch_config_reloads_total", result="failure") == 0
    assert value(s, "vswitch_config_last_reload_successful") == 1
    assert value(s, "vswitch_config_last_reload_success_timestamp_seconds") == metrics._STARTED


def test_a_port_that_cannot_be_read_is_skipped_not_fatal(switch):
    switch.ports["gone"] = BrokenPort()
    s = scrape(switch)["samples"]
    ports = {dict(k)["port"] for k in s["vswitch_port_up"]}
    assert ports == {"a", "b", "up"}


def test_missing_busy_time_is_absent_not_zero(switch):
    for w in switch.dp.workers:
        del w["busy_ns"]
    s = scrape(switch)["samples"]
    assert "vswitch_worker_busy_seconds_total" not in s
    assert value(s, "vswitch_worker_rounds_total", worker="0") == 10


def test_collecting_reads_the_switch_each_time(switch):
    first = scrape(switch)["samples"]
    switch.ports["a"].info["queues"][0]["tx"]["packets"] += 5
    second = scrape(switch)["samples"]
    assert value(second, "vswitch_port_receive_packets_total", port="a", queue="0") == \
        value(first, "vswitch_port_receive_packets_total", port="a", queue="0") + 5


# --- naming rules (prometheus.io, "Metric and label naming") ------------------------------

BASE_UNITS = {"bytes", "seconds"}
NOT_BASE_UNITS = {"milliseconds", "microseconds", "nanoseconds", "ms", "ns", "kilobytes", "megabytes",
                  "bits", "minutes", "hours", "percent"}


def test_naming_rules(switch):
    out = scrape(switch)
    for fam in out["families"]:
        name = fam.name
        assert name.startswith(("vswitch_", "process_")), name
        assert fam.documentation.strip(), f"{name} has no HELP"
        words = name.split("_")
        assert not NOT_BASE_UNITS & set(words), f"{name}: use base units"
        if fam.type == "counter":
            for sample in fam.samples:
                assert sample.name.endswith(("_total", "_created")), sample.name
        else:
            assert not name.endswith("_total"), f"{name}: only counters end in _total"
        if fam.type == "info" or name.endswith("_info"):
            assert all(s.value == 1 for s in fam.samples), name
        unit_words = BASE_UNITS & set(words)
        if unit_words and name.startswith("vswitch_"):
            # the unit is the last word (before _total)
            assert words[-1] in BASE_UNITS, f"{name}: the unit goes last"
        for sample in fam.samples:
            for label in sample.labels:
                assert re.fullmatch(r"[a-z][a-z0-9_]*", label) and not label.startswith("__"), label
                # a label's name is not repeated in the metric's name (the
                # subsystem word aside: vswitch_port_*{port}, vswitch_worker_*{worker})
                if label != words[1]:
                    assert label not in words, f"{name} repeats its label {label}"


def test_every_family_has_samples_so_dashboards_never_see_holes(switch):
    out = scrape(switch)
    empty = [f.name for f in out["families"] if not f.samples]
    assert empty == []


# --- the HTTP endpoint ------------------------------------------------------------------------

@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run
    return asyncio.run


async def http(port: int, raw: bytes, host: str = "127.0.0.1", timeout: float = 5.0) -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def get(path: str, *extra: str, method: str = "GET") -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: x", *extra]) + "\r\n\r\n").encode()


async def serving(switch, host="127.0.0.1"):
    server = MetricsServer(SwitchAPI(switch), host, 0)
    await server.start()
    return server


def test_get_metrics_serves_the_exposition(run, switch):
    async def main():
        server = await serving(switch)
        try:
            status, headers, body = await http(server.bound_port, get("/metrics"))
            assert status == 200
            assert headers["content-type"].startswith("text/plain")
            assert int(headers["content-length"]) == len(body)
            assert headers["connection"] == "close"
            names = {f.name for f in text_string_to_metric_families(body.decode())}
            assert "vswitch_port_receive_packets" in names and "process_open_fds" in names
            status, headers, body2 = await http(server.bound_port, get("/metrics?x=1", method="HEAD"))
            assert status == 200 and body2 == b"" and int(headers["content-length"]) > 0
        finally:
            await server.stop()
    run(main())


def test_gzip_and_openmetrics_when_asked(run, switch):
    async def main():
        server = await serving(switch)
        try:
            status, headers, body = await http(server.bound_port, get("/metrics", "Accept-Encoding: gzip"))
            assert status == 200 and headers["content-encoding"] == "gzip"
            text = gzip.decompress(body).decode()
            assert "vswitch_port_up" in text
            status, headers, body = await http(server.bound_port, get(
                "/metrics", "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5"))
            assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
            assert body.rstrip().endswith(b"# EOF")
        finally:
            await server.stop()
    run(main())


def test_index_unknown_path_and_other_methods(run, switch):
    async def main():
        server = await serving(switch)
        try:
            status, headers, body = await http(server.bound_port, get("/"))
            assert status == 200 and b'href="/metrics"' in body
            status, _, _ = await http(server.bound_port, get("/metricsx"))
            assert status == 404
            status, _, _ = await http(server.bound_port, get("/../etc/passwd"))
            assert status == 404
            for method in ("POST", "PUT", "DELETE", "OPTIONS"):
                status, headers, _ = await http(server.bound_port, get("/metrics", method=method))
                assert status == 405 and headers["allow"] == "GET, HEAD"
        finally:
            await server.stop()
    run(main())


@pytest.mark.parametrize("raw", [
    b"\x00\x01\x02\xff\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /metrics\r\n\r\n",
    b"GET /metrics SPDY/3\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
], ids=["binary", "method-only", "no-version", "not-http", "bad-header"])
def test_garbage_requests_get_400_and_the_server_keeps_serving(run, switch, raw):
    async def main():
        server = await serving(switch)
        try:
            status, _, _ = await http(server.bound_port, raw)
            assert status == 400
            status, _, _ = await http(server.bound_port, get("/metrics"))
            assert status == 200
        finally:
            await server.stop()
    run(main())


def test_oversized_request_head_gets_431(run, switch):
    async def main():
        server = await serving(switch)
        try:
            big = get("/metrics", "X-Filler: " + "a" * (metrics.MAX_REQUEST_HEAD * 2))
            status, _, _ = await http(server.bound_port, big)
            assert status == 431
            status, _, _ = await http(server.bound_port, get("/metrics"))
            assert status == 200
        finally:
            await server.stop()
    run(main())


def test_slow_client_times_out_while_others_are_served(run, switch, monkeypatch):
    monkeypatch.setattr(metrics, "READ_TIMEOUT_S", 0.5)

    async def main():
        server = await serving(switch)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: ")          # and then nothing
            await writer.drain()
            status, _, _ = await http(server.bound_port, get("/metrics"))   # not blocked by it
            assert status == 200
            data = await asyncio.wait_for(reader.read(), 5)
            assert data.startswith(b"HTTP/1.1 408 ")
            writer.close()
        finally:
            await server.stop()
    run(main())


def test_client_that_vanishes_mid_request_costs_nothing(run, switch):
    async def main():
        server = await serving(switch)
        try:
            for _ in range(20):
                s = socket.create_connection(("127.0.0.1", server.bound_port))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.sendall(b"GET /metr")
                s.close()                                              # RST
            s = socket.create_connection(("127.0.0.1", server.bound_port))
            s.sendall(get("/metrics"))
            s.close()                                                  # gone before the answer
            await asyncio.sleep(0.1)
            status, _, _ = await http(server.bound_port, get("/metrics"))
            assert status == 200
            await asyncio.sleep(0.1)
            assert server._clients == set()
        finally:
            await server.stop()
    run(main())


def test_concurrent_scrapes(run, switch):
    async def main():
        server = await serving(switch)
        try:
            results = await asyncio.gather(*(http(server.bound_port, get("/metrics"))
                                             for _ in range(metrics.MAX_CLIENTS)))
            assert [r[0] for r in results] == [200] * metrics.MAX_CLIENTS
            # the same switch state: the same vswitch_* lines (process_* move)
            assert len({tuple(line for line in r[2].splitlines() if line.startswith(b"vswitch_"))
                        for r in results}) == 1
        finally:
            await server.stop()
    run(main())


def test_more_idle_connections_than_allowed_are_closed_and_scrapes_still_work(run, switch, monkeypatch):
    monkeypatch.setattr(metrics, "MAX_CLIENTS", 4)

    async def main():
        server = await serving(switch)
        idle = []
        try:
            for _ in range(4):
                idle.append(await asyncio.open_connection("127.0.0.1", server.bound_port))
            await asyncio.sleep(0.05)
            status, headers, body = await http(server.bound_port, get("/metrics"))
            assert status == 503 and body == b""      # turned away while 4 are held
            for _, w in idle:
                w.close()
            await asyncio.sleep(0.1)
            status, _, _ = await http(server.bound_port, get("/metrics"))
            assert status == 200
        finally:
            await server.stop()
    run(main())


def test_stop_closes_idle_connections_promptly(run, switch):
    async def main():
        server = await serving(switch)
        port = server.bound_port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await server.stop()
        assert loop.time() - t0 < 2
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)        # no longer listening
    run(main())


def test_collect_failure_is_a_500_not_a_crash(run, switch):
    def boom():
        raise RuntimeError("datapath gone")
    switch.dp.worker_stats = boom

    async def main():
        server = await serving(switch)
        try:
            status, _, body = await http(server.bound_port, get("/metrics"))
            assert status == 500
            status, _, _ = await http(server.bound_port, get("/"))
            assert status == 200
        finally:
            await server.stop()
    run(main())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_host(run, switch):
    async def main():
        server = await serving(switch, "::1")
        try:
            assert server.sockets[0].family == socket.AF_INET6
            status, _, _ = await http(server.bound_port, get("/metrics"), host="::1")
            assert status == 200
        finally:
            await server.stop()
    run(main())


def test_address_in_use_raises_oserror_for_the_daemon_to_report(run, switch):
    async def main():
        first = await serving(switch)
        try:
            second = MetricsServer(SwitchAPI(switch), "127.0.0.1", first.bound_port)
            with pytest.raises(OSError):
                await second.start()
        finally:
            await first.stop()
    run(main())


# --- the Grafana dashboard -----------------------------------------------------------------

def dashboard_exprs(doc) -> list[str]:
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "query", "definition") and isinstance(v, str):
                    exprs.append(v)
                elif k == "query" and isinstance(v, dict) and isinstance(v.get("query"), str):
                    exprs.append(v["query"])
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(doc)
    return exprs


def test_dashboard_uses_only_metrics_the_collector_emits(switch):
    doc = json.loads(DASHBOARD.read_text())
    emitted = set(scrape(switch)["samples"])
    exprs = dashboard_exprs(doc)
    assert len(exprs) >= 10
    used = set()
    for e in exprs:
        used |= set(re.findall(r"\b((?:vswitch|process)_[a-z0-9_]+)", e))
    assert used, exprs
    unknown = used - emitted
    assert not unknown, f"dashboard uses metrics nobody emits: {sorted(unknown)}"
    # and every vswitch family is on the dashboard somewhere
    families = {f.name for f in scrape(switch)["families"] if f.name.startswith("vswitch_")}
    shown = {name for name in families
             if any(u == name or u.startswith(name + "_") for u in used)}
    assert families - shown == set(), f"not on the dashboard: {sorted(families - shown)}"


def test_dashboard_shape():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["schemaVersion"] >= 36
    assert any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus"
               for i in doc.get("__inputs", []))
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert re.search(r"label_values\(vswitch_port_info(\{[^}]*\})?, port\)", json.dumps(variables["port"]["query"]))
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        if panel.get("type") == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            # counters are only ever shown as rates (or increases)
            for name in re.findall(r"\b(vswitch_[a-z0-9_]+_total)\b", target["expr"]):
                assert re.search(rf"(rate|increase|irate)\(\s*{name}", target["expr"]), target["expr"]
