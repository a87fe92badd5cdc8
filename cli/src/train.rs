//! `a3d train`: the reference recipe's loop on a DeepLesion-format folder, one image per
//! iteration: the losses of `Detector::losses`, gradient clipping at 35, SGD (momentum 0.9,
//! weight decay 1e-4 on every parameter), linear warm-up then step decay; after every epoch a
//! checkpoint (weights, momentum buffers, schedule position and generator state) and the
//! validation FROC, the best epoch kept as `best.safetensors`; a JSONL log of every iteration and
//! `training.png` (loss and validation FROC).
//! `--resume DIR` continues a run from its last checkpoint exactly (weights, momentum, schedule
//! position, generator). Augmentation as the reference: shift-scale-rotate, then the horizontal
//! flip (`a3d_detector::train::{ShiftScaleRotate, flip_horizontal}`).

use crate::device::ModelDevice;
use a3d::candle::ContextFusion;
use a3d_ct::deeplesion::{DeepLesion, KeySlice, Split, WeightRule};
use a3d_ct::network::{InputConfig, NetworkInput};
use a3d_ct::Limits;
use a3d_detector::froc::{froc, Detection, Lesion};
use a3d_detector::train::{clip_grad_norm, flip_horizontal, LrSchedule, Sgd, ShiftScaleRotate};
use a3d_detector::{Detector, DetectorConfig, Preset};
use candle_core::Device;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A DeepLesion-format root (`Images_png/`, `DL_info.csv`), e.g. from `a3d synth`.
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Model sizes.
    #[arg(long, default_value = "tiny", value_parser = ["reference", "tiny"])]
    pub(crate) preset: String,
    /// Context operator of the dense layers.
    #[arg(long, default_value = "a3d", value_parser = ["a3d", "tsm", "alignshift", "depthconv", "none"])]
    pub(crate) fusion: String,
    /// Slices of the input (odd).
    #[arg(long, default_value_t = 3)]
    pub(crate) slices: usize,
    /// Where checkpoints and the log go (created).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Epochs.
    #[arg(long, default_value_t = 20)]
    pub(crate) epochs: usize,
    /// Base learning rate (the reference: 0.02).
    #[arg(long, default_value_t = 0.02)]
    pub(crate) lr: f64,
    /// Warm-up iterations (the reference: 500).
    #[arg(long, default_value_t = 500)]
    pub(crate) warmup_iters: usize,
    /// Epochs (0-based) at which the rate drops 10x (the reference: 9,16).
    #[arg(long, default_value = "9,16")]
    pub(crate) steps: String,
    /// Seed of the initialisation, the shuffling and the samplers.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Initialise from an ImageNet DenseNet-121 (safetensors, torchvision names).
    #[arg(long)]
    pub(crate) imagenet: Option<PathBuf>,
    /// The keep-ratio resize target of the inputs (the reference: 512; smaller trains faster
    /// on small synthetic slices).
    #[arg(long, default_value_t = 512)]
    pub(crate) input_size: usize,
    /// Probability of the horizontal flip augmentation (the reference: 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) flip: f64,
    /// Probability of the shift-scale-rotate augmentation (the reference: 0.8; 0 turns it off).
    #[arg(long, default_value_t = 0.8)]
    pub(crate) ssr: f64,
    /// Its largest shift, a fraction of the width and height (the reference: 0.04).
    #[arg(long, default_value_t = 0.04)]
    pub(crate) shift: f64,
    /// Its scale range `1 ± scale` (the reference: 0.2).
    #[arg(long, default_value_t = 0.2)]
    pub(crate) scale: f64,
    /// Its largest rotation in degrees (the reference: 15).
    #[arg(long, default_value_t = 15.0)]
    pub(crate) rotate: f64,
    /// Continue the run in this folder (its `state.json` and last checkpoint) up to `--epochs`.
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// Where the model trains.
    #[arg(long, value_enum, default_value_t = ModelDevice::Cpu)]
    pub(crate) device: ModelDevice,
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
    device: &Device,
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
        candle_core::safetensors::load(&opt_path, device).map_err(|e| bad(&opt_path, &e))?;
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

/// Every image's lesions, by key-slice file name.
pub(crate) type LesionsByImage = BTreeMap<String, Vec<Lesion>>;

/// Detections (original pixels) of `model` on `keys`, and their lesions, for the FROC.
pub(crate) fn detect_keys(
    model: &Detector,
    dl: &DeepLesion,
    keys: &[KeySlice],
    depth: usize,
    size: usize,
) -> Result<(LesionsByImage, Vec<Detection>), String> {
    let mut lesions = LesionsByImage::new();
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
    Ok((lesions, dets))
}

/// The validation FROC: (mean sensitivity at 0.5-4 FP per image, sensitivity at 1 and 4).
fn validate(
    model: &Detector,
    dl: &DeepLesion,
    keys: &[KeySlice],
    depth: usize,
    size: usize,
) -> Result<(f64, f64, f64), String> {
    let (lesions, dets) = detect_keys(model, dl, keys, depth, size)?;
    let f = froc(&lesions, &dets);
    Ok((f.mean_first_four(), f.sensitivity[1], f.sensitivity[3]))
}

/// What a finished run reports.
pub(crate) struct TrainSummary {
    /// The checkpoint of the best validation epoch (the last one without a validation split).
    pub best: PathBuf,
    /// Training images per second over the epochs run here.
    pub images_per_s: f64,
}

pub fn run(args: &TrainArgs) -> Result<TrainSummary, String> {
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
    let device = args.device.open()?;
    let (model, map) = match &args.imagenet {
        Some(p) => Detector::init_imagenet(config, p, args.seed, &device),
        None => Detector::init(config, args.seed, &device),
    }
    .map_err(|e| e.to_string())?;
    let (names, vars): (Vec<String>, Vec<_>) = a3d_detector::train::sorted_vars(&map)
        .map_err(|e| e.to_string())?
        .into_iter()
        .unzip();
    let mut opt = Sgd::new(vars);
    let schedule = LrSchedule {
        base: args.lr,
        warmup_iters: args.warmup_iters,
        steps,
        ..LrSchedule::default()
    };
    let ssr = ShiftScaleRotate {
        p: args.ssr,
        shift: args.shift,
        scale: args.scale,
        rotate_deg: args.rotate,
    };
    for (flag, v, ok) in [
        ("--ssr", args.ssr, (0.0..=1.0).contains(&args.ssr)),
        ("--flip", args.flip, (0.0..=1.0).contains(&args.flip)),
        ("--shift", args.shift, (0.0..0.5).contains(&args.shift)),
        ("--scale", args.scale, (0.0..1.0).contains(&args.scale)),
        (
            "--rotate",
            args.rotate,
            (0.0..=180.0).contains(&args.rotate),
        ),
    ] {
        if !ok {
            return Err(format!("{flag} {v}: out of range"));
        }
    }
    let mut rng = a3d::rng::SplitMix64::new(args.seed ^ 0x7a11);
    let mut iter = 0usize;
    let mut best = f64::NEG_INFINITY;
    let mut first_epoch = 0;
    if let Some(dir) = &args.resume {
        let point = resume(dir, args, &map, &names, &mut opt, &device)?;
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
    crate::files::write_atomic(
        &args.out.join("model.json"),
        serde_json::json!({
            "preset": args.preset, "fusion": args.fusion, "slices": args.slices,
            "input_size": args.input_size,
        })
        .to_string()
        .as_bytes(),
    )?;
    let (mut images, mut seconds) = (0usize, 0.0f64);
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
            if let Some(warp) = ssr.draw(&mut rng) {
                warp.apply(&mut input, &mut gts);
            }
            if rng.next_f64() < args.flip {
                flip_horizontal(&mut input, &mut gts);
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
        (images, seconds) = (images + train.len(), seconds + secs);
        let ckpt = args.out.join(format!("epoch_{epoch:02}.safetensors"));
        crate::files::replace_with(&ckpt, |tmp| map.save(tmp))?;
        let momentum: std::collections::HashMap<String, candle_core::Tensor> = names
            .iter()
            .zip(opt.momentum_buffers())
            .filter_map(|(n, b)| b.clone().map(|b| (n.clone(), b)))
            .collect();
        let opt_path = args.out.join(format!("optimizer_{epoch:02}.safetensors"));
        crate::files::replace_with(&opt_path, |tmp| {
            candle_core::safetensors::save(&momentum, tmp)
        })?;
        let (mean, s1, s4) = if val.is_empty() {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            {
                // This epoch's weights and running statistics, recording no autograd graphs.
                let evaluated =
                    Detector::frozen(config, &map, &device).map_err(|e| e.to_string())?;
                validate(&evaluated, &dl, &val, args.slices, args.input_size)?
            }
        };
        if val.is_empty() || mean > best || best == f64::NEG_INFINITY {
            best = mean;
            std::fs::copy(&ckpt, args.out.join("best.safetensors")).map_err(|e| e.to_string())?;
        }
        // The generator's state as a string (JSON numbers lose u64 precision elsewhere).
        let state = serde_json::json!({
            "epoch": epoch, "iter": iter, "rng_state": rng.state().to_string(), "preset": args.preset,
            "fusion": args.fusion, "slices": args.slices, "val_mean_0.5_4": mean,
            "val_sens_1": s1, "val_sens_4": s4, "best": best,
        });
        crate::files::write_atomic(&args.out.join("state.json"), state.to_string().as_bytes())?;
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
        "wrote {} (checkpoints, best.safetensors, log.jsonl, training.png)",
        args.out.display()
    );
    Ok(TrainSummary {
        best: args.out.join("best.safetensors"),
        images_per_s: images as f64 / seconds.max(1e-9),
    })
}
