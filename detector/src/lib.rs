//! # a3d-detector: the A3D universal lesion detector on candle and a3d's ops
//!
//! The architecture of `shared/docs/detector.md`, every convention as
//! `shared/docs/reference-detector.md` checked it against the reference source:
//!
//! - [`Backbone`]: the truncated DenseNet-121 (conv0 7x7/2 without fusion, dense blocks of
//!   BN-ReLU-context-conv layers, transitions without fusion, a reduction-z convolution after
//!   each block, the top-down merge to one stride-4 map), with any context operator
//!   ([`a3d::candle::ContextFusion`]: `a3d`, `tsm`, `alignshift`, `depthconv`, `none`);
//! - [`Rpn`]: 18 reference anchors per location, objectness and deltas, proposals (top-k,
//!   decode, clip, NMS 0.7, keep);
//! - [`BoxHead`]: RoIAlign 7x7 (mmdetection 1.0's convention), two shared FC layers, a 2-way
//!   classifier, class-specific deltas, score threshold, NMS 0.5, at most 50 boxes;
//! - [`Detector`]: all of it, built fresh with the reference initialisation or from a
//!   safetensors checkpoint with the reference parameter names.
//!
//! Boxes are `[x1, y1, x2, y2]` in network-input pixels with inclusive corners (the +1
//! convention); [`a3d_ct::network::NetworkInput::to_original`] maps them back to the scan.

mod backbone;
mod config;
mod error;
pub mod froc;
mod heads;
mod imagenet;
mod model;
#[doc(hidden)]
pub mod testing;
pub mod train;
mod weights;

pub use backbone::Backbone;
pub use config::{DetectorConfig, Preset};
pub use error::{Error, Result};
pub use heads::{BoxHead, Rpn};
pub use model::{Detections, Detector};
