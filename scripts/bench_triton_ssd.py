#!/usr/bin/env python3
"""Times mamba_ssm's Triton SSD kernel (mamba_chunk_scan_combined) for `carve bench kernels`, which runs this in the
same session and prints the results beside its own.

mamba_ssm is not a dependency of carve: put a fetched copy of its mamba_ssm/ops/triton and mamba_ssm/utils (with
empty __init__.py files above them) in an ignored folder such as .third_party/mamba and pass it on PYTHONPATH.
Inputs follow carve's bench: bf16 x, dt, B, C; float32 A, D (per head), dt_bias; dt_softplus; the same
distributions. Times are medians of triton.testing.do_bench (which clears the L2 cache between runs).

    PYTHONPATH=.third_party/mamba python3 scripts/bench_triton_ssd.py --shapes hovle=4x4096x16x128x16x128x128 \
        --json out.json
"""
import argparse
import json
import math
import sys

import torch
import triton.testing

from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined


# carve bench kernels' presets (launcher/bench_kernels.cpp), so that both take the same --shapes.
PRESETS = {
    "hovle": "4x4096x16x128x16x128x128",
    "phi2": "4x2048x32x80x32x80x256",
    "mamba2-2.7b": "8x4096x80x64x1x128x256",
    "long": "1x32768x16x128x16x128x128",
}


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        if "=" not in item:
            if item not in PRESETS:
                sys.exit(f"--shapes: '{item}' is neither a preset ({', '.join(PRESETS)}) nor name=BxLxHxPxGxNxCHUNK")
            item = f"{item}={PRESETS[item]}"
        name, dims = item.split("=")
        b, l, h, p, g, n, chunk = (int(v) for v in dims.split("x"))
        shapes.append(dict(name=name, b=b, l=l, h=h, p=p, g=g, n=n, chunk=chunk))
    return shapes


def inputs(s, dtype):
    torch.manual_seed(0)
    dev = "cuda"
    b, l, h, p, g, n = s["b"], s["l"], s["h"], s["p"], s["g"], s["n"]
    x = torch.randn(b, l, h, p, device=dev, dtype=dtype, requires_grad=True)
    dt = (torch.randn(b, l, h, device=dev, dtype=dtype) - 2).requires_grad_()
    A = (-(torch.rand(h, device=dev) * 15 + 1)).requires_grad_()
    B = (torch.randn(b, l, g, n, device=dev, dtype=dtype) / math.sqrt(n)).requires_grad_()
    C = (torch.randn(b, l, g, n, device=dev, dtype=dtype) / math.sqrt(n)).requires_grad_()
    D = torch.ones(h, device=dev, requires_grad=True)
    dt_bias = torch.zeros(h, device=dev, requires_grad=True)
    return x, dt, A, B, C, D, dt_bias


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", required=True, help="name=BxLxHxPxGxNxCHUNK,...")
    ap.add_argument("--rep-ms", type=int, default=200, help="do_bench's rep (ms of timed runs)")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    results = []
    for s in parse_shapes(args.shapes):
        x, dt, A, B, C, D, dt_bias = inputs(s, torch.bfloat16)
        gy = torch.randn_like(x)

        def fwd():
            with torch.no_grad():
                mamba_chunk_scan_combined(x, dt, A, B, C, s["chunk"], D=D, dt_bias=dt_bias, dt_softplus=True)

        def fwd_bwd():
            for t in (x, dt, A, B, C, D, dt_bias):
                t.grad = None
            y = mamba_chunk_scan_combined(x, dt, A, B, C, s["chunk"], D=D, dt_bias=dt_bias, dt_softplus=True)
            y.backward(gy)

        f = triton.testing.do_bench(fwd, rep=args.rep_ms, return_mode="median")
        fb = triton.testing.do_bench(fwd_bwd, rep=args.rep_ms, return_mode="median")
        print(f"triton {s['name']}: forward {f:.3f} ms, forward+backward {fb:.3f} ms", flush=True)
        results.append(dict(shape=s["name"], forward_ms=f, forward_backward_ms=fb,
                            triton=triton.__version__, torch=torch.__version__))
        del x, dt, A, B, C, D, dt_bias, gy
        torch.cuda.empty_cache()
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
