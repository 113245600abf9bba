#!/usr/bin/env python3
"""Loss curves of distillation runs: one panel per stage, one line per run.

usage: plot_losses.py OUT.png NAME=RUN_FOLDER [NAME=RUN_FOLDER ...]
Each RUN_FOLDER holds stage folders (stage1/, stage2/, stage3/, one-stage/) with the metrics.jsonl that
`carve distill` writes; a stage a run lacks is skipped.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGES = [("stage1", "stage 1: layer-wise x1000 MSE"), ("stage2", "stage 2: layer-wise x1000 MSE"),
          ("stage3", "stage 3: end-to-end loss (KL + CE)"), ("one-stage", "one stage: layer L2 + KL")]


def read_metrics(path):
    steps, losses = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            steps.append(record["step"])
            losses.append(record["loss"])
    return steps, losses


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    out, runs = argv[1], []
    for arg in argv[2:]:
        name, sep, folder = arg.partition("=")
        if not sep:
            sys.exit(f"plot_losses.py: '{arg}' must be NAME=RUN_FOLDER")
        runs.append((name, folder))
    present = [s for s in STAGES if any(os.path.exists(os.path.join(f, s[0], "metrics.jsonl")) for _, f in runs)]
    if not present:
        sys.exit("plot_losses.py: no metrics.jsonl in any stage folder of the runs given")
    fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.6), squeeze=False)
    for ax, (stage, title) in zip(axes[0], present):
        for name, folder in runs:
            path = os.path.join(folder, stage, "metrics.jsonl")
            if os.path.exists(path):
                steps, losses = read_metrics(path)
                ax.plot(steps, losses, label=name, marker=".", markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot_losses.py: wrote {out}")


if __name__ == "__main__":
    main(sys.argv)
