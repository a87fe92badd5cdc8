//! From the headers of a folder to one series' slices in patient order, with its geometry.

use super::header::{normal, Frame, Header};
use super::{SeriesSummary, SliceGap};
use crate::orientation::AffineLps;

/// One slice of the chosen series: which file and frame it is, and where it lies.
#[derive(Debug, Clone)]
pub(super) struct Slice {
    /// Index into the chosen series' headers.
    pub file: usize,
    pub frame: u32,
    /// Position along the slice normal (mm).
    pub along: f64,
    pub rescale: (f64, f64),
}

/// The chosen series laid out as a volume.
pub(super) struct Layout {
    pub slices: Vec<Slice>,
    pub rows: u32,
    pub columns: u32,
    /// Voxel (column, row, slice) to LPS.
    pub affine: AffineLps,
    pub gaps: Vec<SliceGap>,
    pub interval_mm: f64,
}

/// Groups headers by series, in order of first appearance.
pub(super) fn group(headers: Vec<Header>) -> Vec<(String, Vec<Header>)> {
    let mut out: Vec<(String, Vec<Header>)> = Vec::new();
    for h in headers {
        match out.iter_mut().find(|(uid, _)| *uid == h.series_uid) {
            Some((_, v)) => v.push(h),
            None => out.push((h.series_uid.clone(), vec![h])),
        }
    }
    out
}

pub(super) fn summary(uid: &str, headers: &[Header]) -> SeriesSummary {
    SeriesSummary {
        uid: uid.to_string(),
        description: headers
            .iter()
            .map(|h| h.series_description.as_str())
            .find(|d| !d.is_empty())
            .unwrap_or_default()
            .to_string(),
        images: headers.iter().map(|h| h.frames.len()).sum(),
        files: headers.len(),
    }
}

const TOLERANCE: f64 = 1e-3;

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Checks an ImageOrientationPatient: two orthogonal unit vectors.
fn check_orientation(o: &[f64; 6]) -> Result<(), String> {
    let (r, c) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    if (dot(r, r).sqrt() - 1.0).abs() > 1e-2
        || (dot(c, c).sqrt() - 1.0).abs() > 1e-2
        || dot(r, c).abs() > 1e-2
    {
        return Err(format!(
            "ImageOrientationPatient {o:?} is not two orthogonal unit vectors"
        ));
    }
    Ok(())
}

/// Orders the series' frames along the slice normal and derives the volume geometry. Errors
/// name the file at fault (`Err((file index, problem))`; `usize::MAX` for the series as a
/// whole).
pub(super) fn layout(headers: &[Header]) -> Result<Layout, (usize, String)> {
    let first = &headers[0];
    let reference: Frame = first.frames[0];
    check_orientation(&reference.orientation).map_err(|e| (0, e))?;
    let n = normal(&reference.orientation);
    let mut slices = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        if (h.rows, h.columns) != (first.rows, first.columns) {
            return Err((
                i,
                format!(
                    "{} x {} pixels, the series' first image has {} x {}",
                    h.rows, h.columns, first.rows, first.columns
                ),
            ));
        }
        for (f, frame) in h.frames.iter().enumerate() {
            let odiff = frame
                .orientation
                .iter()
                .zip(reference.orientation)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            if odiff > TOLERANCE {
                return Err((
                    i,
                    format!(
                        "frame {f}: ImageOrientationPatient {:?} differs from the series' {:?}",
                        frame.orientation, reference.orientation
                    ),
                ));
            }
            let sdiff = (0..2)
                .map(|k| (frame.pixel_spacing[k] - reference.pixel_spacing[k]).abs())
                .fold(0.0, f64::max);
            if sdiff > TOLERANCE {
                return Err((
                    i,
                    format!(
                        "frame {f}: PixelSpacing {:?} differs from the series' {:?}",
                        frame.pixel_spacing, reference.pixel_spacing
                    ),
                ));
            }
            slices.push((
                Slice {
                    file: i,
                    frame: f as u32,
                    along: dot(frame.position, n),
                    rescale: frame.rescale,
                },
                frame.position,
            ));
        }
    }
    slices.sort_by(|a, b| a.0.along.total_cmp(&b.0.along));
    for w in slices.windows(2) {
        if (w[1].0.along - w[0].0.along).abs() < TOLERANCE {
            let other = &headers[w[0].0.file];
            return Err((
                w[1].0.file,
                format!(
                    "at the same position ({:.3} mm along the normal) as {} frame {}: several acquisitions in one series?",
                    w[1].0.along,
                    other.path.display(),
                    w[0].0.frame
                ),
            ));
        }
    }
    let intervals: Vec<f64> = slices
        .windows(2)
        .map(|w| w[1].0.along - w[0].0.along)
        .collect();
    let interval_mm = if intervals.is_empty() {
        first.slice_thickness.filter(|t| *t > 0.0).unwrap_or(1.0)
    } else {
        let mut sorted = intervals.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let gaps = intervals
        .iter()
        .enumerate()
        .filter(|(_, d)| (*d - interval_mm).abs() > 0.01 * interval_mm.max(0.1))
        .map(|(k, d)| SliceGap {
            after_slice: k,
            interval_mm: *d,
        })
        .collect();
    let p0 = slices[0].1;
    // The slice axis runs from the first to the last position (a gantry tilt makes it oblique
    // to the normal); a lone slice steps along the normal by its thickness.
    let step = if slices.len() > 1 {
        let last = slices[slices.len() - 1].1;
        let k = (slices.len() - 1) as f64;
        [
            (last[0] - p0[0]) / k,
            (last[1] - p0[1]) / k,
            (last[2] - p0[2]) / k,
        ]
    } else {
        n.map(|v| v * interval_mm)
    };
    let o = reference.orientation;
    let [row_spacing, col_spacing] = reference.pixel_spacing;
    let affine = [0, 1, 2].map(|r| [o[r] * col_spacing, o[3 + r] * row_spacing, step[r], p0[r]]);
    Ok(Layout {
        slices: slices.into_iter().map(|(s, _)| s).collect(),
        rows: first.rows,
        columns: first.columns,
        affine,
        gaps,
        interval_mm,
    })
}
