#!/usr/bin/env python3
"""Per-kernel times from `ncu --metrics gpu__time_duration.sum --csv` output (docs/gpu-results.md quotes them).

    ncu --clock-control none --metrics gpu__time_duration.sum --csv carve bench decode ... > ncu.csv
    scripts/ncu_kernel_times.py ncu.csv [--last 80]

Prints the last N launches in order (one decode step is the tail of a `--steps 1` run), then the total time per
kernel name over the whole run.
"""
import argparse
import collections
import csv
import sys

UNIT_TO_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def launches(path):
    header = None
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if "Kernel Name" in row:
                header = row
                continue
            if not header or len(row) != len(header):
                continue  # ncu's own log lines before the table
            rec = dict(zip(header, row))
            if rec.get("Metric Name") != "gpu__time_duration.sum":
                continue
            unit = rec.get("Metric Unit", "")
            if unit not in UNIT_TO_US:
                sys.exit(f"{path}: unknown time unit {unit!r} for {rec['Kernel Name'][:60]}")
            us = float(rec["Metric Value"].replace(",", "")) * UNIT_TO_US[unit]
            yield rec["Kernel Name"], rec.get("Grid Size", ""), us


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--last", type=int, default=80, help="launches to list in order (default 80)")
    args = ap.parse_args()
    rows = list(launches(args.csv))
    if not rows:
        sys.exit(f"{args.csv}: no gpu__time_duration.sum rows (was ncu run with --csv and that metric?)")
    print(f"last {min(args.last, len(rows))} of {len(rows)} launches, us:")
    for name, grid, us in rows[-args.last:]:
        print(f"{us:9.1f}  {grid:>14}  {name[:90]}")
    total = collections.defaultdict(lambda: [0, 0.0])
    for name, _, us in rows:
        total[name][0] += 1
        total[name][1] += us
    print("\nper kernel over the run, us:")
    for name, (count, us) in sorted(total.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"{us:11.1f}  {count:5d}x  {name[:90]}")


if __name__ == "__main__":
    main()
