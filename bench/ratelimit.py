"""Rate limits, measured: a guest limited to N Mbit/s, with TSO on, should
measure N +- 5 % with iperf3 (docs/tenants.md, "Rate limits"; docs/performance.md).

    .venv/bin/python -m bench.ratelimit [--rates 50,200,500] [--egress-rates 200]
        [--seconds 10] [--omit 2]

Two QEMU guests (tests/harness/guests, as bench/iperf.py) on one vswitchd: A on port
a, B on port b; iperf3 TCP from A to B. The guests boot once; each case
rewrites the switch's config and applies it with `vswitchctl reload` (the
policers change in place, the guests stay connected):

* "unlimited": no policer, the guests' own ceiling (TCG guests here: if it
  is not well above N, a measurement at N says nothing about the policer);
* "ingress N hold|drop": `ingress_policing: {rate: "<N>Mbit", action: ...}`
  on port a (guest A's frames into the switch), for each N of --rates and
  each action of --actions: "hold" leaves frames in A's TX ring until the
  bucket has credit (shaping: TCP sees delay, no loss), "drop" polices;
* "egress N": `egress_policing: {rate: "<N>Mbit"}` on port b (frames from the
  switch to guest B), for each N of --egress-rates.

The bursts are the config's defaults (20 ms at the rate, at least 64 KiB)
unless --burst gives one.
Guest offloads are QEMU's defaults (checksum and TSO on; checked in the
negotiated features), so A hands the switch up to 64 KiB TSO frames and the
policer charges them per on-wire segment. The figure is iperf3's receiver
rate with the first --omit seconds (slow start, the first bucket) left out;
with it: the ratio to N, an estimate of the on-wire ratio (the policer counts
IP bytes, iperf3 TCP payload: x 1500/1448), TCP retransmits, and the
switch's rate_limited drops on each port over the case. Prints a table and writes
bench/results/ratelimit-*.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from tests.harness.guests import QemuGuest, build_image, default_cache_dir
from tests.harness.switch import Vswitchd

RESULTS = ROOT / "bench" / "results"
TOLERANCE = 0.05  # N +- 5 %: what a rate limit promises (docs/tenants.md)
# TSO on: A hands the switch TSO frames, B takes them whole
TSO_FEATURES = {"a": "NET_HOST_TSO4", "b": "NET_GUEST_TSO4"}
IP_A, IP_B = "10.7.0.1", "10.7.0.2"
# The limit counts IP bytes; iperf3 counts TCP payload. A full-size segment
# at MTU 1500 (IPv4, TCP timestamps, Linux's default) is a 1500-byte packet
# carrying 1448 bytes: a perfect limit at N gives iperf3 0.965 N.
WIRE_PER_PAYLOAD = 1500 / 1448
# --udp: 1472-byte datagrams, 1500-byte packets, offered at UDP_OFFER x N
UDP_LEN = 1472
UDP_WIRE_PER_PAYLOAD = 1500 / UDP_LEN
UDP_OFFER = 2


def parse_rates(text: str) -> list[int]:
    try:
        rates = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"rates are Mbit/s integers separated by commas, not {text!r}") from None
    if any(r <= 0 for r in rates):
        raise SystemExit(f"rates must be positive Mbit/s, got {text!r}")
    return rates


def ports_config(socks: dict[str, str], case: dict[str, Any]) -> dict[str, dict]:
    """The switch's ports for one case: a policer on one port, or none."""
    ports: dict[str, dict] = {name: {"type": "vhost-user", "socket": sock} for name, sock in socks.items()}
    policer = {"rate": f"{case.get('mbit')}Mbit"}
    if case.get("action", "drop") != "drop":
        policer["action"] = case["action"]
    if case.get("burst"):
        policer["burst"] = case["burst"]
    if case["direction"] == "ingress":
        ports["a"]["ingress_policing"] = policer
    elif case["direction"] == "egress":
        ports["b"]["egress_policing"] = policer
    return ports


def rate_limited(sw: Vswitchd) -> dict[str, int]:
    return {name: sw.drops(name).get("rate_limited", 0) for name in ("a", "b")}


def apply_case(sw: Vswitchd, socks: dict[str, str], case: dict[str, Any]) -> None:
    """Reload the switch with the case's policer and check it took effect:
    a silently ignored key would make every figure 'unlimited'."""
    sw.write_config(ports_config(socks, case))
    r = sw.reload()
    if r.returncode != 0:
        raise RuntimeError(f"reload for {case['name']} failed ({r.returncode}): {r.stderr.strip()}"
                           f"{r.stdout.strip()}")
    for port, direction in (("a", "ingress"), ("b", "egress")):
        policy = sw.port(port).get("policy") or {}
        have = (policy.get(f"{direction}_policing") or {}).get("rate_bps")
        want = case["mbit"] * 1_000_000 if (case["direction"] == direction) else None
        if have != want:
            raise RuntimeError(f"{case['name']}: port {port} reports {direction}_policing rate_bps "
                               f"{have}, expected {want}: {json.dumps(policy)}")


def run_case(sw: Vswitchd, socks: dict[str, str], a: QemuGuest, case: dict[str, Any],
             seconds: int, omit: int, udp: bool = False) -> dict[str, Any]:
    apply_case(sw, socks, case)
    time.sleep(0.5)  # let the previous case's queues drain before counting
    before = rate_limited(sw)
    extra = f"-O {omit}" if omit else ""
    if udp:
        # the policer alone, without TCP's reaction to its drops: offer more than N
        offer = f"{UDP_OFFER * case['mbit']}M" if case["mbit"] else "2G"
        r = a.iperf3_client(IP_B, seconds=seconds, udp=True, bitrate=offer, extra=f"{extra} -l {UDP_LEN}")
    else:
        r = a.iperf3_client(IP_B, seconds=seconds, extra=extra)
    after = rate_limited(sw)
    out: dict[str, Any] = {
        **case,
        "protocol": "udp" if udp else "tcp",
        "received_mbit": r.received_bps / 1e6,
        "wire_mbit_est": r.received_bps / 1e6 * (UDP_WIRE_PER_PAYLOAD if udp else WIRE_PER_PAYLOAD),
        "lost_pct": r.lost_pct,
        "sent_mbit": r.sent_bps / 1e6,
        "retransmits": r.retransmits,
        "rate_limited": {p: after[p] - before[p] for p in after},
    }
    if case["mbit"]:
        ratio = out["received_mbit"] / case["mbit"]
        out["ratio"] = ratio
        out["within_tolerance"] = abs(ratio - 1) <= TOLERANCE
        out["wire_ratio_est"] = out["wire_mbit_est"] / case["mbit"]
    return out


def loss(r: dict[str, Any]) -> str:
    """TCP: segments retransmitted; UDP: datagrams lost."""
    return f"lost {r['lost_pct']:.1f} %" if r.get("protocol") == "udp" else str(r["retransmits"])


def print_table(results: list[dict[str, Any]], ceiling: float | None) -> None:
    hdr = ("case", "limit Mbit/s", "measured Mbit/s", "ratio", "on-wire ratio (est.)", "retransmits/lost",
           "rate_limited a/b", "verdict")
    rows = []
    for r in results:
        if r.get("error"):
            rows.append((r["name"], str(r["mbit"] or "-"), "-", "-", "-", "-", "-", "ERROR " + r["error"][:80]))
            continue
        verdict = "-"
        if r["mbit"]:
            verdict = "within 5 %" if r["within_tolerance"] else "OUTSIDE 5 %"
            if ceiling is not None and ceiling < r["mbit"] * (1 + TOLERANCE):
                verdict += " (guests' ceiling below the limit: inconclusive)"
        rows.append((
            r["name"], str(r["mbit"] or "-"), f"{r['received_mbit']:.1f}",
            f"{r['ratio']:.3f}" if "ratio" in r else "-",
            f"{r['wire_ratio_est']:.3f}" if "wire_ratio_est" in r else "-", loss(r),
            f"{r['rate_limited']['a']}/{r['rate_limited']['b']}", verdict,
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows, strict=True)]
    for row in (hdr, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="50,200,500", help="ingress limits on A's port, Mbit/s")
    parser.add_argument("--egress-rates", default="200", help="egress limits on B's port, Mbit/s ('' for none)")
    parser.add_argument("--seconds", type=int, default=10, help="iperf3 -t (default 10)")
    parser.add_argument("--omit", type=int, default=2, help="iperf3 -O: seconds left out at the start (default 2)")
    parser.add_argument("--burst", default=None,
                        help="policer burst, e.g. 1MiB (default: the config's, 20 ms at the rate, >= 64 KiB)")
    parser.add_argument("--udp", action="store_true",
                        help=f"UDP offered at {UDP_OFFER}x the limit instead of TCP: the policer's own accuracy")
    parser.add_argument("--actions", default="hold,drop", help="ingress actions to measure (hold, drop)")
    parser.add_argument("--no-unlimited", action="store_true", help="skip the run without a policer")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    cases: list[dict[str, Any]] = []
    if not args.no_unlimited:
        cases.append({"name": "unlimited", "direction": None, "mbit": None})
    cases += [{"name": f"ingress {n} {action}", "direction": "ingress", "mbit": n, "burst": args.burst,
               "action": action}
              for n in parse_rates(args.rates) for action in args.actions.split(",") if action]
    cases += [{"name": f"egress {n}", "direction": "egress", "mbit": n, "burst": args.burst}
              for n in parse_rates(args.egress_rates)]

    started = datetime.now(timezone.utc)
    image = build_image(default_cache_dir())
    work = Path(tempfile.mkdtemp(prefix="vswitch-ratelimit-"))
    socks = {"a": str(work / "a.sock"), "b": str(work / "b.sock")}
    sw = Vswitchd(work / "switch", ports_config(socks, {"direction": None}), cpus="1")
    results: list[dict[str, Any]] = []
    features: dict[str, list[str]] = {}
    sw.start()
    try:
        a = QemuGuest("a", image, socks["a"], mac="52:54:00:00:07:01", ip=f"{IP_A}/24", workdir=work / "a")
        b = QemuGuest("b", image, socks["b"], mac="52:54:00:00:07:02", ip=f"{IP_B}/24", workdir=work / "b")
        with a, b:
            a.wait_booted(240)
            b.wait_booted(240)
            a.ping(IP_B, count=3, interval=0.3)
            for port, feature in TSO_FEATURES.items():
                features[port] = sw.port(port).get("features", [])
                if feature not in features[port]:
                    raise SystemExit(f"port {port} did not negotiate {feature} (features: "
                                     f"{features[port]}): the figure is for TSO on")
            b.iperf3_server()
            for case in cases:
                try:
                    res = run_case(sw, socks, a, case, args.seconds, args.omit, args.udp)
                except Exception as e:  # noqa: BLE001 - one case's failure is reported, the rest go on
                    res = {**case, "error": f"{type(e).__name__}: {e}"[:2000]}
                results.append(res)
                if res.get("error"):
                    print(f"{case['name']:<12} ERROR {res['error'].splitlines()[0][:200]}", flush=True)
                else:
                    print(f"{case['name']:<12} {res['received_mbit']:8.1f} Mbit/s  {loss(res)}  "
                          f"rate_limited a {res['rate_limited']['a']} "
                          f"b {res['rate_limited']['b']}", flush=True)
    finally:
        sw.stop()
    ceiling = next((r["received_mbit"] for r in results if r["mbit"] is None and not r.get("error")), None)
    print()
    print_table(results, ceiling)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"ratelimit-{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "benchmark": "ratelimit", "started": started.isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "tolerance": TOLERANCE, "negotiated_features": features, "ceiling_mbit": ceiling,
        "results": results,
    }, indent=1) + "\n")
    print(f"results: {out}\nlogs: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
