//! A3D fusion: every channel mixes its D slices with its own DxD matrix.
//!
//! ```text
//! forward      y[b,c,k,h,w]  = sum_d  x[b,c,d,h,w] * w[d,k,c]
//! grad input   dx[b,c,d,h,w] = sum_k  dy[b,c,k,h,w] * w[d,k,c]
//! grad weight  dw[d,k,c]     = sum_{b,h,w} x[b,c,d,h,w] * dy[b,c,k,h,w]
//! ```
//!
//! `x` is `[B, C, D, H, W]` (NCDHW), `w` is `[D, D, C]` (input slice, output slice, channel).
//! Storage may be f32, f16 or bf16 (all arguments alike); arithmetic is f32. The weight gradient
//! is bitwise reproducible for any thread count.
//!
//! Layout of this op: `cpu_kernel.rs` (the CPU path), `reference.rs` (float64 definition),
//! `kernels/fusion.cu` (CUDA), tests in `tests/fusion.rs`, bench in `benches/fusion.rs`.

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
pub(crate) use crate::ops::common::{check_dtype, check_shape};
use crate::tensor::element_count;
use crate::TensorInfo;
use crate::{DType, Error, Result, Tensor};

/// Sizes of one fusion problem, derived from `x`'s shape `[B, C, D, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FusionDims {
    /// B
    pub batch: usize,
    /// C
    pub channels: usize,
    /// D
    pub depth: usize,
    /// H
    pub height: usize,
    /// W
    pub width: usize,
    /// H * W
    pub pixels: usize,
}

impl FusionDims {
    /// Checks that `x_shape` is `[B, C, D, H, W]` with a countable number of elements.
    pub fn from_input_shape(x_shape: &[usize]) -> Result<FusionDims> {
        Self::from_input_shape_of("x", x_shape)
    }

    /// [`FusionDims::from_input_shape`] for an argument named `arg` (errors name it).
    pub(crate) fn from_input_shape_of(arg: &'static str, x_shape: &[usize]) -> Result<FusionDims> {
        let &[batch, channels, depth, height, width] = x_shape else {
            return Err(Error::Rank {
                arg,
                expected: 5,
                layout: "[B, C, D, H, W]",
                got: x_shape.to_vec(),
            });
        };
        element_count(x_shape)?;
        Ok(FusionDims {
            batch,
            channels,
            depth,
            height,
            width,
            pixels: height * width,
        })
    }

    /// Elements of `x` (and of `y`, `dx`, `dy`).
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.depth * self.pixels
    }

    /// Whether `x` is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of `x`, `y`, `dx` and `dy`.
    pub fn input_shape(&self) -> [usize; 5] {
        [
            self.batch,
            self.channels,
            self.depth,
            self.height,
            self.width,
        ]
    }

    /// The shape of `w` and `dw`: `[D, D, C]`.
    pub fn weight_shape(&self) -> [usize; 3] {
        [self.depth, self.depth, self.channels]
    }

    /// Checks a weight shape (rank, then `[D, D, C]`).
    pub fn check_weight_shape(&self, arg: &'static str, shape: &[usize]) -> Result<()> {
        if shape.len() != 3 {
            return Err(Error::Rank {
                arg,
                expected: 3,
                layout: "[D, D, C]",
                got: shape.to_vec(),
            });
        }
        check_shape(arg, &self.weight_shape(), shape)
    }

    /// Checks a tensor that must have `x`'s shape (rank, then dimensions).
    pub fn check_input_like(&self, arg: &'static str, shape: &[usize]) -> Result<()> {
        if shape.len() != 5 {
            return Err(Error::Rank {
                arg,
                expected: 5,
                layout: "[B, C, D, H, W]",
                got: shape.to_vec(),
            });
        }
        check_shape(arg, &self.input_shape(), shape)
    }
}

/// Which gradients [`backward`] computes. A caller that needs one does not pay for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grads {
    /// Compute `dx`.
    pub input: bool,
    /// Compute `dw`.
    pub weight: bool,
}

impl Grads {
    /// `dx` and `dw`.
    pub const BOTH: Grads = Grads {
        input: true,
        weight: true,
    };
    /// `dx` only.
    pub const INPUT: Grads = Grads {
        input: true,
        weight: false,
    };
    /// `dw` only.
    pub const WEIGHT: Grads = Grads {
        input: false,
        weight: true,
    };
}

/// The gradients [`backward`] returns; each is `Some` when it was requested.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    /// `dx`, shape of `x`.
    pub dx: Option<Tensor>,
    /// `dw`, `[D, D, C]`.
    pub dw: Option<Tensor>,
}

/// Validates `x` and `w` and returns the problem's sizes.
pub(crate) fn check_forward<T: TensorInfo>(x: &T, w: &T) -> Result<FusionDims> {
    let dims = FusionDims::from_input_shape(x.shape())?;
    dims.check_weight_shape("w", w.shape())?;
    check_dtype("w", x.dtype(), w.dtype())?;
    Ok(dims)
}

/// Validates `x`, `w` and `dy` and returns the problem's sizes.
pub(crate) fn check_backward<T: TensorInfo>(x: &T, w: &T, dy: &T) -> Result<FusionDims> {
    let dims = check_forward(x, w)?;
    dims.check_input_like("dy", dy.shape())?;
    check_dtype("dy", x.dtype(), dy.dtype())?;
    Ok(dims)
}

/// Validates the outputs a caller supplies: `y` or `dx` with `x`'s shape, `dw` with `w`'s;
/// all with `x`'s dtype.
pub(crate) fn check_outputs<T: TensorInfo>(
    dims: &FusionDims,
    dtype: DType,
    input_like: &[(&'static str, Option<&T>)],
    weight_like: Option<&T>,
) -> Result<()> {
    for (arg, t) in input_like {
        if let Some(t) = t {
            dims.check_input_like(arg, t.shape())?;
            check_dtype(arg, dtype, t.dtype())?;
        }
    }
    if let Some(dw) = weight_like {
        dims.check_weight_shape("dw", dw.shape())?;
        check_dtype("dw", dtype, dw.dtype())?;
    }
    Ok(())
}

/// `y = fuse(x, w)`: a new tensor of `x`'s shape and dtype.
///
/// ```
/// use a3d::{fusion, DType, Tensor};
/// // B=1, C=2, D=3, H=1, W=2; identity weights leave x unchanged.
/// let x = Tensor::from_vec((0..12).map(|v| v as f32).collect(), &[1, 2, 3, 1, 2])?;
/// let mut w = vec![0.0f32; 3 * 3 * 2];
/// for d in 0..3 { for c in 0..2 { w[(d * 3 + d) * 2 + c] = 1.0; } }
/// let w = Tensor::from_vec(w, &[3, 3, 2])?;
/// let y = fusion::forward(&x, &w)?;
/// assert_eq!(y.to_f32_vec(), x.to_f32_vec());
/// # Ok::<(), a3d::Error>(())
/// ```
pub fn forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    check_forward(x, w)?;
    let mut y = Tensor::zeros(x.shape(), x.dtype())?;
    forward_into(x, w, &mut y)?;
    Ok(y)
}

/// `y = fuse(x, w)` into an existing tensor of `x`'s shape and dtype (no allocation of `y`).
pub fn forward_into(x: &Tensor, w: &Tensor, y: &mut Tensor) -> Result<()> {
    let dims = check_forward(x, w)?;
    check_outputs(&dims, x.dtype(), &[("y", Some(&*y))], None)?;
    if dims.is_empty() {
        return Ok(());
    }
    let wf = w.to_f32_vec();
    with_dtype!(x.dtype(), T => forward_typed::<T>(&dims, x, &wf, y))
}

fn forward_typed<T: crate::tensor::HostElement>(
    dims: &FusionDims,
    x: &Tensor,
    w: &[f32],
    y: &mut Tensor,
) -> Result<()> {
    cpu_kernel::forward(dims, x.as_slice::<T>()?, w, y.as_mut_slice::<T>()?);
    Ok(())
}

/// Gradients of `y = fuse(x, w)` given `dy`; only the requested ones are computed.
///
/// `x` is read only when `dw` is requested.
pub fn backward(x: &Tensor, w: &Tensor, dy: &Tensor, grads: Grads) -> Result<Gradients> {
    let dims = check_backward(x, w, dy)?;
    let mut dx = match grads.input {
        true => Some(Tensor::zeros(x.shape(), x.dtype())?),
        false => None,
    };
    let mut dw = match grads.weight {
        true => Some(Tensor::zeros(&dims.weight_shape(), x.dtype())?),
        false => None,
    };
    backward_into(x, w, dy, dx.as_mut(), dw.as_mut())?;
    Ok(Gradients { dx, dw })
}

/// Gradients into existing tensors: `dx` (shape of `x`) and/or `dw` (`[D, D, C]`), each only
/// when given. Every element of a given output is overwritten.
pub fn backward_into(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    dx: Option<&mut Tensor>,
    dw: Option<&mut Tensor>,
) -> Result<()> {
    let dims = check_backward(x, w, dy)?;
    check_outputs(&dims, x.dtype(), &[("dx", dx.as_deref())], dw.as_deref())?;
    let wf = w.to_f32_vec();
    with_dtype!(x.dtype(), T => backward_typed::<T>(&dims, x, &wf, dy, dx, dw))
}

fn backward_typed<T: crate::tensor::HostElement>(
    dims: &FusionDims,
    x: &Tensor,
    w: &[f32],
    dy: &Tensor,
    dx: Option<&mut Tensor>,
    dw: Option<&mut Tensor>,
) -> Result<()> {
    let dx = dx.map(|t| t.as_mut_slice::<T>()).transpose()?;
    let dw = dw.map(|t| t.as_mut_slice::<T>()).transpose()?;
    if dims.is_empty() {
        // No pixels or no slices: the sums are empty, dw is zero (and dx has no elements).
        if let Some(dw) = dw {
            dw.fill(T::from_f32(0.0));
        }
        return Ok(());
    }
    cpu_kernel::backward(dims, x.as_slice::<T>()?, w, dy.as_slice::<T>()?, dx, dw);
    Ok(())
}

/// Fusion weights as the reference initialises them: identity per channel plus U(-0.1, 0.1)
/// noise, `[D, D, C]` f32, reproducible from `seed`.
pub fn init_weights(depth: usize, channels: usize, seed: u64) -> Result<Tensor> {
    let shape = [depth, depth, channels];
    element_count(&shape)?;
    let mut rng = crate::rng::SplitMix64::new(seed);
    let mut w = Vec::with_capacity(depth * depth * channels);
    for d in 0..depth {
        for k in 0..depth {
            for _ in 0..channels {
                let identity = if d == k { 1.0 } else { 0.0 };
                w.push(identity + rng.uniform(-0.1, 0.1) as f32);
            }
        }
    }
    Tensor::from_vec(w, &shape)
}
