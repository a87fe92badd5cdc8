//! The in-memory CT volume and the size limits every reader checks headers against.

use crate::{Error, Result};
use std::path::Path;

/// Sizes a reader accepts from a file's header before it allocates anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most voxels of one volume (default 2^30: 4 GiB of f32).
    pub max_voxels: u64,
    /// Most pixels along one image axis (default 16384).
    pub max_side: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_voxels: 1 << 30,
            max_side: 16384,
        }
    }
}

impl Limits {
    /// Checks an image of `width x height` (times `slices`) from `path`'s header.
    pub(crate) fn check(&self, path: &Path, width: u64, height: u64, slices: u64) -> Result<()> {
        for (what, got) in [("width", width), ("height", height)] {
            if got == 0 {
                return Err(Error::invalid(path, format!("{what} is 0")));
            }
            if got > self.max_side as u64 {
                return Err(Error::TooLarge {
                    path: path.into(),
                    what,
                    got,
                    limit: self.max_side as u64,
                });
            }
        }
        let voxels = width.saturating_mul(height).saturating_mul(slices);
        if voxels > self.max_voxels {
            return Err(Error::TooLarge {
                path: path.into(),
                what: "voxel count",
                got: voxels,
                limit: self.max_voxels,
            });
        }
        Ok(())
    }
}

/// A CT volume: HU values `[Z, H, W]` (slice-major, then rows), the spacing in mm along
/// (z, y, x), and where the format records it, the patient-space origin of the first voxel and
/// the direction cosines of the (x, y, z) axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// HU, `shape[0] * shape[1] * shape[2]` values.
    pub hu: Vec<f32>,
    /// `[Z, H, W]`.
    pub shape: [usize; 3],
    /// mm between voxel centres along (z, y, x).
    pub spacing: [f64; 3],
    /// Patient-space position (mm) of voxel (0, 0, 0), when known.
    pub origin: Option<[f64; 3]>,
    /// Unit vectors of the column (x), row (y) and slice (z) directions, when known.
    pub direction: Option<[[f64; 3]; 3]>,
}

impl Volume {
    /// A volume from its parts, checked: the value count matches the shape and the spacing is
    /// finite and positive.
    pub fn new(hu: Vec<f32>, shape: [usize; 3], spacing: [f64; 3]) -> Result<Volume> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(hu.len()) {
            return Err(Error::Argument {
                arg: "hu",
                problem: format!("{} values for shape {shape:?}", hu.len()),
            });
        }
        if let Some(s) = spacing.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::Argument {
                arg: "spacing",
                problem: format!("{s} mm in {spacing:?}: spacing must be finite and positive"),
            });
        }
        Ok(Volume {
            hu,
            shape,
            spacing,
            origin: None,
            direction: None,
        })
    }

    /// Slice `z` as `H * W` values.
    pub fn slice(&self, z: usize) -> Option<&[f32]> {
        let plane = self.shape[1] * self.shape[2];
        self.hu.get(z * plane..(z + 1) * plane)
    }

    /// The smallest and largest HU (None for an empty volume).
    pub fn hu_range(&self) -> Option<(f32, f32)> {
        self.hu.iter().fold(None, |acc, &v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
    }
}
