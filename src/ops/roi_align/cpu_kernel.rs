//! CPU RoIAlign. Each RoI's samples (four corner offsets and bilinear weights each) are computed
//! once and shared by every channel. The forward pass splits work by (RoI, channel block); the
//! backward pass by feature plane, each visiting the RoIs of its image in order, so the
//! gradient is the same bits for any thread count.

use super::{RoiAlign, RoiAlignMode, RoiDims};
use crate::cpu::tier::SharedOut;
use crate::dtype::f32_values;
use crate::{Element, Result};
use rayon::prelude::*;

/// Where one RoI's bins and samples lie on the feature map, in the f32 arithmetic (and the
/// order of operations) of the reference kernel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub start_h: f32,
    pub start_w: f32,
    pub bin_h: f32,
    pub bin_w: f32,
    pub grid_h: usize,
    pub grid_w: usize,
}

impl Geometry {
    pub(crate) fn new(op: &RoiAlign, roi: &[f32; 5], _h: usize, _w: usize) -> Geometry {
        let s = op.spatial_scale;
        let (start_w, start_h, end_w, end_h, roi_w, roi_h);
        match op.mode {
            RoiAlignMode::Reference => {
                start_w = roi[1] * s;
                start_h = roi[2] * s;
                end_w = (roi[3] + 1.0) * s;
                end_h = (roi[4] + 1.0) * s;
                roi_w = (end_w - start_w).max(0.0);
                roi_h = (end_h - start_h).max(0.0);
            }
            RoiAlignMode::Aligned => {
                start_w = roi[1] * s - 0.5;
                start_h = roi[2] * s - 0.5;
                end_w = roi[3] * s - 0.5;
                end_h = roi[4] * s - 0.5;
                roi_w = end_w - start_w;
                roi_h = end_h - start_h;
            }
        }
        let bin_h = roi_h / op.pooled_h as f32;
        let bin_w = roi_w / op.pooled_w as f32;
        let adaptive = |bin: f32| {
            let g = bin.ceil();
            if g > 0.0 {
                g.min(usize::MAX as f32) as usize
            } else {
                0
            }
        };
        let (grid_h, grid_w) = if op.sampling_ratio > 0 {
            (op.sampling_ratio, op.sampling_ratio)
        } else {
            (adaptive(bin_h), adaptive(bin_w))
        };
        Geometry {
            start_h,
            start_w,
            bin_h,
            bin_w,
            grid_h,
            grid_w,
        }
    }

    /// Samples per bin, at least 1 (a bin without samples averages nothing: 0).
    pub(crate) fn count(&self) -> f32 {
        (self.grid_h * self.grid_w).max(1) as f32
    }

    /// Coordinate of sample `j` of bin `i` along one axis.
    pub(crate) fn at(start: f32, bin: f32, i: usize, j: usize, grid: usize) -> f32 {
        start + i as f32 * bin + (j as f32 + 0.5) * bin / grid as f32
    }
}

/// One bilinear sample: four offsets into the plane and their weights (all 0 outside).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    pub offset: [u32; 4],
    pub weight: [f32; 4],
}

/// The bilinear sample at `(y, x)` on an `h x w` plane under the reference's rules.
pub(crate) fn bilinear(mut y: f32, mut x: f32, h: usize, w: usize) -> Sample {
    let (hf, wf) = (h as f32, w as f32);
    if y < -1.0 || y > hf || x < -1.0 || x > wf {
        return Sample::default();
    }
    y = y.max(0.0);
    x = x.max(0.0);
    let (mut y_low, mut x_low) = (y as usize, x as usize);
    let (y_high, x_high);
    if y_low >= h - 1 {
        y_low = h - 1;
        y_high = h - 1;
        y = y_low as f32;
    } else {
        y_high = y_low + 1;
    }
    if x_low >= w - 1 {
        x_low = w - 1;
        x_high = w - 1;
        x = x_low as f32;
    } else {
        x_high = x_low + 1;
    }
    let (ly, lx) = (y - y_low as f32, x - x_low as f32);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    let o = |r: usize, c: usize| (r * w + c) as u32;
    Sample {
        offset: [
            o(y_low, x_low),
            o(y_low, x_high),
            o(y_high, x_low),
            o(y_high, x_high),
        ],
        weight: [hy * hx, hy * lx, ly * hx, ly * lx],
    }
}

/// Every sample of one RoI, bin-major: `[ph][pw][grid_h][grid_w]`.
fn samples(op: &RoiAlign, dims: &RoiDims, roi: &[f32; 5]) -> (Geometry, Vec<Sample>) {
    let g = Geometry::new(op, roi, dims.height, dims.width);
    let mut out = Vec::with_capacity(dims.pooled_h * dims.pooled_w * g.grid_h * g.grid_w);
    for ph in 0..dims.pooled_h {
        for pw in 0..dims.pooled_w {
            for iy in 0..g.grid_h {
                let y = Geometry::at(g.start_h, g.bin_h, ph, iy, g.grid_h);
                for ix in 0..g.grid_w {
                    let x = Geometry::at(g.start_w, g.bin_w, pw, ix, g.grid_w);
                    out.push(bilinear(y, x, dims.height, dims.width));
                }
            }
        }
    }
    (g, out)
}

/// Every RoI's samples, and the RoIs of each image in index order.
struct Tables {
    samples: Vec<(Geometry, Vec<Sample>)>,
    of_image: Vec<Vec<usize>>,
}

impl Tables {
    fn new(op: &RoiAlign, dims: &RoiDims, rois: &[[f32; 5]]) -> Tables {
        let samples = rois.par_iter().map(|r| samples(op, dims, r)).collect();
        let mut of_image: Vec<Vec<usize>> = vec![Vec::new(); dims.batch];
        for (k, r) in rois.iter().enumerate() {
            of_image[r[0] as usize].push(k);
        }
        Tables { samples, of_image }
    }
}

// Both passes go plane by plane (one feature plane, every RoI of its image): the plane stays in
// cache while its RoIs read (or write) it, where RoI by RoI every RoI would stream all C planes.

pub(crate) fn forward<T: Element>(
    op: &RoiAlign,
    dims: &RoiDims,
    features: &[T],
    rois: &[[f32; 5]],
    out: &mut [T],
) -> Result<()> {
    let plane = dims.height * dims.width;
    let bins = dims.pooled_h * dims.pooled_w;
    if out.is_empty() {
        return Ok(());
    }
    debug_assert_eq!(out.len(), dims.rois * dims.channels * bins);
    let t = Tables::new(op, dims, rois);
    let c_all = dims.channels;
    let shared = SharedOut(out.as_mut_ptr());
    (0..dims.batch * c_all)
        .into_par_iter()
        .for_each_init(Vec::new, |buf: &mut Vec<f32>, nc| {
            let (n, c) = (nc / c_all, nc % c_all);
            let src = f32_values(&features[nc * plane..][..plane], buf);
            for &k in &t.of_image[n] {
                let (g, table) = &t.samples[k];
                let per_bin = g.grid_h * g.grid_w;
                let count = g.count();
                // SAFETY: `out` holds K * C * bins elements (checked by the caller); row
                // (k, c) belongs to the one plane (image of RoI k, channel c), so no other task
                // touches it.
                let dst = unsafe { shared.slice_mut((k * c_all + c) * bins, bins) };
                for (b, o) in dst.iter_mut().enumerate() {
                    let mut acc = 0.0f32;
                    for s in &table[b * per_bin..(b + 1) * per_bin] {
                        let v = |i: usize| src[s.offset[i] as usize];
                        acc += s.weight[0] * v(0)
                            + s.weight[1] * v(1)
                            + s.weight[2] * v(2)
                            + s.weight[3] * v(3);
                    }
                    *o = T::from_f32(acc / count);
                }
            }
        });
    Ok(())
}

pub(crate) fn backward<T: Element>(
    op: &RoiAlign,
    dims: &RoiDims,
    rois: &[[f32; 5]],
    dy: &[T],
    dx: &mut [T],
) -> Result<()> {
    let plane = dims.height * dims.width;
    if dx.is_empty() {
        return Ok(());
    }
    let bins = dims.pooled_h * dims.pooled_w;
    let t = Tables::new(op, dims, rois);
    // One f32 plane per worker (no larger than the features themselves), stored back in the
    // storage dtype.
    dx.par_chunks_mut(plane)
        .enumerate()
        .for_each_init(Vec::<f32>::new, |acc, (nc, dst)| {
            let (n, c) = (nc / dims.channels, nc % dims.channels);
            acc.clear();
            acc.resize(plane, 0.0);
            for &k in &t.of_image[n] {
                let (g, table) = &t.samples[k];
                let per_bin = g.grid_h * g.grid_w;
                let count = g.count();
                let grad = &dy[(k * dims.channels + c) * bins..][..bins];
                for (b, gv) in grad.iter().enumerate() {
                    let gv = gv.to_f32();
                    for s in &table[b * per_bin..(b + 1) * per_bin] {
                        for i in 0..4 {
                            acc[s.offset[i] as usize] += gv * s.weight[i] / count;
                        }
                    }
                }
            }
            T::store_f32(acc, dst);
        });
    Ok(())
}
