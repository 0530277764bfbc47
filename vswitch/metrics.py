"""Prometheus metrics, read from the switch at scrape time.

Nothing here runs per packet: the datapath keeps plain per-queue C counters
(docs/architecture.md), and a scrape reads them through the interface the
control socket uses too (SwitchAPI.scrape in vswitch/api.py: `port.show()`,
the workers' and the FDB's counters, by port name) and turns them into
metric families (a custom collector, as the Prometheus
docs recommend for proxied state).

The HTTP endpoint is served on the daemon's own asyncio loop rather than by
prometheus_client's thread server: the collector reads Python objects that
the loop owns (ports, sessions, reload state), so running it on the loop
needs no locking and never sees a port half-way through a reload step.

    GET /metrics   the exposition (text format; OpenMetrics when asked for)
    GET /          a pointer to /metrics
    anything else  404 (unknown path) or 405 (not GET/HEAD)

One request per connection (`Connection: close`); request headers are
bounded in size and time, and at most MAX_CLIENTS connections are served at
once (more get a 503 at once), so a slow or hostile client costs a socket,
never the daemon.

Direction vocabulary (node_exporter's, so dashboards line up): "receive" is
what the switch takes in from a port, "transmit" what it sends out of it.
For a vhost-user port the guest's TX virtqueue (vring 2q+1) is what the
switch receives and the guest's RX virtqueue (vring 2q) what it transmits;
for the TAP uplink, frames read from the kernel are received and frames
written to it are transmitted. A drop is labelled with the direction of the
ring whose counter took it (see the HELP of vswitch_port_dropped_total).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import platform
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily,
                                    Metric)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from . import __version__
from .api import Scrape, SwitchAPI

try:  # prometheus_client >= 0.8
    from prometheus_client.exposition import choose_encoder
except ImportError:  # pragma: no cover
    choose_encoder = None

log = logging.getLogger("vswitch.metrics")

# --- HTTP limits ---------------------------------------------------------------------
MAX_REQUEST_HEAD = 8192         # request line + headers, bytes
READ_TIMEOUT_S = 10.0           # to receive the whole request head
WRITE_TIMEOUT_S = 10.0          # to hand the whole response to the kernel
MAX_CLIENTS = 16                # connections served at once; more get a 503 at once
TURN_AWAY_LINGER_S = 0.5        # how long a turned-away connection may take to send its request
GZIP_MIN_BYTES = 1024           # smaller bodies are sent as they are

# When the collector was made: stands for the initial config load until the
# first reload (the daemon loads its config just before it starts serving).
_STARTED = time.time()


def cython_version() -> str:
    """The Cython that built the datapath, if it says; else the installed one."""
    try:
        from . import _datapath
        v = getattr(_datapath, "CYTHON_VERSION", None)
        if v:
            return str(v)
    except ImportError:
        pass
    try:
        import Cython
        return str(Cython.__version__)
    except Exception:
        return "unknown"


_DIRECTION = {"tx": "receive", "rx": "transmit"}   # ring name in show() -> switch's direction


class SwitchCollector:
    """Builds every vswitch_* family from the switch at each scrape."""

    def __init__(self, api: SwitchAPI) -> None:
        self.api = api
        self._build = {"version": __version__, "cython": cython_version(),
                       "python": platform.python_version()}

    def describe(self) -> Iterable[Metric]:
        # Nothing to check for duplicates at register time (the names are
        # ours alone); describing by collecting would read the datapath.
        return []

    def collect(self) -> Iterator[Metric]:
        rx_pkts = CounterMetricFamily(
            "vswitch_port_receive_packets",
            "Frames the switch received from the port (vhost-user: from the guest's TX virtqueue "
            "of the queue pair; tap: read from the kernel), not counting dropped ones.",
            labels=["port", "queue"])
        rx_bytes = CounterMetricFamily(
            "vswitch_port_receive_bytes",
            "Bytes of the frames counted by vswitch_port_receive_packets_total (Ethernet frame, "
            "without the virtio-net header).", labels=["port", "queue"])
        tx_pkts = CounterMetricFamily(
            "vswitch_port_transmit_packets",
            "Frames the switch delivered to the port (vhost-user: into the guest's RX virtqueue "
            "of the queue pair; tap: written to the kernel).", labels=["port", "queue"])
        tx_bytes = CounterMetricFamily(
            "vswitch_port_transmit_bytes",
            "Bytes of the frames counted by vswitch_port_transmit_packets_total (Ethernet frame, "
            "without the virtio-net header).", labels=["port", "queue"])
        drops = CounterMetricFamily(
            "vswitch_port_dropped",
            "Frames dropped, by the port, queue pair and ring whose counter took the drop, and "
            "by reason. direction=\"receive\": counted on the ring the switch reads from the "
            "port (guest TX virtqueue / frames from the kernel): malformed chains (bad_*, "
            "too_many_segments, runt), ring_disabled, bad_offload, and two that concern the "
            "destination but are charged to the sender's ring: no_rx_queue (the destination has "
            "no enabled RX queue) and same_port (addressed back to where it came from). "
            "direction=\"transmit\": counted on the ring the switch writes to the port (guest "
            "RX virtqueue / writes to the kernel): no_rx_buffer, rx_buffer_too_small, "
            "rx_bad_chain, mtu_exceeded, tap_write_failed. ring_broken (the guest's avail index "
            "jumped) can happen on either ring. queue=\"announce\": the RARPs the switch "
            "broadcasts for a front-end (SEND_RARP), judged as frames of its guest (e.g. "
            "spoofed_source, storm_control). Only reasons that occurred are exported.",
            labels=["port", "queue", "direction", "reason"])
        up = GaugeMetricFamily(
            "vswitch_port_up",
            "1 when the port can carry frames: a vhost-user front-end is connected with at "
            "least one enabled queue pair, or the TAP device is attached; else 0.",
            labels=["port"])
        info = InfoMetricFamily(
            "vswitch_port",
            "Port metadata (always 1). features: the virtio features negotiated on the current "
            "vhost-user connection, comma separated (empty when not connected, and for tap); "
            "socket: the vhost-user socket path; ifname: the TAP device.",
            labels=["port"])
        queues = GaugeMetricFamily(
            "vswitch_port_queues",
            "Queue pairs of the port: state=\"offered\" is what the config allows, "
            "state=\"enabled\" what the front-end (or the attached TAP) uses now.",
            labels=["port", "state"])
        mtu = GaugeMetricFamily(
            "vswitch_port_mtu_bytes",
            "MTU of the port: the one the front-end set (NET_SET_MTU) or the configured one "
            "for vhost-user, the enforced one for tap. Absent when neither is known.",
            labels=["port"])
        conns = CounterMetricFamily(
            "vswitch_vhost_connections",
            "vhost-user connection events by port: connect (a session started), disconnect "
            "(it ended, for any reason), protocol_error (ended by a malformed or refused "
            "message), refused (a second front-end turned away while one was connected), "
            "memory_fault (ended because the guest's memory vanished under the switch: a memory "
            "file it shared was shrunk), message_timeout (ended because a message was begun, or "
            "the first one awaited, and not complete within limits.message_timeout).",
            labels=["port", "event"])
        tap_events = CounterMetricFamily(
            "vswitch_tap_events",
            "TAP uplink events by port: attach (the device was opened and handed to the "
            "datapath), detach (the device disappeared under the switch; it is re-created or "
            "re-attached with backoff).", labels=["port", "event"])
        fdb = GaugeMetricFamily(
            "vswitch_fdb_entries",
            "MAC addresses in the forwarding database, by the port they point to (learned and "
            "static).", labels=["port"])

        iotlb_lookups = CounterMetricFamily(
            "vswitch_port_iotlb_lookups",
            "VIRTIO_F_ACCESS_PLATFORM with a vIOMMU: IOVA translations of a vhost-user port by "
            "result: hit, miss (no entry yet: the switch asks the front-end for it), denied (the "
            "entry forbids the access). vhost-user ports.", labels=["port", "result"])
        iotlb_entries = GaugeMetricFamily(
            "vswitch_port_iotlb_entries",
            "IOTLB entries of the port's connection (at most 2048).", labels=["port"])
        iotlb_events = CounterMetricFamily(
            "vswitch_port_iotlb_events",
            "IOTLB messages of the port's connection: update and invalidate (IOTLB_MSG from the "
            "front-end), refused (an entry that wraps or has no valid permission), evicted (an "
            "entry dropped to keep the bound), miss_sent (MISS sent on the back-end channel), "
            "miss_suppressed (answered since it was queued, asked for very recently, or over the "
            "rate bound), miss_unsent (no "
            "channel, or it was full).", labels=["port", "event"])

        snap = self.api.scrape()
        for name, show in snap.port_info:
            iotlb = show.get("iotlb")
            if iotlb is not None:      # vhost-user ports (zeros until a guest negotiates it)
                for result in ("hits", "misses", "denied"):
                    iotlb_lookups.add_metric([name, {"hits": "hit", "misses": "miss"}.get(result, result)],
                                             int(iotlb.get(result) or 0))
                iotlb_entries.add_metric([name], int(iotlb.get("entries") or 0))
                for event, key in (("update", "updates"), ("invalidate", "invalidations"),
                                   ("refused", "refused"), ("evicted", "evicted"),
                                   ("miss_sent", "miss_sent"), ("miss_suppressed", "miss_suppressed"),
                                   ("miss_unsent", "miss_unsent")):
                    iotlb_events.add_metric([name, event], int(iotlb.get(key) or 0))
            kind = show.get("type", "")
            for entry in show.get("queues", ()):
                q = str(entry["pair"])
                for ring, direction in _DIRECTION.items():
                    counters = entry.get(ring) or {}
                    pkts_fam, bytes_fam = (rx_pkts, rx_bytes) if direction == "receive" else (tx_pkts, tx_bytes)
                    pkts_fam.add_metric([name, q], counters.get("packets", 0))
                    bytes_fam.add_metric([name, q], counters.get("bytes", 0))
                    for reason, n in sorted((counters.get("drops") or {}).items()):
                        if n:
                            drops.add_metric([name, q, direction, reason], n)
            # frames the switch sent for the front-end (SEND_RARP): on no queue pair
            for reason, n in sorted((show.get("announce_drops") or {}).items()):
                drops.add_metric([name, "announce", "receive", reason], n)
            enabled = int(show.get("queues_enabled") or 0)
            if kind in ("tap", "vxlan"):
                is_up = show.get("state") == "up"
            else:
                is_up = show.get("state") == "connected" and enabled > 0
            up.add_metric([name], 1 if is_up else 0)
            info.add_metric([name], {
                "type": str(kind),
                "mode": str(show.get("mode") or ""),
                "socket": str(show.get("socket") or ""),
                "ifname": str(show.get("ifname") or ""),
                "features": ",".join(show.get("features") or ()),
            })
            queues.add_metric([name, "offered"], int(show.get("queues_offered") or 0))
            queues.add_metric([name, "enabled"], enabled)
            port_mtu = show.get("mtu") or show.get("mtu_enforced")
            if port_mtu:
                mtu.add_metric([name], int(port_mtu))
            if kind == "tap":
                tap_events.add_metric([name, "attach"], int(show.get("connections") or 0))
                tap_events.add_metric([name, "detach"], int(show.get("disconnects") or 0))
            else:
                for event, key in (("connect", "connections"), ("disconnect", "disconnects"),
                                   ("protocol_error", "protocol_errors"), ("refused", "refused"),
                                   ("memory_fault", "memory_faults"),
                                   ("message_timeout", "message_timeouts")):
                    conns.add_metric([name, event], int(show.get(key) or 0))
        yield from (rx_pkts, rx_bytes, tx_pkts, tx_bytes, drops, up, info, queues, mtu, conns, tap_events,
                    iotlb_lookups, iotlb_entries, iotlb_events)

        for owner, n in sorted(snap.fdb_entries.items()):
            fdb.add_metric([owner], n)
        yield fdb
        yield from self._fdb_counters(snap)

        yield from self._workers(snap.workers)
        yield from self._reloads(snap)

        build = InfoMetricFamily("vswitch_build", "vswitch version, the Cython that built its "
                                 "datapath, and the Python running it (always 1).")
        build.add_metric([], self._build)
        yield build

    def _fdb_counters(self, snap: Scrape) -> list[Metric]:
        aged = CounterMetricFamily(
            "vswitch_fdb_aged",
            "Learned FDB entries forgotten because no frame came from them for fdb.aging_time "
            "seconds.")
        aged.add_metric([], snap.fdb_aged)
        refused = CounterMetricFamily(
            "vswitch_fdb_limit_refused",
            "Source MACs not learned because the port already had its cap of learned MACs "
            "(fdb_max_entries, fdb.max_entries_per_port); the frames were still forwarded.",
            labels=["port"])
        for name, info in snap.fdb_ports.items():
            refused.add_metric([name], info.get("limit_refused", 0))
        return [aged, refused]

    def _workers(self, stats: list[dict]) -> Iterator[Metric]:
        busy = CounterMetricFamily(
            "vswitch_worker_busy_seconds",
            "Time each datapath worker spent in rounds that moved frames; its rate is the "
            "worker's busy ratio (a polling worker spins the rest of the time, an event-mode "
            "one sleeps).", labels=["worker"])
        rounds = CounterMetricFamily(
            "vswitch_worker_rounds",
            "Polling rounds of each datapath worker (one pass over the queues it owns).",
            labels=["worker"])
        sleeps = CounterMetricFamily(
            "vswitch_worker_sleeps",
            "Times each worker went to sleep in epoll (event and adaptive modes).",
            labels=["worker"])
        wakeups = CounterMetricFamily(
            "vswitch_worker_wakeups",
            "Sleeps that ended with an event (a guest kick, a TAP frame or a control-plane "
            "command) rather than the timeout.", labels=["worker"])
        batches = CounterMetricFamily(
            "vswitch_worker_tap_batches",
            "io_uring_enter calls that handed a burst of frames to TAP queues; "
            "vswitch_worker_tap_batched_writes / this = frames per system call.", labels=["worker"])
        batched = CounterMetricFamily(
            "vswitch_worker_tap_batched_writes",
            "Frames written into TAP queues through the worker's io_uring (the rest, large "
            "frames or all of them with datapath.tap_io: write, take one syscall each).",
            labels=["worker"])
        for i, s in enumerate(stats):
            w = str(i)
            if s.get("busy_ns") is not None:
                busy.add_metric([w], s["busy_ns"] / 1e9)
            rounds.add_metric([w], s.get("rounds", 0))
            sleeps.add_metric([w], s.get("idle_sleeps", 0))
            wakeups.add_metric([w], s.get("wakeups", 0))
            batches.add_metric([w], s.get("tap_batches", 0))
            batched.add_metric([w], s.get("tap_batched_writes", 0))
        return [busy, rounds, sleeps, wakeups, batches, batched]

    def _reloads(self, snap: Scrape) -> Iterator[Metric]:
        counts = snap.reload_counts
        reloads = CounterMetricFamily(
            "vswitch_config_reloads",
            "Configuration reloads (vswitchctl reload, SIGHUP) by result: success (the new "
            "file was applied) or failure (it was invalid or could not be read; nothing "
            "changed).", labels=["result"])
        for result in ("success", "failure"):
            reloads.add_metric([result], int(counts.get(result, 0)))
        ok = GaugeMetricFamily(
            "vswitch_config_last_reload_successful",
            "1 if the last reload attempt succeeded (or none was made yet), 0 if it failed and "
            "the switch still runs the previous configuration.")
        ok.add_metric([], 1 if snap.last_reload_ok else 0)
        when = GaugeMetricFamily(
            "vswitch_config_last_reload_success_timestamp_seconds",
            "Unix time the running configuration was applied: the last successful reload, or "
            "the start of the daemon.")
        when.add_metric([], snap.last_reload_time or _STARTED)
        return [reloads, ok, when]


def make_registry(api: SwitchAPI) -> CollectorRegistry:
    """A registry of our own: the switch's families plus process_* (CPU,
    memory, fds of the daemon)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwitchCollector(api))
    ProcessCollector(registry=registry)
    return registry


# --- HTTP --------------------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}

_INDEX = (b"<html><head><title>vswitch exporter</title></head><body>"
          b"<h1>vswitch</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n")


class MetricsServer:
    """The /metrics endpoint on the running loop."""

    def __init__(self, api: SwitchAPI, host: str, port: int) -> None:
        self.api = api
        self.host = host
        self.port = port
        self.registry = make_registry(api)
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task] = set()

    @property
    def sockets(self) -> list:
        return list(self._server.sockets) if self._server else []

    @property
    def bound_port(self) -> int:
        """The TCP port listened on (useful with port 0)."""
        return self.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, self.host, self.port, limit=MAX_REQUEST_HEAD, reuse_address=True)
        log.info("metrics: serving http://%s/metrics",
                 f"[{self.host}]:{self.bound_port}" if ":" in self.host else f"{self.host}:{self.bound_port}")

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        try:
            await asyncio.wait_for(self._server.wait_closed(), 5)
        except asyncio.TimeoutError:   # pragma: no cover - nothing left to wait for
            pass
        self._server = None

    # --- one connection ------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._clients) >= MAX_CLIENTS:
            # Turned away at once, without reading: a small answer that fits
            # the socket buffer, then close (not wait) - RST would hide why.
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\nRetry-After: 1\r\n\r\n")
            try:
                # Take (a bounded part of) the request off the wire before
                # closing: closing on unread data sends RST, and the client
                # would lose the 503 with it.
                await asyncio.wait_for(reader.read(MAX_REQUEST_HEAD), TURN_AWAY_LINGER_S)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()
            return
        if task is not None:
            self._clients.add(task)
        try:
            await self._serve_one(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:   # never let one client's trouble escape into the loop
            log.debug("metrics: client failed", exc_info=True)
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except asyncio.TimeoutError:
            await self._send(writer, 408, b"request timeout\n")
            return
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, b"request head too large\n")
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, 400, b"bad request\n")
            return
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            key, sep, value = line.partition(":")
            if not sep:
                await self._send(writer, 400, b"bad header\n")
                return
            headers[key.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, b"only GET and HEAD\n", extra={"Allow": "GET, HEAD"})
            return
        path = target.split("?", 1)[0]
        if path.startswith("http://") or path.startswith("https://"):   # absolute form
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        head_only = method == "HEAD"
        if path == "/metrics":
            try:
                body, ctype = self.render(headers.get("accept", ""))
            except Exception:
                log.exception("metrics: collecting failed")
                await self._send(writer, 500, b"collecting metrics failed, see the daemon's log\n")
                return
            extra = {}
            if "gzip" in headers.get("accept-encoding", "") and len(body) >= GZIP_MIN_BYTES:
                body = gzip.compress(body, compresslevel=1)
                extra["Content-Encoding"] = "gzip"
            await self._send(writer, 200, body, ctype, extra, head_only)
        elif path == "/":
            await self._send(writer, 200, _INDEX, "text/html; charset=utf-8", head_only=head_only)
        else:
            await self._send(writer, 404, b"not found: try /metrics\n", head_only=head_only)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an Accept header: OpenMetrics when the scraper
        asks for it, else the Prometheus text format."""
        if accept and choose_encoder is not None:
            encoder, ctype = choose_encoder(accept)
            return encoder(self.registry), ctype
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                    ctype: str = "text/plain; charset=utf-8", extra: dict | None = None,
                    head_only: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
                 f"Content-Type: {ctype}", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError):
            writer.transport.abort()
