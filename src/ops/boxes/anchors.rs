//! Anchor generation exactly as the reference detector's RPN (mmdetection 1.0's
//! `AnchorGenerator` with the centre offset `ctr = 0`, reference-detector.md section 4.1).

use crate::{Error, Result};

/// The RPN's anchors: `scales x ratios` base boxes centred on `(0, 0)`, repeated at every
/// `stride`-th pixel of the feature grid.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorGenerator {
    /// Base size in pixels (the reference: 4).
    pub base_size: f32,
    /// Scales (the reference: 4, 6, 8, 12, 24, 48).
    pub scales: Vec<f32>,
    /// Height-to-width ratios (the reference: 0.5, 1, 2).
    pub ratios: Vec<f32>,
    /// Feature-map stride in input pixels (the reference: 4).
    pub stride: usize,
}

impl AnchorGenerator {
    /// The reference detector's 18 anchors at stride 4.
    pub fn reference() -> AnchorGenerator {
        AnchorGenerator {
            base_size: 4.0,
            scales: vec![4.0, 6.0, 8.0, 12.0, 24.0, 48.0],
            ratios: vec![0.5, 1.0, 2.0],
            stride: 4,
        }
    }

    /// Anchors per grid location.
    pub fn per_location(&self) -> usize {
        self.scales.len() * self.ratios.len()
    }

    fn check(&self) -> Result<()> {
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !positive(self.base_size) || self.stride == 0 {
            return Err(Error::InvalidArgument {
                arg: "anchor_generator",
                message: format!(
                    "base size {} and stride {} must be positive",
                    self.base_size, self.stride
                ),
            });
        }
        if let Some(v) = self
            .scales
            .iter()
            .chain(&self.ratios)
            .find(|&&v| !positive(v))
        {
            return Err(Error::InvalidArgument {
                arg: "anchor_generator",
                message: format!("scales and ratios must be positive and finite, got {v}"),
            });
        }
        Ok(())
    }

    /// The base anchors, ratio-major (`index = ratio_index * scales + scale_index`): for ratio
    /// `r`, `h = sqrt(r)`, `w = 1 / h`, widths `base * w * scale`, corners
    /// `round(+-0.5 * (size - 1))` with ties to even, all in f32 as the reference computes them.
    pub fn base_anchors(&self) -> Result<Vec<[f32; 4]>> {
        self.check()?;
        let mut out = Vec::with_capacity(self.per_location());
        for &r in &self.ratios {
            let hr = r.sqrt();
            let wr = 1.0 / hr;
            for &s in &self.scales {
                let ws = self.base_size * wr * s;
                let hs = self.base_size * hr * s;
                let (hw, hh) = (0.5 * (ws - 1.0), 0.5 * (hs - 1.0));
                out.push([-hw, -hh, hw, hh].map(f32::round_ties_even));
            }
        }
        Ok(out)
    }

    /// Every anchor of a `feat_h x feat_w` grid, `anchor[(y * feat_w + x) * A + a] = base[a] +
    /// stride * (x, y, x, y)`: the order of the RPN head's flattened outputs.
    pub fn grid_anchors(&self, feat_h: usize, feat_w: usize) -> Result<Vec<[f32; 4]>> {
        let base = self.base_anchors()?;
        let len = feat_h
            .checked_mul(feat_w)
            .and_then(|n| n.checked_mul(base.len()))
            .filter(|&n| n <= isize::MAX as usize / 16)
            .ok_or(Error::ElementCountOverflow {
                shape: vec![feat_h, feat_w, base.len(), 4],
            })?;
        let mut out = Vec::new();
        out.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
            shape: vec![feat_h, feat_w, base.len(), 4],
            bytes: len * 16,
        })?;
        let st = self.stride as f32;
        for y in 0..feat_h {
            for x in 0..feat_w {
                let (sx, sy) = (x as f32 * st, y as f32 * st);
                out.extend(
                    base.iter()
                        .map(|b| [b[0] + sx, b[1] + sy, b[2] + sx, b[3] + sy]),
                );
            }
        }
        Ok(out)
    }

    /// Per anchor of [`AnchorGenerator::grid_anchors`], whether its grid cell lies inside the
    /// un-padded part of a padded batch: cells `x < ceil(valid_w / stride)` and
    /// `y < ceil(valid_h / stride)` (the reference's `valid_flags`).
    pub fn valid_flags(
        &self,
        feat_h: usize,
        feat_w: usize,
        valid_h: usize,
        valid_w: usize,
    ) -> Result<Vec<bool>> {
        self.check()?;
        let (vh, vw) = (valid_h.div_ceil(self.stride), valid_w.div_ceil(self.stride));
        let a = self.per_location();
        let mut out = Vec::with_capacity(feat_h * feat_w * a);
        for y in 0..feat_h {
            for x in 0..feat_w {
                out.extend(std::iter::repeat_n(y < vh && x < vw, a));
            }
        }
        Ok(out)
    }
}

/// Whether each anchor lies inside an `img_h x img_w` image with `allowed_border` pixels of
/// slack (the reference uses 0): `x1 >= -border`, `y1 >= -border`, `x2 < img_w + border`,
/// `y2 < img_h + border`. Anchors outside get no training target.
pub fn inside_flags(
    anchors: &[[f32; 4]],
    img_h: usize,
    img_w: usize,
    allowed_border: f32,
) -> Vec<bool> {
    let (h, w, b) = (img_h as f32, img_w as f32, allowed_border);
    anchors
        .iter()
        .map(|a| a[0] >= -b && a[1] >= -b && a[2] < w + b && a[3] < h + b)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 18 base anchors reference-detector.md section 4.1 lists.
    #[test]
    fn the_reference_base_anchors() {
        let expected: [[f32; 4]; 18] = [
            [-11., -5., 11., 5.],
            [-16., -8., 16., 8.],
            [-22., -11., 22., 11.],
            [-33., -16., 33., 16.],
            [-67., -33., 67., 33.],
            [-135., -67., 135., 67.],
            [-8., -8., 8., 8.],
            [-12., -12., 12., 12.],
            [-16., -16., 16., 16.],
            [-24., -24., 24., 24.],
            [-48., -48., 48., 48.],
            [-96., -96., 96., 96.],
            [-5., -11., 5., 11.],
            [-8., -16., 8., 16.],
            [-11., -22., 11., 22.],
            [-16., -33., 16., 33.],
            [-33., -67., 33., 67.],
            [-67., -135., 67., 135.],
        ];
        assert_eq!(
            AnchorGenerator::reference().base_anchors().unwrap(),
            expected
        );
    }

    #[test]
    fn grid_order_and_flags() {
        let g = AnchorGenerator::reference();
        let a = g.grid_anchors(3, 5).unwrap();
        assert_eq!(a.len(), 3 * 5 * 18);
        // location (y = 2, x = 3), anchor 7 = base [-12, -12, 12, 12] + (12, 8, 12, 8)
        assert_eq!(a[(2 * 5 + 3) * 18 + 7], [0., -4., 24., 20.]);
        let v = g.valid_flags(3, 5, 9, 13).unwrap(); // ceil(9/4) = 3 rows, ceil(13/4) = 4 cols
        assert!(v[(2 * 5 + 3) * 18]);
        assert!(!v[(2 * 5 + 4) * 18 + 17]);
        let inside = inside_flags(
            &[[0., 0., 15., 15.], [-1., 0., 5., 5.], [0., 0., 16., 5.]],
            16,
            16,
            0.0,
        );
        assert_eq!(inside, vec![true, false, false]);
        assert!(AnchorGenerator {
            stride: 0,
            ..g.clone()
        }
        .grid_anchors(2, 2)
        .is_err());
        assert!(AnchorGenerator {
            ratios: vec![f32::NAN],
            ..g
        }
        .base_anchors()
        .is_err());
    }
}
