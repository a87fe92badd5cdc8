//! `a3d bench tsm | alignshift | depthconv`: the symmetric context operators on the CPU, with
//! the same rows and JSON keys as `a3d bench fusion` and a copy of the same bytes timed in the
//! same interleaved rounds.

use crate::bench::{interleaved_medians_ms, Copy, Row, RowSet};
use a3d::shift::Shift;
use a3d::{depthconv, DType, Tensor};

/// Which symmetric operator a run times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextOp {
    Tsm,
    AlignShift,
    DepthConv,
}

impl ContextOp {
    fn name(self) -> &'static str {
        match self {
            ContextOp::Tsm => "tsm",
            ContextOp::AlignShift => "alignshift",
            ContextOp::DepthConv => "depthconv",
        }
    }
}

/// U(-1, 1) values of `shape` as `dtype`, every allocation fallible: a shape too large for
/// this machine is a typed out-of-memory error, not an abort.
pub fn random_tensor(
    shape: &[usize],
    dtype: DType,
    rng: &mut a3d::rng::SplitMix64,
) -> Result<Tensor, String> {
    let mut t = Tensor::zeros(shape, dtype).map_err(|e| e.to_string())?;
    fn fill<T: a3d::tensor::HostElement>(
        t: &mut Tensor,
        rng: &mut a3d::rng::SplitMix64,
    ) -> Result<(), String> {
        for v in t.as_mut_slice::<T>().map_err(|e| e.to_string())? {
            *v = T::from_f32(rng.uniform(-1.0, 1.0) as f32);
        }
        Ok(())
    }
    match dtype {
        DType::F32 => fill::<f32>(&mut t, rng)?,
        DType::F16 => fill::<half::f16>(&mut t, rng)?,
        DType::BF16 => fill::<half::bf16>(&mut t, rng)?,
    }
    Ok(t)
}

/// Forward and backward of `op` on the CPU. AlignShift runs with a 5 mm slice interval
/// (alpha 0.6, every shifted channel does arithmetic); depthconv with K = 3.
pub fn context_cpu(
    op: ContextOp,
    shape: [usize; 5],
    dtype: DType,
    runs: usize,
) -> Result<Vec<Row>, String> {
    let s = |e: a3d::Error| e.to_string();
    let mut rng = a3d::rng::SplitMix64::new(0x5eed);
    let x = random_tensor(&shape, dtype, &mut rng)?;
    let dy = random_tensor(&shape, dtype, &mut rng)?;
    let mut y = Tensor::zeros(&shape, dtype).map_err(s)?;
    let mut dx = Tensor::zeros(&shape, dtype).map_err(s)?;
    let x_bytes = x.size_in_bytes();
    let mut copy = Copy::try_new(x_bytes)?;
    // Medians of (copy, forward, backward), and the bytes the backward must move.
    let (medians, bwd_bytes) = match op {
        ContextOp::Tsm | ContextOp::AlignShift => {
            let shift = if op == ContextOp::Tsm {
                Shift::tsm(Shift::DEFAULT_FOLD_DIV).map_err(s)?
            } else {
                let thickness = vec![5.0; shape[0]];
                Shift::align_shift(&thickness, 2.0, false, Shift::DEFAULT_FOLD_DIV).map_err(s)?
            };
            // Valid arguments: checked once so the timed calls cannot fail.
            shift.forward_into(&x, &mut y).map_err(s)?;
            shift.backward_into(&dy, &mut dx).map_err(s)?;
            let mut run_copy = || copy.run();
            let mut run_forward = || {
                let _ = shift.forward_into(&x, &mut y);
            };
            let mut run_backward = || {
                let _ = shift.backward_into(&dy, &mut dx);
            };
            let m = interleaved_medians_ms(
                runs,
                &mut [&mut run_copy, &mut run_forward, &mut run_backward],
            );
            (m, 2 * x_bytes)
        }
        ContextOp::DepthConv => {
            let v = depthconv::init_weights(depthconv::DEFAULT_TAPS, shape[1], 7)
                .map_err(s)?
                .to_dtype(dtype);
            let mut dv = Tensor::zeros(v.shape(), dtype).map_err(s)?;
            depthconv::forward_into(&x, &v, &mut y).map_err(s)?;
            depthconv::backward_into(&x, &v, &dy, Some(&mut dx), Some(&mut dv)).map_err(s)?;
            let mut run_copy = || copy.run();
            let mut run_forward = || {
                let _ = depthconv::forward_into(&x, &v, &mut y);
            };
            let mut run_backward = || {
                let _ = depthconv::backward_into(&x, &v, &dy, Some(&mut dx), Some(&mut dv));
            };
            let m = interleaved_medians_ms(
                runs,
                &mut [&mut run_copy, &mut run_forward, &mut run_backward],
            );
            (m, 3 * x_bytes)
        }
    };
    let rows = RowSet::cpu(op.name(), dtype, &shape, medians[0]);
    Ok(vec![
        rows.row("forward", medians[1], 2 * x_bytes),
        rows.row("backward", medians[2], bwd_bytes),
    ])
}

/// Forward and backward of `op` on a GPU, next to a device-to-device copy of x's bytes timed
/// the same way in the same run (CUDA events, medians).
#[cfg(feature = "cuda")]
pub fn context_cuda(
    dev: &a3d::cuda::CudaDevice,
    op: ContextOp,
    shape: [usize; 5],
    dtype: DType,
    runs: usize,
) -> Result<Vec<Row>, String> {
    use a3d::cuda::CudaTensor;
    let s = |e: a3d::Error| e.to_string();
    let mut rng = a3d::rng::SplitMix64::new(0x5eed);
    let x = CudaTensor::upload(&random_tensor(&shape, dtype, &mut rng)?, dev).map_err(s)?;
    let dy = CudaTensor::upload(&random_tensor(&shape, dtype, &mut rng)?, dev).map_err(s)?;
    let mut y = CudaTensor::zeros(&shape, dtype, dev).map_err(s)?;
    let mut dx = CudaTensor::zeros(&shape, dtype, dev).map_err(s)?;
    let mut copy_dst = CudaTensor::zeros(&shape, dtype, dev).map_err(s)?;
    let x_bytes = shape.iter().product::<usize>() * dtype.size_in_bytes();
    let copy = crate::bench::median_gpu_ms(dev, runs, || copy_dst.copy_from(&x))?;
    let (fwd, bwd, bwd_bytes) = match op {
        ContextOp::Tsm | ContextOp::AlignShift => {
            let shift = if op == ContextOp::Tsm {
                Shift::tsm(Shift::DEFAULT_FOLD_DIV).map_err(s)?
            } else {
                Shift::align_shift(&vec![5.0; shape[0]], 2.0, false, Shift::DEFAULT_FOLD_DIV)
                    .map_err(s)?
            };
            let f = crate::bench::median_gpu_ms(dev, runs, || {
                a3d::shift::cuda::forward_into(&shift, &x, &mut y)
            })?;
            let b = crate::bench::median_gpu_ms(dev, runs, || {
                a3d::shift::cuda::backward_into(&shift, &dy, &mut dx)
            })?;
            (f, b, 2 * x_bytes)
        }
        ContextOp::DepthConv => {
            let v_host = depthconv::init_weights(depthconv::DEFAULT_TAPS, shape[1], 7)
                .map_err(s)?
                .to_dtype(dtype);
            let v = CudaTensor::upload(&v_host, dev).map_err(s)?;
            let mut dv = CudaTensor::zeros(v_host.shape(), dtype, dev).map_err(s)?;
            let f = crate::bench::median_gpu_ms(dev, runs, || {
                a3d::depthconv::cuda::forward_into(&x, &v, &mut y)
            })?;
            let b = crate::bench::median_gpu_ms(dev, runs, || {
                a3d::depthconv::cuda::backward_into(&x, &v, &dy, Some(&mut dx), Some(&mut dv))
            })?;
            (f, b, 3 * x_bytes)
        }
    };
    let rows = RowSet::cuda(op.name(), dev, dtype, &shape, copy);
    Ok(vec![
        rows.row("forward", fwd, 2 * x_bytes),
        rows.row("backward", bwd, bwd_bytes),
    ])
}
