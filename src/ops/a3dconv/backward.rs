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
        || (vec![0.0f32; block_len], vec![0.0f32; col_len]),
        |(block, col), (group, partial)| {
            let mut first = true;
            for t in group * per_group..((group + 1) * per_group).min(tasks) {
                let (b, s) = (t / slabs, t % slabs);
                let (out, inp) = g.out_slab(s);
                let n = out.len();
                if let Some(fw) = fusion_weight {
                    on_tier(|| g.fuse_block(x, b, fw, &inp, block));
                }
                for d in 0..g.depth {
                    let src = g.conv_input(x, block, b, d, &inp);
                    let (rhs, rhs_strides) = if g.pointwise {
                        (src.at(0, out.start).as_ptr(), [1, src.channel_stride])
                    } else {
                        let col = &mut col[..g.ckk * n];
                        on_tier(|| g.im2col(src, &out, col));
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

/// The fusion's backward for input pixels `px` of batch item `b`, given `dz` for them
/// (`dzb[d][c][0..n]`): writes `dx` there when given, adds `x * dz` sums to `dfw` when given.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn unfuse_block(
    g: &Geometry,
    x: &[f32],
    b: usize,
    fw: &[f32],
    px: &Range<usize>,
    dzb: &[f32],
    dx: Option<SharedMut>,
    dfw: Option<&mut [f64]>,
) {
    let (n, cn, dn, plane) = (px.len(), g.channels, g.depth, g.in_plane());
    let base = g.in_batch(b);
    if let Some(dx) = dx {
        for c in 0..cn {
            for e in 0..dn {
                // SAFETY: pixels `px` of every (c, e) plane of batch item b belong to this task.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(
                        dx.ptr().add(base + (c * dn + e) * plane + px.start),
                        n,
                    )
                };
                for d in 0..dn {
                    let wv = fw[(e * dn + d) * cn + c];
                    let src = &dzb[(d * cn + c) * n..][..n];
                    if d == 0 {
                        out.iter_mut().zip(src).for_each(|(o, s)| *o = s * wv);
                    } else {
                        out.iter_mut().zip(src).for_each(|(o, s)| *o += s * wv);
                    }
                }
            }
        }
    }
    if let Some(dfw) = dfw {
        for c in 0..cn {
            for e in 0..dn {
                let xs = &x[base + (c * dn + e) * plane + px.start..][..n];
                for d in 0..dn {
                    let zs = &dzb[(d * cn + c) * n..][..n];
                    let mut lanes = [0.0f32; 16];
                    let (xc, zc) = (xs.chunks_exact(16), zs.chunks_exact(16));
                    let (xt, zt) = (xc.remainder(), zc.remainder());
                    for (a, z) in xc.zip(zc) {
                        for l in 0..16 {
                            lanes[l] += a[l] * z[l];
                        }
                    }
                    for (l, (a, z)) in xt.iter().zip(zt).enumerate() {
                        lanes[l] += a * z;
                    }
                    dfw[(e * dn + d) * cn + c] += lanes.iter().map(|&v| v as f64).sum::<f64>();
                }
            }
        }
    }
}

/// A task's local buffers: (fused or gradient block, im2col or padded block, row scratch).
type Buffers = (Vec<f32>, Vec<f32>, Vec<f32>);

/// What [`input_gradients`] returns: `dx` and the fusion weights' gradient.
type InputGradients = (Option<Vec<f32>>, Option<Vec<f32>>);

/// `dx` (when `want_dx`) and the fusion weights' gradient (when `want_dfw` and fused).
fn input_gradients(
    g: &Geometry,
    x: &[f32],
    fusion_weight: Option<&[f32]>,
    conv_weight: &[f32],
    dy: &[f32],
    want_dx: bool,
    want_dfw: bool,
) -> Result<InputGradients> {
    let in_shape = [g.batch, g.channels, g.depth, g.height, g.width];
    let mut dx = if want_dx || fusion_weight.is_none() {
        Some(alloc(x.len(), &in_shape)?)
    } else {
        None
    };
    let want_dfw = want_dfw && fusion_weight.is_some();
    let dfw_len = g.depth * g.depth * g.channels;
    let slabs = g.in_slabs();
    let tasks = g.batch * slabs;
    if tasks == 0 || g.depth == 0 || g.channels == 0 {
        let dfw = want_dfw.then(|| vec![0.0f32; dfw_len]);
        return Ok((dx, dfw));
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
    let (per_group, n_groups) = if want_dfw {
        groups(
            tasks,
            MAX_GROUPS.min((PARTIALS_BYTES / (dfw_len * 8).max(1)).max(1)),
        )
    } else {
        (1, tasks)
    };
    let mut partials = vec![0.0f64; if want_dfw { n_groups * dfw_len } else { 0 }];
    let dx_ptr = dx.as_mut().map(|v| SharedMut(v.as_mut_ptr()));
    let block_len = if fusion_weight.is_some() {
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
    let run_group = |(block, col, scratch): &mut Buffers,
                     group: usize,
                     mut dfw: Option<&mut [f64]>| {
        for t in group * per_group..((group + 1) * per_group).min(tasks) {
            let (b, s) = (t / slabs, t % slabs);
            let px = g.in_slab(s);
            let n = px.len();
            for d in 0..g.depth {
                let dy_slice = &dy[g.out_slice(b, d)..];
                let (dst, dst_strides) = match (fusion_weight, dx_ptr) {
                    (Some(_), _) => (block[d * g.channels * n..].as_mut_ptr(), [n, 1]),
                    // SAFETY: pixels `px` of slice (b, d), every channel, belong to this task.
                    (None, Some(dx)) => (
                        unsafe { dx.ptr().add(g.in_slice(b, d) + px.start) },
                        [g.in_channel_stride(), 1],
                    ),
                    (None, None) => unreachable!("dx is allocated when there is no fusion"),
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
                    on_tier(|| g.gather_dy(dy_slice, &px, col));
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
            if let Some(fw) = fusion_weight {
                let dx = if want_dx { dx_ptr } else { None };
                on_tier(|| unfuse_block(g, x, b, fw, &px, block, dx, dfw.as_deref_mut()));
            }
        }
    };
    let init = || (vec![0.0f32; block_len], vec![0.0f32; col_len], Vec::new());
    if want_dfw {
        partials
            .par_chunks_mut(dfw_len)
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
    let dfw = want_dfw.then(|| {
        let mut sums = vec![0.0f64; dfw_len];
        for partial in partials.chunks_exact(dfw_len) {
            for (s, p) in sums.iter_mut().zip(partial) {
                *s += p;
            }
        }
        sums.into_iter().map(|s| s as f32).collect()
    });
    if !want_dx {
        dx = None;
    }
    Ok((dx, dfw))
}

/// The requested gradients of A3DConv given `dy`. Slices have been validated by the caller.
pub(crate) fn backward(
    dims: &A3dConvDims,
    x: &[f32],
    fusion_weight: Option<&[f32]>,
    conv_weight: &[f32],
    dy: &[f32],
    grads: Grads,
) -> Result<RawGradients> {
    let g = Geometry::new(dims);
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
        });
    }
    let d_conv_weight = grads
        .conv_weight
        .then(|| conv_weight_gradient(&g, x, fusion_weight, dy))
        .transpose()?;
    let want_dfw = grads.fusion_weight && fusion_weight.is_some();
    let (dx, d_fusion_weight) = if grads.input || want_dfw {
        input_gradients(&g, x, fusion_weight, conv_weight, dy, grads.input, want_dfw)?
    } else {
        (None, None)
    };
    Ok(RawGradients {
        dx,
        d_conv_weight,
        d_bias,
        d_fusion_weight,
    })
}
