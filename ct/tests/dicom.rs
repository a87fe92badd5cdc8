//! DICOM series written with dicom-rs in every uncompressed transfer syntax and file layout,
//! single-frame and enhanced multi-frame, read back exactly; folder handling (several series,
//! non-CT and non-DICOM files, a bad slice, gaps, duplicates) and limits.

use a3d_ct::dicom::{read_dicom, DicomOptions, Layout};
use a3d_ct::write::{write_dicom_series, DicomSyntax, DicomWriteOptions};
use a3d_ct::{Error, Limits, Volume};
use std::path::Path;

/// A volume of odd size with whole-HU values from a small LCG, over the CT range.
fn volume(shape: [usize; 3], seed: u64) -> Volume {
    let mut s = seed;
    let hu = (0..shape.iter().product::<usize>())
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % 3000) as f32 - 1024.0
        })
        .collect();
    let mut v = Volume::new(hu, shape, [2.5, 0.75, 0.7]).unwrap();
    v.origin = Some([-120.5, -80.25, 310.0]);
    v.direction = Some([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    v
}

fn assert_same(read: &Volume, want: &Volume) {
    assert_eq!(read.shape, want.shape);
    assert_eq!(read.hu, want.hu);
    for (a, b) in read.spacing.iter().zip(want.spacing) {
        assert!(
            (a - b).abs() < 1e-6,
            "spacing {:?} vs {:?}",
            read.spacing,
            want.spacing
        );
    }
    let (o, w) = (read.origin.unwrap(), want.origin.unwrap());
    for k in 0..3 {
        assert!((o[k] - w[k]).abs() < 1e-4, "origin {o:?} vs {w:?}");
    }
}

#[test]
fn every_syntax_and_layout_reads_back_exactly() {
    let want = volume([7, 23, 19], 1);
    let cases = [
        (DicomSyntax::ExplicitVrLittleEndian, Layout::Standard, false),
        (DicomSyntax::ImplicitVrLittleEndian, Layout::Standard, true),
        (DicomSyntax::ExplicitVrBigEndian, Layout::Standard, true),
        (
            DicomSyntax::DeflatedExplicitVrLittleEndian,
            Layout::Standard,
            false,
        ),
        (
            DicomSyntax::ExplicitVrLittleEndian,
            Layout::NoPreamble,
            true,
        ),
        (DicomSyntax::ImplicitVrLittleEndian, Layout::NoMeta, false),
    ];
    for (syntax, layout, signed) in cases {
        let dir = tempfile::tempdir().unwrap();
        let options = DicomWriteOptions {
            syntax,
            layout,
            signed,
            scramble_names: true,
            rescale: if signed { (1.0, 0.0) } else { (1.0, -1024.0) },
            ..DicomWriteOptions::default()
        };
        write_dicom_series(dir.path(), &want, &options).unwrap();
        let (read, info) = read_dicom(dir.path(), &DicomOptions::default())
            .unwrap_or_else(|e| panic!("{syntax:?} {layout:?}: {e}"));
        assert_same(&read, &want);
        assert_eq!(info.layouts, vec![layout], "{syntax:?}");
        assert_eq!(info.series.images, 7);
        assert!(info.gaps.is_empty());
        assert!((info.slice_interval_mm - 2.5).abs() < 1e-6);
        assert!(info.skipped.is_empty());
        assert!(!info.rescale_missing);
    }
}

#[test]
fn rescale_slope_and_intercept_apply() {
    let mut want = volume([3, 9, 11], 2);
    // Multiples of 0.5 HU survive slope 0.5 exactly.
    for (i, v) in want.hu.iter_mut().enumerate() {
        *v += if i % 2 == 0 { 0.5 } else { 0.0 };
    }
    let dir = tempfile::tempdir().unwrap();
    let options = DicomWriteOptions {
        rescale: (0.5, -1024.0),
        ..DicomWriteOptions::default()
    };
    write_dicom_series(dir.path(), &want, &options).unwrap();
    let (read, _) = read_dicom(dir.path(), &DicomOptions::default()).unwrap();
    assert_same(&read, &want);
}

#[test]
fn enhanced_multi_frame_reads_back_exactly() {
    let want = volume([6, 13, 17], 3);
    let dir = tempfile::tempdir().unwrap();
    let options = DicomWriteOptions {
        multi_frame: true,
        scramble_names: true,
        ..DicomWriteOptions::default()
    };
    let files = write_dicom_series(dir.path(), &want, &options).unwrap();
    assert_eq!(files.len(), 1);
    // A single file and its folder read the same.
    for path in [files[0].as_path(), dir.path()] {
        let (read, info) = read_dicom(path, &DicomOptions::default()).unwrap();
        assert_same(&read, &want);
        assert_eq!((info.series.images, info.series.files), (6, 1));
    }
}

/// A series acquired feet-first with rows running posterior to anterior: the reader flips both
/// axes into a3d's orientation.
#[test]
fn stored_orientation_is_undone() {
    let stored = volume([5, 7, 9], 4);
    let mut flipped = stored.clone();
    flipped.direction = Some([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]);
    let dir = tempfile::tempdir().unwrap();
    write_dicom_series(dir.path(), &flipped, &DicomWriteOptions::default()).unwrap();
    let (read, info) = read_dicom(dir.path(), &DicomOptions::default()).unwrap();
    assert_eq!(read.shape, [5, 7, 9]);
    assert_eq!(info.axis_map.axes, [(2, true), (1, true), (0, false)]);
    for z in 0..5 {
        for y in 0..7 {
            for x in 0..9 {
                assert_eq!(
                    read.hu[(z * 7 + y) * 9 + x],
                    stored.hu[((4 - z) * 7 + (6 - y)) * 9 + x]
                );
            }
        }
    }
    let d = read.direction.unwrap();
    assert_eq!(d[1], [0.0, 1.0, 0.0]);
    assert_eq!(d[2], [0.0, 0.0, 1.0]);
    // The first output voxel is the most inferior, most anterior one.
    let o = read.origin.unwrap();
    assert!(
        (o[2] - (310.0 - 4.0 * 2.5)).abs() < 1e-4 && (o[1] - (-80.25 - 6.0 * 0.75)).abs() < 1e-4
    );
}

fn write_series(dir: &Path, uid: &str, seed: u64) -> Volume {
    let v = volume([4, 8, 10], seed);
    let options = DicomWriteOptions {
        series_uid: uid.into(),
        description: format!("series {seed}"),
        ..DicomWriteOptions::default()
    };
    write_dicom_series(dir, &v, &options).unwrap();
    v
}

#[test]
fn several_series_are_listed_or_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_series(&dir.path().join("a"), "1.2.3.4", 5);
    let b = write_series(&dir.path().join("b"), "1.2.3.5", 6);
    match read_dicom(dir.path(), &DicomOptions::default()) {
        Err(Error::SeveralSeries { series, .. }) => {
            let uids: Vec<_> = series.iter().map(|s| s.uid.as_str()).collect();
            assert_eq!(uids, ["1.2.3.4", "1.2.3.5"]);
            assert_eq!(series[1].description, "series 6");
            assert_eq!(series[0].images, 4);
        }
        other => panic!("expected SeveralSeries, got {other:?}"),
    }
    for (uid, want) in [("1.2.3.4", &a), ("1.2.3.5", &b)] {
        let options = DicomOptions {
            series: Some(uid.into()),
            ..DicomOptions::default()
        };
        let (read, info) = read_dicom(dir.path(), &options).unwrap();
        assert_same(&read, want);
        assert_eq!(info.other_series.len(), 1);
    }
    let options = DicomOptions {
        series: Some("9.9".into()),
        ..DicomOptions::default()
    };
    let err = read_dicom(dir.path(), &options).unwrap_err().to_string();
    assert!(
        err.contains("no CT series 9.9") && err.contains("1.2.3.4"),
        "{err}"
    );
}

#[test]
fn non_ct_and_non_dicom_files_are_skipped_with_a_note() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let want = write_series(dir.path(), "1.2.3.4", 7);
    std::fs::write(dir.path().join("README.txt"), "notes about the scan\n").unwrap();
    // A structured report: DICOM, no image.
    let mut sr = dicom_object::InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.88.11"),
        (tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.99"),
        (tags::MODALITY, VR::CS, "SR"),
        (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.99"),
    ] {
        sr.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax("1.2.840.10008.1.2.1")
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.88.11")
        .media_storage_sop_instance_uid("1.2.3.4.99");
    sr.with_meta(meta)
        .unwrap()
        .write_to_file(dir.path().join("report.dcm"))
        .unwrap();
    let (read, info) = read_dicom(dir.path(), &DicomOptions::default()).unwrap();
    assert_same(&read, &want);
    let mut notes: Vec<_> = info
        .skipped
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into_owned(),
                s.reason.clone(),
            )
        })
        .collect();
    notes.sort();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert_eq!(notes[0].0, "README.txt");
    assert!(notes[0].1.contains("not a DICOM file"));
    assert_eq!(notes[1].0, "report.dcm");
    assert!(notes[1].1.contains("no image"), "{}", notes[1].1);
}

#[test]
fn a_bad_slice_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_series(dir.path(), "1.2.3.4", 8);
    let victim = dir.path().join("slice_0002.dcm");
    let bytes = std::fs::read(&victim).unwrap();
    // Cut inside the pixel data.
    std::fs::write(&victim, &bytes[..bytes.len() - 40]).unwrap();
    let err = read_dicom(dir.path(), &DicomOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::Invalid { ref path, .. } if *path == victim),
        "{err}"
    );
    // Cut inside the header.
    std::fs::write(&victim, &bytes[..300]).unwrap();
    let err = read_dicom(dir.path(), &DicomOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::Invalid { ref path, .. } if *path == victim),
        "{err}"
    );
}

#[test]
fn gaps_are_reported_and_duplicates_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_dicom_series(
        dir.path(),
        &volume([6, 8, 10], 9),
        &DicomWriteOptions::default(),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("slice_0003.dcm")).unwrap();
    let (read, info) = read_dicom(dir.path(), &DicomOptions::default()).unwrap();
    assert_eq!(read.shape[0], 5);
    assert_eq!(info.gaps.len(), 1);
    assert_eq!(info.gaps[0].after_slice, 2);
    assert!((info.gaps[0].interval_mm - 5.0).abs() < 1e-6);
    // A copy of a slice under another name sits at the same position.
    std::fs::copy(
        dir.path().join("slice_0001.dcm"),
        dir.path().join("copy.dcm"),
    )
    .unwrap();
    let err = read_dicom(dir.path(), &DicomOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("same position"), "{err}");
}

#[test]
fn limits_apply_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    write_series(dir.path(), "1.2.3.4", 10);
    let options = DicomOptions {
        limits: Limits {
            max_voxels: 4 * 8 * 10 - 1,
            ..Limits::default()
        },
        ..DicomOptions::default()
    };
    let err = read_dicom(dir.path(), &options).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = read_dicom(empty.path(), &DicomOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no CT image"), "{err}");
}

/// A length field larger than the file is refused before anything is allocated for it.
#[test]
fn lengths_beyond_the_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_series(dir.path(), "1.2.3.4", 11);
    let victim = dir.path().join("slice_0001.dcm");
    let mut bytes = std::fs::read(&victim).unwrap();
    // Explicit VR little endian PixelData: (7FE0,0010) OW, two reserved bytes, 4-byte length.
    let header = [0xe0, 0x7f, 0x10, 0x00, b'O', b'W', 0, 0];
    let at = bytes
        .windows(8)
        .position(|w| w == header)
        .expect("pixel data header");
    bytes[at + 8..at + 12].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    std::fs::write(&victim, &bytes).unwrap();
    let start = std::time::Instant::now();
    let err = read_dicom(dir.path(), &DicomOptions::default()).unwrap_err();
    assert!(start.elapsed().as_secs_f64() < 5.0);
    assert!(
        matches!(err, Error::Invalid { ref path, ref problem } if *path == victim && problem.contains("claims 1073741824 bytes")),
        "{err}"
    );
}
