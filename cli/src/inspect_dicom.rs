//! `a3d inspect <dicom-folder | file.dcm>`: the series found, how they were written, and the
//! chosen series as a volume in a3d's orientation, with its slice-interval irregularities.

use a3d_ct::deeplesion::{MultiSlice, WeightRule};
use a3d_ct::dicom::{read_dicom, DicomOptions, Layout};
use std::path::Path;

/// Whether `path` should be read as DICOM: a folder, a `.dcm` file, or a file with the marker.
pub fn is_dicom(path: &Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".dcm") || name.ends_with(".dicom") {
        return true;
    }
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|_| &head[128..] == b"DICM" || &head[..4] == b"DICM")
}

pub fn run(
    path: &Path,
    series: Option<&str>,
    depth: usize,
    preview: Option<&Path>,
) -> Result<(), String> {
    let options = DicomOptions {
        series: series.map(str::to_string),
        ..DicomOptions::default()
    };
    let (v, info) = read_dicom(path, &options).map_err(|e| e.to_string())?;
    crate::say!("{}: DICOM CT series {}", path.display(), info.series);
    for (uid, name, files) in &info.transfer_syntaxes {
        crate::say!("  transfer syntax {uid} ({name}): {files} file(s)");
    }
    for layout in &info.layouts {
        let what = match layout {
            Layout::Standard => "standard files (preamble, DICM, file meta group)",
            Layout::NoPreamble => "files without the 128-byte preamble",
            Layout::NoMeta => "bare data sets without a file meta group (implicit VR assumed)",
        };
        crate::say!("  {what}");
    }
    for other in &info.other_series {
        crate::say!("  also in the folder: series {other}");
    }
    if !info.skipped.is_empty() {
        crate::say!("  {} file(s) skipped:", info.skipped.len());
        for s in info.skipped.iter().take(8) {
            crate::say!("    {}: {}", s.path.display(), s.reason);
        }
        if info.skipped.len() > 8 {
            crate::say!("    ... and {} more", info.skipped.len() - 8);
        }
    }
    let stored = ["column index", "row index", "slice position"];
    for (name, (axis, flip)) in crate::inspect::AXIS_NAMES.iter().zip(info.axis_map.axes) {
        crate::say!(
            "  {name}: the files' {}{}",
            stored[axis],
            if flip { ", flipped" } else { "" }
        );
    }
    if info.axis_map.obliquity_deg > 0.5 {
        crate::say!(
            "  oblique (or gantry-tilted) by {:.1} degrees: snapped to the nearest axes (no resampling)",
            info.axis_map.obliquity_deg
        );
    }
    let (lo, hi) = v.hu_range().unwrap_or((0.0, 0.0));
    crate::say!(
        "volume [Z, H, W] = {:?}, spacing (z, y, x) = ({:.3}, {:.3}, {:.3}) mm, HU {lo} .. {hi}",
        v.shape,
        v.spacing[0],
        v.spacing[1],
        v.spacing[2]
    );
    if let Some(o) = v.origin {
        crate::say!(
            "  first voxel at LPS ({:.2}, {:.2}, {:.2}) mm",
            o[0],
            o[1],
            o[2]
        );
    }
    if info.gaps.is_empty() {
        crate::say!("  slice interval {:.3} mm, regular", info.slice_interval_mm);
    } else {
        crate::say!(
            "  slice interval {:.3} mm (median); {} irregular:",
            info.slice_interval_mm,
            info.gaps.len()
        );
        for g in info.gaps.iter().take(8) {
            crate::say!(
                "    {:.3} mm between slices {} and {}",
                g.interval_mm,
                g.after_slice,
                g.after_slice + 1
            );
        }
    }
    if info.rescale_missing {
        crate::say!("  note: some images have no RescaleSlope/RescaleIntercept (identity assumed)");
    }
    if let Some(out) = preview {
        let z = v.shape[0] / 2;
        let ms = MultiSlice::from_volume(&v, z, depth, WeightRule::PerNeighbour)
            .map_err(|e| e.to_string())?;
        crate::inspect::write_preview(out, &ms)?;
        crate::say!(
            "wrote {} (slice {z} and its {} neighbours at 2.0 mm, side by side)",
            out.display(),
            depth - 1
        );
    }
    Ok(())
}
