//! NIfTI-1 volumes written with the `nifti` crate (the way nibabel-style tools lay them out:
//! sform, qform, method 1; plain and gzipped) read back in a3d's orientation, with scaling, and
//! refused with typed errors when they cannot be read as a 3-D CT.

use a3d_ct::nifti::read_nifti;
use a3d_ct::{Error, Limits};
use ndarray::Array3;
use nifti::writer::WriterOptions;
use nifti::NiftiHeader;
use std::path::Path;

const N: (usize, usize, usize) = (5, 4, 3);

fn value(i: usize, j: usize, k: usize) -> f32 {
    (i + 10 * j + 100 * k) as f32
}

fn write(path: &Path, header: &NiftiHeader) {
    let arr = Array3::from_shape_fn(N, |(i, j, k)| value(i, j, k));
    WriterOptions::new(path)
        .reference_header(header)
        .write_nifti(&arr)
        .unwrap();
}

fn sform(rows: [[f32; 4]; 3]) -> NiftiHeader {
    NiftiHeader {
        pixdim: [1.0, 0.7, 0.8, 2.5, 1.0, 1.0, 1.0, 1.0],
        sform_code: 1,
        srow_x: rows[0],
        srow_y: rows[1],
        srow_z: rows[2],
        ..NiftiHeader::default()
    }
}

/// `out[z][y][x]` for a reader that is right: `f(z, y, x)` gives the stored (i, j, k).
fn check(
    path: &Path,
    shape: [usize; 3],
    stored: impl Fn(usize, usize, usize) -> (usize, usize, usize),
) -> a3d_ct::Volume {
    let (v, info) = read_nifti(path, &Limits::default()).unwrap();
    assert_eq!(v.shape, shape, "{info:?}");
    for z in 0..shape[0] {
        for y in 0..shape[1] {
            for x in 0..shape[2] {
                let (i, j, k) = stored(z, y, x);
                assert_eq!(
                    v.hu[(z * shape[1] + y) * shape[2] + x],
                    value(i, j, k),
                    "({z}, {y}, {x}) {info:?}"
                );
            }
        }
    }
    v
}

#[test]
fn every_orientation_becomes_a3ds() {
    let dir = tempfile::tempdir().unwrap();
    let (nx, ny, _) = N;
    // RAS-stored (nibabel's canonical): columns and rows flip.
    let p = dir.path().join("ras.nii");
    write(
        &p,
        &sform([
            [0.7, 0.0, 0.0, 10.0],
            [0.0, 0.8, 0.0, 20.0],
            [0.0, 0.0, 2.5, 30.0],
        ]),
    );
    let v = check(&p, [3, 4, 5], |z, y, x| (nx - 1 - x, ny - 1 - y, z));
    assert_eq!(v.spacing, [2.5, 0.800000011920929, 0.699999988079071]);
    // Origin (LPS) of the first output voxel: stored (4, 3, 0) = RAS (12.8, 22.4, 30).
    let o = v.origin.unwrap();
    assert!(
        (o[0] + 12.8).abs() < 1e-4 && (o[1] + 22.4).abs() < 1e-4 && (o[2] - 30.0).abs() < 1e-4,
        "{o:?}"
    );
    // LPS-stored (DICOM-like), gzipped: no flips.
    let p = dir.path().join("lps.nii.gz");
    write(
        &p,
        &sform([
            [-0.7, 0.0, 0.0, 0.0],
            [0.0, -0.8, 0.0, 0.0],
            [0.0, 0.0, 2.5, 0.0],
        ]),
    );
    check(&p, [3, 4, 5], |z, y, x| (x, y, z));
    // Sagittal storage: i runs anterior->posterior... i -> -y, j -> +z, k -> -x (a permutation).
    let p = dir.path().join("sagittal.nii");
    write(
        &p,
        &sform([
            [0.0, 0.0, -1.0, 0.0],
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
        ]),
    );
    // slices come from j (4), rows from i (5), columns from k (3).
    check(&p, [4, 5, 3], |z, y, x| (y, z, x));
    // A slightly oblique volume snaps and says so.
    let p = dir.path().join("oblique.nii");
    let (c, s) = (10f32.to_radians().cos(), 10f32.to_radians().sin());
    write(
        &p,
        &sform([[-c, -s, 0.0, 0.0], [s, -c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]),
    );
    let (_, info) = read_nifti(&p, &Limits::default()).unwrap();
    assert!((info.obliquity_deg - 10.0).abs() < 1e-3, "{info:?}");
    // qform only: a 180-degree turn about z (quatern d = 1) is LPS storage.
    let p = dir.path().join("qform.nii");
    let h = NiftiHeader {
        pixdim: [1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0],
        qform_code: 1,
        sform_code: 0,
        quatern_d: 1.0,
        ..NiftiHeader::default()
    };
    write(&p, &h);
    let (_, info) = read_nifti(&p, &Limits::default()).unwrap();
    assert_eq!(info.transform, "qform");
    check(&p, [3, 4, 5], |z, y, x| (x, y, z));
    // Method 1 (no transform): stored axes taken as a3d's.
    let p = dir.path().join("plain.nii");
    write(
        &p,
        &NiftiHeader {
            pixdim: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            qform_code: 0,
            sform_code: 0,
            ..NiftiHeader::default()
        },
    );
    check(&p, [3, 4, 5], |z, y, x| (x, y, z));
}

#[test]
fn scaling_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("scaled.nii");
    let arr = Array3::from_shape_fn(N, |(i, j, k)| (i + j + k) as i16);
    let h = sform([
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ]);
    WriterOptions::new(&p)
        .reference_header(&h)
        .write_nifti(&arr)
        .unwrap();
    // The crate's writer always stores slope 1 / intercept 0: set them in the header as
    // scanners' exports do (NIfTI-1: scl_slope at byte 112, scl_inter at 116, little endian).
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[112..116].copy_from_slice(&2.0f32.to_le_bytes());
    bytes[116..120].copy_from_slice(&(-1000.0f32).to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let (v, info) = read_nifti(&p, &Limits::default()).unwrap();
    assert_eq!(info.scaling, (2.0, -1000.0));
    assert_eq!(v.hu[0], -1000.0);
    assert_eq!(v.hu[v.hu.len() - 1], 2.0 * 9.0 - 1000.0);
}

#[test]
fn bad_volumes_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.nii");
    std::fs::write(&p, vec![7u8; 400]).unwrap();
    let e = read_nifti(&p, &Limits::default()).unwrap_err();
    assert!(
        matches!(e, Error::Invalid { .. }) && e.to_string().contains("junk.nii"),
        "{e}"
    );
    // A NIfTI-2 header (sizeof_hdr 540): refused, not misread.
    let p2 = dir.path().join("nifti2.nii");
    let mut bytes = 540i32.to_le_bytes().to_vec();
    bytes.extend(b"n+2\0");
    bytes.resize(600, 0);
    std::fs::write(&p2, bytes).unwrap();
    assert!(matches!(
        read_nifti(&p2, &Limits::default()),
        Err(Error::Invalid { .. })
    ));
    // A 4-D series with 2 volumes.
    let p = dir.path().join("4d.nii");
    let arr = ndarray::Array4::<f32>::zeros((2, 2, 2, 2));
    WriterOptions::new(&p).write_nifti(&arr).unwrap();
    assert!(read_nifti(&p, &Limits::default())
        .unwrap_err()
        .to_string()
        .contains("3-D"));
    // Larger than the limits: refused from the header.
    let p = dir.path().join("ok.nii");
    write(
        &p,
        &sform([
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, -1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ]),
    );
    let tight = Limits {
        max_voxels: 10,
        max_side: 100,
    };
    assert!(matches!(
        read_nifti(&p, &tight),
        Err(Error::TooLarge { .. })
    ));
    // A degenerate transform (two axes along x).
    let p = dir.path().join("degenerate.nii");
    write(
        &p,
        &sform([
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ]),
    );
    assert!(read_nifti(&p, &Limits::default())
        .unwrap_err()
        .to_string()
        .contains("degenerate"));
    assert!(matches!(
        read_nifti(&dir.path().join("missing.nii"), &Limits::default()),
        Err(Error::Invalid { .. } | Error::Io { .. })
    ));
}

/// a3d-ct's own writer round-trips a volume (values, spacing, origin), and the network input of
/// a volume slice follows the 2.0 mm rule with edge fallback.
#[test]
fn write_read_round_trip_and_volume_slices() {
    use a3d_ct::deeplesion::{MultiSlice, WeightRule};
    let dir = tempfile::tempdir().unwrap();
    let shape = [6, 3, 4];
    let hu: Vec<f32> = (0..72).map(|i| i as f32 * 3.0 - 100.0).collect();
    let mut v = a3d_ct::Volume::new(hu, shape, [1.0, 0.6, 0.7]).unwrap();
    v.origin = Some([-12.5, 30.0, 7.0]);
    let p = dir.path().join("v.nii.gz");
    a3d_ct::write::write_nifti(&p, &v).unwrap();
    let (back, info) = read_nifti(&p, &Limits::default()).unwrap();
    assert_eq!(info.axis_map, [(2, false), (1, false), (0, false)]);
    assert_eq!(back.hu, v.hu);
    assert_eq!(back.shape, v.shape);
    for (a, b) in back.spacing.iter().zip(v.spacing) {
        assert!((a - b).abs() < 1e-6);
    }
    let o = back.origin.unwrap();
    assert!(
        (o[0] + 12.5).abs() < 1e-4 && (o[1] - 30.0).abs() < 1e-4 && (o[2] - 7.0).abs() < 1e-4,
        "{o:?}"
    );
    // 1 mm slices: neighbours of slice 1 at +-2 mm are slices -1 (clamped to 0) and 3.
    let ms = MultiSlice::from_volume(&v, 1, 3, WeightRule::PerNeighbour).unwrap();
    let plane = 12;
    assert_eq!(&ms.hu[..plane], &v.hu[..plane]);
    assert_eq!(&ms.hu[2 * plane..], &v.hu[3 * plane..4 * plane]);
    assert!(MultiSlice::from_volume(&v, 6, 3, WeightRule::PerNeighbour).is_err());
}
