//! How long a3d takes to load a DICOM CT series and build the network input of every slice
//! (issue target: less than the detector backbone on one slice). Writes a series of
//! `SLICES` x 512 x 512 (explicit VR little endian, one file per slice, names scrambled) to a
//! temporary folder, then times `read_dicom` and the inputs (D = 3 and 7), each the best and
//! median of `RUNS`:
//!
//!     cargo run --release -p a3d-ct --example load_speed -- [SLICES] [RUNS] [SIDE]
//!
//! The page cache holds the files after the first run: this measures decoding and assembly,
//! not the disk.

use a3d_ct::deeplesion::WeightRule;
use a3d_ct::dicom::{read_dicom, DicomOptions};
use a3d_ct::network::{InputConfig, NetworkInput};
use a3d_ct::write::{write_dicom_series, DicomWriteOptions};
use rayon::prelude::*;
use std::time::Instant;

fn stats(mut t: Vec<f64>) -> (f64, f64) {
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let slices: usize = args.next().map_or(Ok(300), |s| s.parse())?;
    let runs: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    let side: usize = args.next().map_or(Ok(512), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let hu: Vec<f32> = (0..slices * side * side)
        .map(|i| ((i * 7919) % 3000) as f32 - 1024.0)
        .collect();
    let mut volume = a3d_ct::Volume::new(hu, [slices, side, side], [1.25, 0.7, 0.7])?;
    volume.origin = Some([-180.0, -180.0, -400.0]);
    let options = DicomWriteOptions {
        scramble_names: true,
        ..DicomWriteOptions::default()
    };
    let t = Instant::now();
    write_dicom_series(dir.path(), &volume, &options)?;
    println!(
        "wrote {slices} x {side} x {side} in {:.2} s; {} threads",
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    let mut load = Vec::new();
    let mut read = None;
    for _ in 0..runs {
        let t = Instant::now();
        let (v, _) = read_dicom(dir.path(), &DicomOptions::default())?;
        load.push(t.elapsed().as_secs_f64());
        read = Some(v);
    }
    let v = read.ok_or("no run")?;
    assert_eq!(v.hu, volume.hu, "the series must read back exactly");
    let (best, median) = stats(load);
    println!(
        "read_dicom: best {:.3} s, median {:.3} s ({:.2} ms per slice)",
        best,
        median,
        1e3 * best / slices as f64
    );
    let config = InputConfig::default();
    for depth in [3usize, 7] {
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let inputs: Vec<usize> = (0..slices)
                .into_par_iter()
                .map(|z| {
                    NetworkInput::from_volume(&v, z, depth, WeightRule::PerNeighbour, &config)
                        .expect("input")
                        .data
                        .len()
                })
                .collect();
            times.push(t.elapsed().as_secs_f64());
            assert_eq!(inputs.len(), slices);
        }
        let (best, median) = stats(times);
        println!(
            "network inputs D = {depth}: best {:.3} s, median {:.3} s ({:.2} ms per slice)",
            best,
            median,
            1e3 * best / slices as f64
        );
    }
    Ok(())
}
