//! Writes the weights of a parity-fixture model (`a3d_detector::testing::fixture_model`) for
//! `scripts/torch_detector_fixtures.py`:
//!
//!     cargo run --release -p a3d-detector --example export_fixture_weights -- tiny 3 a3d 1 /tmp/w.safetensors

use a3d::candle::ContextFusion;
use a3d_detector::{testing::fixture_model, DetectorConfig, Preset};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 5 {
        return Err("usage: export_fixture_weights PRESET DEPTH FUSION SEED OUT".into());
    }
    let preset = Preset::from_name(&a[0]).ok_or("preset: tiny or reference")?;
    let fusion =
        ContextFusion::from_name(&a[2]).ok_or("fusion: a3d|tsm|alignshift|depthconv|none")?;
    let config = DetectorConfig::new(preset, a[1].parse()?, fusion);
    let (_, map) = fixture_model(config, a[3].parse()?)?;
    map.save(&a[4])?;
    println!("wrote {}", a[4]);
    Ok(())
}
