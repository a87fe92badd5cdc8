//! CPU kernel of the shift operators. Every output row `(b, c, d)` is one of: a copy of an
//! input row (pass-through channels, and TSM everywhere), zeros (TSM's open ends), or
//! `s * in[d] + n * in[d']` in f32 (AlignShift). Copies move the stored bits (no conversion for
//! f16 / bf16) with the tier's streaming stores when the output is large, so the op runs at the
//! speed of a copy. Items are `(plane pair, pixel chunk)`; nothing is reduced, so the result is
//! the same for any thread count.

use super::ShiftPlan;
use crate::cpu::tier::{multiversion, stream_copy, SharedOut, Tier, STREAM_BYTES};
use crate::cpu::{active_isa, Isa};
use crate::Element;
use rayon::prelude::*;

/// Pixels per work item.
const CHUNK_PIXELS: usize = 16384;
/// Pixels per f32 tile of a mixed row (three rows of it stay in L1).
const TILE: usize = 1024;

/// Which map a launch applies: the operator or its transpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// `y = shift(x)`.
    Forward,
    /// `dx = shift^T(dy)`.
    Backward,
}

/// How output row `d` of channel `c`, sample `b`, is made from the input rows of its plane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RowTerms {
    /// All zeros.
    Zero,
    /// `s * in[own] + n * in[neighbour]`; a `None` term is absent (out of range or a zero
    /// coefficient).
    Mix {
        own: Option<f32>,
        neighbour: Option<(usize, f32)>,
    },
}

/// The terms of output row `d` (see the module documentation of `shift`). Group 0 (`c < fold`)
/// reads slice `d + 1` forward, group 1 (`fold <= c < 2 fold`) slice `d - 1`; the transpose
/// reads the other way, with the same own-slice coefficient.
pub(crate) fn row_terms(
    plan: &ShiftPlan,
    direction: Direction,
    b: usize,
    c: usize,
    d: usize,
) -> RowTerms {
    let depth = plan.dims.depth;
    let group = if c < plan.fold {
        0
    } else if c < 2 * plan.fold {
        1
    } else {
        return RowTerms::Mix {
            own: Some(1.0),
            neighbour: None,
        };
    };
    let [a, n, e] = plan.coef[b];
    let open_end = if group == 0 { depth - 1 } else { 0 };
    let own = if d == open_end { e } else { a };
    let reads_next = (group == 0) == (direction == Direction::Forward);
    let neighbour = if reads_next {
        (d + 1 < depth).then(|| d + 1)
    } else {
        d.checked_sub(1)
    };
    let own = (own != 0.0).then_some(own);
    let neighbour = neighbour.filter(|_| n != 0.0).map(|nd| (nd, n));
    match (own, neighbour) {
        (None, None) => RowTerms::Zero,
        _ => RowTerms::Mix { own, neighbour },
    }
}

struct Launch<'a, T> {
    plan: &'a ShiftPlan,
    direction: Direction,
    chunks: usize,
    input: &'a [T],
    out: SharedOut<T>,
    stream: bool,
}

#[inline(always)]
fn shift_item<F: Tier, T: Element, const UNUSED: usize>(a: &Launch<'_, T>, i: usize) {
    let dims = &a.plan.dims;
    let (depth, pixels, channels) = (dims.depth, dims.pixels, dims.channels);
    let (bc, chunk) = (i / a.chunks, i % a.chunks);
    let (b, c) = (bc / channels, bc % channels);
    let p0 = chunk * CHUNK_PIXELS;
    let len = CHUNK_PIXELS.min(pixels - p0);
    let row = |d: usize| &a.input[(bc * depth + d) * pixels + p0..][..len];
    // SAFETY: `out` holds B*C*D*P elements (checked by the caller) and item `i` is the only one
    // writing pixels p0..p0+len of plane pair `bc`.
    let mut out_rows = unsafe { a.out.rows_mut(bc, depth, pixels, p0, len) };
    let mut stage = Vec::new();
    for (d, dst) in out_rows.iter_mut().enumerate() {
        match row_terms(a.plan, a.direction, b, c, d) {
            RowTerms::Zero => dst.fill(T::from_f32(0.0)),
            RowTerms::Mix {
                own: Some(1.0),
                neighbour: None,
            } => copy::<F, T>(dst, row(d), a.stream),
            RowTerms::Mix {
                own: None,
                neighbour: Some((nd, 1.0)),
            } => copy::<F, T>(dst, row(nd), a.stream),
            RowTerms::Mix { own, neighbour } => mix_row::<F, T>(
                dst,
                own.map(|s| (row(d), s)),
                neighbour.map(|(nd, n)| (row(nd), n)),
                &mut stage,
                a.stream,
            ),
        }
    }
    #[cfg(target_arch = "x86_64")]
    if a.stream {
        // SAFETY: `sfence` has no memory operands; SSE is part of the x86-64 baseline. It orders
        // this item's streaming stores before the launch returns.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
}
multiversion!(shift_entry, shift_item, (a: &Launch<'_, T>, i: usize));

#[inline(always)]
fn copy<F: Tier, T: Element>(dst: &mut [T], src: &[T], stream: bool) {
    if stream {
        stream_copy::<F, T>(dst, src);
    } else {
        dst.copy_from_slice(src);
    }
}

/// `out = s * own + n * neighbour` over f32 slices of one length (absent terms left out).
#[inline(always)]
fn mix_f32<F: Tier>(out: &mut [f32], own: Option<(&[f32], f32)>, neighbour: Option<(&[f32], f32)>) {
    match (own, neighbour) {
        (Some((x, s)), Some((y, n))) => {
            for ((o, &u), &v) in out.iter_mut().zip(x).zip(y) {
                *o = F::mul_add(s, u, n * v);
            }
        }
        (Some((x, s)), None) | (None, Some((x, s))) => {
            for (o, &u) in out.iter_mut().zip(x) {
                *o = s * u;
            }
        }
        (None, None) => out.fill(0.0),
    }
}

/// An f32 storage row as f32 (`None` for other dtypes or an absent term).
#[inline(always)]
fn as_f32_term<T: Element>(t: Option<(&[T], f32)>) -> Option<(&[f32], f32)> {
    t.and_then(|(r, c)| T::as_f32(r).map(|r| (r, c)))
}

/// Pixels `p..p + m` of a term.
#[inline(always)]
fn cut(t: Option<(&[f32], f32)>, p: usize, m: usize) -> Option<(&[f32], f32)> {
    t.map(|(r, c)| (&r[p..p + m], c))
}

/// `dst = s * own + n * neighbour` (absent terms left out) in f32. f32 rows are mixed in place
/// (through an L1 tile and streaming stores when the output is large); 16-bit rows are widened
/// tile by tile into `stage`.
#[inline(always)]
fn mix_row<F: Tier, T: Element>(
    dst: &mut [T],
    own: Option<(&[T], f32)>,
    neighbour: Option<(&[T], f32)>,
    stage: &mut Vec<f32>,
    stream: bool,
) {
    let (own32, nb32) = (as_f32_term(own), as_f32_term(neighbour));
    let complete = own32.is_some() == own.is_some() && nb32.is_some() == neighbour.is_some();
    if complete && !stream {
        if let Some(out) = T::as_f32_mut(dst) {
            mix_f32::<F>(out, own32, nb32);
            return;
        }
    }
    if stage.is_empty() {
        stage.resize(3 * TILE, 0.0);
    }
    let (sa, rest) = stage.split_at_mut(TILE);
    let (sb, so) = rest.split_at_mut(TILE);
    let mut p = 0;
    while p < dst.len() {
        let m = TILE.min(dst.len() - p);
        let widen = |t: Option<(&[T], f32)>, buf: &mut [f32]| {
            t.map(|(r, c)| {
                T::load_f32(&r[p..p + m], &mut buf[..m]);
                c
            })
        };
        let out = &mut so[..m];
        if complete {
            mix_f32::<F>(out, cut(own32, p, m), cut(nb32, p, m));
        } else {
            let s = widen(own, sa);
            let n = widen(neighbour, sb);
            mix_f32::<F>(out, s.map(|c| (&sa[..m], c)), n.map(|c| (&sb[..m], c)));
        }
        match T::f32_as_self(out) {
            Some(same) if stream => stream_copy::<F, T>(&mut dst[p..p + m], same),
            _ => T::store_f32(out, &mut dst[p..p + m]),
        }
        p += m;
    }
}

/// Applies the shift (or its transpose) of `plan` to `input`, writing every element of `out`.
/// Lengths are checked by the caller.
pub(crate) fn shift<T: Element>(
    plan: &ShiftPlan,
    direction: Direction,
    input: &[T],
    out: &mut [T],
) {
    let dims = &plan.dims;
    debug_assert!(input.len() == dims.len() && out.len() == dims.len());
    let chunks = dims.pixels.div_ceil(CHUNK_PIXELS);
    let args = Launch {
        plan,
        direction,
        chunks,
        input,
        stream: std::mem::size_of_val(out) >= STREAM_BYTES,
        out: SharedOut(out.as_mut_ptr()),
    };
    let isa: Isa = active_isa();
    (0..dims.batch * dims.channels * chunks)
        .into_par_iter()
        .for_each(|i| shift_entry::<T, 0>(isa, &args, i));
}
