//! Backward pass of A3DConv's CPU path: the input gradient (a gather-form transposed
//! convolution, then the fusion's backward), the convolution-weight and fusion-weight
//! gradients (fixed groups of tasks, groups added in f64 in order) and the bias gradient.

use super::cpu_kernel::{
    alloc, groups, matmul, min_tasks_per_split, on_tier, RawGradients, SharedMut, MAX_GROUPS,
    PARTIALS_BYTES,
};
#[cfg(target_arch = "x86_64")]
use super::direct::DirectPlan;
use super::geometry::Geometry;
use super::{A3dConvDims, Grads};
use crate::batchnorm::Affine;
use crate::Result;
use rayon::prelude::*;
use std::ops::Range;

/// Per-channel sums of `dy` over batch, slices and pixels, in eight f64 lanes in a fixed order.
fn bias_gradient(g: &Geometry, dy: &[f32]) -> Vec<f32> {
    let block = g.out_channel_stride();
    (0..g.out_channels)
        .into_par_iter()
        .map(|o| {
            let mut lanes = [0.0f64; 8];
            for b in 0..g.batch {
                let start = (b * g.out_channels + o) * block;
                let chunks = dy[start..start + block].chunks_exact(8);
                let tail = chunks.remainder();
                for ch in chunks {
                    for (l, v) in lanes.iter_mut().zip(ch) {
                        *l += *v as f64;
                    }
                }
                for (l, v) in lanes.iter_mut().zip(tail) {
                    *l += *v as f64;
                }
            }
            lanes.iter().sum::<f64>() as f32
        })
        .collect()
}

/// Adds the partial sums `partials` (`groups` consecutive blocks of `size`) in group order.
fn reduce_groups(partials: &[f32], size: usize) -> Vec<f32> {
    let mut sums = vec![0.0f64; size];
    for partial in partials.chunks_exact(size.max(1)) {
        for (s, p) in sums.iter_mut().zip(partial) {
            *s += *p as f64;
        }
    }
    sums.into_iter().map(|s| s as f32).collect()
}

/// `d_conv_weight[O, C*kh*kw] = sum over slabs and slices of dy_slab * col_slab^T`.
fn conv_weight_gradient(
    g: &Geometry,
    x: &[f32],
    prologue: Option<&Affine>,
    fusion_weight: Option<&[f32]>,
    dy: &[f32],
) -> Result<Vec<f32>> {
    // The weight gradient always runs im2col + GEMM: size its slabs for that, not for the
    // direct kernel's padded planes.
    let g = &Geometry {
        direct: false,
        ..*g
    }
    .replanned();
    let slabs = g.out_slabs();
    let tasks = g.batch * slabs;
    let size = g.out_channels * g.ckk;
    let shape = [g.out_channels, g.channels, g.kh, g.kw];
    if tasks == 0 || size == 0 || g.depth == 0 {
        return alloc(size, &shape);
    }
    let (per_group, n_groups) = groups(tasks, MAX_GROUPS.min((PARTIALS_BYTES / (size * 4)).max(1)));
    let mut partials = alloc(n_groups * size, &[n_groups, size])?;
    let (block_len, col_len) = g.out_buffers();
    partials.par_chunks_mut(size).enumerate().for_each_init(
        || (vec![0.0f32; block_len], vec![0.0f32; col_len], Vec::new()),
        |(block, col, rows), (group, partial)| {
            let mut first = true;
            for t in group * per_group..((group + 1) * per_group).min(tasks) {
                let (b, s) = (t / slabs, t % slabs);
                let (out, inp) = g.out_slab(s);
                let n = out.len();
                if g.staged {
                    on_tier!(g.stage_block(x, b, fusion_weight, prologue, &inp, block, rows));
                }
                for d in 0..g.depth {
                    let src = g.conv_input(x, block, b, d, &inp);
                    let (rhs, rhs_strides) = if g.pointwise {
                        (src.at(0, out.start).as_ptr(), [1, src.channel_stride])
                    } else {
                        let col = &mut col[..g.ckk * n];
                        on_tier!(g.im2col(src, &out, col));
                        (col.as_ptr(), [1, n])
                    };
                    // SAFETY: lhs is O rows of n pixels of dy's slice (b, d), rhs the transposed
                    // n x C*kh*kw slab (or planes), dst this group's own partial.
                    unsafe {
                        matmul(
                            [g.out_channels, g.ckk, n],
                            partial.as_mut_ptr(),
                            [g.ckk, 1],
                            !first,
                            dy[g.out_slice(b, d) + out.start..].as_ptr(),
                            [g.out_channel_stride(), 1],
                            rhs,
                            rhs_strides,
                        )
                    }
                    first = false;
                }
            }
        },
    );
    Ok(reduce_groups(&partials, size))
}

/// f32 lanes [`dot`] and [`sum`] accumulate in: four AVX-512 registers, four independent
/// chains of additions (one register's chain ran at the addition's latency).
const SUM_LANES: usize = 64;

/// `sum a[i] * b[i]` in [`SUM_LANES`] f32 lanes, added in f64 (a fixed order).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0.0f32; SUM_LANES];
    let (ac, bc) = (a.chunks_exact(SUM_LANES), b.chunks_exact(SUM_LANES));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..SUM_LANES {
            lanes[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in at.iter().zip(bt).enumerate() {
        lanes[l] += x * y;
    }
    lanes.iter().map(|&v| v as f64).sum()
}

/// `sum a[i]` in [`SUM_LANES`] f32 lanes, added in f64 (a fixed order).
#[inline(always)]
fn sum(a: &[f32]) -> f64 {
    let mut lanes = [0.0f32; SUM_LANES];
    let chunks = a.chunks_exact(SUM_LANES);
    let tail = chunks.remainder();
    for x in chunks {
        for l in 0..SUM_LANES {
            lanes[l] += x[l];
        }
    }
    for (l, x) in tail.iter().enumerate() {
        lanes[l] += x;
    }
    lanes.iter().map(|&v| v as f64).sum()
}

/// What [`unstage_block`] accumulates besides `dx`: the fusion weights' partial sums `[D, D, C]`
/// and, with a prologue, `[d_scale[C], d_shift[C]]`.
struct Sums<'a> {
    fusion: Option<&'a mut [f64]>,
    prologue: Option<&'a mut [f64]>,
}

/// The backward of the staging for input pixels `px` of batch item `b`, given `dz` (the
/// gradient of the block the convolution read, `dzb[d][c][0..n]`): the fusion's transpose
/// (when fused), then the prologue's mask and scale (when present). Writes `dx` there when
/// given; adds to `sums`. `rows` is scratch for one channel's `D` rows (twice).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn unstage_block(
    g: &Geometry,
    x: &[f32],
    b: usize,
    fw: Option<&[f32]>,
    prologue: Option<&Affine>,
    px: &Range<usize>,
    dzb: &[f32],
    dx: Option<SharedMut>,
    sums: &mut Sums<'_>,
    rows: &mut Vec<f32>,
) {
    let (n, cn, dn, plane) = (px.len(), g.channels, g.depth, g.in_plane());
    let base = g.in_batch(b);
    rows.resize(2 * dn * n, 0.0);
    let (act, grad) = rows.split_at_mut(dn * n);
    for c in 0..cn {
        let x_row = |e: usize| &x[base + (c * dn + e) * plane + px.start..][..n];
        let affine = prologue.map(|a| (a.scale[c], a.shift[c]));
        // The fusion's input (x, or the prologue's output) is read only by the fusion weights'
        // sums: the prologue's output is recomputed only when those are wanted.
        let want_dfw = fw.is_some() && sums.fusion.is_some();
        if let (Some((s, t)), true) = (affine, want_dfw) {
            for e in 0..dn {
                for (o, v) in act[e * n..(e + 1) * n].iter_mut().zip(x_row(e)) {
                    *o = (v * s + t).max(0.0);
                }
            }
        }
        let input = |e: usize| -> &[f32] {
            if affine.is_some() {
                &act[e * n..(e + 1) * n]
            } else {
                x_row(e)
            }
        };
        if let (Some(_), Some(dfw)) = (fw, sums.fusion.as_deref_mut()) {
            for e in 0..dn {
                for d in 0..dn {
                    dfw[(e * dn + d) * cn + c] += dot(input(e), &dzb[(d * cn + c) * n..][..n]);
                }
            }
        }
        if dx.is_none() && affine.is_none() {
            continue;
        }
        for e in 0..dn {
            // The gradient of the fusion's input row e.
            let ge = &mut grad[e * n..(e + 1) * n];
            match fw {
                Some(fw) => {
                    for d in 0..dn {
                        let wv = fw[(e * dn + d) * cn + c];
                        let src = &dzb[(d * cn + c) * n..][..n];
                        if d == 0 {
                            ge.iter_mut().zip(src).for_each(|(o, s)| *o = s * wv);
                        } else {
                            ge.iter_mut().zip(src).for_each(|(o, s)| *o += s * wv);
                        }
                    }
                }
                None => ge.copy_from_slice(&dzb[(e * cn + c) * n..][..n]),
            }
            if let Some((s, t)) = affine {
                // Through the ReLU: the gradient of the affine's output (a select, no branch).
                for (gv, v) in ge.iter_mut().zip(x_row(e)) {
                    *gv = if v * s + t > 0.0 { *gv } else { 0.0 };
                }
                if let Some(ps) = sums.prologue.as_deref_mut() {
                    ps[c] += dot(ge, x_row(e));
                    ps[cn + c] += sum(ge);
                }
                ge.iter_mut().for_each(|v| *v *= s);
            }
            if let Some(dx) = dx {
                // SAFETY: pixels `px` of plane (c, e) of batch item b belong to this task.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(
                        dx.ptr().add(base + (c * dn + e) * plane + px.start),
                        n,
                    )
                };
                out.copy_from_slice(ge);
            }
        }
    }
}

/// A task's local buffers: (staged gradient block, im2col or padded block, row scratch, the
/// unstaging's rows).
type Buffers = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

/// What [`input_gradients`] returns: `dx`, the fusion weights' gradient, and with a prologue
/// `(d_scale, d_shift)`.
type InputGradients = (
    Option<Vec<f32>>,
    Option<Vec<f32>>,
    Option<(Vec<f32>, Vec<f32>)>,
);

/// `dx` (when `want_dx`), the fusion weights' gradient (when `want_dfw` and fused) and the
/// prologue's (whenever there is one).
#[allow(clippy::too_many_arguments)]
fn input_gradients(
    g: &Geometry,
    x: &[f32],
    prologue: Option<&Affine>,
    fusion_weight: Option<&[f32]>,
    conv_weight: &[f32],
    dy: &[f32],
    want_dx: bool,
    want_dfw: bool,
) -> Result<InputGradients> {
    let in_shape = [g.batch, g.channels, g.depth, g.height, g.width];
    // Unstaged, the GEMM writes dz = dx straight into dx.
    let mut dx = if want_dx || !g.staged {
        Some(alloc(x.len(), &in_shape)?)
    } else {
        None
    };
    let want_dfw = want_dfw && fusion_weight.is_some();
    let dfw_len = if want_dfw {
        g.depth * g.depth * g.channels
    } else {
        0
    };
    let pro_len = if prologue.is_some() {
        2 * g.channels
    } else {
        0
    };
    let sums_len = dfw_len + pro_len;
    let slabs = g.in_slabs();
    let tasks = g.batch * slabs;
    let split = |v: Vec<f64>| {
        let to32 = |s: &[f64]| s.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let dfw = want_dfw.then(|| to32(&v[..dfw_len]));
        let pro = prologue.map(|_| {
            let p = &v[dfw_len..];
            (to32(&p[..g.channels]), to32(&p[g.channels..]))
        });
        (dfw, pro)
    };
    if tasks == 0 || g.depth == 0 || g.channels == 0 {
        let (dfw, pro) = split(vec![0.0f64; sums_len]);
        return Ok((dx, dfw, pro));
    }
    // [C, O*kh*kw]: the weight with input channels as rows, so the gather is the right operand.
    let mut wt = vec![0.0f32; g.channels * g.okk];
    let kk = g.kh * g.kw;
    for o in 0..g.out_channels {
        for c in 0..g.channels {
            for t in 0..kk {
                wt[c * g.okk + o * kk + t] = conv_weight[(o * g.channels + c) * kk + t];
            }
        }
    }
    let want_sums = sums_len > 0;
    let (per_group, n_groups) = if want_sums {
        groups(
            tasks,
            MAX_GROUPS.min((PARTIALS_BYTES / (sums_len * 8).max(1)).max(1)),
        )
    } else {
        (1, tasks)
    };
    let mut partials = vec![0.0f64; if want_sums { n_groups * sums_len } else { 0 }];
    let dx_ptr = dx.as_mut().map(|v| SharedMut(v.as_mut_ptr()));
    let block_len = if g.staged {
        g.depth * g.channels * g.in_step
    } else {
        0
    };
    #[cfg(target_arch = "x86_64")]
    let grad_plan = g
        .direct
        .then(|| DirectPlan::input_gradient(conv_weight, &g.conv_shape()));
    #[cfg(target_arch = "x86_64")]
    let col_len = match &grad_plan {
        Some(plan) => plan.block_len(g.in_step / g.width),
        None if g.pointwise => 0,
        None => g.okk * g.in_step,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let col_len = if g.pointwise { 0 } else { g.okk * g.in_step };
    let run_group = |(block, col, scratch, rows): &mut Buffers,
                     group: usize,
                     partial: Option<&mut [f64]>| {
        let (fusion, pro) = match partial {
            Some(p) => {
                let (f, r) = p.split_at_mut(dfw_len);
                (want_dfw.then_some(f), prologue.map(|_| r))
            }
            None => (None, None),
        };
        let mut sums = Sums {
            fusion,
            prologue: pro,
        };
        for t in group * per_group..((group + 1) * per_group).min(tasks) {
            let (b, s) = (t / slabs, t % slabs);
            let px = g.in_slab(s);
            let n = px.len();
            for d in 0..g.depth {
                let dy_slice = &dy[g.out_slice(b, d)..];
                let (dst, dst_strides) = match (g.staged, dx_ptr) {
                    (true, _) => (block[d * g.channels * n..].as_mut_ptr(), [n, 1]),
                    // SAFETY: pixels `px` of slice (b, d), every channel, belong to this task.
                    (false, Some(dx)) => (
                        unsafe { dx.ptr().add(g.in_slice(b, d) + px.start) },
                        [g.in_channel_stride(), 1],
                    ),
                    // dx is allocated whenever the block is not staged (see above).
                    (false, None) => return,
                };
                #[cfg(target_arch = "x86_64")]
                if let Some(plan) = &grad_plan {
                    let (h0, rows, ocs) = (px.start / g.width, n / g.width, g.out_channel_stride());
                    plan.fill(h0, rows, col, scratch, |o, r, row| {
                        row.copy_from_slice(&dy_slice[o * ocs + r * g.ow..][..g.ow]);
                    });
                    // SAFETY: `direct` implies the AVX-512 tier; dst is C rows of this task's
                    // pixels (see above), row stride W.
                    unsafe { plan.run(col, rows, None, dst, dst_strides[0], g.width) };
                    continue;
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = &scratch;
                let (rhs, rhs_strides) = if g.pointwise {
                    (dy_slice[px.start..].as_ptr(), [g.out_channel_stride(), 1])
                } else {
                    let col = &mut col[..g.okk * n];
                    on_tier!(g.gather_dy(dy_slice, &px, col));
                    (col.as_ptr(), [n, 1])
                };
                // SAFETY: lhs is the [C, O*kh*kw] rearranged weight, rhs the gather (or O
                // planes of dy from pixel px.start), dst C rows of n values this task owns.
                unsafe {
                    matmul(
                        [g.channels, n, g.okk],
                        dst,
                        dst_strides,
                        false,
                        wt.as_ptr(),
                        [g.okk, 1],
                        rhs,
                        rhs_strides,
                    )
                }
            }
            if g.staged {
                let dx = if want_dx { dx_ptr } else { None };
                on_tier!(unstage_block(
                    g,
                    x,
                    b,
                    fusion_weight,
                    prologue,
                    &px,
                    block,
                    dx,
                    &mut sums,
                    rows,
                ));
            }
        }
    };
    let init = || {
        (
            vec![0.0f32; block_len],
            vec![0.0f32; col_len],
            Vec::new(),
            Vec::new(),
        )
    };
    if want_sums {
        partials
            .par_chunks_mut(sums_len)
            .enumerate()
            .for_each_init(init, |bufs, (group, partial)| {
                run_group(bufs, group, Some(partial))
            });
    } else {
        (0..n_groups)
            .into_par_iter()
            .with_min_len(min_tasks_per_split(n_groups))
            .for_each_init(init, |bufs, group| run_group(bufs, group, None));
    }
    let mut sums = vec![0.0f64; sums_len];
    for partial in partials.chunks_exact(sums_len.max(1)) {
        for (s, p) in sums.iter_mut().zip(partial) {
            *s += p;
        }
    }
    let (dfw, pro) = split(sums);
    if !want_dx {
        dx = None;
    }
    Ok((dx, dfw, pro))
}

/// The requested gradients of A3DConv given `dy`. Slices have been validated by the caller.
pub(crate) fn backward(
    dims: &A3dConvDims,
    x: &[f32],
    prologue: Option<&Affine>,
    fusion_weight: Option<&[f32]>,
    conv_weight: &[f32],
    dy: &[f32],
    grads: Grads,
) -> Result<RawGradients> {
    let g = Geometry::with_prologue(dims, prologue.is_some());
    let d_bias = grads.bias.then(|| bias_gradient(&g, dy));
    if g.channels == 0 || g.in_plane() == 0 || g.out_channels == 0 {
        // No tap reads an input element (or no output uses one): the sums are empty.
        let zeros =
            |want: bool, len: usize, shape: &[usize]| want.then(|| alloc(len, shape)).transpose();
        let conv_shape = [g.out_channels, g.channels, g.kh, g.kw];
        let fw_len = if fusion_weight.is_some() {
            g.depth * g.depth * g.channels
        } else {
            0
        };
        return Ok(RawGradients {
            dx: zeros(grads.input, x.len(), &[x.len()])?,
            d_conv_weight: zeros(grads.conv_weight, g.out_channels * g.ckk, &conv_shape)?,
            d_bias,
            d_fusion_weight: zeros(
                grads.fusion_weight && fusion_weight.is_some(),
                fw_len,
                &[fw_len],
            )?,
            d_prologue: prologue.map(|_| (vec![0.0; g.channels], vec![0.0; g.channels])),
        });
    }
    let d_conv_weight = grads
        .conv_weight
        .then(|| conv_weight_gradient(&g, x, prologue, fusion_weight, dy))
        .transpose()?;
    let want_dfw = grads.fusion_weight && fusion_weight.is_some();
    // With a prologue its gradients always come (they need the input-gradient pass).
    let (dx, d_fusion_weight, d_prologue) = if grads.input || want_dfw || prologue.is_some() {
        input_gradients(
            &g,
            x,
            prologue,
            fusion_weight,
            conv_weight,
            dy,
            grads.input,
            want_dfw,
        )?
    } else {
        (None, None, None)
    };
    Ok(RawGradients {
        dx,
        d_conv_weight,
        d_bias,
        d_fusion_weight,
        d_prologue,
    })
}
