#!/usr/bin/env python3
"""PyTorch's side of `a3d bench tsm | alignshift | depthconv`, and the PyTorch implementations
the fixtures of tests/torch_parity.rs come from (scripts/torch_context_fixtures.py imports them).

The implementations are the reference detector's formulas written plainly in PyTorch
(shared/docs/reference-detector.md section 13): TSM as out-of-place slicing, AlignShift as
per-sample alpha blends of neighbouring slices, the depth convolution as a depthwise conv3d
with a [K, 1, 1] kernel. Timing: f32 on the CPU, the CLI's default shapes, the CLI's settings
(fold_div 8; AlignShift with 5 mm slices; K = 3). Every round runs a copy of x (`y.copy_(x)`),
the forward under no_grad, and `y.backward(dy)` of an autograd forward (timed alone); medians
over --runs rounds after two warm-ups. One JSON object per line and pass with the keys of
`a3d bench ... --json`, `device` "cpu-torch".

    python bench/torch_context_ops.py --op tsm --runs 15
    python bench/torch_context_ops.py --op depthconv --device cuda --dtype f32,bf16 \
        --shape 2,256,7,128,128          (scripts/gpu-check.sh runs this on a lent GPU)
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

DEFAULT_SHAPES = [[1, 128, 7, 128, 128], [1, 256, 3, 128, 128], [2, 64, 7, 64, 64]]


def tsm(x, fold_div=8):
    """Out-of-place TSM: the first fold channels take slice d+1, the next fold slice d-1,
    zeros at the open ends, the rest unchanged."""
    fold = x.shape[1] // fold_div
    out = torch.zeros_like(x)
    out[:, :fold, :-1] = x[:, :fold, 1:]
    out[:, fold:2 * fold, 1:] = x[:, fold:2 * fold, :-1]
    out[:, 2 * fold:] = x[:, 2 * fold:]
    return out


def align_shift(x, thickness, fold_div=8, ref_thickness=2.0, padding_zero=False):
    """AlignShift: alpha = 1 - clamp(ref / thickness, 0, 1) per sample."""
    fold = x.shape[1] // fold_div
    alpha = 1 - torch.clamp(ref_thickness / thickness, 0, 1)
    a = alpha.view(-1, 1, 1, 1, 1).to(x.dtype)
    pad = a if padding_zero else torch.ones_like(a)
    g0, g1 = x[:, :fold], x[:, fold:2 * fold]
    o0 = torch.cat([a * g0[:, :, :-1] + (1 - a) * g0[:, :, 1:], pad * g0[:, :, -1:]], dim=2)
    o1 = torch.cat([pad * g1[:, :, :1], a * g1[:, :, 1:] + (1 - a) * g1[:, :, :-1]], dim=2)
    return torch.cat([o0, o1, x[:, 2 * fold:]], dim=1)


def depth_conv(x, v):
    """Depthwise convolution along depth with v[K, C], zero padding."""
    k, c = v.shape
    return F.conv3d(x, v.t().reshape(c, 1, k, 1, 1), padding=(k // 2, 0, 0), groups=c)


def median(ts):
    ts = sorted(ts)
    return ts[len(ts) // 2]


DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


class Clock:
    """Wall time on the CPU; CUDA events on a GPU (each region synchronised)."""

    def __init__(self, device):
        self.cuda = device == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b):
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b)
        return (b - a) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--op", choices=["tsm", "alignshift", "depthconv"], required=True)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--shape", action="append", default=None,
                    help="B,C,D,H,W (repeatable; default: the CLI's shapes)")
    ap.add_argument("--dtype", default="f32", help="comma list of f32, f16, bf16")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [[int(v) for v in s.split(",")] for s in args.shape] if args.shape else DEFAULT_SHAPES
    dev = torch.device(args.device)
    clock = Clock(args.device)
    for shape in shapes:
        for dtype_name in args.dtype.split(","):
            run_case(args, shape, dtype_name, DTYPES[dtype_name], dev, clock)


def run_case(args, shape, dtype_name, dtype, dev, clock):
    x = (torch.rand(shape, device=dev) * 2 - 1).to(dtype)
    dy = (torch.rand(shape, device=dev) * 2 - 1).to(dtype)
    copy_dst = torch.empty_like(x)
    thickness = torch.full((shape[0],), 5.0, device=dev)
    v = torch.rand(3, shape[1], device=dev) * 0.2 - 0.1
    v[1] += 1
    v = v.to(dtype)

    def op(inp, weight=None):
        if args.op == "tsm":
            return tsm(inp)
        if args.op == "alignshift":
            return align_shift(inp, thickness)
        return depth_conv(inp, weight)

    times = {"copy": [], "forward": [], "backward": [], "forward_backward": []}
    for r in range(args.runs + 2):
        t0 = clock.mark()
        copy_dst.copy_(x)
        t1 = clock.mark()
        with torch.no_grad():
            op(x, v)
        t2 = clock.mark()
        xg = x.detach().requires_grad_()
        vg = v.detach().requires_grad_()
        y = op(xg, vg)
        t3 = clock.mark()
        y.backward(dy)
        t4 = clock.mark()
        if r >= 2:
            times["copy"].append(clock.ms(t0, t1))
            times["forward"].append(clock.ms(t1, t2))
            times["backward"].append(clock.ms(t3, t4))
            times["forward_backward"].append(clock.ms(t2, t4))
    copy = median(times["copy"])
    x_bytes = x.numel() * x.element_size()
    back = 3 if args.op == "depthconv" else 2
    for p, factor in (("forward", 2), ("backward", back), ("forward_backward", 2 + back)):
        med = median(times[p])
        print(json.dumps({
            "op": args.op, "pass": p, "device": f"{args.device}-torch", "dtype": dtype_name,
            "shape": shape, "threads": torch.get_num_threads(), "median_ms": med, "copy_ms": copy,
            "ratio_to_copy": med / copy, "min_bytes": factor * x_bytes,
            "gb_per_s": factor * x_bytes / (med * 1e-3) / 1e9,
            "copy_gb_per_s": 2 * x_bytes / (copy * 1e-3) / 1e9,
            "torch_version": torch.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
