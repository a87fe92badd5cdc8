//! CPU path of A3DConv.
//!
//! Work is split into tasks of one batch item and a slab of rows (of the output for the forward
//! pass and the weight gradient, of the input for the input gradient), covering every slice.
//! A slab is sized so that its working set stays in L2:
//!
//! - forward: the fusion of the input rows the slab reads, for all D slices, into a local block
//!   (mixing once per slab; the fused tensor never exists in memory). Then per slice an im2col
//!   slab `[C*kh*kw, rows*W']` times the weight `[O, C*kh*kw]` (the `gemm` crate,
//!   single-threaded inside a rayon task), written straight into `y`'s strided `[O, rows*W']`
//!   block. A 1x1 stride-1 unpadded convolution skips the im2col: the fused block is the operand.
//! - input gradient: the transposed convolution as a *gather*: a slab of input rows collects,
//!   for every `(o, tap)`, the `dy` value that tap read from (zero where none did), and one GEMM
//!   with the weight `[C, O*kh*kw]` gives `dz` for those rows. Then the fusion's backward for the
//!   same rows: `dx` directly, and the fusion weights' partial sums. No scatter: every element is
//!   written once, by one task.
//! - weight gradients: `dy` slab times the im2col slab transposed, and the fusion weights'
//!   `x * dz` sums, accumulated per fixed group of consecutive tasks; groups are added in f64 in
//!   group order. The grouping depends only on the problem's sizes, never on the thread count,
//!   so the results are bitwise reproducible.
//! - bias gradient: per output channel, eight f64 lanes in a fixed order.
//!
//! This file holds the shared pieces and the forward pass; `geometry.rs` the slab plan and
//! the per-slab building blocks, `backward.rs` the gradients, `direct.rs` the AVX-512 direct
//! convolution.

pub(crate) use super::backward::backward;
#[cfg(target_arch = "x86_64")]
use super::direct::DirectPlan;
#[cfg(target_arch = "x86_64")]
use super::geometry::mix_row;
use super::geometry::Geometry;
use super::A3dConvDims;
use crate::batchnorm::Affine;
use crate::Result;
use rayon::prelude::*;

/// Working set of one task (im2col slab plus fused block) that stays in a 2 MiB L2 beside the
/// GEMM's packed panels.
pub(super) const SLAB_BYTES: usize = 3 << 19;
/// Slabs are made smaller, down to one row, until a problem has this many tasks: enough to
/// balance a few cores on small planes.
pub(super) const MIN_TASKS: usize = 16;
/// Upper bound on the groups of the weight-gradient reductions (each keeps a partial sum).
pub(super) const MAX_GROUPS: usize = 64;
/// Memory the weight-gradient partial sums may take together.
pub(super) const PARTIALS_BYTES: usize = 256 << 20;

/// The gradients [`backward`] computed, f32, in the layouts of `x`, `[O, C, kh, kw]`, `[O]` and
/// `[D, D, C]`.
pub(crate) struct RawGradients {
    pub dx: Option<Vec<f32>>,
    pub d_conv_weight: Option<Vec<f32>>,
    pub d_bias: Option<Vec<f32>>,
    pub d_fusion_weight: Option<Vec<f32>>,
    /// With a prologue: `(d_scale, d_shift)`, `[C]` each.
    pub d_prologue: Option<(Vec<f32>, Vec<f32>)>,
}

pub(super) use crate::ops::common::zeroed_f32 as alloc;

/// A pointer that rayon tasks may share; each task writes a disjoint part of the buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: only used to hand disjoint output regions to tasks; see each use.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the raw field).
    pub(crate) fn ptr(self) -> *mut f32 {
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
pub(crate) unsafe fn matmul(
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

/// Row length of a direct convolution's padded planes whose taps reach `reach` columns (the
/// same rounding as `DirectPlan`).
pub(super) fn padded_width(reach: usize) -> usize {
    (reach + 15).div_ceil(16) * 16
}

/// Whether this problem runs the direct AVX-512 convolution.
pub(super) fn direct_supported(dims: &A3dConvDims) -> bool {
    cfg!(target_arch = "x86_64")
        && crate::cpu::active_isa() == crate::cpu::Isa::Avx512
        && dims.params.stride == [1, 1]
        && !dims.is_pointwise()
}

/// Runs the expression inside a function compiled for the active instruction-set tier, so that
/// the plain loops inlined into it (fusion mixing, im2col copies, `x * dz` sums) vectorise to
/// that tier's width. The loops use separate multiplies and adds, so every tier gives the same
/// bits.
///
/// A macro rather than a function taking a closure: a closure is compiled with the features of
/// the function that defines it, and unless it is `#[inline(always)]` LLVM left a large one
/// (the staging of a slab) as a call from the tier wrappers, so it ran as SSE2 code on every
/// tier. The macro writes the attribute, so no caller can forget it.
macro_rules! on_tier {
    ($body:expr) => {
        $crate::ops::a3dconv::cpu_kernel::run_on_tier(
            #[inline(always)]
            || $body,
        )
    };
}
pub(super) use on_tier;

/// The body of [`on_tier!`]; call it only through the macro.
#[inline(always)]
pub(super) fn run_on_tier<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match crate::cpu::active_isa() {
            // SAFETY: the tier is only active when the CPU has its features.
            crate::cpu::Isa::Avx512 => return unsafe { avx512(f) },
            // SAFETY: as above.
            crate::cpu::Isa::Avx2 => return unsafe { avx2(f) },
            crate::cpu::Isa::Baseline => {}
        }
    }
    f()
}

/// Tasks a rayon split keeps together: about four splits per thread, so the per-split buffers
/// (`for_each_init`) are allocated a few times per call, not once per task. Results do not
/// depend on it.
pub(super) fn min_tasks_per_split(tasks: usize) -> usize {
    (tasks / (4 * rayon::current_num_threads())).max(1)
}

/// Splits `tasks` into at most `max` groups of consecutive tasks: (tasks per group, groups).
pub(super) fn groups(tasks: usize, max: usize) -> (usize, usize) {
    let per = tasks.div_ceil(max.clamp(1, tasks.max(1)));
    (per.max(1), tasks.div_ceil(per.max(1)))
}

/// `y[B, O, D, H', W']`. Slices have been validated by the caller.
pub(crate) fn forward(
    dims: &A3dConvDims,
    x: &[f32],
    prologue: Option<&Affine>,
    fusion_weight: Option<&[f32]>,
    conv_weight: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let out_shape = dims.output_shape();
    let mut y = alloc(out_shape.iter().product(), &out_shape)?;
    if y.is_empty() {
        return Ok(y);
    }
    let g = Geometry::with_prologue(dims, prologue.is_some());
    if g.channels == 0 || g.in_plane() == 0 {
        // Every tap reads padding (or there is nothing to read): y is the bias.
        if let Some(bias) = bias {
            for (i, plane) in y.chunks_exact_mut(g.out_channel_stride()).enumerate() {
                plane.fill(bias[i % g.out_channels]);
            }
        }
        return Ok(y);
    }
    #[cfg(target_arch = "x86_64")]
    if g.direct {
        forward_direct(&g, x, prologue, fusion_weight, conv_weight, bias, &mut y);
        return Ok(y);
    }
    let slabs = g.out_slabs();
    let y_ptr = SharedMut(y.as_mut_ptr());
    let (block_len, col_len) = g.out_buffers();
    (0..g.batch * slabs)
        .into_par_iter()
        .with_min_len(min_tasks_per_split(g.batch * slabs))
        .for_each_init(
            || (vec![0.0f32; block_len], vec![0.0f32; col_len], Vec::new()),
            |(block, col, rows), t| {
                let (b, s) = (t / slabs, t % slabs);
                let (out, inp) = g.out_slab(s);
                let n = out.len();
                if g.staged {
                    on_tier!(g.stage_block(x, b, fusion_weight, prologue, &inp, block, rows));
                }
                for d in 0..g.depth {
                    let src = g.conv_input(x, block, b, d, &inp);
                    // SAFETY: rows o, pixels `out` of slice (b, d) belong to this task alone (tasks
                    // differ in batch item or pixel range) and lie inside `y`.
                    let dst = unsafe { y_ptr.ptr().add(g.out_slice(b, d) + out.start) };
                    if let Some(bias) = bias {
                        for (o, &v) in bias.iter().enumerate() {
                            // SAFETY: row o of this task's block, n elements (see above).
                            let row = unsafe {
                                std::slice::from_raw_parts_mut(
                                    dst.add(o * g.out_channel_stride()),
                                    n,
                                )
                            };
                            row.fill(v);
                        }
                    }
                    let (rhs, rhs_strides) = if g.pointwise {
                        (src.at(0, out.start).as_ptr(), [src.channel_stride, 1])
                    } else {
                        let col = &mut col[..g.ckk * n];
                        on_tier!(g.im2col(src, &out, col));
                        (col.as_ptr(), [n, 1])
                    };
                    // SAFETY: lhs is the [O, C*kh*kw] weight; rhs C*kh*kw rows of n values (the
                    // local slab, or C planes of `src` from pixel out.start); dst this task's block.
                    unsafe {
                        matmul(
                            [g.out_channels, n, g.ckk],
                            dst,
                            [g.out_channel_stride(), 1],
                            bias.is_some(),
                            conv_weight.as_ptr(),
                            [g.ckk, 1],
                            rhs,
                            rhs_strides,
                        )
                    }
                }
            },
        );
    Ok(y)
}

/// The forward plan of the direct convolution.
#[cfg(target_arch = "x86_64")]
fn forward_plan(g: &Geometry, conv_weight: &[f32]) -> DirectPlan {
    DirectPlan::forward(conv_weight, &g.conv_shape())
}

/// The input rows a slab reads, pre-activated once: `rows[((c * D + e) * n + h - first) * W..]`
/// is `max(x[b, c, e, h] * scale[c] + shift[c], 0)` for the slab's source rows `h` (`n` of
/// them from `first`). With fusion, every slice of the slab mixes all `D` input slices, so
/// activating in the mixing loop would repeat the prologue `D` times per value (at D = 7 it
/// was two thirds of the mixing's arithmetic).
#[cfg(target_arch = "x86_64")]
struct ActivatedRows<'a> {
    rows: &'a [f32],
    first: usize,
    n: usize,
}

/// Fills `out` with the slab's activated source rows (see [`ActivatedRows`]).
///
/// # Safety
/// AVX-512F and FMA must be present (the loop is compiled for them, and its fused
/// multiply-add must match `mix_row::<true>`'s).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn activate_rows<'a>(
    g: &Geometry,
    xb: &[f32],
    prologue: &Affine,
    src: &std::ops::Range<usize>,
    out: &'a mut Vec<f32>,
) -> ActivatedRows<'a> {
    let (cn, dn, plane, w, n) = (g.channels, g.depth, g.in_plane(), g.width, src.len());
    out.resize(cn * dn * n * w, 0.0);
    for c in 0..cn {
        let (s, t) = (prologue.scale[c], prologue.shift[c]);
        for e in 0..dn {
            let from = &xb[(c * dn + e) * plane + src.start * w..][..n * w];
            let to = &mut out[(c * dn + e) * n * w..][..n * w];
            for (o, v) in to.iter_mut().zip(from) {
                *o = v.mul_add(s, t).max(0.0);
            }
        }
    }
    ActivatedRows {
        rows: out,
        first: src.start,
        n,
    }
}

/// Fills `block` with the padded planes of slice `(b, d)` (fused when `fusion_weight` is given)
/// for output rows `r0..r0 + rows` of `plan`. With `activated` (the slab's rows from
/// [`activate_rows`]), the fusion reads them instead of applying the prologue itself.
///
/// # Safety
/// AVX-512F and FMA must be present (the mixing loop is compiled for them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn fill_slice(
    g: &Geometry,
    plan: &DirectPlan,
    x: &[f32],
    prologue: Option<&Affine>,
    fusion_weight: Option<&[f32]>,
    (b, d): (usize, usize),
    (r0, rows): (usize, usize),
    block: &mut [f32],
    scratch: &mut Vec<f32>,
    activated: Option<&ActivatedRows<'_>>,
) {
    let (cn, dn, plane, w) = (g.channels, g.depth, g.in_plane(), g.width);
    let xb = &x[g.in_batch(b)..];
    let act = |c: usize| prologue.map(|a| (a.scale[c], a.shift[c]));
    match (fusion_weight, activated) {
        (Some(fw), Some(at)) => plan.fill(r0, rows, block, scratch, |c, h, dst| {
            mix_row::<true>(
                dst,
                dn,
                |e| &at.rows[((c * dn + e) * at.n + h - at.first) * w..][..w],
                |e| fw[(e * dn + d) * cn + c],
                None,
            )
        }),
        // Without a prologue (or without fusion, where each value is read once) the rows are
        // read from `x` and activated as they are read.
        (Some(fw), None) => plan.fill(r0, rows, block, scratch, |c, h, dst| {
            mix_row::<true>(
                dst,
                dn,
                |e| &xb[(c * dn + e) * plane + h * w..][..w],
                |e| fw[(e * dn + d) * cn + c],
                act(c),
            )
        }),
        (None, _) => plan.fill(r0, rows, block, scratch, |c, h, dst| {
            let src = &xb[(c * dn + d) * plane + h * w..][..w];
            match act(c) {
                None => dst.copy_from_slice(src),
                Some((sc, sh)) => dst
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, s)| *o = s.mul_add(sc, sh).max(0.0)),
            }
        }),
    }
}

/// The forward pass with the direct convolution: per task (batch item, slab of output rows)
/// and slice, the padded (fused) planes, then the register-tiled convolution into `y`.
#[cfg(target_arch = "x86_64")]
fn forward_direct(
    g: &Geometry,
    x: &[f32],
    prologue: Option<&Affine>,
    fusion_weight: Option<&[f32]>,
    conv_weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let plan = forward_plan(g, conv_weight);
    let slabs = g.out_slabs();
    let block_len = plan.block_len(g.out_step / g.ow);
    let y_ptr = SharedMut(y.as_mut_ptr());
    (0..g.batch * slabs)
        .into_par_iter()
        .with_min_len(min_tasks_per_split(g.batch * slabs))
        .for_each_init(
            || (vec![0.0f32; block_len], Vec::new(), Vec::new()),
            |(block, scratch, act_rows), t| {
                let (b, s) = (t / slabs, t % slabs);
                let (out, _) = g.out_slab(s);
                let (r0, rows) = (out.start / g.ow, out.len() / g.ow);
                let activated = match (prologue, fusion_weight) {
                    (Some(p), Some(_)) if g.depth > 1 => {
                        let src = plan.source_rows(r0, rows);
                        // SAFETY: `direct` is only set when the AVX-512 tier (F, FMA) is active.
                        let at =
                            unsafe { activate_rows(g, &x[g.in_batch(b)..], p, &src, act_rows) };
                        Some(at)
                    }
                    _ => None,
                };
                for d in 0..g.depth {
                    // SAFETY: `direct` is only set when the AVX-512 tier (F, FMA) is active.
                    unsafe {
                        fill_slice(
                            g,
                            &plan,
                            x,
                            prologue,
                            fusion_weight,
                            (b, d),
                            (r0, rows),
                            block,
                            scratch,
                            activated.as_ref(),
                        )
                    };
                    // SAFETY: AVX-512F is present (as above); output rows r0.. of slice (b, d), every
                    // channel, belong to this task alone and lie inside `y`.
                    unsafe {
                        plan.run(
                            block,
                            rows,
                            bias,
                            y_ptr.ptr().add(g.out_slice(b, d) + out.start),
                            g.out_channel_stride(),
                            g.ow,
                        )
                    }
                }
            },
        );
}

#[cfg(test)]
mod tests {
    /// Every tier-width loop enters through `on_tier!`. A direct `run_on_tier` call with a plain
    /// closure compiles, runs and gives the same bits, so no numeric test would notice that its
    /// loop ran as baseline code; this test does.
    #[test]
    fn tier_loops_enter_through_the_macro() {
        let needle = concat!("run_on", "_tier(");
        let sources = [
            ("mod.rs", include_str!("mod.rs")),
            ("cpu_kernel.rs", include_str!("cpu_kernel.rs")),
            ("backward.rs", include_str!("backward.rs")),
            ("geometry.rs", include_str!("geometry.rs")),
            ("direct.rs", include_str!("direct.rs")),
            ("reference.rs", include_str!("reference.rs")),
        ];
        let calls: Vec<(&str, usize)> = sources
            .iter()
            .map(|(name, src)| (*name, src.matches(needle).count()))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(calls, [("cpu_kernel.rs", 1)], "only the macro may call it");
        let macro_uses: usize = sources
            .iter()
            .map(|(_, s)| s.matches("on_tier!(").count())
            .sum();
        assert!(
            macro_uses >= 6,
            "the staging, im2col and gather loops use the macro"
        );
    }
}
