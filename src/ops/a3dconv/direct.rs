//! Direct stride-1 convolution for AVX-512: no im2col, no GEMM packing.
//!
//! A slab of output rows reads a block of *padded* input planes `[C][rows + halo][PW]` (zeros
//! where the convolution pads, so the inner loop has no edge tests). Output pixels are taken 16
//! at a time (one vector, within one row; a row's last vector is masked), [`MAX_VECTORS`] vectors
//! and [`BLOCK`] output channels per register tile: 24 accumulators that stay in registers while
//! the loop runs over input channels and taps. Each step loads one input vector per output
//! vector and broadcasts one weight per output channel, for `BLOCK * MAX_VECTORS` fused
//! multiply-adds. That ratio is what a dense GEMM micro-kernel reaches, with the im2col's
//! memory traffic and the GEMM's packing gone.
//!
//! The input gradient of a stride-1 convolution is the same kind of convolution (of `dy`, with
//! the kernel flipped and in/out channels swapped, padded by `(k-1)*dilation - padding`), so one
//! plan type serves both.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Output channels per register tile (and the packed weights' innermost width).
pub(crate) const BLOCK: usize = 4;
/// Output vectors (16 pixels each) per register tile.
pub(crate) const MAX_VECTORS: usize = 6;
const LANES: usize = 16;

/// A stride-1 convolution with its weights packed for the register tiles.
pub(crate) struct DirectPlan {
    in_channels: usize,
    out_channels: usize,
    in_size: [usize; 2],
    out_size: [usize; 2],
    kernel: [usize; 2],
    dilation: [usize; 2],
    /// Zeros before the first input row / column (negative: rows dropped).
    pad: [isize; 2],
    /// Length of one padded row: the widest tap reach plus a vector of slack, so that a masked
    /// tail vector's load stays inside the block.
    padded_width: usize,
    /// `[out block][in channel][tap][BLOCK]`, zero beyond `out_channels`.
    packed: Vec<f32>,
    /// Offsets of the taps in a padded plane.
    taps: Vec<usize>,
}

/// A stride-1 convolution as the forward pass sees it: weight `[O, C, kh, kw]` over `C` planes
/// of `in_size`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvShape {
    /// `[O, C]`
    pub channels: [usize; 2],
    /// `[H, W]` of the input planes.
    pub in_size: [usize; 2],
    /// `[kh, kw]`
    pub kernel: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl ConvShape {
    fn out_size(&self) -> [usize; 2] {
        [0, 1].map(|i| {
            self.in_size[i] + 2 * self.padding[i] - (self.kernel[i] - 1) * self.dilation[i]
        })
    }
}

impl DirectPlan {
    /// The forward convolution.
    pub(crate) fn forward(weight: &[f32], s: &ConvShape) -> DirectPlan {
        let pad = s.padding.map(|p| p as isize);
        Self::new(
            weight,
            false,
            s.channels,
            s.in_size,
            s.out_size(),
            s.kernel,
            pad,
            s.dilation,
        )
    }

    /// The input gradient of the forward convolution `s`: reads `dy` (`[O]` planes of the
    /// forward's output size) and writes `dz` (`[C]` planes of the forward's input size).
    pub(crate) fn input_gradient(weight: &[f32], s: &ConvShape) -> DirectPlan {
        let pad =
            [0, 1].map(|i| ((s.kernel[i] - 1) * s.dilation[i]) as isize - s.padding[i] as isize);
        let [o, c] = s.channels;
        Self::new(
            weight,
            true,
            [c, o],
            s.out_size(),
            s.in_size,
            s.kernel,
            pad,
            s.dilation,
        )
    }

    /// `transposed`: the plan's output channels are the weight's input channels, and the kernel
    /// is flipped.
    #[allow(clippy::too_many_arguments)]
    fn new(
        weight: &[f32],
        transposed: bool,
        [out_channels, in_channels]: [usize; 2],
        in_size: [usize; 2],
        out_size: [usize; 2],
        kernel: [usize; 2],
        pad: [isize; 2],
        dilation: [usize; 2],
    ) -> DirectPlan {
        let [kh, kw] = kernel;
        let reach = out_size[1] + (kw - 1) * dilation[1];
        let padded_width = (reach + LANES - 1).div_ceil(LANES) * LANES;
        let taps: Vec<usize> = (0..kh)
            .flat_map(|ki| (0..kw).map(move |kj| (ki, kj)))
            .map(|(ki, kj)| ki * dilation[0] * padded_width + kj * dilation[1])
            .collect();
        let blocks = out_channels.div_ceil(BLOCK);
        let mut packed = vec![0.0f32; blocks * in_channels * kh * kw * BLOCK];
        for o in 0..out_channels {
            for c in 0..in_channels {
                for ki in 0..kh {
                    for kj in 0..kw {
                        let v = if transposed {
                            // Weight [C_plan_out = weight's C][...]: w[c_in_plan=o_w][o_plan=c_w].
                            weight
                                [((c * out_channels + o) * kh + (kh - 1 - ki)) * kw + (kw - 1 - kj)]
                        } else {
                            weight[((o * in_channels + c) * kh + ki) * kw + kj]
                        };
                        let tap = ki * kw + kj;
                        packed[(((o / BLOCK) * in_channels + c) * kh * kw + tap) * BLOCK
                            + o % BLOCK] = v;
                    }
                }
            }
        }
        DirectPlan {
            in_channels,
            out_channels,
            in_size,
            out_size,
            kernel,
            dilation,
            pad,
            padded_width,
            packed,
            taps,
        }
    }

    /// Padded rows a slab of `rows` output rows reads.
    pub(crate) fn padded_rows(&self, rows: usize) -> usize {
        rows + (self.kernel[0] - 1) * self.dilation[0]
    }

    /// Elements of the padded block of one slice for a slab of `rows` output rows.
    pub(crate) fn block_len(&self, rows: usize) -> usize {
        self.in_channels * self.padded_rows(rows) * self.padded_width
    }

    /// The source row of padded row `p` of a slab starting at output row `r0`, if inside.
    fn source_row(&self, r0: usize, p: usize) -> Option<usize> {
        let r = (r0 + p) as isize - self.pad[0];
        (r >= 0 && (r as usize) < self.in_size[0]).then_some(r as usize)
    }

    /// The input rows a slab of `rows` output rows from `r0` reads (what [`DirectPlan::fill`]
    /// passes to its `row` callback), in order.
    pub(crate) fn source_rows(&self, r0: usize, rows: usize) -> std::ops::Range<usize> {
        let clip =
            |r: usize| (r as isize - self.pad[0]).clamp(0, self.in_size[0] as isize) as usize;
        let (lo, hi) = (clip(r0), clip(r0 + self.padded_rows(rows)));
        lo..hi.max(lo)
    }

    /// Fills the padded block for output rows `r0..r0 + rows` from `C` planes: `row(c, h, dst)`
    /// writes channel `c`'s input row `h` (`W` values) into `dst`; it is called once per padded
    /// row inside the input. `scratch` holds a row when negative padding clips it.
    #[inline(always)]
    pub(crate) fn fill(
        &self,
        r0: usize,
        rows: usize,
        block: &mut [f32],
        scratch: &mut Vec<f32>,
        mut row: impl FnMut(usize, usize, &mut [f32]),
    ) {
        let pw = self.padded_width;
        let prows = self.padded_rows(rows);
        let w = self.in_size[1];
        // Input columns `skip..` land at padded columns `lo..` (`count` of them).
        let (lo, skip) = if self.pad[1] >= 0 {
            (self.pad[1] as usize, 0)
        } else {
            (0, self.pad[1].unsigned_abs())
        };
        let count = w.saturating_sub(skip).min(pw - lo);
        for c in 0..self.in_channels {
            for p in 0..prows {
                let dst = &mut block[(c * prows + p) * pw..(c * prows + p + 1) * pw];
                let Some(h) = self.source_row(r0, p) else {
                    dst.fill(0.0);
                    continue;
                };
                dst[..lo].fill(0.0);
                dst[lo + count..].fill(0.0);
                if skip == 0 && count == w {
                    row(c, h, &mut dst[lo..lo + w]);
                } else {
                    scratch.resize(w, 0.0);
                    row(c, h, scratch);
                    dst[lo..lo + count].copy_from_slice(&scratch[skip..skip + count]);
                }
            }
        }
    }

    /// Runs the convolution for output rows `r0..r0 + rows` from the padded `block`: output
    /// channel `o`'s pixel `(r, j)` goes to `out[o * out_cs + (r - r0) * out_rs + j]`, plus
    /// `bias[o]` when given.
    ///
    /// # Safety
    /// AVX-512F must be present. `out` must be valid for writing every addressed element, and no
    /// other thread may access them during the call.
    pub(crate) unsafe fn run(
        &self,
        block: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        out: *mut f32,
        out_cs: usize,
        out_rs: usize,
    ) {
        debug_assert!(block.len() >= self.block_len(rows));
        // SAFETY: forwarded (AVX-512F present, `out` valid and exclusive).
        unsafe { self.run_avx512(block, rows, bias, out, out_cs, out_rs) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(
        &self,
        block: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        out: *mut f32,
        out_cs: usize,
        out_rs: usize,
    ) {
        let ow = self.out_size[1];
        let plane = self.padded_rows(rows) * self.padded_width;
        // Every output vector: (offset in the padded plane, offset in the output, lanes).
        let per_row = ow.div_ceil(LANES);
        let vectors: Vec<(usize, usize, usize)> = (0..rows)
            .flat_map(|r| (0..per_row).map(move |v| (r, v * LANES)))
            .map(|(r, j)| (r * self.padded_width + j, r * out_rs + j, LANES.min(ow - j)))
            .collect();
        let taps_len = self.taps.len();
        for ob in 0..self.out_channels.div_ceil(BLOCK) {
            let o0 = ob * BLOCK;
            let outs = BLOCK.min(self.out_channels - o0);
            let mut init = [0.0f32; BLOCK];
            if let Some(bias) = bias {
                init[..outs].copy_from_slice(&bias[o0..o0 + outs]);
            }
            let weights = &self.packed[ob * self.in_channels * taps_len * BLOCK..]
                [..self.in_channels * taps_len * BLOCK];
            for tile in vectors.chunks(MAX_VECTORS) {
                let t = Tile {
                    block: block.as_ptr(),
                    plane,
                    taps: &self.taps,
                    weights: weights.as_ptr(),
                    in_channels: self.in_channels,
                    init: &init,
                    // SAFETY: channel o0 of the output (caller's contract).
                    out: unsafe { out.add(o0 * out_cs) },
                    out_cs,
                };
                // SAFETY: AVX-512F present (this function's feature); loads stay inside `block`
                // (padded_width leaves a vector of slack after every tap's reach), stores are the
                // caller's output elements of channels o0..o0 + outs.
                unsafe { dispatch(outs, tile, &t) };
            }
        }
    }
}

/// What one register tile needs besides its vectors.
struct Tile<'a> {
    block: *const f32,
    plane: usize,
    taps: &'a [usize],
    weights: *const f32,
    in_channels: usize,
    init: &'a [f32; BLOCK],
    out: *mut f32,
    out_cs: usize,
}

/// Picks the register tile instantiation for `outs` channels and `vectors.len()` vectors.
#[target_feature(enable = "avx512f")]
unsafe fn dispatch(outs: usize, vectors: &[(usize, usize, usize)], t: &Tile<'_>) {
    macro_rules! by_vectors {
        ($no:literal) => {
            match vectors.len() {
                1 => tile::<$no, 1>(vectors, t),
                2 => tile::<$no, 2>(vectors, t),
                3 => tile::<$no, 3>(vectors, t),
                4 => tile::<$no, 4>(vectors, t),
                5 => tile::<$no, 5>(vectors, t),
                _ => tile::<$no, 6>(vectors, t),
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        match outs {
            1 => by_vectors!(1),
            2 => by_vectors!(2),
            3 => by_vectors!(3),
            _ => by_vectors!(4),
        }
    }
}

/// `NO` output channels x `NV` output vectors, accumulated over every input channel and tap.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const NO: usize, const NV: usize>(vectors: &[(usize, usize, usize)], t: &Tile<'_>) {
    let mut src = [0usize; NV];
    for (s, v) in src.iter_mut().zip(vectors) {
        *s = v.0;
    }
    let mut acc = [[_mm512_setzero_ps(); NV]; NO];
    for (o, row) in acc.iter_mut().enumerate() {
        *row = [_mm512_set1_ps(t.init[o]); NV];
    }
    let mut w = t.weights;
    for c in 0..t.in_channels {
        // SAFETY: channel c's padded plane lies inside the block (caller's contract).
        let base = unsafe { t.block.add(c * t.plane) };
        for &tap in t.taps {
            let mut x = [_mm512_setzero_ps(); NV];
            for v in 0..NV {
                // SAFETY: the vector's 16 lanes at this tap stay inside the block.
                x[v] = unsafe { _mm512_loadu_ps(base.add(tap + src[v])) };
            }
            for (o, row) in acc.iter_mut().enumerate() {
                // SAFETY: the packed weights hold BLOCK values per (channel, tap).
                let wb = _mm512_set1_ps(unsafe { *w.add(o) });
                for v in 0..NV {
                    row[v] = _mm512_fmadd_ps(wb, x[v], row[v]);
                }
            }
            // SAFETY: advances to the next (channel, tap) group of the packed weights.
            w = unsafe { w.add(BLOCK) };
        }
    }
    let mut dst = [(0usize, 0usize); NV];
    for (d, v) in dst.iter_mut().zip(vectors) {
        *d = (v.1, v.2);
    }
    // Constant trip counts only: a loop over `vectors` would index `acc` at run time and keep
    // every accumulator in memory, stored back after each multiply-add.
    for (o, row) in acc.iter().enumerate() {
        for v in 0..NV {
            let (dst, lanes) = dst[v];
            // SAFETY: output channel o, the vector's pixels (caller's contract).
            let p = unsafe { t.out.add(o * t.out_cs + dst) };
            if lanes == LANES {
                // SAFETY: as above, 16 elements.
                unsafe { _mm512_storeu_ps(p, row[v]) };
            } else {
                let mask: __mmask16 = (1u16 << lanes) - 1;
                // SAFETY: as above, `lanes` elements (the rest are masked off).
                unsafe { _mm512_mask_storeu_ps(p, mask, row[v]) };
            }
        }
    }
}
