"""`make demo`: the switch at work in about two minutes, for a newcomer.

A fresh vswitchd with two vhost-user ports and a TAP uplink to this host;
two QEMU guests (the test harness's: a Debian kernel and a busybox
initramfs, tests/harness/guests) on the vhost-user ports. The guests ping
each other and the host, run iperf3 between them and to the host; then
`vswitchctl show`, `port show` and `fdb show` are printed, the Prometheus
endpoint is scraped, and a PNG of each port's frame and byte rates over the
run (computed from the counters scraped every half second) is written.
Everything started here is stopped at the end, also on Ctrl-C, SIGTERM or
an error: the guests, iperf3, vswitchd (which takes its TAP with it).

Run as root from the repository root: `make demo` (or `.venv/bin/python -m
tools.demo --out DIR` after a `make build`). Not part of the package.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.guests import QemuGuest, build_image, default_cache_dir
from tests.harness.switch import VENV_BIN, Vswitchd

SUBNET = "10.251.0"                  # a /24 for the demo: guests .1 and .2, the host .254
HOST_IP = f"{SUBNET}.254"
GUESTS = {"vm1": (f"{SUBNET}.1", "52:54:00:de:00:01"), "vm2": (f"{SUBNET}.2", "52:54:00:de:00:02")}
TAP = "vsdemo0"
SCRAPE_S = 0.5
BOOT_TIMEOUT = 240
COUNTER_RE = re.compile(
    r'^vswitch_port_(receive|transmit)_(packets|bytes)_total\{([^}]*)\} ([0-9.e+]+)$', re.M)
PORT_LABEL_RE = re.compile(r'port="([^"]*)"')


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_counters(text: str) -> dict[str, dict[str, float]]:
    """{port: {"receive_packets": n, ...}} summed over queues, from the
    Prometheus text exposition."""
    out: dict[str, dict[str, float]] = {}
    for way, unit, labels, value in COUNTER_RE.findall(text):
        m = PORT_LABEL_RE.search(labels)
        if m is None:
            continue
        key = f"{way}_{unit}"
        port = out.setdefault(m.group(1), {})
        port[key] = port.get(key, 0.0) + float(value)
    return out


@dataclass
class Scraper:
    """Scrapes /metrics every SCRAPE_S seconds in a thread."""
    url: str
    samples: list[tuple[float, dict[str, dict[str, float]]]] = field(default_factory=list)
    phases: list[tuple[float, str]] = field(default_factory=list)
    last_text: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    t0: float = field(default_factory=time.monotonic)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as reply:
            return reply.read().decode()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                text = self.scrape()
            except OSError:
                text = ""
            if text:
                self.last_text = text
                self.samples.append((time.monotonic() - self.t0, parse_counters(text)))
            self._stop.wait(SCRAPE_S)

    def phase(self, name: str) -> None:
        self.phases.append((time.monotonic() - self.t0, name))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def rates(samples: list[tuple[float, dict[str, dict[str, float]]]], port: str, key: str
          ) -> tuple[list[float], list[float]]:
    """Per-second rate of one counter between consecutive samples."""
    ts, values = [], []
    for (t0, a), (t1, b) in zip(samples, samples[1:]):
        if t1 <= t0 or port not in a or port not in b:
            continue
        ts.append(t1)
        values.append(max(0.0, b[port].get(key, 0.0) - a[port].get(key, 0.0)) / (t1 - t0))
    return ts, values


def plot(scraper: Scraper, ports: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (frames, bits) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for i, port in enumerate(ports):
        color = f"C{i}"
        for way, style in (("receive", "-"), ("transmit", "--")):
            t, v = rates(scraper.samples, port, f"{way}_packets")
            frames.plot(t, v, style, color=color, label=f"{port} {way}")
            t, v = rates(scraper.samples, port, f"{way}_bytes")
            bits.plot(t, [x * 8 / 1e6 for x in v], style, color=color, label=f"{port} {way}")
    for ax in (frames, bits):
        for t, name in scraper.phases:
            ax.axvline(t, color="0.7", linewidth=0.8)
        ax.grid(True, alpha=0.3)
    top = frames.get_ylim()[1]
    for t, name in scraper.phases:
        frames.text(t, top, " " + name, rotation=90, va="top", fontsize=7, color="0.4")
    frames.set_ylabel("frames/s")
    bits.set_ylabel("Mbit/s")
    bits.set_xlabel("seconds since vswitchd started")
    frames.legend(fontsize=7, ncol=3, loc="center left")
    frames.set_title("vswitch: per-port rates from the Prometheus counters "
                     "(receive = into the switch, transmit = out of it)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def vswitchctl(sw: Vswitchd, *args: str) -> str:
    out = subprocess.run([str(VENV_BIN / "vswitchctl"), "--runtime-dir", str(sw.runtime_dir), *args],
                         capture_output=True, text=True, timeout=30)
    return f"$ vswitchctl {' '.join(args)}\n{out.stdout}{out.stderr}"


def run_demo(out_dir: Path, workdir: Path, iperf_seconds: int = 5) -> dict:
    """The demo; returns what it measured. Stops what it started on any exit."""
    out_dir.mkdir(parents=True, exist_ok=True)
    say("guest kernel and initramfs (built once into the test cache)")
    image = build_image(default_cache_dir())
    metrics_port = free_tcp_port()
    sw = Vswitchd(workdir / "switch", {
        "vm1": {"type": "vhost-user", "queues": 1},
        "vm2": {"type": "vhost-user", "queues": 1},
        "uplink": {"type": "tap", "ifname": TAP, "mtu": 1500},
    }, extra={"metrics": {"listen": f"127.0.0.1:{metrics_port}"}})
    guests: list[QemuGuest] = []
    iperf_server: subprocess.Popen | None = None
    scraper = Scraper(f"http://127.0.0.1:{metrics_port}/metrics")
    result: dict = {}
    try:
        say(f"vswitchd: ports vm1, vm2 (vhost-user) and uplink (TAP {TAP}); config {sw.config_path}")
        print(sw.config_path.read_text(), end="")
        sw.start()
        scraper.start()
        deadline = time.monotonic() + 10
        while not Path(f"/sys/class/net/{TAP}").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"vswitchd did not create {TAP}:\n{sw.log_tail()}")
            time.sleep(0.1)
        subprocess.run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP], check=True)
        subprocess.run(["ip", "link", "set", TAP, "up"], check=True)
        print(f"host side of the uplink: {TAP} {HOST_IP}/24")

        say("two QEMU guests (TCG unless KVM works here), one per vhost-user port")
        scraper.phase("boot")
        for name, (ip, mac) in GUESTS.items():
            guests.append(QemuGuest(name, image, sw.socket(name), mac=mac, ip=f"{ip}/24",
                                    workdir=workdir / name).start())
        for g in guests:
            print(f"{g.name} booted in {g.wait_booted(BOOT_TIMEOUT):.1f} s (guest uptime)")
        for name in GUESTS:
            sw.wait_port(name, lambda p: p["state"] == "connected", timeout=60, what="connected")
        vm1, vm2 = guests

        say("ping: vm1 -> vm2, vm1 -> host")
        scraper.phase("ping")
        for target, label in ((GUESTS["vm2"][0], "vm2"), (HOST_IP, "host")):
            r = vm1.ping(target, count=5, interval=0.2, timeout=30)
            print(f"vm1 -> {label}: {r.received}/{r.sent} replies, avg {r.avg_rtt_ms} ms")
            result[f"ping_{label}"] = r

        say(f"iperf3 TCP, {iperf_seconds} s each: vm1 -> vm2, vm2 -> host")
        scraper.phase("iperf3 vm1->vm2")
        vm2.iperf3_server()
        r = vm1.iperf3_client(GUESTS["vm2"][0], seconds=iperf_seconds)
        print(f"vm1 -> vm2: {r.received_bps / 1e6:.0f} Mbit/s")
        result["iperf_vm2"] = r
        scraper.phase("iperf3 vm2->host")
        iperf_port = free_tcp_port()
        iperf_server = subprocess.Popen(["iperf3", "-s", "-B", HOST_IP, "-p", str(iperf_port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(HOST_IP, iperf_port, iperf_server)
        r = vm2.iperf3_client(HOST_IP, seconds=iperf_seconds, port=iperf_port)
        print(f"vm2 -> host: {r.received_bps / 1e6:.0f} Mbit/s")
        result["iperf_host"] = r
        scraper.phase("idle")
        time.sleep(2 * SCRAPE_S)

        say("what the switch says about it")
        for args in (("show",), ("port", "show", "vm1"), ("fdb", "show")):
            print(vswitchctl(sw, *args))

        say(f"Prometheus metrics: {scraper.url} (a few of them)")
        text = scraper.scrape()
        result["metrics"] = text
        wanted = ("vswitch_port_receive_packets_total", "vswitch_port_transmit_packets_total",
                  "vswitch_port_up{")
        for line in text.splitlines():
            if line.startswith(wanted):
                print(line)
    finally:
        scraper.stop()
        for g in guests:
            g.stop()
        if iperf_server is not None and iperf_server.poll() is None:
            iperf_server.kill()
            iperf_server.wait(10)
        sw.stop()
    png = out_dir / "vswitch-demo.png"
    plot(scraper, list(GUESTS) + ["uplink"], png)
    result["png"] = png
    result["samples"] = len(scraper.samples)
    say(f"per-port frame and byte rates over the run: {png}")
    return result


def _wait_listening(ip: str, port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    """Until the host's iperf3 listens (read from ss: a probe connection would
    count as a test to iperf3)."""
    deadline = time.monotonic() + timeout
    while f"{ip}:{port} " not in subprocess.run(["ss", "-Hltn"], capture_output=True,
                                                 text=True, timeout=10).stdout + " ":
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 -s on {ip}:{port} did not start (exit {proc.poll()})")
        time.sleep(0.1)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt     # the finally blocks stop what was started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo-output", help="directory for the PNG (default: %(default)s)")
    parser.add_argument("--iperf-seconds", type=int, default=5)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vswitch-demo-") as work:
        try:
            run_demo(Path(args.out), Path(work), args.iperf_seconds)
        except KeyboardInterrupt:
            print("\ninterrupted: everything the demo started is stopped", file=sys.stderr)
            return 130
    print(f"\ndone in {time.monotonic() - start:.0f} s; everything it started is stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
