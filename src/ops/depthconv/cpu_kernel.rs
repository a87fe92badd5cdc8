//! CPU kernels of the depth convolution. Items are `(plane pair, fixed pixel chunk)`, split the
//! same way for any thread count; inside an item the pixels go in L1-sized tiles. Every output
//! slice accumulates its taps in increasing order with the tier's multiply-add (as the CUDA
//! kernels do). The weight gradient keeps per-lane f32 sums per item, adds the lanes in f64
//! per item and the items in a fixed order, so `dv` is bitwise identical for any thread count.
//! The grad-input and grad-weight passes share one read of `dy`.

use super::DepthConvDims;
use crate::cpu::tier::{multiversion, RowWriter, SharedOut, Tier, STREAM_BYTES};
use crate::cpu::{active_isa, Isa};
use crate::Element;
use rayon::prelude::*;

/// Pixels per work item. Fixed: the `dv` reduction order depends on it.
const CHUNK_PIXELS: usize = 8192;
/// Width of the `dv` lane accumulators.
const LANES: usize = 16;
type Lanes = [f32; LANES];

/// Pixels per tile: the tile's input and output rows stay in L1.
fn tile_pixels(depth: usize) -> usize {
    ((6144 / (2 * depth.max(1) + 2)) / LANES * LANES).clamp(64, 1024)
}

/// Input slice `k + t - r` of output slice `k`, tap `t`, when it exists.
#[inline(always)]
fn source(k: usize, t: usize, radius: usize, depth: usize) -> Option<usize> {
    (k + t).checked_sub(radius).filter(|&d| d < depth)
}

/// `out[k][p] = sum_t taps[t] * src[k + t - r][p]` over the tile, taps in increasing order.
#[inline(always)]
fn convolve_tile<F: Tier>(taps: &[f32], src: &[&[f32]], out: &mut [&mut [f32]], p: usize, m: usize) {
    let (radius, depth) = (taps.len() / 2, src.len());
    for (k, row) in out.iter_mut().enumerate() {
        let row = &mut row[p..p + m];
        let mut first = true;
        for (t, &tap) in taps.iter().enumerate() {
            let Some(d) = source(k, t, radius, depth) else {
                continue;
            };
            let s = &src[d][..m];
            if first {
                for (o, &v) in row.iter_mut().zip(s) {
                    *o = tap * v;
                }
                first = false;
            } else {
                for (o, &v) in row.iter_mut().zip(s) {
                    *o = F::mul_add(tap, v, *o);
                }
            }
        }
        if first {
            row.fill(0.0);
        }
    }
}

/// `a * b + c` lane by lane, by value: a shape LLVM keeps in one vector register.
#[inline(always)]
fn mul_add_lanes<F: Tier>(a: &Lanes, b: &Lanes, c: Lanes) -> Lanes {
    std::array::from_fn(|l| F::mul_add(a[l], b[l], c[l]))
}

/// The `LANES` values starting at `i` of a slice at least that long.
#[inline(always)]
fn lanes(s: &[f32], i: usize) -> &Lanes {
    const ZERO: Lanes = [0.0; LANES];
    <&Lanes>::try_from(&s[i..i + LANES]).unwrap_or(&ZERO)
}

/// `acc[t] += x[k + t - r] * dy[k]` lane by lane over the tile: two lane blocks per step in
/// registers, pixels past the last full pair of blocks folded into the second one. The order
/// depends on the pixel positions only.
#[inline(always)]
fn accumulate_dv<F: Tier>(x: &[&[f32]], dy: &[&[f32]], acc: &mut [[Lanes; 2]], m: usize) {
    let (radius, depth) = (acc.len() / 2, x.len());
    let pairs = m / (2 * LANES);
    for (t, a) in acc.iter_mut().enumerate() {
        let [mut a0, mut a1] = *a;
        for k in 0..depth {
            let Some(d) = source(k, t, radius, depth) else {
                continue;
            };
            let (xs, gs) = (&x[d][..m], &dy[k][..m]);
            for j in 0..pairs {
                let p = j * 2 * LANES;
                a0 = mul_add_lanes::<F>(lanes(xs, p), lanes(gs, p), a0);
                a1 = mul_add_lanes::<F>(lanes(xs, p + LANES), lanes(gs, p + LANES), a1);
            }
            for (i, p) in (pairs * 2 * LANES..m).enumerate() {
                let l = i % LANES;
                a1[l] = F::mul_add(xs[p], gs[p], a1[l]);
            }
        }
        *a = [a0, a1];
    }
}

/// f32 views of `rows[..][p..p + m]`: the rows themselves for f32, else widened into `stage`.
#[inline(always)]
fn tile_rows<'a, T: Element>(
    rows: &[&'a [T]],
    p: usize,
    m: usize,
    stage: &'a mut [Vec<f32>],
) -> Vec<&'a [f32]> {
    if let Some(direct) = rows
        .iter()
        .map(|r| T::as_f32(&r[p..p + m]))
        .collect::<Option<Vec<_>>>()
    {
        return direct;
    }
    for (st, row) in stage.iter_mut().zip(rows) {
        T::load_f32(&row[p..p + m], &mut st[..m]);
    }
    stage.iter().map(|s| &s[..m]).collect()
}

/// The `depth` rows of pixels `p0..p0 + n` of plane pair `bc`.
fn plane_rows<T>(t: &[T], bc: usize, depth: usize, pixels: usize, p0: usize, n: usize) -> Vec<&[T]> {
    (0..depth)
        .map(|d| &t[(bc * depth + d) * pixels + p0..][..n])
        .collect()
}

struct Pass<'a, T> {
    dims: &'a DepthConvDims,
    chunks: usize,
    /// Per channel, the taps applied to `input` (`v` for forward, `v` reversed for dx).
    taps: &'a [f32],
    /// `x` (forward) or `dy` (backward).
    input: &'a [T],
    /// Where the mixed rows go (`y` or `dx`), when wanted.
    out: Option<SharedOut<T>>,
    /// `x`, when `dv` is wanted (backward only).
    x: Option<&'a [T]>,
    stream: bool,
}

#[inline(always)]
fn item<F: Tier, T: Element, const UNUSED: usize>(
    a: &Pass<'_, T>,
    i: usize,
    partial: Option<&mut [f64]>,
) {
    let dims = &a.dims.input;
    let (depth, pixels, ntaps) = (dims.depth, dims.pixels, a.dims.taps);
    let (bc, chunk) = (i / a.chunks, i % a.chunks);
    let c = bc % dims.channels;
    let taps = &a.taps[c * ntaps..(c + 1) * ntaps];
    let p0 = chunk * CHUNK_PIXELS;
    let n = CHUNK_PIXELS.min(pixels - p0);
    let in_rows = plane_rows(a.input, bc, depth, pixels, p0, n);
    let x_rows = a
        .x
        .filter(|_| partial.is_some())
        .map(|x| plane_rows(x, bc, depth, pixels, p0, n));
    // SAFETY: the output holds B*C*D*P elements (checked by the caller) and item `i` is the only
    // one writing pixels p0..p0+n of plane pair `bc`.
    let mut out_rows = a.out.map(|o| unsafe { o.rows_mut(bc, depth, pixels, p0, n) });
    let tile = tile_pixels(depth);
    let staged = T::as_f32(&[]).is_none();
    let mut stage_in = vec![vec![0.0f32; if staged { tile } else { 0 }]; depth];
    let mut stage_x = vec![vec![0.0f32; if staged && x_rows.is_some() { tile } else { 0 }]; depth];
    // f32 with plain stores: taps accumulate straight into the output rows.
    let direct = !staged && !a.stream;
    let mut stage_out = vec![vec![0.0f32; if direct { 0 } else { tile }]; depth];
    let mut writer = RowWriter::<F, T>::new(a.stream, tile);
    let mut acc = vec![[[0.0f32; LANES]; 2]; if partial.is_some() { ntaps } else { 0 }];
    let mut p = 0;
    while p < n {
        let m = tile.min(n - p);
        let src = tile_rows(&in_rows, p, m, &mut stage_in);
        if let Some(out_rows) = out_rows.as_mut() {
            if direct {
                let mut out: Vec<&mut [f32]> =
                    out_rows.iter_mut().filter_map(|r| T::as_f32_mut(r)).collect();
                convolve_tile::<F>(taps, &src, &mut out, p, m);
            } else {
                let mut out: Vec<&mut [f32]> = stage_out.iter_mut().map(|r| &mut r[..]).collect();
                convolve_tile::<F>(taps, &src, &mut out, 0, m);
                for (o, row) in stage_out.iter().zip(out_rows.iter_mut()) {
                    writer.write(&o[..m], &mut row[p..p + m]);
                }
            }
        }
        if let Some(x_rows) = x_rows.as_ref() {
            let x = tile_rows(x_rows, p, m, &mut stage_x);
            accumulate_dv::<F>(&x, &src, &mut acc, m);
        }
        p += m;
    }
    writer.finish();
    if let Some(partial) = partial {
        for (slot, [a0, a1]) in partial.iter_mut().zip(&acc) {
            *slot = a0.iter().chain(a1).map(|&v| v as f64).sum();
        }
    }
}
multiversion!(item_entry, item, (a: &Pass<'_, T>, i: usize, partial: Option<&mut [f64]>));

/// Per channel taps `[C][K]` from `v[K, C]`, reversed for the input gradient.
fn channel_taps(v: &[f32], taps: usize, channels: usize, reversed: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(taps * channels);
    for c in 0..channels {
        for t in 0..taps {
            let t = if reversed { taps - 1 - t } else { t };
            out.push(v[t * channels + c]);
        }
    }
    out
}

/// `y = depth_conv(x, v)`; `v` is `[K, C]` widened to f32, lengths checked by the caller.
pub(crate) fn forward<T: Element>(dims: &DepthConvDims, x: &[T], v: &[f32], y: &mut [T]) {
    let taps = channel_taps(v, dims.taps, dims.input.channels, false);
    let chunks = dims.input.pixels.div_ceil(CHUNK_PIXELS);
    let pass = Pass {
        dims,
        chunks,
        taps: &taps,
        input: x,
        stream: std::mem::size_of_val(y) >= STREAM_BYTES,
        out: Some(SharedOut(y.as_mut_ptr())),
        x: None,
    };
    let isa: Isa = active_isa();
    let items = dims.input.batch * dims.input.channels * chunks;
    (0..items)
        .into_par_iter()
        .for_each(|i| item_entry::<T, 0>(isa, &pass, i, None));
}

/// Writes `dx` when given and `dv` (`[K, C]`) when given, in one pass over `dy`.
pub(crate) fn backward<T: Element>(
    dims: &DepthConvDims,
    x: &[T],
    v: &[f32],
    dy: &[T],
    dx: Option<&mut [T]>,
    dv: Option<&mut [T]>,
) {
    let (ntaps, channels) = (dims.taps, dims.input.channels);
    let taps = channel_taps(v, ntaps, channels, true);
    let chunks = dims.input.pixels.div_ceil(CHUNK_PIXELS);
    let pass = Pass {
        dims,
        chunks,
        taps: &taps,
        input: dy,
        stream: std::mem::size_of_val(dy) >= STREAM_BYTES,
        out: dx.map(|dx| SharedOut(dx.as_mut_ptr())),
        x: dv.is_some().then_some(x),
    };
    let isa: Isa = active_isa();
    let items = dims.input.batch * channels * chunks;
    let Some(dv) = dv else {
        (0..items)
            .into_par_iter()
            .for_each(|i| item_entry::<T, 0>(isa, &pass, i, None));
        return;
    };
    let mut partials = vec![0.0f64; items * ntaps];
    partials
        .par_chunks_mut(ntaps)
        .enumerate()
        .for_each(|(i, slot)| item_entry::<T, 0>(isa, &pass, i, Some(slot)));
    // Fixed order: for channel c, items in (batch, chunk) order.
    let mut sums = vec![0.0f64; ntaps * channels];
    for b in 0..dims.input.batch {
        for c in 0..channels {
            let first = (b * channels + c) * chunks;
            for i in first..first + chunks {
                for (t, s) in partials[i * ntaps..(i + 1) * ntaps].iter().enumerate() {
                    sums[t * channels + c] += s;
                }
            }
        }
    }
    for (out, s) in dv.iter_mut().zip(&sums) {
        *out = T::from_f32(*s as f32);
    }
}
