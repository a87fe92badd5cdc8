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
use crate::Element;
use rayon::prelude::*;

/// Pixels per work item. Fixed: the `dw` reduction order depends on it.
pub(crate) const CHUNK_PIXELS: usize = 8192;
/// Width of the vectorised pixel blocks (and of the `dw` lane accumulators).
const LANES: usize = 16;

/// Pixels per staging tile for `depth`: a few tiles of `depth` rows stay in L1.
fn tile_pixels(depth: usize) -> usize {
    ((2048 / depth.max(1)) / LANES * LANES).clamp(64, 512)
}

/// Multiply-add `a * b + c`: fused where the instruction set has FMA, separate otherwise (a
/// software `fma` call would be far slower than two instructions).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding (`vfmadd`); used by the AVX2 and AVX-512 instantiations.
struct Fused;
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Two roundings; used by the baseline instantiation.
struct Separate;
impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `dst[o][dst_off + p] = sum_i coef[o * depth + i] * src[i][src_off + p]` for `p < n`.
#[inline(always)]
fn mix_rows<F: MulAdd, S: AsRef<[f32]>, M: AsMut<[f32]>>(
    depth: usize,
    coef: &[f32],
    src: &[S],
    src_off: usize,
    dst: &mut [M],
    dst_off: usize,
    n: usize,
) {
    let coef = &coef[..depth * depth];
    let (src, dst) = (&src[..depth], &mut dst[..depth]);
    let full = n / LANES * LANES;
    let mut p = 0;
    while p < full {
        for (o, out) in dst.iter_mut().enumerate() {
            let mut acc = [0.0f32; LANES];
            for (i, row) in src.iter().enumerate() {
                let c = coef[o * depth + i];
                let s = &row.as_ref()[src_off + p..][..LANES];
                for l in 0..LANES {
                    acc[l] = F::mul_add(c, s[l], acc[l]);
                }
            }
            out.as_mut()[dst_off + p..][..LANES].copy_from_slice(&acc);
        }
        p += LANES;
    }
    for p in full..n {
        for (o, out) in dst.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for (i, row) in src.iter().enumerate() {
                acc = F::mul_add(coef[o * depth + i], row.as_ref()[src_off + p], acc);
            }
            out.as_mut()[dst_off + p] = acc;
        }
    }
}

/// Lane accumulators of `dw` for one item: `[d * depth + k][lane]`.
type DwLanes = [f32; LANES];

/// `acc[d * depth + k][p % LANES] += x[d][p] * dy[k][p]` over the `n` pixels: a fixed order,
/// whatever thread runs it. With a constant depth `D` the `depth` accumulators of one `d` row
/// live in registers for the whole pixel loop.
#[inline(always)]
fn accumulate_dw<F: MulAdd, const D: usize, S: AsRef<[f32]>>(
    depth: usize,
    x: &[S],
    x_off: usize,
    dy: &[S],
    dy_off: usize,
    n: usize,
    acc: &mut [DwLanes],
) {
    let dy: Vec<&[f32]> = dy[..depth]
        .iter()
        .map(|r| &r.as_ref()[dy_off..dy_off + n])
        .collect();
    for (d, xr) in x[..depth].iter().enumerate() {
        let xr = &xr.as_ref()[x_off..x_off + n];
        let row = &mut acc[d * depth..(d + 1) * depth];
        if D > 0 {
            let mut local = [[0.0f32; LANES]; D];
            local.copy_from_slice(row);
            accumulate_dw_row::<F>(xr, &dy, &mut local);
            row.copy_from_slice(&local);
        } else {
            accumulate_dw_row::<F>(xr, &dy, row);
        }
    }
}

#[inline(always)]
fn accumulate_dw_row<F: MulAdd>(xr: &[f32], dy: &[&[f32]], row: &mut [DwLanes]) {
    let n = xr.len();
    let full = n / LANES * LANES;
    let mut p = 0;
    while p < full {
        let xv = &xr[p..p + LANES];
        for (a, yr) in row.iter_mut().zip(dy) {
            let yv = &yr[p..p + LANES];
            for l in 0..LANES {
                a[l] = F::mul_add(xv[l], yv[l], a[l]);
            }
        }
        p += LANES;
    }
    for (l, p) in (full..n).enumerate() {
        for (a, yr) in row.iter_mut().zip(dy) {
            a[l] = F::mul_add(xr[p], yr[p], a[l]);
        }
    }
}

/// A raw output pointer shared by the items of one launch.
#[derive(Clone, Copy)]
struct SharedOut<T>(*mut T);
// SAFETY: items write disjoint index ranges (see `rows_mut`), so sharing the pointer between
// threads cannot create overlapping accesses.
unsafe impl<T: Send> Send for SharedOut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// The `depth` rows of item `(bc, p0..p0+n)` of a `[.., depth, pixels]` buffer.
    ///
    /// # Safety
    /// The buffer must hold at least `(bc + 1) * depth * pixels` elements, `p0 + n <= pixels`,
    /// and no other live reference may cover these rows' ranges (each item calls this once).
    unsafe fn rows_mut<'a>(
        self,
        bc: usize,
        depth: usize,
        pixels: usize,
        p0: usize,
        n: usize,
    ) -> Vec<&'a mut [T]> {
        (0..depth)
            .map(|d| {
                // SAFETY: in bounds and exclusive by this function's contract.
                unsafe {
                    std::slice::from_raw_parts_mut(self.0.add((bc * depth + d) * pixels + p0), n)
                }
            })
            .collect()
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

/// Selects the instantiation of `$f::<$t, D>` for a runtime depth: a constant D for 1..=16
/// (loops fully unrolled), `D = 0` (depth read at run time) beyond.
macro_rules! by_depth {
    ($depth:expr, $f:ident::<$t:ty>) => {
        match $depth {
            1 => $f::<$t, 1> as _,
            2 => $f::<$t, 2> as _,
            3 => $f::<$t, 3> as _,
            4 => $f::<$t, 4> as _,
            5 => $f::<$t, 5> as _,
            6 => $f::<$t, 6> as _,
            7 => $f::<$t, 7> as _,
            8 => $f::<$t, 8> as _,
            9 => $f::<$t, 9> as _,
            10 => $f::<$t, 10> as _,
            11 => $f::<$t, 11> as _,
            12 => $f::<$t, 12> as _,
            13 => $f::<$t, 13> as _,
            14 => $f::<$t, 14> as _,
            15 => $f::<$t, 15> as _,
            16 => $f::<$t, 16> as _,
            _ => $f::<$t, 0> as _,
        }
    };
}

/// Instruction-set tier of this CPU, detected once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    })
}

/// Defines `$entry::<T, D>`, which runs `$body::<F, T, D>` through the widest instantiation this
/// CPU supports: AVX-512 or AVX2 (with FMA and F16C, `F = Fused`), or baseline (`F = Separate`).
macro_rules! multiversion {
    ($entry:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $entry<T: Element, const D: usize>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
                unsafe fn avx512<T: Element, const D: usize>($($arg: $ty),*) {
                    $body::<Fused, T, D>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2<T: Element, const D: usize>($($arg: $ty),*) {
                    $body::<Fused, T, D>($($arg),*)
                }
                match isa() {
                    // SAFETY: `isa()` detected every feature this instantiation is built for.
                    Isa::Avx512 => return unsafe { avx512::<T, D>($($arg),*) },
                    // SAFETY: as above.
                    Isa::Avx2 => return unsafe { avx2::<T, D>($($arg),*) },
                    Isa::Baseline => {}
                }
            }
            $body::<Separate, T, D>($($arg),*)
        }
    };
}

/// The depth an instantiation runs with: its constant, or the runtime value for `D = 0`.
#[inline(always)]
const fn depth_of<const D: usize>(runtime: usize) -> usize {
    if D == 0 {
        runtime
    } else {
        D
    }
}

/// Inputs of one forward launch.
struct Forward<'a, T> {
    items: Items,
    channels: usize,
    /// Per channel, the `[out k][in d]` coefficient matrix (`w` transposed).
    coef: &'a [f32],
    x: &'a [T],
    y: SharedOut<T>,
}

#[inline(always)]
fn forward_item<F: MulAdd, T: Element, const D: usize>(a: &Forward<'_, T>, i: usize) {
    let it = a.items;
    let depth = depth_of::<D>(it.depth);
    let (bc, p0, n) = it.item(i);
    let coef = &a.coef[(bc % a.channels) * depth * depth..][..depth * depth];
    let x_rows = it.rows(a.x, bc, p0, n);
    // SAFETY: `y` holds B*C*D*P elements (checked by the caller) and item `i` is the only one
    // covering pixels p0..p0+n of plane pair `bc`.
    let mut y_rows = unsafe { a.y.rows_mut(bc, depth, it.pixels, p0, n) };
    if T::DTYPE == crate::DType::F32 {
        let src: Vec<&[f32]> = x_rows.iter().filter_map(|r| T::as_f32(r)).collect();
        let mut dst: Vec<&mut [f32]> = y_rows.iter_mut().filter_map(|r| T::as_f32_mut(r)).collect();
        mix_rows::<F, _, _>(depth, coef, &src, 0, &mut dst, 0, n);
        return;
    }
    let tile = tile_pixels(depth);
    let mut stage_in = vec![vec![0.0f32; tile]; depth];
    let mut stage_out = vec![vec![0.0f32; tile]; depth];
    let mut p = 0;
    while p < n {
        let m = tile.min(n - p);
        for (st, row) in stage_in.iter_mut().zip(&x_rows) {
            T::load_f32(&row[p..p + m], &mut st[..m]);
        }
        mix_rows::<F, _, _>(depth, coef, &stage_in, 0, &mut stage_out, 0, m);
        for (st, row) in stage_out.iter().zip(y_rows.iter_mut()) {
            T::store_f32(&st[..m], &mut row[p..p + m]);
        }
        p += m;
    }
}
multiversion!(forward_entry, forward_item, (a: &Forward<'_, T>, i: usize));

/// Inputs of one backward launch; `x` is present when `dw` is wanted, `dx` when `dx` is.
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
fn backward_item<F: MulAdd, T: Element, const D: usize>(
    a: &Backward<'_, T>,
    i: usize,
    partial: Option<&mut [f64]>,
) {
    let it = a.items;
    let depth = depth_of::<D>(it.depth);
    let (bc, p0, n) = it.item(i);
    let coef = &a.coef[(bc % a.channels) * depth * depth..][..depth * depth];
    let dy_rows = it.rows(a.dy, bc, p0, n);
    let x_rows = a.x.map(|x| it.rows(x, bc, p0, n));
    // SAFETY: as in `forward_item`: `dx` holds B*C*D*P elements and this item owns its range.
    let mut dx_rows =
        a.dx.map(|dx| unsafe { dx.rows_mut(bc, depth, it.pixels, p0, n) });
    let mut acc = vec![[0.0f32; LANES]; depth * depth];
    let want_dw = partial.is_some() && x_rows.is_some();

    let tile = tile_pixels(depth);
    if T::DTYPE == crate::DType::F32 {
        let dy: Vec<&[f32]> = dy_rows.iter().filter_map(|r| T::as_f32(r)).collect();
        let x: Option<Vec<&[f32]>> = x_rows
            .as_ref()
            .map(|rows| rows.iter().filter_map(|r| T::as_f32(r)).collect());
        let mut dx: Option<Vec<&mut [f32]>> = dx_rows
            .as_mut()
            .map(|rows| rows.iter_mut().filter_map(|r| T::as_f32_mut(r)).collect());
        let mut p = 0;
        while p < n {
            let m = tile.min(n - p);
            if let Some(dx) = dx.as_mut() {
                mix_rows::<F, _, _>(depth, coef, &dy, p, dx, p, m);
            }
            if let (true, Some(x)) = (want_dw, x.as_ref()) {
                accumulate_dw::<F, D, _>(depth, x, p, &dy, p, m, &mut acc);
            }
            p += m;
        }
    } else {
        let mut stage_dy = vec![vec![0.0f32; tile]; depth];
        let mut stage_x = vec![vec![0.0f32; tile]; if want_dw { depth } else { 0 }];
        let mut stage_dx = vec![vec![0.0f32; tile]; if dx_rows.is_some() { depth } else { 0 }];
        let mut p = 0;
        while p < n {
            let m = tile.min(n - p);
            for (st, row) in stage_dy.iter_mut().zip(&dy_rows) {
                T::load_f32(&row[p..p + m], &mut st[..m]);
            }
            if let Some(dx_rows) = dx_rows.as_mut() {
                mix_rows::<F, _, _>(depth, coef, &stage_dy, 0, &mut stage_dx, 0, m);
                for (st, row) in stage_dx.iter().zip(dx_rows.iter_mut()) {
                    T::store_f32(&st[..m], &mut row[p..p + m]);
                }
            }
            if let (true, Some(x_rows)) = (want_dw, x_rows.as_ref()) {
                for (st, row) in stage_x.iter_mut().zip(x_rows) {
                    T::load_f32(&row[p..p + m], &mut st[..m]);
                }
                accumulate_dw::<F, D, _>(depth, &stage_x, 0, &stage_dy, 0, m, &mut acc);
            }
            p += m;
        }
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
    };
    let run: fn(&Forward<'_, T>, usize) = by_depth!(dims.depth, forward_entry::<T>);
    (0..items.count).into_par_iter().for_each(|i| run(&args, i));
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
    let run: fn(&Backward<'_, T>, usize, Option<&mut [f64]>) =
        by_depth!(depth, backward_entry::<T>);
    let Some(dw) = dw else {
        (0..items.count)
            .into_par_iter()
            .for_each(|i| run(&args, i, None));
        return;
    };
    let dd = depth * depth;
    let mut partials = vec![0.0f64; items.count * dd];
    if dd > 0 {
        partials
            .par_chunks_mut(dd)
            .enumerate()
            .for_each(|(i, slot)| run(&args, i, Some(slot)));
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
