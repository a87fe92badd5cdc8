//! `a3d bench detector`: the reference detector (random weights, evaluation mode) on one
//! `[1, 1, D, H, W]` input: the backbone with its merge alone, then the whole detection (RPN,
//! proposals, RoIAlign, box head, NMS), medians over `--runs`, with the backbone's FLOP rate
//! against the machine's measured peak (an f32 matrix product of 2048^3 through candle, same
//! threads). `bench/torch_detector.py` times the same model in PyTorch.

use a3d::candle::ContextFusion;
use a3d_ct::network::NetworkInput;
use a3d_detector::{Detector, DetectorConfig, Preset};
use candle_core::{Device, Tensor};
use std::time::Instant;

/// The default inputs `[D, H, W]`.
pub const DEFAULT_SHAPES: [[usize; 3]; 2] = [[3, 512, 512], [7, 512, 512]];

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// GFLOP/s of a 2048^3 f32 matrix product (best of 5).
pub fn measured_peak_gflops() -> Result<f64, String> {
    let n = 2048;
    let a =
        Tensor::ones((n, n), candle_core::DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let c = a.matmul(&a).map_err(|e| e.to_string())?;
        best = best.min(t.elapsed().as_secs_f64());
        drop(c);
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

pub fn run(shapes: &[[usize; 3]], runs: usize, json: bool, threads: usize) -> Result<(), String> {
    let peak = measured_peak_gflops()?;
    if !json {
        crate::say!("reference detector, f32, {threads} threads; measured peak (f32 matmul 2048^3) {peak:.0} GFLOP/s");
        crate::say!(
            "{:<10} {:>16} {:>11} {:>10} {:>8}",
            "pass",
            "input [D,H,W]",
            "median ms",
            "GFLOP/s",
            "of peak"
        );
    }
    for &[d, h, w] in shapes {
        let config = DetectorConfig::new(Preset::Reference, d, ContextFusion::A3d);
        let (_, map) = Detector::init(config, 1, &Device::Cpu).map_err(|e| e.to_string())?;
        let model = Detector::frozen(config, &map, &Device::Cpu).map_err(|e| e.to_string())?;
        let data = a3d_detector::testing::fixture_input(d, h, w);
        let input = NetworkInput::unresized(data, d, (h, w), (h, w)).map_err(|e| e.to_string())?;
        let x = model.input_tensor(&input).map_err(|e| e.to_string())?;
        let mut backbone = Vec::new();
        let mut whole = Vec::new();
        // One warm-up of each, then interleaved rounds.
        model.features(&x, None).map_err(|e| e.to_string())?;
        model.detect(&input, None).map_err(|e| e.to_string())?;
        for _ in 0..runs {
            let t = Instant::now();
            model.features(&x, None).map_err(|e| e.to_string())?;
            backbone.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            model.detect(&input, None).map_err(|e| e.to_string())?;
            whole.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let flops = config.backbone_flops(h, w);
        for (pass, ms, f) in [
            ("backbone", median(backbone), Some(flops)),
            ("detect", median(whole), None),
        ] {
            let rate = f.map(|f| f / (ms * 1e-3) / 1e9);
            if json {
                crate::say!(
                    "{}",
                    serde_json::json!({
                        "op": "detector", "pass": pass, "device": "cpu", "dtype": "f32",
                        "shape": [1, 1, d, h, w], "threads": threads, "median_ms": ms,
                        "gflops": f.map(|f| f / 1e9), "gflop_per_s": rate,
                        "peak_gflop_per_s": peak,
                    })
                );
            } else {
                crate::say!(
                    "{pass:<10} {:>16} {ms:>11.1} {:>10} {:>8}",
                    format!("[{d},{h},{w}]"),
                    rate.map_or("".into(), |r| format!("{r:.0}")),
                    rate.map_or("".into(), |r| format!("{:.0}%", 100.0 * r / peak))
                );
            }
        }
    }
    Ok(())
}
