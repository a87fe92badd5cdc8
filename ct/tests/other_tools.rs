//! Files written by other tools (scripts/ct_fixtures.py: pydicom, GDCM, nibabel) read as the
//! HU pattern they hold, or fail with an error naming what is unsupported.

use a3d_ct::dicom::{read_dicom, DicomOptions, Layout};
use a3d_ct::nifti::read_nifti;
use a3d_ct::{Limits, Volume};
use std::path::PathBuf;

const SHAPE: [usize; 3] = [3, 20, 24];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check_pattern(v: &Volume, what: &str) {
    assert_eq!(v.shape, SHAPE, "{what}");
    for z in 0..SHAPE[0] {
        for y in 0..SHAPE[1] {
            for x in 0..SHAPE[2] {
                let want = ((37 * x + 11 * y + 101 * z) % 3000) as f32 - 1024.0;
                let got = v.hu[(z * SHAPE[1] + y) * SHAPE[2] + x];
                assert_eq!(got, want, "{what} at z {z} y {y} x {x}");
            }
        }
    }
    for (a, b) in v.spacing.iter().zip([2.5, 0.75, 0.7]) {
        assert!((a - b).abs() < 1e-5, "{what}: spacing {:?}", v.spacing);
    }
    let o = v.origin.unwrap();
    for (a, b) in o.iter().zip([-8.4, -7.5, -100.0]) {
        assert!((a - b).abs() < 1e-3, "{what}: origin {o:?}");
    }
}

#[test]
fn dicom_from_pydicom_and_gdcm() {
    for (name, ts, layout) in [
        (
            "pydicom_implicit_le_signed",
            "1.2.840.10008.1.2",
            Layout::Standard,
        ),
        (
            "pydicom_explicit_be",
            "1.2.840.10008.1.2.2",
            Layout::Standard,
        ),
        ("pydicom_no_meta", "1.2.840.10008.1.2", Layout::NoMeta),
        ("pydicom_12bit", "1.2.840.10008.1.2.1", Layout::Standard),
        ("pydicom_rle", "1.2.840.10008.1.2.5", Layout::Standard),
        (
            "gdcm_jpeg_lossless",
            "1.2.840.10008.1.2.4.70",
            Layout::Standard,
        ),
        (
            "gdcm_jpeg2000_lossless",
            "1.2.840.10008.1.2.4.90",
            Layout::Standard,
        ),
    ] {
        let (v, info) = read_dicom(&fixture(&format!("dicom/{name}")), &DicomOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check_pattern(&v, name);
        assert_eq!(info.transfer_syntaxes.len(), 1, "{name}");
        assert_eq!(info.transfer_syntaxes[0].0, ts, "{name}");
        assert_eq!(info.layouts, vec![layout], "{name}");
        assert!((info.slice_interval_mm - 2.5).abs() < 1e-6);
    }
}

#[test]
fn undecodable_syntax_is_named() {
    let dir = fixture("dicom/gdcm_jpegls_lossless");
    let err = read_dicom(&dir, &DicomOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("1.2.840.10008.1.2.4.80"), "{err}");
    assert!(err.contains("IM000"), "{err}");
}

#[test]
fn nifti_from_nibabel_and_fsl() {
    for name in ["nibabel_float32.nii.gz", "fsl_int16_scaled.nii.gz"] {
        let (v, _) = read_nifti(&fixture(&format!("nifti/{name}")), &Limits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check_pattern(&v, name);
    }
}

#[test]
fn nifti2_is_refused_by_name() {
    let err = read_nifti(&fixture("nifti/nibabel_nifti2.nii"), &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("NIfTI-2"), "{err}");
}
