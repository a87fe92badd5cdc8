//! The truncated DenseNet-121 with context-fusion convolutions, the reduction-z convolutions
//! and the top-down merge to one stride-4 map (reference-detector.md section 2), with the
//! reference's parameter names under `backbone.`.

use a3d::candle::Conv2d;
use a3d::candle::{
    A3dConv, A3dConvConfig, BnReluA3dConv, BnReluA3dConvConfig, ContextConvConfig, ContextFusion,
};
use candle_core::{Module, ModuleT, Result, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, Init, VarBuilder};

use crate::config::DetectorConfig;

/// `f` applied to every `(channel, slice)` plane: `[B, C, D, H, W]` viewed as `[B, C * D, H, W]`
/// (a view of the same memory), then back to `[B, C, D, H', W']`. For the pools, which work on
/// each plane alone: the slices need no permutation to `[B * D, C, H, W]` and back (two copies
/// of the map per pool).
fn per_plane(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (b, c, d, h, w) = x.dims5()?;
    let y = f(&x.contiguous()?.reshape((b, c * d, h, w))?)?;
    let (_, _, h2, w2) = y.dims4()?;
    y.reshape((b, c, d, h2, w2))
}

fn conv_config(
    in_channels: usize,
    out_channels: usize,
    depth: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> A3dConvConfig {
    A3dConvConfig {
        in_channels,
        out_channels,
        depth,
        kernel_size: kernel,
        stride,
        padding,
        dilation: 1,
        groups: 1,
        bias: false,
        fusion: false,
    }
}

/// BN -> ReLU -> context conv, with the layer's norm and conv under `vb.pp(norm)` and
/// `vb.pp(conv)`.
fn bn_relu_conv(
    conv: A3dConvConfig,
    fusion: ContextFusion,
    vb: &VarBuilder,
    norm_name: &str,
    conv_name: &str,
) -> Result<BnReluA3dConv> {
    BnReluA3dConv::new(
        BnReluA3dConvConfig::new(ContextConvConfig { conv, fusion }),
        vb.pp(norm_name),
        vb.pp(conv_name),
    )
}

/// One dense layer: BN-ReLU-conv 1x1 to the bottleneck, BN-ReLU-conv 3x3 to `growth`.
#[derive(Debug, Clone)]
struct DenseLayer {
    bottleneck: BnReluA3dConv,
    grow: BnReluA3dConv,
}

impl DenseLayer {
    /// The layer's `growth` new channels for input `x`.
    fn forward(&self, x: &Tensor, thickness: Option<&[f32]>, train: bool) -> Result<Tensor> {
        let y = self
            .bottleneck
            .forward_with_thickness(x, thickness, train)?;
        self.grow.forward_with_thickness(&y, thickness, train)
    }
}

/// The backbone: `[B, 1, D, H, W]` (H, W multiples of 16) to `[B, fpn_channels, H/4, W/4]`.
#[derive(Debug, Clone)]
pub struct Backbone {
    conv0: A3dConv,
    norm0: BatchNorm,
    norm0_batches: Var,
    blocks: Vec<Vec<DenseLayer>>,
    reductions: Vec<Tensor>,
    transitions: Vec<BnReluA3dConv>,
    laterals: Vec<Conv2d>,
    depth: usize,
}

impl Backbone {
    /// Builds the backbone under `vb` (the checkpoint's `backbone.` prefix).
    pub fn new(config: &DetectorConfig, vb: VarBuilder) -> Result<Backbone> {
        let d = config.depth;
        let c0 = config.init_features;
        let conv0 = A3dConv::new(conv_config(1, c0, d, 7, 2, 3), vb.pp("conv0"))?;
        let bn = BatchNormConfig {
            eps: 1e-5,
            remove_mean: true,
            affine: true,
            momentum: 0.1,
        };
        let norm0 = candle_nn::batch_norm(c0, bn, vb.pp("norm0"))?;
        let norm0_batches = Var::from_tensor(&vb.pp("norm0").get_with_hints(
            (),
            "num_batches_tracked",
            Init::Const(0.0),
        )?)?;
        let widths = config.block_channels();
        let bottleneck = config.bn_size * config.growth;
        let mut blocks = Vec::new();
        let mut reductions = Vec::new();
        let mut transitions = Vec::new();
        let mut c = c0;
        for (i, &n) in config.blocks.iter().enumerate() {
            let block_vb = vb.pp(format!("denseblock{}", i + 1));
            let mut layers = Vec::new();
            for l in 0..n {
                let lvb = block_vb.pp(format!("denselayer{}", l + 1));
                let f = c + l * config.growth;
                layers.push(DenseLayer {
                    bottleneck: bn_relu_conv(
                        conv_config(f, bottleneck, d, 1, 1, 0),
                        config.fusion,
                        &lvb,
                        "norm1",
                        "conv1",
                    )?,
                    grow: bn_relu_conv(
                        conv_config(bottleneck, config.growth, d, 3, 1, 1),
                        config.fusion,
                        &lvb,
                        "norm2",
                        "conv2",
                    )?,
                });
            }
            blocks.push(layers);
            c = widths[i];
            // Kaiming normal, fan in, ReLU gain (the reference's init of its Conv3d layers).
            let fan_in = (c * d) as f64;
            reductions.push(
                vb.pp(format!("reductionz{}", i + 1))
                    .pp("reduction_z_conv")
                    .get_with_hints(
                        (c, c, d, 1, 1),
                        "weight",
                        Init::Randn {
                            mean: 0.0,
                            stdev: (2.0 / fan_in).sqrt(),
                        },
                    )?,
            );
            if i < 2 {
                let tvb = vb.pp(format!("transition{}", i + 1));
                transitions.push(bn_relu_conv(
                    conv_config(c, c / 2, d, 1, 1, 0),
                    ContextFusion::None,
                    &tvb,
                    "norm",
                    "conv",
                )?);
                c /= 2;
            }
        }
        let mut laterals = Vec::new();
        for (i, &w) in widths.iter().enumerate() {
            // kaiming_uniform(a = 1): U(-sqrt(3 / fan_in), sqrt(3 / fan_in)), bias 0.
            let bound = (3.0 / w as f64).sqrt();
            laterals.push(Conv2d::new(
                &vb.pp(format!("lateral{}", i + 2)),
                (w, config.fpn_channels),
                1,
                0,
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?);
        }
        Ok(Backbone {
            conv0,
            norm0,
            norm0_batches,
            blocks,
            reductions,
            transitions,
            laterals,
            depth: d,
        })
    }

    /// The stride-4 map. `thickness` (mm per sample) is needed by AlignShift; `train` selects
    /// batch statistics (and updates the running ones).
    pub fn forward(&self, x: &Tensor, thickness: Option<&[f32]>, train: bool) -> Result<Tensor> {
        let (_, _, d, h, w) = x.dims5()?;
        if d != self.depth || h % 16 != 0 || w % 16 != 0 {
            candle_core::bail!(
                "backbone: input [B, 1, {d}, {h}, {w}] needs D = {} and H, W multiples of 16",
                self.depth
            );
        }
        let x = self.conv0.forward(x)?;
        let x = self.norm0.forward_t(&x, train)?.relu()?;
        if train {
            self.norm0_batches
                .set(&(self.norm0_batches.as_tensor() + 1.0)?)?;
        }
        // After the ReLU every value is >= 0, so zero padding equals the -inf padding of
        // MaxPool3d([1, 3, 3], [1, 2, 2], [0, 1, 1]).
        let mut x = per_plane(&x, |s| {
            let padded = s.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
            if train {
                max_pool_3x3_s2(&padded)
            } else {
                padded.max_pool2d_with_stride(3, 2)
            }
        })?;
        let mut reduced = Vec::new();
        for (i, layers) in self.blocks.iter().enumerate() {
            x = if train || x.dim(0)? != 1 {
                self.dense_block_concatenating(x, layers, thickness, train)?
            } else {
                self.dense_block_in_place(x, layers, thickness)?
            };
            reduced.push(reduce_z(&x, &self.reductions[i])?);
            if let Some(t) = self.transitions.get(i) {
                let y = t.forward_with_thickness(&x, None, train)?;
                x = per_plane(&y, |s| s.avg_pool2d(2))?;
            }
        }
        let mut top = self.laterals[2].forward(&reduced[2])?;
        for level in [1usize, 0] {
            let lateral = self.laterals[level].forward(&reduced[level])?;
            let (_, _, lh, lw) = lateral.dims4()?;
            top = (top.upsample_nearest2d(lh, lw)? + lateral)?;
        }
        Ok(top)
    }

    /// One dense block as the reference runs it: each layer's output concatenated to its
    /// input (what autograd differentiates).
    fn dense_block_concatenating(
        &self,
        mut x: Tensor,
        layers: &[DenseLayer],
        thickness: Option<&[f32]>,
        train: bool,
    ) -> Result<Tensor> {
        for layer in layers {
            let y = layer.forward(&x, thickness, train)?;
            x = Tensor::cat(&[&x, &y], 1)?;
        }
        Ok(x)
    }

    /// The same block for one sample at inference: the block's output is allocated once and
    /// each layer reads the channel prefix written so far (a contiguous view when B = 1) and
    /// writes its new channels after it, instead of copying the whole growing map once per
    /// layer (about 2.8 GB of copies per D = 7 512 x 512 image). Not differentiable: `slice_set`
    /// writes in place.
    fn dense_block_in_place(
        &self,
        x: Tensor,
        layers: &[DenseLayer],
        thickness: Option<&[f32]>,
    ) -> Result<Tensor> {
        let (b, c0, d, h, w) = x.dims5()?;
        let growth: usize = layers
            .iter()
            .map(|l| l.grow.conv().conv().config().out_channels)
            .sum();
        let out = Tensor::zeros((b, c0 + growth, d, h, w), x.dtype(), x.device())?;
        out.slice_set(&x.contiguous()?, 1, 0)?;
        let mut c = c0;
        for layer in layers {
            let y = layer.forward(&out.narrow(1, 0, c)?, thickness, false)?;
            out.slice_set(&y.contiguous()?, 1, c)?;
            c += y.dim(1)?;
        }
        Ok(out)
    }
}

/// A 3x3, stride-2 max pool of `x` `[N, C, P, P']` (P, P' even: an even map padded by one) as
/// the maximum of nine strided views, so that candle's autograd can differentiate it (its own
/// max pool has no backward for overlapping windows).
fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (n, c, p, q) = x.dims4()?;
    if p % 2 != 0 || q % 2 != 0 {
        candle_core::bail!("max pool: padded map {p} x {q} must be even");
    }
    let (ho, wo) = (p / 2 - 1, q / 2 - 1);
    // [N, C, P/2, 2, Q/2, 2]: row 2i + dy is pair i + dy/2, element dy % 2.
    let pairs = x.reshape((n, c, p / 2, 2, q / 2, 2))?;
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = pairs.narrow(2, dy / 2, ho)?.narrow(3, dy % 2, 1)?;
        for dx in 0..3 {
            let v = rows.narrow(4, dx / 2, wo)?.narrow(5, dx % 2, 1)?;
            out = Some(match out {
                None => v,
                Some(m) => m.maximum(&v)?,
            });
        }
    }
    match out {
        Some(m) => m.reshape((n, c, ho, wo)),
        None => candle_core::bail!("max pool: empty window"),
    }
}

/// The reduction-z convolution (Conv3d, kernel `[D, 1, 1]`, no bias): `[B, C, D, H, W]` to
/// `[B, C', H, W]`, as one matrix product per sample.
fn reduce_z(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (b, c, d, h, w) = x.dims5()?;
    let out = weight.dim(0)?;
    let wm = weight
        .reshape((1, out, c * d))?
        .broadcast_as((b, out, c * d))?;
    let xm = x.reshape((b, c * d, h * w))?;
    wm.contiguous()?.matmul(&xm)?.reshape((b, out, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inference's in-place dense block gives the bits of the concatenating one (the same
    /// kernels on the same values; only where the outputs live differs).
    #[test]
    fn in_place_dense_block_equals_the_concatenating_one() {
        use crate::config::Preset;
        let cpu = candle_core::Device::Cpu;
        for fusion in [ContextFusion::A3d, ContextFusion::None] {
            let config = DetectorConfig::new(Preset::Tiny, 3, fusion);
            let map = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&map, candle_core::DType::F32, &cpu);
            let backbone = Backbone::new(&config, vb).unwrap();
            let layers = &backbone.blocks[0];
            let x = Tensor::rand(0.0f32, 1.0, (1, 16, 3, 12, 10), &cpu).unwrap();
            let want = backbone
                .dense_block_concatenating(x.clone(), layers, None, false)
                .unwrap();
            let got = backbone.dense_block_in_place(x, layers, None).unwrap();
            assert_eq!(got.dims(), want.dims());
            let bits = |t: &Tensor| -> Vec<u32> {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|x| x.to_bits()).collect()
            };
            assert_eq!(bits(&got), bits(&want), "{fusion:?}");
        }
    }

    #[test]
    fn strided_view_max_pool_equals_candles() {
        let x = Tensor::rand(-1.0f32, 1.0, (2, 3, 10, 14), &candle_core::Device::Cpu).unwrap();
        let fast = x.max_pool2d_with_stride(3, 2).unwrap();
        let ours = max_pool_3x3_s2(&x).unwrap();
        assert_eq!(fast.dims(), ours.dims());
        let (a, b) = (
            fast.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
    }
}
