//! A3D fusion for [candle](https://github.com/huggingface/candle) (feature `candle`).
//!
//! [`fuse`] applies the fusion operator to candle tensors as a custom op: the forward pass and
//! both gradients run a3d's CPU kernels directly on candle's CPU storage (f32, f16, bf16), and
//! candle's autograd reaches `x` and `w` through them. With feature `candle-cuda` the same op
//! runs a3d's CUDA kernels on candle's CUDA tensors.
//!
//! [`A3dConv`] is the A3D layer: fusion, then a per-slice 2D convolution, with the reference
//! implementation's parameter names. Which implementation runs depends on the input:
//!
//! - CPU tensors and `groups == 1`: the whole layer is one candle custom op running a3d's
//!   A3DConv operator ([`crate::a3dconv::A3dConv`]), forward and backward. candle custom ops
//!   take at most three tensors, so the convolution weight (flattened) and the bias are packed
//!   into one parameter vector with [`Tensor::cat`] (differentiable: candle's autograd splits
//!   its gradient back to the two variables); the op is `x.apply_op3(fusion_weights, params)`,
//!   or `x.apply_op2(params)` without fusion. Its backward pass is one call of
//!   [`crate::a3dconv::A3dConv::backward`] computing only the gradients candle tracks (`dx` is
//!   skipped for an input that is not a variable and depends on none).
//! - `groups > 1` (which a3d's operator does not support), or a tensor on another device (CUDA
//!   with `candle-cuda`): [`fuse`], then candle's own `conv2d` on the `B * D` slices, with
//!   candle's autograd for the convolution.
//!
//! Other devices (Metal) are not implemented: candle reports that the fusion op has no
//! implementation there.

mod a3dconv;
mod batchnorm;
mod context;
mod context_conv;
mod conv2d;
mod conv2d_cpu;
mod detection;
mod fusion;
mod storage;

pub use a3dconv::{A3dConv, A3dConvConfig};
pub use batchnorm::{BnReluA3dConv, BnReluA3dConvConfig};
pub use context::{align_shift, depth_conv, tsm, DepthConvOp, ShiftOp};
pub use context_conv::{ContextConv, ContextConvConfig, ContextFusion};
pub use conv2d::Conv2d;
pub use detection::{nms, roi_align, RoiAlignOp};
pub use fusion::{fuse, FusionOp};
