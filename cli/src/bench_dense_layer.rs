//! `a3d bench dense-layer`: one DenseNet-A3D dense layer in training mode, `BatchNorm3d(F) ->
//! ReLU -> A3DConv 1x1 F->128 -> BatchNorm3d(128) -> ReLU -> A3DConv 3x3 128->32` (fusion
//! weights in both convolutions, no bias, as the reference), timed two ways in the same
//! interleaved rounds:
//!
//! - `unfused`: batch statistics, BN-ReLU written to memory, then the convolution, per half;
//!   the backward runs the convolution's backward, then the BN-ReLU's training backward.
//! - `fused`: batch statistics, then the convolution with the BN-ReLU as its prologue (the
//!   pre-activated tensors never exist); the backward gets the prologue's gradients from the
//!   convolution's backward and adds the terms through the batch statistics in one pass.
//!
//! `bench/torch_dense_layer.py` times the same layer in PyTorch (eager, 2 threads).

use crate::bench::{interleaved_medians_ms, Copy, Row, RowSet};
use a3d::a3dconv::{A3dConv, Conv2dParams, Grads};
use a3d::batchnorm::{self, BatchNorm};
use a3d::{DType, Result, Tensor};

/// The default inputs `[B, F, D, H, W]`: the F in {64, 160, 256} at D = 3, and D = 7.
pub const DEFAULT_SHAPES: [[usize; 5]; 4] = [
    [1, 64, 3, 128, 128],
    [1, 160, 3, 128, 128],
    [1, 256, 3, 128, 128],
    [1, 64, 7, 128, 128],
];
const BOTTLENECK: usize = 128;
const GROWTH: usize = 32;

/// One dense layer's parameters.
struct Layer {
    norm1: (Vec<f32>, Vec<f32>),
    norm2: (Vec<f32>, Vec<f32>),
    fw1: Tensor,
    cw1: Tensor,
    fw2: Tensor,
    cw2: Tensor,
}

impl Layer {
    fn new(f: usize, d: usize, rng: &mut a3d::rng::SplitMix64) -> Result<Layer> {
        let uniform = |rng: &mut a3d::rng::SplitMix64, shape: &[usize], bound: f32| {
            let n: usize = shape.iter().product();
            Tensor::from_vec(rng.vec_f32(n, -bound, bound), shape)
        };
        Ok(Layer {
            norm1: (rng.vec_f32(f, 0.5, 1.5), rng.vec_f32(f, -0.2, 0.2)),
            norm2: (
                rng.vec_f32(BOTTLENECK, 0.5, 1.5),
                rng.vec_f32(BOTTLENECK, -0.2, 0.2),
            ),
            fw1: a3d::fusion::init_weights(d, f, 1)?,
            cw1: uniform(rng, &[BOTTLENECK, f, 1, 1], (1.0 / f as f32).sqrt())?,
            fw2: a3d::fusion::init_weights(d, BOTTLENECK, 2)?,
            cw2: uniform(
                rng,
                &[GROWTH, BOTTLENECK, 3, 3],
                (1.0 / (9 * BOTTLENECK) as f32).sqrt(),
            )?,
        })
    }

    fn bn1(&self) -> BatchNorm<'_> {
        BatchNorm {
            weight: &self.norm1.0,
            bias: &self.norm1.1,
            eps: batchnorm::DEFAULT_EPS,
        }
    }
    fn bn2(&self) -> BatchNorm<'_> {
        BatchNorm {
            weight: &self.norm2.0,
            bias: &self.norm2.1,
            eps: batchnorm::DEFAULT_EPS,
        }
    }
    fn conv1(&self) -> A3dConv<'_> {
        A3dConv {
            fusion_weight: Some(&self.fw1),
            conv_weight: &self.cw1,
            bias: None,
            params: Conv2dParams::default(),
        }
    }
    fn conv2(&self) -> A3dConv<'_> {
        A3dConv {
            fusion_weight: Some(&self.fw2),
            conv_weight: &self.cw2,
            bias: None,
            params: Conv2dParams::padded(1),
        }
    }

    /// The unfused forward; with `dy`, the backward too. Returns the output.
    fn unfused(&self, x: &Tensor, dy: Option<&Tensor>) -> Result<Tensor> {
        let (a1, s1) = self.bn1().train_forward(x)?;
        let z1 = self.conv1().forward(&a1)?;
        let (a2, s2) = self.bn2().train_forward(&z1)?;
        let y = self.conv2().forward(&a2)?;
        if let Some(dy) = dy {
            let g2 = self.conv2().backward(&a2, dy, Grads::ALL)?;
            let dz1 = self
                .bn2()
                .train_backward(&z1, &s2, g2.dx.as_ref().ok_or_else(missing)?)?;
            let g1 = self.conv1().backward(&a1, &dz1.dx, Grads::ALL)?;
            self.bn1()
                .train_backward(x, &s1, g1.dx.as_ref().ok_or_else(missing)?)?;
        }
        Ok(y)
    }

    /// The fused forward (BN-ReLU as each convolution's prologue); with `dy`, the backward.
    fn fused(&self, x: &Tensor, dy: Option<&Tensor>) -> Result<Tensor> {
        let s1 = batchnorm::channel_stats(x)?;
        let p1 = self.bn1().eval_affine(&s1.mean, &s1.var)?;
        let z1 = self.conv1().forward_with(x, Some(&p1))?;
        let s2 = batchnorm::channel_stats(&z1)?;
        let p2 = self.bn2().eval_affine(&s2.mean, &s2.var)?;
        let y = self.conv2().forward_with(&z1, Some(&p2))?;
        if let Some(dy) = dy {
            let g2 = self.conv2().backward_with(&z1, Some(&p2), dy, Grads::ALL)?;
            let mut dz1 = g2.dx.ok_or_else(missing)?;
            let (ds, dt) = (
                g2.d_scale.ok_or_else(missing)?,
                g2.d_shift.ok_or_else(missing)?,
            );
            self.bn2()
                .train_backward_from_prologue(&z1, &s2, &ds, &dt, &mut dz1)?;
            let g1 = self.conv1().backward_with(x, Some(&p1), &dz1, Grads::ALL)?;
            let mut dx = g1.dx.ok_or_else(missing)?;
            let (ds, dt) = (
                g1.d_scale.ok_or_else(missing)?,
                g1.d_shift.ok_or_else(missing)?,
            );
            self.bn1()
                .train_backward_from_prologue(x, &s1, &ds, &dt, &mut dx)?;
        }
        Ok(y)
    }
}

fn missing() -> a3d::Error {
    a3d::Error::Backend {
        backend: "cpu",
        message: "a requested gradient is missing".into(),
    }
}

/// Forward and forward + backward, unfused and fused, with a copy of x's bytes, on the CPU.
pub fn dense_layer_cpu(shape: [usize; 5], runs: usize) -> std::result::Result<Vec<Row>, String> {
    let s = |e: a3d::Error| e.to_string();
    let [b, f, d, h, w] = shape;
    let mut rng = a3d::rng::SplitMix64::new(0xde05e);
    let x = crate::bench_context::random_tensor(&shape, DType::F32, &mut rng)?;
    let layer = Layer::new(f, d, &mut rng).map_err(s)?;
    let dy = crate::bench_context::random_tensor(&[b, GROWTH, d, h, w], DType::F32, &mut rng)?;
    // The two ways agree (checked once, outside the timing).
    let (yu, yf) = (
        layer.unfused(&x, None).map_err(s)?,
        layer.fused(&x, None).map_err(s)?,
    );
    let worst = yu
        .to_f32_vec()
        .iter()
        .zip(yf.to_f32_vec())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    if worst > 1e-3 {
        return Err(format!(
            "dense layer: fused and unfused outputs differ by {worst}"
        ));
    }
    let mut copy = Copy::try_new(x.size_in_bytes())?;
    let m = interleaved_medians_ms(
        runs,
        &mut [
            &mut || copy.run(),
            &mut || {
                let _ = layer.unfused(&x, None);
            },
            &mut || {
                let _ = layer.fused(&x, None);
            },
            &mut || {
                let _ = layer.unfused(&x, Some(&dy));
            },
            &mut || {
                let _ = layer.fused(&x, Some(&dy));
            },
        ],
    );
    let x_bytes = x.size_in_bytes();
    let unfused = RowSet::cpu("dense_unfused", DType::F32, &shape, m[0]);
    let fused = RowSet::cpu("dense_fused", DType::F32, &shape, m[0]);
    Ok(vec![
        unfused.row("forward", m[1], x_bytes),
        fused.row("forward", m[2], x_bytes),
        unfused.row("forward+backward", m[3], 2 * x_bytes),
        fused.row("forward+backward", m[4], 2 * x_bytes),
    ])
}
