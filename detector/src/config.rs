//! The detector's sizes and test-time settings: the paper's `reference` preset and a `tiny` one
//! that runs the same code with fewer, narrower layers.

use a3d::candle::ContextFusion;

/// Which sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The published detector: DenseNet-121 blocks 6/12/24, growth 32, FPN 512, FC 2048.
    Reference,
    /// Blocks 2/2/2, growth 8, 16 stem channels, FPN 32, FC 64: trains on a CPU in minutes.
    Tiny,
}

impl Preset {
    /// `reference` or `tiny`.
    pub fn from_name(name: &str) -> Option<Preset> {
        match name {
            "reference" => Some(Preset::Reference),
            "tiny" => Some(Preset::Tiny),
            _ => None,
        }
    }

    /// The name [`Preset::from_name`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Reference => "reference",
            Preset::Tiny => "tiny",
        }
    }
}

/// Everything that sizes the network and its test-time post-processing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// Slices D of the input (odd).
    pub depth: usize,
    /// The context operator of the dense layers' convolutions.
    pub fusion: ContextFusion,
    /// Stem (conv0) channels.
    pub init_features: usize,
    /// Channels each dense layer adds.
    pub growth: usize,
    /// Bottleneck width = `bn_size * growth`.
    pub bn_size: usize,
    /// Dense layers per block.
    pub blocks: [usize; 3],
    /// Channels of the stride-4 feature map (FPN, RPN conv).
    pub fpn_channels: usize,
    /// Width of the two shared FC layers.
    pub fc_channels: usize,
    /// RoIAlign output size.
    pub roi_size: usize,
    /// Test: proposals kept before the RPN's NMS.
    pub rpn_pre_nms: usize,
    /// Test: proposals kept after it.
    pub rpn_post_nms: usize,
    /// RPN NMS IoU.
    pub rpn_nms_iou: f32,
    /// Test: boxes scoring at or below this are dropped.
    pub score_threshold: f32,
    /// Final NMS IoU.
    pub nms_iou: f32,
    /// Most boxes per image.
    pub max_per_image: usize,
}

impl DetectorConfig {
    /// The preset's sizes with the reference test settings.
    pub fn new(preset: Preset, depth: usize, fusion: ContextFusion) -> DetectorConfig {
        let (init_features, growth, bn_size, blocks, fpn_channels, fc_channels) = match preset {
            Preset::Reference => (64, 32, 4, [6, 12, 24], 512, 2048),
            Preset::Tiny => (16, 8, 2, [2, 2, 2], 32, 64),
        };
        DetectorConfig {
            depth,
            fusion,
            init_features,
            growth,
            bn_size,
            blocks,
            fpn_channels,
            fc_channels,
            roi_size: 7,
            rpn_pre_nms: 6000,
            rpn_post_nms: 300,
            rpn_nms_iou: 0.7,
            score_threshold: 5e-5,
            nms_iou: 0.5,
            max_per_image: 50,
        }
    }

    /// Channels out of each dense block (the reduction-z and lateral inputs).
    pub fn block_channels(&self) -> [usize; 3] {
        let mut c = self.init_features;
        let mut out = [0; 3];
        for (i, n) in self.blocks.iter().enumerate() {
            c += n * self.growth;
            out[i] = c;
            c /= 2;
        }
        out
    }

    /// Multiply-adds x 2 of the backbone and merge on an `h x w` input (convolutions, fusion,
    /// reduction-z and laterals; norms, ReLUs and pooling are memory-bound and not counted).
    pub fn backbone_flops(&self, h: usize, w: usize) -> f64 {
        let d = self.depth as f64;
        let fused = matches!(self.fusion, ContextFusion::A3d);
        let mut flops = 2.0 * (self.init_features * 49) as f64 * (h / 2 * (w / 2)) as f64 * d;
        let widths = self.block_channels();
        let bottleneck = (self.bn_size * self.growth) as f64;
        let mut c = self.init_features as f64;
        for (i, &n) in self.blocks.iter().enumerate() {
            let px = ((h >> (i + 2)) * (w >> (i + 2))) as f64;
            for l in 0..n {
                let f = c + (l * self.growth) as f64;
                flops += 2.0 * bottleneck * f * px * d
                    + 2.0 * self.growth as f64 * bottleneck * 9.0 * px * d;
                if fused {
                    flops += 2.0 * (f + bottleneck) * d * d * px;
                }
            }
            let cw = widths[i] as f64;
            flops += 2.0 * cw * cw * d * px + 2.0 * cw * self.fpn_channels as f64 * px;
            if i < 2 {
                flops += 2.0 * (cw / 2.0) * cw * px * d;
            }
            c = cw / 2.0;
        }
        flops
    }

    /// Checks the sizes.
    pub fn check(&self) -> Result<(), String> {
        if self.depth == 0 || self.depth.is_multiple_of(2) {
            return Err(format!(
                "depth {}: needs an odd number of slices",
                self.depth
            ));
        }
        let c = self.block_channels();
        if c.iter().any(|c| c % 2 != 0) || self.growth == 0 || self.bn_size == 0 {
            return Err(format!(
                "block widths {c:?} must be even and growth positive"
            ));
        }
        if !(0.0..=1.0).contains(&self.rpn_nms_iou) || !(0.0..=1.0).contains(&self.nms_iou) {
            return Err("NMS thresholds must lie in [0, 1]".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_widths() {
        let c = DetectorConfig::new(Preset::Reference, 3, ContextFusion::A3d);
        assert_eq!(c.block_channels(), [256, 512, 1024]);
        let t = DetectorConfig::new(Preset::Tiny, 3, ContextFusion::A3d);
        assert_eq!(t.block_channels(), [32, 32, 32]);
        assert!(DetectorConfig::new(Preset::Tiny, 4, ContextFusion::A3d)
            .check()
            .is_err());
    }
}
