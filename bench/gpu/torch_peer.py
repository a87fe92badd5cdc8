#!/usr/bin/env python3
"""PyTorch peer of `a3d bench fusion --device cuda`: the reference A3D implementation
(`torch.einsum('bcdhw,dkc->bckhw', x, w)` and its autograd) timed on the GPU.

For every shape and dtype, in one run on the same buffers:
  forward           y = einsum(x, w)
  backward          y.backward(dy), timed alone (grads of x and w; the forward runs untimed
                    before each repetition, grads are reset to None outside the timed region)
  forward_backward  y = einsum(x, w); y.backward(dy)
  copy              dst.copy_(x) into a preallocated tensor (read + write of x's bytes),
                    timed before and after the others; the lower of the two medians

Timing: CUDA events around each repetition, warm-up first, median of >= 20 repetitions.
Output with --json: one JSON object per line and measurement, keys op ("einsum"), pass,
dtype, shape, median_ms (plus runs, min_ms, max_ms). Versions go to stderr as one line
`versions: {...}` (JSON), which bench/gpu/make_report.py reads.

    python3 bench/gpu/torch_peer.py --shape 2,256,7,128,128 --shape 1,128,3,256,256 \
        --dtype f32,bf16 --runs 30 --json
"""

import argparse
import json
import statistics
import sys
import time

MIN_RUNS = 20
DTYPE_NAMES = ("f32", "bf16", "f16")


def parse_shape(s):
    try:
        dims = [int(v) for v in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape `{s}`: not a comma list of integers")
    if len(dims) != 5 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"shape `{s}`: needs 5 positive dimensions B,C,D,H,W")
    return dims


def parse_dtypes(values):
    out = []
    for v in values:
        for name in v.split(","):
            name = name.strip()
            if name == "all":
                out.extend(DTYPE_NAMES)
            elif name in DTYPE_NAMES:
                out.append(name)
            elif name:
                raise SystemExit(f"torch_peer: unknown dtype `{name}` (one of {', '.join(DTYPE_NAMES)})")
    # keep order, drop repeats
    return list(dict.fromkeys(out))


def torch_dtype(torch, name):
    return {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[name]


def timed(torch, dev, runs, warmup, body, setup=None):
    """Median/min/max milliseconds of `body`, `setup` untimed before each repetition.

    On CUDA: two events around each repetition, one synchronisation at the end. On the CPU
    (`--device cpu`, only to check this script where there is no GPU): a wall clock."""
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        if setup is not None:
            setup()
        body()
    sync()
    ms = []
    events = []
    for _ in range(runs):
        if setup is not None:
            setup()
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            body()
            end.record()
            events.append((start, end))
        else:
            t0 = time.perf_counter()
            body()
            ms.append((time.perf_counter() - t0) * 1e3)
    sync()
    if cuda:
        ms = [s.elapsed_time(e) for s, e in events]
    return statistics.median(ms), min(ms), max(ms)


def measure(torch, dev, shape, dtype_name, runs, warmup, seed):
    dt = torch_dtype(torch, dtype_name)
    b, c, d, h, w_ = shape
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    # Random data (never zeros); weights as the reference initialises them: I_D + U(-0.1, 0.1).
    x = (torch.rand(shape, device=dev, generator=gen) * 2 - 1).to(dt)
    dy = (torch.rand(shape, device=dev, generator=gen) * 2 - 1).to(dt)
    eye = torch.eye(d, device=dev).unsqueeze(-1).expand(d, d, c)
    w = (eye + (torch.rand((d, d, c), device=dev, generator=gen) * 0.2 - 0.1)).to(dt)
    x.requires_grad_(True)
    w.requires_grad_(True)
    dst = torch.empty_like(x, requires_grad=False)

    def einsum():
        return torch.einsum("bcdhw,dkc->bckhw", x, w)

    results = {}

    # copy first and last (they should agree); the lower of the two medians is reported.
    with torch.no_grad():
        results["copy"] = timed(torch, dev, runs, warmup, lambda: dst.copy_(x))

    # forward as a training step runs it (autograd recording on, inputs require grad)
    results["forward"] = timed(torch, dev, runs, warmup, einsum)

    state = {}

    def reset_and_forward():
        x.grad = None
        w.grad = None
        state["y"] = einsum()

    def backward_only():
        state["y"].backward(dy)

    results["backward"] = timed(torch, dev, runs, warmup, backward_only, setup=reset_and_forward)

    def reset_grads():
        x.grad = None
        w.grad = None

    def forward_backward():
        einsum().backward(dy)

    results["forward_backward"] = timed(torch, dev, runs, warmup, forward_backward, setup=reset_grads)

    # sanity: the grads exist and have the right shapes (catches a silently skipped backward)
    assert x.grad is not None and tuple(x.grad.shape) == tuple(shape), "x.grad missing"
    assert w.grad is not None and tuple(w.grad.shape) == (d, d, c), "w.grad missing"

    with torch.no_grad():
        copy2 = timed(torch, dev, runs, warmup, lambda: dst.copy_(x))
    c1 = results["copy"]
    results["copy"] = (min(c1[0], copy2[0]), min(c1[1], copy2[1]), max(c1[2], copy2[2]))

    del x, dy, w, dst, state
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=parse_shape, action="append", default=[],
                    help="B,C,D,H,W (repeatable); default 2,256,7,128,128 and 1,128,3,256,256")
    ap.add_argument("--dtype", action="append", default=[],
                    help="f32, bf16, f16, a comma list or `all` (repeatable); default f32,bf16")
    ap.add_argument("--runs", type=int, default=30, help=f"timed repetitions (at least {MIN_RUNS})")
    ap.add_argument("--warmup", type=int, default=5, help="untimed repetitions first")
    ap.add_argument("--seed", type=int, default=0x5EED)
    ap.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: wall-clock timing, only to test this script without a GPU")
    args = ap.parse_args(argv)

    shapes = args.shape or [[2, 256, 7, 128, 128], [1, 128, 3, 256, 256]]
    dtypes = parse_dtypes(args.dtype or ["f32,bf16"])
    runs = args.runs
    if runs < MIN_RUNS:
        print(f"torch_peer: --runs {runs} raised to {MIN_RUNS}", file=sys.stderr)
        runs = MIN_RUNS
    warmup = max(1, args.warmup)

    import torch  # late: --help works without torch

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("torch_peer: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    versions = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "device": str(dev),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "python": sys.version.split()[0],
    }
    print("versions: " + json.dumps(versions), file=sys.stderr, flush=True)
    if not args.json:
        print(f"torch {versions['torch']}, CUDA {versions['cuda']}, cuDNN {versions['cudnn']}, "
              f"{versions['gpu']}; median of {runs} runs after {warmup} warm-up")
        print(f"{'op':<7} {'pass':<17} {'dtype':<5} {'shape':<20} {'median_ms':>10} {'min_ms':>9}")

    failed = 0
    for shape in shapes:
        for dtype_name in dtypes:
            try:
                res = measure(torch, dev, shape, dtype_name, runs, warmup, args.seed)
            except Exception as e:  # report and go on with the next shape/dtype
                failed += 1
                print(f"torch_peer: {dtype_name} {shape}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            for pass_name in ("forward", "backward", "forward_backward", "copy"):
                med, lo, hi = res[pass_name]
                if args.json:
                    print(json.dumps({
                        "op": "einsum", "pass": pass_name, "dtype": dtype_name, "shape": shape,
                        "median_ms": med, "min_ms": lo, "max_ms": hi, "runs": runs,
                        "device": str(dev),
                    }), flush=True)
                else:
                    print(f"{'einsum':<7} {pass_name:<17} {dtype_name:<5} "
                          f"{'[' + ','.join(map(str, shape)) + ']':<20} {med:>10.4f} {lo:>9.4f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
