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
use super::{ContextConv, ContextConvConfig};
use crate::batchnorm::{self, Affine, BatchNorm, ChannelStats};
use crate::dtype::with_dtype;

/// Which statistics the op normalises with.
#[derive(Debug, Clone)]
enum Mode {
    /// The batch's own; the forward leaves them in the cell for the running update and the
    /// backward.
    Train(Arc<Mutex<Option<ChannelStats>>>),
    /// Fixed running statistics.
    Eval { mean: Vec<f32>, var: Vec<f32> },
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
/// mode uses the running statistics. The input must be on the CPU.
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

    /// The BN-ReLU alone (what the convolution receives).
    pub fn bn_relu_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let op = "a3d-bn-relu";
        let (w, b) = (self.weight.as_ref(), self.bias.as_ref());
        if !train {
            let mode = Mode::Eval {
                mean: self
                    .running_mean
                    .as_tensor()
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?,
                var: self
                    .running_var
                    .as_tensor()
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?,
            };
            return x.apply_op3(
                w,
                b,
                BnReluOp {
                    mode,
                    eps: self.config.eps,
                },
            );
        }
        let cell = Arc::new(Mutex::new(None));
        let y = x.apply_op3(
            w,
            b,
            BnReluOp {
                mode: Mode::Train(cell.clone()),
                eps: self.config.eps,
            },
        )?;
        let stats = cell
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned")))?
            .clone();
        let Some(stats) = stats else {
            candle_core::bail!("{op}: the forward left no batch statistics");
        };
        let dtype = self.running_mean.dtype();
        let mut mean: Vec<f32> = self
            .running_mean
            .as_tensor()
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        let mut var: Vec<f32> = self
            .running_var
            .as_tensor()
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        batchnorm::update_running(&mut mean, &mut var, &stats, self.config.momentum)
            .map_err(|e| candle_err(op, e))?;
        let dev = x.device();
        self.running_mean
            .set(&Tensor::new(mean, dev)?.to_dtype(dtype)?)?;
        self.running_var
            .set(&Tensor::new(var, dev)?.to_dtype(dtype)?)?;
        self.num_batches_tracked
            .set(&(self.num_batches_tracked.as_tensor() + 1.0)?)?;
        Ok(y)
    }

    /// The whole layer; `thickness` is for AlignShift (see [`ContextConv::forward_with_thickness`]).
    pub fn forward_with_thickness(
        &self,
        x: &Tensor,
        thickness: Option<&[f32]>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        self.conv
            .forward_with_thickness(&self.bn_relu_t(x, train)?, thickness)
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
