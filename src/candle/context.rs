//! The symmetric context operators as candle custom ops with a3d's own backward: [`tsm`],
//! [`align_shift`] and [`depth_conv`] (f32 / f16 / bf16; CPU storage, and CUDA storage with
//! feature `candle-cuda`, where a3d's kernels run on candle's device memory and stream).
//!
//! Each forward runs a3d's CPU kernel on a contiguous view of candle's storage. The shift
//! backward is the transposed shift of `dy`; the depth-convolution backward computes `dx` and
//! `dv` in one pass over `dy` and hands candle both through one packed tensor.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::storage::{candle_err, cpu_storage, host_tensor};
use crate::fusion::Grads;
use crate::shift::Shift;
#[cfg(feature = "candle-cuda")]
use crate::{dtype::with_dtype, TensorInfo};

/// TSM or AlignShift as a candle op on `x` `[B, C, D, H, W]` (see [`crate::shift`]).
#[derive(Debug, Clone)]
pub struct ShiftOp {
    shift: Shift,
    backward: bool,
}

impl ShiftOp {
    /// The op applying `shift` (its gradient is the transposed shift).
    pub fn new(shift: Shift) -> ShiftOp {
        ShiftOp {
            shift,
            backward: false,
        }
    }
}

impl CustomOp1 for ShiftOp {
    fn name(&self) -> &'static str {
        match (self.shift.is_align_shift(), self.backward) {
            (false, false) => "a3d-tsm",
            (false, true) => "a3d-tsm-backward",
            (true, false) => "a3d-alignshift",
            (true, true) => "a3d-alignshift-backward",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let arg = if self.backward { "dy" } else { "x" };
        let input = host_tensor(op, arg, s, l)?;
        let out = if self.backward {
            self.shift.backward(&input)
        } else {
            self.shift.forward(&input)
        }
        .map_err(|e| candle_err(op, e))?;
        Ok((cpu_storage(op, out)?, l.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let op = self.name();
        let arg = crate::candle_cuda::arg(op, if self.backward { "dy" } else { "x" }, s, l)?;
        let out = with_dtype!(arg.dtype(), T => crate::candle_cuda::shift::<T>(op, &self.shift, self.backward, (s, l))?);
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let transposed = ShiftOp {
            shift: self.shift.clone(),
            backward: !self.backward,
        };
        Ok(Some(dy.apply_op1(transposed)?))
    }
}

/// TSM: `fold = C / fold_div` channels take the next slice, as many the previous one
/// (`fold_div` [`Shift::DEFAULT_FOLD_DIV`] in the reference). Differentiable.
pub fn tsm(x: &Tensor, fold_div: usize) -> candle_core::Result<Tensor> {
    let shift = Shift::tsm(fold_div).map_err(|e| candle_err("a3d-tsm", e))?;
    x.apply_op1(ShiftOp::new(shift))
}

/// AlignShift with each sample's slice `thickness` in mm (one per sample of `x`),
/// `ref_thickness` (2.0 in the reference) and the `padding_zero` flag. Differentiable with
/// respect to `x`.
pub fn align_shift(
    x: &Tensor,
    thickness: &[f32],
    ref_thickness: f32,
    padding_zero: bool,
    fold_div: usize,
) -> candle_core::Result<Tensor> {
    let shift = Shift::align_shift(thickness, ref_thickness, padding_zero, fold_div)
        .map_err(|e| candle_err("a3d-alignshift", e))?;
    x.apply_op1(ShiftOp::new(shift))
}

/// The depth convolution `y = depth_conv(x, v)` as a candle op: `x` `[B, C, D, H, W]`, `v`
/// `[K, C]`, one dtype.
#[derive(Debug, Clone, Copy, Default)]
pub struct DepthConvOp;

impl CustomOp2 for DepthConvOp {
    fn name(&self) -> &'static str {
        "a3d-depthconv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let x = host_tensor(op, "x", s1, l1)?;
        let v = host_tensor(op, "v", s2, l2)?;
        let y = crate::depthconv::forward(&x, &v).map_err(|e| candle_err(op, e))?;
        Ok((cpu_storage(op, y)?, l1.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::candle_cuda::{arg, depthconv_forward};
        let op = self.name();
        let xa = arg(op, "x", s1, l1)?;
        let dims = crate::depthconv::check_forward(&xa, &arg(op, "v", s2, l2)?)
            .map_err(|e| candle_err(op, e))?;
        let y =
            with_dtype!(xa.dtype(), T => depthconv_forward::<T>(op, &dims, (s1, l1), (s2, l2))?);
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(v, dy, &DepthConvGradOp)?;
        let n = x.elem_count();
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dv = packed.narrow(0, n, v.elem_count())?.reshape(v.shape())?;
        Ok((Some(dx), Some(dv)))
    }
}

/// Both gradients of the depth convolution from `(x, v, dy)` in one pass, packed as
/// `[dx flattened, dv flattened]`.
struct DepthConvGradOp;

impl CustomOp3 for DepthConvGradOp {
    fn name(&self) -> &'static str {
        "a3d-depthconv-backward"
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
        let v = host_tensor(op, "v", s2, l2)?;
        let dy = host_tensor(op, "dy", s3, l3)?;
        let g =
            crate::depthconv::backward(&x, &v, &dy, Grads::BOTH).map_err(|e| candle_err(op, e))?;
        let missing = || candle_core::Error::Msg(format!("{op}: a gradient is missing"));
        let (dx, dv) = (g.dx.ok_or_else(missing)?, g.dw.ok_or_else(missing)?);
        let len = dx.len() + dv.len();
        let packed = match (cpu_storage(op, dx)?, cpu_storage(op, dv)?) {
            (CpuStorage::F32(mut a), CpuStorage::F32(b)) => {
                a.extend(b);
                CpuStorage::F32(a)
            }
            (CpuStorage::F16(mut a), CpuStorage::F16(b)) => {
                a.extend(b);
                CpuStorage::F16(a)
            }
            (CpuStorage::BF16(mut a), CpuStorage::BF16(b)) => {
                a.extend(b);
                CpuStorage::BF16(a)
            }
            _ => candle_core::bail!("{op}: gradients of different dtypes"),
        };
        Ok((packed, Shape::from(len)))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::candle_cuda::{arg, depthconv_grads};
        let op = self.name();
        let xa = arg(op, "x", s1, l1)?;
        let dims =
            crate::depthconv::check_backward(&xa, &arg(op, "v", s2, l2)?, &arg(op, "dy", s3, l3)?)
                .map_err(|e| candle_err(op, e))?;
        let len = dims.input.len() + dims.taps * dims.input.channels;
        let out = with_dtype!(xa.dtype(), T => depthconv_grads::<T>(op, &dims, (s1, l1), (s2, l2), (s3, l3))?);
        Ok((out, Shape::from(len)))
    }
}

/// `y = depth_conv(x, v)`: `x` `[B, C, D, H, W]`, `v` `[K, C]` (odd K, [`crate::depthconv`]),
/// on the CPU. Differentiable with respect to both.
pub fn depth_conv(x: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op2(v, DepthConvOp)
}
