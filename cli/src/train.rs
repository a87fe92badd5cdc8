//! `a3d train`: the reference recipe's loop on a DeepLesion-format folder, one image per
//! iteration: the losses of `Detector::losses`, gradient clipping at 35, SGD (momentum 0.9,
//! weight decay 1e-4 on every parameter), linear warm-up then step decay; after every epoch a
//! checkpoint (weights, momentum buffers, schedule position and generator state) and the
//! validation FROC, the best epoch kept as `best.safetensors`; a JSONL log of every iteration and
//! `training.png` (loss and validation FROC).
//! `--resume DIR` continues a run from its last checkpoint exactly (weights, momentum, schedule
//! position, generator). Augmentation: the horizontal flip (`--flip`); not yet the
//! shift-scale-rotate.

use a3d::candle::ContextFusion;
use a3d_ct::deeplesion::{DeepLesion, KeySlice, Split, WeightRule};
use a3d_ct::network::{InputConfig, NetworkInput};
use a3d_ct::Limits;
use a3d_detector::froc::{froc, Detection, Lesion};
use a3d_detector::train::{clip_grad_norm, LrSchedule, Sgd};
use a3d_detector::{Detector, DetectorConfig, Preset};
use candle_core::Device;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A DeepLesion-format root (`Images_png/`, `DL_info.csv`), e.g. from `a3d synth`.
    #[arg(long)]
    data: PathBuf,
    /// Model sizes.
    #[arg(long, default_value = "tiny", value_parser = ["reference", "tiny"])]
    preset: String,
    /// Context operator of the dense layers.
    #[arg(long, default_value = "a3d", value_parser = ["a3d", "tsm", "alignshift", "depthconv", "none"])]
    fusion: String,
    /// Slices of the input (odd).
    #[arg(long, default_value_t = 3)]
    slices: usize,
    /// Where checkpoints and the log go (created).
    #[arg(long)]
    out: PathBuf,
    /// Epochs.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Base learning rate (the reference: 0.02).
    #[arg(long, default_value_t = 0.02)]
    lr: f64,
    /// Warm-up iterations (the reference: 500).
    #[arg(long, default_value_t = 500)]
    warmup_iters: usize,
    /// Epochs (0-based) at which the rate drops 10x (the reference: 9,16).
    #[arg(long, default_value = "9,16")]
    steps: String,
    /// Seed of the initialisation, the shuffling and the samplers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Initialise from an ImageNet DenseNet-121 (safetensors, torchvision names).
    #[arg(long)]
    imagenet: Option<PathBuf>,
    /// The keep-ratio resize target of the inputs (the reference: 512; smaller trains faster
    /// on small synthetic slices).
    #[arg(long, default_value_t = 512)]
    input_size: usize,
    /// Probability of the horizontal flip augmentation (the reference: 0.5).
    #[arg(long, default_value_t = 0.5)]
    flip: f64,
    /// Continue the run in this folder (its `state.json` and last checkpoint) up to `--epochs`.
    #[arg(long)]
    resume: Option<PathBuf>,
}

/// Where a run resumes: the next epoch, the global iteration, the generator state and the best
/// validation score so far.
struct ResumePoint {
    epoch: usize,
    iter: usize,
    rng: u64,
    best: f64,
}

/// Loads `dir`'s state and last checkpoint into `map` and `opt`.
fn resume(
    dir: &Path,
    args: &TrainArgs,
    map: &candle_nn::VarMap,
    names: &[String],
    opt: &mut Sgd,
) -> Result<ResumePoint, String> {
    let state_path = dir.join("state.json");
    let bad = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let text = std::fs::read_to_string(&state_path).map_err(|e| bad(&state_path, &e))?;
    let state: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&state_path, &e))?;
    let field = |k: &str| {
        state
            .get(k)
            .ok_or_else(|| bad(&state_path, &format!("no `{k}`")))
    };
    for (k, want) in [("preset", &args.preset), ("fusion", &args.fusion)] {
        if field(k)?.as_str() != Some(want.as_str()) {
            return Err(bad(
                &state_path,
                &format!("the run has {k} {}, not {want}", field(k)?),
            ));
        }
    }
    if field("slices")?.as_u64() != Some(args.slices as u64) {
        return Err(bad(
            &state_path,
            &format!(
                "the run has {} slices, not {}",
                field("slices")?,
                args.slices
            ),
        ));
    }
    let num = |k: &str| -> Result<u64, String> {
        field(k)?
            .as_u64()
            .or_else(|| field(k).ok()?.as_str()?.parse().ok())
            .ok_or_else(|| bad(&state_path, &format!("`{k}` is not a number")))
    };
    let epoch = num("epoch")? as usize;
    let ckpt = dir.join(format!("epoch_{epoch:02}.safetensors"));
    let mut map = map.clone();
    map.load(&ckpt).map_err(|e| bad(&ckpt, &e))?;
    let opt_path = dir.join(format!("optimizer_{epoch:02}.safetensors"));
    let buffers =
        candle_core::safetensors::load(&opt_path, &Device::Cpu).map_err(|e| bad(&opt_path, &e))?;
    opt.set_momentum_buffers(names.iter().map(|n| buffers.get(n).cloned()).collect())
        .map_err(|e| bad(&opt_path, &e))?;
    Ok(ResumePoint {
        epoch: epoch + 1,
        iter: num("iter")? as usize,
        rng: num("rng_state")?,
        best: state
            .get("best")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NEG_INFINITY),
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A key slice's network input and ground truth (network pixels).
fn sample_of(
    dl: &DeepLesion,
    key: &KeySlice,
    depth: usize,
    size: usize,
) -> Result<(NetworkInput, Vec<[f32; 4]>), String> {
    let slices = dl
        .load(key, depth, WeightRule::PerNeighbour, &Limits::default())
        .map_err(|e| e.to_string())?;
    let config = InputConfig {
        size,
        ..InputConfig::default()
    };
    let input = NetworkInput::build(&slices, &config, None).map_err(|e| e.to_string())?;
    let gts = key.boxes.iter().map(|b| input.to_network(*b)).collect();
    Ok((input, gts))
}

/// The reference's RandomFlip: the resized image mirrored left-right (padding stays on the
/// right) and boxes `x1' = W - x2 - 1`, `x2' = W - x1 - 1`.
fn flip(input: &mut NetworkInput, gts: &mut [[f32; 4]]) {
    let (w, pw) = (input.width, input.padded_width);
    for row in input.data.chunks_exact_mut(pw) {
        row[..w].reverse();
    }
    for b in gts.iter_mut() {
        let (x1, x2) = (b[0], b[2]);
        b[0] = w as f32 - x2 - 1.0;
        b[2] = w as f32 - x1 - 1.0;
    }
}

/// `training.png` from `log.jsonl`: every iteration's loss and every epoch's validation FROC
/// (at the iteration the epoch ended).
fn plot_log(log: &Path, out: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let (mut losses, mut validation) = (Vec::new(), Vec::new());
    let mut last_iter = 0.0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(i), Some(l)) = (v["iter"].as_f64(), v["loss"].as_f64()) {
            losses.push((i, l));
            last_iter = i;
        } else if let Some(m) = v["val_mean_0.5_4"].as_f64() {
            validation.push((last_iter, m));
        }
    }
    crate::plot::training_png(out, &losses, &validation)
}

/// The validation FROC: (mean sensitivity at 0.5-4 FP per image, sensitivity at 1 and 4).
fn validate(
    model: &Detector,
    dl: &DeepLesion,
    keys: &[KeySlice],
    depth: usize,
    size: usize,
) -> Result<(f64, f64, f64), String> {
    let mut lesions: BTreeMap<String, Vec<Lesion>> = BTreeMap::new();
    let mut dets = Vec::new();
    for key in keys {
        let (input, _) = sample_of(dl, key, depth, size)?;
        let d = model
            .detect(&input, Some(key.spacing[2]))
            .map_err(|e| format!("{}: {e}", key.file_name))?;
        for (b, s) in d.boxes.iter().zip(&d.scores) {
            dets.push(Detection {
                image: key.file_name.clone(),
                bbox: input.to_original(*b),
                score: *s,
            });
        }
        lesions.insert(
            key.file_name.clone(),
            key.boxes
                .iter()
                .map(|b| Lesion {
                    bbox: *b,
                    counted: true,
                })
                .collect(),
        );
    }
    let f = froc(&lesions, &dets);
    Ok((f.mean_first_four(), f.sensitivity[1], f.sensitivity[3]))
}

pub fn run(args: &TrainArgs) -> Result<(), String> {
    if args.slices.is_multiple_of(2) {
        return Err(format!("--slices {}: needs an odd number", args.slices));
    }
    let preset = Preset::from_name(&args.preset).ok_or("--preset: reference or tiny")?;
    let fusion = ContextFusion::from_name(&args.fusion).ok_or("--fusion: unknown operator")?;
    let steps: Vec<usize> = args
        .steps
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("--steps {}: epochs, comma-separated", args.steps))
        })
        .collect::<Result<_, _>>()?;
    let config = DetectorConfig::new(preset, args.slices, fusion);
    let dl = DeepLesion::open(&args.data).map_err(|e| e.to_string())?;
    let train: Vec<KeySlice> = dl.key_slices(Some(Split::Train));
    let val: Vec<KeySlice> = dl.key_slices(Some(Split::Val));
    if train.is_empty() {
        return Err(format!(
            "{}: no training key slices in DL_info.csv",
            args.data.display()
        ));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let device = Device::Cpu;
    let (model, map) = match &args.imagenet {
        Some(p) => Detector::init_imagenet(config, p, args.seed, &device),
        None => Detector::init(config, args.seed, &device),
    }
    .map_err(|e| e.to_string())?;
    let names: Vec<String> = {
        let data = map.data().lock().map_err(|_| "variables poisoned")?;
        let mut n: Vec<String> = data.keys().cloned().collect();
        n.sort();
        n
    };
    let vars = {
        let data = map.data().lock().map_err(|_| "variables poisoned")?;
        names.iter().map(|n| data[n].clone()).collect()
    };
    let mut opt = Sgd::new(vars);
    let schedule = LrSchedule {
        base: args.lr,
        warmup_iters: args.warmup_iters,
        steps,
        ..LrSchedule::default()
    };
    let mut rng = a3d::rng::SplitMix64::new(args.seed ^ 0x7a11);
    let mut iter = 0usize;
    let mut best = f64::NEG_INFINITY;
    let mut first_epoch = 0;
    if let Some(dir) = &args.resume {
        let point = resume(dir, args, &map, &names, &mut opt)?;
        (first_epoch, iter, best) = (point.epoch, point.iter, point.best);
        rng = a3d::rng::SplitMix64::new(point.rng);
        crate::say!(
            "resuming {} at epoch {first_epoch} (iteration {iter})",
            dir.display()
        );
    }
    let log_path = args.out.join("log.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(args.resume.is_some())
        .write(true)
        .truncate(args.resume.is_none())
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let bar =
        indicatif::ProgressBar::new((args.epochs.saturating_sub(first_epoch) * train.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} it, {per_sec}, ETA {eta} {msg}",
        )
        .map_err(|e| e.to_string())?,
    );
    for epoch in first_epoch..args.epochs {
        // A seeded shuffle per epoch.
        let mut order: Vec<usize> = (0..train.len()).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, rng.below(k as u64 + 1) as usize);
        }
        let start = std::time::Instant::now();
        for &i in &order {
            let key = &train[i];
            let (mut input, mut gts) = sample_of(&dl, key, args.slices, args.input_size)?;
            if rng.next_f64() < args.flip {
                flip(&mut input, &mut gts);
            }
            let lr = schedule.rate(epoch, iter);
            let losses = model
                .losses(&input, &gts, Some(key.spacing[2]), &mut rng)
                .map_err(|e| format!("{}: {e}", key.file_name))?;
            let mut grads = losses.total.backward().map_err(|e| e.to_string())?;
            let norm = clip_grad_norm(&mut grads, opt.vars(), 35.0).map_err(|e| e.to_string())?;
            opt.step(&grads, lr).map_err(|e| e.to_string())?;
            let v = |t: &candle_core::Tensor| t.to_scalar::<f32>().unwrap_or(f32::NAN);
            let total = v(&losses.total);
            if !total.is_finite() {
                return Err(format!(
                    "epoch {epoch}, iteration {iter} ({}): the loss is {total}",
                    key.file_name
                ));
            }
            let line = serde_json::json!({
                "epoch": epoch, "iter": iter, "lr": lr, "image": key.file_name,
                "loss": total, "loss_rpn_cls": v(&losses.rpn_cls), "loss_rpn_bbox": v(&losses.rpn_bbox),
                "loss_cls": v(&losses.rcnn_cls), "loss_bbox": v(&losses.rcnn_bbox), "grad_norm": norm,
            });
            writeln!(log, "{line}").map_err(|e| format!("{}: {e}", log_path.display()))?;
            bar.set_message(format!("epoch {epoch} loss {total:.3}"));
            bar.inc(1);
            iter += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let ckpt = args.out.join(format!("epoch_{epoch:02}.safetensors"));
        let tmp = ckpt.with_extension("tmp");
        map.save(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &ckpt).map_err(|e| format!("{}: {e}", ckpt.display()))?;
        let momentum: std::collections::HashMap<String, candle_core::Tensor> = names
            .iter()
            .zip(opt.momentum_buffers())
            .filter_map(|(n, b)| b.clone().map(|b| (n.clone(), b)))
            .collect();
        let opt_path = args.out.join(format!("optimizer_{epoch:02}.safetensors"));
        let tmp = opt_path.with_extension("tmp");
        candle_core::safetensors::save(&momentum, &tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &opt_path).map_err(|e| format!("{}: {e}", opt_path.display()))?;
        let (mean, s1, s4) = if val.is_empty() {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            validate(&model, &dl, &val, args.slices, args.input_size)?
        };
        if mean > best || best == f64::NEG_INFINITY {
            best = mean;
            std::fs::copy(&ckpt, args.out.join("best.safetensors")).map_err(|e| e.to_string())?;
        }
        // The generator's state as a string (JSON numbers lose u64 precision elsewhere).
        let state = serde_json::json!({
            "epoch": epoch, "iter": iter, "rng_state": rng.state().to_string(), "preset": args.preset,
            "fusion": args.fusion, "slices": args.slices, "val_mean_0.5_4": mean,
            "val_sens_1": s1, "val_sens_4": s4, "best": best,
        });
        write_atomic(&args.out.join("state.json"), state.to_string().as_bytes())?;
        writeln!(log, "{}", serde_json::json!({"epoch": epoch, "val_mean_0.5_4": mean, "val_sens_1": s1, "val_sens_4": s4, "images_per_s": train.len() as f64 / secs}))
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        // The loss and validation plot of the whole log so far (a missing font only warns).
        if let Err(e) = plot_log(&log_path, &args.out.join("training.png")) {
            bar.println(format!("training.png not drawn: {e}"));
        }
        bar.println(format!(
            "epoch {epoch}: {:.2} images/s, validation FROC mean(0.5-4) {mean:.4}, sens@1 {s1:.4}, sens@4 {s4:.4}",
            train.len() as f64 / secs
        ));
    }
    bar.finish_and_clear();
    crate::say!(
        "wrote {} (checkpoints, best.safetensors, log.jsonl)",
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_mirrors_the_image_and_the_boxes() {
        // 2 slices of 3 x 5 in a 3 x 8 padded buffer.
        let mut data = vec![0.0f32; 2 * 3 * 8];
        for (i, v) in data.iter_mut().enumerate() {
            if i % 8 < 5 {
                *v = i as f32;
            }
        }
        let mut input = NetworkInput {
            data: data.clone(),
            depth: 2,
            height: 3,
            width: 5,
            padded_height: 3,
            padded_width: 8,
            scale: 1.0,
            original: (3, 5),
        };
        let mut boxes = [[0.0f32, 0.0, 1.0, 2.0]];
        flip(&mut input, &mut boxes);
        assert_eq!(boxes[0], [3.0, 0.0, 4.0, 2.0]);
        assert_eq!(&input.data[..8], &[4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        flip(&mut input, &mut boxes);
        assert_eq!(input.data, data);
        assert_eq!(boxes[0], [0.0, 0.0, 1.0, 2.0]);
    }
}
