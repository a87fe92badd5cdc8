//! DICOM CT series through dicom-rs: a folder of one or more series, or one (multi-frame) file,
//! to a [`Volume`] in a3d's orientation (see [`crate::nifti`]: slices inferior to superior,
//! rows anterior to posterior, columns right to left).
//!
//! - Slices are ordered by ImagePositionPatient projected on the slice normal (row direction
//!   x column direction), never by file name or InstanceNumber; the slice interval is the
//!   median distance between neighbours, and any other distance is reported as a [`SliceGap`].
//! - HU = stored value x RescaleSlope + RescaleIntercept, per slice (or per frame of an
//!   enhanced multi-frame image, from its functional groups).
//! - Pixel data in any transfer syntax dicom-pixeldata decodes: implicit and explicit VR little
//!   endian, explicit VR big endian, deflated, RLE lossless, JPEG baseline / extended /
//!   lossless, JPEG 2000. Others (JPEG-LS, JPEG XL, video) are a typed error naming the syntax.
//! - Files written with or without the 128-byte preamble, and bare data sets without a file
//!   meta group, are read.
//! - A folder holding several CT series needs [`DicomOptions::series`]; otherwise the error
//!   ([`crate::Error::SeveralSeries`]) lists them. Non-DICOM files, non-CT objects, localizers
//!   and colour pictures are skipped, each with a note in [`DicomInfo::skipped`].
//!
//! Headers are read first (without pixel data, in parallel), checked against [`Limits`], and
//! only then are the chosen series' pixels decoded, in parallel over files.

mod header;
mod series;
mod validate;
pub(crate) mod write;

pub use header::Layout;

use crate::orientation::{reorient, AxisMap};
use crate::{Error, Limits, Result, Volume};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, Rescale};
use header::{Depth, Header, Kind, Open};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// What to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DicomOptions {
    /// The SeriesInstanceUID to read from a folder holding several CT series.
    pub series: Option<String>,
    /// Size limits checked before any pixel data is decoded.
    pub limits: Limits,
}

/// One series of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSummary {
    /// SeriesInstanceUID.
    pub uid: String,
    /// SeriesDescription (may be empty).
    pub description: String,
    /// Images (frames) in it.
    pub images: usize,
    /// Files in it.
    pub files: usize,
}

impl std::fmt::Display for SeriesSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}{} images in {} files)",
            self.uid,
            if self.description.is_empty() {
                String::new()
            } else {
                format!("\"{}\", ", self.description)
            },
            self.images,
            self.files
        )
    }
}

/// A file that was not read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// A distance between neighbouring slices that differs from the series' interval by more than
/// 1 %.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SliceGap {
    /// The gap lies between output slices `after_slice` and `after_slice + 1` (0-based,
    /// inferior to superior).
    pub after_slice: usize,
    /// The distance (mm).
    pub interval_mm: f64,
}

/// What was read.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomInfo {
    /// The series read.
    pub series: SeriesSummary,
    /// The other CT series in the folder (when [`DicomOptions::series`] chose one).
    pub other_series: Vec<SeriesSummary>,
    /// Each transfer syntax UID met, with its name, and how many files used it.
    pub transfer_syntaxes: Vec<(String, String, usize)>,
    /// The file layouts met.
    pub layouts: Vec<Layout>,
    /// Files not read.
    pub skipped: Vec<Skipped>,
    /// The median distance between neighbouring slices (mm).
    pub slice_interval_mm: f64,
    /// Distances that differ from it.
    pub gaps: Vec<SliceGap>,
    /// How the stored axes became a3d's.
    pub axis_map: AxisMap,
    /// Whether some image had no RescaleSlope / RescaleIntercept (identity assumed).
    pub rescale_missing: bool,
}

/// Reads the CT series at `path` (a folder, searched recursively, or one file).
pub fn read_dicom(path: &Path, options: &DicomOptions) -> Result<(Volume, DicomInfo)> {
    let files = list_files(path)?;
    let mut skipped = Vec::new();
    let mut headers = Vec::new();
    let results: Vec<(PathBuf, Result<Kind>)> = files
        .into_par_iter()
        .map(|p| {
            let r = classify(&p);
            (p, r)
        })
        .collect();
    for (p, r) in results {
        match r? {
            Kind::Image(h) => headers.push(*h),
            Kind::Skipped(reason) => skipped.push(Skipped { path: p, reason }),
        }
    }
    let mut groups = series::group(headers);
    if groups.is_empty() {
        let why = match skipped.first() {
            Some(s) => format!(
                "; {} file(s) skipped, the first ({}) because: {}",
                skipped.len(),
                s.path.display(),
                s.reason
            ),
            None => String::new(),
        };
        return Err(Error::invalid(path, format!("no CT image found{why}")));
    }
    let chosen = match &options.series {
        Some(uid) => groups.iter().position(|(u, _)| u == uid).ok_or_else(|| {
            Error::invalid(
                path,
                format!(
                    "no CT series {uid}; the folder has {}",
                    groups
                        .iter()
                        .map(|(u, h)| series::summary(u, h).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?,
        None if groups.len() > 1 => {
            return Err(Error::SeveralSeries {
                path: path.into(),
                series: groups.iter().map(|(u, h)| series::summary(u, h)).collect(),
            })
        }
        None => 0,
    };
    let (uid, headers) = groups.swap_remove(chosen);
    let other_series = groups.iter().map(|(u, h)| series::summary(u, h)).collect();
    let summary = series::summary(&uid, &headers);
    let layout = series::layout(&headers).map_err(|(file, problem)| {
        Error::invalid(headers.get(file).map_or(path, |h| &h.path), problem)
    })?;
    options.limits.check(
        &headers[0].path,
        layout.columns as u64,
        layout.rows as u64,
        layout.slices.len() as u64,
    )?;
    let stored = decode(&headers, &layout)?;
    let dims = [
        layout.columns as usize,
        layout.rows as usize,
        layout.slices.len(),
    ];
    let (volume, axis_map) =
        reorient(&stored, dims, &layout.affine).map_err(|e| Error::invalid(path, e))?;
    let mut gaps = layout.gaps;
    if axis_map.axes[0].1 {
        // Positions were sorted along a normal pointing inferior: the output runs the other way.
        let last = layout.slices.len() - 2;
        for g in &mut gaps {
            g.after_slice = last - g.after_slice;
        }
        gaps.reverse();
    }
    let mut transfer_syntaxes: Vec<(String, String, usize)> = Vec::new();
    let mut layouts = Vec::new();
    for h in &headers {
        match transfer_syntaxes
            .iter_mut()
            .find(|t| t.0 == h.transfer_syntax)
        {
            Some(t) => t.2 += 1,
            None => transfer_syntaxes.push((
                h.transfer_syntax.clone(),
                transfer_syntax_name(&h.transfer_syntax),
                1,
            )),
        }
        if !layouts.contains(&h.layout) {
            layouts.push(h.layout);
        }
    }
    Ok((
        volume,
        DicomInfo {
            series: summary,
            other_series,
            transfer_syntaxes,
            layouts,
            skipped,
            slice_interval_mm: layout.interval_mm,
            gaps,
            axis_map,
            rescale_missing: headers.iter().any(|h| h.rescale_missing),
        },
    ))
}

/// The registered name of a transfer syntax UID.
fn transfer_syntax_name(uid: &str) -> String {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uid)
        .map_or_else(|| "unknown".to_string(), |ts| ts.name().to_string())
}

/// One file's header, or why it is skipped; an error for a DICOM file that cannot be read.
fn classify(path: &Path) -> Result<Kind> {
    let bad = |e: String| Error::invalid(path, e);
    match header::open(path, Depth::Header).map_err(bad)? {
        Open::NotDicom(reason) => Ok(Kind::Skipped(reason)),
        Open::Object(obj, layout) => header::read(path, &obj, layout).map_err(bad),
    }
}

/// Every file under `path` (or `path` itself), sorted, hidden files left out.
fn list_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![(path.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let p = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(|e| Error::io(&p, e))?;
            if kind.is_dir() && depth < 16 {
                stack.push((p, depth + 1));
            } else if kind.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Decodes the chosen slices into `[slices][rows][columns]` stored order (file order of the
/// pixels, slices sorted along the normal), in parallel over files.
fn decode(headers: &[Header], layout: &series::Layout) -> Result<Vec<f32>> {
    let plane = layout.rows as usize * layout.columns as usize;
    let mut stored = vec![0.0f32; plane * layout.slices.len()];
    let mut per_file: Vec<Vec<(&series::Slice, &mut [f32])>> =
        headers.iter().map(|_| Vec::new()).collect();
    for (slice, out) in layout.slices.iter().zip(stored.chunks_mut(plane)) {
        per_file[slice.file].push((slice, out));
    }
    per_file
        .into_par_iter()
        .enumerate()
        .filter(|(_, jobs)| !jobs.is_empty())
        .try_for_each(|(file, jobs)| decode_file(&headers[file], layout, jobs))?;
    Ok(stored)
}

fn decode_file(
    h: &Header,
    layout: &series::Layout,
    jobs: Vec<(&series::Slice, &mut [f32])>,
) -> Result<()> {
    let bad = |e: String| Error::invalid(&h.path, e);
    let obj = match header::open(&h.path, Depth::All).map_err(bad)? {
        Open::Object(obj, _) => obj,
        Open::NotDicom(reason) => return Err(bad(reason)),
    };
    let decoded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.decode_pixel_data()))
            .map_err(|_| bad("dicom-pixeldata failed to decode the pixel data".into()))?
            .map_err(|e| {
                bad(format!(
                    "decoding the pixel data ({}, {}): {}",
                    h.transfer_syntax,
                    transfer_syntax_name(&h.transfer_syntax),
                    header::chain(&e)
                ))
            })?;
    if (decoded.rows(), decoded.columns()) != (layout.rows, layout.columns)
        || decoded.number_of_frames() as usize != h.frames.len()
        || decoded.samples_per_pixel() != 1
    {
        return Err(bad(format!(
            "decoded {} frame(s) of {} x {} x {} samples, the header said {} of {} x {} x 1",
            decoded.number_of_frames(),
            decoded.rows(),
            decoded.columns(),
            decoded.samples_per_pixel(),
            h.frames.len(),
            layout.rows,
            layout.columns
        )));
    }
    if !matches!(decoded.bits_allocated(), 8 | 16 | 32)
        || !(1..=decoded.bits_allocated()).contains(&decoded.bits_stored())
    {
        return Err(bad(format!(
            "{} bits stored in {} allocated per sample: a3d reads up to 8, 16 or 32 in 8, 16 or 32",
            decoded.bits_stored(),
            decoded.bits_allocated()
        )));
    }
    for (slice, out) in jobs {
        let options = ConvertOptions::new().with_modality_lut(ModalityLutOption::Override(
            Rescale::new(slice.rescale.0, slice.rescale.1),
        ));
        // Defence in depth: a panic inside the third-party conversion becomes this file's error.
        let values: Vec<f32> = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decoded.to_vec_frame_with_options(slice.frame, &options)
        }))
        .map_err(|_| {
            bad(format!(
                "frame {}: dicom-pixeldata failed to convert it",
                slice.frame
            ))
        })?
        .map_err(|e| bad(format!("frame {}: {}", slice.frame, header::chain(&e))))?;
        if values.len() != out.len() {
            return Err(bad(format!(
                "frame {}: {} values for {} pixels",
                slice.frame,
                values.len(),
                out.len()
            )));
        }
        out.copy_from_slice(&values);
    }
    Ok(())
}
