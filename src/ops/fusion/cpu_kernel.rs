//! CPU kernels of A3D fusion.
//!
//! Work is split into items of one `(batch, channel)` plane pair and a fixed range of
//! [`CHUNK_PIXELS`] pixels; rayon spreads the items over threads. The split never depends on the
//! thread count, and every item computes its `dw` partial sum in a fixed order, so the weight
//! gradient is bitwise identical for any number of threads. (The instruction set is chosen once
//! per machine: AVX-512 and AVX2 builds use fused multiply-add, the baseline build does not, so
//! results may differ in the last bit between machines, never between runs.)
//!
//! Inside an item the pixel loop works on [`LANES`]-wide blocks of plain `f32` arrays, which
//! LLVM turns into SIMD code; the depth loops are unrolled for D = 1..=16 by instantiating the
//! same body with a constant depth.

use super::FusionDims;
use crate::cpu::tier::{
    by_depth, depth_of, multiversion, prefetch_rows, RowWriter, SharedOut, Tier, PREFETCH_L1,
    STREAM_BYTES,
};
use crate::cpu::{active_isa, Isa};
use crate::Element;
use rayon::prelude::*;

/// Pixels per work item. Fixed: the `dw` reduction order depends on it.
pub(crate) const CHUNK_PIXELS: usize = 8192;
/// Width of the vectorised pixel blocks (and of the `dw` lane accumulators).
const LANES: usize = 16;

/// Pixels per staging tile for `depth`: a few tiles of `depth` rows stay in L1.
fn tile_pixels(depth: usize) -> usize {
    ((4096 / depth.max(1)) / LANES * LANES).clamp(64, 1024)
}

/// One `LANES`-wide block of every row: `[row][lane]`.
type Lanes = [f32; LANES];

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

/// The `LANES` values of `row` starting at `p`.
#[inline(always)]
fn lanes_at(row: &[f32], p: usize) -> &Lanes {
    row[p..p + LANES].try_into().unwrap_or(&[0.0; LANES])
}

/// The `LANES` values of `row` starting at `p`, without a bounds check.
///
/// # Safety
/// `p + LANES <= row.len()`.
#[inline(always)]
unsafe fn lanes_unchecked(row: &[f32], p: usize) -> Lanes {
    debug_assert!(p + LANES <= row.len());
    // SAFETY: the caller guarantees LANES readable elements from `p`; `Lanes` is an array of
    // f32, alignment 4, as the slice's elements.
    unsafe { std::ptr::read_unaligned(row.as_ptr().add(p).cast::<Lanes>()) }
}

/// `depth` lane blocks: a register-sized local array for a constant depth, a heap buffer for
/// the general path.
#[inline(always)]
fn lane_blocks<const D: usize>(depth: usize) -> ([Lanes; D], Vec<Lanes>) {
    let heap = if D == 0 {
        vec![[0.0; LANES]; depth]
    } else {
        Vec::new()
    };
    ([[0.0; LANES]; D], heap)
}

/// `out[o][p] = sum_i coef[o * depth + i] * src[i][p]` for every pixel `p` of the tile
/// (`src` rows all have the tile's length; `out` rows are at least that long).
#[inline(always)]
fn mix_rows<F: Tier, const D: usize, O: AsMut<[f32]>>(
    depth: usize,
    coef: &[f32],
    src: &[&[f32]],
    out: &mut [O],
    out_off: usize,
) {
    let coef = &coef[..depth * depth];
    let (src, out) = (&src[..depth], &mut out[..depth]);
    let n = src.first().map_or(0, |r| r.len());
    let full = n / LANES * LANES;
    let (mut block_arr, mut block_vec) = lane_blocks::<D>(depth);
    let block: &mut [Lanes] = if D > 0 {
        &mut block_arr
    } else {
        &mut block_vec
    };
    let mut p = 0;
    while p < full {
        for (b, row) in block.iter_mut().zip(src) {
            *b = *lanes_at(row, p);
        }
        for (o, row) in out.iter_mut().enumerate() {
            let mut acc = [0.0f32; LANES];
            for (i, b) in block.iter().enumerate() {
                acc = mul_add_scalar::<F>(coef[o * depth + i], b, acc);
            }
            row.as_mut()[out_off + p..][..LANES].copy_from_slice(&acc);
        }
        p += LANES;
    }
    for p in full..n {
        for (o, row) in out.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for (i, s) in src.iter().enumerate() {
                acc = F::mul_add(coef[o * depth + i], s[p], acc);
            }
            row.as_mut()[out_off + p] = acc;
        }
    }
}

/// Constant depth `D`, with the accumulators of each pass in registers (arrays of constant
/// length) and the `D` dy rows as an array of slices, so the pixel loop has no memory traffic
/// but the loads of x and dy. With 32 lane blocks of registers (AVX-512) a pass takes two input
/// slices and every dy row (`2 * D` accumulators); narrower tiers take one input slice and as
/// many dy rows as fit beside it ([`dy_rows_per_pass`]), since `2 * D` blocks of 16 lanes would
/// spill to the stack on every multiply-add. Each accumulator sees its products in the same
/// order as in the general path: the same bits.
#[inline(always)]
fn accumulate_dw_fixed<F: Tier, const D: usize>(x: &[&[f32]], dy: &[&[f32]], acc: &mut [Lanes]) {
    let dyr: [&[f32]; D] = std::array::from_fn(|k| dy[k]);
    if F::LANE_BLOCKS >= 32 {
        let mut d = 0;
        while d + 1 < D {
            let (head, tail) = acc[d * D..(d + 2) * D].split_at_mut(D);
            dw_rows::<F, D, 2>([x[d], x[d + 1]], &dyr, [head, tail]);
            d += 2;
        }
        if d < D {
            dw_rows::<F, D, 1>([x[d]], &dyr, [&mut acc[d * D..(d + 1) * D]]);
        }
        return;
    }
    let per_pass = dy_rows_per_pass(F::LANE_BLOCKS);
    for (d, row) in acc[..D * D].chunks_exact_mut(D).enumerate() {
        let mut k0 = 0;
        while k0 < D {
            let k = per_pass.min(D - k0);
            dw_columns::<F>(x[d], &dyr[k0..k0 + k], &mut row[k0..k0 + k]);
            k0 += k;
        }
    }
}

/// dy rows one pass of a single input slice can hold in registers with `blocks` lane blocks:
/// their accumulators, the x block and the dy block being loaded (at most 6, the widest pass
/// [`dw_columns`] has).
fn dy_rows_per_pass(blocks: usize) -> usize {
    blocks.saturating_sub(2).clamp(1, 6)
}

/// `acc[k] += x * dy[k]` over the tile's pixels for `dy.len()` (1..=6) dy rows: one pass of
/// [`dw_rows`] with that many rows as a constant.
#[inline(always)]
fn dw_columns<F: Tier>(x: &[f32], dy: &[&[f32]], acc: &mut [Lanes]) {
    macro_rules! pass {
        ($k:literal) => {{
            let rows: [&[f32]; $k] = std::array::from_fn(|j| dy[j]);
            dw_rows::<F, $k, 1>([x], &rows, [acc])
        }};
    }
    match dy.len() {
        1 => pass!(1),
        2 => pass!(2),
        3 => pass!(3),
        4 => pass!(4),
        5 => pass!(5),
        _ => pass!(6),
    }
}

/// The accumulators of `R` input slices (`R * D` lane blocks, constant indices: registers)
/// over the tile's pixels; every `dy` block loaded feeds `R` of them.
#[inline(always)]
fn dw_rows<F: Tier, const D: usize, const R: usize>(
    x: [&[f32]; R],
    dy: &[&[f32]; D],
    acc: [&mut [Lanes]; R],
) {
    let mut regs: [[Lanes; D]; R] = std::array::from_fn(|r| std::array::from_fn(|k| acc[r][k]));
    let n = x[0].len();
    let full = n / LANES * LANES;
    // The pixel loop must have no exit but its end, or LLVM keeps the accumulators in memory
    // (a store per multiply-add): check every row once here, load unchecked below.
    assert!(x.iter().chain(dy.iter()).all(|row| row.len() >= n));
    let mut p = 0;
    while p < full {
        // SAFETY: p + LANES <= full <= n <= every row's length (asserted above).
        let xv: [Lanes; R] = std::array::from_fn(|r| unsafe { lanes_unchecked(x[r], p) });
        for k in 0..D {
            // SAFETY: as above.
            let yv = unsafe { lanes_unchecked(dy[k], p) };
            for r in 0..R {
                regs[r][k] = mul_add_lanes::<F>(&xv[r], &yv, regs[r][k]);
            }
        }
        p += LANES;
    }
    for (l, p) in (full..n).enumerate() {
        for k in 0..D {
            for r in 0..R {
                regs[r][k][l] = F::mul_add(x[r][p], dy[k][p], regs[r][k][l]);
            }
        }
    }
    for (a, r) in acc.into_iter().zip(&regs) {
        a.copy_from_slice(r);
    }
}

/// `acc[d * depth + k][p % LANES] += x[d][p] * dy[k][p]` over the tile's pixels: a fixed order,
/// whatever thread runs it. A constant depth takes [`accumulate_dw_fixed`]; this is the general
/// path.
#[inline(always)]
fn accumulate_dw<F: Tier, const D: usize>(
    depth: usize,
    x: &[&[f32]],
    dy: &[&[f32]],
    acc: &mut [Lanes],
) {
    if D > 0 {
        return accumulate_dw_fixed::<F, D>(x, dy, acc);
    }
    let dy = &dy[..depth];
    let (mut a_arr, mut a_vec) = lane_blocks::<D>(depth);
    let (mut b_arr, mut b_vec) = lane_blocks::<D>(depth);
    let (row_a, row_b): (&mut [Lanes], &mut [Lanes]) = if D > 0 {
        (&mut a_arr, &mut b_arr)
    } else {
        (&mut a_vec, &mut b_vec)
    };
    // Two input slices at a time: every dy block loaded feeds two accumulator rows, halving the
    // loads per multiply-add. Each accumulator still sees its products in the same order, so
    // the result is the same bits as one row at a time.
    let mut rows = acc.chunks_exact_mut(depth).zip(&x[..depth]);
    loop {
        let (first, second) = (rows.next(), rows.next());
        let Some((acc_a, xa)) = first else { break };
        row_a.copy_from_slice(acc_a);
        let n = xa.len();
        let full = n / LANES * LANES;
        match second {
            Some((acc_b, xb)) => {
                row_b.copy_from_slice(acc_b);
                let mut p = 0;
                while p < full {
                    let (va, vb) = (lanes_at(xa, p), lanes_at(xb, p));
                    for ((a, b), yr) in row_a.iter_mut().zip(row_b.iter_mut()).zip(dy) {
                        let yv = lanes_at(yr, p);
                        *a = mul_add_lanes::<F>(va, yv, *a);
                        *b = mul_add_lanes::<F>(vb, yv, *b);
                    }
                    p += LANES;
                }
                for (l, p) in (full..n).enumerate() {
                    for ((a, b), yr) in row_a.iter_mut().zip(row_b.iter_mut()).zip(dy) {
                        a[l] = F::mul_add(xa[p], yr[p], a[l]);
                        b[l] = F::mul_add(xb[p], yr[p], b[l]);
                    }
                }
                acc_b.copy_from_slice(row_b);
            }
            None => {
                let mut p = 0;
                while p < full {
                    let va = lanes_at(xa, p);
                    for (a, yr) in row_a.iter_mut().zip(dy) {
                        *a = mul_add_lanes::<F>(va, lanes_at(yr, p), *a);
                    }
                    p += LANES;
                }
                for (l, p) in (full..n).enumerate() {
                    for (a, yr) in row_a.iter_mut().zip(dy) {
                        a[l] = F::mul_add(xa[p], yr[p], a[l]);
                    }
                }
            }
        }
        acc_a.copy_from_slice(row_a);
    }
}

/// Row references of one tile without a heap allocation for depth <= 16.
// Deliberately inline: boxing the array would reintroduce the per-tile allocation it avoids.
#[allow(clippy::large_enum_variant)]
enum TileRows<'a> {
    Inline([&'a [f32]; 16], usize),
    Heap(Vec<&'a [f32]>),
}

impl<'a> TileRows<'a> {
    fn collect(depth: usize, mut row: impl FnMut(usize) -> &'a [f32]) -> TileRows<'a> {
        if depth <= 16 {
            let mut r: [&[f32]; 16] = [&[]; 16];
            for (d, slot) in r.iter_mut().enumerate().take(depth) {
                *slot = row(d);
            }
            TileRows::Inline(r, depth)
        } else {
            TileRows::Heap((0..depth).map(row).collect())
        }
    }
}

impl<'a> std::ops::Deref for TileRows<'a> {
    type Target = [&'a [f32]];
    fn deref(&self) -> &Self::Target {
        match self {
            TileRows::Inline(r, n) => &r[..*n],
            TileRows::Heap(v) => v,
        }
    }
}

/// Mutable row references of one tile without a heap allocation for depth <= 16.
// Deliberately inline, as `TileRows`.
#[allow(clippy::large_enum_variant)]
enum TileRowsMut<'a> {
    Inline([&'a mut [f32]; 16], usize),
    Heap(Vec<&'a mut [f32]>),
}

impl<'a> TileRowsMut<'a> {
    fn collect(rows: impl Iterator<Item = &'a mut [f32]>) -> TileRowsMut<'a> {
        let mut inline: [&'a mut [f32]; 16] = Default::default();
        let mut n = 0;
        let mut heap = Vec::new();
        for row in rows {
            if n < 16 && heap.is_empty() {
                inline[n] = row;
                n += 1;
            } else {
                if heap.is_empty() {
                    heap.extend(inline.iter_mut().take(n).map(std::mem::take));
                }
                heap.push(row);
            }
        }
        if heap.is_empty() {
            TileRowsMut::Inline(inline, n)
        } else {
            TileRowsMut::Heap(heap)
        }
    }
}

impl<'a> std::ops::Deref for TileRowsMut<'a> {
    type Target = [&'a mut [f32]];
    fn deref(&self) -> &Self::Target {
        match self {
            TileRowsMut::Inline(r, n) => &r[..*n],
            TileRowsMut::Heap(v) => v,
        }
    }
}

impl std::ops::DerefMut for TileRowsMut<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            TileRowsMut::Inline(r, n) => &mut r[..*n],
            TileRowsMut::Heap(v) => v,
        }
    }
}

/// The f32 rows of pixels `p..p + m` of `rows`: the rows themselves for f32 storage, else
/// widened into `stage` (which stays in L1).
#[inline(always)]
fn tile_rows<'a, T: Element>(
    rows: &[&'a [T]],
    p: usize,
    m: usize,
    stage: &'a mut [Vec<f32>],
) -> TileRows<'a> {
    if T::DTYPE == crate::DType::F32 {
        TileRows::collect(rows.len(), |d| T::as_f32(&rows[d][p..p + m]).unwrap_or(&[]))
    } else {
        for (st, row) in stage.iter_mut().zip(rows) {
            T::load_f32(&row[p..p + m], &mut st[..m]);
        }
        let stage: &'a [Vec<f32>] = stage;
        TileRows::collect(rows.len(), |d| &stage[d][..m])
    }
}

/// Item geometry shared by the passes.
#[derive(Clone, Copy)]
struct Items {
    depth: usize,
    pixels: usize,
    chunks: usize,
    count: usize,
}

impl Items {
    fn new(dims: &FusionDims) -> Items {
        let chunks = dims.pixels.div_ceil(CHUNK_PIXELS);
        Items {
            depth: dims.depth,
            pixels: dims.pixels,
            chunks,
            count: dims.batch * dims.channels * chunks,
        }
    }

    /// `(plane pair index b*C + c, first pixel, pixel count)` of item `i`.
    fn item(&self, i: usize) -> (usize, usize, usize) {
        let (bc, chunk) = (i / self.chunks, i % self.chunks);
        let p0 = chunk * CHUNK_PIXELS;
        (bc, p0, CHUNK_PIXELS.min(self.pixels - p0))
    }

    fn rows<'a, T>(&self, t: &'a [T], bc: usize, p0: usize, n: usize) -> Vec<&'a [T]> {
        (0..self.depth)
            .map(|d| &t[(bc * self.depth + d) * self.pixels + p0..][..n])
            .collect()
    }
}

/// Coefficients for channel `c` as a row-major `[out][in]` matrix: forward mixes input slice `d`
/// into output slice `k` with `w[d, k, c]` (transposed), grad-input mixes `dy[k]` into `dx[d]`
/// with the same `w[d, k, c]` (not transposed).
fn channel_coef(w: &[f32], depth: usize, channels: usize, c: usize, transpose: bool) -> Vec<f32> {
    let mut m = vec![0.0f32; depth * depth];
    for d in 0..depth {
        for k in 0..depth {
            let v = w[(d * depth + k) * channels + c];
            if transpose {
                m[k * depth + d] = v;
            } else {
                m[d * depth + k] = v;
            }
        }
    }
    m
}

/// Inputs of one forward launch.
struct Forward<'a, T> {
    items: Items,
    channels: usize,
    /// Per channel, the `[out k][in d]` coefficient matrix (`w` transposed).
    coef: &'a [f32],
    x: &'a [T],
    y: SharedOut<T>,
    stream: bool,
}

#[inline(always)]
fn forward_item<F: Tier, T: Element, const D: usize>(a: &Forward<'_, T>, i: usize) {
    let it = a.items;
    let depth = depth_of::<D>(it.depth);
    let (bc, p0, n) = it.item(i);
    let coef = &a.coef[(bc % a.channels) * depth * depth..][..depth * depth];
    let x_rows = it.rows(a.x, bc, p0, n);
    // SAFETY: `y` holds B*C*D*P elements (checked by the caller) and item `i` is the only one
    // covering pixels p0..p0+n of plane pair `bc`.
    let mut y_rows = unsafe { a.y.rows_mut(bc, depth, it.pixels, p0, n) };
    let tile = tile_pixels(depth);
    let mut stage = staging(T::DTYPE != crate::DType::F32, depth, tile);
    let mut out = staging(T::DTYPE != crate::DType::F32 || a.stream, depth, tile);
    let mut writer = RowWriter::<F, T>::new(a.stream, tile);
    if T::DTYPE == crate::DType::F32 && !a.stream {
        // f32 with plain stores: mix straight into y, no staging.
        let mut y: Vec<&mut [f32]> = y_rows.iter_mut().filter_map(|r| T::as_f32_mut(r)).collect();
        let mut p = 0;
        while p < n {
            let m = tile.min(n - p);
            let src = tile_rows(&x_rows, p, m, &mut stage);
            mix_rows::<F, D, _>(depth, coef, &src, &mut y, p);
            p += m;
        }
        return;
    }
    let mut p = 0;
    while p < n {
        let m = tile.min(n - p);
        let src = tile_rows(&x_rows, p, m, &mut stage);
        mix_rows::<F, D, _>(depth, coef, &src, &mut out, 0);
        for (o, row) in out.iter().zip(y_rows.iter_mut()) {
            writer.write(&o[..m], &mut row[p..p + m]);
        }
        p += m;
    }
    writer.finish();
}
multiversion!(forward_entry, forward_item, (a: &Forward<'_, T>, i: usize));

/// `depth` staging rows of `tile` pixels when `wanted`, else none.
fn staging(wanted: bool, depth: usize, tile: usize) -> Vec<Vec<f32>> {
    vec![vec![0.0f32; tile]; if wanted { depth } else { 0 }]
}

/// Inputs of one backward launch; `x` is present when `dw` is wanted, `dx` when `dx` is.
///
/// Unlike the forward, the backward writes `dx` with plain stores at every size: its pass
/// reads `2 * D` rows while it writes `D`, and on the Intel VM streaming stores of `dx` made
/// it slower on every tier (AVX2 at D = 7: 17.0-18.1 ms against 9.2-10.0 with plain stores;
/// bench/RESULTS.md, 2026-12-02).
struct Backward<'a, T> {
    items: Items,
    channels: usize,
    /// Per channel, the `[out d][in k]` coefficient matrix (`w` itself).
    coef: &'a [f32],
    x: Option<&'a [T]>,
    dy: &'a [T],
    dx: Option<SharedOut<T>>,
}

#[inline(always)]
fn backward_item<F: Tier, T: Element, const D: usize>(
    a: &Backward<'_, T>,
    i: usize,
    partial: Option<&mut [f64]>,
) {
    let it = a.items;
    let depth = depth_of::<D>(it.depth);
    let (bc, p0, n) = it.item(i);
    let coef = &a.coef[(bc % a.channels) * depth * depth..][..depth * depth];
    let dy_rows = it.rows(a.dy, bc, p0, n);
    let x_rows = match (&partial, a.x) {
        (Some(_), Some(x)) => Some(it.rows(x, bc, p0, n)),
        _ => None,
    };
    // SAFETY: as in `forward_item`: `dx` holds B*C*D*P elements and this item owns its range.
    let mut dx_rows =
        a.dx.map(|dx| unsafe { dx.rows_mut(bc, depth, it.pixels, p0, n) });
    let mut acc = vec![[0.0f32; LANES]; depth * depth];

    let tile = tile_pixels(depth);
    let staged = T::DTYPE != crate::DType::F32;
    let mut stage_dy = staging(staged, depth, tile);
    let mut stage_x = staging(staged && x_rows.is_some(), depth, tile);
    // f32: dx is mixed straight into its rows; half types are mixed into `out` and narrowed.
    let direct = T::DTYPE == crate::DType::F32;
    let mut out = staging(dx_rows.is_some() && !direct, depth, tile);
    let mut p = 0;
    while p < n {
        let m = tile.min(n - p);
        // The next tile's rows, while this one is computed: 2 * D planes are more streams than
        // the hardware prefetchers follow.
        let next = (p + m)..(p + 2 * m).min(n);
        for rows in [Some(&dy_rows), x_rows.as_ref()].into_iter().flatten() {
            for row in rows {
                prefetch_rows::<T, { PREFETCH_L1 }>(&[&row[next.clone()]]);
            }
        }
        let dy = tile_rows(&dy_rows, p, m, &mut stage_dy);
        if let Some(dx_rows) = dx_rows.as_mut() {
            if direct {
                let mut dx: TileRowsMut<'_> =
                    TileRowsMut::collect(dx_rows.iter_mut().filter_map(|r| T::as_f32_mut(r)));
                mix_rows::<F, D, _>(depth, coef, &dy, &mut dx, p);
            } else {
                mix_rows::<F, D, _>(depth, coef, &dy, &mut out, 0);
                for (o, row) in out.iter().zip(dx_rows.iter_mut()) {
                    T::store_f32(&o[..m], &mut row[p..p + m]);
                }
            }
        }
        if let Some(x_rows) = x_rows.as_ref() {
            let x = tile_rows(x_rows, p, m, &mut stage_x);
            accumulate_dw::<F, D>(depth, &x, &dy, &mut acc);
        }
        p += m;
    }
    if let Some(partial) = partial {
        for (slot, lanes) in partial.iter_mut().zip(&acc) {
            *slot = lanes.iter().map(|&v| v as f64).sum();
        }
    }
}
multiversion!(
    backward_entry,
    backward_item,
    (a: &Backward<'_, T>, i: usize, partial: Option<&mut [f64]>)
);

/// All channels' coefficient matrices, `[C][out][in]`.
fn coefficients(w: &[f32], depth: usize, channels: usize, transpose: bool) -> Vec<f32> {
    (0..channels)
        .flat_map(|c| channel_coef(w, depth, channels, c, transpose))
        .collect()
}

/// `y = fuse(x, w)`. `w` is `[D, D, C]` widened to f32; lengths are checked by the caller.
pub(crate) fn forward<T: Element>(dims: &FusionDims, x: &[T], w: &[f32], y: &mut [T]) {
    let items = Items::new(dims);
    debug_assert!(x.len() == dims.len() && y.len() == dims.len());
    let coef = coefficients(w, dims.depth, dims.channels, true);
    let args = Forward {
        items,
        channels: dims.channels,
        coef: &coef,
        x,
        y: SharedOut(y.as_mut_ptr()),
        stream: std::mem::size_of_val(y) >= STREAM_BYTES,
    };
    let run: fn(Isa, &Forward<'_, T>, usize) = by_depth!(dims.depth, forward_entry::<T>);
    // One tier for the whole launch, so a concurrent `set_isa_limit` cannot mix rounding modes.
    let isa = active_isa();
    (0..items.count)
        .into_par_iter()
        .for_each(|i| run(isa, &args, i));
}

/// Backward: writes `dx` when given, and `dw` (`[D, D, C]`) when given; `x` is only read for `dw`.
pub(crate) fn backward<T: Element>(
    dims: &FusionDims,
    x: &[T],
    w: &[f32],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: Option<&mut [T]>,
) {
    let items = Items::new(dims);
    let (depth, channels) = (dims.depth, dims.channels);
    let coef = coefficients(w, depth, channels, false);
    let want_dw = dw.is_some();
    let args = Backward {
        items,
        channels,
        coef: &coef,
        x: want_dw.then_some(x),
        dy,
        dx: dx.map(|dx| SharedOut(dx.as_mut_ptr())),
    };
    let run: fn(Isa, &Backward<'_, T>, usize, Option<&mut [f64]>) =
        by_depth!(depth, backward_entry::<T>);
    let isa = active_isa();
    let Some(dw) = dw else {
        (0..items.count)
            .into_par_iter()
            .for_each(|i| run(isa, &args, i, None));
        return;
    };
    let dd = depth * depth;
    let mut partials = vec![0.0f64; items.count * dd];
    if dd > 0 {
        partials
            .par_chunks_mut(dd)
            .enumerate()
            .for_each(|(i, slot)| run(isa, &args, i, Some(slot)));
    }
    // Fixed-order reduction: for channel c, items in (batch, chunk) order.
    let mut sums = vec![0.0f64; dd * channels];
    for b in 0..dims.batch {
        for c in 0..channels {
            let first = (b * channels + c) * items.chunks;
            for i in first..first + items.chunks {
                for (j, v) in partials[i * dd..(i + 1) * dd].iter().enumerate() {
                    sums[j * channels + c] += v;
                }
            }
        }
    }
    for (out, s) in dw.iter_mut().zip(&sums) {
        *out = T::from_f32(*s as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::tier::Baseline;

    /// The constant-depth accumulation gives the same bits as the general path, for even and
    /// odd depths and a pixel count that is not a multiple of the lane width.
    #[test]
    fn constant_depth_dw_equals_the_general_path() {
        fn check<const D: usize>() {
            let mut rng = crate::rng::SplitMix64::new(D as u64);
            let n = 16 * 5 + 7;
            let rows: Vec<Vec<f32>> = (0..2 * D).map(|_| rng.vec_f32(n, -1.0, 1.0)).collect();
            let x: Vec<&[f32]> = rows[..D].iter().map(|r| &r[..]).collect();
            let dy: Vec<&[f32]> = rows[D..].iter().map(|r| &r[..]).collect();
            let start = vec![[0.25f32; LANES]; D * D];
            let bits = |a: &[Lanes]| a.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
            let (mut fixed, mut general) = (start.clone(), start.clone());
            accumulate_dw::<Baseline, D>(D, &x, &dy, &mut fixed);
            accumulate_dw::<Baseline, 0>(D, &x, &dy, &mut general);
            assert_eq!(bits(&fixed), bits(&general), "baseline, D = {D}");
            // The other tiers' blockings (their multiply-adds are fused: `f32::mul_add`, exact
            // in software where the CPU lacks FMA).
            #[cfg(target_arch = "x86_64")]
            {
                use crate::cpu::tier::{Avx2, Avx512};
                let (mut fixed, mut general) = (start.clone(), start.clone());
                accumulate_dw::<Avx2, D>(D, &x, &dy, &mut fixed);
                accumulate_dw::<Avx2, 0>(D, &x, &dy, &mut general);
                assert_eq!(bits(&fixed), bits(&general), "avx2, D = {D}");
                let mut wide = start.clone();
                accumulate_dw::<Avx512, D>(D, &x, &dy, &mut wide);
                assert_eq!(bits(&wide), bits(&general), "avx512 against avx2, D = {D}");
            }
        }
        check::<1>();
        check::<2>();
        check::<3>();
        check::<5>();
        check::<7>();
        check::<13>();
        check::<16>();
    }
}
