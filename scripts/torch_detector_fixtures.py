#!/usr/bin/env python3
"""The A3D detector in PyTorch (bench/torch_detector.py, written from reference-detector.md),
run on the weights a3d generates, to write parity fixtures for
`detector/tests/parity.rs`. Run by hand, never by CI:

    /tmp/torchvenv/bin/python scripts/torch_detector_fixtures.py

For each case it asks a3d for the weights (`export_fixture_weights`, a deterministic seeded
model: the tests rebuild the same weights, so the fixture does not carry them), loads them
strictly (every tensor used, every name matched), and stores the input, the stride-4 feature
map, the RPN proposals and the final detections in detector/tests/fixtures/<case>.safetensors.
"""
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "bench"))
from torch_detector import PRESETS, Weights, detect, export_weights, fixture_input  # noqa: E402

OUT = os.path.join(ROOT, "detector", "tests", "fixtures")
# (name, preset, depth, fusion, seed, height, width, thickness mm)
CASES = [
    ("tiny_a3d_d3", "tiny", 3, "a3d", 1, 64, 96, 5.0),
    ("tiny_a3d_d7", "tiny", 7, "a3d", 2, 64, 64, 5.0),
    ("tiny_tsm_d3", "tiny", 3, "tsm", 3, 64, 64, 5.0),
    ("tiny_alignshift_d3", "tiny", 3, "alignshift", 4, 64, 64, 5.0),
    ("reference_a3d_d3", "reference", 3, "a3d", 5, 64, 64, 5.0),
    ("reference_a3d_d7", "reference", 7, "a3d", 6, 64, 64, 5.0),
    ("reference_tsm_d3", "reference", 3, "tsm", 7, 64, 64, 5.0),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    subprocess.run(["cargo", "build", "--release", "-p", "a3d-detector", "--example",
                    "export_fixture_weights"], check=True, cwd=ROOT)
    for name, preset, d, fusion, seed, hh, ww, thickness in CASES:
        wpath = f"/tmp/a3d-fixture-{name}.safetensors"
        export_weights(preset, d, fusion, seed, wpath)
        W = Weights(load_file(wpath))
        img = fixture_input(d, hh, ww).view(1, 1, d, hh, ww)
        # The resized image is 3 rows and 5 columns smaller than the padded input.
        shape = (hh - 3, ww - 5)
        with torch.no_grad():
            feats, props, dets = detect(img, W, PRESETS[preset], fusion, thickness, shape)
        assert not W.unused(), (name, W.unused()[:5])
        save_file({"input": img.contiguous(), "features": feats.contiguous(),
                   "proposals": props.contiguous(), "detections": dets.contiguous()},
                  os.path.join(OUT, name + ".safetensors"),
                  metadata={"preset": preset, "depth": str(d), "fusion": fusion, "seed": str(seed),
                            "height": str(hh - 3), "width": str(ww - 5), "thickness": str(thickness)})
        os.remove(wpath)
        print(name, "features", tuple(feats.shape), "proposals", len(props), "detections", len(dets),
              "top score", float(dets[0, 4]) if len(dets) else None)


if __name__ == "__main__":
    main()
