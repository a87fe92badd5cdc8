#!/usr/bin/env python3
"""One training iteration of the A3D detector in PyTorch: the peer of `a3d bench train-step`.

    /tmp/torchvenv/bin/python bench/torch_train_step.py [--runs 5] [--threads 2]

The model is bench/torch_detector.py's (the reference names, the same random weights a3d's
`export_fixture_weights` writes), with batch norms in training mode. The step is `a3d train`'s
(reference-detector.md sections 4.3, 5.3 and 7): RPN targets on the anchors inside the image
(MaxIoU 0.7 / 0.3, +1 IoU, every tied best box of a ground truth positive), 32 sampled anchors
at most half positive, sigmoid cross-entropy and smooth L1 (beta 1/9) over the sampled count;
proposals from the detached scores (top 12000, NMS 0.7, 2000 kept; torchvision's NMS), the
ground truth prepended, MaxIoU 0.5, 64 sampled RoIs at most a quarter positive, RoIAlign 7x7
(torchvision's), softmax cross-entropy and smooth L1 (beta 1) on the positives' class-1 deltas
(stds 0.1, 0.1, 0.2, 0.2) over the sampled count; backward, clip_grad_norm_ at 35, and
torch.optim.SGD (momentum 0.9, weight decay 1e-4). Input: the fixture input with one ground
truth around its blob, as a3d's bench. Cases: tiny at [3, 128, 128], reference at [3, 512, 512].
Prints one JSON line per case: the median of --runs iterations after one warm-up.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch_detector as td  # noqa: E402

CASES = [("tiny", (3, 128, 128)), ("reference", (3, 512, 512))]


def bn_train(x, W, prefix):
    W[prefix + "num_batches_tracked"]
    return F.batch_norm(x, W[prefix + "running_mean"], W[prefix + "running_var"],
                        W[prefix + "weight"], W[prefix + "bias"], True, 0.1, 1e-5)


def iou_plus_one(a, b):
    """[N, M] IoU with the +1 pixel convention."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda t: (t[:, 2] - t[:, 0] + 1) * (t[:, 3] - t[:, 1] + 1)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def assign(boxes, gts, pos, neg, min_pos):
    """MaxIoUAssigner: -1 ignore, 0 negative, k + 1 positive for ground truth k."""
    iou = iou_plus_one(boxes, gts)
    best, arg = iou.max(1)
    out = torch.full((len(boxes),), -1, dtype=torch.long)
    out[(best >= 0) & (best < neg)] = 0
    out[best >= pos] = arg[best >= pos] + 1
    gt_best = iou.max(0).values
    for k in range(len(gts)):
        if gt_best[k] >= min_pos:
            out[iou[:, k] == gt_best[k]] = k + 1
    return out


def sample(labels, num, frac, gen):
    pos = torch.nonzero(labels > 0).flatten()
    pos = pos[torch.randperm(len(pos), generator=gen)[: int(num * frac)]]
    neg = torch.nonzero(labels == 0).flatten()
    neg = neg[torch.randperm(len(neg), generator=gen)[: num - len(pos)]]
    return pos, neg


def encode(boxes, gts, stds):
    pw, ph = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    px, py = boxes[:, 0] + 0.5 * (pw - 1), boxes[:, 1] + 0.5 * (ph - 1)
    gw, gh = gts[:, 2] - gts[:, 0] + 1, gts[:, 3] - gts[:, 1] + 1
    gx, gy = gts[:, 0] + 0.5 * (gw - 1), gts[:, 1] + 0.5 * (gh - 1)
    d = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], 1)
    return d / torch.tensor(stds)


def smooth_l1_sum(x, y, beta):
    d = (x - y).abs()
    return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).sum()


def losses(img, gts, W, p, shape, gen):
    from torchvision.ops import nms
    feats = td.backbone(img, W, p, "a3d", None)
    r = "rpn_head."
    x = F.relu(F.conv2d(feats, W[r + "rpn_conv.weight"], W[r + "rpn_conv.bias"], padding=1))
    cls = F.conv2d(x, W[r + "rpn_cls.weight"], W[r + "rpn_cls.bias"]).permute(0, 2, 3, 1).reshape(-1)
    reg = F.conv2d(x, W[r + "rpn_reg.weight"], W[r + "rpn_reg.bias"]).permute(0, 2, 3, 1).reshape(-1, 4)
    anchors = td.grid_anchors(feats.shape[2], feats.shape[3])
    h, w = shape
    inside = torch.nonzero((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0)
                           & (anchors[:, 2] < w) & (anchors[:, 3] < h)).flatten()
    labels = assign(anchors[inside], gts, 0.7, 0.3, 0.3)
    pos, neg = sample(labels, 32, 0.5, gen)
    n_s = max(len(pos), 1) + max(len(neg), 1)
    idx = torch.cat([inside[pos], inside[neg]])
    target = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    rpn_cls = F.binary_cross_entropy_with_logits(cls[idx], target, reduction="sum") / n_s
    rpn_bbox = smooth_l1_sum(reg[inside[pos]], encode(anchors[inside[pos]],
                             gts[labels[pos] - 1], [1.0] * 4), 1 / 9) / n_s
    with torch.no_grad():
        top = torch.argsort(-cls, stable=True)[:12000]
        boxes = td.delta2bbox(anchors[top], reg[top], [0.0] * 4, [1.0] * 4, shape)
        props = boxes[nms(boxes, cls[top].sigmoid(), 0.7)[:2000]]
    cand = torch.cat([gts, props])
    labels = assign(cand, gts, 0.5, 0.5, 0.5)
    pos, neg = sample(labels, 64, 0.25, gen)
    chosen = torch.cat([pos, neg])
    rois = torch.cat([torch.zeros(len(chosen), 1), cand[chosen]], 1)
    y = td.roi_align_fast(feats, rois).flatten(1)
    hd = "bbox_head."
    y = F.relu(F.linear(y, W[hd + "shared_fcs.0.weight"], W[hd + "shared_fcs.0.bias"]))
    y = F.relu(F.linear(y, W[hd + "shared_fcs.1.weight"], W[hd + "shared_fcs.1.bias"]))
    logits = F.linear(y, W[hd + "fc_cls.weight"], W[hd + "fc_cls.bias"])
    deltas = F.linear(y, W[hd + "fc_reg.weight"], W[hd + "fc_reg.bias"])
    n_rois = max(len(chosen), 1)
    target = torch.cat([torch.ones(len(pos), dtype=torch.long), torch.zeros(len(neg), dtype=torch.long)])
    rcnn_cls = F.cross_entropy(logits, target, reduction="sum") / n_rois
    rcnn_bbox = smooth_l1_sum(deltas[: len(pos), 4:8], encode(cand[pos], gts[labels[pos] - 1],
                              [0.1, 0.1, 0.2, 0.2]), 1.0) / n_rois
    return rpn_cls + rpn_bbox + rcnn_cls + rcnn_bbox


def main():
    from safetensors.torch import load_file
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    td.bn = bn_train  # td.backbone looks `bn` up in its module
    for preset, (d, h, w) in CASES:
        path = f"/tmp/a3d-train-step-{preset}-d{d}.safetensors"
        td.export_weights(preset, d, "a3d", 1, path)
        sd = load_file(path)
        os.remove(path)
        params = [t.requires_grad_(True) for n, t in sd.items()
                  if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        W = td.Weights(sd)
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
        img = td.fixture_input(d, h, w).view(1, 1, d, h, w)
        cx, cy, rx, ry = 0.6 * w, 0.4 * h, 0.08 * w, 0.08 * h
        gts = torch.tensor([[cx - rx, cy - ry, cx + rx, cy + ry]])
        gen = torch.Generator().manual_seed(7)
        times = []
        for i in range(args.runs + 1):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = losses(img, gts, W, td.PRESETS[preset], (h, w), gen)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 35.0)
            opt.step()
            if i > 0:
                times.append((time.perf_counter() - t) * 1e3)
        ms = sorted(times)[len(times) // 2]
        print(json.dumps({"op": "train-step", "preset": preset, "peer": "pytorch", "dtype": "f32",
                          "shape": [1, 1, d, h, w], "threads": args.threads, "median_ms": ms,
                          "images_per_s": 1e3 / ms, "loss": float(loss)}))


if __name__ == "__main__":
    main()
