//! `a3d bench train-step`: one training iteration of the detector as `a3d train` runs it (the
//! reference's losses with target assignment and sampling, backward, clipping at 35, SGD with
//! momentum and weight decay), on the fixture input with one ground-truth box on its blob,
//! medians over `--runs` after one warm-up. `bench/torch_train_step.py` times the same step in
//! PyTorch.

use a3d::candle::ContextFusion;
use a3d_ct::network::NetworkInput;
use a3d_detector::train::{clip_grad_norm, sorted_vars, Sgd};
use a3d_detector::{Detector, DetectorConfig, Preset};
use candle_core::Device;
use std::time::Instant;

/// The default cases: the tiny preset at the demo's size, the reference preset at DeepLesion's.
pub const DEFAULT_CASES: [(Preset, [usize; 3]); 2] = [
    (Preset::Tiny, [3, 128, 128]),
    (Preset::Reference, [3, 512, 512]),
];

/// The ground truth of the fixture input: a box around its blob at (0.6 W, 0.4 H).
pub fn fixture_box(h: usize, w: usize) -> [f32; 4] {
    let (cx, cy) = (0.6 * w as f32, 0.4 * h as f32);
    let (rx, ry) = (0.08 * w as f32, 0.08 * h as f32);
    [cx - rx, cy - ry, cx + rx, cy + ry]
}

pub fn run(
    cases: &[(Preset, [usize; 3])],
    runs: usize,
    json: bool,
    threads: usize,
) -> Result<(), String> {
    if !json {
        crate::say!("detector training step (a3d fusion, f32, {threads} threads)");
        crate::say!(
            "{:<10} {:>16} {:>11} {:>9} {:>10} {:>10} {:>10}",
            "preset",
            "input [D,H,W]",
            "median ms",
            "images/s",
            "forward",
            "backward",
            "clip+SGD"
        );
    }
    for &(preset, [d, h, w]) in cases {
        let config = DetectorConfig::new(preset, d, ContextFusion::A3d);
        let (model, map) = Detector::init(config, 1, &Device::Cpu).map_err(|e| e.to_string())?;
        let data = a3d_detector::testing::fixture_input(d, h, w);
        let input = NetworkInput::unresized(data, d, (h, w), (h, w)).map_err(|e| e.to_string())?;
        let gts = [fixture_box(h, w)];
        let vars = sorted_vars(&map)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let mut opt = Sgd::new(vars);
        let mut rng = a3d::rng::SplitMix64::new(7);
        // Milliseconds of (forward and losses, backward, clipping and SGD).
        let mut step = || -> Result<[f64; 3], String> {
            let t = Instant::now();
            let losses = model
                .losses(&input, &gts, None, &mut rng)
                .map_err(|e| e.to_string())?;
            let forward = t.elapsed().as_secs_f64() * 1e3;
            let mut grads = losses.total.backward().map_err(|e| e.to_string())?;
            let backward = t.elapsed().as_secs_f64() * 1e3 - forward;
            clip_grad_norm(&mut grads, opt.vars(), 35.0).map_err(|e| e.to_string())?;
            // A small rate keeps the weights (and so the work) steady over the runs.
            opt.step(&grads, 1e-4).map_err(|e| e.to_string())?;
            let update = t.elapsed().as_secs_f64() * 1e3 - forward - backward;
            Ok([forward, backward, update])
        };
        step()?;
        let times = (0..runs).map(|_| step()).collect::<Result<Vec<_>, _>>()?;
        let median = |f: &dyn Fn(&[f64; 3]) -> f64| {
            let mut v: Vec<f64> = times.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ms = median(&|t| t.iter().sum());
        let parts = [median(&|t| t[0]), median(&|t| t[1]), median(&|t| t[2])];
        let name = preset.name();
        if json {
            crate::say!(
                "{}",
                serde_json::json!({
                    "op": "train-step", "preset": name, "device": "cpu", "dtype": "f32",
                    "shape": [1, 1, d, h, w], "threads": threads, "median_ms": ms,
                    "images_per_s": 1e3 / ms, "forward_ms": parts[0], "backward_ms": parts[1],
                    "update_ms": parts[2],
                })
            );
        } else {
            crate::say!(
                "{name:<10} {:>16} {ms:>11.1} {:>9.2} {:>10.1} {:>10.1} {:>10.1}",
                format!("[{d},{h},{w}]"),
                1e3 / ms,
                parts[0],
                parts[1],
                parts[2]
            );
        }
    }
    Ok(())
}
