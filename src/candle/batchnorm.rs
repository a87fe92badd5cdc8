//! [`BnReluA3dConv`]: `BatchNorm3d -> ReLU -> context fusion -> per-slice conv`, the
//! pre-activation layer the detector's dense blocks repeat, with the reference parameter names
//! (`norm.weight`, `norm.bias`, `norm.running_mean`, `norm.running_var`,
//! `norm.num_batches_tracked`, and the convolution's).
//!
//! The BN-ReLU is one candle custom op running a3d's CPU kernels: training mode normalises with
//! the batch's statistics (one pass for them, one for the output) and its backward is the full
//! training-mode gradient (through the batch mean and variance) in two passes; evaluation mode
//! folds the running statistics into one affine map. The running statistics are updated as
//! PyTorch does (momentum 0.1, unbiased variance) after each training forward.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder};

use super::storage::{candle_err, candle_tensor, cpu_storage, host_tensor, weights_f32};
use super::{ContextConv, ContextConvConfig, ContextFusion};
use crate::batchnorm::{self, Affine, BatchNorm, ChannelStats};
use crate::dtype::with_dtype;

/// Where a training forward leaves the batch's statistics.
type StatsCell = Arc<Mutex<Option<ChannelStats>>>;

/// Which statistics the op normalises with.
#[derive(Debug, Clone)]
enum Mode {
    /// The batch's own; the forward leaves them in the cell for the running update and the
    /// backward.
    Train(StatsCell),
    /// Fixed running statistics.
    Eval { mean: Vec<f32>, var: Vec<f32> },
}

/// A batch norm + ReLU run as the prologue of the next A3DConv op (`a3dconv.rs`): the op's
/// parameter vector ends with the norm's weight and bias, and these methods turn them and the
/// statistics into the affine map and finish the gradients.
#[derive(Debug, Clone)]
pub(crate) struct Prologue {
    mode: Mode,
    eps: f32,
}

impl Prologue {
    fn split(norm: &[f32]) -> (&[f32], &[f32]) {
        norm.split_at(norm.len() / 2)
    }

    fn stats(&self, op: &str) -> candle_core::Result<ChannelStats> {
        match &self.mode {
            Mode::Train(cell) => cell
                .lock()
                .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned")))?
                .clone()
                .ok_or_else(|| candle_core::Error::Msg(format!("{op}: batch statistics missing"))),
            Mode::Eval { mean, var } => Ok(ChannelStats {
                mean: mean.clone(),
                var: var.clone(),
                count: 0,
            }),
        }
    }

    /// The forward's affine map: from `x`'s statistics (kept for the backward and the running
    /// update) in training mode, from the running statistics otherwise.
    pub(crate) fn forward_affine(
        &self,
        op: &str,
        (shape, x): (&[usize], &[f32]),
        norm: &[f32],
    ) -> candle_core::Result<Affine> {
        let (w, b) = Self::split(norm);
        if let Mode::Train(cell) = &self.mode {
            let stats = batchnorm::channel_stats_of(shape, x).map_err(|e| candle_err(op, e))?;
            *cell
                .lock()
                .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned")))? = Some(stats);
        }
        let st = self.stats(op)?;
        Affine::from_batch_norm(w, b, &st.mean, &st.var, self.eps).map_err(|e| candle_err(op, e))
    }

    /// The affine map the forward used.
    pub(crate) fn backward_affine(&self, op: &str, norm: &[f32]) -> candle_core::Result<Affine> {
        let (w, b) = Self::split(norm);
        let st = self.stats(op)?;
        Affine::from_batch_norm(w, b, &st.mean, &st.var, self.eps).map_err(|e| candle_err(op, e))
    }

    /// The norm's `(d_weight, d_bias)` from the layer's prologue gradients; in training mode the
    /// terms through the batch statistics are added to `g.dx` too.
    pub(crate) fn finish_backward(
        &self,
        op: &str,
        x: (&[usize], &[f32]),
        norm: &[f32],
        g: &mut crate::a3dconv::Gradients,
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let (w, b) = Self::split(norm);
        let missing = || candle_core::Error::Msg(format!("{op}: prologue gradients missing"));
        let (ds, dt) = (
            g.d_scale.clone().ok_or_else(missing)?,
            g.d_shift.clone().ok_or_else(missing)?,
        );
        let st = self.stats(op)?;
        match &self.mode {
            Mode::Train(_) => {
                let bn = BatchNorm {
                    weight: w,
                    bias: b,
                    eps: self.eps,
                };
                let dx = g.dx.as_mut().ok_or_else(missing)?;
                bn.train_backward_from_prologue_values(x, &st, &ds, &dt, dx)
                    .map_err(|e| candle_err(op, e))
            }
            Mode::Eval { mean, var } => {
                let dw = (0..w.len())
                    .map(|c| (ds[c] - mean[c] * dt[c]) / (var[c] + self.eps).sqrt())
                    .collect();
                Ok((dw, dt))
            }
        }
    }
}

/// `relu(batch_norm(x))` on `(x [B, C, ...], weight [C], bias [C])`.
#[derive(Debug, Clone)]
struct BnReluOp {
    mode: Mode,
    eps: f32,
}

fn f32_values(op: &str, arg: &str, s: &CpuStorage, l: &Layout) -> candle_core::Result<Vec<f32>> {
    let t = host_tensor(op, arg, s, l)?;
    Ok(with_dtype!(t.dtype(), T => weights_f32(t.as_slice::<T>().map_err(|e| candle_err(op, e))?)))
}

impl BnReluOp {
    fn affine(
        &self,
        op: &str,
        w: &[f32],
        b: &[f32],
        stats: Option<&ChannelStats>,
    ) -> candle_core::Result<Affine> {
        let (mean, var) = match (&self.mode, stats) {
            (Mode::Eval { mean, var }, _) => (mean.as_slice(), var.as_slice()),
            (Mode::Train(_), Some(s)) => (s.mean.as_slice(), s.var.as_slice()),
            (Mode::Train(_), None) => candle_core::bail!("{op}: batch statistics missing"),
        };
        Affine::from_batch_norm(w, b, mean, var, self.eps).map_err(|e| candle_err(op, e))
    }
}

impl CustomOp3 for BnReluOp {
    fn name(&self) -> &'static str {
        "a3d-bn-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let x = host_tensor(op, "x", s1, l1)?;
        let (w, b) = (
            f32_values(op, "weight", s2, l2)?,
            f32_values(op, "bias", s3, l3)?,
        );
        let y = match &self.mode {
            Mode::Train(cell) => {
                let bn = BatchNorm {
                    weight: &w,
                    bias: &b,
                    eps: self.eps,
                };
                let (y, stats) = bn.train_forward(&x).map_err(|e| candle_err(op, e))?;
                *cell
                    .lock()
                    .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned")))? = Some(stats);
                y
            }
            Mode::Eval { .. } => {
                let a = self.affine(op, &w, &b, None)?;
                batchnorm::bn_relu_forward(&x, &a).map_err(|e| candle_err(op, e))?
            }
        };
        Ok((cpu_storage(op, y)?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = BnReluGradOp {
            forward: self.clone(),
            bias: b.detach(),
        };
        let packed = x.apply_op3_no_bwd(w, dy, &grad)?;
        let (n, c) = (x.elem_count(), w.elem_count());
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, c)?.to_dtype(w.dtype())?;
        let db = packed.narrow(0, n + c, c)?.to_dtype(b.dtype())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The BN-ReLU's gradients from `(x, weight, dy)`, packed `[dx, d_weight, d_bias]` in `x`'s
/// dtype.
struct BnReluGradOp {
    forward: BnReluOp,
    bias: Tensor,
}

impl CustomOp3 for BnReluGradOp {
    fn name(&self) -> &'static str {
        "a3d-bn-relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let x = host_tensor(op, "x", s1, l1)?;
        let w = f32_values(op, "weight", s2, l2)?;
        let dy = host_tensor(op, "dy", s3, l3)?;
        let b: Vec<f32> = self
            .bias
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let err = |e| candle_err(op, e);
        let (dx, dw, db) = match &self.forward.mode {
            Mode::Train(cell) => {
                let guard = cell
                    .lock()
                    .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned")))?;
                let Some(stats) = guard.as_ref() else {
                    candle_core::bail!("{op}: the forward's batch statistics are missing");
                };
                let bn = BatchNorm {
                    weight: &w,
                    bias: &b,
                    eps: self.forward.eps,
                };
                let g = bn.train_backward(&x, stats, &dy).map_err(err)?;
                (g.dx, g.d_weight, g.d_bias)
            }
            Mode::Eval { mean, var } => {
                let a = self.forward.affine(op, &w, &b, None)?;
                let g = batchnorm::bn_relu_backward(&x, &a, &dy).map_err(err)?;
                // scale = w * invstd, shift = b - mean * scale: d_w = invstd (d_scale - mean d_shift).
                let dw = (0..w.len())
                    .map(|c| {
                        let invstd = 1.0 / (var[c] + self.forward.eps).sqrt();
                        invstd * (g.d_scale[c] - mean[c] * g.d_shift[c])
                    })
                    .collect();
                (g.dx, dw, g.d_shift)
            }
        };
        let dtype = x.dtype();
        let c = dw.len();
        let small = |v: Vec<f32>| crate::Tensor::from_vec(v, &[c]).map(|t| t.to_dtype(dtype));
        let parts = vec![dx, small(dw).map_err(err)?, small(db).map_err(err)?];
        let len = x.len() + 2 * c;
        let packed = candle_tensor(op, parts, &[len], &candle_core::Device::Cpu)?;
        let (storage, _) = packed.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(s) => Ok((s.clone(), Shape::from(len))),
            _ => candle_core::bail!("{op}: expected CPU storage"),
        }
    }
}

/// Configuration of a [`BnReluA3dConv`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BnReluA3dConvConfig {
    /// The context operator and convolution after the BN-ReLU.
    pub conv: ContextConvConfig,
    /// [`batchnorm::DEFAULT_EPS`].
    pub eps: f32,
    /// [`batchnorm::DEFAULT_MOMENTUM`].
    pub momentum: f32,
}

impl BnReluA3dConvConfig {
    /// PyTorch's BatchNorm3d defaults before `conv`.
    pub fn new(conv: ContextConvConfig) -> Self {
        BnReluA3dConvConfig {
            conv,
            eps: batchnorm::DEFAULT_EPS,
            momentum: batchnorm::DEFAULT_MOMENTUM,
        }
    }
}

/// `BatchNorm3d -> ReLU -> ContextConv`. Training mode (`forward_t(x, true)`) normalises with
/// the batch statistics, updates the running ones and counts `num_batches_tracked`; evaluation
/// mode uses the running statistics. On the CPU the BN-ReLU runs inside a3d's ops; on other
/// devices (CUDA) it is candle's tensor ops before the context convolution.
#[derive(Debug, Clone)]
pub struct BnReluA3dConv {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    conv: ContextConv,
    config: BnReluA3dConvConfig,
}

impl BnReluA3dConv {
    /// The layer with its batch norm under `norm` (e.g. `vb.pp("norm1")`) and its convolution
    /// under `conv` (e.g. `vb.pp("conv1")`). New parameters start as PyTorch's: weight 1, bias 0,
    /// running mean 0, running variance 1.
    pub fn new(
        config: BnReluA3dConvConfig,
        norm: VarBuilder,
        conv: VarBuilder,
    ) -> candle_core::Result<Self> {
        let c = config.conv.conv.in_channels;
        let weight = norm.get_with_hints(c, "weight", Init::Const(1.0))?;
        let bias = norm.get_with_hints(c, "bias", Init::Const(0.0))?;
        let running_mean =
            Var::from_tensor(&norm.get_with_hints(c, "running_mean", Init::Const(0.0))?)?;
        let running_var =
            Var::from_tensor(&norm.get_with_hints(c, "running_var", Init::Const(1.0))?)?;
        let num_batches_tracked =
            Var::from_tensor(&norm.get_with_hints((), "num_batches_tracked", Init::Const(0.0))?)?;
        Ok(BnReluA3dConv {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            conv: ContextConv::new(config.conv, conv)?,
            config,
        })
    }

    /// The statistics mode of one forward: the batch's (with the cell the op fills) or the
    /// running ones.
    fn mode(&self, train: bool) -> candle_core::Result<(Mode, Option<StatsCell>)> {
        if train {
            let cell = Arc::new(Mutex::new(None));
            return Ok((Mode::Train(cell.clone()), Some(cell)));
        }
        let f32s = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.to_dtype(candle_core::DType::F32)?.to_vec1()
        };
        Ok((
            Mode::Eval {
                mean: f32s(self.running_mean.as_tensor())?,
                var: f32s(self.running_var.as_tensor())?,
            },
            None,
        ))
    }

    /// After a training forward: the running statistics and `num_batches_tracked`, as PyTorch.
    fn update_running(
        &self,
        cell: &Mutex<Option<ChannelStats>>,
        dev: &candle_core::Device,
    ) -> candle_core::Result<()> {
        let op = "a3d-bn-relu";
        let stats = cell
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned")))?
            .clone();
        let Some(stats) = stats else {
            candle_core::bail!("{op}: the forward left no batch statistics");
        };
        self.update_running_with(&stats, dev)
    }

    /// The running update from one batch's statistics.
    fn update_running_with(
        &self,
        stats: &ChannelStats,
        dev: &candle_core::Device,
    ) -> candle_core::Result<()> {
        let op = "a3d-bn-relu";
        let dtype = self.running_mean.dtype();
        let f32s = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.to_dtype(candle_core::DType::F32)?.to_vec1()
        };
        let (mut mean, mut var) = (
            f32s(self.running_mean.as_tensor())?,
            f32s(self.running_var.as_tensor())?,
        );
        batchnorm::update_running(&mut mean, &mut var, stats, self.config.momentum)
            .map_err(|e| candle_err(op, e))?;
        self.running_mean
            .set(&Tensor::new(mean, dev)?.to_dtype(dtype)?)?;
        self.running_var
            .set(&Tensor::new(var, dev)?.to_dtype(dtype)?)?;
        self.num_batches_tracked
            .set(&(self.num_batches_tracked.as_tensor() + 1.0)?)?;
        Ok(())
    }

    /// The BN-ReLU alone (what the convolution receives).
    pub fn bn_relu_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !x.device().is_cpu() {
            return self.bn_relu_composed(x, train);
        }
        let (w, b) = (self.weight.as_ref(), self.bias.as_ref());
        let (mode, cell) = self.mode(train)?;
        let y = x.apply_op3(
            w,
            b,
            BnReluOp {
                mode,
                eps: self.config.eps,
            },
        )?;
        if let Some(cell) = cell {
            self.update_running(&cell, x.device())?;
        }
        Ok(y)
    }

    /// The BN-ReLU as candle's own tensor ops, for devices a3d's op has no kernel for here
    /// (CUDA): the same batch statistics (biased variance), running update and evaluation
    /// affine, computed in f32, and differentiated by candle's autograd (through the batch mean
    /// and variance in training mode).
    fn bn_relu_composed(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        use candle_core::DType::F32;
        let c = self.weight.dim(0)?;
        if x.rank() < 2 || x.dim(1)? != c {
            candle_core::bail!(
                "a3d-bn-relu: x {:?} needs [B, {c}, ...] for a norm of {c} channels",
                x.dims()
            );
        }
        let xf = x.to_dtype(F32)?;
        let mut per_channel = vec![1usize; x.rank()];
        per_channel[1] = c;
        let (mean, var) = if train {
            // [C, values]: every value of a channel in one row.
            let rows = xf.transpose(0, 1)?.contiguous()?.reshape((c, ()))?;
            let mean = rows.mean_keepdim(1)?;
            let var = rows.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
            let stats = ChannelStats {
                mean: mean.flatten_all()?.to_vec1()?,
                var: var.flatten_all()?.to_vec1()?,
                count: rows.dim(1)?,
            };
            self.update_running_with(&stats, x.device())?;
            (mean.flatten_all()?, var.flatten_all()?)
        } else {
            (
                self.running_mean.as_tensor().to_dtype(F32)?,
                self.running_var.as_tensor().to_dtype(F32)?,
            )
        };
        let scale = self
            .weight
            .to_dtype(F32)?
            .div(&(var + self.config.eps as f64)?.sqrt()?)?;
        let shift = self.bias.to_dtype(F32)?.sub(&mean.mul(&scale)?)?;
        xf.broadcast_mul(&scale.reshape(per_channel.as_slice())?)?
            .broadcast_add(&shift.reshape(per_channel.as_slice())?)?
            .relu()?
            .to_dtype(x.dtype())
    }

    /// Whether the whole layer runs as one a3d op with the BN-ReLU as the convolution's
    /// prologue: A3D fusion or none, `groups == 1`, CPU tensors.
    fn fused(&self, x: &Tensor) -> bool {
        matches!(self.conv.fusion(), ContextFusion::A3d | ContextFusion::None)
            && self.conv.conv().runs_a3d_op(x)
    }

    /// The whole layer; `thickness` is for AlignShift (see [`ContextConv::forward_with_thickness`]).
    /// With A3D fusion (or none) on the CPU the BN-ReLU runs inside the convolution's op (the
    /// pre-activated tensor is never written); otherwise it is its own op before the layer.
    pub fn forward_with_thickness(
        &self,
        x: &Tensor,
        thickness: Option<&[f32]>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        if !self.fused(x) {
            return self
                .conv
                .forward_with_thickness(&self.bn_relu_t(x, train)?, thickness);
        }
        let (mode, cell) = self.mode(train)?;
        let prologue = Prologue {
            mode,
            eps: self.config.eps,
        };
        let y = self
            .conv
            .conv()
            .forward_a3d_with(x, Some((prologue, &self.weight, &self.bias)))?;
        if let Some(cell) = cell {
            self.update_running(&cell, x.device())?;
        }
        Ok(y)
    }

    /// The convolution part.
    pub fn conv(&self) -> &ContextConv {
        &self.conv
    }

    /// `norm.running_mean` and `norm.running_var`.
    pub fn running_stats(&self) -> (&Tensor, &Tensor) {
        (self.running_mean.as_tensor(), self.running_var.as_tensor())
    }

    /// `norm.num_batches_tracked`.
    pub fn num_batches_tracked(&self) -> &Tensor {
        self.num_batches_tracked.as_tensor()
    }
}

impl ModuleT for BnReluA3dConv {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward_with_thickness(x, None, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn layer(map: &VarMap) -> BnReluA3dConv {
        let vb = VarBuilder::from_varmap(map, DType::F32, &Device::Cpu);
        let conv = ContextConvConfig {
            conv: crate::candle::A3dConvConfig::new(5, 4, 3),
            fusion: ContextFusion::A3d,
        };
        let layer =
            BnReluA3dConv::new(BnReluA3dConvConfig::new(conv), vb.pp("norm"), vb.pp("conv"))
                .unwrap();
        let data = map.data().lock().unwrap();
        let w = Tensor::new(&[0.7f32, -1.2, 1.5, 0.3, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.1f32, 0.4, -0.3, 0.0, -0.2], &Device::Cpu).unwrap();
        data["norm.weight"].set(&w).unwrap();
        data["norm.bias"].set(&b).unwrap();
        layer
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The composed BN-ReLU (the path of CUDA tensors) against a3d's op on the CPU: outputs,
    /// gradients of x, weight and bias, and the running statistics, in both modes.
    #[test]
    fn composed_bn_relu_equals_the_cpu_op() {
        let x = Tensor::randn(0.3f32, 1.7, (2, 5, 3, 7, 9), &Device::Cpu).unwrap();
        let x = candle_core::Var::from_tensor(&x).unwrap();
        let probe = Tensor::randn(0.0f32, 1.0, (2, 5, 3, 7, 9), &Device::Cpu).unwrap();
        for train in [true, false] {
            let (m1, m2) = (VarMap::new(), VarMap::new());
            let (op, composed) = (layer(&m1), layer(&m2));
            let y1 = op.bn_relu_t(x.as_tensor(), train).unwrap();
            let y2 = composed.bn_relu_composed(x.as_tensor(), train).unwrap();
            assert!(max_diff(&y1, &y2) < 1e-5, "train {train}: outputs");
            let g1 = (&y1 * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&y2 * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grads = |g: &candle_core::backprop::GradStore, l: &BnReluA3dConv| {
                [
                    g.get(x.as_tensor()).unwrap().clone(),
                    g.get(&l.weight).unwrap().clone(),
                    g.get(&l.bias).unwrap().clone(),
                ]
            };
            for (k, (a, b)) in grads(&g1, &op)
                .iter()
                .zip(grads(&g2, &composed).iter())
                .enumerate()
            {
                let scale = a
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    max_diff(a, b) <= 1e-4 * scale.max(1.0),
                    "train {train}: gradient {k}"
                );
            }
            let (ma, va) = op.running_stats();
            let (mb, vb) = composed.running_stats();
            assert!(
                max_diff(ma, mb) < 1e-6 && max_diff(va, vb) < 1e-5,
                "train {train}: running"
            );
            assert_eq!(
                op.num_batches_tracked().to_vec0::<f32>().unwrap(),
                composed.num_batches_tracked().to_vec0::<f32>().unwrap()
            );
        }
    }
}
