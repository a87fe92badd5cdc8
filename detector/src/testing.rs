//! Deterministic models for the PyTorch parity fixtures (`scripts/torch_detector_fixtures.py`
//! runs on the weights `examples/export_fixture_weights.rs` writes; the tests rebuild the same
//! weights from the seed, so the fixtures need not hold them).

use crate::{Detector, DetectorConfig, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;

/// A freshly initialised model whose batch norms carry non-trivial statistics and affines
/// (running mean U(-0.2, 0.2), variance U(0.5, 1.5), weight U(0.8, 1.2), bias U(-0.1, 0.1)) and
/// whose classifiers are scaled up 10x (and the RPN's deltas down 20x), so that scores are
/// spread, rankings are not decided by ties and boxes are not degenerate.
pub fn fixture_model(config: DetectorConfig, seed: u64) -> Result<(Detector, VarMap)> {
    let (_, map) = Detector::init(config, seed, &Device::Cpu)?;
    let mut rng = a3d::rng::SplitMix64::new(seed ^ 0x5eed_f1c7);
    {
        for (name, var) in crate::train::sorted_vars(&map)? {
            let n = var.elem_count();
            let range = if name.ends_with("running_mean") {
                Some((-0.2, 0.2))
            } else if name.ends_with("running_var") {
                Some((0.5, 1.5))
            } else if name.contains("norm") && name.ends_with(".weight") {
                Some((0.8, 1.2))
            } else if name.contains("norm") && name.ends_with(".bias") {
                Some((-0.1, 0.1))
            } else {
                None
            };
            if let Some((lo, hi)) = range {
                let v: Vec<f32> = (0..n).map(|_| rng.uniform(lo, hi) as f32).collect();
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
            } else if name == "rpn_head.rpn_cls.weight" || name == "bbox_head.fc_cls.weight" {
                var.set(&(var.as_tensor() * 10.0)?)?;
            } else if name == "rpn_head.rpn_reg.weight" {
                // Untrained features are large; keep the deltas moderate, as a trained RPN's.
                var.set(&(var.as_tensor() * 0.05)?)?;
            }
        }
    }
    // Rebuild on the final values (the model above captured the first ones).
    let tensors = map
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variables poisoned".into()))?
        .iter()
        .map(|(k, v)| v.as_tensor().copy().map(|t| (k.clone(), t)))
        .collect::<candle_core::Result<std::collections::HashMap<_, _>>>()?;
    let model = Detector::from_tensors(config, tensors, "fixture".as_ref(), &Device::Cpu)?;
    Ok((model, map))
}

/// The fixtures' input: `[D, h, w]` windowed-range values from a fixed formula.
pub fn fixture_input(depth: usize, h: usize, w: usize) -> Vec<f32> {
    (0..depth * h * w)
        .map(|i| {
            let (d, y, x) = (i / (h * w), (i / w) % h, i % w);
            let blob = (-(((x as f32 - 0.6 * w as f32).powi(2)
                + (y as f32 - 0.4 * h as f32).powi(2))
                / (0.02 * (h * w) as f32)))
                .exp();
            120.0 * blob
                + 30.0 * ((0.37 * x as f32 + 0.23 * y as f32 + 1.3 * d as f32).sin())
                + 20.0
        })
        .collect()
}
