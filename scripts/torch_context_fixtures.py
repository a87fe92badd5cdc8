#!/usr/bin/env python3
"""Writes tests/fixtures/context_ops.safetensors: TSM, AlignShift and the symmetric depth
convolution computed by straightforward PyTorch implementations (the reference detector's
formulas, shared/docs/reference-detector.md section 13), forward and autograd backward.

Run by hand when the operators' definitions change (needs torch and safetensors; CI never
runs it):

    python3 scripts/torch_context_fixtures.py

Inputs are float32 values; the PyTorch computations run in float64 on them, so the tests can
hold a3d's f32 results to float64 answers. tests/torch_parity.rs reads the file.
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from torch_context_ops import align_shift, depth_conv, tsm  # noqa: E402

torch.manual_seed(20261201)
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "context_ops.safetensors")


def f32_values(shape):
    """Random float32 values, returned as float64 (exactly the same numbers)."""
    return (torch.rand(shape, dtype=torch.float32) * 2 - 1).double()


tensors = {}
meta = {}


def add(name, **ts):
    for key, t in ts.items():
        tensors[f"{name}.{key}"] = t.contiguous()


# TSM: fold_div 8 and 3 (a fold that does not divide C).
for case, (shape, fold_div) in {"tsm_fd8": ([2, 16, 5, 3, 4], 8), "tsm_fd3": ([1, 7, 4, 5, 3], 3)}.items():
    x = f32_values(shape).requires_grad_()
    dy = f32_values(shape)
    y = tsm(x, fold_div)
    (dx,) = torch.autograd.grad(y, x, dy)
    add(case, x=x.detach().float(), dy=dy.float(), y=y.detach(), dx=dx)
    meta[f"{case}.fold_div"] = str(fold_div)

# AlignShift: thick, thin and reference-spaced samples; both padding modes.
for padding_zero in (False, True):
    case = f"alignshift_pz{int(padding_zero)}"
    shape = [3, 16, 5, 3, 4]
    x = f32_values(shape).requires_grad_()
    dy = f32_values(shape)
    thickness = torch.tensor([5.0, 1.0, 2.5], dtype=torch.float64)
    y = align_shift(x, thickness, 8, 2.0, padding_zero)
    (dx,) = torch.autograd.grad(y, x, dy)
    add(case, x=x.detach().float(), dy=dy.float(), y=y.detach(), dx=dx, thickness=thickness.float())
    meta[f"{case}.fold_div"] = "8"
    meta[f"{case}.ref_thickness"] = "2.0"
    meta[f"{case}.padding_zero"] = str(padding_zero).lower()

# Depth convolution, K = 3 and 5.
for taps in (3, 5):
    case = f"depthconv_k{taps}"
    shape = [2, 6, 7, 4, 5]
    x = f32_values(shape).requires_grad_()
    v = f32_values([taps, 6]).requires_grad_()
    dy = f32_values(shape)
    y = depth_conv(x, v)
    dx, dv = torch.autograd.grad(y, (x, v), dy)
    add(case, x=x.detach().float(), v=v.detach().float(), dy=dy.float(), y=y.detach(), dx=dx, dv=dv)

meta["generator"] = f"scripts/torch_context_fixtures.py, torch {torch.__version__}"
save_file(tensors, OUT, metadata=meta)
print(f"wrote {os.path.normpath(OUT)}: {len(tensors)} tensors")
