#!/usr/bin/env python3
"""The A3D detector in PyTorch, straight from reference-detector.md (sections 2, 4, 5 and 8),
as functions of a state dict with the reference names; the peer of `a3d bench detector`, and the
model behind scripts/torch_detector_fixtures.py.

    /tmp/torchvenv/bin/python bench/torch_detector.py [--runs 5] [--threads 2]

Times, on the same random reference weights a3d uses (exported by a3d's
`export_fixture_weights` example; eager f32, evaluation mode), the backbone with its merge and
the whole detection (torchvision's `roi_align` and `nms` for speed there), on [1, 1, D, 512, 512]
for D = 3 and 7, medians of interleaved rounds, and the peak RSS.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, HERE)
from torch_context_ops import align_shift, depth_conv, tsm  # noqa: E402
from torch_detection import greedy_nms_inclusive, mmdet_roi_align  # noqa: E402

PRESETS = {
    "reference": dict(init=64, growth=32, bn_size=4, blocks=(6, 12, 24), fpn=512, fc=2048),
    "tiny": dict(init=16, growth=8, bn_size=2, blocks=(2, 2, 2), fpn=32, fc=64),
}


class Weights:
    """The state dict, with every access recorded so that unused tensors are caught."""

    def __init__(self, sd):
        self.sd, self.used = sd, set()

    def __getitem__(self, name):
        self.used.add(name)
        return self.sd[name]

    def unused(self):
        return sorted(set(self.sd) - self.used)


def fixture_input(d, h, w):
    """The same formula as a3d_detector::testing::fixture_input, in float32 arithmetic."""
    z, y, x = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    x, y, z = x.float(), y.float(), z.float()
    blob = torch.exp(-((x - 0.6 * w) ** 2 + (y - 0.4 * h) ** 2) / (0.02 * (h * w)))
    return 120.0 * blob + 30.0 * torch.sin(0.37 * x + 0.23 * y + 1.3 * z) + 20.0


def context(x, W, prefix, fusion, thickness):
    if fusion == "a3d":
        return torch.einsum("bcdhw,dkc->bckhw", x, W[prefix + "adaptive_align_weights"])
    if fusion == "tsm":
        return tsm(x, 8)
    if fusion == "alignshift":
        return align_shift(x, torch.tensor([thickness]), 8, 2.0, False)
    if fusion == "depthconv":
        return depth_conv(x, W[prefix + "depth_conv_weights"])
    return x


def conv(x, W, prefix, stride, pad, fusion="none", thickness=None):
    """A3DConv: the context operator, then the 2D kernel as a [1, k, k] Conv3d."""
    x = context(x, W, prefix, fusion, thickness)
    return F.conv3d(x, W[prefix + "weight"].unsqueeze(2), None, (1, stride, stride), (0, pad, pad))


def bn(x, W, prefix):
    W[prefix + "num_batches_tracked"]
    return F.batch_norm(x, W[prefix + "running_mean"], W[prefix + "running_var"],
                        W[prefix + "weight"], W[prefix + "bias"], False, 0.1, 1e-5)


def backbone(x, W, p, fusion, thickness):
    b = "backbone."
    x = conv(x, W, b + "conv0.", 2, 3)
    x = F.relu(bn(x, W, b + "norm0."))
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    reduced = []
    for i, n in enumerate(p["blocks"]):
        for l in range(n):
            q = f"{b}denseblock{i + 1}.denselayer{l + 1}."
            y = conv(F.relu(bn(x, W, q + "norm1.")), W, q + "conv1.", 1, 0, fusion, thickness)
            y = conv(F.relu(bn(y, W, q + "norm2.")), W, q + "conv2.", 1, 1, fusion, thickness)
            x = torch.cat([x, y], 1)
        r = F.conv3d(x, W[f"{b}reductionz{i + 1}.reduction_z_conv.weight"])
        reduced.append(r.squeeze(2))
        if i < 2:
            q = f"{b}transition{i + 1}."
            x = conv(F.relu(bn(x, W, q + "norm.")), W, q + "conv.", 1, 0)
            x = F.avg_pool3d(x, (1, 2, 2))
    lat = lambda k, t: F.conv2d(t, W[f"{b}lateral{k}.weight"], W[f"{b}lateral{k}.bias"])
    top = lat(4, reduced[2])
    top = F.interpolate(top, scale_factor=2, mode="nearest") + lat(3, reduced[1])
    top = F.interpolate(top, scale_factor=2, mode="nearest") + lat(2, reduced[0])
    return top


def base_anchors():
    out = []
    for r in (0.5, 1.0, 2.0):
        hr = math.sqrt(r)
        wr = 1 / hr
        for s in (4, 6, 8, 12, 24, 48):
            ws, hs = torch.tensor(4 * wr * s, dtype=torch.float32), torch.tensor(4 * hr * s, dtype=torch.float32)
            out.append(torch.round(torch.stack([-0.5 * (ws - 1), -0.5 * (hs - 1), 0.5 * (ws - 1), 0.5 * (hs - 1)])))
    return torch.stack(out)


def grid_anchors(fh, fw):
    base = base_anchors()
    ys, xs = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float() * 4
    return (shifts + base.view(1, -1, 4)).reshape(-1, 4)


def delta2bbox(rois, deltas, means, stds, shape):
    d = deltas * torch.tensor(stds) + torch.tensor(means)
    m = abs(math.log(16 / 1000))
    dw, dh = d[:, 2].clamp(-m, m), d[:, 3].clamp(-m, m)
    px, py = (rois[:, 0] + rois[:, 2]) * 0.5, (rois[:, 1] + rois[:, 3]) * 0.5
    pw, ph = rois[:, 2] - rois[:, 0] + 1.0, rois[:, 3] - rois[:, 1] + 1.0
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
    h, w = shape
    x1 = (gx - gw * 0.5 + 0.5).clamp(0, w - 1)
    y1 = (gy - gh * 0.5 + 0.5).clamp(0, h - 1)
    x2 = (gx + gw * 0.5 - 0.5).clamp(0, w - 1)
    y2 = (gy + gh * 0.5 - 0.5).clamp(0, h - 1)
    return torch.stack([x1, y1, x2, y2], -1)


def detect(img, W, p, fusion, thickness, shape, fast=False):
    feats = backbone(img, W, p, fusion, thickness)
    r = "rpn_head."
    x = F.relu(F.conv2d(feats, W[r + "rpn_conv.weight"], W[r + "rpn_conv.bias"], padding=1))
    cls = F.conv2d(x, W[r + "rpn_cls.weight"], W[r + "rpn_cls.bias"]).permute(0, 2, 3, 1).reshape(-1)
    reg = F.conv2d(x, W[r + "rpn_reg.weight"], W[r + "rpn_reg.bias"]).permute(0, 2, 3, 1).reshape(-1, 4)
    anchors = grid_anchors(feats.shape[2], feats.shape[3])
    scores = cls.sigmoid()
    # A stable descending order (ties: lower index first), then the top 6000.
    order = sorted(range(len(scores)), key=lambda i: (-float(cls[i]), i))[:6000]
    order = torch.tensor(order)
    boxes = delta2bbox(anchors[order], reg[order], [0.0] * 4, [1.0] * 4, shape)
    s = scores[order]
    keep = (nms_fast(boxes, s, 0.7) if fast else greedy_nms_inclusive(boxes, s, 0.7))[:300]
    props, pscores = boxes[keep], s[keep]
    rois = torch.cat([torch.zeros(len(props), 1), props], 1)
    if fast:
        pooled = roi_align_fast(feats, rois)
    else:
        pooled = mmdet_roi_align(feats, rois, (7, 7), 0.25, 2)
    h = "bbox_head."
    y = pooled.flatten(1)
    y = F.relu(F.linear(y, W[h + "shared_fcs.0.weight"], W[h + "shared_fcs.0.bias"]))
    y = F.relu(F.linear(y, W[h + "shared_fcs.1.weight"], W[h + "shared_fcs.1.bias"]))
    logits = F.linear(y, W[h + "fc_cls.weight"], W[h + "fc_cls.bias"])
    deltas = F.linear(y, W[h + "fc_reg.weight"], W[h + "fc_reg.bias"])
    probs = logits.softmax(1)[:, 1]
    dboxes = delta2bbox(props, deltas[:, 4:8], [0.0] * 4, [0.1, 0.1, 0.2, 0.2], shape)
    sel = probs > 5e-5
    dboxes, probs = dboxes[sel], probs[sel]
    keep = (nms_fast(dboxes, probs, 0.5) if fast else greedy_nms_inclusive(dboxes, probs, 0.5))[:50]
    return feats, torch.cat([props, pscores[:, None]], 1), torch.cat([dboxes[keep], probs[keep, None]], 1)



def nms_fast(boxes, scores, thr):
    """torchvision's NMS (continuous areas; the speed peer only)."""
    from torchvision.ops import nms
    return nms(boxes, scores, thr)


def roi_align_fast(feats, rois):
    """torchvision's RoIAlign with the +1 end folded into the boxes (the speed peer only)."""
    from torchvision.ops import roi_align
    r = rois.clone()
    r[:, 3:] += 1
    return roi_align(feats, r, (7, 7), 0.25, 2, aligned=False)


def export_weights(preset, d, fusion, seed, path):
    exporter = os.path.join(ROOT, "target", "release", "examples", "export_fixture_weights")
    if not os.path.exists(exporter):
        subprocess.run(["cargo", "build", "--release", "-p", "a3d-detector", "--example",
                        "export_fixture_weights"], check=True, cwd=ROOT)
    subprocess.run([exporter, preset, str(d), fusion, str(seed), path], check=True,
                   stdout=subprocess.DEVNULL)


def main():
    from safetensors.torch import load_file
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for d in (3, 7):
        path = f"/tmp/a3d-bench-reference-d{d}.safetensors"
        export_weights("reference", d, "a3d", 1, path)
        W = Weights(load_file(path))
        os.remove(path)
        img = fixture_input(d, 512, 512).view(1, 1, d, 512, 512)
        p = PRESETS["reference"]
        with torch.no_grad():
            backbone(img, W, p, "a3d", None)
            detect(img, W, p, "a3d", None, (512, 512), fast=True)
            tb, td = [], []
            for _ in range(args.runs):
                t = time.perf_counter()
                backbone(img, W, p, "a3d", None)
                tb.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                detect(img, W, p, "a3d", None, (512, 512), fast=True)
                td.append((time.perf_counter() - t) * 1e3)
        for name, ts in (("backbone", tb), ("detect", td)):
            print(json.dumps({"op": "detector", "pass": name, "peer": "pytorch", "dtype": "f32",
                              "shape": [1, 1, d, 512, 512], "threads": args.threads,
                              "median_ms": sorted(ts)[len(ts) // 2],
                              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
