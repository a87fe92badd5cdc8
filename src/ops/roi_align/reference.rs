//! Float64 RoIAlign for the tests, written from the rules of the module documentation without
//! the CPU path's sample tables.

use super::{RoiAlign, RoiAlignMode};

fn bilinear(plane: &[f64], h: usize, w: usize, mut y: f64, mut x: f64) -> Vec<(usize, f64)> {
    if y < -1.0 || y > h as f64 || x < -1.0 || x > w as f64 {
        return Vec::new();
    }
    y = y.max(0.0);
    x = x.max(0.0);
    let y0 = (y.floor() as usize).min(h - 1);
    let x0 = (x.floor() as usize).min(w - 1);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let ly = if y0 == h - 1 { 0.0 } else { y - y0 as f64 };
    let lx = if x0 == w - 1 { 0.0 } else { x - x0 as f64 };
    let _ = plane;
    vec![
        (y0 * w + x0, (1.0 - ly) * (1.0 - lx)),
        (y0 * w + x1, (1.0 - ly) * lx),
        (y1 * w + x0, ly * (1.0 - lx)),
        (y1 * w + x1, ly * lx),
    ]
}

/// The weights by which output `(roi, bin)` reads each feature pixel of its image's planes:
/// `(pixel, weight)` pairs, already divided by the sample count.
pub fn bin_weights(
    op: &RoiAlign,
    roi: &[f32; 5],
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
) -> Vec<(usize, f64)> {
    let s = op.spatial_scale as f64;
    let r: Vec<f64> = roi.iter().map(|&v| v as f64).collect();
    let (sw, sh, rw, rh) = match op.mode {
        RoiAlignMode::Reference => {
            let (sw, sh) = (r[1] * s, r[2] * s);
            (
                sw,
                sh,
                ((r[3] + 1.0) * s - sw).max(0.0),
                ((r[4] + 1.0) * s - sh).max(0.0),
            )
        }
        RoiAlignMode::Aligned => {
            let (sw, sh) = (r[1] * s - 0.5, r[2] * s - 0.5);
            (sw, sh, r[3] * s - 0.5 - sw, r[4] * s - 0.5 - sh)
        }
    };
    let (bh, bw) = (rh / op.pooled_h as f64, rw / op.pooled_w as f64);
    let grid = |bin: f64| {
        if op.sampling_ratio > 0 {
            op.sampling_ratio
        } else {
            bin.ceil().max(0.0) as usize
        }
    };
    let (gh, gw) = (grid(bh), grid(bw));
    let count = (gh * gw).max(1) as f64;
    let mut out = Vec::new();
    for iy in 0..gh {
        let y = sh + ph as f64 * bh + (iy as f64 + 0.5) * bh / gh as f64;
        for ix in 0..gw {
            let x = sw + pw as f64 * bw + (ix as f64 + 0.5) * bw / gw as f64;
            out.extend(
                bilinear(&[], h, w, y, x)
                    .into_iter()
                    .map(|(p, wt)| (p, wt / count)),
            );
        }
    }
    out
}

/// `[K, C, ph, pw]` from `[N, C, H, W]` features.
pub fn forward(op: &RoiAlign, features: &[f64], shape: [usize; 4], rois: &[[f32; 5]]) -> Vec<f64> {
    let [_, c, h, w] = shape;
    let mut out = Vec::new();
    for roi in rois {
        let n = roi[0] as usize;
        for ch in 0..c {
            let plane = &features[(n * c + ch) * h * w..][..h * w];
            for ph in 0..op.pooled_h {
                for pw in 0..op.pooled_w {
                    out.push(
                        bin_weights(op, roi, h, w, ph, pw)
                            .iter()
                            .map(|&(p, wt)| wt * plane[p])
                            .sum(),
                    );
                }
            }
        }
    }
    out
}

/// The features' gradient given `dy` `[K, C, ph, pw]`.
pub fn backward(op: &RoiAlign, shape: [usize; 4], rois: &[[f32; 5]], dy: &[f64]) -> Vec<f64> {
    let [n_img, c, h, w] = shape;
    let mut dx = vec![0.0; n_img * c * h * w];
    let bins = op.pooled_h * op.pooled_w;
    for (k, roi) in rois.iter().enumerate() {
        let n = roi[0] as usize;
        for ph in 0..op.pooled_h {
            for pw in 0..op.pooled_w {
                let wts = bin_weights(op, roi, h, w, ph, pw);
                for ch in 0..c {
                    let g = dy[(k * c + ch) * bins + ph * op.pooled_w + pw];
                    for &(p, wt) in &wts {
                        dx[(n * c + ch) * h * w + p] += g * wt;
                    }
                }
            }
        }
    }
    dx
}
