#!/usr/bin/env python3
"""Converts a PyTorch checkpoint to safetensors for a3d, run by hand:

    python3 scripts/convert_checkpoint.py IN.pth OUT.safetensors

IN is an mmdetection checkpoint (a dict with `state_dict` and `meta`, as the reference
detector writes them: `backbone.*`, `rpn_head.*`, `bbox_head.*`, `mask_head.*`), a bare state
dict, or torchvision's ImageNet DenseNet-121 (`features.*`, old `norm.1` spellings kept as they
are: a3d renames them when it initialises a model, `Detector::init_imagenet`). A `module.`
prefix (DataParallel) is removed. Floating tensors become float32, integer ones (the batch
norms' `num_batches_tracked`) stay int64; the checkpoint's `meta` is kept as JSON in the
safetensors metadata. The output is written beside its name and renamed into place.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    meta = {}
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        if "meta" in ckpt:
            meta["meta"] = json.dumps(ckpt["meta"], default=str)
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict):
        sys.exit(f"{src}: not a state dict or an mmdetection checkpoint")
    out = {}
    for name, t in ckpt.items():
        if not torch.is_tensor(t):
            continue
        name = name[len("module."):] if name.startswith("module.") else name
        t = t.detach().contiguous()
        out[name] = t.float() if t.is_floating_point() else t.long()
    tmp = dst + ".tmp"
    save_file(out, tmp, metadata=meta or None)
    os.replace(tmp, dst)
    print(f"wrote {dst}: {len(out)} tensors")


if __name__ == "__main__":
    main()
