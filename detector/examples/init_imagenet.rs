//! Writes a detector checkpoint initialised the reference's way from an ImageNet DenseNet-121
//! (torchvision's names, converted with `scripts/convert_checkpoint.py`):
//!
//!     python3 scripts/convert_checkpoint.py densenet121-a639ec97.pth /tmp/densenet121.safetensors
//!     cargo run --release -p a3d-detector --example init_imagenet -- 3 a3d /tmp/densenet121.safetensors /tmp/a3d-imagenet.safetensors

use a3d::candle::ContextFusion;
use a3d_detector::{Detector, DetectorConfig, Preset};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 4 {
        return Err(
            "usage: init_imagenet SLICES FUSION IMAGENET.safetensors OUT.safetensors".into(),
        );
    }
    let fusion =
        ContextFusion::from_name(&a[1]).ok_or("fusion: a3d|tsm|alignshift|depthconv|none")?;
    let config = DetectorConfig::new(Preset::Reference, a[0].parse()?, fusion);
    let (_, map) = Detector::init_imagenet(config, a[2].as_ref(), 0, &candle_core::Device::Cpu)?;
    map.save(&a[3])?;
    println!("wrote {}", a[3]);
    Ok(())
}
