#!/usr/bin/env python3
"""PyTorch's side of `a3d bench dense-layer`: one DenseNet-A3D dense layer in training mode, as
the reference builds it (shared/docs/reference-detector.md section 2.2): BatchNorm3d(F) -> ReLU ->
A3DConv(F, 128, 1) -> BatchNorm3d(128) -> ReLU -> A3DConv(128, 32, 3, padding 1), where A3DConv
is the fusion einsum('bcdhw,dkc->bckhw') followed by conv3d with a [1, k, k] kernel, no bias.
Eager f32 on the CPU, `torch.set_num_threads(--threads)`. Timed: the forward (training mode, so
with batch statistics and running-statistics updates) and forward + backward (`y.backward(dy)`),
medians over --runs after two warm-ups; one JSON object per line with the keys of
`a3d bench dense-layer --json`, `device` "cpu-torch", op "dense_torch".

    python bench/torch_dense_layer.py --runs 5
    python bench/torch_dense_layer.py --shape 1,256,3,128,128
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_SHAPES = [[1, 64, 3, 128, 128], [1, 160, 3, 128, 128], [1, 256, 3, 128, 128],
                  [1, 64, 7, 128, 128]]


class A3DConv(nn.Module):
    def __init__(self, cin, cout, k, depth, padding=0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5)
        w = torch.eye(depth).unsqueeze(-1).repeat(1, 1, cin) + torch.empty(depth, depth, cin).uniform_(-0.1, 0.1)
        self.adaptive_align_weights = nn.Parameter(w)
        self.padding = padding

    def forward(self, x):
        x = torch.einsum("bcdhw,dkc->bckhw", x, self.adaptive_align_weights)
        return F.conv3d(x, self.weight.unsqueeze(2), padding=(0, self.padding, self.padding))


def dense_layer(f, d):
    return nn.Sequential(
        nn.BatchNorm3d(f), nn.ReLU(), A3DConv(f, 128, 1, d),
        nn.BatchNorm3d(128), nn.ReLU(), A3DConv(128, 32, 3, d, padding=1),
    ).train()


def median(ts):
    ts = sorted(ts)
    return ts[len(ts) // 2]


def timed(fn, runs):
    for _ in range(2):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", action="append", default=None, help="B,F,D,H,W (repeatable)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [[int(v) for v in s.split(",")] for s in args.shape] if args.shape else DEFAULT_SHAPES
    for shape in shapes:
        b, f, d, h, w = shape
        layer = dense_layer(f, d)
        x = torch.rand(shape) * 2 - 1
        dy = torch.rand(b, 32, d, h, w) * 2 - 1

        def forward():
            with torch.no_grad():
                layer(x)

        xg = x.clone().requires_grad_(True)

        def forward_backward():
            layer.zero_grad(set_to_none=True)
            xg.grad = None
            layer(xg).backward(dy)

        for p, fn in (("forward", forward), ("forward+backward", forward_backward)):
            print(json.dumps({"op": "dense_torch", "pass": p, "device": "cpu-torch", "dtype": "f32",
                              "shape": shape, "threads": args.threads,
                              "median_ms": timed(fn, args.runs)}), flush=True)


if __name__ == "__main__":
    main()
