//! Float64 reference of the depth convolution, written from the definition, and the banded
//! Toeplitz fusion weights it equals (for the cross-checks through the fusion kernels).

use super::DepthConvDims;

fn at(dims: &DepthConvDims, b: usize, c: usize, d: usize, p: usize) -> usize {
    let i = &dims.input;
    ((b * i.channels + c) * i.depth + d) * i.pixels + p
}

/// Input slice `k + t - r` for output slice `k`, tap `t`, if it exists.
fn source(dims: &DepthConvDims, k: usize, t: usize) -> Option<usize> {
    (k + t)
        .checked_sub(dims.radius())
        .filter(|&d| d < dims.input.depth)
}

/// `y[b,c,k,p] = sum_t v[t,c] * x[b,c,k+t-r,p]`.
pub fn forward(dims: &DepthConvDims, x: &[f64], v: &[f64]) -> Vec<f64> {
    let i = &dims.input;
    let mut y = vec![0.0; i.len()];
    for b in 0..i.batch {
        for c in 0..i.channels {
            for k in 0..i.depth {
                for t in 0..dims.taps {
                    if let Some(d) = source(dims, k, t) {
                        for p in 0..i.pixels {
                            y[at(dims, b, c, k, p)] +=
                                v[t * i.channels + c] * x[at(dims, b, c, d, p)];
                        }
                    }
                }
            }
        }
    }
    y
}

/// `dx`: every forward term `y[k] += v[t] x[d]` sends `v[t] dy[k]` back to `dx[d]`.
pub fn grad_input(dims: &DepthConvDims, v: &[f64], dy: &[f64]) -> Vec<f64> {
    let i = &dims.input;
    let mut dx = vec![0.0; i.len()];
    for b in 0..i.batch {
        for c in 0..i.channels {
            for k in 0..i.depth {
                for t in 0..dims.taps {
                    if let Some(d) = source(dims, k, t) {
                        for p in 0..i.pixels {
                            dx[at(dims, b, c, d, p)] +=
                                v[t * i.channels + c] * dy[at(dims, b, c, k, p)];
                        }
                    }
                }
            }
        }
    }
    dx
}

/// `dv[t,c] = sum_{b,k,p} x[b,c,k+t-r,p] * dy[b,c,k,p]`, `[K, C]`.
pub fn grad_weight(dims: &DepthConvDims, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let i = &dims.input;
    let mut dv = vec![0.0; dims.taps * i.channels];
    for b in 0..i.batch {
        for c in 0..i.channels {
            for k in 0..i.depth {
                for t in 0..dims.taps {
                    if let Some(d) = source(dims, k, t) {
                        for p in 0..i.pixels {
                            dv[t * i.channels + c] +=
                                x[at(dims, b, c, d, p)] * dy[at(dims, b, c, k, p)];
                        }
                    }
                }
            }
        }
    }
    dv
}

/// The A3D fusion weights `w[D, D, C]` equal to this depth convolution:
/// `w[d, k, c] = v[d - k + r, c]` inside the band, 0 outside.
pub fn fusion_weights(dims: &DepthConvDims, v: &[f64]) -> Vec<f64> {
    let (nd, nc) = (dims.input.depth, dims.input.channels);
    let mut w = vec![0.0; nd * nd * nc];
    for k in 0..nd {
        for t in 0..dims.taps {
            if let Some(d) = source(dims, k, t) {
                for c in 0..nc {
                    w[(d * nd + k) * nc + c] = v[t * nc + c];
                }
            }
        }
    }
    w
}
