//! CPU kernels of the depth convolution. Items are `(plane pair, fixed pixel chunk)`, split the
//! same way for any thread count. Inside an item the output slices are made one after another,
//! each in one sweep over the chunk's pixels from the K input slices it needs: a slice comes
//! from memory once, for the first output that needs it, and stays in L2 for the next K - 1
//! (a chunk row is 32 KiB), so a thread streams one input row and one output row at a time, as
//! a copy does. Taps are accumulated in increasing order with the tier's multiply-add (the
//! CUDA kernels' order). The weight gradient keeps per-lane f32 sums per item, adds the lanes
//! in f64 per item and the items in a fixed order: `dv` is bitwise identical for any thread
//! count. Grad-input and grad-weight share one pass over `dy`.

use super::DepthConvDims;
use crate::cpu::tier::{multiversion, RowWriter, SharedOut, Tier, STREAM_BYTES};
use crate::cpu::{active_isa, Isa};
use crate::Element;
use rayon::prelude::*;

/// Pixels per work item. Fixed: the `dv` reduction order depends on it.
const CHUNK_PIXELS: usize = 8192;
/// Width of the vectorised pixel blocks and of the `dv` lane accumulators.
const LANES: usize = 16;
type Lanes = [f32; LANES];
/// Pixels per output tile when outputs are staged (16-bit storage or streaming stores).
const TILE: usize = 1024;

/// The taps `t` of output slice `k` whose input slice `k + t - r` exists.
#[inline(always)]
fn tap_range(k: usize, taps: usize, depth: usize) -> std::ops::Range<usize> {
    let r = taps / 2;
    r.saturating_sub(k)..taps.min(depth + r - k)
}

/// The `LANES` values starting at `i` of a slice at least that long.
#[inline(always)]
fn lanes(s: &[f32], i: usize) -> &Lanes {
    const ZERO: Lanes = [0.0; LANES];
    <&Lanes>::try_from(&s[i..i + LANES]).unwrap_or(&ZERO)
}

/// `out[p] = sum_i terms[i].0 * terms[i].1[p]`, terms in order (the first one multiplied, the
/// rest multiply-added); no terms gives zeros. Each 16-lane block of `out` is summed in a
/// register over every term and stored once: one pass per term over an L1 block, as before,
/// read and wrote `out` once per term, and on inputs that sit in cache those loads and stores
/// were the pass's limit.
#[inline(always)]
fn mix_terms<F: Tier>(terms: &[(f32, &[f32])], out: &mut [f32]) {
    let Some((&(c0, r0), rest)) = terms.split_first() else {
        out.fill(0.0);
        return;
    };
    let m = out.len();
    let full = m / LANES * LANES;
    let mut p = 0;
    while p < full {
        let first = lanes(r0, p);
        let mut acc: Lanes = std::array::from_fn(|l| c0 * first[l]);
        for &(c, r) in rest {
            let v = lanes(r, p);
            acc = std::array::from_fn(|l| F::mul_add(c, v[l], acc[l]));
        }
        out[p..p + LANES].copy_from_slice(&acc);
        p += LANES;
    }
    for (o, p) in out[full..].iter_mut().zip(full..) {
        let mut acc = c0 * r0[p];
        for &(c, r) in rest {
            acc = F::mul_add(c, r[p], acc);
        }
        *o = acc;
    }
}

/// `sum_p a[p] * b[p]` per lane (`p % LANES` of four interleaved block accumulators, added in a
/// fixed order); the tail past the last full block goes to lanes `i % LANES`.
#[inline(always)]
fn dot_lanes<F: Tier>(a: &[f32], b: &[f32]) -> Lanes {
    let m = a.len().min(b.len());
    let mut acc = [[0.0f32; LANES]; 4];
    let quads = m / (4 * LANES);
    for q in 0..quads {
        for (j, s) in acc.iter_mut().enumerate() {
            let p = (4 * q + j) * LANES;
            let (x, y) = (lanes(a, p), lanes(b, p));
            *s = std::array::from_fn(|l| F::mul_add(x[l], y[l], s[l]));
        }
    }
    let mut p = quads * 4 * LANES;
    let mut j = 0;
    while p + LANES <= m {
        let (x, y) = (lanes(a, p), lanes(b, p));
        // A loop, not `std::array::from_fn`: LLVM left that call out of line here, compiled
        // without the tier's target features.
        for (l, s) in acc[j].iter_mut().enumerate() {
            *s = F::mul_add(x[l], y[l], *s);
        }
        p += LANES;
        j += 1;
    }
    for (i, q) in (p..m).enumerate() {
        let l = i % LANES;
        acc[3][l] = F::mul_add(a[q], b[q], acc[3][l]);
    }
    std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]))
}

/// The f32 view of the D rows of one chunk: the rows themselves for f32 storage, else a ring of
/// K widened rows (slice `d` in slot `d % K`, buffers reused from the worker's [`Scratch`]),
/// filled as the sweep reaches them.
struct SliceRows<'a, 's, T> {
    src: Vec<&'a [T]>,
    direct: Option<Vec<&'a [f32]>>,
    ring: &'s mut Vec<Vec<f32>>,
    held: Vec<Option<usize>>,
}

impl<'a, 's, T: Element> SliceRows<'a, 's, T> {
    fn new(src: Vec<&'a [T]>, slots: usize, ring: &'s mut Vec<Vec<f32>>) -> SliceRows<'a, 's, T> {
        let direct: Option<Vec<&[f32]>> = src.iter().map(|r| T::as_f32(r)).collect();
        let n = src.first().map_or(0, |r| r.len());
        let slots = if direct.is_some() { 0 } else { slots };
        ring.resize_with(ring.len().max(slots), Vec::new);
        for row in ring.iter_mut().take(slots) {
            // Grows (and zero-fills) only the first time a worker sees this length.
            row.resize(n, 0.0);
        }
        SliceRows {
            src,
            direct,
            ring,
            held: vec![None; slots],
        }
    }

    /// Makes slices `lo..hi` readable.
    #[inline(always)]
    fn fetch(&mut self, lo: usize, hi: usize) {
        if self.direct.is_some() {
            return;
        }
        let slots = self.held.len();
        for d in lo..hi {
            if self.held[d % slots] != Some(d) {
                T::load_f32(self.src[d], &mut self.ring[d % slots]);
                self.held[d % slots] = Some(d);
            }
        }
    }

    /// Slice `d` (fetched before).
    #[inline(always)]
    fn get(&self, d: usize) -> &[f32] {
        match &self.direct {
            Some(rows) => rows[d],
            None => &self.ring[d % self.held.len()],
        }
    }
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

/// The `depth` rows of pixels `p0..p0 + n` of plane pair `bc`.
fn plane_rows<T>(
    t: &[T],
    bc: usize,
    depth: usize,
    pixels: usize,
    p0: usize,
    n: usize,
) -> Vec<&[T]> {
    (0..depth)
        .map(|d| &t[(bc * depth + d) * pixels + p0..][..n])
        .collect()
}

/// What one rayon worker keeps between its items: the widened rings and the output tile, so an
/// item allocates and zero-fills nothing of the chunk's size.
#[derive(Default)]
struct Scratch {
    input: Vec<Vec<f32>>,
    x: Vec<Vec<f32>>,
    tile: Vec<f32>,
}

#[inline(always)]
fn item<F: Tier, T: Element, const UNUSED: usize>(
    a: &Pass<'_, T>,
    i: usize,
    partial: Option<&mut [f64]>,
    scratch: &mut Scratch,
) {
    let dims = &a.dims.input;
    let (depth, pixels, ntaps) = (dims.depth, dims.pixels, a.dims.taps);
    let r = ntaps / 2;
    let (bc, chunk) = (i / a.chunks, i % a.chunks);
    let c = bc % dims.channels;
    let taps = &a.taps[c * ntaps..(c + 1) * ntaps];
    let p0 = chunk * CHUNK_PIXELS;
    let n = CHUNK_PIXELS.min(pixels - p0);
    let Scratch {
        input: input_ring,
        x: x_ring,
        tile,
    } = scratch;
    let mut input = SliceRows::new(
        plane_rows(a.input, bc, depth, pixels, p0, n),
        ntaps,
        input_ring,
    );
    let mut x =
        a.x.filter(|_| partial.is_some())
            .map(|x| SliceRows::new(plane_rows(x, bc, depth, pixels, p0, n), ntaps, x_ring));
    // SAFETY: the output holds B*C*D*P elements (checked by the caller) and item `i` is the only
    // one writing pixels p0..p0+n of plane pair `bc`.
    let mut out_rows = a
        .out
        .map(|o| unsafe { o.rows_mut(bc, depth, pixels, p0, n) });
    let staged_out = a.stream || T::as_f32(&[]).is_none();
    if staged_out && out_rows.is_some() {
        tile.resize(TILE, 0.0);
    }
    let mut writer = RowWriter::<F, T>::new(a.stream, TILE);
    let mut acc = vec![[0.0f32; LANES]; if x.is_some() { ntaps } else { 0 }];
    for k in 0..depth {
        let (lo, hi) = (k.saturating_sub(r), (k + r + 1).min(depth));
        input.fetch(lo, hi);
        if let Some(x) = x.as_mut() {
            x.fetch(lo, hi);
        }
        if let Some(rows) = out_rows.as_mut() {
            let terms: Vec<(f32, &[f32])> = tap_range(k, ntaps, depth)
                .map(|t| (taps[t], input.get(k + t - r)))
                .collect();
            let row = &mut rows[k];
            match T::as_f32_mut(row) {
                Some(out) if !staged_out => mix_terms::<F>(&terms, out),
                _ => {
                    let mut p = 0;
                    while p < n {
                        let m = TILE.min(n - p);
                        let cut: Vec<(f32, &[f32])> =
                            terms.iter().map(|&(cf, s)| (cf, &s[p..p + m])).collect();
                        mix_terms::<F>(&cut, &mut tile[..m]);
                        writer.write(&tile[..m], &mut row[p..p + m]);
                        p += m;
                    }
                }
            }
        }
        if let Some(x) = x.as_ref() {
            let g = input.get(k);
            for t in tap_range(k, ntaps, depth) {
                let d = dot_lanes::<F>(x.get(k + t - r), g);
                acc[t] = std::array::from_fn(|l| acc[t][l] + d[l]);
            }
        }
    }
    writer.finish();
    if let Some(partial) = partial {
        for (slot, lanes) in partial.iter_mut().zip(&acc) {
            *slot = lanes.iter().map(|&v| v as f64).sum();
        }
    }
}
multiversion!(
    item_entry,
    item,
    (a: &Pass<'_, T>, i: usize, partial: Option<&mut [f64]>, scratch: &mut Scratch)
);

/// Runs every item of `pass`, each worker with its own [`Scratch`]; with `partials`, item `i`
/// writes its `dv` partial sums to `partials[i * K..(i + 1) * K]`.
fn run_items<T: Element>(pass: &Pass<'_, T>, items: usize, partials: Option<&mut [f64]>) {
    let isa: Isa = active_isa();
    let run = item_entry::<T, 0>;
    match partials {
        None => (0..items)
            .into_par_iter()
            .for_each_init(Scratch::default, |s, i| run(isa, pass, i, None, s)),
        Some(partials) => partials
            .par_chunks_mut(pass.dims.taps)
            .enumerate()
            .for_each_init(Scratch::default, |s, (i, slot)| {
                run(isa, pass, i, Some(slot), s)
            }),
    }
}

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
    run_items(&pass, dims.input.batch * dims.input.channels * chunks, None);
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
    let items = dims.input.batch * channels * chunks;
    let Some(dv) = dv else {
        run_items(&pass, items, None);
        return;
    };
    let mut partials = vec![0.0f64; items * ntaps];
    run_items(&pass, items, Some(&mut partials));
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
