//! The training losses of one image, as the reference computes them (reference-detector.md
//! sections 4.3-4.4 and 5.3): RPN anchor targets and losses, proposals with the training
//! settings, R-CNN targets with the ground truths added as proposals, the box head's losses.

use a3d::boxes::{inside_flags, DeltaCoder};
use a3d_ct::network::NetworkInput;
use candle_core::{DType, Result, Tensor};

use super::{
    assign, bce_with_logits_sum, sample, smooth_l1_sum, softmax_ce_sum, Assigner, Assignment,
    Sampled, Sampler,
};
use crate::heads::rows4;
use crate::Detector;

/// The four loss terms (each already divided by its normaliser) and their sum.
#[derive(Debug, Clone)]
pub struct Losses {
    /// RPN objectness.
    pub rpn_cls: Tensor,
    /// RPN box regression.
    pub rpn_bbox: Tensor,
    /// R-CNN classification.
    pub rcnn_cls: Tensor,
    /// R-CNN box regression.
    pub rcnn_bbox: Tensor,
    /// Their sum (what is back-propagated).
    pub total: Tensor,
}

/// Training proposals: 12000 before NMS, 2000 after (the reference's train settings).
const TRAIN_PRE_NMS: usize = 12000;
const TRAIN_POST_NMS: usize = 2000;

fn a3d_err(what: &str, e: a3d::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what}: {e}"))
}

fn select(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    t.index_select(&Tensor::new(ids.as_slice(), t.device())?, 0)
}

fn boxes_tensor(b: &[[f32; 4]], dev: &candle_core::Device) -> Result<Tensor> {
    Tensor::from_vec(
        b.iter().flatten().copied().collect::<Vec<f32>>(),
        (b.len(), 4),
        dev,
    )
}

impl Detector {
    /// The training losses of one image (batch norms in training mode) with ground-truth boxes
    /// `gts` in network pixels; `rng` drives the samplers.
    pub fn losses(
        &self,
        input: &NetworkInput,
        gts: &[[f32; 4]],
        thickness: Option<f32>,
        rng: &mut a3d::rng::SplitMix64,
    ) -> Result<Losses> {
        if gts.is_empty() {
            candle_core::bail!(
                "losses: an image without ground truth (the reference's assigner refuses it)"
            );
        }
        let dev = &self.device;
        let x = self
            .input_tensor(input)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let thickness = thickness.map(|t| vec![t]);
        let features = self.backbone.forward(&x, thickness.as_deref(), true)?;
        let (_, _, fh, fw) = features.dims4()?;
        let image = (input.height, input.width);
        // RPN targets on the anchors inside the image (allowed_border 0).
        let (logits, deltas) = self.rpn.forward(&features)?;
        let (logits, deltas) = (logits.get(0)?, deltas.get(0)?);
        let anchors = self.rpn.anchors(fh, fw)?;
        let inside = inside_flags(&anchors, image.0, image.1, 0.0);
        let inside_idx: Vec<usize> = (0..anchors.len()).filter(|&i| inside[i]).collect();
        let inside_anchors: Vec<[f32; 4]> = inside_idx.iter().map(|&i| anchors[i]).collect();
        let assigned = assign(&Assigner::rpn(), &inside_anchors, gts).unwrap_or_default();
        let s = sample(&Sampler::rpn(), &assigned, rng);
        let n_s = (s.pos.len().max(1) + s.neg.len().max(1)) as f64;
        let sampled: Vec<usize> = s.pos.iter().chain(&s.neg).map(|&k| inside_idx[k]).collect();
        let labels: Vec<f32> = class_labels(&s, 1.0, 0.0);
        let rpn_cls = (bce_with_logits_sum(
            &select(&logits, &sampled)?,
            &Tensor::new(labels.as_slice(), dev)?,
        )? / n_s)?;
        let rpn_bbox = if s.pos.is_empty() {
            Tensor::zeros((), DType::F32, dev)?
        } else {
            let pos_anchors: Vec<[f32; 4]> = s.pos.iter().map(|&k| inside_anchors[k]).collect();
            let pos_gts = matched_gts(&s.pos, &assigned, gts);
            let targets = DeltaCoder::rpn()
                .encode(&pos_anchors, &pos_gts)
                .map_err(|e| a3d_err("rpn targets", e))?;
            let pos_idx: Vec<usize> = s.pos.iter().map(|&k| inside_idx[k]).collect();
            (smooth_l1_sum(
                &select(&deltas, &pos_idx)?,
                &boxes_tensor(&targets, dev)?,
                1.0 / 9.0,
            )? / n_s)?
        };
        // Proposals (detached) with the training settings.
        let mut config = self.config;
        config.rpn_pre_nms = TRAIN_PRE_NMS;
        config.rpn_post_nms = TRAIN_POST_NMS;
        let logit_values: Vec<f32> = logits.to_dtype(DType::F32)?.to_vec1()?;
        let (proposals, _) =
            self.rpn
                .proposals(&anchors, &logit_values, &rows4(&deltas)?, image, &config)?;
        // R-CNN targets: the ground truths first, as proposals, then the RPN's.
        let candidates: Vec<[f32; 4]> = gts.iter().chain(&proposals).copied().collect();
        let assigned = assign(&Assigner::rcnn(), &candidates, gts).unwrap_or_default();
        let s = sample(&Sampler::rcnn(), &assigned, rng);
        let rois_idx: Vec<usize> = s.pos.iter().chain(&s.neg).copied().collect();
        let n_rois = rois_idx.len().max(1) as f64;
        let rois: Vec<f32> = rois_idx
            .iter()
            .flat_map(|&i| {
                let b = candidates[i];
                [0.0, b[0], b[1], b[2], b[3]]
            })
            .collect();
        let rois = Tensor::from_vec(rois, (rois_idx.len(), 5), dev)?;
        let (cls, reg) = self.head.forward(&features, &rois)?;
        let labels: Vec<u32> = class_labels(&s, 1, 0);
        let rcnn_cls = (softmax_ce_sum(&cls, &Tensor::new(labels.as_slice(), dev)?)? / n_rois)?;
        let rcnn_bbox = if s.pos.is_empty() {
            Tensor::zeros((), DType::F32, dev)?
        } else {
            let pos_boxes: Vec<[f32; 4]> = s.pos.iter().map(|&i| candidates[i]).collect();
            let pos_gts = matched_gts(&s.pos, &assigned, gts);
            let targets = DeltaCoder::rcnn()
                .encode(&pos_boxes, &pos_gts)
                .map_err(|e| a3d_err("rcnn targets", e))?;
            // The positives are the first rows; their class-1 deltas are columns 4..8.
            let pred = reg.narrow(0, 0, s.pos.len())?.narrow(1, 4, 4)?;
            (smooth_l1_sum(&pred, &boxes_tensor(&targets, dev)?, 1.0)? / n_rois)?
        };
        let total = (((&rpn_cls + &rpn_bbox)? + &rcnn_cls)? + &rcnn_bbox)?;
        Ok(Losses {
            rpn_cls,
            rpn_bbox,
            rcnn_cls,
            rcnn_bbox,
            total,
        })
    }
}

/// The ground truth each sampled positive was assigned (every index in `pos` is a positive).
fn matched_gts(pos: &[usize], assigned: &[Assignment], gts: &[[f32; 4]]) -> Vec<[f32; 4]> {
    pos.iter()
        .map(|&k| match assigned[k] {
            Assignment::Positive(g) => gts[g],
            _ => gts[0],
        })
        .collect()
}

/// The class label of every sampled row: positives first, then negatives.
fn class_labels<T: Copy>(s: &Sampled, positive: T, negative: T) -> Vec<T> {
    std::iter::repeat_n(positive, s.pos.len())
        .chain(std::iter::repeat_n(negative, s.neg.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Sgd;
    use crate::{DetectorConfig, Preset};
    use a3d::candle::ContextFusion;
    use candle_core::Device;

    #[test]
    fn a_few_steps_lower_the_loss_on_one_image() {
        let config = DetectorConfig::new(Preset::Tiny, 3, ContextFusion::A3d);
        let (model, map) = Detector::init(config, 4, &Device::Cpu).unwrap();
        let (h, w) = (64usize, 64usize);
        let gt = [20.0f32, 24.0, 35.0, 39.0];
        // A bright square lesion on the middle slice only.
        let mut data = vec![-30.0f32; 3 * h * w];
        for y in 24..=39 {
            for x in 20..=35 {
                data[h * w + y * w + x] = 150.0;
            }
        }
        let input = NetworkInput::unresized(data, 3, (h, w), (h, w)).unwrap();
        let vars = crate::train::sorted_vars(&map)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let mut opt = Sgd::new(vars);
        let mut rng = a3d::rng::SplitMix64::new(1);
        let mut totals = Vec::new();
        for _ in 0..8 {
            let l = model.losses(&input, &[gt], None, &mut rng).unwrap();
            let total = l.total.to_scalar::<f32>().unwrap();
            assert!(total.is_finite());
            totals.push(total);
            let mut grads = l.total.backward().unwrap();
            crate::train::clip_grad_norm(&mut grads, opt.vars(), 35.0).unwrap();
            opt.step(&grads, 0.01).unwrap();
        }
        assert!(totals[7] < totals[0], "{totals:?}");
    }
}
