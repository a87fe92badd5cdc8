//! SGD as PyTorch's `torch.optim.SGD(momentum, weight_decay)` (dampening 0, not Nesterov) and
//! `clip_grad_norm_` (total L2 norm), over candle variables.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;

/// The variables of `map` sorted by name: one order for the optimiser, its checkpoints and
/// every walk over a model's parameters, whatever the map's hashing.
pub fn sorted_vars(map: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = map
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variables poisoned".into()))?;
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// SGD with momentum and weight decay on every variable (the reference has no per-parameter
/// options: biases, norms and fusion weights decay too).
pub struct Sgd {
    vars: Vec<Var>,
    /// Momentum buffers, one per variable once it has had a gradient.
    momentum_buffers: Vec<Option<Tensor>>,
    /// Momentum (0.9).
    pub momentum: f64,
    /// Weight decay (1e-4).
    pub weight_decay: f64,
}

impl Sgd {
    /// The optimiser of `vars` with the reference's momentum 0.9 and weight decay 1e-4.
    pub fn new(vars: Vec<Var>) -> Sgd {
        let n = vars.len();
        Sgd {
            vars,
            momentum_buffers: vec![None; n],
            momentum: 0.9,
            weight_decay: 1e-4,
        }
    }

    /// The variables.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The momentum buffers (for checkpoints).
    pub fn momentum_buffers(&self) -> &[Option<Tensor>] {
        &self.momentum_buffers
    }

    /// Restores momentum buffers saved from an optimiser of the same variables.
    pub fn set_momentum_buffers(&mut self, buffers: Vec<Option<Tensor>>) -> Result<()> {
        if buffers.len() != self.vars.len() {
            candle_core::bail!(
                "{} momentum buffers for {} variables",
                buffers.len(),
                self.vars.len()
            );
        }
        self.momentum_buffers = buffers;
        Ok(())
    }

    /// One step at rate `lr`: `d = g + wd * p`; `buf = d` on the first step, else
    /// `buf = momentum * buf + d`; `p -= lr * buf`. Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for (var, buf) in self.vars.iter().zip(self.momentum_buffers.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Detached: arithmetic on a variable records an autograd node, and a buffer that
            // kept one would chain every earlier step's tensors (memory growing per iteration).
            let p = var.as_tensor().detach();
            let d = (g.detach() + (&p * self.weight_decay)?)?;
            let b = match buf.take() {
                None => d,
                Some(prev) => ((prev * self.momentum)? + d)?,
            };
            var.set(&(p - (&b * lr)?)?)?;
            *buf = Some(b);
        }
        Ok(())
    }
}

/// Scales the gradients of `vars` in `grads` so that their total L2 norm is at most
/// `max_norm` (factor `max_norm / (norm + 1e-6)` when above, as PyTorch); returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn two_steps_match_pytorch_sgd() {
        // p = [1, -2], loss = sum(p^2) / 2, so g = p.
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = Sgd::new(vec![p.clone()]);
        let mut expect = [1.0f64, -2.0];
        let mut buf = [0.0f64; 2];
        for step in 0..2 {
            let loss = (p.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, 0.1).unwrap();
            for k in 0..2 {
                let d = expect[k] + 1e-4 * expect[k];
                buf[k] = if step == 0 { d } else { 0.9 * buf[k] + d };
                expect[k] -= 0.1 * buf[k];
            }
        }
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        for k in 0..2 {
            assert!(
                (got[k] as f64 - expect[k]).abs() < 1e-6,
                "{got:?} vs {expect:?}"
            );
        }
    }

    #[test]
    fn buffers_hold_no_autograd_graph() {
        let p = Var::new(&[0.5f32, -1.5, 2.0], &Device::Cpu).unwrap();
        let mut opt = Sgd::new(vec![p.clone()]);
        for _ in 0..3 {
            let loss = p.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), 0.01).unwrap();
        }
        let buf = opt.momentum_buffers()[0].as_ref().unwrap();
        assert!(
            !buf.track_op(),
            "a momentum buffer records the steps that made it"
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Var::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
        let loss = (p.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let mut grads = loss.backward().unwrap();
        let norm = clip_grad_norm(&mut grads, std::slice::from_ref(&p), 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let g = grads.get(p.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
    }
}
