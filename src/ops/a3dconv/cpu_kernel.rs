//! CPU path of A3DConv.
//!
//! Work is split into tasks of one batch item and a slab of rows (of the output for the forward
//! pass and the weight gradient, of the input for the input gradient), covering every slice.
//! A slab is sized so that its working set stays in L2:
//!
//! - forward: the fusion of the input rows the slab reads, for all D slices, into a local block
//!   (mixing once per slab; the fused tensor never exists in memory). Then per slice an im2col
//!   slab `[C*kh*kw, rows*W']` times the weight `[O, C*kh*kw]` (the `gemm` crate,
//!   single-threaded inside a rayon task), written straight into `y`'s strided `[O, rows*W']`
//!   block. A 1x1 stride-1 unpadded convolution skips the im2col: the fused block is the operand.
//! - input gradient: the transposed convolution as a *gather*: a slab of input rows collects,
//!   for every `(o, tap)`, the `dy` value that tap read from (zero where none did), and one GEMM
//!   with the weight `[C, O*kh*kw]` gives `dz` for those rows. Then the fusion's backward for the
//!   same rows: `dx` directly, and the fusion weights' partial sums. No scatter: every element is
//!   written once, by one task.
//! - weight gradients: `dy` slab times the im2col slab transposed, and the fusion weights'
//!   `x * dz` sums, accumulated per fixed group of consecutive tasks; groups are added in f64 in
//!   group order. The grouping depends only on the problem's sizes, never on the thread count,
//!   so the results are bitwise reproducible.
//! - bias gradient: per output channel, eight f64 lanes in a fixed order.

#[cfg(target_arch = "x86_64")]
use super::direct::{ConvShape, DirectPlan};
use super::{A3dConvDims, Grads};
use crate::tensor::try_zeroed_vec;
use crate::{Error, Result};
use rayon::prelude::*;
use std::ops::Range;

/// Working set of one task (im2col slab plus fused block) that stays in a 2 MiB L2 beside the
/// GEMM's packed panels.
const SLAB_BYTES: usize = 3 << 19;
/// Slabs are made smaller, down to one row, until a problem has this many tasks: enough to
/// balance a few cores on small planes.
const MIN_TASKS: usize = 16;
/// Upper bound on the groups of the weight-gradient reductions (each keeps a partial sum).
const MAX_GROUPS: usize = 64;
/// Memory the weight-gradient partial sums may take together.
const PARTIALS_BYTES: usize = 256 << 20;

/// The gradients [`backward`] computed, f32, in the layouts of `x`, `[O, C, kh, kw]`, `[O]` and
/// `[D, D, C]`.
pub(crate) struct RawGradients {
    pub dx: Option<Vec<f32>>,
    pub d_conv_weight: Option<Vec<f32>>,
    pub d_bias: Option<Vec<f32>>,
    pub d_fusion_weight: Option<Vec<f32>>,
}

/// A zeroed buffer, or `Error::OutOfMemory` instead of an abort.
fn alloc(len: usize, shape: &[usize]) -> Result<Vec<f32>> {
    try_zeroed_vec(len).ok_or_else(|| Error::OutOfMemory {
        shape: shape.to_vec(),
        bytes: len.saturating_mul(4),
    })
}

/// A pointer that rayon tasks may share; each task writes a disjoint part of the buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used to hand disjoint output regions to tasks; see each use.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the raw field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `dst[m x n] = lhs[m x k] * rhs[k x n]` (or `+=` with `accumulate`); strides in elements as
/// (row stride, column stride). Single-threaded: the callers parallelise over tasks.
///
/// # Safety
/// Every addressed element of `lhs` and `rhs` is readable, every addressed element of `dst`
/// writable and not read or written by another thread during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    [dst_rs, dst_cs]: [usize; 2],
    accumulate: bool,
    lhs: *const f32,
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: *const f32,
    [rhs_rs, rhs_cs]: [usize; 2],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: (i, j) is inside dst's addressed range (caller's contract).
                    unsafe { *dst.add(i * dst_rs + j * dst_cs) = 0.0 };
                }
            }
        }
        return;
    }
    // Strides of in-bounds buffers fit isize (allocations are at most isize::MAX bytes).
    let s = |v: usize| v as isize;
    // SAFETY: forwarded from the caller; gemm reads m x k of lhs, k x n of rhs and writes (and
    // with `accumulate` reads) m x n of dst at the given strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            s(dst_cs),
            s(dst_rs),
            accumulate,
            lhs,
            s(lhs_cs),
            s(lhs_rs),
            rhs,
            s(rhs_cs),
            s(rhs_rs),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Input index of output position `i`, tap `p`, or `None` in the padding.
#[inline]
fn tap(
    i: usize,
    p: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    len: usize,
) -> Option<usize> {
    let pos = (i * stride + p * dilation).checked_sub(padding)?;
    (pos < len).then_some(pos)
}

/// Output index that read input position `pos` through tap `p`, or `None` if none did.
#[inline]
fn tap_source(
    pos: usize,
    p: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    out_len: usize,
) -> Option<usize> {
    let num = (pos + padding).checked_sub(p * dilation)?;
    (num % stride == 0 && num / stride < out_len).then_some(num / stride)
}

/// Copies `out[j] = src[j + shift]` where that index is inside `src`, zero elsewhere.
#[inline]
fn shifted_row(out: &mut [f32], src: &[f32], shift: isize) {
    let n = out.len() as isize;
    let lo = (-shift).clamp(0, n);
    let hi = (src.len() as isize - shift).clamp(lo, n);
    let (lo, hi) = (lo as usize, hi as usize);
    out[..lo].fill(0.0);
    if hi > lo {
        // Only computed when something is copied: a tap that reads nothing but padding may
        // shift past either end of `src`.
        let start = (lo as isize + shift) as usize;
        out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
    }
    out[hi..].fill(0.0);
}

/// Channel planes of one slice, as the im2col reads them: channel `c`'s pixel `p` (of the
/// plane, `p >= first`) is `data[c * channel_stride + p - first]`.
#[derive(Clone, Copy)]
struct Planes<'a> {
    data: &'a [f32],
    channel_stride: usize,
    first: usize,
}

impl<'a> Planes<'a> {
    fn at(&self, c: usize, p: usize) -> &'a [f32] {
        &self.data[c * self.channel_stride + p - self.first..]
    }
}

/// Problem geometry and the slab plan the tasks share.
#[derive(Clone, Copy)]
struct Geometry {
    batch: usize,
    channels: usize,
    out_channels: usize,
    depth: usize,
    height: usize,
    width: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    /// C * kh * kw: rows of the forward im2col.
    ckk: usize,
    /// O * kh * kw: rows of the input-gradient gather.
    okk: usize,
    pointwise: bool,
    fused: bool,
    /// Whether the convolution and its input gradient run as direct AVX-512 convolutions
    /// (stride 1, not pointwise, AVX-512 tier active) instead of im2col + GEMM.
    direct: bool,
    /// Output pixels per forward / weight-gradient slab (whole rows unless pointwise).
    out_step: usize,
    /// Input pixels per input-gradient slab (whole rows unless pointwise).
    in_step: usize,
}

impl Geometry {
    fn new(dims: &A3dConvDims) -> Geometry {
        let i = &dims.input;
        let [kh, kw] = dims.kernel;
        let [oh, ow] = dims.out_size;
        let mut g = Geometry {
            batch: i.batch,
            channels: i.channels,
            out_channels: dims.out_channels,
            depth: i.depth,
            height: i.height,
            width: i.width,
            kh,
            kw,
            oh,
            ow,
            stride: dims.params.stride,
            padding: dims.params.padding,
            dilation: dims.params.dilation,
            ckk: i.channels * kh * kw,
            okk: dims.out_channels * kh * kw,
            pointwise: dims.is_pointwise(),
            fused: dims.fused,
            direct: direct_supported(dims),
            out_step: 1,
            in_step: 1,
        };
        g.plan();
        g
    }

    /// Chooses the slab sizes: the largest that fit [`SLAB_BYTES`], then smaller until there are
    /// [`MIN_TASKS`] tasks (or one row per slab).
    fn plan(&mut self) {
        let fused_px = if self.fused {
            self.depth * self.channels * 4
        } else {
            0
        };
        if self.pointwise {
            let plane = self.height * self.width;
            let per_px = fused_px
                .max(self.channels.max(self.out_channels) * 4)
                .max(1);
            let step = (SLAB_BYTES / per_px / 16 * 16).max(16);
            let parallel = (plane * self.batch / MIN_TASKS).div_ceil(16) * 16;
            let step = step.min(parallel.max(16)).min(plane.max(1));
            self.out_step = step;
            self.in_step = step;
            return;
        }
        if self.direct {
            // Padded planes of one slice plus the input rows the fusion reads for them.
            let halo = (self.kh - 1) * self.dilation[0];
            let x_px = if self.fused { self.depth } else { 1 } * self.channels * 4;
            let fwd_width = padded_width(self.ow + (self.kw - 1) * self.dilation[1]);
            let out_rows = self.rows_within(self.oh, |g, r| {
                (g.channels * fwd_width * 4 + x_px * g.width) * (r + halo)
            });
            self.out_step = out_rows * self.ow;
            let grad_width = padded_width(self.width + (self.kw - 1) * self.dilation[1]);
            let in_rows = self.rows_within(self.height, |g, r| {
                g.out_channels * grad_width * 4 * (r + halo) + fused_px * r * g.width
            });
            self.in_step = in_rows * self.width;
            return;
        }
        let out_rows = self.rows_within(self.oh, |g, r| {
            g.ckk * r * g.ow * 4 + fused_px * g.input_rows(0..r).len() * g.width
        });
        self.out_step = out_rows * self.ow;
        let in_rows = self.rows_within(self.height, |g, r| (g.okk * 4 + fused_px) * r * g.width);
        self.in_step = in_rows * self.width;
    }

    /// The same problem with its slabs planned again (after changing `direct`).
    fn replanned(mut self) -> Geometry {
        self.plan();
        self
    }

    /// Rows per slab out of `total`: the most whose `bytes` fit, capped for parallelism.
    fn rows_within(&self, total: usize, bytes: impl Fn(&Geometry, usize) -> usize) -> usize {
        let mut rows = 1;
        while rows < total && bytes(self, rows + 1) <= SLAB_BYTES {
            rows += 1;
        }
        rows.min((total * self.batch / MIN_TASKS).max(1))
    }

    /// The convolution, for the direct kernel's plans.
    #[cfg(target_arch = "x86_64")]
    fn conv_shape(&self) -> ConvShape {
        ConvShape {
            channels: [self.out_channels, self.channels],
            in_size: [self.height, self.width],
            kernel: [self.kh, self.kw],
            padding: self.padding,
            dilation: self.dilation,
        }
    }

    fn in_plane(&self) -> usize {
        self.height * self.width
    }
    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
    /// Offset of batch item `b` in `x` (`[B, C, D, H, W]`).
    fn in_batch(&self, b: usize) -> usize {
        b * self.channels * self.depth * self.in_plane()
    }
    /// Offset of channel 0 of slice `(b, d)` in `x`.
    fn in_slice(&self, b: usize, d: usize) -> usize {
        self.in_batch(b) + d * self.in_plane()
    }
    /// Offset of channel 0 of slice `(b, d)` in `y`/`dy` (`[B, O, D, H', W']`).
    fn out_slice(&self, b: usize, d: usize) -> usize {
        (b * self.out_channels * self.depth + d) * self.out_plane()
    }
    /// Channel stride of `x` and of `y`.
    fn in_channel_stride(&self) -> usize {
        self.depth * self.in_plane()
    }
    fn out_channel_stride(&self) -> usize {
        self.depth * self.out_plane()
    }

    /// Input rows that output rows `rows` read.
    fn input_rows(&self, rows: Range<usize>) -> Range<usize> {
        if rows.is_empty() {
            return 0..0;
        }
        let lo = (rows.start * self.stride[0])
            .saturating_sub(self.padding[0])
            .min(self.height);
        let hi = ((rows.end - 1) * self.stride[0] + (self.kh - 1) * self.dilation[0] + 1)
            .saturating_sub(self.padding[0])
            .min(self.height);
        lo..hi.max(lo)
    }

    /// Forward / weight-gradient slabs per batch item.
    fn out_slabs(&self) -> usize {
        self.out_plane().div_ceil(self.out_step)
    }
    /// Output pixels of slab `s`, and the input pixels they read.
    fn out_slab(&self, s: usize) -> (Range<usize>, Range<usize>) {
        let out = s * self.out_step..((s + 1) * self.out_step).min(self.out_plane());
        if self.pointwise {
            return (out.clone(), out);
        }
        let rows = self.input_rows(out.start / self.ow..out.end.div_ceil(self.ow));
        (out, rows.start * self.width..rows.end * self.width)
    }
    /// Input-gradient slabs per batch item, and their input pixels.
    fn in_slabs(&self) -> usize {
        self.in_plane().div_ceil(self.in_step)
    }
    fn in_slab(&self, s: usize) -> Range<usize> {
        s * self.in_step..((s + 1) * self.in_step).min(self.in_plane())
    }

    /// `block[d][c][0..n] = sum_e fw[e,d,c] * x[b,c,e,px]`: the fused planes of input pixels
    /// `px` of batch item `b`, every slice and channel.
    #[inline(always)]
    fn fuse_block(&self, x: &[f32], b: usize, fw: &[f32], px: &Range<usize>, block: &mut [f32]) {
        let (n, cn, dn, plane) = (px.len(), self.channels, self.depth, self.in_plane());
        let xb = &x[self.in_batch(b)..];
        for c in 0..cn {
            for d in 0..dn {
                let out = &mut block[(d * cn + c) * n..][..n];
                for e in 0..dn {
                    let wv = fw[(e * dn + d) * cn + c];
                    let src = &xb[(c * dn + e) * plane + px.start..][..n];
                    if e == 0 {
                        out.iter_mut().zip(src).for_each(|(o, s)| *o = s * wv);
                    } else {
                        out.iter_mut().zip(src).for_each(|(o, s)| *o += s * wv);
                    }
                }
            }
        }
    }

    /// The planes of slice `(b, d)` that the convolution reads: the fused block's slice `d`
    /// (covering pixels `px`), or `x` itself without fusion.
    fn conv_input<'a>(
        &self,
        x: &'a [f32],
        block: &'a [f32],
        b: usize,
        d: usize,
        px: &Range<usize>,
    ) -> Planes<'a> {
        if self.fused {
            let n = px.len();
            Planes {
                data: &block[d * self.channels * n..(d + 1) * self.channels * n],
                channel_stride: n,
                first: px.start,
            }
        } else {
            Planes {
                data: &x[self.in_slice(b, d)..],
                channel_stride: self.in_channel_stride(),
                first: 0,
            }
        }
    }

    /// Fills `col[C*kh*kw, n]` with the taps of output pixels `out` (whole rows).
    #[inline(always)]
    fn im2col(&self, src: Planes<'_>, out: &Range<usize>, col: &mut [f32]) {
        let n = out.len();
        let (r0, r1) = (out.start / self.ow, out.end.div_ceil(self.ow));
        for c in 0..self.channels {
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    let row = &mut col[((c * self.kh + ki) * self.kw + kj) * n..][..n];
                    for (ri, r) in (r0..r1).enumerate() {
                        let dst = &mut row[ri * self.ow..(ri + 1) * self.ow];
                        let h = tap(
                            r,
                            ki,
                            self.stride[0],
                            self.padding[0],
                            self.dilation[0],
                            self.height,
                        );
                        let Some(h) = h else {
                            dst.fill(0.0);
                            continue;
                        };
                        let line = &src.at(c, h * self.width)[..self.width];
                        if self.stride[1] == 1 {
                            let shift = (kj * self.dilation[1]) as isize - self.padding[1] as isize;
                            shifted_row(dst, line, shift);
                        } else {
                            for (j, v) in dst.iter_mut().enumerate() {
                                *v = tap(
                                    j,
                                    kj,
                                    self.stride[1],
                                    self.padding[1],
                                    self.dilation[1],
                                    self.width,
                                )
                                .map_or(0.0, |iw| line[iw]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Fills `col[O*kh*kw, n]` for input pixels `px` (whole rows): for every `(o, tap)`, the
    /// `dy` value of the output that read each pixel through that tap, or zero.
    #[inline(always)]
    fn gather_dy(&self, dy_slice: &[f32], px: &Range<usize>, col: &mut [f32]) {
        let n = px.len();
        let (r0, r1) = (px.start / self.width, px.end.div_ceil(self.width));
        let cs = self.out_channel_stride();
        for o in 0..self.out_channels {
            let src = &dy_slice[o * cs..o * cs + self.out_plane()];
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    let row = &mut col[((o * self.kh + ki) * self.kw + kj) * n..][..n];
                    for (ri, ih) in (r0..r1).enumerate() {
                        let dst = &mut row[ri * self.width..(ri + 1) * self.width];
                        let r = tap_source(
                            ih,
                            ki,
                            self.stride[0],
                            self.padding[0],
                            self.dilation[0],
                            self.oh,
                        );
                        let Some(r) = r else {
                            dst.fill(0.0);
                            continue;
                        };
                        let line = &src[r * self.ow..(r + 1) * self.ow];
                        if self.stride[1] == 1 {
                            let shift = self.padding[1] as isize - (kj * self.dilation[1]) as isize;
                            shifted_row(dst, line, shift);
                        } else {
                            for (iw, v) in dst.iter_mut().enumerate() {
                                *v = tap_source(
                                    iw,
                                    kj,
                                    self.stride[1],
                                    self.padding[1],
                                    self.dilation[1],
                                    self.ow,
                                )
                                .map_or(0.0, |j| line[j]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Lengths of the per-task buffers: (fused block, im2col) for the output slabs.
    fn out_buffers(&self) -> (usize, usize) {
        let block = if self.fused {
            (0..self.out_slabs())
                .map(|s| self.out_slab(s).1.len())
                .max()
                .unwrap_or(0)
                * self.depth
                * self.channels
        } else {
            0
        };
        let col = if self.pointwise {
            0
        } else {
            self.ckk * self.out_step
        };
        (block, col)
    }
}

/// Row length of a direct convolution's padded planes whose taps reach `reach` columns (the
/// same rounding as `DirectPlan`).
fn padded_width(reach: usize) -> usize {
    (reach + 15).div_ceil(16) * 16
}

/// Whether this problem runs the direct AVX-512 convolution.
fn direct_supported(dims: &A3dConvDims) -> bool {
    cfg!(target_arch = "x86_64")
        && crate::cpu::active_isa() == crate::cpu::Isa::Avx512
        && dims.params.stride == [1, 1]
        && !dims.is_pointwise()
}

/// Runs `f` inside a function compiled for the active instruction-set tier, so that the plain
/// loops inlined into it (fusion mixing, im2col copies, `x * dz` sums) vectorise to that tier's
/// width. The loops use separate multiplies and adds, so every tier gives the same bits.
#[inline(always)]
fn on_tier<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match crate::cpu::active_isa() {
            // SAFETY: the tier is only active when the CPU has its features.
            crate::cpu::Isa::Avx512 => return unsafe { avx512(f) },
            // SAFETY: as above.
            crate::cpu::Isa::Avx2 => return unsafe { avx2(f) },
            crate::cpu::Isa::Baseline => {}
        }
    }
    f()
}

/// Tasks a rayon split keeps together: about four splits per thread, so the per-split buffers
/// (`for_each_init`) are allocated a few times per call, not once per task. Results do not
/// depend on it.
fn min_tasks_per_split(tasks: usize) -> usize {
    (tasks / (4 * rayon::current_num_threads())).max(1)
}

/// Splits `tasks` into at most `max` groups of consecutive tasks: (tasks per group, groups).
fn groups(tasks: usize, max: usize) -> (usize, usize) {
    let per = tasks.div_ceil(max.clamp(1, tasks.max(1)));
    (per.max(1), tasks.div_ceil(per.max(1)))
}

/// `y[B, O, D, H', W']`. Slices have been validated by the caller.
pub(crate) fn forward(
    dims: &A3dConvDims,
    x: &[f32],
    fusion_weight: Option<&[f32]>,
    conv_weight: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let out_shape = dims.output_shape();
    let mut y = alloc(out_shape.iter().product(), &out_shape)?;
    if y.is_empty() {
        return Ok(y);
    }
    let g = Geometry::new(dims);
    if g.channels == 0 || g.in_plane() == 0 {
        // Every tap reads padding (or there is nothing to read): y is the bias.
        if let Some(bias) = bias {
            for (i, plane) in y.chunks_exact_mut(g.out_channel_stride()).enumerate() {
                plane.fill(bias[i % g.out_channels]);
            }
        }
        return Ok(y);
    }
    #[cfg(target_arch = "x86_64")]
    if g.direct {
        forward_direct(&g, x, fusion_weight, conv_weight, bias, &mut y);
        return Ok(y);
    }
    let slabs = g.out_slabs();
    let y_ptr = SharedMut(y.as_mut_ptr());
    let (block_len, col_len) = g.out_buffers();
    (0..g.batch * slabs)
        .into_par_iter()
        .with_min_len(min_tasks_per_split(g.batch * slabs))
        .for_each_init(
            || (vec![0.0f32; block_len], vec![0.0f32; col_len]),
            |(block, col), t| {
                let (b, s) = (t / slabs, t % slabs);
                let (out, inp) = g.out_slab(s);
                let n = out.len();
                if let Some(fw) = fusion_weight {
                    on_tier(|| g.fuse_block(x, b, fw, &inp, block));
                }
                for d in 0..g.depth {
                    let src = g.conv_input(x, block, b, d, &inp);
                    // SAFETY: rows o, pixels `out` of slice (b, d) belong to this task alone (tasks
                    // differ in batch item or pixel range) and lie inside `y`.
                    let dst = unsafe { y_ptr.ptr().add(g.out_slice(b, d) + out.start) };
                    if let Some(bias) = bias {
                        for (o, &v) in bias.iter().enumerate() {
                            // SAFETY: row o of this task's block, n elements (see above).
                            let row = unsafe {
                                std::slice::from_raw_parts_mut(
                                    dst.add(o * g.out_channel_stride()),
                                    n,
                                )
                            };
                            row.fill(v);
                        }
                    }
                    let (rhs, rhs_strides) = if g.pointwise {
                        (src.at(0, out.start).as_ptr(), [src.channel_stride, 1])
                    } else {
                        let col = &mut col[..g.ckk * n];
                        on_tier(|| g.im2col(src, &out, col));
                        (col.as_ptr(), [n, 1])
                    };
                    // SAFETY: lhs is the [O, C*kh*kw] weight; rhs C*kh*kw rows of n values (the
                    // local slab, or C planes of `src` from pixel out.start); dst this task's block.
                    unsafe {
                        matmul(
                            [g.out_channels, n, g.ckk],
                            dst,
                            [g.out_channel_stride(), 1],
                            bias.is_some(),
                            conv_weight.as_ptr(),
                            [g.ckk, 1],
                            rhs,
                            rhs_strides,
                        )
                    }
                }
            },
        );
    Ok(y)
}

/// The forward plan of the direct convolution.
#[cfg(target_arch = "x86_64")]
fn forward_plan(g: &Geometry, conv_weight: &[f32]) -> DirectPlan {
    DirectPlan::forward(conv_weight, &g.conv_shape())
}

/// Fills `block` with the padded planes of slice `(b, d)` (fused when `fusion_weight` is given)
/// for output rows `r0..r0 + rows` of `plan`.
///
/// # Safety
/// AVX-512F and FMA must be present (the mixing loop is compiled for them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn fill_slice(
    g: &Geometry,
    plan: &DirectPlan,
    x: &[f32],
    fusion_weight: Option<&[f32]>,
    (b, d): (usize, usize),
    (r0, rows): (usize, usize),
    block: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (cn, dn, plane, w) = (g.channels, g.depth, g.in_plane(), g.width);
    let xb = &x[g.in_batch(b)..];
    match fusion_weight {
        Some(fw) => plan.fill(r0, rows, block, scratch, |c, h, dst| {
            for e in 0..dn {
                let wv = fw[(e * dn + d) * cn + c];
                let src = &xb[(c * dn + e) * plane + h * w..][..w];
                if e == 0 {
                    dst.iter_mut().zip(src).for_each(|(o, s)| *o = s * wv);
                } else {
                    dst.iter_mut()
                        .zip(src)
                        .for_each(|(o, s)| *o = s.mul_add(wv, *o));
                }
            }
        }),
        None => plan.fill(r0, rows, block, scratch, |c, h, dst| {
            dst.copy_from_slice(&xb[(c * dn + d) * plane + h * w..][..w]);
        }),
    }
}

/// The forward pass with the direct convolution: per task (batch item, slab of output rows)
/// and slice, the padded (fused) planes, then the register-tiled convolution into `y`.
#[cfg(target_arch = "x86_64")]
fn forward_direct(
    g: &Geometry,
    x: &[f32],
    fusion_weight: Option<&[f32]>,
    conv_weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let plan = forward_plan(g, conv_weight);
    let slabs = g.out_slabs();
    let block_len = plan.block_len(g.out_step / g.ow);
    let y_ptr = SharedMut(y.as_mut_ptr());
    (0..g.batch * slabs)
        .into_par_iter()
        .with_min_len(min_tasks_per_split(g.batch * slabs))
        .for_each_init(
            || (vec![0.0f32; block_len], Vec::new()),
            |(block, scratch), t| {
                let (b, s) = (t / slabs, t % slabs);
                let (out, _) = g.out_slab(s);
                let (r0, rows) = (out.start / g.ow, out.len() / g.ow);
                for d in 0..g.depth {
                    // SAFETY: `direct` is only set when the AVX-512 tier (F, FMA) is active.
                    unsafe {
                        fill_slice(
                            g,
                            &plan,
                            x,
                            fusion_weight,
                            (b, d),
                            (r0, rows),
                            block,
                            scratch,
                        )
                    };
                    // SAFETY: AVX-512F is present (as above); output rows r0.. of slice (b, d), every
                    // channel, belong to this task alone and lie inside `y`.
                    unsafe {
                        plan.run(
                            block,
                            rows,
                            bias,
                            y_ptr.ptr().add(g.out_slice(b, d) + out.start),
                            g.out_channel_stride(),
                            g.ow,
                        )
                    }
                }
            },
        );
}

/// Per-channel sums of `dy` over batch, slices and pixels, in eight f64 lanes in a fixed order.
fn bias_gradient(g: &Geometry, dy: &[f32]) -> Vec<f32> {
    let block = g.out_channel_stride();
    (0..g.out_channels)
        .into_par_iter()
        .map(|o| {
            let mut lanes = [0.0f64; 8];
            for b in 0..g.batch {
                let start = (b * g.out_channels + o) * block;
                let chunks = dy[start..start + block].chunks_exact(8);
                let tail = chunks.remainder();
                for ch in chunks {
                    for (l, v) in lanes.iter_mut().zip(ch) {
                        *l += *v as f64;
                    }
                }
                for (l, v) in lanes.iter_mut().zip(tail) {
                    *l += *v as f64;
                }
            }
            lanes.iter().sum::<f64>() as f32
        })
        .collect()
}

/// Adds the partial sums `partials` (`groups` consecutive blocks of `size`) in group order.
fn reduce_groups(partials: &[f32], size: usize) -> Vec<f32> {
    let mut sums = vec![0.0f64; size];
    for partial in partials.chunks_exact(size.max(1)) {
        for (s, p) in sums.iter_mut().zip(partial) {
            *s += *p as f64;
        }
    }
    sums.into_iter().map(|s| s as f32).collect()
}

/// `d_conv_weight[O, C*kh*kw] = sum over slabs and slices of dy_slab * col_slab^T`.
fn conv_weight_gradient(
    g: &Geometry,
    x: &[f32],
    fusion_weight: Option<&[f32]>,
    dy: &[f32],
) -> Result<Vec<f32>> {
    // The weight gradient always runs im2col + GEMM: size its slabs for that, not for the
    // direct kernel's padded planes.
    let g = &Geometry {
        direct: false,
        ..*g
    }
    .replanned();
    let slabs = g.out_slabs();
    let tasks = g.batch * slabs;
    let size = g.out_channels * g.ckk;
    let shape = [g.out_channels, g.channels, g.kh, g.kw];
    if tasks == 0 || size == 0 || g.depth == 0 {
        return alloc(size, &shape);
    }
    let (per_group, n_groups) = groups(tasks, MAX_GROUPS.min((PARTIALS_BYTES / (size * 4)).max(1)));
    let mut partials = alloc(n_groups * size, &[n_groups, size])?;
    let (block_len, col_len) = g.out_buffers();
    partials.par_chunks_mut(size).enumerate().for_each_init(
        || (vec![0.0f32; block_len], vec![0.0f32; col_len]),
        |(block, col), (group, partial)| {
            let mut first = true;
            for t in group * per_group..((group + 1) * per_group).min(tasks) {
                let (b, s) = (t / slabs, t % slabs);
                let (out, inp) = g.out_slab(s);
                let n = out.len();
                if let Some(fw) = fusion_weight {
                    on_tier(|| g.fuse_block(x, b, fw, &inp, block));
                }
                for d in 0..g.depth {
                    let src = g.conv_input(x, block, b, d, &inp);
                    let (rhs, rhs_strides) = if g.pointwise {
                        (src.at(0, out.start).as_ptr(), [1, src.channel_stride])
                    } else {
                        let col = &mut col[..g.ckk * n];
                        on_tier(|| g.im2col(src, &out, col));
                        (col.as_ptr(), [1, n])
                    };
                    // SAFETY: lhs is O rows of n pixels of dy's slice (b, d), rhs the transposed
                    // n x C*kh*kw slab (or planes), dst this group's own partial.
                    unsafe {
                        matmul(
                            [g.out_channels, g.ckk, n],
                            partial.as_mut_ptr(),
                            [g.ckk, 1],
                            !first,
                            dy[g.out_slice(b, d) + out.start..].as_ptr(),
                            [g.out_channel_stride(), 1],
                            rhs,
                            rhs_strides,
                        )
                    }
                    first = false;
                }
            }
        },
    );
    Ok(reduce_groups(&partials, size))
}

/// The fusion's backward for input pixels `px` of batch item `b`, given `dz` for them
/// (`dzb[d][c][0..n]`): writes `dx` there when given, adds `x * dz` sums to `dfw` when given.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn unfuse_block(
    g: &Geometry,
    x: &[f32],
    b: usize,
    fw: &[f32],
    px: &Range<usize>,
    dzb: &[f32],
    dx: Option<SharedMut>,
    dfw: Option<&mut [f64]>,
) {
    let (n, cn, dn, plane) = (px.len(), g.channels, g.depth, g.in_plane());
    let base = g.in_batch(b);
    if let Some(dx) = dx {
        for c in 0..cn {
            for e in 0..dn {
                // SAFETY: pixels `px` of every (c, e) plane of batch item b belong to this task.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(
                        dx.ptr().add(base + (c * dn + e) * plane + px.start),
                        n,
                    )
                };
                for d in 0..dn {
                    let wv = fw[(e * dn + d) * cn + c];
                    let src = &dzb[(d * cn + c) * n..][..n];
                    if d == 0 {
                        out.iter_mut().zip(src).for_each(|(o, s)| *o = s * wv);
                    } else {
                        out.iter_mut().zip(src).for_each(|(o, s)| *o += s * wv);
                    }
                }
            }
        }
    }
    if let Some(dfw) = dfw {
        for c in 0..cn {
            for e in 0..dn {
                let xs = &x[base + (c * dn + e) * plane + px.start..][..n];
                for d in 0..dn {
                    let zs = &dzb[(d * cn + c) * n..][..n];
                    let mut lanes = [0.0f32; 16];
                    let (xc, zc) = (xs.chunks_exact(16), zs.chunks_exact(16));
                    let (xt, zt) = (xc.remainder(), zc.remainder());
                    for (a, z) in xc.zip(zc) {
                        for l in 0..16 {
                            lanes[l] += a[l] * z[l];
                        }
                    }
                    for (l, (a, z)) in xt.iter().zip(zt).enumerate() {
                        lanes[l] += a * z;
                    }
                    dfw[(e * dn + d) * cn + c] += lanes.iter().map(|&v| v as f64).sum::<f64>();
                }
            }
        }
    }
}

/// A task's local buffers: (fused or gradient block, im2col or padded block, row scratch).
type Buffers = (Vec<f32>, Vec<f32>, Vec<f32>);

/// What [`input_gradients`] returns: `dx` and the fusion weights' gradient.
type InputGradients = (Option<Vec<f32>>, Option<Vec<f32>>);

/// `dx` (when `want_dx`) and the fusion weights' gradient (when `want_dfw` and fused).
fn input_gradients(
    g: &Geometry,
    x: &[f32],
    fusion_weight: Option<&[f32]>,
    conv_weight: &[f32],
    dy: &[f32],
    want_dx: bool,
    want_dfw: bool,
) -> Result<InputGradients> {
    let in_shape = [g.batch, g.channels, g.depth, g.height, g.width];
    let mut dx = if want_dx || fusion_weight.is_none() {
        Some(alloc(x.len(), &in_shape)?)
    } else {
        None
    };
    let want_dfw = want_dfw && fusion_weight.is_some();
    let dfw_len = g.depth * g.depth * g.channels;
    let slabs = g.in_slabs();
    let tasks = g.batch * slabs;
    if tasks == 0 || g.depth == 0 || g.channels == 0 {
        let dfw = want_dfw.then(|| vec![0.0f32; dfw_len]);
        return Ok((dx, dfw));
    }
    // [C, O*kh*kw]: the weight with input channels as rows, so the gather is the right operand.
    let mut wt = vec![0.0f32; g.channels * g.okk];
    let kk = g.kh * g.kw;
    for o in 0..g.out_channels {
        for c in 0..g.channels {
            for t in 0..kk {
                wt[c * g.okk + o * kk + t] = conv_weight[(o * g.channels + c) * kk + t];
            }
        }
    }
    let (per_group, n_groups) = if want_dfw {
        groups(
            tasks,
            MAX_GROUPS.min((PARTIALS_BYTES / (dfw_len * 8).max(1)).max(1)),
        )
    } else {
        (1, tasks)
    };
    let mut partials = vec![0.0f64; if want_dfw { n_groups * dfw_len } else { 0 }];
    let dx_ptr = dx.as_mut().map(|v| SharedMut(v.as_mut_ptr()));
    let block_len = if fusion_weight.is_some() {
        g.depth * g.channels * g.in_step
    } else {
        0
    };
    #[cfg(target_arch = "x86_64")]
    let grad_plan = g
        .direct
        .then(|| DirectPlan::input_gradient(conv_weight, &g.conv_shape()));
    #[cfg(target_arch = "x86_64")]
    let col_len = match &grad_plan {
        Some(plan) => plan.block_len(g.in_step / g.width),
        None if g.pointwise => 0,
        None => g.okk * g.in_step,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let col_len = if g.pointwise { 0 } else { g.okk * g.in_step };
    let run_group = |(block, col, scratch): &mut Buffers,
                     group: usize,
                     mut dfw: Option<&mut [f64]>| {
        for t in group * per_group..((group + 1) * per_group).min(tasks) {
            let (b, s) = (t / slabs, t % slabs);
            let px = g.in_slab(s);
            let n = px.len();
            for d in 0..g.depth {
                let dy_slice = &dy[g.out_slice(b, d)..];
                let (dst, dst_strides) = match (fusion_weight, dx_ptr) {
                    (Some(_), _) => (block[d * g.channels * n..].as_mut_ptr(), [n, 1]),
                    // SAFETY: pixels `px` of slice (b, d), every channel, belong to this task.
                    (None, Some(dx)) => (
                        unsafe { dx.ptr().add(g.in_slice(b, d) + px.start) },
                        [g.in_channel_stride(), 1],
                    ),
                    (None, None) => unreachable!("dx is allocated when there is no fusion"),
                };
                #[cfg(target_arch = "x86_64")]
                if let Some(plan) = &grad_plan {
                    let (h0, rows, ocs) = (px.start / g.width, n / g.width, g.out_channel_stride());
                    plan.fill(h0, rows, col, scratch, |o, r, row| {
                        row.copy_from_slice(&dy_slice[o * ocs + r * g.ow..][..g.ow]);
                    });
                    // SAFETY: `direct` implies the AVX-512 tier; dst is C rows of this task's
                    // pixels (see above), row stride W.
                    unsafe { plan.run(col, rows, None, dst, dst_strides[0], g.width) };
                    continue;
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = &scratch;
                let (rhs, rhs_strides) = if g.pointwise {
                    (dy_slice[px.start..].as_ptr(), [g.out_channel_stride(), 1])
                } else {
                    let col = &mut col[..g.okk * n];
                    on_tier(|| g.gather_dy(dy_slice, &px, col));
                    (col.as_ptr(), [n, 1])
                };
                // SAFETY: lhs is the [C, O*kh*kw] rearranged weight, rhs the gather (or O
                // planes of dy from pixel px.start), dst C rows of n values this task owns.
                unsafe {
                    matmul(
                        [g.channels, n, g.okk],
                        dst,
                        dst_strides,
                        false,
                        wt.as_ptr(),
                        [g.okk, 1],
                        rhs,
                        rhs_strides,
                    )
                }
            }
            if let Some(fw) = fusion_weight {
                let dx = if want_dx { dx_ptr } else { None };
                on_tier(|| unfuse_block(g, x, b, fw, &px, block, dx, dfw.as_deref_mut()));
            }
        }
    };
    let init = || (vec![0.0f32; block_len], vec![0.0f32; col_len], Vec::new());
    if want_dfw {
        partials
            .par_chunks_mut(dfw_len)
            .enumerate()
            .for_each_init(init, |bufs, (group, partial)| {
                run_group(bufs, group, Some(partial))
            });
    } else {
        (0..n_groups)
            .into_par_iter()
            .with_min_len(min_tasks_per_split(n_groups))
            .for_each_init(init, |bufs, group| run_group(bufs, group, None));
    }
    let dfw = want_dfw.then(|| {
        let mut sums = vec![0.0f64; dfw_len];
        for partial in partials.chunks_exact(dfw_len) {
            for (s, p) in sums.iter_mut().zip(partial) {
                *s += p;
            }
        }
        sums.into_iter().map(|s| s as f32).collect()
    });
    if !want_dx {
        dx = None;
    }
    Ok((dx, dfw))
}

/// The requested gradients of A3DConv given `dy`. Slices have been validated by the caller.
pub(crate) fn backward(
    dims: &A3dConvDims,
    x: &[f32],
    fusion_weight: Option<&[f32]>,
    conv_weight: &[f32],
    dy: &[f32],
    grads: Grads,
) -> Result<RawGradients> {
    let g = Geometry::new(dims);
    let d_bias = grads.bias.then(|| bias_gradient(&g, dy));
    if g.channels == 0 || g.in_plane() == 0 || g.out_channels == 0 {
        // No tap reads an input element (or no output uses one): the sums are empty.
        let zeros =
            |want: bool, len: usize, shape: &[usize]| want.then(|| alloc(len, shape)).transpose();
        let conv_shape = [g.out_channels, g.channels, g.kh, g.kw];
        let fw_len = if fusion_weight.is_some() {
            g.depth * g.depth * g.channels
        } else {
            0
        };
        return Ok(RawGradients {
            dx: zeros(grads.input, x.len(), &[x.len()])?,
            d_conv_weight: zeros(grads.conv_weight, g.out_channels * g.ckk, &conv_shape)?,
            d_bias,
            d_fusion_weight: zeros(
                grads.fusion_weight && fusion_weight.is_some(),
                fw_len,
                &[fw_len],
            )?,
        });
    }
    let d_conv_weight = grads
        .conv_weight
        .then(|| conv_weight_gradient(&g, x, fusion_weight, dy))
        .transpose()?;
    let want_dfw = grads.fusion_weight && fusion_weight.is_some();
    let (dx, d_fusion_weight) = if grads.input || want_dfw {
        input_gradients(&g, x, fusion_weight, conv_weight, dy, grads.input, want_dfw)?
    } else {
        (None, None)
    };
    Ok(RawGradients {
        dx,
        d_conv_weight,
        d_bias,
        d_fusion_weight,
    })
}
