//! A3D fusion as a candle custom op: [`fuse`], with a3d's own backward kernels (CPU, and CUDA
//! with feature `candle-cuda`).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::storage::{candle_err, contiguous, info, weights_f32};
use crate::fusion::{check_backward, check_forward, FusionDims};
use crate::ops::fusion::cpu_kernel;
use crate::Element;
#[cfg(feature = "candle-cuda")]
use crate::{dtype::with_dtype, TensorInfo};

/// Name of the forward op, as candle reports it in errors.
const FORWARD_NAME: &str = "a3d-fusion";

fn forward_typed<T: Element>(
    dims: &FusionDims,
    x: &[T],
    lx: &Layout,
    w: &[T],
    lw: &Layout,
) -> candle_core::Result<Vec<T>> {
    let x = contiguous(x, lx)?;
    let w = weights_f32(&contiguous(w, lw)?);
    let mut y = vec![T::from_f32(0.0); dims.len()];
    if !dims.is_empty() {
        cpu_kernel::forward(dims, &x, &w, &mut y);
    }
    Ok(y)
}

/// Which gradient a backward op computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Grad {
    Input,
    Weight,
}

fn backward_typed<T: Element>(
    grad: Grad,
    dims: &FusionDims,
    (x, lx): (&[T], &Layout),
    (w, lw): (&[T], &Layout),
    (dy, ldy): (&[T], &Layout),
) -> candle_core::Result<Vec<T>> {
    let w = weights_f32(&contiguous(w, lw)?);
    let dy = contiguous(dy, ldy)?;
    let zero = T::from_f32(0.0);
    match grad {
        Grad::Input => {
            let mut dx = vec![zero; dims.len()];
            if !dims.is_empty() {
                // The kernel does not read `x` when only `dx` is asked for; it gets `dy` (same
                // shape) so that `x` need not be made contiguous.
                cpu_kernel::backward(dims, &dy, &w, &dy, Some(&mut dx), None);
            }
            Ok(dx)
        }
        Grad::Weight => {
            let x = contiguous(x, lx)?;
            let mut dw = vec![zero; dims.depth * dims.depth * dims.channels];
            if !dims.is_empty() {
                cpu_kernel::backward(dims, &x, &w, &dy, None, Some(&mut dw));
            }
            Ok(dw)
        }
    }
}

/// `y = fuse(x, w)` as a candle op: `x` `[B, C, D, H, W]`, `w` `[D, D, C]`, same dtype.
#[derive(Debug, Clone, Copy, Default)]
pub struct FusionOp;

impl CustomOp2 for FusionOp {
    fn name(&self) -> &'static str {
        FORWARD_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let dims = check_forward(&info(op, "x", s1, l1)?, &info(op, "w", s2, l2)?)
            .map_err(|e| candle_err(op, e))?;
        let y = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(forward_typed(&dims, x, l1, w, l2)?)
            }
            (CpuStorage::F16(x), CpuStorage::F16(w)) => {
                CpuStorage::F16(forward_typed(&dims, x, l1, w, l2)?)
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => {
                CpuStorage::BF16(forward_typed(&dims, x, l1, w, l2)?)
            }
            _ => candle_core::bail!("{op}: `x` and `w` must share a dtype (f32, f16 or bf16)"),
        };
        Ok((y, l1.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::candle_cuda::{arg, forward};
        let op = self.name();
        let (xa, wa) = (arg(op, "x", s1, l1)?, arg(op, "w", s2, l2)?);
        let dims = check_forward(&xa, &wa).map_err(|e| candle_err(op, e))?;
        let (x, w) = ((s1, l1), (s2, l2));
        let y = with_dtype!(xa.dtype(), T => forward::<T>(op, &dims, x, w)?);
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(w, dy, &FusionGradOp(Grad::Input))?;
        let dw = x.apply_op3_no_bwd(w, dy, &FusionGradOp(Grad::Weight))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// One gradient of the fusion, from `(x, w, dy)`: a3d's own backward kernels.
struct FusionGradOp(Grad);

impl CustomOp3 for FusionGradOp {
    fn name(&self) -> &'static str {
        match self.0 {
            Grad::Input => "a3d-fusion-grad-input",
            Grad::Weight => "a3d-fusion-grad-weight",
        }
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
        let dims = check_backward(
            &info(op, "x", s1, l1)?,
            &info(op, "w", s2, l2)?,
            &info(op, "dy", s3, l3)?,
        )
        .map_err(|e| candle_err(op, e))?;
        let g = self.0;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(dy)) => {
                CpuStorage::F32(backward_typed(g, &dims, (x, l1), (w, l2), (dy, l3))?)
            }
            (CpuStorage::F16(x), CpuStorage::F16(w), CpuStorage::F16(dy)) => {
                CpuStorage::F16(backward_typed(g, &dims, (x, l1), (w, l2), (dy, l3))?)
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w), CpuStorage::BF16(dy)) => {
                CpuStorage::BF16(backward_typed(g, &dims, (x, l1), (w, l2), (dy, l3))?)
            }
            _ => candle_core::bail!("{op}: `x`, `w` and `dy` must share a dtype"),
        };
        let shape = match g {
            Grad::Input => l1.shape().clone(),
            Grad::Weight => l2.shape().clone(),
        };
        Ok((out, shape))
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
        use crate::candle_cuda::{arg, gradient};
        let op = self.name();
        let xa = arg(op, "x", s1, l1)?;
        let dims = check_backward(&xa, &arg(op, "w", s2, l2)?, &arg(op, "dy", s3, l3)?)
            .map_err(|e| candle_err(op, e))?;
        let input = matches!(self.0, Grad::Input);
        let args = ((s1, l1), (s2, l2), (s3, l3));
        let out =
            with_dtype!(xa.dtype(), T => gradient::<T>(op, input, &dims, args.0, args.1, args.2)?);
        let shape = if input {
            l1.shape().clone()
        } else {
            l2.shape().clone()
        };
        Ok((out, shape))
    }
}

/// `y = fuse(x, w)`: `x` `[B, C, D, H, W]`, `w` `[D, D, C]` (input slice, output slice,
/// channel), both f32, f16 or bf16 on the CPU. Differentiable with respect to both.
pub fn fuse(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op2(w, FusionOp)
}
