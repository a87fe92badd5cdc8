//! `a3d detect`: the A3D detector on a DeepLesion key slice, a NIfTI volume or a DICOM series;
//! boxes in original pixels as JSON, optional overlays and a feature dump.

use crate::device::ModelDevice;
use a3d::candle::ContextFusion;
use a3d_ct::deeplesion::{DeepLesion, MultiSlice, WeightRule};
use a3d_ct::network::{InputConfig, NetworkInput};
use a3d_ct::{Limits, Volume};
use a3d_detector::{Detector, DetectorConfig, Preset};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct DetectArgs {
    /// A DeepLesion key slice (`Images_png/<series>/<n>.png`), a `.nii` / `.nii.gz`, or a DICOM
    /// folder or file.
    path: PathBuf,
    /// Weights (safetensors, reference names). No trained A3D weights exist yet: train your
    /// own, or use `--init-seed` to run the pipeline on freshly initialised ones.
    #[arg(
        long,
        conflicts_with = "init_seed",
        required_unless_present = "init_seed"
    )]
    weights: Option<PathBuf>,
    /// Run on the reference random initialisation with this seed (meaningless boxes; for trying
    /// the pipeline).
    #[arg(long)]
    init_seed: Option<u64>,
    /// Model sizes.
    #[arg(long, default_value = "reference", value_parser = ["reference", "tiny"])]
    preset: String,
    /// Slices of the input (odd).
    #[arg(long, default_value_t = 3)]
    slices: usize,
    /// Context operator of the dense layers.
    #[arg(long, default_value = "a3d", value_parser = ["a3d", "tsm", "alignshift", "depthconv", "none"])]
    fusion: String,
    /// Volume slices to run, `FIRST:LAST` inclusive (default: all).
    #[arg(long)]
    range: Option<String>,
    /// The SeriesInstanceUID to read from a DICOM folder with several series.
    #[arg(long)]
    series: Option<String>,
    /// Where to write the detections (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Write a PNG per slice (windowed, boxes drawn) into this folder.
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// The keep-ratio resize target of the input (the reference: 512; a model trained with
    /// `a3d train --input-size N` needs the same N, which its `model.json` records).
    #[arg(long, default_value_t = 512)]
    input_size: usize,
    /// Drop boxes scoring at or below this (the reference: 5e-5).
    #[arg(long)]
    score_threshold: Option<f32>,
    /// Write the first slice's network input and stride-4 map (safetensors: `input`, `fpn`).
    #[arg(long)]
    dump_features: Option<PathBuf>,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = ModelDevice::Cpu)]
    device: ModelDevice,
}

/// One image to run: its label, its D slices in HU, pixel spacing and slice interval.
struct Item {
    index: usize,
    name: String,
    position_mm: Option<f64>,
    slices: MultiSlice,
    thickness_mm: Option<f32>,
}

fn parse_range(range: Option<&str>, n: usize) -> Result<(usize, usize), String> {
    let Some(r) = range else {
        return Ok((0, n - 1));
    };
    let (a, b) = r
        .split_once(':')
        .ok_or_else(|| format!("--range {r}: expected FIRST:LAST"))?;
    let (a, b): (usize, usize) = (
        a.trim()
            .parse()
            .map_err(|_| format!("--range {r}: FIRST is not a slice index"))?,
        b.trim()
            .parse()
            .map_err(|_| format!("--range {r}: LAST is not a slice index"))?,
    );
    if a > b || b >= n {
        return Err(format!("--range {r}: the volume has slices 0..={}", n - 1));
    }
    Ok((a, b))
}

/// The images of the input: one key slice, or the slices of a volume in the range.
fn items(args: &DetectArgs, depth: usize) -> Result<(Vec<Item>, Option<Volume>), String> {
    let name = args.path.to_string_lossy().to_ascii_lowercase();
    let limits = Limits::default();
    let volume = if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        Some(
            a3d_ct::nifti::read_nifti(&args.path, &limits)
                .map_err(|e| e.to_string())?
                .0,
        )
    } else if crate::inspect_dicom::is_dicom(&args.path) {
        let options = a3d_ct::dicom::DicomOptions {
            series: args.series.clone(),
            limits,
        };
        Some(
            a3d_ct::dicom::read_dicom(&args.path, &options)
                .map_err(|e| e.to_string())?
                .0,
        )
    } else {
        None
    };
    if let Some(v) = volume {
        let (first, last) = parse_range(args.range.as_deref(), v.shape[0])?;
        let mut out = Vec::new();
        for z in first..=last {
            let slices = MultiSlice::from_volume(&v, z, depth, WeightRule::PerNeighbour)
                .map_err(|e| e.to_string())?;
            let position_mm = match (v.origin, v.direction) {
                (Some(o), Some(d)) => Some(o[2] + d[2][2] * v.spacing[0] * z as f64),
                _ => None,
            };
            out.push(Item {
                index: z,
                name: format!("slice {z}"),
                position_mm,
                slices,
                thickness_mm: Some(v.spacing[0] as f32),
            });
        }
        return Ok((out, Some(v)));
    }
    // A DeepLesion key slice: its neighbours from the folder and the interval from DL_info.csv.
    let (root, series, index) = crate::inspect::deeplesion_root(&args.path).ok_or_else(|| {
        format!(
            "{}: not a NIfTI, DICOM or DeepLesion slice (<root>/Images_png/<series>/<n>.png with <root>/DL_info.csv)",
            args.path.display()
        )
    })?;
    let dl = DeepLesion::open(&root).map_err(|e| e.to_string())?;
    let file_name = format!("{series}_{index:03}.png");
    let key = dl
        .key_slices(None)
        .into_iter()
        .find(|k| k.file_name == file_name)
        .ok_or_else(|| {
            format!(
                "{file_name} is not a key slice in {}/DL_info.csv",
                root.display()
            )
        })?;
    let slices = dl
        .load(&key, depth, WeightRule::PerNeighbour, &limits)
        .map_err(|e| e.to_string())?;
    Ok((
        vec![Item {
            index: index as usize,
            name: file_name,
            position_mm: None,
            slices,
            thickness_mm: Some(key.spacing[2]),
        }],
        None,
    ))
}

pub fn run(args: &DetectArgs) -> Result<(), String> {
    if args.slices.is_multiple_of(2) {
        return Err(format!("--slices {}: needs an odd number", args.slices));
    }
    let preset = Preset::from_name(&args.preset).ok_or("--preset: reference or tiny")?;
    let fusion = ContextFusion::from_name(&args.fusion).ok_or("--fusion: unknown operator")?;
    let mut config = DetectorConfig::new(preset, args.slices, fusion);
    if let Some(t) = args.score_threshold {
        if !(0.0..1.0).contains(&t) {
            return Err(format!("--score-threshold {t}: must lie in [0, 1)"));
        }
        config.score_threshold = t;
    }
    let device = args.device.open()?;
    let model = match (&args.weights, args.init_seed) {
        (Some(w), _) => Detector::load(config, w, &device).map_err(|e| e.to_string())?,
        (None, Some(seed)) => {
            crate::say!("no weights: the reference random initialisation (seed {seed}); the boxes mean nothing");
            let (_, map) = Detector::init(config, seed, &device).map_err(|e| e.to_string())?;
            Detector::frozen(config, &map, &device).map_err(|e| e.to_string())?
        }
        (None, None) => return Err("--weights or --init-seed is required".into()),
    };
    if !(32..=4096).contains(&args.input_size) {
        return Err(format!("--input-size {}: 32 to 4096", args.input_size));
    }
    let input_config = InputConfig {
        size: args.input_size,
        ..InputConfig::default()
    };
    let (items, _) = items(args, args.slices)?;
    let bar = indicatif::ProgressBar::new(items.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} slices, {per_sec}, ETA {eta}",
        )
        .map_err(|e| e.to_string())?,
    );
    if items.len() < 2 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    if let Some(dir) = &args.overlay {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut results = Vec::new();
    let start = std::time::Instant::now();
    for (i, item) in items.iter().enumerate() {
        let input =
            NetworkInput::build(&item.slices, &input_config, None).map_err(|e| e.to_string())?;
        let dets = model
            .detect(&input, item.thickness_mm)
            .map_err(|e| format!("{}: {e}", item.name))?;
        if i == 0 {
            if let Some(path) = &args.dump_features {
                dump(path, &model, &input, &dets.features)?;
            }
        }
        let boxes: Vec<[f32; 4]> = dets.boxes.iter().map(|b| input.to_original(*b)).collect();
        if let Some(dir) = &args.overlay {
            let drawn: Vec<_> = boxes
                .iter()
                .map(|b| (*b, crate::overlay::DETECTION))
                .collect();
            crate::overlay::overlay_png(
                &dir.join(format!("slice_{:04}.png", item.index)),
                &item.slices,
                &drawn,
            )?;
        }
        results.push(serde_json::json!({
            "index": item.index,
            "name": item.name,
            "position_mm": item.position_mm,
            "boxes": boxes.iter().zip(&dets.scores).map(|(b, s)| serde_json::json!({
                "box": b, "score": s,
            })).collect::<Vec<_>>(),
        }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let doc = serde_json::json!({
        "input": args.path.display().to_string(),
        "model": {
            "preset": args.preset, "slices": args.slices, "fusion": args.fusion,
            "weights": args.weights.as_ref().map(|w| w.display().to_string()),
            "init_seed": args.init_seed,
        },
        "box_convention": "[x1, y1, x2, y2] in original pixels, 0-based, inclusive corners",
        "slices": results,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    crate::files::write_atomic(&args.out, text.as_bytes())?;
    crate::say!(
        "{} slice(s) in {secs:.2} s ({:.2} s per slice); wrote {}",
        items.len(),
        secs / items.len().max(1) as f64,
        args.out.display()
    );
    Ok(())
}

/// `input` `[1, 1, D, Hp, Wp]` and `fpn` (the stride-4 map) as safetensors.
fn dump(
    path: &Path,
    model: &Detector,
    input: &NetworkInput,
    fpn: &candle_core::Tensor,
) -> Result<(), String> {
    let host = |t: &candle_core::Tensor| {
        t.to_device(&candle_core::Device::Cpu)
            .map_err(|e| e.to_string())
    };
    let x = model.input_tensor(input).map_err(|e| e.to_string())?;
    let tensors = std::collections::HashMap::from([
        ("input".to_string(), host(&x)?),
        ("fpn".to_string(), host(fpn)?),
    ]);
    crate::files::replace_with(path, |tmp| candle_core::safetensors::save(&tensors, tmp))
}
