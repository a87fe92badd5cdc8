//! The CPU kernels of [`super::Conv2d`]: a stride-1 convolution and its weight gradient as
//! matrix products over slabs of an im2col matrix.
//!
//! For each batch item and slab of output rows, `cols[(i, ky, kx), pixel]` (the input under
//! each tap, zero outside the image) is built by row copies; then the forward is
//! `y[:, slab] = w[O, I k k] * cols` and the weight gradient `dw += dy[:, slab] * cols^T`. The
//! products run on the blocked GEMM under A3DConv, with the output channels split between the
//! threads, so every element is summed in the same order for any thread count. A slab holds at
//! most [`SLAB_ELEMENTS`]: candle's im2col materialises the whole image's matrix (300 MB for the
//! RPN's 3x3 512-channel convolution at 128 x 128), and its weight gradient (a convolution of
//! the transposed tensors) ran one 9-row product per input channel.

use rayon::prelude::*;

use crate::ops::a3dconv::cpu_kernel::{matmul, SharedMut};

/// The sizes of a stride-1 convolution with a square kernel and zero padding.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvDims {
    pub(super) batch: usize,
    pub(super) in_channels: usize,
    pub(super) height: usize,
    pub(super) width: usize,
    pub(super) out_channels: usize,
    pub(super) kernel: usize,
    pub(super) padding: usize,
}

impl ConvDims {
    /// Output height and width, `None` when the padded image is smaller than the kernel.
    pub(super) fn out_size(&self) -> Option<(usize, usize)> {
        let grow = |n: usize| (n + 2 * self.padding + 1).checked_sub(self.kernel);
        Some((grow(self.height)?, grow(self.width)?)).filter(|&(h, w)| h > 0 && w > 0)
    }

    fn taps(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// The input gradient's convolution: `dy` with the kernel flipped and its channel axes
    /// swapped, padded by `k - 1 - p`, gives back the input's size.
    pub(super) fn transposed(&self) -> ConvDims {
        let (height, width) = self.out_size().unwrap_or((0, 0));
        ConvDims {
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            height,
            width,
            padding: self.kernel - 1 - self.padding,
            ..*self
        }
    }
}

/// Elements of one im2col slab (32 MiB): large enough that each product runs at the GEMM's
/// rate, small enough to stay far below the activations' memory.
pub(super) const SLAB_ELEMENTS: usize = 8 << 20;

/// Output rows per slab and output channels per task (a multiple of the GEMM's 16-row tile).
fn split(d: &ConvDims, slab_elements: usize) -> (usize, usize) {
    let (ho, wo) = d.out_size().unwrap_or((1, 1));
    let rows = (slab_elements / (d.taps() * wo)).clamp(1, ho);
    let per_task = d
        .out_channels
        .div_ceil(rayon::current_num_threads())
        .next_multiple_of(16);
    (rows, per_task)
}

/// Fills `cols[(i, ky, kx), pixel]` for output rows `[r0, r0 + rows)` of batch item `b`.
fn im2col_slab(x: &[f32], d: &ConvDims, b: usize, r0: usize, rows: usize, cols: &mut [f32]) {
    let (k, p) = (d.kernel, d.padding);
    let wo = d.out_size().map_or(0, |(_, w)| w);
    let plane = d.height * d.width;
    cols.par_chunks_mut(rows * wo)
        .enumerate()
        .for_each(|(t, col)| {
            let (i, ky, kx) = (t / (k * k), t / k % k, t % k);
            let src = &x[(b * d.in_channels + i) * plane..][..plane];
            // Output columns whose input column `xo + kx - p` lies inside the image.
            let lo = p.saturating_sub(kx).min(wo);
            let hi = (d.width + p).saturating_sub(kx).clamp(lo, wo);
            for (yo, dst) in col.chunks_exact_mut(wo).enumerate() {
                let yi = (r0 + yo + ky).checked_sub(p).filter(|&y| y < d.height);
                let Some(yi) = yi else {
                    dst.fill(0.0);
                    continue;
                };
                let row = &src[yi * d.width..][..d.width];
                dst[..lo].fill(0.0);
                if hi > lo {
                    dst[lo..hi].copy_from_slice(&row[lo + kx - p..hi + kx - p]);
                }
                dst[hi..].fill(0.0);
            }
        });
}

/// Calls `f(b, r0, pixels, cols)` for every batch item `b` and slab of output rows from `r0`
/// (`pixels` output pixels), after filling `cols[(i, ky, kx), pixel]` for that slab: the one
/// loop the forward and the weight gradient share, in a fixed order.
fn for_each_slab(
    x: &[f32],
    d: &ConvDims,
    slab_elements: usize,
    mut f: impl FnMut(usize, usize, usize, &[f32]),
) {
    let (ho, wo) = d.out_size().unwrap_or((0, 0));
    let taps = d.taps();
    let slab_rows = split(d, slab_elements).0;
    let mut cols = vec![0f32; taps * slab_rows * wo];
    for b in 0..d.batch {
        for r0 in (0..ho).step_by(slab_rows) {
            let pixels = slab_rows.min(ho - r0) * wo;
            let cols = &mut cols[..taps * pixels];
            im2col_slab(x, d, b, r0, pixels / wo, cols);
            f(b, r0, pixels, cols);
        }
    }
}

/// `y[b, o, y, x] = sum over i, ky, kx of w[o, i, ky, kx] * x[b, i, y + ky - p, x + kx - p]`
/// (no bias) for contiguous `x [B, I, H, W]` and `w [O, I, k, k]` whose sizes the caller
/// checked (`d.out_size()` is `Some`).
pub(super) fn conv_forward(x: &[f32], w: &[f32], d: &ConvDims, slab_elements: usize) -> Vec<f32> {
    let (ho, wo) = d.out_size().unwrap_or((0, 0));
    let taps = d.taps();
    let per_task = split(d, slab_elements).1;
    let mut y = vec![0f32; d.batch * d.out_channels * ho * wo];
    let image = d.out_channels * ho * wo;
    for_each_slab(x, d, slab_elements, |b, r0, pixels, cols| {
        let out = SharedMut(y[b * image..].as_mut_ptr());
        (0..d.out_channels.div_ceil(per_task))
            .into_par_iter()
            .for_each(|task| {
                let o0 = task * per_task;
                let m = per_task.min(d.out_channels - o0);
                // SAFETY: task `task` alone writes y's rows [o0, o0 + m) of batch item b (row
                // stride Ho Wo), columns [r0 Wo, r0 Wo + pixels) of each, inside y; w holds m
                // rows of `taps` values from row o0; cols holds taps rows of `pixels` values.
                unsafe {
                    matmul(
                        [m, pixels, taps],
                        out.ptr().add(o0 * ho * wo + r0 * wo),
                        [ho * wo, 1],
                        false,
                        w.as_ptr().add(o0 * taps),
                        [taps, 1],
                        cols.as_ptr(),
                        [pixels, 1],
                    )
                }
            });
    });
    y
}

/// `dw[o, i, ky, kx] = sum over b, y, x of dy[b, o, y, x] * x[b, i, y + ky - p, x + kx - p]`
/// (zero outside the image) for contiguous `x [B, I, H, W]` and `dy [B, O, Ho, Wo]` whose
/// sizes the caller checked.
pub(super) fn weight_gradient(
    x: &[f32],
    dy: &[f32],
    d: &ConvDims,
    slab_elements: usize,
) -> Vec<f32> {
    let (ho, wo) = d.out_size().unwrap_or((0, 0));
    let taps = d.taps();
    let per_task = split(d, slab_elements).1;
    let mut dw = vec![0f32; d.out_channels * taps];
    for_each_slab(x, d, slab_elements, |b, r0, pixels, cols| {
        let lhs = &dy[b * d.out_channels * ho * wo + r0 * wo..];
        dw.par_chunks_mut(per_task * taps)
            .enumerate()
            .for_each(|(task, out)| {
                let o0 = task * per_task;
                let m = out.len() / taps;
                // SAFETY: `out` is dw's rows [o0, o0 + m), taps columns each, this task's
                // alone; lhs row o (stride Ho Wo) holds `pixels` values of dy's slab, inside
                // dy because o < O and r0 + rows <= Ho; cols holds taps rows of `pixels`
                // values, read as its transpose.
                unsafe {
                    matmul(
                        [m, taps, pixels],
                        out.as_mut_ptr(),
                        [taps, 1],
                        true,
                        lhs.as_ptr().add(o0 * ho * wo),
                        [ho * wo, 1],
                        cols.as_ptr(),
                        [1, pixels],
                    )
                }
            });
    });
    dw
}

/// `w[o, i, ky, kx]` as the transposed convolution's kernel `[I, O, k, k]`, flipped in space.
pub(super) fn flipped_transposed(w: &[f32], d: &ConvDims) -> Vec<f32> {
    let (co, ci, k) = (d.out_channels, d.in_channels, d.kernel);
    let mut out = vec![0f32; w.len()];
    for o in 0..co {
        for i in 0..ci {
            for ky in 0..k {
                for kx in 0..k {
                    out[((i * co + o) * k + k - 1 - ky) * k + k - 1 - kx] =
                        w[((o * ci + i) * k + ky) * k + kx];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Float64 reference of the forward: `y[b, o, yo, xo]`.
    fn forward_f64(x: &[f32], w: &[f32], d: &ConvDims) -> Vec<f64> {
        let (ho, wo) = d.out_size().unwrap();
        let (ci, co, k, p, h, wd) = (
            d.in_channels,
            d.out_channels,
            d.kernel,
            d.padding,
            d.height,
            d.width,
        );
        let mut y = vec![0f64; d.batch * co * ho * wo];
        for b in 0..d.batch {
            for o in 0..co {
                for yo in 0..ho {
                    for xo in 0..wo {
                        let mut sum = 0.0;
                        for i in 0..ci {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (yi, xi) = (yo + ky, xo + kx);
                                    if yi < p || xi < p || yi - p >= h || xi - p >= wd {
                                        continue;
                                    }
                                    sum += f64::from(x[((b * ci + i) * h + yi - p) * wd + xi - p])
                                        * f64::from(w[((o * ci + i) * k + ky) * k + kx]);
                                }
                            }
                        }
                        y[((b * co + o) * ho + yo) * wo + xo] = sum;
                    }
                }
            }
        }
        y
    }

    /// Odd sizes: one slab, a row per slab, a kernel wider than the image (zero columns on both
    /// sides), more output channels than one task's tile. The forward, the weight gradient
    /// (against d<y, g>/dw summed in float64) and the input gradient through the transposed
    /// convolution (against the same sum by x).
    #[test]
    fn slabbed_convolution_and_gradients_match_float64_sums() {
        let mut rng = crate::rng::SplitMix64::new(5);
        for ((b, ci, h, w, co, k, p), slab) in [
            ((2, 3, 9, 7, 5, 3, 1), 1 << 20),
            ((2, 3, 9, 7, 5, 3, 1), 1),
            ((1, 2, 5, 2, 37, 7, 3), 50),
            ((1, 4, 6, 5, 3, 3, 0), 70),
            ((1, 3, 4, 6, 2, 1, 0), 7),
        ] {
            let d = ConvDims {
                batch: b,
                in_channels: ci,
                height: h,
                width: w,
                out_channels: co,
                kernel: k,
                padding: p,
            };
            let (ho, wo) = d.out_size().unwrap();
            let x = rng.vec_f32(b * ci * h * w, -1.0, 1.0);
            let wt = rng.vec_f32(co * ci * k * k, -1.0, 1.0);
            let g = rng.vec_f32(b * co * ho * wo, -1.0, 1.0);
            let case = format!("{d:?} slab {slab}");
            let worst = |a: &[f32], r: &[f64]| {
                assert_eq!(a.len(), r.len(), "{case}");
                a.iter()
                    .zip(r)
                    .map(|(&a, &r)| (f64::from(a) - r).abs())
                    .fold(0.0, f64::max)
            };
            let y = conv_forward(&x, &wt, &d, slab);
            assert!(
                worst(&y, &forward_f64(&x, &wt, &d)) < 1e-4,
                "forward {case}"
            );
            // <y, g> is linear in w and in x: its gradient by one element is the forward of a
            // unit tensor in that place, dotted with g.
            let dot = |y: Vec<f64>| y.iter().zip(&g).map(|(a, &b)| a * f64::from(b)).sum();
            let unit = |n: usize, at: usize| {
                let mut v = vec![0f32; n];
                v[at] = 1.0;
                v
            };
            let dw_ref: Vec<f64> = (0..wt.len())
                .map(|j| dot(forward_f64(&x, &unit(wt.len(), j), &d)))
                .collect();
            let dw = weight_gradient(&x, &g, &d, slab);
            assert!(worst(&dw, &dw_ref) < 1e-4, "weight gradient {case}");
            let dx_ref: Vec<f64> = (0..x.len())
                .map(|j| dot(forward_f64(&unit(x.len(), j), &wt, &d)))
                .collect();
            let t = d.transposed();
            let dx = conv_forward(&g, &flipped_transposed(&wt, &d), &t, slab);
            assert!(worst(&dx, &dx_ref) < 1e-4, "input gradient {case}");
        }
    }
}
