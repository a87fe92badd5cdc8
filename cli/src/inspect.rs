//! `a3d inspect <slice.png>`: what a3d reads from a DeepLesion slice (size, HU range), and when
//! the file sits in a DeepLesion folder (`<root>/Images_png/<series>/<n>.png` with
//! `<root>/DL_info.csv`), its lesions, spacing and the neighbours the network input mixes.
//! NIfTI volumes and DICOM series (`inspect_dicom`) are described in a3d's orientation.
//! `--png OUT` writes a windowed preview: the network input's D slices side by side.

use a3d_ct::deeplesion::{plan, DeepLesion, KeySlice, MultiSlice, Split, WeightRule};
use a3d_ct::network::window;
use a3d_ct::{read_hu_png, Limits};
use std::path::{Path, PathBuf};

/// The DeepLesion root and series folder name of a slice path, when it has that layout.
pub fn deeplesion_root(path: &Path) -> Option<(PathBuf, String, u32)> {
    let index: u32 = path.file_stem()?.to_str()?.parse().ok()?;
    let series = path.parent()?;
    let images = series.parent()?;
    if images.file_name()? != "Images_png" {
        return None;
    }
    let root = images.parent()?.to_path_buf();
    root.join("DL_info.csv").is_file().then(|| {
        (
            root,
            series
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            index,
        )
    })
}

/// a3d's output axes, as `inspect` names them.
pub const AXIS_NAMES: [&str; 3] = [
    "slices (inferior -> superior)",
    "rows (anterior -> posterior)",
    "columns (right -> left)",
];

/// `a3d inspect` of a NIfTI volume: its header's story and the volume in a3d's orientation.
fn run_nifti(path: &Path, depth: usize, preview: Option<&Path>) -> Result<(), String> {
    let (v, info) =
        a3d_ct::nifti::read_nifti(path, &Limits::default()).map_err(|e| e.to_string())?;
    let (lo, hi) = v.hu_range().unwrap_or((0.0, 0.0));
    crate::say!(
        "{}: NIfTI-1, stored {:?} voxels, orientation from the {}",
        path.display(),
        info.stored_dims,
        info.transform
    );
    for (name, (axis, flip)) in AXIS_NAMES.iter().zip(info.axis_map) {
        crate::say!(
            "  {name}: stored axis {axis}{}",
            if flip { ", flipped" } else { "" }
        );
    }
    if info.obliquity_deg > 0.5 {
        crate::say!(
            "  oblique by {:.1} degrees: snapped to the nearest axes (no resampling)",
            info.obliquity_deg
        );
    }
    crate::say!(
        "volume [Z, H, W] = {:?}, spacing (z, y, x) = ({:.3}, {:.3}, {:.3}) mm, HU {lo} .. {hi}, scl_slope {} scl_inter {}",
        v.shape, v.spacing[0], v.spacing[1], v.spacing[2], info.scaling.0, info.scaling.1
    );
    if let Some(out) = preview {
        let z = v.shape[0] / 2;
        let ms = MultiSlice::from_volume(&v, z, depth, WeightRule::PerNeighbour)
            .map_err(|e| e.to_string())?;
        write_preview(out, &ms)?;
        crate::say!(
            "wrote {} (slice {z} and its {} neighbours at 2.0 mm, side by side)",
            out.display(),
            depth - 1
        );
    }
    Ok(())
}

pub fn run(
    path: &Path,
    series: Option<&str>,
    depth: usize,
    preview: Option<&Path>,
) -> Result<(), String> {
    let name = path.to_string_lossy();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        return run_nifti(path, depth, preview);
    }
    if crate::inspect_dicom::is_dicom(path) {
        return crate::inspect_dicom::run(path, series, depth, preview);
    }
    let limits = Limits::default();
    let slice = read_hu_png(path, &limits).map_err(|e| e.to_string())?;
    let (lo, hi) = slice
        .hu
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    crate::say!(
        "{}: 16-bit grey PNG, {} x {} pixels, HU {lo} .. {hi}",
        path.display(),
        slice.width,
        slice.height
    );
    let key = match deeplesion_root(path) {
        Some((root, series, index)) => {
            let dl = DeepLesion::open(&root).map_err(|e| e.to_string())?;
            let file_name = format!("{series}_{index:03}.png");
            let lesions: Vec<_> = dl
                .lesions
                .iter()
                .filter(|l| l.file_name == file_name)
                .collect();
            crate::say!(
                "DeepLesion folder {}: {} lesions in DL_info.csv",
                root.display(),
                dl.lesions.len()
            );
            let key = match lesions.first() {
                Some(l) => {
                    crate::say!(
                        "key slice {file_name}: spacing {} x {} mm, slice interval {} mm, split {:?}",
                        l.spacing[0], l.spacing[1], l.spacing[2], l.split
                    );
                    for l in &lesions {
                        crate::say!(
                            "  lesion box (0-based) [{}, {}, {}, {}]{}",
                            l.bbox[0],
                            l.bbox[1],
                            l.bbox[2],
                            l.bbox[3],
                            if l.noisy {
                                "  (possibly noisy: excluded from every split)"
                            } else {
                                ""
                            }
                        );
                    }
                    KeySlice {
                        file_name: file_name.clone(),
                        series_dir: series.clone(),
                        key_index: index,
                        boxes: lesions.iter().map(|l| l.bbox).collect(),
                        lesions: Vec::new(),
                        spacing: l.spacing,
                        split: l.split,
                    }
                }
                None => {
                    crate::say!(
                        "{file_name} is not a key slice in DL_info.csv (slice interval unknown)"
                    );
                    KeySlice {
                        file_name,
                        series_dir: series.clone(),
                        key_index: index,
                        boxes: Vec::new(),
                        lesions: Vec::new(),
                        spacing: [f32::NAN; 3],
                        split: Split::Train,
                    }
                }
            };
            for (d, terms) in plan(depth, key.spacing[2] as f64, WeightRule::PerNeighbour)
                .iter()
                .enumerate()
            {
                let parts: Vec<String> = terms
                    .iter()
                    .map(|(o, w)| format!("{w:.3} x slice {}", index as i64 + o))
                    .collect();
                crate::say!("  input slice {d}: {}", parts.join(" + "));
            }
            Some((dl, key))
        }
        None => None,
    };
    if let Some(out) = preview {
        let ms = match &key {
            Some((dl, key)) => dl
                .load(key, depth, WeightRule::PerNeighbour, &limits)
                .map_err(|e| e.to_string())?,
            None => MultiSlice {
                hu: slice.hu.repeat(depth),
                depth,
                height: slice.height,
                width: slice.width,
            },
        };
        write_preview(out, &ms)?;
        crate::say!(
            "wrote {} ({} slices side by side, window [-1024, 2050] HU)",
            out.display(),
            ms.depth
        );
    }
    Ok(())
}

/// The D slices side by side, windowed to 8-bit grey, written through a temporary file.
pub fn write_preview(out: &Path, ms: &MultiSlice) -> Result<(), String> {
    let (w, h, d) = (ms.width, ms.height, ms.depth);
    let gap = 4;
    let total_w = d * w + (d - 1) * gap;
    let mut pixels = vec![0u8; total_w * h];
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let v = window(ms.hu[(z * h + y) * w + x]) + 50.0;
                pixels[y * total_w + z * (w + gap) + x] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    crate::files::write_png(out, total_w, h, png::ColorType::Grayscale, &pixels)
}
