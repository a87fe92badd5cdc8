//! One DICOM file's header: opening it whatever way it was written (preamble or not, file meta
//! group or not), and the attributes a3d needs, frame by frame.

use super::validate;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{
    file::ReadPreamble, DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions,
};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use std::path::{Path, PathBuf};

use dicom_encoding::transfer_syntax::TransferSyntaxIndex;

/// How far to read a file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Depth {
    /// Up to the pixel data (the header pass).
    Header,
    /// Everything (the decoding pass).
    All,
}

/// Why a file is not read as a CT image.
pub(super) enum Open {
    /// A DICOM object.
    Object(Box<DefaultDicomObject>, Layout),
    /// Not a DICOM file at all (skipped, with this note).
    NotDicom(String),
}

/// How the file was laid out on disk, for `a3d inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 128-byte preamble, `DICM`, file meta group: the standard file format.
    Standard,
    /// `DICM` and the meta group without the preamble.
    NoPreamble,
    /// A bare data set without a file meta group (implicit VR little endian assumed, as the
    /// standard's default transfer syntax), as some older tools write it.
    NoMeta,
}

/// Opens `path` as DICOM, to `depth`. The file is read into memory once; its element lengths
/// are checked against its size before dicom-rs parses it.
pub(super) fn open(path: &Path, depth: Depth) -> Result<Open, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let total = bytes.len();
    let parse = |from: usize, layout| {
        validate::with_meta(&bytes[from + 4..], total)?;
        let options = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
        let options = match depth {
            Depth::Header => options.read_until(tags::PIXEL_DATA),
            Depth::All => options,
        };
        options
            .from_reader(&bytes[from..])
            .map(|o| Open::Object(Box::new(o), layout))
            .map_err(|e| format!("not readable as DICOM: {}", chain(&e)))
    };
    if total >= 132 && &bytes[128..132] == b"DICM" {
        return parse(128, Layout::Standard);
    }
    if total >= 4 && &bytes[..4] == b"DICM" {
        return parse(0, Layout::NoPreamble);
    }
    // A bare data set starts with a group 0008 element (little endian) in any real file.
    if total >= 8 && bytes[0] == 0x08 && bytes[1] == 0x00 {
        return bare(&bytes).map(|o| Open::Object(Box::new(o), Layout::NoMeta));
    }
    Ok(Open::NotDicom(
        "not a DICOM file (no DICM marker, no data set)".into(),
    ))
}

/// A data set without its meta group: implicit VR little endian unless the first element
/// carries an explicit VR; a meta group is made up so the pixel decoders know the syntax.
fn bare(bytes: &[u8]) -> Result<DefaultDicomObject, String> {
    let explicit = bytes[4].is_ascii_uppercase() && bytes[5].is_ascii_uppercase();
    let uid = if explicit {
        dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.uid()
    } else {
        dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.uid()
    };
    let ts = TransferSyntaxRegistry
        .get(uid)
        .ok_or_else(|| format!("transfer syntax {uid} is not registered"))?;
    validate::data_set(bytes, uid, bytes.len())?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, ts).map_err(|e| {
        format!(
            "no file meta group, and not readable as a bare data set: {}",
            chain(&e)
        )
    })?;
    let text = |tag| {
        obj.get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uid)
        .media_storage_sop_class_uid(text(tags::SOP_CLASS_UID))
        .media_storage_sop_instance_uid(text(tags::SOP_INSTANCE_UID));
    obj.with_meta(meta)
        .map_err(|e| format!("no file meta group, and none could be made: {}", chain(&e)))
}

/// An error and its sources on one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// The geometry and value mapping of one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Frame {
    /// ImagePositionPatient: the LPS position (mm) of the first pixel's centre.
    pub position: [f64; 3],
    /// ImageOrientationPatient: the row direction (along a row, columns increasing), then the
    /// column direction.
    pub orientation: [f64; 6],
    /// PixelSpacing: (between rows, between columns) in mm.
    pub pixel_spacing: [f64; 2],
    /// RescaleSlope, RescaleIntercept.
    pub rescale: (f64, f64),
}

/// The attributes of one file.
#[derive(Debug, Clone)]
pub(super) struct Header {
    pub path: PathBuf,
    pub layout: Layout,
    pub transfer_syntax: String,
    pub series_uid: String,
    pub series_description: String,
    pub rows: u32,
    pub columns: u32,
    pub frames: Vec<Frame>,
    pub slice_thickness: Option<f64>,
    /// Whether rescale attributes were absent (identity assumed).
    pub rescale_missing: bool,
}

/// Why a DICOM object is no CT image a3d reads (skipped, with this note).
pub(super) enum Kind {
    Image(Box<Header>),
    Skipped(String),
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Result<Option<Vec<f64>>, String> {
    let Some(e) = obj.get(tag) else {
        return Ok(None);
    };
    let v = e
        .to_multi_float64()
        .map_err(|err| format!("{} {tag}: {err}", name(tag)))?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(format!("{} {tag} = {v:?} is not finite", name(tag)));
    }
    Ok(Some(v))
}

fn fixed<const N: usize>(obj: &InMemDicomObject, tag: Tag) -> Result<Option<[f64; N]>, String> {
    match floats(obj, tag)? {
        None => Ok(None),
        Some(v) => <[f64; N]>::try_from(v.as_slice())
            .map(Some)
            .map_err(|_| format!("{} {tag} has {} values, not {N}", name(tag), v.len())),
    }
}

fn name(tag: Tag) -> &'static str {
    match tag {
        tags::IMAGE_POSITION_PATIENT => "ImagePositionPatient",
        tags::IMAGE_ORIENTATION_PATIENT => "ImageOrientationPatient",
        tags::PIXEL_SPACING => "PixelSpacing",
        tags::RESCALE_SLOPE => "RescaleSlope",
        tags::RESCALE_INTERCEPT => "RescaleIntercept",
        tags::SLICE_THICKNESS => "SliceThickness",
        tags::SPACING_BETWEEN_SLICES => "SpacingBetweenSlices",
        _ => "attribute",
    }
}

/// The first item of sequence `seq` in `obj`.
fn first_item(obj: &InMemDicomObject, seq: Tag) -> Option<&InMemDicomObject> {
    obj.get(seq)?.items()?.first()
}

/// Where a frame's attribute lives: the frame's own functional group, the shared one, then the
/// top level (single-frame images).
struct Groups<'a> {
    root: &'a InMemDicomObject,
    shared: Option<&'a InMemDicomObject>,
    frame: Option<&'a InMemDicomObject>,
}

impl Groups<'_> {
    fn fixed<const N: usize>(&self, seq: Tag, tag: Tag) -> Result<Option<[f64; N]>, String> {
        for group in [self.frame, self.shared].into_iter().flatten() {
            if let Some(item) = first_item(group, seq) {
                if let Some(v) = fixed::<N>(item, tag)? {
                    return Ok(Some(v));
                }
            }
        }
        fixed::<N>(self.root, tag)
    }
}

/// The header of an opened object, or why it is skipped.
pub(super) fn read(path: &Path, obj: &DefaultDicomObject, layout: Layout) -> Result<Kind, String> {
    let modality = text(obj, tags::MODALITY).unwrap_or_default();
    let sop_class = obj
        .meta()
        .media_storage_sop_class_uid()
        .trim_end_matches('\0');
    if obj.get(tags::ROWS).is_none() || obj.get(tags::COLUMNS).is_none() {
        return Ok(Kind::Skipped(format!(
            "no image (SOP class {sop_class}, modality {})",
            if modality.is_empty() {
                "none"
            } else {
                &modality
            }
        )));
    }
    if modality != "CT" {
        return Ok(Kind::Skipped(format!(
            "modality {}, not CT",
            if modality.is_empty() {
                "none"
            } else {
                &modality
            }
        )));
    }
    let image_type = text(obj, tags::IMAGE_TYPE).unwrap_or_default();
    if image_type.split('\\').any(|t| t.trim() == "LOCALIZER") {
        return Ok(Kind::Skipped("a localizer (scout) image".into()));
    }
    let int = |tag: Tag, what: &str| -> Result<Option<u32>, String> {
        obj.get(tag)
            .map(|e| e.to_int::<u32>().map_err(|err| format!("{what}: {err}")))
            .transpose()
    };
    let samples = int(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?.unwrap_or(1);
    if samples != 1 {
        return Ok(Kind::Skipped(format!(
            "{samples} samples per pixel: a colour picture (secondary capture), not HU"
        )));
    }
    let rows = int(tags::ROWS, "Rows")?.unwrap_or(0);
    let columns = int(tags::COLUMNS, "Columns")?.unwrap_or(0);
    let n_frames = match obj.get(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(e) => e
            .to_int::<u32>()
            .map_err(|err| format!("NumberOfFrames: {err}"))?,
    };
    if n_frames == 0 {
        return Err("NumberOfFrames is 0".into());
    }
    let per_frame = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items());
    if let Some(items) = per_frame {
        if items.len() != n_frames as usize {
            return Err(format!(
                "{} per-frame functional groups for {n_frames} frames",
                items.len()
            ));
        }
    }
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let slice_thickness = Groups {
        root: obj,
        shared,
        frame: None,
    }
    .fixed::<1>(tags::PIXEL_MEASURES_SEQUENCE, tags::SLICE_THICKNESS)?
    .map(|[t]| t);
    let spacing_between = fixed::<1>(obj, tags::SPACING_BETWEEN_SLICES)?.map(|[t]| t);
    let mut frames = Vec::with_capacity(n_frames.min(4096) as usize);
    let mut rescale_missing = false;
    for f in 0..n_frames as usize {
        let g = Groups {
            root: obj,
            shared,
            frame: per_frame.map(|items| &items[f]),
        };
        let orientation = g
            .fixed::<6>(
                tags::PLANE_ORIENTATION_SEQUENCE,
                tags::IMAGE_ORIENTATION_PATIENT,
            )?
            .ok_or("no ImageOrientationPatient")?;
        let pixel_spacing = g
            .fixed::<2>(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING)?
            .ok_or("no PixelSpacing")?;
        if pixel_spacing.iter().any(|s| *s <= 0.0) {
            return Err(format!("PixelSpacing {pixel_spacing:?} must be positive"));
        }
        let mut position = g
            .fixed::<3>(tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT)?
            .ok_or("no ImagePositionPatient")?;
        if n_frames > 1 && per_frame.is_none() {
            // A multi-frame image without per-frame positions: frames are evenly spaced along
            // the normal from the one position given.
            let step = spacing_between
                .ok_or("several frames without per-frame positions or SpacingBetweenSlices")?;
            let n = normal(&orientation);
            for (p, d) in position.iter_mut().zip(n) {
                *p += d * step * f as f64;
            }
        }
        let slope = g.fixed::<1>(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            tags::RESCALE_SLOPE,
        )?;
        let intercept = g.fixed::<1>(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            tags::RESCALE_INTERCEPT,
        )?;
        rescale_missing |= slope.is_none() || intercept.is_none();
        let rescale = (slope.map_or(1.0, |[s]| s), intercept.map_or(0.0, |[i]| i));
        if rescale.0 == 0.0 {
            return Err("RescaleSlope is 0".into());
        }
        frames.push(Frame {
            position,
            orientation,
            pixel_spacing,
            rescale,
        });
    }
    Ok(Kind::Image(Box::new(Header {
        path: path.to_path_buf(),
        layout,
        transfer_syntax: obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string(),
        series_uid: text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        series_description: text(obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        rows,
        columns,
        frames,
        slice_thickness,
        rescale_missing,
    })))
}

/// The unit normal of an ImageOrientationPatient (row direction x column direction).
pub(super) fn normal(o: &[f64; 6]) -> [f64; 3] {
    let (r, c) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let n = [
        r[1] * c[2] - r[2] * c[1],
        r[2] * c[0] - r[0] * c[2],
        r[0] * c[1] - r[1] * c[0],
    ];
    let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    n.map(|v| v / len)
}
