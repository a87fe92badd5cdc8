//! NIfTI-1 volumes (`.nii`, `.nii.gz`) through the `nifti` crate, reoriented to a3d's fixed
//! axial orientation:
//!
//! - slices (axis 0) from inferior to superior,
//! - rows (axis 1) from anterior to posterior (anterior at the top of an image),
//! - columns (axis 2) from the patient's right to left (the radiological display DeepLesion's
//!   slices and DICOM's axial images use).
//!
//! The orientation comes from the sform when its code is set, else from the qform, else (method
//! 1, no orientation) the stored axes are taken as already in that orientation. Each voxel axis
//! is mapped to the patient axis it runs closest to (permutations and flips, no resampling); an
//! oblique volume is snapped to it and [`NiftiInfo::obliquity_deg`] says by how much. Values are
//! scaled by `scl_slope` / `scl_inter` (the crate applies them when the slope is non-zero). The
//! header is read and checked against [`Limits`] before the voxels are.

use crate::orientation::{axis_map, reorient, AffineLps};
use crate::{Error, Limits, Result, Volume};
use nifti::{IntoNdArray, NiftiHeader, NiftiObject, ReaderOptions};
use std::path::Path;

/// What the header said, for `a3d inspect` and callers that want to know.
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiInfo {
    /// `dim[1..=3]`: the stored voxel counts along the file's i, j, k axes.
    pub stored_dims: [usize; 3],
    /// Which transform gave the orientation: `sform`, `qform` or `none`.
    pub transform: &'static str,
    /// For each output axis (slices, rows, columns): the stored axis it came from and whether
    /// it was flipped.
    pub axis_map: [(usize, bool); 3],
    /// The largest angle (degrees) between a stored axis and the patient axis it was mapped to.
    pub obliquity_deg: f64,
    /// `scl_slope`, `scl_inter`.
    pub scaling: (f32, f32),
}

/// Reads a NIfTI-1 volume as HU in a3d's orientation.
pub fn read_nifti(path: &Path, limits: &Limits) -> Result<(Volume, NiftiInfo)> {
    let bad = |problem: String| Error::invalid(path, problem);
    let header = NiftiHeader::from_file(path).map_err(|e| match header_size(path) {
        Some(540) => bad(
            "a NIfTI-2 header (sizeof_hdr 540): a3d reads NIfTI-1 only (the nifti crate has no \
             NIfTI-2 reader); save it as NIfTI-1, e.g. nibabel's Nifti1Image"
                .into(),
        ),
        _ => bad(format!("not a readable NIfTI-1 header: {e}")),
    })?;
    let nd = header.dim[0] as usize;
    if !(3..=7).contains(&nd) || header.dim[4..=nd].iter().any(|&d| d > 1) {
        return Err(bad(format!(
            "dim = {:?}: a3d reads 3-D volumes (a 4th dimension of size 1 is allowed)",
            &header.dim[..=nd.min(7)]
        )));
    }
    let dims = [
        header.dim[1] as usize,
        header.dim[2] as usize,
        header.dim[3] as usize,
    ];
    if dims.contains(&0) {
        return Err(bad(format!("dim = {dims:?} has a zero")));
    }
    limits.check(path, dims[0] as u64, dims[1] as u64, dims[2] as u64)?;
    let pix = [
        header.pixdim[1] as f64,
        header.pixdim[2] as f64,
        header.pixdim[3] as f64,
    ];
    if pix.iter().any(|p| !(p.is_finite() && p.abs() > 0.0)) {
        return Err(bad(format!(
            "pixdim {pix:?}: voxel sizes must be finite and non-zero"
        )));
    }
    // The voxel type: scalar only, and bitpix consistent with it (the crate sizes the read by
    // bitpix and converts by datatype; a mismatch would otherwise reach an assertion inside it).
    use nifti::NiftiType as T;
    let datatype = header
        .data_type()
        .map_err(|e| bad(format!("datatype {}: {e}", header.datatype)))?;
    if !matches!(
        datatype,
        T::Uint8
            | T::Int8
            | T::Uint16
            | T::Int16
            | T::Uint32
            | T::Int32
            | T::Uint64
            | T::Int64
            | T::Float32
            | T::Float64
    ) {
        return Err(bad(format!(
            "datatype {datatype:?}: a CT volume needs scalar voxels"
        )));
    }
    if header.bitpix as usize != 8 * datatype.size_of() {
        return Err(bad(format!(
            "bitpix {} does not match datatype {datatype:?} ({} bits)",
            header.bitpix,
            8 * datatype.size_of()
        )));
    }
    if !header.scl_slope.is_finite() || !header.scl_inter.is_finite() {
        return Err(bad(format!(
            "scl_slope {} / scl_inter {} must be finite",
            header.scl_slope, header.scl_inter
        )));
    }
    let (ras, transform) = affine(&header, pix);
    // RAS to DICOM's LPS: x and y change sign.
    let lps: AffineLps = [ras[0].map(|v| -v), ras[1].map(|v| -v), ras[2]];
    // The orientation is checked before the voxels are read.
    axis_map(&lps).map_err(bad)?;
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| bad(format!("reading the voxels: {e}")))?;
    let volume = obj.into_volume();
    let expected_bytes = dims.iter().product::<usize>() * datatype.size_of();
    if volume.raw_data().len() != expected_bytes {
        return Err(bad(format!(
            "{} bytes of voxels, the header's dims and datatype need {expected_bytes}",
            volume.raw_data().len()
        )));
    }
    // Defence in depth: a panic inside the third-party conversion becomes this file's error.
    let arr = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        volume.into_ndarray::<f32>()
    }))
    .map_err(|_| bad("the nifti crate failed to convert the voxels".into()))?
    .map_err(|e| bad(format!("converting the voxels: {e}")))?;
    let stored = arr
        .as_slice_memory_order()
        .ok_or_else(|| bad("voxels not contiguous".into()))?;
    let n = dims[0] * dims[1] * dims[2];
    if stored.len() != n {
        return Err(bad(format!("{} voxels for dim {dims:?}", stored.len())));
    }
    let (volume, map) = reorient(stored, dims, &lps).map_err(bad)?;
    Ok((
        volume,
        NiftiInfo {
            stored_dims: dims,
            transform,
            axis_map: map.axes,
            obliquity_deg: map.obliquity_deg,
            scaling: (header.scl_slope, header.scl_inter),
        },
    ))
}

/// `sizeof_hdr` (either byte order) of a plain or gzipped file, to tell NIfTI-2 apart.
fn header_size(path: &Path) -> Option<i32> {
    use std::io::Read;
    let mut raw = [0u8; 4];
    let mut file = std::fs::File::open(path).ok()?;
    file.read_exact(&mut raw).ok()?;
    if raw[..2] == [0x1f, 0x8b] {
        let file = std::fs::File::open(path).ok()?;
        flate2::read::GzDecoder::new(file)
            .read_exact(&mut raw)
            .ok()?;
    }
    let le = i32::from_le_bytes(raw);
    Some(if le == 348 || le == 540 {
        le
    } else {
        i32::from_be_bytes(raw)
    })
}

/// The voxel-to-RAS affine (3 x 4) and which transform it came from.
fn affine(h: &NiftiHeader, pix: [f64; 3]) -> ([[f64; 4]; 3], &'static str) {
    if h.sform_code > 0 {
        let row = |r: [f32; 4]| r.map(|v| v as f64);
        return ([row(h.srow_x), row(h.srow_y), row(h.srow_z)], "sform");
    }
    if h.qform_code > 0 {
        let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let scale = [pix[0].abs(), pix[1].abs(), qfac * pix[2].abs()];
        let off = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
        let m = std::array::from_fn(|i| {
            [
                r[i][0] * scale[0],
                r[i][1] * scale[1],
                r[i][2] * scale[2],
                off[i],
            ]
        });
        return (m, "qform");
    }
    // Method 1: no orientation. The stored axes are taken as a3d's (columns to the patient's
    // left, rows to posterior, slices to superior), i.e. RAS (-x, -y, +z).
    (
        [
            [-pix[0].abs(), 0.0, 0.0, 0.0],
            [0.0, -pix[1].abs(), 0.0, 0.0],
            [0.0, 0.0, pix[2].abs(), 0.0],
        ],
        "none",
    )
}
