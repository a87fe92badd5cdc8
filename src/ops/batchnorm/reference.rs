//! Float64 BN-ReLU for the tests.

/// `(mean, biased var)` per channel of `x` `[B, C, rest]`.
pub fn stats(x: &[f64], b: usize, c: usize, rest: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (b * rest) as f64;
    let mut mean = vec![0.0; c];
    for (i, v) in x.iter().enumerate() {
        mean[(i / rest) % c] += v / n;
    }
    let mut var = vec![0.0; c];
    for (i, v) in x.iter().enumerate() {
        let ch = (i / rest) % c;
        var[ch] += (v - mean[ch]).powi(2) / n;
    }
    (mean, var)
}

/// `(y, dx, d_scale, d_shift)` of `y = max(x * s + t, 0)` given `dy`.
pub fn bn_relu(
    x: &[f64],
    s: &[f64],
    t: &[f64],
    dy: &[f64],
    c: usize,
    rest: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut ds, mut dt) = (vec![0.0; c], vec![0.0; c]);
    for i in 0..x.len() {
        let ch = (i / rest) % c;
        let pre = x[i] * s[ch] + t[ch];
        if pre > 0.0 {
            y[i] = pre;
            dx[i] = dy[i] * s[ch];
            ds[ch] += dy[i] * x[i];
            dt[ch] += dy[i];
        }
    }
    (y, dx, ds, dt)
}

/// Training-mode `sum(relu(weight * (x - mean) / sqrt(var + eps) + bias) * dy)` with the batch's
/// own statistics: the loss whose finite differences check the training backward.
#[allow(clippy::too_many_arguments)]
pub fn train_loss(
    x: &[f64],
    w: &[f64],
    bias: &[f64],
    eps: f64,
    dy: &[f64],
    b: usize,
    c: usize,
    rest: usize,
) -> f64 {
    let (mean, var) = stats(x, b, c, rest);
    x.iter()
        .zip(dy)
        .enumerate()
        .map(|(i, (&v, &g))| {
            let ch = (i / rest) % c;
            let pre = w[ch] * (v - mean[ch]) / (var[ch] + eps).sqrt() + bias[ch];
            pre.max(0.0) * g
        })
        .sum()
}
