//! `a3d eval`: DeepLesion FROC of a detections file against `DL_info.csv`, for all lesions,
//! slice interval <= 2 mm and > 2 mm (the reference's validation subsets) and each coarse
//! lesion type, as tables or one JSON object per subset.

use a3d_ct::deeplesion::{read_dl_info, Lesion as DlLesion, Split};
use a3d_detector::froc::{froc, Detection, Froc, Lesion, FP_RATES};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// `a3d detect`'s JSON, or a CSV `File_name,x1,y1,x2,y2,score` (0-based original pixels).
    #[arg(long)]
    detections: PathBuf,
    /// DeepLesion's `DL_info.csv`.
    #[arg(long)]
    annotations: PathBuf,
    /// The split evaluated.
    #[arg(long, default_value = "val", value_parser = ["val", "test"])]
    split: String,
    /// One JSON object per subset instead of the tables.
    #[arg(long)]
    json: bool,
    /// Draw the FROC curves of all lesions and of both slice-interval subsets into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// The detections of a file, by its format.
fn read_detections(path: &Path) -> Result<Vec<Detection>, String> {
    let bad = |e: String| format!("{}: {e}", path.display());
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    if text.trim_start().starts_with('{') {
        let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let slices = doc["slices"]
            .as_array()
            .ok_or_else(|| bad("no `slices` array (not a3d detect's JSON)".into()))?;
        let mut out = Vec::new();
        for (i, s) in slices.iter().enumerate() {
            let image = s["name"]
                .as_str()
                .ok_or_else(|| bad(format!("slices[{i}] has no `name`")))?;
            for (j, b) in s["boxes"].as_array().into_iter().flatten().enumerate() {
                let coords: Vec<f64> = b["box"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
                    .unwrap_or_default();
                let score = b["score"].as_f64();
                match (coords.as_slice(), score) {
                    (&[x1, y1, x2, y2], Some(score)) => out.push(Detection {
                        image: image.to_string(),
                        bbox: [x1 as f32, y1 as f32, x2 as f32, y2 as f32],
                        score: score as f32,
                    }),
                    _ => {
                        return Err(bad(format!(
                            "slices[{i}].boxes[{j}]: needs `box` [4 numbers] and `score`"
                        )))
                    }
                }
            }
        }
        return Ok(out);
    }
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let mut out = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(format!("row {}: {e}", row + 1)))?;
        if record.len() != 6 {
            return Err(bad(format!(
                "row {}: expected File_name,x1,y1,x2,y2,score",
                row + 1
            )));
        }
        let num = |k: usize| -> Result<f32, String> {
            record[k]
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    bad(format!(
                        "row {}, column {}: `{}` is not a number",
                        row + 1,
                        k + 1,
                        &record[k]
                    ))
                })
        };
        out.push(Detection {
            image: record[0].trim().to_string(),
            bbox: [num(1)?, num(2)?, num(3)?, num(4)?],
            score: num(5)?,
        });
    }
    Ok(out)
}

/// A subset: its name, which lesions it selects, and whether it selects lesions within every
/// image (types) rather than images (slice intervals).
type Subset = (
    String,
    Box<dyn Fn(&a3d_ct::deeplesion::Lesion) -> bool>,
    bool,
);

pub fn run(args: &EvalArgs) -> Result<(), String> {
    let split = Split::from_name(&args.split).ok_or("--split: val or test")?;
    let rows = read_dl_info(&args.annotations).map_err(|e| e.to_string())?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|l| l.split == split && !l.noisy)
        .collect();
    if rows.is_empty() {
        return Err(format!(
            "{}: no lesions in the {} split",
            args.annotations.display(),
            args.split
        ));
    }
    let detections = read_detections(&args.detections)?;
    check_images(
        &rows,
        &detections,
        &args.detections,
        &args.split,
        &args.annotations,
    )?;
    let curves = report(&rows, &detections, &args.split, args.json);
    if let Some(path) = &args.plot {
        let refs: Vec<(&str, &Froc)> = curves.iter().map(|(n, f)| (n.as_str(), f)).collect();
        crate::plot::froc_png(path, &format!("FROC, {} split", args.split), &refs)?;
        if !args.json {
            crate::say!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// Refuses detections on images that are not key slices of the split.
fn check_images(
    rows: &[DlLesion],
    detections: &[Detection],
    path: &Path,
    split: &str,
    annotations: &Path,
) -> Result<(), String> {
    let images: BTreeSet<&str> = rows.iter().map(|l| l.file_name.as_str()).collect();
    let foreign: Vec<&Detection> = detections
        .iter()
        .filter(|d| !images.contains(d.image.as_str()))
        .collect();
    if let Some(first) = foreign.first() {
        return Err(format!(
            "{}: {} detection(s) on images that are not key slices of the {split} split of {} (the first: {})",
            path.display(),
            foreign.len(),
            annotations.display(),
            first.image
        ));
    }
    Ok(())
}

/// Prints the FROC of every subset of `rows` (one split's lesions) as a table or JSON lines;
/// returns the curves of all lesions and the slice-interval subsets (for the plot).
pub(crate) fn report(
    rows: &[DlLesion],
    detections: &[Detection],
    split: &str,
    json: bool,
) -> Vec<(String, Froc)> {
    let images: BTreeSet<&str> = rows.iter().map(|l| l.file_name.as_str()).collect();
    // Subsets: (name, which images, which lesions count).
    let interval = |l: &DlLesion| l.spacing[2];
    let mut subsets: Vec<Subset> = vec![
        ("all".into(), Box::new(|_| true), false),
        (
            "slice_interval<=2mm".into(),
            Box::new(move |l| interval(l) <= 2.0),
            false,
        ),
        (
            "slice_interval>2mm".into(),
            Box::new(move |l| interval(l) > 2.0),
            false,
        ),
    ];
    let types: BTreeSet<i32> = rows
        .iter()
        .map(|l| l.coarse_type)
        .filter(|t| *t > 0)
        .collect();
    for t in types {
        subsets.push((
            format!("type_{t}"),
            Box::new(move |l| l.coarse_type == t),
            true,
        ));
    }
    if !json {
        crate::say!(
            "FROC on the {} split: {} images, {} lesions, {} detections",
            split,
            images.len(),
            rows.len(),
            detections.len()
        );
        crate::say!(
            "{:<22} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9}",
            "subset",
            "images",
            "lesions",
            "0.5",
            "1",
            "2",
            "4",
            "8",
            "16",
            "mean 0.5-4"
        );
    }
    let mut curves: Vec<(String, Froc)> = Vec::new();
    for (name, select, per_lesion) in &subsets {
        // Interval subsets keep the images of those scans; type subsets keep every image and
        // count only that type's lesions (the others still absorb the detections that find
        // them).
        let mut lesions: BTreeMap<String, Vec<Lesion>> = BTreeMap::new();
        for l in rows {
            if !per_lesion && !select(l) {
                continue;
            }
            lesions
                .entry(l.file_name.clone())
                .or_default()
                .push(Lesion {
                    bbox: l.bbox,
                    counted: select(l),
                });
        }
        let dets: Vec<Detection> = detections
            .iter()
            .filter(|d| lesions.contains_key(&d.image))
            .cloned()
            .collect();
        if lesions.is_empty() {
            continue;
        }
        let f = froc(&lesions, &dets);
        print_subset(name, &f, json);
        if !per_lesion {
            curves.push((name.clone(), f));
        }
    }
    curves
}

fn print_subset(name: &str, f: &Froc, json: bool) {
    if json {
        let sens: serde_json::Map<String, serde_json::Value> = FP_RATES
            .iter()
            .zip(f.sensitivity)
            .map(|(r, s)| (format!("{r}"), serde_json::json!(s)))
            .collect();
        crate::say!(
            "{}",
            serde_json::json!({
                "subset": name, "images": f.images, "lesions": f.lesions,
                "sensitivity": sens, "mean_0.5_4": f.mean_first_four(),
            })
        );
    } else {
        let s = f.sensitivity;
        crate::say!(
            "{name:<22} {:>7} {:>8} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>9.4}",
            f.images,
            f.lesions,
            s[0],
            s[1],
            s[2],
            s[3],
            s[4],
            s[5],
            f.mean_first_four()
        );
    }
}
