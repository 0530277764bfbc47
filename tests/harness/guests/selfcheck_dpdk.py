#!/usr/bin/env python3
"""Self-check of the guest test infrastructure against a backend we did not write.

DPDK testpmd's vhost PMD (io forwarding, 2 queue pairs per port) listens on
two vhost-user sockets; two QEMU guests (queues=2, 2 vCPUs each) connect as
clients. The check boots both, pings both ways with 0 % loss, runs a 5 s
iperf3 TCP test, proves that both queue pairs carry traffic with pings pinned
to each vCPU (XPS maps vCPU c to TX queue c), prints the guests' per-queue
ethtool counters and checks the guest kernels logged no virtio errors.

Run as root from the repository root:

    .venv/bin/python -m tests.harness.guests.selfcheck_dpdk [WORKDIR]

Exit status 0 means every check passed. Not a pytest test: it needs root,
dpdk-testpmd and a couple of minutes of both CPUs.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .image import build_image, default_cache_dir
from .qemu import GuestError, QemuGuest

QUEUES = 2
IPERF_SECONDS = 5
# testpmd busy-polls: keep it (main and forwarding lcore) on one host CPU.
TESTPMD_CPU = 1
FILE_PREFIX = f"vs-selfcheck-{os.getpid()}"


def _pdeathsig() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # die with this script


def start_testpmd(workdir: Path, sockets: list[Path]) -> subprocess.Popen[bytes]:
    """Start testpmd as vhost-user server on ``sockets``; wait until they exist."""
    for s in sockets:
        s.unlink(missing_ok=True)
    vdevs: list[str] = []
    for i, s in enumerate(sockets):
        vdevs += ["--vdev", f"net_vhost{i},iface={s},queues={QUEUES},client=0"]
    argv = [
        "taskset", "-c", str(TESTPMD_CPU),
        "dpdk-testpmd", f"--lcores=0@{TESTPMD_CPU},1@{TESTPMD_CPU}",
        "--no-pci", "--no-huge", "-m", "1024", f"--file-prefix={FILE_PREFIX}",
        *vdevs,
        "--", "--forward-mode=io", "--nb-cores=1",
        f"--rxq={QUEUES}", f"--txq={QUEUES}",
        # Without --stats-period, non-interactive testpmd exits at stdin EOF.
        "--stats-period", "1",
    ]
    log = open(workdir / "testpmd.log", "wb")  # noqa: SIM115 - handed to the child
    log.write(("# " + " ".join(argv) + "\n").encode())
    log.flush()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_pdeathsig)
    log.close()
    deadline = time.monotonic() + 60
    while not all(s.exists() for s in sockets):
        if proc.poll() is not None:
            raise RuntimeError(f"testpmd exited rc={proc.returncode}; see {workdir}/testpmd.log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"testpmd sockets did not appear; see {workdir}/testpmd.log")
        time.sleep(0.1)
    return proc


def stop_testpmd(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT makes testpmd print its forward statistics and exit; always reap."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def queue_counters(stats: dict[str, int]) -> dict[str, int]:
    """rx_queue_N_packets / tx_queue_N_packets only (not the xdp ones)."""
    return {k: v for k, v in stats.items()
            if re.fullmatch(r"(rx|tx)_queue_\d+_packets", k)}


def wait_carrier(guest: QemuGuest, timeout: float = 60.0) -> None:
    """The vhost-user link comes up when the backend starts the rings."""
    guest.check_output(
        f"i=0; until [ \"$(cat /sys/class/net/eth0/carrier 2>/dev/null)\" = 1 ]; do "
        f"i=$((i+1)); [ $i -gt {int(timeout * 10)} ] && exit 1; usleep 100000; done",
        timeout=timeout + 30,
    )


def main() -> int:
    t0 = time.monotonic()
    if os.geteuid() != 0:
        print("selfcheck_dpdk: must run as root", file=sys.stderr)
        return 2
    for tool in ("dpdk-testpmd", "qemu-system-x86_64", "taskset"):
        if not shutil.which(tool):
            print(f"selfcheck_dpdk: {tool} not found", file=sys.stderr)
            return 2
    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(
        tempfile.mkdtemp(prefix="vswitch-selfcheck-dpdk-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {workdir}")

    t = time.monotonic()
    image = build_image(default_cache_dir())
    print(f"image: {image.kernel_release}, {image.initrd.stat().st_size / 1e6:.1f} MB initramfs "
          f"({time.monotonic() - t:.1f} s)")

    sockets = [workdir / "vhost0.sock", workdir / "vhost1.sock"]
    failures: list[str] = []
    testpmd = None
    guests: list[QemuGuest] = []
    try:
        t = time.monotonic()
        testpmd = start_testpmd(workdir, sockets)
        print(f"testpmd listening ({time.monotonic() - t:.1f} s)")

        ips = ["10.0.0.1", "10.0.0.2"]
        for i, (sock, ip) in enumerate(zip(sockets, ips, strict=True)):
            guests.append(QemuGuest(
                f"g{i + 1}", image, sock, server=False, ip=f"{ip}/24",
                mac=f"52:54:00:00:00:0{i + 1}", queues=QUEUES, workdir=workdir,
            ))
        t = time.monotonic()
        for g in guests:
            g.start()
        for g in guests:
            g.wait_booted()
        print(f"guests booted ({time.monotonic() - t:.1f} s, accel={guests[0].accel})")
        for g in guests:
            wait_carrier(g)
        print(f"carrier up on both ({time.monotonic() - t:.1f} s)")
        g1, g2 = guests

        for src, dst_ip in ((g1, ips[1]), (g2, ips[0])):
            r = src.ping(dst_ip, count=10, interval=0.2)
            print(f"ping {src.name} -> {dst_ip}: {r}")
            if r.loss_pct != 0 or r.received != r.sent:
                failures.append(f"ping {src.name} -> {dst_ip}: {r}")

        g2.iperf3_server()
        res = g1.iperf3_client(ips[1], seconds=IPERF_SECONDS, parallel=QUEUES)
        print(f"iperf3 TCP {IPERF_SECONDS} s, -P {QUEUES}, g1 -> g2: {res.gbps:.3f} Gbit/s "
              f"received, {res.sent_bps / 1e9:.3f} Gbit/s sent, {res.retransmits} retransmits")
        if res.received_bps <= 0:
            failures.append("iperf3 moved no data")

        # Per-queue proof. TCP data is mostly sent from the RX softirq (ACK
        # clocking) and, with vectors=0, every interrupt lands on vCPU 0, so
        # TCP mostly uses queue 0. A ping sent from process context on vCPU q
        # leaves on TX queue q (XPS), and testpmd's io forwarding keeps the
        # queue index, so it arrives on the peer's RX queue q.
        before = [queue_counters(g.ethtool_stats()) for g in guests]
        for q in range(QUEUES):
            rc, out = g1.run(f"taskset -c {q} ping -q -c 20 -i 0.05 -W 5 {ips[1]}")
            if rc != 0:
                failures.append(f"pinned ping from vCPU {q} failed:\n{out}")
        after = [queue_counters(g.ethtool_stats()) for g in guests]
        for g, b, a in zip(guests, before, after, strict=True):
            print(f"{g.name} per-queue packets (totals): {a}")
            print(f"{g.name} per-queue packets during pinned pings: "
                  f"{ {k: a[k] - b.get(k, 0) for k in sorted(a)} }")
        for q in range(QUEUES):
            sent = after[0][f"tx_queue_{q}_packets"] - before[0].get(f"tx_queue_{q}_packets", 0)
            got = after[1][f"rx_queue_{q}_packets"] - before[1].get(f"rx_queue_{q}_packets", 0)
            if sent < 20 or got < 20:
                failures.append(f"queue {q}: g1 tx {sent}, g2 rx {got} packets (expected >= 20)")

        for g in guests:
            errs = g.kernel_errors()
            if errs:
                failures.append(f"{g.name} kernel errors: {errs}")
    except GuestError as exc:
        failures.append(f"guest error: {exc}")
    finally:
        for g in guests:
            g.stop()
        if testpmd is not None:
            stop_testpmd(testpmd)
            # EAL leaves its runtime directory (config, fbarray files) behind.
            shutil.rmtree(f"/var/run/dpdk/{FILE_PREFIX}", ignore_errors=True)
        for s in sockets:
            s.unlink(missing_ok=True)

    if testpmd is not None:
        log = (workdir / "testpmd.log").read_text(errors="replace")
        idx = log.rfind("Forward statistics for port 0")
        if idx >= 0:
            print("testpmd final statistics:\n" + log[idx:].split("Done.")[0].rstrip())

    wall = time.monotonic() - t0
    if failures:
        print(f"SELFCHECK FAILED ({wall:.1f} s):")
        for f in failures:
            print("  - " + f)
        print(f"logs: {workdir}")
        return 1
    print(f"SELFCHECK PASSED in {wall:.1f} s (logs: {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
