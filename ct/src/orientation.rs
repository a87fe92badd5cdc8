//! a3d's fixed axial orientation, shared by every volume reader:
//!
//! - slices (axis 0) from inferior to superior (+z in DICOM's LPS patient system),
//! - rows (axis 1) from anterior to posterior (+y),
//! - columns (axis 2) from the patient's right to left (+x): the radiological display that
//!   DeepLesion's slices and DICOM's axial images use.
//!
//! A reader hands over the stored voxels (fastest axis first) and the voxel-to-LPS affine; each
//! stored axis is mapped to the patient axis it runs closest to (permutations and flips, no
//! resampling), and an oblique volume is snapped to it with the angle reported.

use crate::Volume;

/// Voxel-to-patient (LPS, mm) affine, 3 x 4: column `s` is the step along stored axis `s`
/// (0 = fastest), column 3 the position of stored voxel (0, 0, 0).
pub(crate) type AffineLps = [[f64; 4]; 3];

/// How the stored axes became a3d's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AxisMap {
    /// For each output axis (slices, rows, columns): the stored axis it reads (0 = the file's
    /// fastest) and whether it runs the other way.
    pub axes: [(usize, bool); 3],
    /// The largest angle (degrees) between a stored axis and the patient axis it was mapped to.
    pub obliquity_deg: f64,
}

pub(crate) fn column_norm(a: &AffineLps, s: usize) -> f64 {
    (0..3).map(|r| a[r][s] * a[r][s]).sum::<f64>().sqrt()
}

/// The stored axis running closest to each output axis, or why the affine has none.
pub(crate) fn axis_map(a: &AffineLps) -> std::result::Result<AxisMap, String> {
    // Output axis -> the LPS component it runs along (all in the + direction).
    const COMPONENT: [usize; 3] = [2, 1, 0];
    let mut axes = [(usize::MAX, false); 3];
    let mut worst: f64 = 0.0;
    for s in 0..3 {
        let norm = column_norm(a, s);
        if !(norm.is_finite() && norm > 0.0) {
            return Err(format!("stored axis {s} has a zero or non-finite step"));
        }
        let (comp, val) = (0..3)
            .map(|r| (r, a[r][s]))
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
            .unwrap_or((0, 0.0));
        let out = COMPONENT.iter().position(|&c| c == comp).unwrap_or(0);
        if axes[out].0 != usize::MAX {
            return Err(format!(
                "stored axes {} and {s} both run along patient axis {}: the orientation is degenerate",
                axes[out].0,
                ["x", "y", "z"][comp]
            ));
        }
        axes[out] = (s, val < 0.0);
        worst = worst.max((val.abs() / norm).clamp(-1.0, 1.0).acos().to_degrees());
    }
    Ok(AxisMap {
        axes,
        obliquity_deg: worst,
    })
}

/// The volume in a3d's orientation from `stored` (`dims[0]` fastest) and its affine, with the
/// LPS origin and directions of the output axes.
pub(crate) fn reorient(
    stored: &[f32],
    dims: [usize; 3],
    affine: &AffineLps,
) -> std::result::Result<(Volume, AxisMap), String> {
    let map = axis_map(affine)?;
    let n = dims.iter().product::<usize>();
    if stored.len() != n {
        return Err(format!("{} voxels for dims {dims:?}", stored.len()));
    }
    let axes = map.axes;
    let out_dims = axes.map(|(s, _)| dims[s]);
    let strides = [1usize, dims[0], dims[0] * dims[1]];
    // Offset of output index i along output axis a in the stored array.
    let offset = |a: usize, i: usize| {
        let (s, flip) = axes[a];
        (if flip { out_dims[a] - 1 - i } else { i }) * strides[s]
    };
    let mut hu = Vec::with_capacity(n);
    if axes == [(2, false), (1, false), (0, false)] {
        hu.extend_from_slice(stored);
    } else {
        for z in 0..out_dims[0] {
            let iz = offset(0, z);
            for y in 0..out_dims[1] {
                let iy = iz + offset(1, y);
                hu.extend((0..out_dims[2]).map(|x| stored[iy + offset(2, x)]));
            }
        }
    }
    let spacing = axes.map(|(s, _)| column_norm(affine, s));
    let mut volume = Volume::new(hu, out_dims, spacing).map_err(|e| e.to_string())?;
    let mut origin = [affine[0][3], affine[1][3], affine[2][3]];
    let mut direction = [[0.0; 3]; 3];
    for (out_axis, &(s, flip)) in axes.iter().enumerate() {
        let col = [affine[0][s], affine[1][s], affine[2][s]];
        let norm = column_norm(affine, s);
        if flip {
            for (o, c) in origin.iter_mut().zip(col) {
                *o += c * (dims[s] - 1) as f64;
            }
        }
        let sign = if flip { -1.0 } else { 1.0 };
        // Volume::direction lists (x, y, z) = (columns, rows, slices).
        direction[2 - out_axis] = col.map(|c| sign * c / norm);
    }
    volume.origin = Some(origin);
    volume.direction = Some(direction);
    Ok((volume, map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_keeps_the_voxels() {
        let a = [
            [0.7, 0.0, 0.0, -10.0],
            [0.0, 0.8, 0.0, 20.0],
            [0.0, 0.0, 2.5, 30.0],
        ];
        let stored: Vec<f32> = (0..2 * 3 * 4).map(|v| v as f32).collect();
        let (v, map) = reorient(&stored, [4, 3, 2], &a).unwrap();
        assert_eq!(v.shape, [2, 3, 4]);
        assert_eq!(v.hu, stored);
        assert_eq!(v.spacing, [2.5, 0.8, 0.7]);
        assert_eq!(map.axes, [(2, false), (1, false), (0, false)]);
        assert_eq!(v.origin, Some([-10.0, 20.0, 30.0]));
    }

    #[test]
    fn flipped_and_permuted_axes_land_in_place() {
        // Stored axis 0 runs to superior, 1 to the right (-x), 2 to anterior (-y).
        let a = [
            [0.0, -1.0, 0.0, 5.0],
            [0.0, 0.0, -2.0, 6.0],
            [3.0, 0.0, 0.0, 7.0],
        ];
        let dims = [2, 3, 4];
        let stored: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let (v, map) = reorient(&stored, dims, &a).unwrap();
        assert_eq!(map.axes, [(0, false), (2, true), (1, true)]);
        assert_eq!(v.shape, [2, 4, 3]);
        assert_eq!(v.spacing, [3.0, 2.0, 1.0]);
        // Output (z, y, x) reads stored (i = z, j = 2 - x, k = 3 - y).
        for z in 0..2 {
            for y in 0..4 {
                for x in 0..3 {
                    let s = z + (2 - x) * 2 + (3 - y) * 6;
                    assert_eq!(v.hu[(z * 4 + y) * 3 + x], s as f32);
                }
            }
        }
        // The first output voxel sits at stored (0, 2, 3).
        assert_eq!(v.origin, Some([5.0 - 2.0, 6.0 - 6.0, 7.0]));
        let d = v.direction.unwrap();
        assert_eq!(d, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    }

    #[test]
    fn degenerate_affine_is_refused() {
        let a = [
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 0.1, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ];
        assert!(axis_map(&a).unwrap_err().contains("degenerate"));
        let z = [[0.0; 4]; 3];
        assert!(axis_map(&z).unwrap_err().contains("zero"));
    }
}
