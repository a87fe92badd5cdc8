//! Float64 definition of A3DConv and its gradients: direct loops over every tap, no im2col, no
//! GEMM, nothing shared with the fast path but the validated sizes. Tests and `a3d selftest`
//! compare against it.

use super::A3dConvDims;

/// Maps output position `i` and tap `p` to the input index, or `None` in the padding.
fn tap(
    i: usize,
    p: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    len: usize,
) -> Option<usize> {
    let pos = (i * stride + p * dilation).checked_sub(padding)?;
    (pos < len).then_some(pos)
}

/// The fusion `z[b,c,d] = sum_e x[b,c,e] * fw[e,d,c]`, or `x` itself without weights.
fn fuse(dims: &A3dConvDims, x: &[f64], fusion_weight: Option<&[f64]>) -> Vec<f64> {
    let Some(fw) = fusion_weight else {
        return x.to_vec();
    };
    let i = &dims.input;
    let (c_n, d_n, p_n) = (i.channels, i.depth, i.pixels);
    let mut z = vec![0.0; x.len()];
    for b in 0..i.batch {
        for c in 0..c_n {
            for d in 0..d_n {
                for e in 0..d_n {
                    let wgt = fw[(e * d_n + d) * c_n + c];
                    let xs = ((b * c_n + c) * d_n + e) * p_n;
                    let zs = ((b * c_n + c) * d_n + d) * p_n;
                    for p in 0..p_n {
                        z[zs + p] += x[xs + p] * wgt;
                    }
                }
            }
        }
    }
    z
}

/// Visits every (output element, tap, input element) triple of the convolution:
/// `f(y_index, conv_weight_index, z_index)`.
fn for_each_tap(dims: &A3dConvDims, mut f: impl FnMut(usize, usize, usize)) {
    let i = &dims.input;
    let [kh, kw] = dims.kernel;
    let [oh, ow] = dims.out_size;
    let p = &dims.params;
    for b in 0..i.batch {
        for o in 0..dims.out_channels {
            for d in 0..i.depth {
                for r in 0..oh {
                    for s in 0..ow {
                        let yi = (((b * dims.out_channels + o) * i.depth + d) * oh + r) * ow + s;
                        for c in 0..i.channels {
                            for kr in 0..kh {
                                let Some(h) =
                                    tap(r, kr, p.stride[0], p.padding[0], p.dilation[0], i.height)
                                else {
                                    continue;
                                };
                                for ks in 0..kw {
                                    let Some(w) = tap(
                                        s,
                                        ks,
                                        p.stride[1],
                                        p.padding[1],
                                        p.dilation[1],
                                        i.width,
                                    ) else {
                                        continue;
                                    };
                                    let wi = ((o * i.channels + c) * kh + kr) * kw + ks;
                                    let zi = (((b * i.channels + c) * i.depth + d) * i.height + h)
                                        * i.width
                                        + w;
                                    f(yi, wi, zi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y[B, O, D, H', W']` in float64.
pub fn forward(
    dims: &A3dConvDims,
    x: &[f64],
    fusion_weight: Option<&[f64]>,
    conv_weight: &[f64],
    bias: Option<&[f64]>,
) -> Vec<f64> {
    let z = fuse(dims, x, fusion_weight);
    let [oh, ow] = dims.out_size;
    let plane = dims.input.depth * oh * ow;
    let mut y = vec![0.0; dims.input.batch * dims.out_channels * plane];
    if let Some(bias) = bias {
        for (n, v) in y.iter_mut().enumerate() {
            *v = bias[(n / plane) % dims.out_channels];
        }
    }
    for_each_tap(dims, |yi, wi, zi| y[yi] += conv_weight[wi] * z[zi]);
    y
}

/// Every gradient of A3DConv in float64.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceGradients {
    /// `[B, C, D, H, W]`
    pub dx: Vec<f64>,
    /// `[O, C, kh, kw]`
    pub d_conv_weight: Vec<f64>,
    /// `[O]`
    pub d_bias: Vec<f64>,
    /// `[D, D, C]`, when the layer has fusion weights.
    pub d_fusion_weight: Option<Vec<f64>>,
}

/// Gradients of `y = forward(...)` given `dy` (`[B, O, D, H', W']`), in float64.
pub fn backward(
    dims: &A3dConvDims,
    x: &[f64],
    fusion_weight: Option<&[f64]>,
    conv_weight: &[f64],
    dy: &[f64],
) -> ReferenceGradients {
    let i = &dims.input;
    let z = fuse(dims, x, fusion_weight);
    let mut dz = vec![0.0; z.len()];
    let mut d_conv_weight = vec![0.0; conv_weight.len()];
    for_each_tap(dims, |yi, wi, zi| {
        dz[zi] += conv_weight[wi] * dy[yi];
        d_conv_weight[wi] += z[zi] * dy[yi];
    });
    let plane = i.depth * dims.out_size[0] * dims.out_size[1];
    let mut d_bias = vec![0.0; dims.out_channels];
    for (n, g) in dy.iter().enumerate() {
        d_bias[(n / plane) % dims.out_channels] += g;
    }
    let (c_n, d_n, p_n) = (i.channels, i.depth, i.pixels);
    let Some(fw) = fusion_weight else {
        return ReferenceGradients {
            dx: dz,
            d_conv_weight,
            d_bias,
            d_fusion_weight: None,
        };
    };
    // Through the fusion: dx[e] = sum_d fw[e,d,c] dz[d];  dfw[e,d,c] = sum x[e] dz[d].
    let mut dx = vec![0.0; x.len()];
    let mut dfw = vec![0.0; fw.len()];
    for b in 0..i.batch {
        for c in 0..c_n {
            for e in 0..d_n {
                for d in 0..d_n {
                    let wi = (e * d_n + d) * c_n + c;
                    let xs = ((b * c_n + c) * d_n + e) * p_n;
                    let zs = ((b * c_n + c) * d_n + d) * p_n;
                    for p in 0..p_n {
                        dx[xs + p] += fw[wi] * dz[zs + p];
                        dfw[wi] += x[xs + p] * dz[zs + p];
                    }
                }
            }
        }
    }
    ReferenceGradients {
        dx,
        d_conv_weight,
        d_bias,
        d_fusion_weight: Some(dfw),
    }
}
