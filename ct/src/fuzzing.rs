//! A mutation fuzzer for the readers, runnable on the project's stable toolchain (cargo-fuzz
//! needs nightly): seeds (the committed corpus in `ct/fuzz/corpus/<target>/` plus inputs made by
//! [`crate::write`]) are mutated (bit flips, byte overwrites with boundary values, truncation,
//! duplication and deletion of ranges, splices of two inputs) and fed to the reader in memory.
//! A panic is a finding; a typed error or a success is a pass. `ct/examples/fuzz.rs` runs it for
//! long campaigns; `ct/tests/fuzz_smoke.rs` briefly in CI.

use crate::{Limits, Result};
use std::path::Path;

/// What is fuzzed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// [`crate::read_hu_png_from`].
    PngSlice,
    /// [`crate::deeplesion::read_dl_info_from`].
    DlInfoCsv,
    /// [`crate::nifti::read_nifti`] (through a temporary `.nii` file: the `nifti` crate reads
    /// paths).
    Nifti,
    /// [`crate::dicom::read_dicom`] of one file (through a temporary file, likewise).
    Dicom,
}

impl Target {
    /// `png` or `csv`.
    pub fn name(self) -> &'static str {
        match self {
            Target::PngSlice => "png",
            Target::DlInfoCsv => "csv",
            Target::Nifti => "nifti",
            Target::Dicom => "dicom",
        }
    }

    /// Runs the reader on `bytes`: whether it returned a value (`Ok`) or a typed error.
    pub fn exec(self, bytes: &[u8]) -> bool {
        // Tight limits: a fuzzed header may ask for the maximum; it must be refused or cheap.
        let limits = Limits {
            max_voxels: 1 << 22,
            max_side: 4096,
        };
        let label = Path::new("<fuzz input>");
        match self {
            Target::PngSlice => {
                crate::read_hu_png_from(label, std::io::Cursor::new(bytes), &limits).is_ok()
            }
            Target::DlInfoCsv => crate::deeplesion::read_dl_info_from(label, bytes).is_ok(),
            Target::Nifti | Target::Dicom => {
                let path = std::env::temp_dir().join(format!(
                    "a3d-ct-fuzz-{}-{:?}.{}",
                    std::process::id(),
                    std::thread::current().id(),
                    if self == Target::Nifti { "nii" } else { "dcm" }
                ));
                if std::fs::write(&path, bytes).is_err() {
                    return false;
                }
                let accepted = if self == Target::Nifti {
                    crate::nifti::read_nifti(&path, &limits).is_ok()
                } else {
                    let options = crate::dicom::DicomOptions {
                        series: None,
                        limits,
                    };
                    crate::dicom::read_dicom(&path, &options).is_ok()
                };
                // Removed after each input, so campaigns leave nothing in the temp folder.
                let _ = std::fs::remove_file(&path);
                accepted
            }
        }
    }
}

/// What a campaign found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Inputs run.
    pub execs: u64,
    /// Inputs the reader accepted.
    pub accepted: u64,
    /// Inputs that panicked (the first few kept, hex-encoded).
    pub panics: Vec<String>,
}

/// SplitMix64, local so the fuzzer (and the synthetic data) need nothing else.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let n = v.len();
        match rng.below(7) {
            0 if n > 0 => {
                let i = rng.below(n);
                v[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                v[i] = [0u8, 1, 0x7f, 0x80, 0xff, b',', b'"', b'\n'][rng.below(8)];
            }
            2 if n > 0 => v.truncate(rng.below(n)),
            3 if n > 1 => {
                let (a, b) = (rng.below(n), rng.below(n));
                let (a, b) = (a.min(b), a.max(b).min(a.min(b) + 64));
                let chunk = v[a..b].to_vec();
                let at = rng.below(n);
                v.splice(at..at, chunk);
            }
            4 if n > 1 => {
                let a = rng.below(n);
                let b = (a + 1 + rng.below(16)).min(n);
                v.drain(a..b);
            }
            5 if !other.is_empty() && n > 0 => {
                let cut = rng.below(n);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ if n >= 4 => {
                // A 32-bit field set to a boundary value (PNG sizes and lengths are 32-bit).
                let i = rng.below(n - 3);
                let val: u32 = [0, 1, 0x7fff_ffff, 0xffff_ffff, 65535, 65536, 4097][rng.below(7)];
                v[i..i + 4].copy_from_slice(&val.to_be_bytes());
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

/// The built-in seeds of `target`: valid inputs made by the writers, and the committed corpus.
pub fn seeds(target: Target, corpus: Option<&Path>) -> Result<Vec<Vec<u8>>> {
    let dir = std::env::temp_dir().join(format!(
        "a3d-ct-seeds-{}-{}",
        target.name(),
        std::process::id()
    ));
    let mut out = Vec::new();
    match target {
        Target::PngSlice => {
            for (w, h) in [(1usize, 1usize), (7, 5), (16, 3)] {
                let p = dir.join(format!("{w}x{h}.png"));
                let hu: Vec<f32> = (0..w * h).map(|i| i as f32 * 37.0 - 1000.0).collect();
                crate::write::write_hu_png(&p, w, h, &hu)?;
                out.push(std::fs::read(&p).map_err(|e| crate::Error::io(&p, e))?);
            }
        }
        Target::Nifti => {
            for (i, shape) in [[2usize, 3, 4], [1, 1, 1], [3, 2, 5]].iter().enumerate() {
                let n: usize = shape.iter().product();
                let hu: Vec<f32> = (0..n).map(|v| v as f32 * 11.0 - 300.0).collect();
                let v = crate::Volume::new(hu, *shape, [1.5, 0.5, 0.7])?;
                let p = dir.join(format!("seed{i}.nii"));
                crate::write::write_nifti(&p, &v)?;
                out.push(std::fs::read(&p).map_err(|e| crate::Error::io(&p, e))?);
            }
        }
        Target::Dicom => {
            use crate::write::{DicomSyntax, DicomWriteOptions};
            let cases = [
                (DicomSyntax::ExplicitVrLittleEndian, false),
                (DicomSyntax::ImplicitVrLittleEndian, true),
                (DicomSyntax::ExplicitVrBigEndian, false),
            ];
            for (i, (syntax, multi_frame)) in cases.into_iter().enumerate() {
                let shape = [2usize, 3, 5];
                let hu: Vec<f32> = (0..30).map(|v| v as f32 * 13.0 - 400.0).collect();
                let v = crate::Volume::new(hu, shape, [2.0, 0.5, 0.7])?;
                let d = dir.join(format!("seed{i}"));
                let options = DicomWriteOptions {
                    syntax,
                    multi_frame,
                    ..DicomWriteOptions::default()
                };
                let files = crate::write::write_dicom_series(&d, &v, &options)?;
                out.push(std::fs::read(&files[0]).map_err(|e| crate::Error::io(&files[0], e))?);
            }
        }
        Target::DlInfoCsv => {
            let mut text = crate::deeplesion::COLUMNS.join(",");
            text.push('\n');
            text.push_str("000001_01_01_109.png,1,1,1,109,\"233.5, 95.0, 234.2, 83.9, 231.0, 91.0, 236.9, 89.8\",\"226, 90, 241, 98\",\"11.7, 4.2\",\"0.44, 0.43, 0.71\",-1,0,\"103, 115\",\"0.488, 0.488, 5\",\"512, 512\",\"-175, 275\",F,62,1\n");
            out.push(text.into_bytes());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(dir) = corpus {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                out.push(std::fs::read(&p).map_err(|e| crate::Error::io(&p, e))?);
            }
        }
    }
    Ok(out)
}

/// Runs `execs` mutated inputs through `target` (or until `deadline`), from `seeds`.
pub fn run(
    target: Target,
    seeds: &[Vec<u8>],
    execs: u64,
    seed: u64,
    deadline: Option<std::time::Instant>,
) -> Report {
    let mut rng = Rng(seed);
    let mut report = Report::default();
    // The mutations only ever grow the pool with accepted inputs (a crude coverage proxy).
    let mut pool: Vec<Vec<u8>> = seeds.to_vec();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..execs {
        if i % 1024 == 0 && deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        let a = &pool[rng.below(pool.len())];
        let b = &pool[rng.below(pool.len())];
        let input = mutate(&mut rng, a, b);
        match std::panic::catch_unwind(|| target.exec(&input)) {
            Ok(accepted) => {
                if accepted {
                    report.accepted += 1;
                    if pool.len() < 4096 && rng.below(16) == 0 {
                        pool.push(input);
                    }
                }
            }
            Err(_) => {
                if report.panics.len() < 8 {
                    report
                        .panics
                        .push(input.iter().map(|b| format!("{b:02x}")).collect());
                }
            }
        }
        report.execs += 1;
    }
    std::panic::set_hook(previous);
    report
}
