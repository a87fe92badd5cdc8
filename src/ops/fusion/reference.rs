//! Float64 reference of A3D fusion: the definition, written as plainly as possible.
//! Tests, `a3d selftest` and the benchmarks' baseline compare against it.

use super::FusionDims;

/// `y[b,c,k,p] = sum_d x[b,c,d,p] * w[d,k,c]`.
pub fn forward(dims: &FusionDims, x: &[f64], w: &[f64]) -> Vec<f64> {
    let FusionDims {
        batch: nb,
        channels: nc,
        depth: nd,
        pixels: np,
        ..
    } = *dims;
    let mut y = vec![0.0; dims.len()];
    for b in 0..nb {
        for c in 0..nc {
            for k in 0..nd {
                for p in 0..np {
                    let mut s = 0.0;
                    for d in 0..nd {
                        s += x[((b * nc + c) * nd + d) * np + p] * w[(d * nd + k) * nc + c];
                    }
                    y[((b * nc + c) * nd + k) * np + p] = s;
                }
            }
        }
    }
    y
}

/// `dx[b,c,d,p] = sum_k dy[b,c,k,p] * w[d,k,c]`.
pub fn grad_input(dims: &FusionDims, w: &[f64], dy: &[f64]) -> Vec<f64> {
    let FusionDims {
        batch: nb,
        channels: nc,
        depth: nd,
        pixels: np,
        ..
    } = *dims;
    let mut dx = vec![0.0; dims.len()];
    for b in 0..nb {
        for c in 0..nc {
            for d in 0..nd {
                for p in 0..np {
                    let mut s = 0.0;
                    for k in 0..nd {
                        s += dy[((b * nc + c) * nd + k) * np + p] * w[(d * nd + k) * nc + c];
                    }
                    dx[((b * nc + c) * nd + d) * np + p] = s;
                }
            }
        }
    }
    dx
}

/// `dw[d,k,c] = sum_{b,p} x[b,c,d,p] * dy[b,c,k,p]`.
pub fn grad_weight(dims: &FusionDims, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let FusionDims {
        batch: nb,
        channels: nc,
        depth: nd,
        pixels: np,
        ..
    } = *dims;
    let mut dw = vec![0.0; nd * nd * nc];
    for d in 0..nd {
        for k in 0..nd {
            for c in 0..nc {
                let mut s = 0.0;
                for b in 0..nb {
                    for p in 0..np {
                        s += x[((b * nc + c) * nd + d) * np + p]
                            * dy[((b * nc + c) * nd + k) * np + p];
                    }
                }
                dw[(d * nd + k) * nc + c] = s;
            }
        }
    }
    dw
}

/// Relative norm of the error, `||got - want|| / ||want||` (0 when both are empty or zero;
/// infinite when `want` is zero but `got` is not, when `got` holds NaN, or when the lengths
/// differ).
pub fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (g - w) * (g - w);
        den += w * w;
    }
    if num.is_nan() {
        f64::INFINITY
    } else if num == 0.0 {
        0.0
    } else if den == 0.0 {
        f64::INFINITY
    } else {
        (num / den).sqrt()
    }
}
