//! DeepLesion folders written by a3d-ct's writers and read back: every column, 0-based
//! coordinates, the split with noisy lesions excluded, key-slice grouping, the 2.0 mm neighbour
//! rule (both weight rules, the missing-file fallback) against hand-computed mixes, the network
//! input, and typed errors naming the file for bad slices, bad rows and oversized headers.

use a3d_ct::deeplesion::{DeepLesion, Lesion, Split, WeightRule};
use a3d_ct::network::{window, InputConfig, NetworkInput};
use a3d_ct::write::{write_dl_info, write_hu_png};
use a3d_ct::{read_hu_png, Error, Limits};
use std::path::Path;

const W: usize = 23;
const H: usize = 17;

/// Slice `i` of the test series: a distinct ramp per slice, so mixes are recognisable.
fn slice_hu(i: i64) -> Vec<f32> {
    (0..W * H)
        .map(|p| (i * 100 + (p % 50) as i64) as f32 - 500.0)
        .collect()
}

fn lesion(
    file: &str,
    key: u32,
    bbox: [f32; 4],
    split: Split,
    noisy: bool,
    interval: f32,
) -> Lesion {
    Lesion {
        file_name: file.into(),
        patient: 1,
        study: 1,
        series: 1,
        key_slice: key,
        recist: [
            bbox[0], bbox[1], bbox[2], bbox[3], bbox[0], bbox[3], bbox[2], bbox[1],
        ],
        bbox,
        diameters_px: [10.5, 6.25],
        location: [0.5, 0.4, 0.3],
        coarse_type: if split == Split::Train { -1 } else { 3 },
        noisy,
        slice_range: [100, 120],
        spacing: [0.7, 0.7, interval],
        image_size: [W as u32, H as u32],
        dicom_window: [-175.0, 275.0],
        gender: "F".into(),
        age: Some(61.0),
        split,
    }
}

/// Slices 100..=120 of `000001_01_01` minus 104 (a gap), 5 mm apart; 4 lesions.
fn make(root: &Path) -> Vec<Lesion> {
    for i in 100..=120 {
        if i != 104 {
            let p = root
                .join("Images_png/000001_01_01")
                .join(format!("{i:03}.png"));
            write_hu_png(&p, W, H, &slice_hu(i)).unwrap();
        }
    }
    let lesions = vec![
        lesion(
            "000001_01_01_110.png",
            110,
            [3.0, 4.0, 12.0, 9.0],
            Split::Train,
            false,
            5.0,
        ),
        lesion(
            "000001_01_01_110.png",
            110,
            [14.0, 2.0, 20.0, 8.0],
            Split::Train,
            false,
            5.0,
        ),
        lesion(
            "000001_01_01_102.png",
            102,
            [1.0, 1.0, 5.0, 5.0],
            Split::Val,
            false,
            5.0,
        ),
        lesion(
            "000001_01_01_118.png",
            118,
            [2.0, 2.0, 6.0, 6.0],
            Split::Test,
            true,
            5.0,
        ),
    ];
    write_dl_info(&root.join("DL_info.csv"), &lesions).unwrap();
    lesions
}

#[test]
fn round_trip_split_and_grouping() {
    let dir = tempfile::tempdir().unwrap();
    let written = make(dir.path());
    let dl = DeepLesion::open(dir.path()).unwrap();
    assert_eq!(
        dl.lesions, written,
        "every column survives the CSV round trip"
    );
    // The CSV holds 1-based coordinates.
    let text = std::fs::read_to_string(dir.path().join("DL_info.csv")).unwrap();
    assert!(text.contains("\"4, 5, 13, 10\""), "{text}");
    let train = dl.key_slices(Some(Split::Train));
    assert_eq!(train.len(), 1);
    assert_eq!(train[0].boxes.len(), 2);
    assert_eq!(
        (train[0].series_dir.as_str(), train[0].key_index),
        ("000001_01_01", 110)
    );
    assert_eq!(dl.key_slices(Some(Split::Val)).len(), 1);
    assert!(
        dl.key_slices(Some(Split::Test)).is_empty(),
        "noisy lesions are in no split"
    );
    assert_eq!(dl.key_slices(None).len(), 2);
    // A slice round-trips exactly (integer HU).
    let s = read_hu_png(&dl.slice_path("000001_01_01", 107), &Limits::default()).unwrap();
    assert_eq!(s.hu, slice_hu(107));
}

#[test]
fn neighbours_follow_the_2mm_rule() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path());
    let dl = DeepLesion::open(dir.path()).unwrap();
    let key = &dl.key_slices(Some(Split::Train))[0]; // slice 110, 5 mm
    let lim = Limits::default();
    let mix = |terms: &[(i64, f32)]| -> Vec<f32> {
        let mut out = vec![0.0f32; W * H];
        for &(i, w) in terms {
            for (o, v) in out.iter_mut().zip(slice_hu(i)) {
                *o += w * v;
            }
        }
        out
    };
    let close = |a: &[f32], b: &[f32], what: &str| {
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "{what}: {worst}");
    };
    let d3 = dl.load(key, 3, WeightRule::PerNeighbour, &lim).unwrap();
    assert_eq!((d3.depth, d3.height, d3.width), (3, H, W));
    let plane = W * H;
    close(
        &d3.hu[plane..2 * plane],
        &slice_hu(110),
        "key slice in the middle",
    );
    close(
        &d3.hu[2 * plane..],
        &mix(&[(111, 0.4), (110, 0.6)]),
        "next at 2 mm = 0.4 slices",
    );
    close(&d3.hu[..plane], &mix(&[(109, 0.4), (110, 0.6)]), "previous");
    // D = 7: the rules differ at the 2nd neighbour (0.8 slices).
    let good = dl.load(key, 7, WeightRule::PerNeighbour, &lim).unwrap();
    let reference = dl.load(key, 7, WeightRule::Reference, &lim).unwrap();
    close(
        &good.hu[5 * plane..6 * plane],
        &mix(&[(111, 0.8), (110, 0.2)]),
        "per-neighbour weights",
    );
    close(
        &reference.hu[5 * plane..6 * plane],
        &mix(&[(111, 0.4), (110, 0.6)]),
        "the reference's weights",
    );
    close(
        &good.hu[6 * plane..],
        &mix(&[(112, 0.2), (111, 0.8)]),
        "3rd neighbour",
    );
    // Key slice 102 with 104 missing and nothing below 100: the neighbours move toward the key.
    let val = &dl.key_slices(Some(Split::Val))[0];
    let v = dl.load(val, 7, WeightRule::PerNeighbour, &lim).unwrap();
    // 3rd neighbour up at 1.2 slices -> 104 (missing -> 103) and 103.
    close(
        &v.hu[6 * plane..],
        &mix(&[(103, 0.2), (103, 0.8)]),
        "missing file falls back toward the key",
    );
    assert!(
        dl.load(val, 4, WeightRule::PerNeighbour, &lim).is_err(),
        "even depth"
    );
}

#[test]
fn network_input_of_a_key_slice() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path());
    let dl = DeepLesion::open(dir.path()).unwrap();
    let key = &dl.key_slices(Some(Split::Train))[0];
    let ms = dl
        .load(key, 3, WeightRule::PerNeighbour, &Limits::default())
        .unwrap();
    let n = NetworkInput::build(&ms, &InputConfig::default(), None).unwrap();
    // 23 x 17: scale = min(512/23, 512/17) = 22.26 -> 512 x 378, padded 512 x 384.
    assert_eq!(
        (n.width, n.height, n.padded_width, n.padded_height),
        (512, 378, 512, 384)
    );
    // The top-left network pixel samples the top-left original pixel (clamped).
    assert!((n.data[384 * 512] - window(slice_hu(110)[0])).abs() < 1e-3);
    let b = n.to_network(key.boxes[0]);
    assert!((n.to_original(b)[2] - key.boxes[0][2]).abs() < 1e-3);
}

#[test]
fn bad_input_names_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path());
    let lim = Limits::default();
    // An 8-bit PNG.
    let p8 = dir.path().join("eight.png");
    {
        let f = std::fs::File::create(&p8).unwrap();
        let mut e = png::Encoder::new(f, 4, 4);
        e.set_color(png::ColorType::Grayscale);
        e.set_depth(png::BitDepth::Eight);
        e.write_header()
            .unwrap()
            .write_image_data(&[0u8; 16])
            .unwrap();
    }
    let e = read_hu_png(&p8, &lim).unwrap_err();
    assert!(
        matches!(e, Error::Invalid { .. })
            && e.to_string().contains("eight.png")
            && e.to_string().contains("16-bit"),
        "{e}"
    );
    // Not a PNG at all; a missing file.
    std::fs::write(dir.path().join("junk.png"), b"not a png").unwrap();
    assert!(read_hu_png(&dir.path().join("junk.png"), &lim)
        .unwrap_err()
        .to_string()
        .contains("junk.png"));
    assert!(matches!(
        read_hu_png(&dir.path().join("nope.png"), &lim),
        Err(Error::Io { .. })
    ));
    // A header larger than the limits, refused before the pixels are allocated.
    let small = Limits {
        max_voxels: 100,
        max_side: 16384,
    };
    let big = dir.path().join("Images_png/000001_01_01/110.png");
    assert!(matches!(
        read_hu_png(&big, &small),
        Err(Error::TooLarge { .. })
    ));
    // A bad CSV cell names the row and column.
    let csv = dir.path().join("DL_info.csv");
    let text =
        std::fs::read_to_string(&csv)
            .unwrap()
            .replacen("\"4, 5, 13, 10\"", "\"4, 5, x, 10\"", 1);
    std::fs::write(&csv, text).unwrap();
    let e = DeepLesion::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, Error::Row { row: 1, column, .. } if column == "Bounding_boxes"),
        "{e}"
    );
    // A key slice whose neighbour has another size.
    let dir2 = tempfile::tempdir().unwrap();
    make(dir2.path());
    write_hu_png(
        &dir2.path().join("Images_png/000001_01_01/111.png"),
        5,
        5,
        &[0.0; 25],
    )
    .unwrap();
    let dl = DeepLesion::open(dir2.path()).unwrap();
    let key = &dl.key_slices(Some(Split::Train))[0];
    let e = dl.load(key, 3, WeightRule::PerNeighbour, &lim).unwrap_err();
    assert!(
        e.to_string().contains("111.png") && e.to_string().contains("5 x 5"),
        "{e}"
    );
}
