//! CPU IoU and NMS. Boxes are laid out as separate coordinate arrays (x1, y1, x2, y2, area) so
//! the inner loop over the later boxes compiles to SIMD code on every tier; the arithmetic is
//! the reference's, in the same order (`inter / (area_i + area_j - inter)`), so the kept set is
//! the reference's bit for bit.

use super::Nms;
use crate::cpu::tier::{multiversion, Tier};
use crate::cpu::{active_isa, Isa};
use crate::Element;
use rayon::prelude::*;

/// Coordinates as separate arrays, with the areas under the convention's offset.
struct Columns {
    x1: Vec<f32>,
    y1: Vec<f32>,
    x2: Vec<f32>,
    y2: Vec<f32>,
    area: Vec<f32>,
}

impl Columns {
    fn new(boxes: &[[f32; 4]], off: f32) -> Columns {
        let col = |k: usize| boxes.iter().map(|b| b[k]).collect::<Vec<f32>>();
        Columns {
            x1: col(0),
            y1: col(1),
            x2: col(2),
            y2: col(3),
            area: boxes
                .iter()
                .map(|b| (b[2] - b[0] + off) * (b[3] - b[1] + off))
                .collect(),
        }
    }
}

/// IoU of box `a` (with its area) and box `j` of `c`; 0 for an empty union.
#[inline(always)]
fn iou_with(a: [f32; 4], area: f32, c: &Columns, j: usize, off: f32) -> f32 {
    let w = (a[2].min(c.x2[j]) - a[0].max(c.x1[j]) + off).max(0.0);
    let h = (a[3].min(c.y2[j]) - a[1].max(c.y1[j]) + off).max(0.0);
    let inter = w * h;
    let union = area + c.area[j] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

pub(crate) fn iou_matrix(a: &[[f32; 4]], b: &[[f32; 4]], off: f32, out: &mut [f32]) {
    if b.is_empty() {
        return;
    }
    let cb = Columns::new(b, off);
    out.par_chunks_mut(b.len()).zip(a).for_each(|(row, &ai)| {
        let area = (ai[2] - ai[0] + off) * (ai[3] - ai[1] + off);
        for (j, v) in row.iter_mut().enumerate() {
            *v = iou_with(ai, area, &cb, j, off);
        }
    });
}

/// Marks every box after `i` that box `i` suppresses. (`T` and `D` are unused: the shape
/// `multiversion!` instantiates.)
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
fn suppress_after<F: Tier, T: Element, const D: usize>(
    c: &Columns,
    i: usize,
    off: f32,
    threshold: f32,
    equal: bool,
    suppressed: &mut [u8],
) {
    let (ax1, ay1, ax2, ay2, area) = (c.x1[i], c.y1[i], c.x2[i], c.y2[i], c.area[i]);
    let r = i + 1..suppressed.len();
    // Zipped slices: no bounds checks, so the loop vectorises.
    let later = c.x1[r.clone()]
        .iter()
        .zip(&c.y1[r.clone()])
        .zip(&c.x2[r.clone()])
        .zip(&c.y2[r.clone()])
        .zip(&c.area[r.clone()])
        .zip(&mut suppressed[r]);
    for (((((&x1, &y1), &x2), &y2), &ar), s) in later {
        let w = (ax2.min(x2) - ax1.max(x1) + off).max(0.0);
        let h = (ay2.min(y2) - ay1.max(y1) + off).max(0.0);
        let inter = w * h;
        let union = area + ar - inter;
        let iou = if union > 0.0 { inter / union } else { 0.0 };
        let hit = if equal {
            iou >= threshold
        } else {
            iou > threshold
        };
        *s |= u8::from(hit);
    }
}
multiversion!(
    suppress_entry,
    suppress_after,
    (c: &Columns, i: usize, off: f32, threshold: f32, equal: bool, suppressed: &mut [u8])
);

/// Greedy NMS of boxes already in descending score order; returns the kept positions.
pub(crate) fn nms_sorted(boxes: &[[f32; 4]], nms: &Nms) -> Vec<usize> {
    let off = nms.convention.offset();
    let c = Columns::new(boxes, off);
    let mut suppressed = vec![0u8; boxes.len()];
    let mut kept = Vec::new();
    let limit = nms.keep_top_k.unwrap_or(usize::MAX);
    let isa = active_isa();
    let run: fn(Isa, &Columns, usize, f32, f32, bool, &mut [u8]) = suppress_entry::<f32, 0>;
    for i in 0..boxes.len() {
        if kept.len() >= limit {
            break;
        }
        if suppressed[i] != 0 {
            continue;
        }
        kept.push(i);
        run(
            isa,
            &c,
            i,
            off,
            nms.iou_threshold,
            nms.suppress_equal,
            &mut suppressed,
        );
    }
    kept
}

/// The host half of the GPU algorithm: given `mask[i * words + w]`, bit `b` set when box `i`
/// suppresses box `64 * w + b` (only for later boxes), walks the boxes in order keeping each one
/// no kept box suppresses. Shared by the CUDA backend and the emulation.
#[cfg_attr(not(any(feature = "cuda", feature = "emulation")), allow(dead_code))]
pub(crate) fn scan_mask(n: usize, mask: &[u64], keep_top_k: Option<usize>) -> Vec<usize> {
    let words = n.div_ceil(64);
    let mut removed = vec![0u64; words];
    let mut kept = Vec::new();
    let limit = keep_top_k.unwrap_or(usize::MAX);
    for i in 0..n {
        if kept.len() >= limit {
            break;
        }
        if removed[i / 64] >> (i % 64) & 1 != 0 {
            continue;
        }
        kept.push(i);
        for (r, m) in removed.iter_mut().zip(&mask[i * words..(i + 1) * words]) {
            *r |= m;
        }
    }
    kept
}
