"""Plot a loopback benchmark result: frames/s per configuration for DPDK's
vhost PMD, the baseline (--baseline) and each vswitch variant side by side,
and each vswitch system's ratio to the baseline (or, without one, to DPDK).

    .venv/bin/python -m bench.plot [RESULT.json]     # default: the newest in bench/results
    .venv/bin/python -m bench.plot --history [TSV]   # default: bench/results/callgrind-history.tsv

Writes RESULT.png (TSV.png) next to the file and prints its path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"


def newest() -> Path:
    files = sorted(RESULTS.glob("loopback-*.json"))
    if not files:
        sys.exit(f"no results in {RESULTS}: run python -m bench.loopback first")
    return files[-1]


def systems_of(row: dict) -> dict[str, dict]:
    """A summary row's systems; results written before --baseline/--variants
    have only dpdk_mpps, vswitch_mpps and ratio (vswitch / DPDK)."""
    if row.get("systems"):
        return row["systems"]
    return {"dpdk": {"mpps": row.get("dpdk_mpps")},
            "vswitch": {"mpps": row.get("vswitch_mpps"), "ratio_dpdk": row.get("ratio")}}


LABELS = {"dpdk": "DPDK 22.11 vhost PMD", "vswitch": "vswitch (features off)",
          "ovs-normal": "OVS-DPDK 3.1, NORMAL", "ovs-p2p": "OVS-DPDK 3.1, port to port"}


def _errbars(stats: list[dict | None]) -> tuple[list[float], list[list[float]]]:
    med = [s["median"] if s else 0.0 for s in stats]
    lo = [s["median"] - s["min"] if s else 0.0 for s in stats]
    hi = [s["max"] - s["median"] if s else 0.0 for s in stats]
    return med, [lo, hi]


def plot(path: Path) -> Path:
    data = json.loads(path.read_text())
    rows = [s for s in data["summary"] if any(e.get("mpps") for e in systems_of(s).values())]
    if not rows:
        sys.exit(f"{path}: no configuration has figures")
    names = list(data.get("systems") or systems_of(rows[0]))
    baseline = data.get("baseline")
    labels = [s["config"] for s in rows]
    x = range(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6 + 1.2 * len(names) * len(rows) / 2, 4.6))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        med, err = _errbars([systems_of(s).get(name, {}).get("mpps") for s in rows])
        label = LABELS.get(name) or (f"baseline {baseline['commit'][:8]}" if name == "baseline" and baseline
                                     else name)
        ax1.bar([i - 0.4 + width * (j + 0.5) for i in x], med, width, yerr=err, capsize=2, label=label)
    ax1.set_xticks(list(x), labels)
    ax1.set_ylabel("Mframes/s delivered (median, min..max)")
    ax1.set_title("Loopback: testpmd virtio-user on CPU 0, switch on CPU 1")
    ax1.legend(fontsize="small")
    # right: each vswitch system against the baseline when there is one, else
    # against each reference system (DPDK, and OVS when it ran)
    vs = [n for n in names if n.startswith("vswitch")]
    refs = [n for n in ("dpdk", "ovs-normal", "ovs-p2p") if n in names]
    if baseline or len(refs) < 2:
        key, ref = ("ratio_baseline", "baseline") if baseline else ("ratio_dpdk", "DPDK")
        bars = [(name, LABELS.get(name, name), lambda e, key=key: e.get(key)) for name in vs]
    else:
        ref = "each reference"
        bars = [(name, f"{name} / {LABELS.get(r, r)}" if len(vs) > 1 else f"/ {LABELS.get(r, r)}",
                 lambda e, r=r: (e.get("ratios") or {}).get(r)) for name in vs for r in refs]
    rw = 0.8 / max(len(bars), 1)
    for j, (name, label, pick) in enumerate(bars):
        stats = [pick(systems_of(s).get(name, {})) for s in rows]
        med, err = _errbars(stats)
        xs = [i - 0.4 + rw * (j + 0.5) for i in x]
        ax2.bar(xs, med, rw, yerr=err, capsize=2, label=label)
        for xi, st in zip(xs, stats):
            if st:
                ax2.text(xi, st["median"] + 0.02, f"{st['median']:.2f}", ha="center", fontsize="x-small")
    ax2.axhline(1.0, color="black", linewidth=0.8)
    if baseline:
        ax2.axhline(0.95, color="tab:red", linewidth=0.8, linestyle="--", label="-5 %")
    ax2.set_xticks(list(x), labels)
    ax2.set_ylabel(f"vswitch / {ref} (median of interleaved pairs)")
    ax2.set_title(f"Ratio to {ref}, {data['args']['pairs']} pairs, git {data['host'].get('git', '?')}")
    if len(bars) > 1 or baseline:
        ax2.legend(fontsize="small")
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


HISTORY = RESULTS / "callgrind-history.tsv"


def plot_history(path: Path = HISTORY) -> Path:
    """Instructions per 64-byte frame by commit (bench.callgrind's history),
    quiet, notify and packed, oldest commit on the left; writes PATH.png."""
    from bench.callgrind import read_history
    rows = sorted(read_history(path).values(), key=lambda r: (r["date"], r["commit"]))
    if not rows:
        sys.exit(f"{path}: no commits yet: run python -m bench.callgrind first")
    labels = [r["commit"][:7] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.2))
    for col, name in (("quiet", "quiet (split rings polled)"), ("notify", "notify (every burst signalled)"),
                      ("packed", "packed (packed rings polled)")):
        pts = [(i, float(r[col])) for i, r in enumerate(rows) if r.get(col) not in (None, "", "-")]
        if pts:
            ax.plot([i for i, _ in pts], [v for _, v in pts], marker="o", label=name)
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize="small")
    ax.set_ylabel("instructions per 64-byte frame (callgrind)")
    ax.set_title("Datapath instructions per frame, by commit")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", linewidth=0.4)
    ax.legend(fontsize="small")
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--history"]:
        print(plot_history(Path(args[1]) if len(args) > 1 else HISTORY))
    else:
        print(plot(Path(args[0]) if args else newest()))
