#!/usr/bin/env python3
"""PyTorch's side of `a3d bench a3dconv` (and, with `--op fusion`, of `a3d bench fusion`).

Times the computation the reference PyTorch A3DConv does, on the CPU in f32:

    z = torch.einsum('bcdhw,dkc->bckhw', x, fusion_w)          # skipped with --no-fusion
    y = F.conv3d(z, weight[O, C, 1, k, k], bias, stride=(1, s, s),
                 padding=(0, p, p), dilation=(1, l, l))

with the same defaults as the CLI: 3x3 C -> 32 pad 1 at [1,128,3,128,128], [1,128,3,64,64],
[1,128,3,32,32] and 1x1 256 -> 128 at [1,256,3,128,128], fusion weights on and a bias on (as
PyTorch's Conv3d has by default; --no-bias / --no-fusion turn them off, like the CLI).

Passes, each a median over --runs rounds after two warm-up rounds. Every round runs, in order:
a copy of x (`y.copy_(x)`, same bytes as the CLI's copy), the forward under `torch.no_grad()`,
then a forward with autograd and its backward (`y.backward(dy)`, gradients of x, the fusion
weights, the conv weight and the bias, set to None before each round):

    forward           the no_grad forward            (the CLI's `forward`)
    backward          `y.backward(dy)` alone         (the CLI's `backward`: all gradients)
    forward_backward  autograd forward + backward    (what one training step costs)

`gflops` counts the convolution only, 2 x multiply-adds: backward counts 2x the forward
(dx and dw), forward_backward 3x. Output: one JSON object per line and pass, with the keys of
`a3d bench a3dconv --json` plus `torch_version`; `device` is "cpu-torch".

`--op fusion` times just the einsum (the PyTorch peer of `a3d bench fusion`): forward under
no_grad, backward = `y.backward(dy)` of the einsum (dx and dw), on the fusion bench's default
shapes [1,128,7,128,128], [1,256,3,128,128], [2,64,7,64,64].

Run by hand (CI does not need torch), e.g.

    python bench/torch_a3dconv.py --runs 15
    python bench/torch_a3dconv.py --op fusion --runs 15
    python bench/torch_a3dconv.py --shape 1,128,3,64,64 --out-channels 32 --kernel 3
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

A3DCONV_DEFAULT_CASES = [
    ([1, 128, 3, 128, 128], 32, 3),
    ([1, 128, 3, 64, 64], 32, 3),
    ([1, 128, 3, 32, 32], 32, 3),
    ([1, 256, 3, 128, 128], 128, 1),
]
FUSION_DEFAULT_SHAPES = [
    [1, 128, 7, 128, 128],
    [1, 256, 3, 128, 128],
    [2, 64, 7, 64, 64],
]
DTYPES = {"f32": torch.float32}


def parse_shape(s):
    dims = [int(v) for v in s.split(",")]
    if len(dims) != 5:
        raise argparse.ArgumentTypeError(f"shape needs 5 dimensions B,C,D,H,W, got {len(dims)}")
    return dims


def interleaved_medians_ms(runs, passes):
    """Median wall time in ms of each pass over `runs` rounds after two warm-up rounds.

    Each element of `passes` is a function returning a list of durations in seconds (one per
    timed sub-pass), so one round can time several dependent steps (forward, then backward).
    """
    times = None
    for round_ in range(runs + 2):
        row = []
        for p in passes:
            row.extend(p())
        if times is None:
            times = [[] for _ in row]
        if round_ >= 2:
            for t, v in zip(times, row):
                t.append(v * 1e3)
    return [sorted(t)[len(t) // 2] for t in times]


def timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def init_fusion_weight(d, c, gen):
    eye = torch.eye(d).unsqueeze(2).expand(d, d, c)
    return (eye + (torch.rand(d, d, c, generator=gen) * 0.2 - 0.1)).contiguous()


def uniform(shape, bound, gen):
    return torch.rand(shape, generator=gen) * (2 * bound) - bound


def base_row(op, pass_, dtype, shape, threads, median_ms, copy_ms, min_bytes, x_bytes):
    return {
        "op": op,
        "pass": pass_,
        "device": "cpu-torch",
        "dtype": dtype,
        "shape": shape,
        "threads": threads,
        "median_ms": median_ms,
        "copy_ms": copy_ms,
        "ratio_to_copy": median_ms / copy_ms,
        "min_bytes": min_bytes,
        "gb_per_s": min_bytes / (median_ms * 1e-3) / 1e9,
        "copy_gb_per_s": 2 * x_bytes / (copy_ms * 1e-3) / 1e9,
        "torch_version": torch.__version__,
    }


def bench_a3dconv(shape, o, k, stride, padding, dilation, fusion, bias, dtype, runs, threads):
    tdtype = DTYPES[dtype]
    b, c, d, h, w = shape
    gen = torch.Generator().manual_seed(0x5EED)
    x = uniform(shape, 1.0, gen).to(tdtype)
    fw = init_fusion_weight(d, c, gen).to(tdtype)
    bound = 1.0 / (c * k * k) ** 0.5
    cw = uniform((o, c, 1, k, k), bound, gen).to(tdtype)
    bs = uniform((o,), bound, gen).to(tdtype)
    conv_kw = dict(stride=(1, stride, stride), padding=(0, padding, padding),
                   dilation=(1, dilation, dilation))

    def layer(x, fw, cw, bs):
        z = torch.einsum("bcdhw,dkc->bckhw", x, fw) if fusion else x
        return F.conv3d(z, cw, bs if bias else None, **conv_kw)

    with torch.no_grad():
        y0 = layer(x, fw, cw, bs)
    oh, ow = y0.shape[3], y0.shape[4]
    dy = uniform(tuple(y0.shape), 1.0, gen).to(tdtype)
    del y0
    params = [x, fw, cw, bs]
    for t in params:
        t.requires_grad_(True)
    copy_dst = torch.empty_like(x, requires_grad=False)
    x_plain = x.detach()

    def run_copy():
        return [timed(lambda: copy_dst.copy_(x_plain))]

    def run_forward():
        with torch.no_grad():
            return [timed(lambda: layer(x, fw, cw, bs))]

    def run_train():
        for t in params:
            t.grad = None
        out = {}

        def fwd():
            out["y"] = layer(x, fw, cw, bs)

        t_fwd = timed(fwd)
        t_bwd = timed(lambda: out["y"].backward(dy))
        return [t_bwd, t_fwd + t_bwd]

    copy_ms, fwd_ms, bwd_ms, train_ms = interleaved_medians_ms(
        runs, [run_copy, run_forward, run_train])
    flops = 2.0 * b * d * o * oh * ow * c * k * k
    size = x.element_size()
    x_bytes = x.numel() * size
    y_bytes = b * o * d * oh * ow * size
    param_bytes = (cw.numel() + (fw.numel() if fusion else 0) + (o if bias else 0)) * size
    rows = []
    for pass_, ms, nbytes, f in [
        ("forward", fwd_ms, x_bytes + param_bytes + y_bytes, flops),
        ("backward", bwd_ms, 2 * x_bytes + y_bytes + 2 * param_bytes, 2 * flops),
        ("forward_backward", train_ms, 2 * x_bytes + 2 * y_bytes + 2 * param_bytes, 3 * flops),
    ]:
        row = base_row("a3dconv", pass_, dtype, shape, threads, ms, copy_ms, nbytes, x_bytes)
        row.update({
            "gflops": f / (ms * 1e-3) / 1e9,
            "out_channels": o,
            "kernel": k,
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "fusion": fusion,
            "bias": bias,
        })
        rows.append(row)
    return rows


def bench_fusion(shape, dtype, runs, threads):
    tdtype = DTYPES[dtype]
    b, c, d, h, w = shape
    gen = torch.Generator().manual_seed(0x5EED)
    x = uniform(shape, 1.0, gen).to(tdtype)
    dy = uniform(shape, 1.0, gen).to(tdtype)
    fw = init_fusion_weight(d, c, gen).to(tdtype)
    copy_dst = torch.empty_like(x)
    x_plain = x.detach()
    x.requires_grad_(True)
    fw.requires_grad_(True)

    def fuse():
        return torch.einsum("bcdhw,dkc->bckhw", x, fw)

    def run_copy():
        return [timed(lambda: copy_dst.copy_(x_plain))]

    def run_forward():
        with torch.no_grad():
            return [timed(fuse)]

    def run_train():
        x.grad = None
        fw.grad = None
        y = fuse()
        return [timed(lambda: y.backward(dy))]

    copy_ms, fwd_ms, bwd_ms = interleaved_medians_ms(runs, [run_copy, run_forward, run_train])
    x_bytes = x.numel() * x.element_size()
    return [
        base_row("fusion", "forward", dtype, shape, threads, fwd_ms, copy_ms, 2 * x_bytes, x_bytes),
        base_row("fusion", "backward", dtype, shape, threads, bwd_ms, copy_ms, 3 * x_bytes,
                 x_bytes),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--op", choices=["a3dconv", "fusion"], default="a3dconv")
    ap.add_argument("--shape", type=parse_shape, action="append", default=[],
                    help="input shape B,C,D,H,W (repeatable); default: the CLI's default set")
    ap.add_argument("--out-channels", type=int, help="a3dconv: O (with --shape and --kernel)")
    ap.add_argument("--kernel", type=int, help="a3dconv: square kernel size K")
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--padding", type=int, help="default: K/2")
    ap.add_argument("--dilation", type=int, default=1)
    ap.add_argument("--no-fusion", action="store_true", help="a3dconv: no einsum before the conv")
    ap.add_argument("--no-bias", action="store_true", help="a3dconv: conv without bias")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--runs", type=int, default=15, help="timed rounds (the median is reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    def emit(rows):
        for r in rows:
            print(json.dumps(r), flush=True)

    if args.op == "fusion":
        for shape in args.shape or FUSION_DEFAULT_SHAPES:
            emit(bench_fusion(shape, args.dtype, args.runs, threads))
        return
    if args.out_channels is None and args.kernel is None and not args.shape:
        cases = A3DCONV_DEFAULT_CASES
    elif args.out_channels is not None and args.kernel is not None and args.shape:
        cases = [(s, args.out_channels, args.kernel) for s in args.shape]
    else:
        ap.error("give --shape, --out-channels and --kernel together, or none of them")
    for shape, o, k in cases:
        padding = k // 2 if args.padding is None else args.padding
        emit(bench_a3dconv(shape, o, k, args.stride, padding, args.dilation, not args.no_fusion,
                           not args.no_bias, args.dtype, args.runs, threads))


if __name__ == "__main__":
    sys.exit(main())
