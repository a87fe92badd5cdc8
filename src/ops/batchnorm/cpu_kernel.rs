//! CPU batch-norm statistics and BN-ReLU. Work items are fixed chunks of one (batch, channel)
//! plane; per-item float64 partial sums are reduced per channel in item order, so the sums are
//! the same bits for any thread count.

use super::Affine;
use crate::dtype::f32_values;
use crate::Element;
use rayon::prelude::*;

/// Values per work item (fixed: the reduction order depends on it).
const CHUNK: usize = 16384;

/// `(plane index b * C + c, first value, count)` of every item.
fn items(
    b: usize,
    c: usize,
    rest: usize,
) -> impl IndexedParallelIterator<Item = (usize, usize, usize)> {
    let per = rest.div_ceil(CHUNK).max(1);
    (0..b * c * per).into_par_iter().map(move |i| {
        let (plane, k) = (i / per, i % per);
        let start = (k * CHUNK).min(rest);
        (plane, start, CHUNK.min(rest - start))
    })
}

/// Per-channel sum and sum of squares in float64.
pub(crate) fn sums<T: Element>(x: &[T], b: usize, c: usize, rest: usize) -> (Vec<f64>, Vec<f64>) {
    let partials: Vec<(usize, f64, f64)> = items(b, c, rest)
        .map_init(Vec::new, |buf, (plane, start, n)| {
            let v = f32_values(&x[plane * rest + start..][..n], buf);
            // Eight f64 lanes: vectorisable, and a fixed order.
            let (mut s, mut q) = ([0.0f64; 8], [0.0f64; 8]);
            for chunk in v.chunks(8) {
                for (l, &a) in chunk.iter().enumerate() {
                    let a = a as f64;
                    s[l] += a;
                    q[l] += a * a;
                }
            }
            (plane % c, s.iter().sum(), q.iter().sum())
        })
        .collect();
    let (mut sum, mut sumsq) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (ch, s, q) in partials {
        sum[ch] += s;
        sumsq[ch] += q;
    }
    (sum, sumsq)
}

pub(crate) fn forward<T: Element>(
    x: &[T],
    a: &Affine,
    _b: usize,
    c: usize,
    rest: usize,
    y: &mut [T],
) {
    if rest == 0 {
        return;
    }
    y.par_chunks_mut(rest)
        .zip(x.par_chunks(rest))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(buf, out): &mut (Vec<f32>, Vec<f32>), (plane, (dst, src))| {
                let (s, t) = (a.scale[plane % c], a.shift[plane % c]);
                for (d, v) in dst.chunks_mut(CHUNK).zip(src.chunks(CHUNK)) {
                    let v = f32_values(v, buf);
                    out.clear();
                    out.extend(v.iter().map(|&x| (x * s + t).max(0.0)));
                    T::store_f32(out, d);
                }
            },
        );
}

/// `dx` into `dx`; returns `(d_scale, d_shift)`.
pub(crate) fn backward<T: Element>(
    x: &[T],
    a: &Affine,
    dy: &[T],
    b: usize,
    c: usize,
    rest: usize,
    dx: &mut [T],
) -> (Vec<f32>, Vec<f32>) {
    if rest == 0 {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let per = rest.div_ceil(CHUNK);
    // Items are (plane, chunk) in order; each writes its chunk of dx and returns its partials.
    let partials: Vec<(f64, f64)> = dx
        .par_chunks_mut(rest)
        .enumerate()
        .flat_map_iter(|(plane, dst)| {
            let (s, t) = (a.scale[plane % c], a.shift[plane % c]);
            let (xs, gs) = (&x[plane * rest..][..rest], &dy[plane * rest..][..rest]);
            let mut out = Vec::with_capacity(per);
            let (mut xb, mut gb) = (Vec::new(), Vec::new());
            for ((d, xv), gv) in dst
                .chunks_mut(CHUNK)
                .zip(xs.chunks(CHUNK))
                .zip(gs.chunks(CHUNK))
            {
                let (xv, gv) = (f32_values(xv, &mut xb), f32_values(gv, &mut gb));
                let (mut ls, mut lt) = ([0.0f32; 16], [0.0f32; 16]);
                let mut g: Vec<f32> = Vec::with_capacity(xv.len());
                for (xc, gc) in xv.chunks(16).zip(gv.chunks(16)) {
                    for (l, (&xe, &ge)) in xc.iter().zip(gc).enumerate() {
                        let m = if xe * s + t > 0.0 { ge } else { 0.0 };
                        g.push(m * s);
                        ls[l] += m * xe;
                        lt[l] += m;
                    }
                }
                let ds: f64 = ls.iter().map(|&v| v as f64).sum();
                let dt: f64 = lt.iter().map(|&v| v as f64).sum();
                T::store_f32(&g, d);
                out.push((ds, dt));
            }
            out.into_iter()
        })
        .collect();
    let (mut ds, mut dt) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (i, (s, t)) in partials.into_iter().enumerate() {
        let ch = (i / per) % c;
        ds[ch] += s;
        dt[ch] += t;
    }
    let _ = b;
    (
        ds.into_iter().map(|v| v as f32).collect(),
        dt.into_iter().map(|v| v as f32).collect(),
    )
}

/// `(sum dy * m * x, sum dy * m)` per channel, `m = [x * s + t > 0]`, in float64 (fixed order).
pub(crate) fn masked_sums<T: Element>(
    x: &[T],
    a: &Affine,
    dy: &[T],
    b: usize,
    c: usize,
    rest: usize,
) -> (Vec<f64>, Vec<f64>) {
    let partials: Vec<(usize, f64, f64)> = items(b, c, rest)
        .map_init(
            || (Vec::new(), Vec::new()),
            |(xb, gb), (plane, start, n)| {
                let ch = plane % c;
                let (s, t) = (a.scale[ch], a.shift[ch]);
                let xv = f32_values(&x[plane * rest + start..][..n], xb);
                let gv = f32_values(&dy[plane * rest + start..][..n], gb);
                // 16 f32 lanes per chunk (a select for the mask: no branch), added in f64.
                let (mut ls, mut lt) = ([0.0f32; 16], [0.0f32; 16]);
                for (xc, gc) in xv.chunks(16).zip(gv.chunks(16)) {
                    for (l, (&xe, &ge)) in xc.iter().zip(gc).enumerate() {
                        let m = if xe * s + t > 0.0 { ge } else { 0.0 };
                        ls[l] += m * xe;
                        lt[l] += m;
                    }
                }
                let ds: f64 = ls.iter().map(|&v| v as f64).sum();
                let dt: f64 = lt.iter().map(|&v| v as f64).sum();
                (ch, ds, dt)
            },
        )
        .collect();
    let (mut ds, mut dt) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (ch, s, t) in partials {
        ds[ch] += s;
        dt[ch] += t;
    }
    (ds, dt)
}

/// `dx = m * dy * s + p[c] * x + q[c]`: the training-mode input gradient (the direct term plus
/// the terms through the batch mean and variance, folded into `p` and `q` per channel).
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_input_grad<T: Element>(
    x: &[T],
    a: &Affine,
    dy: &[T],
    p: &[f32],
    q: &[f32],
    c: usize,
    rest: usize,
    dx: &mut [T],
) {
    if rest == 0 {
        return;
    }
    dx.par_chunks_mut(rest).enumerate().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(xb, gb, out), (plane, dst)| {
            let ch = plane % c;
            let (s, t, pc, qc) = (a.scale[ch], a.shift[ch], p[ch], q[ch]);
            let (xs, gs) = (&x[plane * rest..][..rest], &dy[plane * rest..][..rest]);
            for ((d, xv), gv) in dst
                .chunks_mut(CHUNK)
                .zip(xs.chunks(CHUNK))
                .zip(gs.chunks(CHUNK))
            {
                let (xv, gv) = (f32_values(xv, xb), f32_values(gv, gb));
                out.clear();
                out.extend(xv.iter().zip(gv).map(|(&xe, &ge)| {
                    let m = if xe * s + t > 0.0 { ge } else { 0.0 };
                    m * s + pc * xe + qc
                }));
                T::store_f32(out, d);
            }
        },
    );
}

/// `dx += p[c] * x + q[c]` in place.
pub(crate) fn add_affine_of<T: Element>(
    x: &[T],
    p: &[f32],
    q: &[f32],
    c: usize,
    rest: usize,
    dx: &mut [T],
) {
    if rest == 0 {
        return;
    }
    dx.par_chunks_mut(rest).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(xb, gb): &mut (Vec<f32>, Vec<f32>), (plane, dst)| {
            let ch = plane % c;
            let (pc, qc) = (p[ch], q[ch]);
            let xs = &x[plane * rest..][..rest];
            for (d, xv) in dst.chunks_mut(CHUNK).zip(xs.chunks(CHUNK)) {
                let xv = f32_values(xv, xb);
                gb.resize(d.len(), 0.0);
                T::load_f32(d, gb);
                for (g, &xe) in gb.iter_mut().zip(xv) {
                    *g += pc * xe + qc;
                }
                T::store_f32(gb, d);
            }
        },
    );
}
