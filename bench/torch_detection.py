#!/usr/bin/env python3
"""PyTorch's side of `a3d bench roi-align | nms`, and the PyTorch implementations the fixtures of
tests/detection_parity.rs come from (scripts/torch_detection_fixtures.py imports them).

Timing: torchvision's `roi_align` (7x7, sampling 2, scale 1/4, aligned=False: the closest of its
modes to the reference's rules) forward under no_grad and `y.backward(dy)` of an autograd
forward (pass "forward_backward": it includes the forward), and torchvision's `nms` at IoU 0.7, on the same boxes as the CLI: `proposals` below
replays the CLI's SplitMix64 draws (cli/src/bench_detection.rs) in the same order with the same
float64 arithmetic. Medians over --runs rounds after two warm-ups; one JSON object per line
with the keys of `a3d bench ... --json`, `device` "cpu-torch" (or "cuda-torch").

    python bench/torch_detection.py --op nms --runs 21
    python bench/torch_detection.py --op roi-align --runs 7 --threads 2
"""

import argparse
import json
import time

import torch
from torchvision.ops import nms as tv_nms
from torchvision.ops import roi_align as tv_roi_align

MASK = (1 << 64) - 1
IMAGE = 512.0
OBJECTS = 40


class SplitMix64:
    """a3d::rng::SplitMix64, bit for bit."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def next_f64(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def uniform(self, lo, hi):
        return lo + (hi - lo) * self.next_f64()

    def below(self, n):
        return self.next_u64() % n


def proposals(n, seed=0x0B0E5):
    """The boxes and scores of cli/src/bench_detection.rs `proposals`."""
    rng = SplitMix64(seed)
    objects = []
    for _ in range(OBJECTS):
        cx, cy = rng.uniform(0.0, IMAGE), rng.uniform(0.0, IMAGE)
        objects.append([cx, cy, rng.uniform(8.0, 200.0), rng.uniform(8.0, 200.0)])
    boxes, scores = [], []
    for _ in range(n):
        if rng.next_f64() < 0.8:
            o = objects[rng.below(OBJECTS)]
            w, h = o[2] * rng.uniform(0.8, 1.2), o[3] * rng.uniform(0.8, 1.2)
            cx, cy = o[0] + o[2] * rng.uniform(-0.1, 0.1), o[1] + o[3] * rng.uniform(-0.1, 0.1)
        else:
            cx, cy = rng.uniform(0.0, IMAGE), rng.uniform(0.0, IMAGE)
            w, h = rng.uniform(8.0, 200.0), rng.uniform(8.0, 200.0)
        clip = lambda v: min(max(v, 0.0), IMAGE - 1.0)
        boxes.append([clip(cx - w / 2.0), clip(cy - h / 2.0), clip(cx + w / 2.0), clip(cy + h / 2.0)])
        scores.append(rng.next_f64())
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32)


def mmdet_roi_align(features, rois, pooled, scale, sampling):
    """The reference detector's RoIAlign (mmdetection 1.0's CUDA kernel rules, reference-detector.md
    section 5.1), written as gathers so autograd gives its backward: start = x1 * s, end =
    (x2 + 1) * s, size clamped at 0, g x g samples per bin (g = sampling, or ceil(bin) per RoI for
    0), samples outside [-1, H] x [-1, W] zero, coordinates clamped into the map."""
    n, c, h, w = features.shape
    ph, pw = pooled
    outs = []
    for r in rois:
        b = int(r[0])
        sw, sh = r[1] * scale, r[2] * scale
        rw = torch.clamp((r[3] + 1) * scale - sw, min=0.0)
        rh = torch.clamp((r[4] + 1) * scale - sh, min=0.0)
        bw, bh = rw / pw, rh / ph
        gh = sampling if sampling > 0 else int(torch.ceil(bh).clamp(min=0))
        gw = sampling if sampling > 0 else int(torch.ceil(bw).clamp(min=0))
        count = max(gh * gw, 1)
        plane = features[b]
        out = torch.zeros(c, ph, pw, dtype=features.dtype)
        for i in range(ph):
            for j in range(pw):
                acc = torch.zeros(c, dtype=features.dtype)
                for iy in range(gh):
                    y = sh + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sw + j * bw + (ix + 0.5) * bw / gw
                        acc = acc + bilinear(plane, float(y), float(x), h, w)
                out[:, i, j] = acc / count
        outs.append(out)
    return torch.stack(outs) if outs else torch.zeros(0, c, ph, pw)


def bilinear(plane, y, x, h, w):
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(plane.shape[0], dtype=plane.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= h - 1:
        yl = yh = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xl = xh = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * plane[:, yl, xl] + hy * lx * plane[:, yl, xh]
            + ly * hx * plane[:, yh, xl] + ly * lx * plane[:, yh, xh])


def greedy_nms_inclusive(boxes, scores, threshold):
    """The reference's NMS: +1 areas, suppress IoU > threshold, in descending score order."""
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order]
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    keep, removed = [], torch.zeros(len(b), dtype=torch.bool)
    for i in range(len(b)):
        if removed[i]:
            continue
        keep.append(int(order[i]))
        w = (torch.minimum(b[i, 2], b[:, 2]) - torch.maximum(b[i, 0], b[:, 0]) + 1).clamp(min=0)
        h = (torch.minimum(b[i, 3], b[:, 3]) - torch.maximum(b[i, 1], b[:, 1]) + 1).clamp(min=0)
        inter = w * h
        iou = inter / (area[i] + area - inter)
        later = torch.arange(len(b)) > i
        removed |= later & (iou > threshold)
    return torch.tensor(keep, dtype=torch.int64)


def median(ts):
    ts = sorted(ts)
    return ts[len(ts) // 2]


def timed(fn, runs, sync):
    for _ in range(2):
        fn()
    ts = []
    for _ in range(runs):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t) * 1e3)
    return median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", choices=["roi-align", "nms"], required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", default=None, help="N,C,H,W (roi-align) or the box count (nms)")
    ap.add_argument("--rois", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    label = f"{dev.type}-torch"
    threads = args.threads if dev.type == "cpu" else 0
    if args.op == "nms":
        n = int(args.shape) if args.shape else 6000
        boxes, scores = proposals(n)
        boxes, scores = boxes.to(dev), scores.to(dev)
        kept = len(tv_nms(boxes, scores, 0.7))
        ms = timed(lambda: tv_nms(boxes, scores, 0.7), args.runs, sync)
        print(json.dumps({"op": "nms", "pass": "forward", "device": label, "dtype": "f32",
                          "shape": [n], "threads": threads, "median_ms": ms, "kept": kept}))
        return
    shape = [int(v) for v in args.shape.split(",")] if args.shape else [1, 512, 128, 128]
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(shape, generator=g) * 2 - 1).to(dev)
    boxes, _ = proposals(args.rois)
    idx = (torch.arange(args.rois) % shape[0]).float().unsqueeze(1)
    rois = torch.cat([idx, boxes], dim=1).to(dev)
    with torch.no_grad():
        fwd = timed(lambda: tv_roi_align(x, rois, (7, 7), 0.25, 2, False), args.runs, sync)
    xg = x.clone().requires_grad_(True)
    dy = torch.rand(args.rois, shape[1], 7, 7, generator=g).to(dev)

    def backward():
        y = tv_roi_align(xg, rois, (7, 7), 0.25, 2, False)
        y.backward(dy)
        xg.grad = None

    bwd = timed(backward, args.runs, sync)
    full = [args.rois] + shape
    # The autograd step runs the forward too: a3d's forward + backward is compared with it.
    for p, ms in (("forward", fwd), ("forward_backward", bwd)):
        print(json.dumps({"op": "roi_align", "pass": p, "device": label, "dtype": "f32",
                          "shape": full, "threads": threads, "median_ms": ms}))


if __name__ == "__main__":
    main()
