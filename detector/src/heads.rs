//! The RPN and the R-CNN box head (reference-detector.md sections 4 and 5), test time: anchors,
//! proposals, RoIAlign, the shared FCs, class-1 scores and boxes, NMS.

use a3d::boxes::{AnchorGenerator, DeltaCoder, Nms};
use a3d::candle::Conv2d;
use a3d::roi_align::RoiAlign;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use crate::config::DetectorConfig;

fn a3d_err(what: &str, e: a3d::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what}: {e}"))
}

/// Rows of a `[n, 4]` tensor.
pub(crate) fn rows4(t: &Tensor) -> Result<Vec<[f32; 4]>> {
    Ok(t.to_dtype(DType::F32)?
        .to_vec2::<f32>()?
        .into_iter()
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect())
}

/// The RPN: a 3x3 conv + ReLU, then per anchor one objectness logit and four deltas.
#[derive(Debug, Clone)]
pub struct Rpn {
    conv: Conv2d,
    cls: Conv2d,
    reg: Conv2d,
    anchors: AnchorGenerator,
}

impl Rpn {
    /// Under `vb` (the checkpoint's `rpn_head.`): `rpn_conv`, `rpn_cls`, `rpn_reg`, N(0, 0.01).
    pub fn new(config: &DetectorConfig, vb: VarBuilder) -> Result<Rpn> {
        let anchors = AnchorGenerator::reference();
        let a = anchors.per_location();
        let c = config.fpn_channels;
        let n = Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
        Ok(Rpn {
            conv: Conv2d::new(&vb.pp("rpn_conv"), (c, c), 3, 1, n)?,
            cls: Conv2d::new(&vb.pp("rpn_cls"), (c, a), 1, 0, n)?,
            reg: Conv2d::new(&vb.pp("rpn_reg"), (c, 4 * a), 1, 0, n)?,
            anchors,
        })
    }

    /// The head's raw outputs: objectness logits `[B, H*W*A]` and deltas `[B, H*W*A, 4]`, in
    /// the anchors' order (location-major, then anchor).
    pub fn forward(&self, features: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.conv.forward(features)?.relu()?;
        let (b, _, _, _) = x.dims4()?;
        let cls = self
            .cls
            .forward(&x)?
            .permute((0, 2, 3, 1))?
            .reshape((b, ()))?;
        let reg = self
            .reg
            .forward(&x)?
            .permute((0, 2, 3, 1))?
            .reshape((b, (), 4))?;
        Ok((cls, reg))
    }

    /// Anchors of a `feat_h x feat_w` map.
    pub fn anchors(&self, feat_h: usize, feat_w: usize) -> Result<Vec<[f32; 4]>> {
        self.anchors
            .grid_anchors(feat_h, feat_w)
            .map_err(|e| a3d_err("anchors", e))
    }

    /// Proposals of one image from its logits and deltas: the top `pre_nms` by score, decoded,
    /// clipped to `image` = (height, width), NMS, the first `post_nms`. Boxes and scores.
    pub fn proposals(
        &self,
        anchors: &[[f32; 4]],
        logits: &[f32],
        deltas: &[[f32; 4]],
        image: (usize, usize),
        config: &DetectorConfig,
    ) -> Result<(Vec<[f32; 4]>, Vec<f32>)> {
        // Sigmoid is monotonic: rank by logits, stable for ties (lower index first).
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        order.truncate(config.rpn_pre_nms);
        let top_anchors: Vec<[f32; 4]> = order.iter().map(|&i| anchors[i]).collect();
        let top_deltas: Vec<[f32; 4]> = order.iter().map(|&i| deltas[i]).collect();
        let scores: Vec<f32> = order
            .iter()
            .map(|&i| 1.0 / (1.0 + (-logits[i]).exp()))
            .collect();
        let boxes = DeltaCoder::rpn()
            .decode(&top_anchors, &top_deltas, Some(image))
            .map_err(|e| a3d_err("rpn decode", e))?;
        let mut nms = Nms::reference(config.rpn_nms_iou);
        nms.keep_top_k = Some(config.rpn_post_nms);
        let keep = nms
            .run(&boxes, &scores)
            .map_err(|e| a3d_err("rpn nms", e))?;
        Ok((
            keep.iter().map(|&i| boxes[i]).collect(),
            keep.iter().map(|&i| scores[i]).collect(),
        ))
    }
}

/// The box head: RoIAlign 7x7 on the stride-4 map, two shared FC layers with ReLU, a 2-way
/// classifier and class-specific deltas.
#[derive(Debug, Clone)]
pub struct BoxHead {
    fc: [Linear; 2],
    cls: Linear,
    reg: Linear,
    roi: RoiAlign,
}

fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize, init: Init) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(weight, Some(bias)))
}

impl BoxHead {
    /// Under `vb` (`bbox_head.`): `shared_fcs.{0,1}` (Xavier uniform), `fc_cls` (N(0, 0.01)),
    /// `fc_reg` (N(0, 0.001)), biases 0.
    pub fn new(config: &DetectorConfig, vb: VarBuilder) -> Result<BoxHead> {
        let flat = config.fpn_channels * config.roi_size * config.roi_size;
        let f = config.fc_channels;
        let xavier = |fan_in: usize, fan_out: usize| {
            let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
            Init::Uniform {
                lo: -bound,
                up: bound,
            }
        };
        let fcs = vb.pp("shared_fcs");
        let mut roi = RoiAlign::reference();
        roi.pooled_h = config.roi_size;
        roi.pooled_w = config.roi_size;
        Ok(BoxHead {
            fc: [
                linear(&fcs.pp("0"), flat, f, xavier(flat, f))?,
                linear(&fcs.pp("1"), f, f, xavier(f, f))?,
            ],
            cls: linear(
                &vb.pp("fc_cls"),
                f,
                2,
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
            )?,
            reg: linear(
                &vb.pp("fc_reg"),
                f,
                8,
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.001,
                },
            )?,
            roi,
        })
    }

    /// Class logits `[K, 2]` and deltas `[K, 8]` of `rois` `[K, 5]` on `features`.
    pub fn forward(&self, features: &Tensor, rois: &Tensor) -> Result<(Tensor, Tensor)> {
        let pooled = a3d::candle::roi_align(features, rois, self.roi)?;
        let mut x = pooled.flatten_from(1)?;
        for fc in &self.fc {
            x = fc.forward(&x)?.relu()?;
        }
        Ok((self.cls.forward(&x)?, self.reg.forward(&x)?))
    }

    /// Test-time boxes of one image from its proposals' logits and deltas: class-1 softmax
    /// scores, decoded class-1 deltas clipped to `image`, scores above the threshold, NMS, at
    /// most `max_per_image`, highest score first.
    pub fn detections(
        &self,
        proposals: &[[f32; 4]],
        logits: &Tensor,
        deltas: &Tensor,
        image: (usize, usize),
        config: &DetectorConfig,
    ) -> Result<(Vec<[f32; 4]>, Vec<f32>)> {
        let probs = candle_nn::ops::softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
        let scores: Vec<f32> = probs.narrow(1, 1, 1)?.flatten_all()?.to_vec1()?;
        let class1 = rows4(&deltas.narrow(1, 4, 4)?)?;
        let boxes = DeltaCoder::rcnn()
            .decode(proposals, &class1, Some(image))
            .map_err(|e| a3d_err("rcnn decode", e))?;
        let kept: Vec<usize> = (0..scores.len())
            .filter(|&i| scores[i] > config.score_threshold)
            .collect();
        let (b, s): (Vec<[f32; 4]>, Vec<f32>) = kept.iter().map(|&i| (boxes[i], scores[i])).unzip();
        let mut nms = Nms::reference(config.nms_iou);
        nms.keep_top_k = Some(config.max_per_image);
        let keep = nms.run(&b, &s).map_err(|e| a3d_err("nms", e))?;
        Ok((
            keep.iter().map(|&i| b[i]).collect(),
            keep.iter().map(|&i| s[i]).collect(),
        ))
    }
}
