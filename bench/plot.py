"""Plot a loopback benchmark result: frames/s per configuration for DPDK's
vhost PMD and vswitch side by side, and the vswitch/DPDK ratio.

    .venv/bin/python bench/plot.py [RESULT.json]     # default: the newest in bench/results

Writes RESULT.png next to the JSON file and prints its path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def newest() -> Path:
    files = sorted(RESULTS.glob("loopback-*.json"))
    if not files:
        sys.exit(f"no results in {RESULTS}: run bench/loopback.py first")
    return files[-1]


def plot(path: Path) -> Path:
    data = json.loads(path.read_text())
    rows = [s for s in data["summary"] if s.get("dpdk_mpps") and s.get("vswitch_mpps")]
    if not rows:
        sys.exit(f"{path}: no configuration has figures for both switches")
    labels = [s["config"] for s in rows]
    x = range(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    for offset, key, name in ((-width / 2, "dpdk_mpps", "DPDK 22.11 vhost PMD"),
                              (width / 2, "vswitch_mpps", "vswitch")):
        med = [s[key]["median"] for s in rows]
        lo = [s[key]["median"] - s[key]["min"] for s in rows]
        hi = [s[key]["max"] - s[key]["median"] for s in rows]
        ax1.bar([i + offset for i in x], med, width, yerr=[lo, hi], capsize=3, label=name)
    ax1.set_xticks(list(x), labels)
    ax1.set_ylabel("Mframes/s delivered (median, min..max)")
    ax1.set_title("Loopback: testpmd virtio-user on CPU 0, switch on CPU 1")
    ax1.legend()
    ratio = [s["ratio"]["median"] for s in rows]
    rlo = [s["ratio"]["median"] - s["ratio"]["min"] for s in rows]
    rhi = [s["ratio"]["max"] - s["ratio"]["median"] for s in rows]
    ax2.bar(list(x), ratio, 0.5, yerr=[rlo, rhi], capsize=3, color="tab:green")
    ax2.axhline(1.0, color="black", linewidth=0.8)
    ax2.set_xticks(list(x), labels)
    ax2.set_ylabel("vswitch / DPDK (median of interleaved pairs)")
    ax2.set_title(f"Ratio, {data['args']['pairs']} pairs, git {data['host'].get('git', '?')}")
    for i, r in enumerate(ratio):
        ax2.text(i, r + 0.02, f"{r:.2f}", ha="center")
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(plot(Path(sys.argv[1]) if len(sys.argv) > 1 else newest()))
