//! The reference's losses as candle expressions (differentiable), each a **sum**: the caller
//! divides by the reference's normaliser (the sampled anchors `N_s` for both RPN terms, the
//! sampled RoIs for both R-CNN terms).

use candle_core::{Result, Tensor, D};

/// `sum(smooth_l1(pred - target))` with `0.5 d^2 / beta` below `beta`, `|d| - 0.5 beta` above
/// (beta 1/9 for the RPN, 1.0 for the R-CNN).
pub fn smooth_l1_sum(pred: &Tensor, target: &Tensor, beta: f64) -> Result<Tensor> {
    let d = (pred - target)?.abs()?;
    let small = d.lt(beta)?;
    let quad = ((&d * &d)? * (0.5 / beta))?;
    let lin = (&d - 0.5 * beta)?;
    small.where_cond(&quad, &lin)?.sum_all()
}

/// `sum(BCE-with-logits(logits, labels))`, labels 0 or 1, in the stable form
/// `max(x, 0) - x y + log(1 + exp(-|x|))`.
pub fn bce_with_logits_sum(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let relu = logits.relu()?;
    let softplus = ((logits.abs()?.neg()?.exp()? + 1.0)?).log()?;
    ((relu - (logits * labels)?)? + softplus)?.sum_all()
}

/// `sum(-log softmax(logits)[label])` over rows of `logits` `[n, classes]`, `labels` `[n]` u32.
pub fn softmax_ce_sum(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    logp.gather(&labels.unsqueeze(1)?, 1)?.neg()?.sum_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scalar(t: Tensor) -> f64 {
        t.to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn values_against_the_formulas() {
        let dev = Device::Cpu;
        let p = Tensor::new(&[0.05f32, 0.5, -2.0], &dev).unwrap();
        let t = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let beta = 1.0 / 9.0;
        let want = 0.5 * 0.05f64.powi(2) / beta + (0.5 - 0.5 * beta) + (2.0 - 0.5 * beta);
        assert!((scalar(smooth_l1_sum(&p, &t, beta).unwrap()) - want).abs() < 1e-5);
        let x = Tensor::new(&[2.0f32, -1.0, 30.0], &dev).unwrap();
        let y = Tensor::new(&[1.0f32, 0.0, 0.0], &dev).unwrap();
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let want = -(sig(2.0)).ln() - (1.0 - sig(-1.0)).ln() + 30.0; // the last: log(1 + e^30)
        assert!((scalar(bce_with_logits_sum(&x, &y).unwrap()) - want).abs() < 1e-4);
        let logits = Tensor::new(&[[1.0f32, 3.0], [0.5, -0.5]], &dev).unwrap();
        let labels = Tensor::new(&[1u32, 0], &dev).unwrap();
        let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
        let want = (lse(1.0, 3.0) - 3.0) + (lse(0.5, -0.5) - 0.5);
        assert!((scalar(softmax_ce_sum(&logits, &labels).unwrap()) - want).abs() < 1e-5);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let xs = [0.03f64, -0.4, 1.7];
        let f = |v: &[f64]| -> f64 {
            let p = Tensor::new(
                v.iter().map(|&a| a as f32).collect::<Vec<_>>().as_slice(),
                &dev,
            )
            .unwrap();
            let z = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
            let y = Tensor::new(&[1.0f32, 0.0, 1.0], &dev).unwrap();
            scalar(
                (smooth_l1_sum(&p, &z, 1.0 / 9.0).unwrap() + bce_with_logits_sum(&p, &y).unwrap())
                    .unwrap(),
            )
        };
        let var = candle_core::Var::new(
            xs.iter().map(|&a| a as f32).collect::<Vec<_>>().as_slice(),
            &dev,
        )
        .unwrap();
        let z = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let y = Tensor::new(&[1.0f32, 0.0, 1.0], &dev).unwrap();
        let loss = (smooth_l1_sum(var.as_tensor(), &z, 1.0 / 9.0).unwrap()
            + bce_with_logits_sum(var.as_tensor(), &y).unwrap())
        .unwrap();
        let g = loss
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for k in 0..3 {
            let h = 1e-3;
            let (mut a, mut b) = (xs, xs);
            a[k] += h;
            b[k] -= h;
            let fd = (f(&a) - f(&b)) / (2.0 * h);
            assert!((g[k] as f64 - fd).abs() < 2e-3, "{k}: {} vs {fd}", g[k]);
        }
    }
}
