#!/usr/bin/env python3
"""Writes tests/fixtures/detection.safetensors: RoIAlign (torchvision's `roi_align` with
aligned=True, and a straightforward PyTorch implementation of the reference detector's
mmdetection 1.0 rules), forward and autograd backward; NMS (torchvision's `nms`, and the
reference's +1-area greedy NMS); the IoU matrix (torchvision's `box_iou`).

Run by hand when the ops' definitions change (needs torch, torchvision and safetensors; CI
never runs it):

    python3 scripts/torch_detection_fixtures.py

Inputs are float32 values; the RoIAlign references run in float64 on them. tests/
detection_parity.rs reads the file.
"""
import os
import sys

import torch
from safetensors.torch import save_file
from torchvision.ops import box_iou, nms, roi_align

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from torch_detection import greedy_nms_inclusive, mmdet_roi_align  # noqa: E402

torch.manual_seed(20261201)
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "detection.safetensors")

tensors, meta = {}, {}


def f32(shape, lo=-1.0, hi=1.0):
    return (torch.rand(shape, dtype=torch.float32) * (hi - lo) + lo).double()


def boxes(n, field=60.0):
    c = f32((n, 2), 0.0, field)
    wh = f32((n, 2), 1.0, 25.0)
    return torch.cat([c - wh / 2, c + wh / 2], dim=1).float()


# RoIAlign: 2 images, odd sizes; RoIs inside, across the edges, outside, inverted, tiny.
features = f32((2, 3, 11, 13))
rois = torch.tensor([
    [0, 0.0, 0.0, 51.0, 43.0],
    [1, 6.5, 3.25, 30.0, 22.75],
    [1, -14.0, -9.0, 10.0, 6.0],
    [0, 40.0, 30.0, 70.0, 60.0],
    [0, 90.0, 90.0, 120.0, 110.0],
    [1, 25.0, 20.0, 23.5, 19.0],
    [0, 12.0, 12.0, 12.0, 12.0],
], dtype=torch.float64)
tensors["roi.features"] = features.float()
tensors["roi.rois"] = rois.float()
for name, pooled, scale, sampling in (("s2", (3, 4), 0.25, 2), ("adaptive", (2, 3), 0.5, 0)):
    dy = f32((len(rois), 3) + pooled)
    tensors[f"roi.{name}.dy"] = dy.float()
    meta[f"roi.{name}.pooled"] = f"{pooled[0]},{pooled[1]}"
    meta[f"roi.{name}.scale"] = repr(scale)
    meta[f"roi.{name}.sampling"] = str(sampling)
    x = features.clone().requires_grad_(True)
    y = roi_align(x, rois, pooled, scale, sampling, aligned=True)
    y.backward(dy)
    tensors[f"roi.{name}.torchvision_y"] = y.detach()
    tensors[f"roi.{name}.torchvision_dx"] = x.grad.detach()
    x = features.clone().requires_grad_(True)
    y = mmdet_roi_align(x, rois, pooled, scale, sampling)
    y.backward(dy)
    tensors[f"roi.{name}.mmdet_y"] = y.detach()
    tensors[f"roi.{name}.mmdet_dx"] = x.grad.detach()

# NMS and IoU on clustered boxes (many overlaps).
b = boxes(300)
s = torch.rand(300, dtype=torch.float32)
tensors["nms.boxes"] = b
tensors["nms.scores"] = s
tensors["nms.torchvision_keep_0.5"] = nms(b, s, 0.5)
tensors["nms.reference_keep_0.7"] = greedy_nms_inclusive(b, s, 0.7)
tensors["iou.a"] = b[:20]
tensors["iou.b"] = b[20:50]
tensors["iou.torchvision"] = box_iou(b[:20].double(), b[20:50].double())

save_file({k: v.contiguous().clone() for k, v in tensors.items()}, OUT, metadata=meta)
print(f"wrote {OUT}: {len(tensors)} tensors")
