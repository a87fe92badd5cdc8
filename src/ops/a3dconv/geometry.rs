//! Geometry of A3DConv's CPU path: the slab plan shared by every task, index arithmetic of
//! taps and padding, and the per-slab building blocks (fusion into a local block, im2col, the
//! gather of `dy` for the input gradient).

use super::cpu_kernel::{direct_supported, padded_width, MIN_TASKS, SLAB_BYTES};
#[cfg(target_arch = "x86_64")]
use super::direct::ConvShape;
use super::A3dConvDims;
use crate::batchnorm::Affine;
use std::ops::Range;

/// Input index of output position `i`, tap `p`, or `None` in the padding.
#[inline]
pub(super) fn tap(
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
pub(super) fn tap_source(
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
pub(super) fn shifted_row(out: &mut [f32], src: &[f32], shift: isize) {
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

/// Pixels one pass of [`mix_row`] holds in registers: four AVX-512 registers (eight AVX2 ones),
/// so that four independent chains of multiply-adds are in flight. One register's chain of
/// `depth` dependent multiply-adds ran at the multiply-add's latency, not its throughput (the
/// direct path's staging was 10 % of the D = 7 detector).
const MIX_WIDE: usize = 64;
/// Pixels of a pass over what the wide passes leave (one AVX-512 register).
const MIX_NARROW: usize = 16;

/// `out[p] = sum_e coef(e) * a(src(e)[p])` over `depth` source rows, where `a(v)` is
/// `max(v * scale + shift, 0)` with a `prologue` and `v` without: one fused output row, its
/// sums held in registers [`MIX_WIDE`] (then [`MIX_NARROW`], then one) pixels at a time, so each output
/// value is stored once instead of once per source slice. Each pixel's products are added in
/// the order of `e`, with fused multiply-adds when `FMA` (the direct path) and a separate
/// multiply and add otherwise, as the loops this replaces did: the pass width changes no bit.
#[inline(always)]
pub(super) fn mix_row<'a, const FMA: bool>(
    out: &mut [f32],
    depth: usize,
    src: impl Fn(usize) -> &'a [f32],
    coef: impl Fn(usize) -> f32,
    prologue: Option<(f32, f32)>,
) {
    let n = out.len();
    let mut p = 0;
    while p + MIX_WIDE <= n {
        mix_pass::<FMA, MIX_WIDE>(&mut out[p..p + MIX_WIDE], p, depth, &src, &coef, prologue);
        p += MIX_WIDE;
    }
    while p + MIX_NARROW <= n {
        mix_pass::<FMA, MIX_NARROW>(&mut out[p..p + MIX_NARROW], p, depth, &src, &coef, prologue);
        p += MIX_NARROW;
    }
    while p < n {
        mix_pass::<FMA, 1>(&mut out[p..p + 1], p, depth, &src, &coef, prologue);
        p += 1;
    }
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn activate<const FMA: bool>(v: f32, prologue: Option<(f32, f32)>) -> f32 {
    match prologue {
        Some((s, t)) => madd::<FMA>(v, s, t).max(0.0),
        None => v,
    }
}

/// One pass of [`mix_row`] over the `L` pixels from `p`. Plain loops over arrays, not
/// `std::array::from_fn`: LLVM left that call out of line, compiled without the caller's
/// target features (scalar SSE code, 2 % of the D = 7 detector).
#[inline(always)]
fn mix_pass<'a, const FMA: bool, const L: usize>(
    out: &mut [f32],
    p: usize,
    depth: usize,
    src: &impl Fn(usize) -> &'a [f32],
    coef: &impl Fn(usize) -> f32,
    prologue: Option<(f32, f32)>,
) {
    let mut acc = [0.0f32; L];
    let w0 = coef(0);
    for (a, &v) in acc.iter_mut().zip(&src(0)[p..p + L]) {
        *a = activate::<FMA>(v, prologue) * w0;
    }
    for e in 1..depth {
        let w = coef(e);
        for (a, &v) in acc.iter_mut().zip(&src(e)[p..p + L]) {
            *a = madd::<FMA>(activate::<FMA>(v, prologue), w, *a);
        }
    }
    out.copy_from_slice(&acc);
}

/// Channel planes of one slice, as the im2col reads them: channel `c`'s pixel `p` (of the
/// plane, `p >= first`) is `data[c * channel_stride + p - first]`.
#[derive(Clone, Copy)]
pub(super) struct Planes<'a> {
    pub(super) data: &'a [f32],
    pub(super) channel_stride: usize,
    pub(super) first: usize,
}

impl<'a> Planes<'a> {
    pub(super) fn at(&self, c: usize, p: usize) -> &'a [f32] {
        &self.data[c * self.channel_stride + p - self.first..]
    }
}

/// Problem geometry and the slab plan the tasks share.
#[derive(Clone, Copy)]
pub(super) struct Geometry {
    pub(super) batch: usize,
    pub(super) channels: usize,
    pub(super) out_channels: usize,
    pub(super) depth: usize,
    pub(super) height: usize,
    pub(super) width: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) stride: [usize; 2],
    pub(super) padding: [usize; 2],
    pub(super) dilation: [usize; 2],
    /// C * kh * kw: rows of the forward im2col.
    pub(super) ckk: usize,
    /// O * kh * kw: rows of the input-gradient gather.
    pub(super) okk: usize,
    pub(super) pointwise: bool,
    pub(super) fused: bool,
    /// Whether the convolution reads a local block rather than `x` itself: with fusion weights,
    /// or with a BN-ReLU prologue (the pre-activated values exist only in the block).
    pub(super) staged: bool,
    /// Whether the convolution and its input gradient run as direct AVX-512 convolutions
    /// (stride 1, not pointwise, AVX-512 tier active) instead of im2col + GEMM.
    pub(super) direct: bool,
    /// Output pixels per forward / weight-gradient slab (whole rows unless pointwise).
    pub(super) out_step: usize,
    /// Input pixels per input-gradient slab (whole rows unless pointwise).
    pub(super) in_step: usize,
}

impl Geometry {
    pub(super) fn new(dims: &A3dConvDims) -> Geometry {
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
            staged: dims.fused,
            direct: direct_supported(dims),
            out_step: 1,
            in_step: 1,
        };
        g.plan();
        g
    }

    /// The geometry of a layer whose input first goes through a BN-ReLU prologue when
    /// `prologue` (the convolution then reads a staged block even without fusion).
    pub(super) fn with_prologue(dims: &A3dConvDims, prologue: bool) -> Geometry {
        let mut g = Geometry::new(dims);
        if prologue && !g.staged {
            g.staged = true;
            g.plan();
        }
        g
    }

    /// Chooses the slab sizes: the largest that fit [`SLAB_BYTES`], then smaller until there are
    /// [`MIN_TASKS`] tasks (or one row per slab).
    pub(super) fn plan(&mut self) {
        let fused_px = if self.staged {
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
    pub(super) fn replanned(mut self) -> Geometry {
        self.plan();
        self
    }

    /// Rows per slab out of `total`: the most whose `bytes` fit, capped for parallelism.
    pub(super) fn rows_within(
        &self,
        total: usize,
        bytes: impl Fn(&Geometry, usize) -> usize,
    ) -> usize {
        let mut rows = 1;
        while rows < total && bytes(self, rows + 1) <= SLAB_BYTES {
            rows += 1;
        }
        rows.min((total * self.batch / MIN_TASKS).max(1))
    }

    /// The convolution, for the direct kernel's plans.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn conv_shape(&self) -> ConvShape {
        ConvShape {
            channels: [self.out_channels, self.channels],
            in_size: [self.height, self.width],
            kernel: [self.kh, self.kw],
            padding: self.padding,
            dilation: self.dilation,
        }
    }

    pub(super) fn in_plane(&self) -> usize {
        self.height * self.width
    }
    pub(super) fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
    /// Offset of batch item `b` in `x` (`[B, C, D, H, W]`).
    pub(super) fn in_batch(&self, b: usize) -> usize {
        b * self.channels * self.depth * self.in_plane()
    }
    /// Offset of channel 0 of slice `(b, d)` in `x`.
    pub(super) fn in_slice(&self, b: usize, d: usize) -> usize {
        self.in_batch(b) + d * self.in_plane()
    }
    /// Offset of channel 0 of slice `(b, d)` in `y`/`dy` (`[B, O, D, H', W']`).
    pub(super) fn out_slice(&self, b: usize, d: usize) -> usize {
        (b * self.out_channels * self.depth + d) * self.out_plane()
    }
    /// Channel stride of `x` and of `y`.
    pub(super) fn in_channel_stride(&self) -> usize {
        self.depth * self.in_plane()
    }
    pub(super) fn out_channel_stride(&self) -> usize {
        self.depth * self.out_plane()
    }

    /// Input rows that output rows `rows` read.
    pub(super) fn input_rows(&self, rows: Range<usize>) -> Range<usize> {
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
    pub(super) fn out_slabs(&self) -> usize {
        self.out_plane().div_ceil(self.out_step)
    }
    /// Output pixels of slab `s`, and the input pixels they read.
    pub(super) fn out_slab(&self, s: usize) -> (Range<usize>, Range<usize>) {
        let out = s * self.out_step..((s + 1) * self.out_step).min(self.out_plane());
        if self.pointwise {
            return (out.clone(), out);
        }
        let rows = self.input_rows(out.start / self.ow..out.end.div_ceil(self.ow));
        (out, rows.start * self.width..rows.end * self.width)
    }
    /// Input-gradient slabs per batch item, and their input pixels.
    pub(super) fn in_slabs(&self) -> usize {
        self.in_plane().div_ceil(self.in_step)
    }
    pub(super) fn in_slab(&self, s: usize) -> Range<usize> {
        s * self.in_step..((s + 1) * self.in_step).min(self.in_plane())
    }

    /// `block[d][c][0..n] = sum_e fw[e,d,c] * a[b,c,e,px]`: the staged planes of input pixels
    /// `px` of batch item `b`, every slice and channel, where `a` is `x`, or
    /// `max(x * scale[c] + shift[c], 0)` with a prologue (computed once per value into `rows`);
    /// without fusion weights the block is `a` itself.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn stage_block(
        &self,
        x: &[f32],
        b: usize,
        fw: Option<&[f32]>,
        prologue: Option<&Affine>,
        px: &Range<usize>,
        block: &mut [f32],
        rows: &mut Vec<f32>,
    ) {
        let (n, cn, dn, plane) = (px.len(), self.channels, self.depth, self.in_plane());
        let xb = &x[self.in_batch(b)..];
        if prologue.is_some() {
            rows.resize(dn * n, 0.0);
        }
        for c in 0..cn {
            if let Some(a) = prologue {
                let (s, t) = (a.scale[c], a.shift[c]);
                for e in 0..dn {
                    let src = &xb[(c * dn + e) * plane + px.start..][..n];
                    for (o, v) in rows[e * n..(e + 1) * n].iter_mut().zip(src) {
                        *o = (v * s + t).max(0.0);
                    }
                }
            }
            let source = |e: usize| -> &[f32] {
                match prologue {
                    Some(_) => &rows[e * n..(e + 1) * n],
                    None => &xb[(c * dn + e) * plane + px.start..][..n],
                }
            };
            for d in 0..dn {
                let out = &mut block[(d * cn + c) * n..][..n];
                let Some(fw) = fw else {
                    out.copy_from_slice(source(d));
                    continue;
                };
                mix_row::<false>(out, dn, source, |e| fw[(e * dn + d) * cn + c], None);
            }
        }
    }

    /// The planes of slice `(b, d)` that the convolution reads: the fused block's slice `d`
    /// (covering pixels `px`), or `x` itself without fusion.
    pub(super) fn conv_input<'a>(
        &self,
        x: &'a [f32],
        block: &'a [f32],
        b: usize,
        d: usize,
        px: &Range<usize>,
    ) -> Planes<'a> {
        if self.staged {
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
    pub(super) fn im2col(&self, src: Planes<'_>, out: &Range<usize>, col: &mut [f32]) {
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
    pub(super) fn gather_dy(&self, dy_slice: &[f32], px: &Range<usize>, col: &mut [f32]) {
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
    pub(super) fn out_buffers(&self) -> (usize, usize) {
        let block = if self.staged {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pass width (wide, narrow, scalar tail) adds each pixel's products in the order of
    /// `e` with the same operations as one pixel at a time: the same bits.
    #[test]
    fn mix_row_passes_equal_the_per_pixel_order() {
        fn check<const FMA: bool>(n: usize, depth: usize, prologue: Option<(f32, f32)>) {
            let rows: Vec<Vec<f32>> = (0..depth)
                .map(|e| {
                    (0..n)
                        .map(|p| ((p * 37 + e * 11) % 23) as f32 * 0.173 - 1.9)
                        .collect()
                })
                .collect();
            let coef = |e: usize| 0.31 - 0.17 * e as f32;
            let mut out = vec![f32::NAN; n];
            mix_row::<FMA>(&mut out, depth, |e| &rows[e], coef, prologue);
            for (p, &got) in out.iter().enumerate() {
                let mut want = activate::<FMA>(rows[0][p], prologue) * coef(0);
                for (e, row) in rows.iter().enumerate().skip(1) {
                    want = madd::<FMA>(activate::<FMA>(row[p], prologue), coef(e), want);
                }
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "n {n} depth {depth} pixel {p} fma {FMA} prologue {prologue:?}"
                );
            }
        }
        for n in [1, 15, 16, 17, 63, 64, 65, 80, 130, 211] {
            for depth in [1, 3, 7] {
                for prologue in [None, Some((0.7, -0.2))] {
                    check::<true>(n, depth, prologue);
                    check::<false>(n, depth, prologue);
                }
            }
        }
    }
}
