//! `a3d demo`: 3D context at work in minutes on a CPU. It synthesises a small DeepLesion-format
//! dataset whose lesions need 3D context (`a3d synth`), trains the `tiny` detector with the
//! reference recipe (`a3d train`), detects on the held-out test split, prints its FROC table and
//! writes the overlays, the FROC plot and the training plot. `--compare` trains every context
//! operator the same way and prints one table, as the A3D paper compares them.

use a3d::candle::ContextFusion;
use a3d_ct::deeplesion::{read_dl_info, DeepLesion, Split, WeightRule};
use a3d_ct::Limits;
use a3d_detector::froc::{Detection, Froc, FP_RATES};
use a3d_detector::{Detector, DetectorConfig, Preset};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// Every run of `--compare`: the 2D baseline, then every operator in the paper's order.
const ALL_FUSIONS: [&str; 6] = ["2d", "none", "tsm", "depthconv", "alignshift", "a3d"];

/// The baseline without any 3D context: the key slice alone (D = 1, no fusion). `none` still
/// sees `--slices` slices and mixes them in the reduction-z convolutions after each block.
const TWO_D: &str = "2d";

/// The operator and slices of a demo run: `2d` is `none` on the key slice alone.
fn operator_and_slices(run: &str, slices: usize) -> (&str, usize) {
    if run == TWO_D {
        ("none", 1)
    } else {
        (run, slices)
    }
}

/// The marker that says a folder is a demo's own (so a rerun may replace what is in it).
const MARKER: &str = "demo.json";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The folder everything goes into (created; an existing one must be an earlier demo's).
    #[arg(long, default_value = "a3d-demo")]
    out: PathBuf,
    /// Train every context operator (none, tsm, depthconv, alignshift, a3d) and the 2D baseline
    /// (`2d`: the key slice alone) and compare them.
    #[arg(long, conflicts_with = "fusion")]
    compare: bool,
    /// The operators to train, comma-separated (default: 2d,a3d); `2d` is the baseline without
    /// 3D context (no fusion, the key slice alone).
    #[arg(long)]
    fusion: Option<String>,
    /// Synthetic scans (split 70 / 15 / 15 % into train, val, test).
    #[arg(long, default_value_t = 120)]
    scans: usize,
    /// Pixels per side of the synthetic slices (also the network's input size).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Training epochs (the rate drops 10x after 2/3 and 9/10 of them).
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Slices of the input (odd).
    #[arg(long, default_value_t = 3)]
    slices: usize,
    /// Base learning rate. The reference's 0.02 is for its multi-image batches: with one image
    /// per iteration on the demo's set it made training chaotic (whether A3D learned depended on
    /// float rounding; bench/RESULTS.md), 0.005 learned within 4 epochs.
    #[arg(long, default_value_t = 0.005)]
    lr: f64,
    /// Seed of the data, the initialisation and the training.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability of the reference's shift-scale-rotate augmentation (0.8 in the reference
    /// recipe; off by default here: on the demo's small set it slows learning, see
    /// bench/RESULTS.md). The horizontal flip (p 0.5) is always on.
    #[arg(long, default_value_t = 0.0)]
    ssr: f64,
    /// Test-split overlays: draw detections scoring at least this.
    #[arg(long, default_value_t = 0.5)]
    overlay_score: f32,
}

/// One trained operator's result on the test split.
struct Outcome {
    fusion: String,
    froc: Froc,
    images_per_s: f64,
    train_s: f64,
}

/// Refuses to write into a folder that holds anything but an earlier demo.
fn prepare_out(out: &Path) -> Result<(), String> {
    let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", out.display());
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(|e| bad(&e))?;
        if entries.next().is_some() && !out.join(MARKER).is_file() {
            return Err(bad(
                &"exists and is not an earlier demo's folder (no demo.json): choose another --out",
            ));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| bad(&e))
}

fn parse_fusions(args: &DemoArgs) -> Result<Vec<String>, String> {
    let list: Vec<String> = match (&args.fusion, args.compare) {
        (_, true) => ALL_FUSIONS.iter().map(|s| s.to_string()).collect(),
        (Some(f), false) => f.split(',').map(|s| s.trim().to_string()).collect(),
        (None, false) => vec![TWO_D.to_string(), "a3d".to_string()],
    };
    for f in &list {
        if f != TWO_D && ContextFusion::from_name(f).is_none() {
            return Err(format!("--fusion {f}: one of {}", ALL_FUSIONS.join(", ")));
        }
    }
    Ok(list)
}

/// The detections as `a3d detect` writes them (so `a3d eval` reads them too).
fn detections_json(
    path: &Path,
    fusion: &str,
    weights: &Path,
    images: &[String],
    dets: &[Detection],
) -> Result<(), String> {
    let slices: Vec<serde_json::Value> = images
        .iter()
        .map(|name| {
            let boxes: Vec<serde_json::Value> = dets
                .iter()
                .filter(|d| &d.image == name)
                .map(|d| serde_json::json!({"box": d.bbox, "score": d.score}))
                .collect();
            serde_json::json!({"name": name, "boxes": boxes})
        })
        .collect();
    let doc = serde_json::json!({
        "model": {"preset": "tiny", "fusion": fusion, "weights": weights.display().to_string()},
        "box_convention": "[x1, y1, x2, y2] in original pixels, 0-based, inclusive corners",
        "slices": slices,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    crate::files::write_atomic(path, text.as_bytes())
}

/// Trains one operator, then detects, evaluates and draws on the test split.
fn run_one(args: &DemoArgs, data: &Path, run: &str) -> Result<Outcome, String> {
    let dir = args.out.join(run);
    let (fusion, slices) = operator_and_slices(run, args.slices);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let steps = format!("{},{}", args.epochs * 2 / 3, args.epochs * 9 / 10);
    crate::say!(
        "== training the tiny {run} detector ({} epochs, {slices} slice(s))",
        args.epochs
    );
    let start = std::time::Instant::now();
    let summary = crate::train::run(&crate::train::TrainArgs {
        data: data.to_path_buf(),
        preset: "tiny".into(),
        fusion: fusion.into(),
        slices,
        out: dir.clone(),
        epochs: args.epochs,
        lr: args.lr,
        warmup_iters: 100,
        steps,
        seed: args.seed,
        imagenet: None,
        input_size: args.size,
        flip: 0.5,
        ssr: args.ssr,
        shift: 0.04,
        scale: 0.2,
        rotate: 15.0,
        resume: None,
        device: crate::device::ModelDevice::Cpu,
    })?;
    let train_s = start.elapsed().as_secs_f64();

    let op = ContextFusion::from_name(fusion).ok_or("unknown operator")?;
    let config = DetectorConfig::new(Preset::Tiny, slices, op);
    let model = Detector::load(config, &summary.best, &Device::Cpu).map_err(|e| e.to_string())?;
    let dl = DeepLesion::open(data).map_err(|e| e.to_string())?;
    let keys = dl.key_slices(Some(Split::Test));
    let (_, dets) = crate::train::detect_keys(&model, &dl, &keys, slices, args.size)?;
    let images: Vec<String> = keys.iter().map(|k| k.file_name.clone()).collect();
    let det_path = dir.join("test_detections.json");
    detections_json(&det_path, run, &summary.best, &images, &dets)?;

    let rows: Vec<_> = read_dl_info(&data.join("DL_info.csv"))
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|l| l.split == Split::Test && !l.noisy)
        .collect();
    crate::say!("== {run}: FROC on the held-out test split");
    let curves = crate::eval::report(&rows, &dets, "test", false);
    let refs: Vec<(&str, &Froc)> = curves.iter().map(|(n, f)| (n.as_str(), f)).collect();
    if let Err(e) = crate::plot::froc_png(
        &dir.join("froc.png"),
        &format!("tiny {run} detector, test split"),
        &refs,
    ) {
        crate::say!("froc.png not drawn: {e}");
    }

    let overlays = dir.join("overlays");
    std::fs::create_dir_all(&overlays).map_err(|e| format!("{}: {e}", overlays.display()))?;
    for key in &keys {
        let ms = dl
            .load(
                key,
                args.slices,
                WeightRule::PerNeighbour,
                &Limits::default(),
            )
            .map_err(|e| e.to_string())?;
        let mut boxes: Vec<([f32; 4], [u8; 3])> = key
            .boxes
            .iter()
            .map(|b| (*b, crate::overlay::LESION))
            .collect();
        boxes.extend(
            dets.iter()
                .filter(|d| d.image == key.file_name && d.score >= args.overlay_score)
                .map(|d| (d.bbox, crate::overlay::DETECTION)),
        );
        crate::overlay::overlay_png(&overlays.join(&key.file_name), &ms, &boxes)?;
    }
    let froc = curves
        .into_iter()
        .next()
        .map(|(_, f)| f)
        .ok_or("no lesions in the test split")?;
    Ok(Outcome {
        fusion: run.to_string(),
        froc,
        images_per_s: summary.images_per_s,
        train_s,
    })
}

pub fn run(args: &DemoArgs) -> Result<(), String> {
    if args.slices.is_multiple_of(2) {
        return Err(format!("--slices {}: needs an odd number", args.slices));
    }
    if args.scans < 7 {
        return Err(format!(
            "--scans {}: at least 7 (so that every split has a scan)",
            args.scans
        ));
    }
    if args.epochs == 0 {
        return Err("--epochs 0: at least 1".into());
    }
    let fusions = parse_fusions(args)?;
    prepare_out(&args.out)?;
    let started = std::time::Instant::now();
    let data = args.out.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    }
    let config = a3d_ct::synth::SynthConfig {
        seed: args.seed,
        scans: args.scans,
        size: args.size,
        ..a3d_ct::synth::SynthConfig::default()
    };
    let s = a3d_ct::synth::synthesize(&data, &config).map_err(|e| e.to_string())?;
    crate::say!(
        "== synthesised {}: {} scans (train/val/test {:?}), {} lesions among vessel-like distractors",
        data.display(),
        s.scans.iter().sum::<usize>(),
        s.scans,
        s.lesions.iter().sum::<usize>()
    );
    let mut outcomes = Vec::new();
    for f in &fusions {
        outcomes.push(run_one(args, &data, f)?);
    }

    crate::say!(
        "\n== test-split FROC (sensitivity at FP per image), tiny detector, D = {} (2d: 1), {} epochs",
        args.slices,
        args.epochs
    );
    crate::say!(
        "{:<11} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>9} {:>8}",
        "fusion",
        "0.5",
        "1",
        "2",
        "4",
        "8",
        "16",
        "mean 0.5-4",
        "images/s",
        "train s"
    );
    for o in &outcomes {
        let s = o.froc.sensitivity;
        crate::say!(
            "{:<11} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>10.3} {:>9.1} {:>8.0}",
            o.fusion,
            s[0],
            s[1],
            s[2],
            s[3],
            s[4],
            s[5],
            o.froc.mean_first_four(),
            o.images_per_s,
            o.train_s
        );
    }
    if outcomes.len() > 1 {
        let refs: Vec<(&str, &Froc)> = outcomes
            .iter()
            .map(|o| (o.fusion.as_str(), &o.froc))
            .collect();
        let path = args.out.join("froc_compare.png");
        match crate::plot::froc_png(&path, "test split, every operator", &refs) {
            Ok(()) => crate::say!("wrote {}", path.display()),
            Err(e) => crate::say!("froc_compare.png not drawn: {e}"),
        }
    }
    let results: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            let sens: serde_json::Map<String, serde_json::Value> = FP_RATES
                .iter()
                .zip(o.froc.sensitivity)
                .map(|(r, s)| (format!("{r}"), serde_json::json!(s)))
                .collect();
            serde_json::json!({
                "fusion": o.fusion, "images": o.froc.images, "lesions": o.froc.lesions,
                "sensitivity": sens, "mean_0.5_4": o.froc.mean_first_four(),
                "images_per_s": o.images_per_s, "train_s": o.train_s,
            })
        })
        .collect();
    let summary = serde_json::json!({
        "scans": args.scans, "size": args.size, "epochs": args.epochs, "slices": args.slices,
        "seed": args.seed, "seconds": started.elapsed().as_secs_f64(), "test": results,
    });
    crate::files::write_atomic(&args.out.join(MARKER), summary.to_string().as_bytes())?;
    let first = &fusions[0];
    crate::say!(
        "\nwrote {out}: the data (data/), per operator the checkpoints and training.png \
         ({out}/{first}/), test_detections.json, froc.png and overlays/ (lesions green, \
         detections scoring >= {} red); the table as JSON in {out}/{MARKER}; {:.0} s in all",
        args.overlay_score,
        started.elapsed().as_secs_f64(),
        out = args.out.display()
    );
    Ok(())
}
