//! DICOM CT series through dicom-rs, for tests and benchmarks: one file per slice (CT Image
//! Storage) or one enhanced multi-frame file, in a chosen transfer syntax and file layout.

use super::Layout;
use crate::{Error, Result, Volume};
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::{entries, TransferSyntaxRegistry};
use std::io::Write;
use std::path::{Path, PathBuf};

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const ENHANCED_CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";

/// The uncompressed transfer syntaxes the writer produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DicomSyntax {
    /// 1.2.840.10008.1.2 (the default of DICOM and of many archives).
    ImplicitVrLittleEndian,
    /// 1.2.840.10008.1.2.1.
    ExplicitVrLittleEndian,
    /// 1.2.840.10008.1.2.2 (retired, still met in old archives).
    ExplicitVrBigEndian,
    /// 1.2.840.10008.1.2.1.99 (deflate-compressed data set).
    DeflatedExplicitVrLittleEndian,
}

impl DicomSyntax {
    fn uid(self) -> &'static str {
        match self {
            DicomSyntax::ImplicitVrLittleEndian => entries::IMPLICIT_VR_LITTLE_ENDIAN.uid(),
            DicomSyntax::ExplicitVrLittleEndian => entries::EXPLICIT_VR_LITTLE_ENDIAN.uid(),
            DicomSyntax::ExplicitVrBigEndian => entries::EXPLICIT_VR_BIG_ENDIAN.uid(),
            DicomSyntax::DeflatedExplicitVrLittleEndian => {
                entries::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.uid()
            }
        }
    }
}

/// How [`write_dicom_series`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomWriteOptions {
    /// SeriesInstanceUID (and the stem of every other UID).
    pub series_uid: String,
    /// SeriesDescription.
    pub description: String,
    /// The transfer syntax.
    pub syntax: DicomSyntax,
    /// Standard, without preamble, or a bare data set (only with implicit VR little endian,
    /// the syntax a reader must then assume).
    pub layout: Layout,
    /// One enhanced CT file with per-frame functional groups instead of a file per slice.
    pub multi_frame: bool,
    /// Stored value = (HU - intercept) / slope, rounded, as signed (true) or unsigned 16 bits.
    pub rescale: (f64, f64),
    /// Stored values signed.
    pub signed: bool,
    /// Name the files and number the instances in a scrambled order, so that only the
    /// positions give the slice order.
    pub scramble_names: bool,
}

impl Default for DicomWriteOptions {
    fn default() -> Self {
        DicomWriteOptions {
            series_uid: "1.2.826.0.1.3680043.10.1443.1".into(),
            description: "a3d test series".into(),
            syntax: DicomSyntax::ExplicitVrLittleEndian,
            layout: Layout::Standard,
            multi_frame: false,
            rescale: (1.0, -1024.0),
            signed: false,
            scramble_names: false,
        }
    }
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, value.into()));
}

fn ds(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| {
            // DS holds at most 16 characters.
            let s = format!("{v:.6}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            s.to_string()
        })
        .collect::<Vec<_>>()
        .join("\\")
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

fn item(f: impl FnOnce(&mut InMemDicomObject)) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    f(&mut o);
    o
}

/// Writes `volume` (a3d's orientation; its origin and directions when set, else an axial
/// series at the origin) as a DICOM CT series into `dir` (created if missing): `slice_NNNN.dcm`
/// files, or `enhanced.dcm`. Each file is written beside its name and renamed into place.
/// Returns the files written.
pub fn write_dicom_series(
    dir: &Path,
    volume: &Volume,
    options: &DicomWriteOptions,
) -> Result<Vec<PathBuf>> {
    let [z, h, w] = volume.shape;
    if z == 0 || h == 0 || w == 0 || h > u16::MAX as usize || w > u16::MAX as usize {
        return Err(Error::Argument {
            arg: "volume",
            problem: format!("shape {:?} cannot be written as DICOM", volume.shape),
        });
    }
    if options.layout == Layout::NoMeta && options.syntax != DicomSyntax::ImplicitVrLittleEndian {
        return Err(Error::Argument {
            arg: "options.layout",
            problem: "a bare data set is only readable as implicit VR little endian".into(),
        });
    }
    let (slope, intercept) = options.rescale;
    if !(slope.is_finite() && slope != 0.0 && intercept.is_finite()) {
        return Err(Error::Argument {
            arg: "options.rescale",
            problem: format!("slope {slope}, intercept {intercept}"),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let dirs = volume
        .direction
        .unwrap_or([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    let origin = volume.origin.unwrap_or([0.0; 3]);
    let orientation = [
        dirs[0][0], dirs[0][1], dirs[0][2], dirs[1][0], dirs[1][1], dirs[1][2],
    ];
    let position = |k: usize| -> [f64; 3] {
        std::array::from_fn(|a| origin[a] + dirs[2][a] * volume.spacing[0] * k as f64)
    };
    let plane = h * w;
    // 16-bit words (not bytes), so that a big-endian syntax swaps them.
    let stored = |k: usize| -> Vec<u16> {
        volume.hu[k * plane..(k + 1) * plane]
            .iter()
            .map(|&v| {
                let s = ((v as f64 - intercept) / slope).round();
                if options.signed {
                    s.clamp(i16::MIN as f64, i16::MAX as f64) as i16 as u16
                } else {
                    s.clamp(0.0, u16::MAX as f64) as u16
                }
            })
            .collect()
    };
    let uid = &options.series_uid;
    let common = |obj: &mut InMemDicomObject, sop_class: &str, sop_instance: &str| {
        put(obj, tags::SOP_CLASS_UID, VR::UI, sop_class);
        put(obj, tags::SOP_INSTANCE_UID, VR::UI, sop_instance);
        put(obj, tags::MODALITY, VR::CS, "CT");
        put(obj, tags::PATIENT_NAME, VR::PN, "a3d^test");
        put(obj, tags::PATIENT_ID, VR::LO, "a3d-test");
        put(obj, tags::STUDY_INSTANCE_UID, VR::UI, format!("{uid}.0"));
        put(obj, tags::SERIES_INSTANCE_UID, VR::UI, uid.as_str());
        put(
            obj,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            format!("{uid}.9"),
        );
        put(
            obj,
            tags::SERIES_DESCRIPTION,
            VR::LO,
            options.description.as_str(),
        );
        put(obj, tags::SERIES_NUMBER, VR::IS, "1");
        put(
            obj,
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(1u16),
        );
        put(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
        put(obj, tags::ROWS, VR::US, PrimitiveValue::from(h as u16));
        put(obj, tags::COLUMNS, VR::US, PrimitiveValue::from(w as u16));
        put(
            obj,
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(16u16),
        );
        put(obj, tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
        put(obj, tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
        put(
            obj,
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(u16::from(options.signed)),
        );
    };
    let pixel_spacing = ds(&[volume.spacing[1], volume.spacing[2]]);
    let rescale = (ds(&[slope]), ds(&[intercept]));
    let mut written = Vec::new();
    if options.multi_frame {
        let sop = format!("{uid}.1");
        let mut obj = InMemDicomObject::new_empty();
        common(&mut obj, ENHANCED_CT_IMAGE_STORAGE, &sop);
        put(
            &mut obj,
            tags::IMAGE_TYPE,
            VR::CS,
            "ORIGINAL\\PRIMARY\\AXIAL\\NONE",
        );
        put(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, z.to_string());
        let shared = item(|s| {
            s.put(sequence(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![item(|m| {
                    put(m, tags::PIXEL_SPACING, VR::DS, pixel_spacing.as_str());
                    put(m, tags::SLICE_THICKNESS, VR::DS, ds(&[volume.spacing[0]]));
                })],
            ));
            s.put(sequence(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![item(|m| {
                    put(m, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&orientation))
                })],
            ));
            s.put(sequence(
                tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                vec![item(|m| {
                    put(m, tags::RESCALE_INTERCEPT, VR::DS, rescale.1.as_str());
                    put(m, tags::RESCALE_SLOPE, VR::DS, rescale.0.as_str());
                    put(m, tags::RESCALE_TYPE, VR::LO, "HU");
                })],
            ));
        });
        obj.put(sequence(
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![shared],
        ));
        let order = frame_order(z, options.scramble_names);
        let per_frame = order
            .iter()
            .map(|&k| {
                item(|f| {
                    f.put(sequence(
                        tags::PLANE_POSITION_SEQUENCE,
                        vec![item(|m| {
                            put(m, tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&position(k)))
                        })],
                    ));
                })
            })
            .collect();
        obj.put(sequence(
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            per_frame,
        ));
        let pixels: Vec<u16> = order.iter().flat_map(|&k| stored(k)).collect();
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        let path = dir.join("enhanced.dcm");
        write_object(&path, obj, ENHANCED_CT_IMAGE_STORAGE, &sop, options)?;
        written.push(path);
        return Ok(written);
    }
    for (file, k) in frame_order(z, options.scramble_names)
        .into_iter()
        .enumerate()
    {
        let sop = format!("{uid}.{}", k + 1);
        let mut obj = InMemDicomObject::new_empty();
        common(&mut obj, CT_IMAGE_STORAGE, &sop);
        put(
            &mut obj,
            tags::IMAGE_TYPE,
            VR::CS,
            "ORIGINAL\\PRIMARY\\AXIAL",
        );
        put(
            &mut obj,
            tags::INSTANCE_NUMBER,
            VR::IS,
            (file + 1).to_string(),
        );
        put(
            &mut obj,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            ds(&position(k)),
        );
        put(
            &mut obj,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            ds(&orientation),
        );
        put(
            &mut obj,
            tags::SLICE_THICKNESS,
            VR::DS,
            ds(&[volume.spacing[0]]),
        );
        put(
            &mut obj,
            tags::PIXEL_SPACING,
            VR::DS,
            pixel_spacing.as_str(),
        );
        put(
            &mut obj,
            tags::RESCALE_INTERCEPT,
            VR::DS,
            rescale.1.as_str(),
        );
        put(&mut obj, tags::RESCALE_SLOPE, VR::DS, rescale.0.as_str());
        put(&mut obj, tags::RESCALE_TYPE, VR::LO, "HU");
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(stored(k).into()),
        ));
        let path = dir.join(format!("slice_{:04}.dcm", file));
        write_object(&path, obj, CT_IMAGE_STORAGE, &sop, options)?;
        written.push(path);
    }
    Ok(written)
}

/// Slice indices in file order: ascending, or a fixed scramble (a stride coprime to `n`).
fn frame_order(n: usize, scramble: bool) -> Vec<usize> {
    if !scramble || n < 3 {
        return (0..n).collect();
    }
    let stride = (n / 2 + 1..n).find(|s| gcd(*s, n) == 1).unwrap_or(1);
    (0..n).map(|i| (i * stride + n / 3) % n).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn write_object(
    path: &Path,
    obj: InMemDicomObject,
    sop_class: &str,
    sop_instance: &str,
    options: &DicomWriteOptions,
) -> Result<()> {
    let fail = |e: String| Error::invalid(path, format!("writing DICOM: {e}"));
    let ts_uid = options.syntax.uid();
    let tmp = path.with_extension("dcm.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut out = std::io::BufWriter::new(file);
    if options.layout == Layout::NoMeta {
        let ts = TransferSyntaxRegistry
            .get(ts_uid)
            .ok_or_else(|| fail(format!("transfer syntax {ts_uid} not registered")))?;
        obj.write_dataset_with_ts(&mut out, ts)
            .map_err(|e| fail(e.to_string()))?;
    } else {
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax(ts_uid)
            .media_storage_sop_class_uid(sop_class)
            .media_storage_sop_instance_uid(sop_instance);
        let file_obj = obj.with_meta(meta).map_err(|e| fail(e.to_string()))?;
        if options.layout == Layout::Standard {
            out.write_all(&[0u8; 128]).map_err(|e| Error::io(&tmp, e))?;
        }
        out.write_all(b"DICM").map_err(|e| Error::io(&tmp, e))?;
        file_obj
            .write_meta(&mut out)
            .map_err(|e| fail(e.to_string()))?;
        file_obj
            .write_dataset(&mut out)
            .map_err(|e| fail(e.to_string()))?;
    }
    out.flush().map_err(|e| Error::io(&tmp, e))?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
