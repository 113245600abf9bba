#!/usr/bin/env python3
"""The decode figure (like mmMamba's Figure 1(c)-(d)) from `carve bench decode --json`: per-token latency at
batch 1 with the bytes floor, peak memory, and throughput at the largest batch that fits, against context length.

usage: plot_decode.py BENCH.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"teacher": "tab:red", "hybrid": "tab:green", "linear": "tab:blue"}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        bench = json.load(f)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for m in bench["models"]:
        color = COLORS.get(m["name"], None)
        ok = [p for p in m["batch1"] if not p.get("oom")]
        ctx = [p["context"] / 1024 for p in ok]
        axes[0].plot(ctx, [p["ms_per_token"] for p in ok], "o-", color=color, label=m["name"])
        axes[0].plot(ctx, [p["floor_ms"] for p in ok], ":", color=color, label=m["name"] + " bytes floor")
        axes[1].plot(ctx, [p["peak_bytes"] / 2**30 for p in ok], "o-", color=color, label=m["name"])
        oom = [p["context"] / 1024 for p in m["batch1"] if p.get("oom")]
        if oom:
            axes[1].plot(oom, [0] * len(oom), "x", color=color, label=m["name"] + " out of memory")
        mb = [p for p in m.get("max_batch", []) if p.get("tokens_per_s")]
        if mb:
            axes[2].plot([p["context"] / 1024 for p in mb], [p["tokens_per_s"] for p in mb], "o-", color=color,
                         label=m["name"])
            for p in mb:
                axes[2].annotate(f"b={p['batch']}", (p["context"] / 1024, p["tokens_per_s"]), fontsize=7,
                                 textcoords="offset points", xytext=(3, 3))
    titles = ["decode latency, batch 1 (ms/token)", "peak GPU memory, batch 1 (GiB)",
              "decode throughput, largest batch (tokens/s)"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (K tokens)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[2].set_yscale("log")
    fig.suptitle(f"carve decode on {bench['device']}: {bench['dims']['layers']} layers, hidden "
                 f"{bench['dims']['hidden']}, {bench['dtype']}")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
