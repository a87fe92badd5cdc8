//! The synthetic dataset: DeepLesion's format (read back by a3d-ct's own reader), the split by
//! patient, lesions visible on their key slice and gone a margin away, and reproducibility.

use a3d_ct::deeplesion::{DeepLesion, Split};
use a3d_ct::synth::{synthesize, SynthConfig};
use a3d_ct::{read_hu_png, Limits};

#[test]
fn synthetic_scans_read_as_deeplesion_and_need_context() {
    let dir = tempfile::tempdir().unwrap();
    let config = SynthConfig {
        scans: 8,
        size: 64,
        seed: 7,
        ..SynthConfig::default()
    };
    let summary = synthesize(dir.path(), &config).unwrap();
    assert_eq!(summary.scans.iter().sum::<usize>(), 8);
    assert!(summary.scans.iter().all(|&n| n > 0), "{summary:?}");
    let dl = DeepLesion::open(dir.path()).unwrap();
    assert_eq!(dl.lesions.len(), summary.lesions.iter().sum::<usize>());
    let limits = Limits::default();
    for l in &dl.lesions {
        assert_eq!(l.coarse_type == -1, l.split == Split::Train);
        let (series, _) = l.series_and_slice().unwrap();
        let key = read_hu_png(&dl.slice_path(series, l.key_slice as i64), &limits).unwrap();
        let (cx, cy) = (
            ((l.bbox[0] + l.bbox[2]) / 2.0).round() as usize,
            ((l.bbox[1] + l.bbox[3]) / 2.0).round() as usize,
        );
        let at = |hu: &[f32]| -> f32 {
            // Mean of the 3 x 3 around the centre (the noise is 12 HU per pixel).
            let mut s = 0.0;
            for dy in 0..3 {
                for dx in 0..3 {
                    s += hu[(cy + dy - 1) * 64 + cx + dx - 1];
                }
            }
            s / 9.0
        };
        assert!(
            at(&key.hu) > 40.0 + 40.0,
            "{}: lesion not on its key slice ({})",
            l.file_name,
            at(&key.hu)
        );
        // 12 mm away (the scan's first or last slice) the lesion is gone.
        let far = if l.key_slice - l.slice_range[0] > l.slice_range[1] - l.key_slice {
            l.slice_range[0]
        } else {
            l.slice_range[1]
        };
        let far = read_hu_png(&dl.slice_path(series, far as i64), &limits).unwrap();
        assert!(
            at(&far.hu) < 40.0 + 30.0,
            "{}: lesion still present 12 mm away",
            l.file_name
        );
        assert!([1.0, 2.5, 5.0].contains(&l.spacing[2]));
        assert!(l.bbox[0] >= 0.0 && l.bbox[2] <= 63.0 && l.bbox[0] < l.bbox[2]);
    }
    // Reproducible: the same seed writes the same files.
    let again = tempfile::tempdir().unwrap();
    synthesize(again.path(), &config).unwrap();
    let read = |root: &std::path::Path, p: &str| std::fs::read(root.join(p)).unwrap();
    assert_eq!(
        read(dir.path(), "DL_info.csv"),
        read(again.path(), "DL_info.csv")
    );
    let first = &dl.lesions[0];
    let (series, file) = first.series_and_slice().unwrap();
    let png = format!("Images_png/{series}/{file}");
    assert_eq!(read(dir.path(), &png), read(again.path(), &png));
}
