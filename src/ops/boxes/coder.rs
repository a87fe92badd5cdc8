//! Box delta coding with the reference's legacy +1 convention (mmdetection 1.0's
//! `bbox2delta` / `delta2bbox`, reference-detector.md section 4.2), in f32.

use super::{check_boxes, PixelConvention};
use crate::{Error, Result};

/// Encodes ground-truth boxes relative to proposals and decodes network deltas back to boxes.
/// A delta is `[dx, dy, dw, dh]` normalised as `(delta - means) / stds`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeltaCoder {
    /// Means subtracted after encoding.
    pub means: [f32; 4],
    /// Standard deviations divided by after encoding.
    pub stds: [f32; 4],
    /// `dw`, `dh` are clamped to `+-max_ratio` when decoding (the reference: `|ln(16 / 1000)|`).
    pub max_ratio: f32,
}

impl DeltaCoder {
    /// The RPN's coder: means 0, stds 1.
    pub fn rpn() -> DeltaCoder {
        DeltaCoder {
            means: [0.0; 4],
            stds: [1.0; 4],
            max_ratio: (16.0f32 / 1000.0).ln().abs(),
        }
    }

    /// The R-CNN head's coder: means 0, stds (0.1, 0.1, 0.2, 0.2).
    pub fn rcnn() -> DeltaCoder {
        DeltaCoder {
            stds: [0.1, 0.1, 0.2, 0.2],
            ..DeltaCoder::rpn()
        }
    }

    fn check(&self) -> Result<()> {
        if !self.stds.iter().all(|s| s.is_finite() && *s > 0.0)
            || !self.means.iter().all(|m| m.is_finite())
            || self.max_ratio.is_nan()
            || self.max_ratio < 0.0
        {
            return Err(Error::InvalidArgument {
                arg: "coder",
                message: format!(
                    "means {:?} must be finite, stds {:?} and max_ratio {} positive",
                    self.means, self.stds, self.max_ratio
                ),
            });
        }
        Ok(())
    }

    /// The normalised deltas that move each `proposals[i]` onto `gt[i]`.
    pub fn encode(&self, proposals: &[[f32; 4]], gt: &[[f32; 4]]) -> Result<Vec<[f32; 4]>> {
        self.check()?;
        check_boxes("proposals", proposals, PixelConvention::Inclusive)?;
        check_boxes("gt", gt, PixelConvention::Inclusive)?;
        if proposals.len() != gt.len() {
            return Err(Error::InvalidArgument {
                arg: "gt",
                message: format!("{} boxes for {} proposals", gt.len(), proposals.len()),
            });
        }
        Ok(proposals
            .iter()
            .zip(gt)
            .map(|(p, g)| {
                let (px, py) = ((p[0] + p[2]) * 0.5, (p[1] + p[3]) * 0.5);
                let (pw, ph) = (p[2] - p[0] + 1.0, p[3] - p[1] + 1.0);
                let (gx, gy) = ((g[0] + g[2]) * 0.5, (g[1] + g[3]) * 0.5);
                let (gw, gh) = (g[2] - g[0] + 1.0, g[3] - g[1] + 1.0);
                let d = [
                    (gx - px) / pw,
                    (gy - py) / ph,
                    (gw / pw).ln(),
                    (gh / ph).ln(),
                ];
                std::array::from_fn(|k| (d[k] - self.means[k]) / self.stds[k])
            })
            .collect())
    }

    /// Applies `deltas[i]` to `rois[i]`; with `image` = `(height, width)` the corners are
    /// clipped to `[0, width - 1]` and `[0, height - 1]`.
    pub fn decode(
        &self,
        rois: &[[f32; 4]],
        deltas: &[[f32; 4]],
        image: Option<(usize, usize)>,
    ) -> Result<Vec<[f32; 4]>> {
        self.check()?;
        check_boxes("rois", rois, PixelConvention::Inclusive)?;
        if rois.len() != deltas.len() {
            return Err(Error::InvalidArgument {
                arg: "deltas",
                message: format!("{} deltas for {} rois", deltas.len(), rois.len()),
            });
        }
        if let Some(i) = deltas.iter().position(|d| d.iter().any(|v| v.is_nan())) {
            return Err(Error::InvalidArgument {
                arg: "deltas",
                message: format!("delta {i} is NaN"),
            });
        }
        let m = self.max_ratio;
        Ok(rois
            .iter()
            .zip(deltas)
            .map(|(r, d)| {
                let d: [f32; 4] = std::array::from_fn(|k| d[k] * self.stds[k] + self.means[k]);
                let (dw, dh) = (d[2].clamp(-m, m), d[3].clamp(-m, m));
                let (px, py) = ((r[0] + r[2]) * 0.5, (r[1] + r[3]) * 0.5);
                let (pw, ph) = (r[2] - r[0] + 1.0, r[3] - r[1] + 1.0);
                let (gw, gh) = (pw * dw.exp(), ph * dh.exp());
                let (gx, gy) = (px + pw * d[0], py + ph * d[1]);
                let b = [
                    gx - gw * 0.5 + 0.5,
                    gy - gh * 0.5 + 0.5,
                    gx + gw * 0.5 - 0.5,
                    gy + gh * 0.5 - 0.5,
                ];
                match image {
                    Some((h, w)) => {
                        let (xm, ym) = ((w as f32 - 1.0).max(0.0), (h as f32 - 1.0).max(0.0));
                        [
                            b[0].clamp(0.0, xm),
                            b[1].clamp(0.0, ym),
                            b[2].clamp(0.0, xm),
                            b[3].clamp(0.0, ym),
                        ]
                    }
                    None => b,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_inverts_encode_and_clamps() {
        let c = DeltaCoder::rcnn();
        let p = [[10.0, 20.0, 49.0, 39.0], [0.0, 0.0, 0.0, 0.0]];
        let g = [[12.5, 18.0, 60.0, 44.0], [0.0, 0.0, 3.0, 1.0]];
        let d = c.encode(&p, &g).unwrap();
        // By hand: px = 29.5, pw = 40, gx = 36.25, gw = 48.5 -> dx = 6.75 / 40 / 0.1.
        assert!((d[0][0] - 6.75 / 40.0 / 0.1).abs() < 1e-5);
        assert!((d[0][2] - (48.5f32 / 40.0).ln() / 0.2).abs() < 1e-5);
        let back = c.decode(&p, &d, None).unwrap();
        for (b, g) in back.iter().zip(&g) {
            for k in 0..4 {
                assert!((b[k] - g[k]).abs() < 1e-4, "{back:?} vs {g:?}");
            }
        }
        // A huge dw is clamped to ln(1000 / 16); the box is clipped to a 30 x 50 image.
        let big = c
            .decode(&p[..1], &[[0.0, 0.0, 100.0, 0.0]], Some((30, 50)))
            .unwrap();
        assert_eq!(big[0][0], 0.0);
        assert_eq!(big[0][2], 49.0);
        assert!(big[0][3] <= 29.0);
        assert!(c.decode(&p[..1], &[[f32::NAN; 4]], None).is_err());
        assert!(c.encode(&p, &g[..1]).is_err());
    }
}
