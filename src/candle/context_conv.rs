//! [`ContextConv`]: a per-slice 2D convolution preceded by any of the context-fusion
//! operators the detector can be built with (`a3d | tsm | alignshift | depthconv | none`), with
//! the reference's parameter names, so one backbone definition covers every variant.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{align_shift, depth_conv, tsm, A3dConv, A3dConvConfig};
use crate::shift::Shift;

/// Which operator mixes the slices before the convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ContextFusion {
    /// A3D: each channel's own DxD matrix (`adaptive_align_weights` `[D, D, C]`).
    A3d,
    /// TSM shift (no parameters).
    Tsm {
        /// `fold = C / fold_div` channels shift each way (8 in the reference).
        fold_div: usize,
    },
    /// AlignShift (no parameters; each forward needs the samples' slice thickness).
    AlignShift {
        /// As for TSM.
        fold_div: usize,
        /// The spacing the network expects, mm (2.0 in the reference).
        ref_thickness: f32,
        /// Scale the open ends by alpha instead of passing them through.
        padding_zero: bool,
    },
    /// The symmetric depth convolution (`depth_conv_weights` `[K, C]`, odd K).
    DepthConv {
        /// Taps K (3 by default).
        taps: usize,
    },
    /// No fusion: a 2D convolution per slice.
    None,
}

impl ContextFusion {
    /// The reference's settings for `name` (`a3d`, `tsm`, `alignshift`, `depthconv`, `none`).
    pub fn from_name(name: &str) -> Option<ContextFusion> {
        Some(match name {
            "a3d" => ContextFusion::A3d,
            "tsm" => ContextFusion::Tsm {
                fold_div: Shift::DEFAULT_FOLD_DIV,
            },
            "alignshift" => ContextFusion::AlignShift {
                fold_div: Shift::DEFAULT_FOLD_DIV,
                ref_thickness: Shift::DEFAULT_REF_THICKNESS,
                padding_zero: false,
            },
            "depthconv" => ContextFusion::DepthConv {
                taps: crate::depthconv::DEFAULT_TAPS,
            },
            "none" => ContextFusion::None,
            _ => return None,
        })
    }
}

/// Configuration of a [`ContextConv`]: the convolution (its `fusion` flag is ignored; the
/// fusion is `fusion`) and the context operator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContextConvConfig {
    /// The per-slice convolution.
    pub conv: A3dConvConfig,
    /// The operator before it.
    pub fusion: ContextFusion,
}

/// A context operator then a per-slice convolution: `[B, I, D, H, W]` in,
/// `[B, O, D, H', W']` out. Parameters: `weight`, `bias` (as [`A3dConv`]), plus
/// `adaptive_align_weights` for `a3d` and `depth_conv_weights` for `depthconv`.
#[derive(Debug, Clone)]
pub struct ContextConv {
    conv: A3dConv,
    fusion: ContextFusion,
    depth_weights: Option<Tensor>,
}

impl ContextConv {
    /// Builds the layer from `vb`. New depth-convolution weights are initialised to the
    /// identity (centre tap 1) plus U(-0.1, 0.1), as A3D's fusion weights are.
    pub fn new(config: ContextConvConfig, vb: VarBuilder) -> candle_core::Result<ContextConv> {
        let mut conv_config = config.conv;
        conv_config.fusion = config.fusion == ContextFusion::A3d;
        let depth_weights = match config.fusion {
            ContextFusion::DepthConv { taps } => {
                if taps.is_multiple_of(2) {
                    candle_core::bail!("ContextConv: depthconv needs an odd kernel, got {taps}");
                }
                let name = "depth_conv_weights";
                let existed = vb.contains_tensor(name);
                let v = vb.get_with_hints(
                    (taps, config.conv.in_channels),
                    name,
                    Init::Uniform { lo: -0.1, up: 0.1 },
                )?;
                if !existed {
                    let centre = v.narrow(0, taps / 2, 1)?;
                    v.slice_set(&(centre + 1.0)?, 0, taps / 2)?;
                }
                Some(v)
            }
            _ => None,
        };
        if let ContextFusion::Tsm { fold_div } | ContextFusion::AlignShift { fold_div, .. } =
            config.fusion
        {
            if fold_div == 0 || fold_div > config.conv.in_channels {
                candle_core::bail!(
                    "ContextConv: fold_div {fold_div} must be in 1..={} (the input channels)",
                    config.conv.in_channels
                );
            }
        }
        Ok(ContextConv {
            conv: A3dConv::new(conv_config, vb)?,
            fusion: config.fusion,
            depth_weights,
        })
    }

    /// The convolution (and, for `a3d`, the fusion weights).
    pub fn conv(&self) -> &A3dConv {
        &self.conv
    }

    /// The depth-convolution weights `[K, C]`, for `depthconv`.
    pub fn depth_conv_weights(&self) -> Option<&Tensor> {
        self.depth_weights.as_ref()
    }

    /// The layer's context operator.
    pub fn fusion(&self) -> ContextFusion {
        self.fusion
    }

    /// The forward pass; `thickness` (mm, one per sample) is required by AlignShift and
    /// ignored by the other operators.
    pub fn forward_with_thickness(
        &self,
        x: &Tensor,
        thickness: Option<&[f32]>,
    ) -> candle_core::Result<Tensor> {
        let fused = match (self.fusion, &self.depth_weights) {
            (ContextFusion::A3d | ContextFusion::None, _) => x.clone(),
            (ContextFusion::Tsm { fold_div }, _) => tsm(x, fold_div)?,
            (
                ContextFusion::AlignShift {
                    fold_div,
                    ref_thickness,
                    padding_zero,
                },
                _,
            ) => {
                let Some(thickness) = thickness else {
                    candle_core::bail!(
                        "ContextConv: alignshift needs each sample's slice thickness \
                         (forward_with_thickness)"
                    );
                };
                align_shift(x, thickness, ref_thickness, padding_zero, fold_div)?
            }
            (ContextFusion::DepthConv { .. }, Some(v)) => depth_conv(x, v)?,
            (ContextFusion::DepthConv { .. }, None) => {
                candle_core::bail!("ContextConv: depthconv layer without weights")
            }
        };
        self.conv.forward(&fused)
    }
}

impl Module for ContextConv {
    /// [`ContextConv::forward_with_thickness`] without thickness (an error for AlignShift).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with_thickness(x, None)
    }
}
