//! Writers for DeepLesion-format data: 16-bit slices and `DL_info.csv`, for tests, the CLI's
//! examples and the synthetic benchmark. Files are written to a temporary name and renamed, so
//! an interrupted write never leaves a half file under the final name.

use crate::deeplesion::{Lesion, COLUMNS};
use crate::png_slice::HU_OFFSET;
use crate::{Error, Result};
use std::path::Path;

pub use crate::dicom::write::{write_dicom_series, DicomSyntax, DicomWriteOptions};

/// Writes `bytes` through `path.tmp` then a rename.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut out = std::io::BufWriter::new(file);
    write(&mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A DeepLesion slice: 16-bit grey PNG of `round(hu + 32768)` (clamped to 0..=65535).
pub fn write_hu_png(path: &Path, width: usize, height: usize, hu: &[f32]) -> Result<()> {
    if hu.len() != width * height || width == 0 || height == 0 {
        return Err(Error::Argument {
            arg: "hu",
            problem: format!("{} values for {width} x {height}", hu.len()),
        });
    }
    let bytes: Vec<u8> = hu
        .iter()
        .flat_map(|v| ((v + HU_OFFSET).round().clamp(0.0, 65535.0) as u16).to_be_bytes())
        .collect();
    write_atomic(path, |out| {
        let mut enc = png::Encoder::new(out, width as u32, height as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Sixteen);
        let png_err = |e: png::EncodingError| Error::invalid(path, format!("PNG encoding: {e}"));
        let mut w = enc.write_header().map_err(png_err)?;
        w.write_image_data(&bytes).map_err(png_err)?;
        w.finish().map_err(png_err)
    })
}

fn join(v: &[f32]) -> String {
    v.iter()
        .map(|x| format!("{x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `DL_info.csv` with every column, coordinates written 1-based (the file's convention) from the
/// 0-based values of [`Lesion`].
pub fn write_dl_info(path: &Path, lesions: &[Lesion]) -> Result<()> {
    write_atomic(path, |out| {
        let mut w = csv::Writer::from_writer(out);
        let csv_err = |e: csv::Error| Error::invalid(path, format!("CSV: {e}"));
        w.write_record(COLUMNS).map_err(csv_err)?;
        for l in lesions {
            let plus = |v: &[f32]| v.iter().map(|x| x + 1.0).collect::<Vec<f32>>();
            let record = [
                l.file_name.clone(),
                l.patient.to_string(),
                l.study.to_string(),
                l.series.to_string(),
                l.key_slice.to_string(),
                join(&plus(&l.recist)),
                join(&plus(&l.bbox)),
                join(&l.diameters_px),
                join(&l.location),
                l.coarse_type.to_string(),
                u8::from(l.noisy).to_string(),
                format!("{}, {}", l.slice_range[0], l.slice_range[1]),
                join(&l.spacing),
                format!("{}, {}", l.image_size[0], l.image_size[1]),
                join(&l.dicom_window),
                l.gender.clone(),
                l.age.map_or_else(|| "NaN".into(), |a| a.to_string()),
                l.split.code().to_string(),
            ];
            w.write_record(&record).map_err(csv_err)?;
        }
        w.flush().map_err(|e| Error::io(path, e))
    })
}

/// A NIfTI-1 volume (`.nii` or `.nii.gz`) of `volume`'s HU as f32, with an sform placing it in
/// a3d's orientation (columns to the patient's left, rows to posterior, slices to superior) at
/// the volume's spacing and origin (LPS; zero when unknown), written through the `nifti` crate.
pub fn write_nifti(path: &Path, volume: &crate::Volume) -> Result<()> {
    let [nz, ny, nx] = volume.shape;
    let [sz, sy, sx] = volume.spacing;
    let o = volume.origin.unwrap_or([0.0; 3]);
    // RAS rows of the voxel-to-world map: i (columns) runs to -x, j (rows) to -y, k to +z.
    let header = nifti::NiftiHeader {
        pixdim: [1.0, sx as f32, sy as f32, sz as f32, 1.0, 1.0, 1.0, 1.0],
        qform_code: 0,
        sform_code: 1,
        srow_x: [-(sx as f32), 0.0, 0.0, -(o[0] as f32)],
        srow_y: [0.0, -(sy as f32), 0.0, -(o[1] as f32)],
        srow_z: [0.0, 0.0, sz as f32, o[2] as f32],
        ..nifti::NiftiHeader::default()
    };
    let arr =
        ndarray::Array3::from_shape_fn((nx, ny, nz), |(i, j, k)| volume.hu[(k * ny + j) * nx + i]);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // The crate picks compression from the name: write to a temporary name with the same
    // ending, then rename.
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("volume.nii");
    let tmp = path.with_file_name(format!(".tmp-{name}"));
    nifti::writer::WriterOptions::new(&tmp)
        .reference_header(&header)
        .write_nifti(&arr)
        .map_err(|e| Error::invalid(&tmp, format!("NIfTI writing: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
