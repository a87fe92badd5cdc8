//! CPU kernels of the depth convolution. Items are `(plane pair, fixed pixel chunk)`, split the
//! same way for any thread count; inside an item the pixels go in L1-sized tiles. Every output
//! slice accumulates its taps in increasing order with the tier's multiply-add (as the CUDA
//! kernels do). The weight gradient keeps per-lane f32 sums per item, adds the lanes in f64
//! per item and the items in a fixed order, so `dv` is bitwise identical for any thread count.
//! The grad-input and grad-weight passes share one read of `dy`.

use super::DepthConvDims;
use crate::cpu::tier::{by_depth, depth_of, multiversion, RowWriter, SharedOut, Tier, STREAM_BYTES};
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
    ((24576 / (2 * depth.max(1) + 2)) / LANES * LANES).clamp(256, 2048)
}

/// `a * b + c` lane by lane, by value: a shape LLVM keeps in one vector register.
#[inline(always)]
fn mul_add_lanes<F: Tier>(a: &Lanes, b: &Lanes, c: Lanes) -> Lanes {
    std::array::from_fn(|l| F::mul_add(a[l], b[l], c[l]))
}

/// `a * b + c` with a scalar `a` broadcast to every lane.
#[inline(always)]
fn mul_add_scalar<F: Tier>(a: f32, b: &Lanes, c: Lanes) -> Lanes {
    std::array::from_fn(|l| F::mul_add(a, b[l], c[l]))
}

/// The `LANES` values starting at `i` of a slice at least that long.
#[inline(always)]
fn lanes(s: &[f32], i: usize) -> &Lanes {
    const ZERO: Lanes = [0.0; LANES];
    <&Lanes>::try_from(&s[i..i + LANES]).unwrap_or(&ZERO)
}

/// The tap linking input slice `j` to output slice `k` (`t = j - k + r`), if within the kernel.
#[inline(always)]
fn tap_of(j: usize, k: usize, radius: usize, taps: usize) -> Option<usize> {
    (j + radius).checked_sub(k).filter(|&t| t < taps)
}

/// `depth` lane blocks: a register-sized array for a constant depth, a heap buffer for the
/// general path (`D = 0`).
#[inline(always)]
fn blocks<const D: usize>(depth: usize) -> ([Lanes; D], Vec<Lanes>) {
    let heap = if D == 0 { vec![[0.0; LANES]; depth] } else { Vec::new() };
    ([[0.0; LANES]; D], heap)
}

/// Diagonals of a `D x D` matrix for `D <= 16`: the `dv` accumulators, one per `j - k`.
const MAX_DIAGONALS: usize = 31;

/// `out[k][p] = sum_t taps[t] * src[k + t - r][p]` over pixels `0..m` of the tile (rows read
/// from `src_p0`, written from `out_p0`), taps in increasing order. Every `LANES` pixels of all
/// slices are loaded once into registers and every output written once. The loops run over
/// slice pairs `(j, k)`, which a constant depth unrolls into register indices; the tap of a
/// pair is looked up at run time.
#[inline(always)]
fn convolve_tile<F: Tier, const D: usize, S: AsRef<[f32]>, O: AsMut<[f32]>>(
    taps: &[f32],
    src: &[S],
    src_p0: usize,
    out: &mut [O],
    out_p0: usize,
    m: usize,
) {
    let depth = depth_of::<D>(src.len());
    let (ntaps, r) = (taps.len(), taps.len() / 2);
    let (mut fixed, mut heap) = blocks::<D>(depth);
    let xin: &mut [Lanes] = if D == 0 { &mut heap } else { &mut fixed };
    let full = m / LANES * LANES;
    let mut p = 0;
    while p < full {
        for (d, block) in xin.iter_mut().enumerate().take(depth) {
            *block = *lanes(src[d].as_ref(), src_p0 + p);
        }
        for (k, row) in out.iter_mut().enumerate().take(depth) {
            let mut acc = [0.0f32; LANES];
            let mut first = true;
            for (j, x) in xin.iter().enumerate().take(depth) {
                if let Some(t) = tap_of(j, k, r, ntaps) {
                    acc = if first {
                        std::array::from_fn(|l| taps[t] * x[l])
                    } else {
                        mul_add_scalar::<F>(taps[t], x, acc)
                    };
                    first = false;
                }
            }
            row.as_mut()[out_p0 + p..out_p0 + p + LANES].copy_from_slice(&acc);
        }
        p += LANES;
    }
    for p in full..m {
        for (k, row) in out.iter_mut().enumerate().take(depth) {
            let mut acc = 0.0f32;
            let mut first = true;
            for (j, s) in src.iter().enumerate().take(depth) {
                if let Some(t) = tap_of(j, k, r, ntaps) {
                    let x = s.as_ref()[src_p0 + p];
                    acc = if first { taps[t] * x } else { F::mul_add(taps[t], x, acc) };
                    first = false;
                }
            }
            row.as_mut()[out_p0 + p] = acc;
        }
    }
}

/// `acc[t] += x[k + t - r] * dy[k]` lane by lane over the tile, both planes' `LANES` pixels of
/// every slice held in registers and one accumulator per diagonal `j - k` of the slice pairs
/// (constant indices for a constant depth), folded into the taps at the end of the tile. The
/// order depends on the pixel positions only; pixels past the last full block go to lanes
/// `i % LANES`.
#[inline(always)]
fn accumulate_dv<F: Tier, const D: usize, S: AsRef<[f32]>, G: AsRef<[f32]>>(
    x: &[S],
    x_p0: usize,
    dy: &[G],
    dy_p0: usize,
    acc: &mut [Lanes],
    m: usize,
) {
    let depth = depth_of::<D>(x.len());
    let (ntaps, r) = (acc.len(), acc.len() / 2);
    let (mut fx, mut hx) = blocks::<D>(depth);
    let (mut fg, mut hg) = blocks::<D>(depth);
    let xin: &mut [Lanes] = if D == 0 { &mut hx } else { &mut fx };
    let gin: &mut [Lanes] = if D == 0 { &mut hg } else { &mut fg };
    let diagonals = 2 * depth - 1;
    let mut fixed_diag = [[0.0f32; LANES]; MAX_DIAGONALS];
    let mut heap_diag = if D == 0 { vec![[0.0f32; LANES]; diagonals] } else { Vec::new() };
    let diag: &mut [Lanes] = if D == 0 { &mut heap_diag } else { &mut fixed_diag };
    let full = m / LANES * LANES;
    let mut p = 0;
    while p < full {
        for d in 0..depth {
            xin[d] = *lanes(x[d].as_ref(), x_p0 + p);
            gin[d] = *lanes(dy[d].as_ref(), dy_p0 + p);
        }
        for k in 0..depth {
            for j in 0..depth {
                if tap_of(j, k, r, ntaps).is_some() {
                    let e = j + depth - 1 - k;
                    diag[e] = mul_add_lanes::<F>(&xin[j], &gin[k], diag[e]);
                }
            }
        }
        p += LANES;
    }
    for (i, p) in (full..m).enumerate() {
        let l = i % LANES;
        for k in 0..depth {
            for j in 0..depth {
                if tap_of(j, k, r, ntaps).is_some() {
                    let e = j + depth - 1 - k;
                    let (xv, gv) = (x[j].as_ref()[x_p0 + p], dy[k].as_ref()[dy_p0 + p]);
                    diag[e][l] = F::mul_add(xv, gv, diag[e][l]);
                }
            }
        }
    }
    // Diagonal j - k = t - r.
    for (t, a) in acc.iter_mut().enumerate() {
        if let Some(e) = (t + depth - 1).checked_sub(r).filter(|&e| e < diagonals) {
            for l in 0..LANES {
                a[l] += diag[e][l];
            }
        }
    }
}

/// The rows as f32 slices when the storage is f32.
fn f32_rows<'a, T: Element>(rows: &[&'a [T]]) -> Option<Vec<&'a [f32]>> {
    rows.iter().map(|r| T::as_f32(r)).collect()
}

/// Widens pixels `p..p + m` of `rows` into `stage` (16-bit storage).
#[inline(always)]
fn widen<T: Element>(rows: &[&[T]], p: usize, m: usize, stage: &mut [Vec<f32>]) {
    for (st, row) in stage.iter_mut().zip(rows) {
        T::load_f32(&row[p..p + m], &mut st[..m]);
    }
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
fn item<F: Tier, T: Element, const D: usize>(
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
    let mut acc = vec![[0.0f32; LANES]; if partial.is_some() { ntaps } else { 0 }];
    let mut writer = RowWriter::<F, T>::new(a.stream, tile);
    // f32 storage: the kernels read the rows in place; 16-bit rows are widened per tile.
    let in32 = f32_rows(&in_rows);
    let x32 = x_rows.as_deref().and_then(f32_rows);
    let stage_rows = |wanted: bool| vec![vec![0.0f32; if wanted { tile } else { 0 }]; depth];
    let mut stage_in = stage_rows(in32.is_none());
    let mut stage_x = stage_rows(x_rows.is_some() && x32.is_none());
    // f32 with plain stores: outputs are written straight into their rows.
    let want_out = out_rows.is_some();
    let direct_mode = want_out && in32.is_some() && !a.stream;
    let mut direct: Option<Vec<&mut [f32]>> = if direct_mode {
        out_rows
            .take()
            .map(|rows| rows.into_iter().filter_map(|r| T::as_f32_mut(r)).collect())
    } else {
        None
    };
    let mut stage_out = stage_rows(want_out && !direct_mode);
    let mut p = 0;
    while p < n {
        let m = tile.min(n - p);
        if in32.is_none() {
            widen(&in_rows, p, m, &mut stage_in);
        }
        if let Some(out) = direct.as_mut() {
            match &in32 {
                Some(src) => convolve_tile::<F, D, _, _>(taps, src, p, out, p, m),
                None => convolve_tile::<F, D, _, _>(taps, &stage_in, 0, out, p, m),
            }
        } else if let Some(out_rows) = out_rows.as_mut() {
            match &in32 {
                Some(src) => convolve_tile::<F, D, _, _>(taps, src, p, &mut stage_out, 0, m),
                None => convolve_tile::<F, D, _, _>(taps, &stage_in, 0, &mut stage_out, 0, m),
            }
            for (o, row) in stage_out.iter().zip(out_rows.iter_mut()) {
                writer.write(&o[..m], &mut row[p..p + m]);
            }
        }
        if let Some(x_rows) = x_rows.as_ref() {
            if x32.is_none() {
                widen(x_rows, p, m, &mut stage_x);
            }
            match (&x32, &in32) {
                (Some(x), Some(g)) => accumulate_dv::<F, D, _, _>(x, p, g, p, &mut acc, m),
                (Some(x), None) => accumulate_dv::<F, D, _, _>(x, p, &stage_in, 0, &mut acc, m),
                (None, Some(g)) => accumulate_dv::<F, D, _, _>(&stage_x, 0, g, p, &mut acc, m),
                (None, None) => accumulate_dv::<F, D, _, _>(&stage_x, 0, &stage_in, 0, &mut acc, m),
            }
        }
        p += m;
    }
    writer.finish();
    if let Some(partial) = partial {
        for (slot, lanes) in partial.iter_mut().zip(&acc) {
            *slot = lanes.iter().map(|&v| v as f64).sum();
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
    let run: fn(Isa, &Pass<'_, T>, usize, Option<&mut [f64]>) =
        by_depth!(dims.input.depth, item_entry::<T>);
    let items = dims.input.batch * dims.input.channels * chunks;
    (0..items)
        .into_par_iter()
        .for_each(|i| run(isa, &pass, i, None));
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
    let run: fn(Isa, &Pass<'_, T>, usize, Option<&mut [f64]>) =
        by_depth!(dims.input.depth, item_entry::<T>);
    let items = dims.input.batch * channels * chunks;
    let Some(dv) = dv else {
        (0..items)
            .into_par_iter()
            .for_each(|i| run(isa, &pass, i, None));
        return;
    };
    let mut partials = vec![0.0f64; items * ntaps];
    partials
        .par_chunks_mut(ntaps)
        .enumerate()
        .for_each(|(i, slot)| run(isa, &pass, i, Some(slot)));
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
