//! A synthetic DeepLesion-format dataset in which lesions need 3D context.
//!
//! Every scan is a CT-like volume (air, a soft-tissue body with fat and a bright spine, HU noise)
//! holding two kinds of round structures drawn from the *same* in-plane distribution (diameter,
//! contrast, edge profile):
//!
//! - **lesions**: compact ellipsoids a few millimetres tall in z (as tall as they are wide, times
//!   0.6-1.0), the annotated findings; their centre slice is the key slice;
//! - **distractors**: vessel-like tubes running through the whole volume, straight or slightly
//!   oblique.
//!
//! On the key slice a lesion and a tube cross-section look alike; only the neighbouring slices
//! tell them apart, which is what a 3D-context detector must learn. Slice intervals are 1, 2.5
//! or 5 mm (as DeepLesion's), pixels 0.8 mm. The split is by patient (70 / 15 / 15 %), val and
//! test lesions carry a coarse type (1-8, by size), train ones -1, as in DeepLesion. Everything
//! derives from the seed: the same seed writes the same files.

use crate::deeplesion::{Lesion, Split};
use crate::write::{write_dl_info, write_hu_png};
use crate::{Error, Result};
use rayon::prelude::*;
use std::path::Path;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthConfig {
    /// Seed of everything.
    pub seed: u64,
    /// Scans (one patient, study and series each).
    pub scans: usize,
    /// Pixels per side of every slice.
    pub size: usize,
    /// Lesions per scan (inclusive range).
    pub lesions: (usize, usize),
    /// Distractor tubes per scan (inclusive range).
    pub distractors: (usize, usize),
    /// The scan covers this many mm above and below its lesions' key slices.
    pub margin_mm: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 1,
            scans: 60,
            size: 128,
            lesions: (1, 3),
            distractors: (3, 6),
            margin_mm: 12.0,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    /// Scans per split (train, val, test).
    pub scans: [usize; 3],
    /// Lesions per split.
    pub lesions: [usize; 3],
    /// Slice PNGs written.
    pub slices: usize,
}

/// Pixel spacing (mm).
pub const PIXEL_MM: f64 = 0.8;
/// The slice intervals drawn from (mm).
pub const INTERVALS_MM: [f64; 3] = [1.0, 2.5, 5.0];

/// One round structure: centre (x, y, z in mm; z from the first slice), radius in pixels,
/// contrast (HU above the tissue), half height in mm (lesions) or slope (tubes: x and y drift
/// per mm of z).
#[derive(Debug, Clone, Copy)]
struct Blob {
    x: f64,
    y: f64,
    z: f64,
    radius: f64,
    contrast: f64,
    half_height_mm: f64,
    drift: (f64, f64),
    tube: bool,
}

/// Seeded draws.
struct Draw(crate::fuzzing::Rng);

impl Draw {
    fn new(seed: u64) -> Draw {
        Draw(crate::fuzzing::Rng(seed))
    }
    fn unit(&mut self) -> f64 {
        (self.0.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn count(&mut self, (lo, hi): (usize, usize)) -> usize {
        lo + (self.0.next() % (hi - lo + 1) as u64) as usize
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (1.0 - self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The in-plane look every structure shares: radius 3-8 px, contrast +60..+140 HU.
fn cross_section(d: &mut Draw) -> (f64, f64) {
    (d.range(3.0, 8.0), d.range(60.0, 140.0))
}

/// Soft edge: 1 inside, 0 outside, a logistic ramp one pixel wide.
fn edge(distance: f64, radius: f64) -> f64 {
    1.0 / (1.0 + ((distance - radius) / 0.6).exp())
}

/// Writes the dataset under `root` (`Images_png/`, `DL_info.csv`).
pub fn synthesize(root: &Path, config: &SynthConfig) -> Result<SynthSummary> {
    if config.scans == 0
        || config.size < 32
        || config.lesions.0 == 0
        || config.lesions.0 > config.lesions.1
        || config.distractors.0 > config.distractors.1
    {
        return Err(Error::Argument {
            arg: "config",
            problem: format!(
                "{config:?}: needs scans >= 1, size >= 32, lesions >= 1 and ordered ranges"
            ),
        });
    }
    let per_scan: Vec<(Vec<Lesion>, usize)> = (0..config.scans)
        .into_par_iter()
        .map(|i| scan(root, config, i))
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    let mut summary = SynthSummary {
        scans: [0; 3],
        lesions: [0; 3],
        slices: 0,
    };
    for (lesions, slices) in per_scan {
        let k = lesions[0].split.code() as usize - 1;
        summary.scans[k] += 1;
        summary.lesions[k] += lesions.len();
        summary.slices += slices;
        rows.extend(lesions);
    }
    write_dl_info(&root.join("DL_info.csv"), &rows)?;
    Ok(summary)
}

/// The split of scan `i` of `n` over a seeded permutation: 15 % val, 15 % test (at least one
/// each), the rest train.
fn split_of(i: usize, n: usize, seed: u64) -> Split {
    let mut order: Vec<usize> = (0..n).collect();
    let mut d = Draw::new(seed ^ 0x5b11_7000);
    for k in (1..n).rev() {
        order.swap(k, (d.0.next() % (k as u64 + 1)) as usize);
    }
    let rank = order.iter().position(|&s| s == i).unwrap_or(0);
    if n < 3 {
        return if rank == 0 { Split::Train } else { Split::Val };
    }
    // 15 % each for val and test (at least one scan each), the rest train.
    let held = ((n as f64 * 0.15).round() as usize).max(1);
    let train = n - 2 * held;
    if rank < train {
        Split::Train
    } else if rank < train + held {
        Split::Val
    } else {
        Split::Test
    }
}

/// Writes scan `i`; returns its lesions' rows and the slices written.
fn scan(root: &Path, config: &SynthConfig, i: usize) -> Result<(Vec<Lesion>, usize)> {
    let mut d = Draw::new(
        config
            .seed
            .wrapping_mul(0x9e37_79b9)
            .wrapping_add(i as u64 + 1),
    );
    let n = config.size as f64;
    let interval = INTERVALS_MM[(d.0.next() % 3) as usize];
    let split = split_of(i, config.scans, config.seed);
    // Body geometry: an ellipse filling most of the field, the spine below its centre.
    let (bx, by) = (n * d.range(0.36, 0.44), n * d.range(0.30, 0.38));
    let (cx, cy) = (n / 2.0 + d.range(-2.0, 2.0), n / 2.0 + d.range(-2.0, 2.0));
    let spine = (cx, cy + by * 0.6, n * 0.06);
    let inside = |x: f64, y: f64, shrink: f64| {
        ((x - cx) / (bx - shrink)).powi(2) + ((y - cy) / (by - shrink)).powi(2) < 1.0
    };
    // Lesions first (their key slices fix the scan's z extent), then tubes.
    let n_lesions = d.count(config.lesions);
    let mut blobs: Vec<Blob> = Vec::new();
    let mut tries = 0;
    while blobs.len() < n_lesions && tries < 200 {
        tries += 1;
        let (radius, contrast) = cross_section(&mut d);
        let (x, y) = (d.range(cx - bx, cx + bx), d.range(cy - by, cy + by));
        if !inside(x, y, radius + 4.0) || (x - spine.0).hypot(y - spine.1) < spine.2 + radius + 3.0
        {
            continue;
        }
        let half_height_mm = radius * PIXEL_MM * d.range(0.6, 1.0);
        // Centred on a slice: the key slice is where the lesion is widest, as RECIST measures.
        let z = interval * (d.0.next() % 4) as f64;
        if blobs
            .iter()
            .any(|b| (b.x - x).hypot(b.y - y) < b.radius + radius + 4.0)
        {
            continue;
        }
        blobs.push(Blob {
            x,
            y,
            z,
            radius,
            contrast,
            half_height_mm,
            drift: (0.0, 0.0),
            tube: false,
        });
    }
    if blobs.is_empty() {
        // A crowded (small) field: one small lesion left of the centre, whatever the spacing
        // rules, so that every scan has a key slice.
        let (radius, contrast) = (3.0, d.range(60.0, 140.0));
        blobs.push(Blob {
            x: cx - bx * 0.5,
            y: cy,
            z: 0.0,
            radius,
            contrast,
            half_height_mm: radius * PIXEL_MM * d.range(0.6, 1.0),
            drift: (0.0, 0.0),
            tube: false,
        });
    }
    let n_tubes = d.count(config.distractors);
    let mut placed = 0;
    while placed < n_tubes && tries < 400 {
        tries += 1;
        let (radius, contrast) = cross_section(&mut d);
        let (x, y) = (d.range(cx - bx, cx + bx), d.range(cy - by, cy + by));
        if !inside(x, y, radius + 6.0) || (x - spine.0).hypot(y - spine.1) < spine.2 + radius + 3.0
        {
            continue;
        }
        if blobs
            .iter()
            .any(|b| (b.x - x).hypot(b.y - y) < b.radius + radius + 6.0)
        {
            continue;
        }
        let drift = (d.range(-0.08, 0.08), d.range(-0.08, 0.08));
        blobs.push(Blob {
            x,
            y,
            z: 0.0,
            radius,
            contrast,
            half_height_mm: f64::INFINITY,
            drift,
            tube: true,
        });
        placed += 1;
    }
    let lesions: Vec<Blob> = blobs.iter().filter(|b| !b.tube).copied().collect();
    // z extent: the margin around every lesion, on the scan's slice grid.
    let (zlo, zhi) = lesions
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), l| {
            (a.min(l.z), b.max(l.z))
        });
    let first = ((zlo - config.margin_mm) / interval).floor() as i64;
    let last = ((zhi + config.margin_mm) / interval).ceil() as i64;
    let count = (last - first + 1) as usize;
    let offset = 1 - first; // slice file indices start at 1
    let series_dir = format!("{:06}_01_01", i + 1);
    let dir = root.join("Images_png").join(&series_dir);
    let size = config.size;
    let texture_seed = d.0.next();
    for k in 0..count {
        let z_mm = (first + k as i64) as f64 * interval;
        let mut noise = Draw::new(texture_seed ^ (k as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut hu = vec![0.0f32; size * size];
        for (p, v) in hu.iter_mut().enumerate() {
            let (x, y) = ((p % size) as f64 + 0.5, (p / size) as f64 + 0.5);
            let mut value = if !inside(x, y, 0.0) {
                -1000.0
            } else if !inside(x, y, 3.0) {
                -100.0 // subcutaneous fat
            } else {
                40.0
            };
            if (x - spine.0).hypot(y - spine.1) < spine.2 {
                value = 700.0;
            }
            for b in &blobs {
                let (bx, by) = (b.x + b.drift.0 * z_mm, b.y + b.drift.1 * z_mm);
                let r = if b.tube {
                    b.radius
                } else {
                    let t = (z_mm - b.z) / b.half_height_mm;
                    if t.abs() >= 1.0 {
                        continue;
                    }
                    b.radius * (1.0 - t * t).sqrt()
                };
                value += b.contrast * edge((x - bx).hypot(y - by), r);
            }
            let sigma = if value < -500.0 { 4.0 } else { 12.0 };
            *v = (value + sigma * noise.normal()) as f32;
        }
        write_hu_png(
            &dir.join(format!("{:03}.png", k as i64 + 1)),
            size,
            size,
            &hu,
        )?;
    }
    let rows = lesions
        .iter()
        .enumerate()
        .map(|(j, l)| {
            let key = ((l.z / interval).round() as i64 + offset) as u32;
            // The cross-section on the key slice (its z is on the grid, near the centre).
            let zk = (key as i64 - offset) as f64 * interval;
            let t = (zk - l.z) / l.half_height_mm;
            let r = l.radius * (1.0 - t * t).max(0.0).sqrt();
            let bbox = [
                (l.x - r).floor().max(0.0) as f32,
                (l.y - r).floor().max(0.0) as f32,
                (l.x + r).ceil().min(n - 1.0) as f32,
                (l.y + r).ceil().min(n - 1.0) as f32,
            ];
            let dia = (2.0 * r) as f32;
            Lesion {
                file_name: format!("{series_dir}_{key:03}.png"),
                patient: i as u32 + 1,
                study: 1,
                series: 1,
                key_slice: key,
                recist: [
                    (l.x - r) as f32,
                    l.y as f32,
                    (l.x + r) as f32,
                    l.y as f32,
                    l.x as f32,
                    (l.y - r) as f32,
                    l.x as f32,
                    (l.y + r) as f32,
                ],
                bbox,
                diameters_px: [dia, dia],
                location: [(l.x / n) as f32, (l.y / n) as f32, 0.5],
                coarse_type: match split {
                    Split::Train => -1,
                    _ => 1 + ((l.radius - 3.0) / 5.0 * 8.0).clamp(0.0, 7.0) as i32,
                },
                noisy: false,
                slice_range: [1, count as u32],
                spacing: [PIXEL_MM as f32, PIXEL_MM as f32, interval as f32],
                image_size: [size as u32, size as u32],
                dicom_window: [-175.0, 275.0],
                gender: if j % 2 == 0 { "F".into() } else { "M".into() },
                age: Some(30.0 + (i % 50) as f32),
                split,
            }
        })
        .collect();
    Ok((rows, count))
}
