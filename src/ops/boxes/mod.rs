//! Detection box geometry: IoU, non-maximum suppression, anchors and the box delta coder, with
//! the pixel conventions of the reference detector (mmdetection 1.0, as `shared/docs/
//! reference-detector.md` sections 4 and 8 record them).
//!
//! Boxes are `[x1, y1, x2, y2]` in pixels, f32. Two pixel conventions exist
//! ([`PixelConvention`]): the reference's *inclusive* one, where a box covers pixels `x1..=x2`
//! and is `x2 - x1 + 1` wide, and the *continuous* one of torchvision, `x2 - x1` wide.
//!
//! ```
//! use a3d::boxes::{iou_matrix, Nms, PixelConvention};
//!
//! let boxes = [[0.0, 0.0, 9.0, 9.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 29.0, 29.0]];
//! let scores = [0.9, 0.8, 0.7];
//! // The reference's RPN: suppress IoU > 0.7 with +1 areas.
//! let kept = Nms::reference(0.7).run(&boxes, &scores)?;
//! assert_eq!(kept, vec![0, 1, 2]); // IoU(0, 1) = 81 / 119 = 0.68
//! let iou = iou_matrix(&boxes[..1], &boxes[1..2], PixelConvention::Inclusive)?;
//! assert!((iou[0] - 81.0 / 119.0).abs() < 1e-6);
//! # Ok::<(), a3d::Error>(())
//! ```

mod anchors;
mod coder;
pub(crate) mod cpu_kernel;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "emulation")]
mod emulated;
#[cfg(any(feature = "cuda", feature = "emulation"))]
pub(crate) mod launch;
#[doc(hidden)]
pub mod reference;

pub use anchors::{inside_flags, AnchorGenerator};
pub use coder::DeltaCoder;

use crate::{Error, Result};

/// How a box's corners map to pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PixelConvention {
    /// The reference's legacy convention: `[x1, x2]` are the first and last pixel covered, so
    /// the width is `x2 - x1 + 1` (IoU, NMS, delta coding, RoIAlign's end).
    #[default]
    Inclusive,
    /// Corners on a continuous plane, width `x2 - x1` (torchvision's `box_iou`, `nms`).
    Continuous,
}

impl PixelConvention {
    /// What is added to `x2 - x1` to get the width.
    pub fn offset(self) -> f32 {
        match self {
            PixelConvention::Inclusive => 1.0,
            PixelConvention::Continuous => 0.0,
        }
    }
}

/// Checks that every box is finite and not inverted beyond the convention (a box of width 0,
/// `x2 = x1 - 1` under [`PixelConvention::Inclusive`], is allowed; a negative width is not).
pub(crate) fn check_boxes(
    arg: &'static str,
    boxes: &[[f32; 4]],
    convention: PixelConvention,
) -> Result<()> {
    let off = convention.offset();
    for (i, b) in boxes.iter().enumerate() {
        if !b.iter().all(|v| v.is_finite()) {
            return Err(Error::InvalidArgument {
                arg,
                message: format!("box {i} is {b:?}: coordinates must be finite"),
            });
        }
        if b[2] - b[0] + off < 0.0 || b[3] - b[1] + off < 0.0 {
            return Err(Error::InvalidArgument {
                arg,
                message: format!("box {i} is {b:?}: x2 < x1 or y2 < y1 (inverted)"),
            });
        }
    }
    Ok(())
}

fn check_threshold(arg: &'static str, t: f32) -> Result<()> {
    if (0.0..=1.0).contains(&t) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            arg,
            message: format!("{t} is outside [0, 1]"),
        })
    }
}

/// The IoU of every pair, row-major `[a.len(), b.len()]`: `out[i * b.len() + j] = IoU(a[i],
/// b[j])`, computed in f32 as the reference does (`inter / (area_a + area_b - inter)`; 0 where
/// the union is 0).
pub fn iou_matrix(a: &[[f32; 4]], b: &[[f32; 4]], convention: PixelConvention) -> Result<Vec<f32>> {
    check_boxes("a", a, convention)?;
    check_boxes("b", b, convention)?;
    let len = a
        .len()
        .checked_mul(b.len())
        .ok_or(Error::ElementCountOverflow {
            shape: vec![a.len(), b.len()],
        })?;
    let mut out = crate::ops::common::zeroed_f32(len, &[a.len(), b.len()])?;
    cpu_kernel::iou_matrix(a, b, convention.offset(), &mut out);
    Ok(out)
}

/// Greedy non-maximum suppression: boxes are visited in descending score order; each box not yet
/// suppressed is kept and suppresses every later box whose IoU with it exceeds the threshold.
///
/// The reference detector's GPU NMS suppresses `IoU > threshold` ([`Nms::reference`]); its CPU
/// NMS suppressed `IoU >= threshold` (`suppress_equal`). Ties in score keep input order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nms {
    /// IoU above which a lower-scored box is suppressed, in `[0, 1]`.
    pub iou_threshold: f32,
    /// Pixel convention of the IoU.
    pub convention: PixelConvention,
    /// Suppress at `IoU >= threshold` too (the reference's CPU NMS).
    pub suppress_equal: bool,
    /// Keep only the `k` highest-scored boxes before suppression (the RPN's `nms_pre`).
    pub pre_top_k: Option<usize>,
    /// Stop after `k` boxes are kept (the RPN's `nms_post`, the test-time `max_per_img`).
    pub keep_top_k: Option<usize>,
}

impl Nms {
    /// The reference detector's NMS: `IoU > iou_threshold` with +1 areas, no top-k.
    pub fn reference(iou_threshold: f32) -> Nms {
        Nms {
            iou_threshold,
            convention: PixelConvention::Inclusive,
            suppress_equal: false,
            pre_top_k: None,
            keep_top_k: None,
        }
    }

    /// Checks the settings and the inputs.
    fn check(&self, boxes: &[[f32; 4]], scores: &[f32]) -> Result<()> {
        check_threshold("iou_threshold", self.iou_threshold)?;
        if boxes.len() != scores.len() {
            return Err(Error::InvalidArgument {
                arg: "scores",
                message: format!("{} scores for {} boxes", scores.len(), boxes.len()),
            });
        }
        if let Some(i) = scores.iter().position(|s| s.is_nan()) {
            return Err(Error::InvalidArgument {
                arg: "scores",
                message: format!("score {i} is NaN"),
            });
        }
        check_boxes("boxes", boxes, self.convention)
    }

    /// The indices of `scores` in descending score order (ties in input order), cut to
    /// `pre_top_k`; the inputs are checked first. (The GPU paths sort on the host.)
    #[cfg_attr(not(any(feature = "cuda", feature = "emulation")), allow(dead_code))]
    pub(crate) fn order(&self, boxes: &[[f32; 4]], scores: &[f32]) -> Result<Vec<usize>> {
        self.check(boxes, scores)?;
        Ok(self.sorted(scores))
    }

    fn sorted(&self, scores: &[f32]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
        if let Some(k) = self.pre_top_k {
            order.truncate(k);
        }
        order
    }

    /// Greedy NMS of checked inputs.
    fn run_checked(&self, boxes: &[[f32; 4]], scores: &[f32]) -> Vec<usize> {
        let order = self.sorted(scores);
        let sorted: Vec<[f32; 4]> = order.iter().map(|&i| boxes[i]).collect();
        let kept = cpu_kernel::nms_sorted(&sorted, self);
        kept.into_iter().map(|k| order[k]).collect()
    }

    /// The kept boxes' indices into `boxes`, highest score first. An empty input gives an empty
    /// result.
    pub fn run(&self, boxes: &[[f32; 4]], scores: &[f32]) -> Result<Vec<usize>> {
        self.check(boxes, scores)?;
        Ok(self.run_checked(boxes, scores))
    }

    /// NMS within each group (image or class) independently: `groups[i]` is box `i`'s group;
    /// boxes of different groups never suppress each other. `keep_top_k` and `pre_top_k` apply
    /// per group. The result is every group's kept indices merged in descending score order
    /// (ties by index).
    pub fn run_batched(
        &self,
        boxes: &[[f32; 4]],
        scores: &[f32],
        groups: &[u32],
    ) -> Result<Vec<usize>> {
        if groups.len() != boxes.len() {
            return Err(Error::InvalidArgument {
                arg: "groups",
                message: format!("{} group ids for {} boxes", groups.len(), boxes.len()),
            });
        }
        // Validated once for the whole batch; each group is then only sorted and suppressed.
        self.check(boxes, scores)?;
        let mut members: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, &g) in groups.iter().enumerate() {
            members.entry(g).or_default().push(i);
        }
        use rayon::prelude::*;
        let lists: Vec<Vec<usize>> = members
            .into_values()
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|idx| {
                let b: Vec<[f32; 4]> = idx.iter().map(|&i| boxes[i]).collect();
                let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
                let kept = self.run_checked(&b, &s);
                kept.into_iter().map(|k| idx[k]).collect()
            })
            .collect();
        let mut all: Vec<usize> = lists.into_iter().flatten().collect();
        all.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
        Ok(all)
    }
}
