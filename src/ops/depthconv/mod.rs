//! The symmetric depth convolution (I3D-style, depthwise): one K-tap kernel per channel, shared
//! by every slice, zero padding, odd K (shared/docs/operator.md). It is A3D fusion restricted
//! to a banded Toeplitz matrix.
//!
//! ```text
//! r = (K - 1) / 2
//! forward      y[b,c,k,p]  = sum_t v[t,c] * x[b,c,k+t-r,p]          (terms outside 0..D left out)
//! grad input   dx[b,c,d,p] = sum_t v[t,c] * dy[b,c,d-t+r,p]
//! grad weight  dv[t,c]     = sum_{b,k,p} x[b,c,k+t-r,p] * dy[b,c,k,p]
//! ```
//!
//! `x` is `[B, C, D, H, W]`, `v` is `[K, C]` (tap, channel). Storage f32, f16 or bf16, all
//! arguments alike; arithmetic f32, taps accumulated in increasing order on every backend, the
//! weight gradient bitwise reproducible for any thread count. Gradients use fusion's
//! [`Grads`] / [`Gradients`] (`dw` is `dv`).
//!
//! Layout of this op: `cpu_kernel.rs` (CPU), `reference.rs` (float64), `launch.rs` (grids, used
//! by CUDA and the emulation), `kernels/depthconv.cu`; tests `tests/depthconv.rs`; bench
//! `a3d bench depthconv` and `benches/context_ops.rs`.

pub(crate) mod cpu_kernel;
#[cfg(feature = "cuda")]
#[path = "cuda_kernel.rs"]
pub mod cuda;
#[cfg(feature = "emulation")]
pub(crate) mod emulated;
#[cfg_attr(not(any(feature = "cuda", feature = "emulation")), allow(dead_code))]
pub(crate) mod launch;
pub mod reference;

use crate::dtype::with_dtype;
use crate::fusion::{FusionDims, Gradients, Grads};
use crate::ops::common::{check_dtype, check_rank, check_shape, TensorInfo};
use crate::tensor::element_count;
use crate::{Error, Result, Tensor};

/// The reference's kernel size.
pub const DEFAULT_TAPS: usize = 3;

/// Sizes of one depth-convolution problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthConvDims {
    /// The input's sizes.
    pub input: FusionDims,
    /// K: taps of the kernel (odd).
    pub taps: usize,
}

impl DepthConvDims {
    /// `r = (K - 1) / 2`: taps on each side of the centre.
    pub fn radius(&self) -> usize {
        self.taps / 2
    }

    /// The shape of `v` and `dv`: `[K, C]`.
    pub fn weight_shape(&self) -> [usize; 2] {
        [self.taps, self.input.channels]
    }
}

/// Validates `x` and `v` and returns the sizes.
pub(crate) fn check_forward<T: TensorInfo>(x: &T, v: &T) -> Result<DepthConvDims> {
    let input = FusionDims::from_input_shape(x.shape())?;
    check_rank("v", 2, "[K, C]", v.shape())?;
    let taps = v.shape()[0];
    if taps.is_multiple_of(2) {
        return Err(Error::InvalidArgument {
            arg: "v",
            message: format!(
                "the depth kernel must have an odd number of taps (centred on the slice), got {taps}"
            ),
        });
    }
    check_shape("v", &[taps, input.channels], v.shape())?;
    check_dtype("v", x.dtype(), v.dtype())?;
    Ok(DepthConvDims { input, taps })
}

/// Validates `x`, `v` and `dy` and returns the sizes.
pub(crate) fn check_backward<T: TensorInfo>(x: &T, v: &T, dy: &T) -> Result<DepthConvDims> {
    let dims = check_forward(x, v)?;
    dims.input.check_input_like("dy", dy.shape())?;
    check_dtype("dy", x.dtype(), dy.dtype())?;
    Ok(dims)
}

fn check_outputs<T: TensorInfo>(
    dims: &DepthConvDims,
    dtype: crate::DType,
    input_like: &[(&'static str, Option<&T>)],
    dv: Option<&T>,
) -> Result<()> {
    for (arg, t) in input_like {
        if let Some(t) = t {
            dims.input.check_input_like(arg, t.shape())?;
            check_dtype(arg, dtype, t.dtype())?;
        }
    }
    if let Some(dv) = dv {
        check_shape("dw", &dims.weight_shape(), dv.shape())?;
        check_dtype("dw", dtype, dv.dtype())?;
    }
    Ok(())
}

/// `y = depth_conv(x, v)`: a new tensor of `x`'s shape and dtype.
///
/// ```
/// use a3d::{depthconv, Tensor};
/// // One channel, D = 3, taps (1, 2, 3): y[k] = 1*x[k-1] + 2*x[k] + 3*x[k+1], zero padded.
/// let x = Tensor::from_vec(vec![1.0f32, 10.0, 100.0], &[1, 1, 3, 1, 1])?;
/// let v = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3, 1])?;
/// let y = depthconv::forward(&x, &v)?;
/// assert_eq!(y.to_f32_vec(), [32.0, 321.0, 210.0]);
/// # Ok::<(), a3d::Error>(())
/// ```
pub fn forward(x: &Tensor, v: &Tensor) -> Result<Tensor> {
    check_forward(x, v)?;
    let mut y = Tensor::zeros(x.shape(), x.dtype())?;
    forward_into(x, v, &mut y)?;
    Ok(y)
}

/// `y = depth_conv(x, v)` into an existing tensor of `x`'s shape and dtype.
pub fn forward_into(x: &Tensor, v: &Tensor, y: &mut Tensor) -> Result<()> {
    let dims = check_forward(x, v)?;
    check_outputs(&dims, x.dtype(), &[("y", Some(&*y))], None)?;
    if dims.input.is_empty() {
        return Ok(());
    }
    let vf = v.to_f32_vec();
    with_dtype!(x.dtype(), T => cpu_kernel::forward(&dims, x.as_slice::<T>()?, &vf, y.as_mut_slice::<T>()?));
    Ok(())
}

/// The requested gradients of `y = depth_conv(x, v)` given `dy` (`dw` is `dv`, `[K, C]`).
/// `x` is read only when `dw` is requested.
pub fn backward(x: &Tensor, v: &Tensor, dy: &Tensor, grads: Grads) -> Result<Gradients> {
    let dims = check_backward(x, v, dy)?;
    let mut dx = match grads.input {
        true => Some(Tensor::zeros(x.shape(), x.dtype())?),
        false => None,
    };
    let mut dw = match grads.weight {
        true => Some(Tensor::zeros(&dims.weight_shape(), x.dtype())?),
        false => None,
    };
    backward_into(x, v, dy, dx.as_mut(), dw.as_mut())?;
    Ok(Gradients { dx, dw })
}

/// Gradients into existing tensors, each only when given; every element of a given output is
/// overwritten.
pub fn backward_into(
    x: &Tensor,
    v: &Tensor,
    dy: &Tensor,
    dx: Option<&mut Tensor>,
    dw: Option<&mut Tensor>,
) -> Result<()> {
    let dims = check_backward(x, v, dy)?;
    check_outputs(&dims, x.dtype(), &[("dx", dx.as_deref())], dw.as_deref())?;
    let vf = v.to_f32_vec();
    with_dtype!(x.dtype(), T => {
        let dx = dx.map(|t| t.as_mut_slice::<T>()).transpose()?;
        let dw = dw.map(|t| t.as_mut_slice::<T>()).transpose()?;
        if dims.input.is_empty() {
            // No pixels, slices or samples: the sums are empty.
            if let Some(dw) = dw {
                dw.fill(<T as crate::Element>::from_f32(0.0));
            }
            return Ok(());
        }
        cpu_kernel::backward(&dims, x.as_slice::<T>()?, &vf, dy.as_slice::<T>()?, dx, dw);
    });
    Ok(())
}

/// Depth-convolution weights `[K, C]` f32: the centre tap 1 plus U(-0.1, 0.1) noise on every
/// tap (so that a new layer starts close to the identity, as A3D's fusion does), reproducible
/// from `seed`.
pub fn init_weights(taps: usize, channels: usize, seed: u64) -> Result<Tensor> {
    if taps.is_multiple_of(2) {
        return Err(Error::InvalidArgument {
            arg: "taps",
            message: format!("must be odd, got {taps}"),
        });
    }
    let shape = [taps, channels];
    element_count(&shape)?;
    let mut rng = crate::rng::SplitMix64::new(seed);
    let mut v = Vec::with_capacity(taps * channels);
    for t in 0..taps {
        for _ in 0..channels {
            let centre = if t == taps / 2 { 1.0 } else { 0.0 };
            v.push(centre + rng.uniform(-0.1, 0.1) as f32);
        }
    }
    Tensor::from_vec(v, &shape)
}
