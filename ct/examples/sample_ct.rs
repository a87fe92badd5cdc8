//! Writes a small DeepLesion-format folder (one series of 21 slices of a 96 x 80 phantom, 2.5 mm
//! apart, with a round lesion over a few slices, and its `DL_info.csv`), the same phantom as a
//! NIfTI volume (`phantom.nii.gz`), as a DICOM series (`dicom/`, one file per slice, names in a
//! scrambled order) and as one enhanced multi-frame DICOM file (`dicom_enhanced/`), for trying
//! `a3d inspect` and the readers on data the repository can make:
//!
//!     cargo run -p a3d-ct --example sample_ct -- /tmp/ct
//!     cargo run --release --bin a3d -- inspect /tmp/ct/Images_png/000001_01_01/110.png --depth 7 --png /tmp/preview.png
//!     cargo run --release --bin a3d -- inspect /tmp/ct/phantom.nii.gz --png /tmp/nifti.png
//!     cargo run --release --bin a3d -- inspect /tmp/ct/dicom --png /tmp/dicom.png

use a3d_ct::deeplesion::{Lesion, Split};
use a3d_ct::write::{write_dicom_series, write_dl_info, write_hu_png, DicomWriteOptions};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::args().nth(1).ok_or("usage: sample_ct OUT_DIR")?);
    let (w, h) = (96usize, 80usize);
    let mut all: Vec<f32> = Vec::new();
    for i in 100..=120i64 {
        // Body (40 HU) in air (-1000), a spine-like bright disc, a 12 px lesion (90 HU) on
        // slices 108..=112.
        let hu: Vec<f32> = (0..w * h)
            .map(|p| {
                let (x, y) = ((p % w) as f32, (p / w) as f32);
                let body = ((x - 48.0) / 40.0).powi(2) + ((y - 40.0) / 32.0).powi(2) < 1.0;
                let bone = (x - 48.0).powi(2) + (y - 62.0).powi(2) < 36.0;
                let lesion =
                    (108..=112).contains(&i) && (x - 30.0).powi(2) + (y - 30.0).powi(2) < 36.0;
                match (body, bone, lesion) {
                    (_, _, true) => 90.0,
                    (_, true, _) => 700.0,
                    (true, _, _) => 40.0,
                    _ => -1000.0,
                }
            })
            .collect();
        write_hu_png(
            &root
                .join("Images_png/000001_01_01")
                .join(format!("{i:03}.png")),
            w,
            h,
            &hu,
        )?;
        all.extend(hu);
    }
    let mut volume = a3d_ct::Volume::new(all, [21, h, w], [2.5, 0.8, 0.8])?;
    a3d_ct::write::write_nifti(&root.join("phantom.nii.gz"), &volume)?;
    // Patient position of the first voxel: the table at -250 mm, centred in x and y.
    volume.origin = Some([-38.0, -32.0, -250.0]);
    let series = DicomWriteOptions {
        description: "a3d phantom".into(),
        scramble_names: true,
        ..DicomWriteOptions::default()
    };
    write_dicom_series(&root.join("dicom"), &volume, &series)?;
    let enhanced = DicomWriteOptions {
        multi_frame: true,
        series_uid: format!("{}.2", series.series_uid),
        ..series
    };
    write_dicom_series(&root.join("dicom_enhanced"), &volume, &enhanced)?;
    let lesion = Lesion {
        file_name: "000001_01_01_110.png".into(),
        patient: 1,
        study: 1,
        series: 1,
        key_slice: 110,
        recist: [24.0, 30.0, 36.0, 30.0, 30.0, 24.0, 30.0, 36.0],
        bbox: [23.0, 23.0, 37.0, 37.0],
        diameters_px: [12.0, 12.0],
        location: [0.31, 0.37, 0.5],
        coarse_type: 4,
        noisy: false,
        slice_range: [100, 120],
        spacing: [0.8, 0.8, 2.5],
        image_size: [w as u32, h as u32],
        dicom_window: [-175.0, 275.0],
        gender: "M".into(),
        age: Some(57.0),
        split: Split::Val,
    };
    write_dl_info(&root.join("DL_info.csv"), &[lesion])?;
    println!("wrote {}", root.display());
    Ok(())
}
