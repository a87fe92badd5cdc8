//! # a3d: asymmetric 3D context fusion for CT imaging
//!
//! A CT input `x[B, C, D, H, W]` carries D neighbouring slices. A3D fusion mixes the D slices of
//! every channel with that channel's own DxD matrix `w[D, D, C]`, before a per-slice 2D
//! convolution, so 2D ImageNet-pretrained networks become 3D context models.
//!
//! This crate provides host [`Tensor`]s (f32, f16, bf16), the fusion operator with its gradients
//! ([`fusion`]) on a fast multi-threaded CPU path, a float64 reference, and self-tests.
//!
//! ```
//! use a3d::{fusion, DType, Tensor};
//!
//! let (b, c, d, h, w) = (1, 4, 3, 5, 7);
//! let mut rng = a3d::rng::SplitMix64::new(7);
//! let x = Tensor::from_vec(rng.vec_f32(b * c * d * h * w, -1.0, 1.0), &[b, c, d, h, w])?;
//! let weights = fusion::init_weights(d, c, 42)?; // identity + U(-0.1, 0.1)
//! let y = fusion::forward(&x, &weights)?;
//!
//! // Training: gradients of a loss with respect to x and w, given dL/dy.
//! let dy = Tensor::full(y.shape(), 1.0, DType::F32)?;
//! let grads = fusion::backward(&x, &weights, &dy, fusion::Grads::BOTH)?;
//! assert_eq!(grads.dw.unwrap().shape(), &[d, d, c]);
//!
//! // Half precision storage, f32 arithmetic.
//! let y16 = fusion::forward(&x.to_dtype(DType::BF16), &weights.to_dtype(DType::BF16))?;
//! assert_eq!(y16.dtype(), DType::BF16);
//! # Ok::<(), a3d::Error>(())
//! ```

#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "candle")]
pub mod candle;
#[cfg(feature = "candle-cuda")]
mod candle_cuda;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod dtype;
#[cfg(feature = "emulation")]
pub(crate) mod emulation;
mod error;
#[allow(clippy::all)]
pub(crate) mod kernel_params;
mod ops;
pub mod rng;
pub mod selftest;
pub mod tensor;

pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use ops::common::TensorInfo;
pub use ops::{a3dconv, batchnorm, boxes, depthconv, fusion, roi_align, shift};
pub use tensor::Tensor;

/// The README's Rust example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
