//! # a3d-ct: CT scans to the A3D detector's input
//!
//! Reads the scans people have and turns them into exactly the input the reference detector sees
//! (`shared/docs/deeplesion.md`, `shared/docs/reference-detector.md` section 1):
//!
//! - [`Volume`]: HU voxels `[Z, H, W]` with their spacing (and patient geometry where known);
//! - [`deeplesion`]: `DL_info.csv` (every column, the official split, noisy lesions excluded,
//!   boxes and RECIST points made 0-based), the 16-bit PNG slices (HU = value - 32768), and a key
//!   slice's neighbours at the detector's 2.0 mm spacing;
//! - [`nifti`]: NIfTI-1 volumes (`.nii`, `.nii.gz`) reoriented to a fixed axial orientation;
//! - [`dicom`]: DICOM CT series (a folder of one or more series, or one multi-frame file)
//!   ordered by position along the slice normal, in the same orientation;
//! - [`network`]: windowing to `0..255 - 50`, the keep-ratio resize to 512, padding to a multiple
//!   of 32, and the map of boxes between original and network pixels;
//! - [`synth`]: a synthetic DeepLesion-format dataset whose lesions need 3D context;
//! - [`write`]: small DeepLesion-format folders, NIfTI volumes and DICOM series for tests and
//!   benchmarks.
//!
//! Every reader validates sizes from a file's header against [`Limits`] before allocating, and
//! every failure is an [`Error`] naming the file and the problem.

pub mod deeplesion;
pub mod dicom;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod network;
pub mod nifti;
mod orientation;
mod png_slice;
pub mod synth;
mod volume;
pub mod write;

pub use error::{Error, Result};
pub use png_slice::{read_hu_png, read_hu_png_from, HuSlice};
pub use volume::{Limits, Volume};
