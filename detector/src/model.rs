//! The whole detector: backbone, RPN, box head, and test-time detection of a network input.

use a3d_ct::network::NetworkInput;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::path::Path;
use std::sync::Arc;

use crate::backbone::Backbone;
use crate::config::DetectorConfig;
use crate::heads::{rows4, BoxHead, Rpn};
use crate::weights::{Seeded, Shared, Tracked};
use crate::{Error, Result};

/// What one detection pass produced for one image.
#[derive(Debug, Clone)]
pub struct Detections {
    /// The stride-4 feature map `[1, C, H/4, W/4]`.
    pub features: Tensor,
    /// RPN proposals (network pixels) and their objectness.
    pub proposals: Vec<[f32; 4]>,
    /// Scores of `proposals`.
    pub proposal_scores: Vec<f32>,
    /// Final boxes `[x1, y1, x2, y2]` in network pixels (0-based, inclusive corners), highest
    /// score first.
    pub boxes: Vec<[f32; 4]>,
    /// Lesion scores of `boxes`.
    pub scores: Vec<f32>,
}

/// The A3D lesion detector.
#[derive(Debug, Clone)]
pub struct Detector {
    pub(crate) config: DetectorConfig,
    pub(crate) backbone: Backbone,
    pub(crate) rpn: Rpn,
    pub(crate) head: BoxHead,
    pub(crate) device: Device,
}

impl Detector {
    /// Builds the model from `vb` (root of a checkpoint: `backbone.`, `rpn_head.`,
    /// `bbox_head.`). New variables get the reference initialisation.
    pub fn new(config: DetectorConfig, vb: VarBuilder) -> Result<Detector> {
        config.check().map_err(Error::Config)?;
        let device = vb.device().clone();
        Ok(Detector {
            backbone: Backbone::new(&config, vb.pp("backbone"))?,
            rpn: Rpn::new(&config, vb.pp("rpn_head"))?,
            head: BoxHead::new(&config, vb.pp("bbox_head"))?,
            config,
            device,
        })
    }

    /// A freshly initialised model (the reference's random initialisation; no ImageNet
    /// weights), its variables in the returned map (for training or saving). The same `seed`
    /// gives the same weights on any machine.
    pub fn init(config: DetectorConfig, seed: u64, device: &Device) -> Result<(Detector, VarMap)> {
        let seeded = Arc::new(Seeded::new(seed));
        let vb =
            VarBuilder::from_backend(Box::new(Shared(seeded.clone())), DType::F32, device.clone());
        let model = Detector::new(config, vb)?;
        Ok((model, seeded.map.clone()))
    }

    /// The model with `map`'s current values for evaluation, detached, so that a pass records
    /// no autograd graph: a model built on variables keeps every intermediate of a pass alive
    /// until the pass ends (its graph holds them), 3.6x the peak memory of the reference
    /// detector at D = 7, and slower. The weights share the variables' storage, but the
    /// batch-norm running statistics are copied when the model is built (candle's batch norms
    /// keep them as variables of their own): build it again after training steps.
    pub fn frozen(config: DetectorConfig, map: &VarMap, device: &Device) -> Result<Detector> {
        let tensors = map
            .data()
            .lock()
            .map_err(|_| Error::Argument {
                arg: "map",
                problem: "the variable map's lock is poisoned".into(),
            })?
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
            .collect();
        Detector::from_tensors(config, tensors, "variables".as_ref(), device)
    }

    /// A model initialised the reference's way from an ImageNet DenseNet-121 (torchvision's
    /// names, safetensors; `scripts/convert_checkpoint.py` converts torchvision's `.pth`): the
    /// stem, dense layers and transitions from ImageNet, everything else from the reference
    /// initialisation with `seed`. Backbone tensors the file lacks or has in another shape are
    /// an [`Error::Weights`] naming them. Returns the variables for training.
    pub fn init_imagenet(
        config: DetectorConfig,
        imagenet: &Path,
        seed: u64,
        device: &Device,
    ) -> Result<(Detector, VarMap)> {
        let bad = |problem: String| Error::Weights {
            path: imagenet.into(),
            problem,
        };
        let tensors = candle_core::safetensors::load(imagenet, device)
            .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
        let mapped = crate::imagenet::mapped(tensors)?;
        // The model shares its variables with the map: setting a variable updates the model.
        let (model, map) = Detector::init(config, seed, device)?;
        let mut problems = Vec::new();
        for (name, var) in crate::train::sorted_vars(&map)? {
            let from_imagenet = name.starts_with("backbone.conv0.")
                || name.starts_with("backbone.norm0.")
                || (name.starts_with("backbone.denseblock")
                    || name.starts_with("backbone.transition"))
                    && !name.ends_with("adaptive_align_weights")
                    && !name.ends_with("depth_conv_weights");
            if !from_imagenet {
                continue;
            }
            match mapped.get(name.as_str()) {
                Some(t) if t.dims() == var.dims() => var.set(&t.to_dtype(var.dtype())?)?,
                Some(t) => problems.push(format!(
                    "{name} is {:?} in the ImageNet file, the model needs {:?}",
                    t.dims(),
                    var.dims()
                )),
                None => problems.push(format!(
                    "missing {name} (torchvision: features.{})",
                    &name["backbone.".len()..]
                )),
            }
        }
        if !problems.is_empty() {
            let n = problems.len();
            problems.truncate(12);
            return Err(bad(format!("{n} problem(s): {}", problems.join("; "))));
        }
        Ok((model, map))
    }

    /// The model with the weights of the safetensors file at `path`; missing, unexpected and
    /// mis-shaped tensors are an [`Error::Weights`] naming them all.
    pub fn load(config: DetectorConfig, path: &Path, device: &Device) -> Result<Detector> {
        let tensors = candle_core::safetensors::load(path, device).map_err(|e| Error::Weights {
            path: path.into(),
            problem: format!("not a readable safetensors file: {e}"),
        })?;
        Detector::from_tensors(config, tensors, path, device)
    }

    /// As [`Detector::load`], from tensors in memory (`origin` names them in errors).
    pub fn from_tensors(
        config: DetectorConfig,
        tensors: std::collections::HashMap<String, Tensor>,
        origin: &Path,
        device: &Device,
    ) -> Result<Detector> {
        let tracked = Arc::new(Tracked::new(tensors));
        let vb = VarBuilder::from_backend(
            Box::new(Shared(tracked.clone())),
            DType::F32,
            device.clone(),
        );
        let model = Detector::new(config, vb)?;
        match tracked.report() {
            None => Ok(model),
            Some(problem) => Err(Error::Weights {
                path: origin.into(),
                problem,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The stride-4 map of `x` `[B, 1, D, H, W]` (evaluation mode).
    pub fn features(&self, x: &Tensor, thickness: Option<&[f32]>) -> Result<Tensor> {
        Ok(self.backbone.forward(x, thickness, false)?)
    }

    /// The network input as the tensor `[1, 1, D, Hp, Wp]` the backbone takes.
    pub fn input_tensor(&self, input: &NetworkInput) -> Result<Tensor> {
        if input.depth != self.config.depth {
            return Err(Error::Argument {
                arg: "input",
                problem: format!(
                    "{} slices; the model takes {}",
                    input.depth, self.config.depth
                ),
            });
        }
        Ok(Tensor::from_slice(
            &input.data,
            (1, 1, input.depth, input.padded_height, input.padded_width),
            &self.device,
        )?)
    }

    /// Detects lesions in one network input (evaluation mode). `thickness` is the scan's slice
    /// interval in mm, needed by AlignShift models.
    pub fn detect(&self, input: &NetworkInput, thickness: Option<f32>) -> Result<Detections> {
        let x = self.input_tensor(input)?;
        let thickness = thickness.map(|t| vec![t]);
        let features = self.features(&x, thickness.as_deref())?;
        let (_, _, fh, fw) = features.dims4()?;
        let (logits, deltas) = self.rpn.forward(&features)?;
        let anchors = self.rpn.anchors(fh, fw)?;
        let logits: Vec<f32> = logits.get(0)?.to_dtype(DType::F32)?.to_vec1()?;
        let deltas = rows4(&deltas.get(0)?)?;
        let image = (input.height, input.width);
        let (proposals, proposal_scores) =
            self.rpn
                .proposals(&anchors, &logits, &deltas, image, &self.config)?;
        if proposals.is_empty() {
            return Ok(Detections {
                features,
                proposals,
                proposal_scores,
                boxes: Vec::new(),
                scores: Vec::new(),
            });
        }
        let rois: Vec<f32> = proposals
            .iter()
            .flat_map(|b| [0.0, b[0], b[1], b[2], b[3]])
            .collect();
        let rois = Tensor::from_vec(rois, (proposals.len(), 5), &self.device)?;
        let (cls, reg) = self.head.forward(&features, &rois)?;
        let (boxes, scores) = self
            .head
            .detections(&proposals, &cls, &reg, image, &self.config)?;
        Ok(Detections {
            features,
            proposals,
            proposal_scores,
            boxes,
            scores,
        })
    }
}
