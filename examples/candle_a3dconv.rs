//! A3D from candle: two `A3dConv` layers on a CT volume, one SGD step.
//!
//! `cargo run --example candle_a3dconv --features candle`

use a3d::candle::{fuse, A3dConv, A3dConvConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, Optimizer, VarBuilder, VarMap};

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    // x: [B, C, D, H, W], D neighbouring CT slices.
    let (b, c, d, h, w) = (2, 3, 5, 32, 32);
    let x = Tensor::randn(0f32, 1.0, (b, c, d, h, w), &dev)?;

    // The fusion op alone: w [D, D, C], differentiable in x and w.
    let eye = Tensor::eye(d, DType::F32, &dev)?.unsqueeze(2)?;
    let y = fuse(&x, &eye.broadcast_as((d, d, c))?.contiguous()?)?;
    println!("fuse: {:?} -> {:?}", x.dims(), y.dims());

    // Layers: parameters `weight`, `bias`, `adaptive_align_weights` under "l1." and "l2.".
    // On the CPU (groups 1) each layer is one a3d custom op: fusion and the per-slice conv2d,
    // forward and backward, in a3d's A3DConv operator.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let l1 = A3dConv::new(A3dConvConfig::new(c, 8, d), vb.pp("l1"))?;
    let mut cfg = A3dConvConfig::new(8, 4, d);
    cfg.stride = 2;
    let l2 = A3dConv::new(cfg, vb.pp("l2"))?;

    let out = l2.forward(&l1.forward(&x)?.relu()?)?;
    println!("A3dConv x2: {:?} -> {:?}", x.dims(), out.dims()); // [2, 4, 5, 16, 16]

    let mut sgd = candle_nn::SGD::new(varmap.all_vars(), 0.01)?;
    let loss = out.sqr()?.mean_all()?;
    sgd.backward_step(&loss)?; // every layer's gradients from a3d's A3DConv backward
    println!("loss before one SGD step: {}", loss.to_scalar::<f32>()?);
    Ok(())
}
