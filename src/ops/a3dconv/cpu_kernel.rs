//! CPU path of A3DConv.
//!
//! The fusion runs first as its own pass (a3d's fusion kernel); it costs a few percent of the
//! convolution, and folding it into the packed values measured slower. The convolution then
//! works on tasks of one image slice `(b, d)` and a slab of rows:
//!
//! - forward: an im2col slab `[C*kh*kw, rows*W']` of the fused input, sized to stay in L2, times
//!   the weight `[O, C*kh*kw]` (the `gemm` crate, single-threaded inside a rayon task), written
//!   straight into `y`'s strided `[O, rows*W']` block. A 1x1 stride-1 unpadded convolution skips
//!   the im2col: the slice itself is the GEMM operand.
//! - input gradient: the transposed convolution as a *gather*: a slab of input rows collects,
//!   for every `(o, tap)`, the `dy` value that tap read from (zero where none did), and one GEMM
//!   with the weight `[C, O*kh*kw]` writes `dz`. No scatter, so slabs are independent and each
//!   element is written once.
//! - weight gradient: `dy` slab times the im2col slab transposed, accumulated per fixed group of
//!   tasks; the groups are summed in f64 in group order. The grouping depends only on the
//!   problem's sizes, never on the thread count, so the result is bitwise reproducible.
//! - bias gradient: per output channel, eight f64 lanes in a fixed order.
//!
//! The input gradient then goes back through the fusion with a3d's fusion backward.

use super::{A3dConvDims, Grads};
use crate::fusion::FusionDims;
use crate::ops::fusion::cpu_kernel as fusion_kernel;
use crate::{Error, Result};
use rayon::prelude::*;

/// Target size of one im2col slab: with the GEMM's packed blocks it stays in a 1-2 MiB L2.
const SLAB_BYTES: usize = 512 * 1024;
/// Upper bound on the weight-gradient groups (their partial sums are kept until the end).
const MAX_GROUPS: usize = 32;
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
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        shape: shape.to_vec(),
        bytes: len.saturating_mul(4),
    })?;
    v.resize(len, 0.0);
    Ok(v)
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
    let start = (lo as isize + shift) as usize;
    out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
    out[hi..].fill(0.0);
}

/// Problem geometry the tasks share.
struct Geometry {
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
    /// Output rows per forward / weight-gradient slab.
    out_rows: usize,
    /// Input rows per input-gradient slab.
    in_rows: usize,
    /// Pixels per task of the 1x1 path.
    pointwise_pixels: usize,
    pointwise: bool,
}

impl Geometry {
    fn new(dims: &A3dConvDims) -> Geometry {
        let i = &dims.input;
        let [kh, kw] = dims.kernel;
        let [oh, ow] = dims.out_size;
        let ckk = i.channels * kh * kw;
        let okk = dims.out_channels * kh * kw;
        let rows_for =
            |per_row: usize, max: usize| (SLAB_BYTES / (per_row * 4).max(1)).clamp(1, max.max(1));
        Geometry {
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
            ckk,
            okk,
            out_rows: rows_for(ckk * ow, oh),
            in_rows: rows_for(okk * i.width, i.height),
            pointwise_pixels: rows_for(i.channels.max(dims.out_channels), i.pixels),
            pointwise: dims.is_pointwise(),
        }
    }

    fn in_plane(&self) -> usize {
        self.height * self.width
    }
    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// Row stride between channels of one slice of `x`/`z` (`[B, C, D, H, W]`).
    fn in_channel_stride(&self) -> usize {
        self.depth * self.in_plane()
    }
    /// Row stride between channels of one slice of `y`/`dy` (`[B, O, D, H', W']`).
    fn out_channel_stride(&self) -> usize {
        self.depth * self.out_plane()
    }
    /// Offset of channel 0 of slice `(b, d)` in `x`/`z`.
    fn in_slice(&self, b: usize, d: usize) -> usize {
        (b * self.channels * self.depth + d) * self.in_plane()
    }
    /// Offset of channel 0 of slice `(b, d)` in `y`/`dy`.
    fn out_slice(&self, b: usize, d: usize) -> usize {
        (b * self.out_channels * self.depth + d) * self.out_plane()
    }

    /// Forward / weight-gradient tasks per slice, and their pixel ranges in the output plane.
    fn out_slabs(&self) -> usize {
        if self.pointwise {
            self.out_plane().div_ceil(self.pointwise_pixels)
        } else {
            self.oh.div_ceil(self.out_rows)
        }
    }
    fn out_slab_pixels(&self, s: usize) -> std::ops::Range<usize> {
        let step = if self.pointwise {
            self.pointwise_pixels
        } else {
            self.out_rows * self.ow
        };
        s * step..((s + 1) * step).min(self.out_plane())
    }

    /// Input-gradient tasks per slice, and their pixel ranges in the input plane.
    fn in_slabs(&self) -> usize {
        if self.pointwise {
            self.in_plane().div_ceil(self.pointwise_pixels)
        } else {
            self.height.div_ceil(self.in_rows)
        }
    }
    fn in_slab_pixels(&self, s: usize) -> std::ops::Range<usize> {
        let step = if self.pointwise {
            self.pointwise_pixels
        } else {
            self.in_rows * self.width
        };
        s * step..((s + 1) * step).min(self.in_plane())
    }

    /// Fills `col[C*kh*kw, n]` with the taps of output pixels `pixels` (whole rows) of the slice
    /// starting at `z`.
    fn im2col(&self, z: &[f32], pixels: &std::ops::Range<usize>, col: &mut [f32]) {
        let n = pixels.len();
        let (r0, r1) = (pixels.start / self.ow, pixels.end.div_ceil(self.ow));
        let plane = self.in_plane();
        let cs = self.in_channel_stride();
        for c in 0..self.channels {
            let src = &z[c * cs..c * cs + plane];
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    let row = &mut col[((c * self.kh + ki) * self.kw + kj) * n..][..n];
                    for (ri, r) in (r0..r1).enumerate() {
                        let out = &mut row[ri * self.ow..(ri + 1) * self.ow];
                        let h = tap(
                            r,
                            ki,
                            self.stride[0],
                            self.padding[0],
                            self.dilation[0],
                            self.height,
                        );
                        let Some(h) = h else {
                            out.fill(0.0);
                            continue;
                        };
                        let line = &src[h * self.width..(h + 1) * self.width];
                        if self.stride[1] == 1 {
                            let shift = (kj * self.dilation[1]) as isize - self.padding[1] as isize;
                            shifted_row(out, line, shift);
                        } else {
                            for (j, v) in out.iter_mut().enumerate() {
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

    /// Fills `col[O*kh*kw, n]` for input pixels `pixels` (whole rows): for every `(o, tap)`, the
    /// `dy` value of the output that read each pixel through that tap, or zero.
    fn gather_dy(&self, dy: &[f32], pixels: &std::ops::Range<usize>, col: &mut [f32]) {
        let n = pixels.len();
        let (r0, r1) = (pixels.start / self.width, pixels.end.div_ceil(self.width));
        let plane = self.out_plane();
        let cs = self.out_channel_stride();
        for o in 0..self.out_channels {
            let src = &dy[o * cs..o * cs + plane];
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    let row = &mut col[((o * self.kh + ki) * self.kw + kj) * n..][..n];
                    for (ri, ih) in (r0..r1).enumerate() {
                        let out = &mut row[ri * self.width..(ri + 1) * self.width];
                        let r = tap_source(
                            ih,
                            ki,
                            self.stride[0],
                            self.padding[0],
                            self.dilation[0],
                            self.oh,
                        );
                        let Some(r) = r else {
                            out.fill(0.0);
                            continue;
                        };
                        let line = &src[r * self.ow..(r + 1) * self.ow];
                        if self.stride[1] == 1 {
                            let shift = self.padding[1] as isize - (kj * self.dilation[1]) as isize;
                            shifted_row(out, line, shift);
                        } else {
                            for (iw, v) in out.iter_mut().enumerate() {
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
}

/// Tasks `(slice, slab)` in a fixed order: slice `n = b * D + d` major.
fn task_slice(g: &Geometry, t: usize, slabs: usize) -> (usize, usize, usize) {
    let (n, s) = (t / slabs, t % slabs);
    (n / g.depth, n % g.depth, s)
}

/// `z = fuse(x)` into a new buffer, or `None` when there are no fusion weights (`z` is `x`).
fn fused_input(
    dims: &A3dConvDims,
    x: &[f32],
    fusion_weight: Option<&[f32]>,
) -> Result<Option<Vec<f32>>> {
    let Some(fw) = fusion_weight else {
        return Ok(None);
    };
    let mut z = alloc(x.len(), &dims.input.input_shape())?;
    if !dims.input.is_empty() {
        fusion_kernel::forward(&dims.input, x, fw, &mut z);
    }
    Ok(Some(z))
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
    let fused = fused_input(dims, x, fusion_weight)?;
    let z = fused.as_deref().unwrap_or(x);
    let g = Geometry::new(dims);
    let slabs = g.out_slabs();
    let tasks = dims.input.batch * g.depth * slabs;
    let y_ptr = SharedMut(y.as_mut_ptr());
    let col_len = if g.pointwise {
        0
    } else {
        g.ckk * g.out_rows * g.ow
    };
    (0..tasks).into_par_iter().for_each_init(
        || vec![0.0f32; col_len],
        |col, t| {
            let (b, d, s) = task_slice(&g, t, slabs);
            let pixels = g.out_slab_pixels(s);
            let n = pixels.len();
            let z_slice = &z[g.in_slice(b, d)..];
            // SAFETY: the block rows o, columns `pixels` of slice (b, d) belong to this task
            // alone (tasks differ in slice or in pixel range) and lie inside `y`.
            let dst = unsafe { y_ptr.ptr().add(g.out_slice(b, d) + pixels.start) };
            let dst_strides = [g.out_channel_stride(), 1];
            if let Some(bias) = bias {
                for (o, &v) in bias.iter().enumerate() {
                    // SAFETY: row o of this task's block, n elements (see above).
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(dst.add(o * g.out_channel_stride()), n)
                    };
                    row.fill(v);
                }
            }
            if g.pointwise {
                // SAFETY: lhs is the whole [O, C] weight, rhs C rows of `n` pixels of the slice,
                // dst this task's block.
                unsafe {
                    matmul(
                        [g.out_channels, n, g.channels],
                        dst,
                        dst_strides,
                        bias.is_some(),
                        conv_weight.as_ptr(),
                        [g.channels, 1],
                        z_slice.as_ptr().add(pixels.start),
                        [g.in_channel_stride(), 1],
                    )
                }
            } else {
                let col = &mut col[..g.ckk * n];
                g.im2col(z_slice, &pixels, col);
                // SAFETY: lhs [O, C*kh*kw] is the weight, rhs the local slab, dst this task's
                // block.
                unsafe {
                    matmul(
                        [g.out_channels, n, g.ckk],
                        dst,
                        dst_strides,
                        bias.is_some(),
                        conv_weight.as_ptr(),
                        [g.ckk, 1],
                        col.as_ptr(),
                        [n, 1],
                    )
                }
            }
        },
    );
    Ok(y)
}

/// Per-channel sums of `dy` over batch, slices and pixels, in eight f64 lanes in a fixed order.
fn bias_gradient(g: &Geometry, batch: usize, dy: &[f32]) -> Vec<f32> {
    let block = g.out_channel_stride();
    (0..g.out_channels)
        .into_par_iter()
        .map(|o| {
            let mut lanes = [0.0f64; 8];
            for b in 0..batch {
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

/// `d_conv_weight[O, C*kh*kw] = sum over tasks of dy_slab * col_slab^T`, reduced in a fixed order.
fn conv_weight_gradient(g: &Geometry, batch: usize, z: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    let slabs = g.out_slabs();
    let tasks = batch * g.depth * slabs;
    let size = g.out_channels * g.ckk;
    let shape = [g.out_channels, g.channels, g.kh, g.kw];
    if tasks == 0 || size == 0 {
        return alloc(size, &shape);
    }
    let groups = tasks
        .min(MAX_GROUPS)
        .min((PARTIALS_BYTES / (size * 4)).max(1));
    let per_group = tasks.div_ceil(groups);
    let groups = tasks.div_ceil(per_group);
    let mut partials = alloc(groups * size, &[groups, size])?;
    let col_len = if g.pointwise {
        0
    } else {
        g.ckk * g.out_rows * g.ow
    };
    partials.par_chunks_mut(size).enumerate().for_each_init(
        || vec![0.0f32; col_len],
        |col, (group, partial)| {
            for (i, t) in (group * per_group..((group + 1) * per_group).min(tasks)).enumerate() {
                let (b, d, s) = task_slice(g, t, slabs);
                let pixels = g.out_slab_pixels(s);
                let n = pixels.len();
                let dy_block = &dy[g.out_slice(b, d) + pixels.start..];
                let z_slice = &z[g.in_slice(b, d)..];
                let (rhs, rhs_strides) = if g.pointwise {
                    (z_slice[pixels.start..].as_ptr(), [1, g.in_channel_stride()])
                } else {
                    let col = &mut col[..g.ckk * n];
                    g.im2col(z_slice, &pixels, col);
                    (col.as_ptr(), [1, n])
                };
                // SAFETY: lhs is O rows of n pixels of dy's slice block, rhs the n x C*kh*kw
                // transposed slab (or slice), dst this group's own partial.
                unsafe {
                    matmul(
                        [g.out_channels, g.ckk, n],
                        partial.as_mut_ptr(),
                        [g.ckk, 1],
                        i > 0,
                        dy_block.as_ptr(),
                        [g.out_channel_stride(), 1],
                        rhs,
                        rhs_strides,
                    )
                }
            }
        },
    );
    let mut sums = vec![0.0f64; size];
    for partial in partials.chunks_exact(size) {
        for (s, p) in sums.iter_mut().zip(partial) {
            *s += *p as f64;
        }
    }
    Ok(sums.into_iter().map(|s| s as f32).collect())
}

/// `dz[B, C, D, H, W]`: the gradient at the convolution's input.
fn conv_input_gradient(
    g: &Geometry,
    batch: usize,
    conv_weight: &[f32],
    dy: &[f32],
    dz: &mut [f32],
) {
    let slabs = g.in_slabs();
    let tasks = batch * g.depth * slabs;
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
    let dz_ptr = SharedMut(dz.as_mut_ptr());
    let col_len = if g.pointwise {
        0
    } else {
        g.okk * g.in_rows * g.width
    };
    (0..tasks).into_par_iter().for_each_init(
        || vec![0.0f32; col_len],
        |col, t| {
            let (b, d, s) = task_slice(g, t, slabs);
            let pixels = g.in_slab_pixels(s);
            let n = pixels.len();
            let dy_slice = &dy[g.out_slice(b, d)..];
            // SAFETY: channels 0..C, pixels `pixels` of slice (b, d) of dz belong to this task.
            let dst = unsafe { dz_ptr.ptr().add(g.in_slice(b, d) + pixels.start) };
            let (rhs, rhs_strides) = if g.pointwise {
                (
                    dy_slice[pixels.start..].as_ptr(),
                    [g.out_channel_stride(), 1],
                )
            } else {
                let col = &mut col[..g.okk * n];
                g.gather_dy(dy_slice, &pixels, col);
                (col.as_ptr(), [n, 1])
            };
            // SAFETY: lhs is the [C, O*kh*kw] rearranged weight, rhs the gather (or dy's slice),
            // dst this task's block of dz.
            unsafe {
                matmul(
                    [g.channels, n, g.okk],
                    dst,
                    [g.in_channel_stride(), 1],
                    false,
                    wt.as_ptr(),
                    [g.okk, 1],
                    rhs,
                    rhs_strides,
                )
            }
        },
    );
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
    let batch = dims.input.batch;
    let d_bias = grads.bias.then(|| bias_gradient(&g, batch, dy));
    let d_conv_weight = if grads.conv_weight {
        let fused = fused_input(dims, x, fusion_weight)?;
        Some(conv_weight_gradient(
            &g,
            batch,
            fused.as_deref().unwrap_or(x),
            dy,
        )?)
    } else {
        None
    };
    let want_fw = grads.fusion_weight && fusion_weight.is_some();
    let (mut dx, mut d_fusion_weight) = (None, None);
    if grads.input || want_fw {
        let shape = dims.input.input_shape();
        let mut dz = alloc(x.len(), &shape)?;
        conv_input_gradient(&g, batch, conv_weight, dy, &mut dz);
        match fusion_weight {
            None => dx = Some(dz),
            Some(fw) => {
                let mut dfw = want_fw
                    .then(|| alloc(fw.len(), &dims.input.weight_shape()))
                    .transpose()?;
                let mut dxv = grads.input.then(|| alloc(x.len(), &shape)).transpose()?;
                fusion_backward(
                    &dims.input,
                    x,
                    fw,
                    &dz,
                    dxv.as_deref_mut(),
                    dfw.as_deref_mut(),
                );
                dx = dxv;
                d_fusion_weight = dfw;
            }
        }
    }
    Ok(RawGradients {
        dx,
        d_conv_weight,
        d_bias,
        d_fusion_weight,
    })
}

fn fusion_backward(
    dims: &FusionDims,
    x: &[f32],
    fw: &[f32],
    dz: &[f32],
    dx: Option<&mut [f32]>,
    dfw: Option<&mut [f32]>,
) {
    if dims.is_empty() {
        // Empty sums: dfw stays zero, dx has no elements.
        return;
    }
    fusion_kernel::backward(dims, x, fw, dz, dx, dfw);
}
