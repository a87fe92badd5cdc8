//! Criterion benchmarks of A3DConv's forward on the CPU, f32, on the same data: a3d's operator
//! (`a3d::a3dconv::A3dConv`: fusion pass, slab im2col + GEMM) against the candle path
//! (`a3d::candle::fuse`, then candle's `conv2d` over the B*D slices; see [`candle_path`]).
//!
//! `cargo bench --bench a3dconv --features candle`; filter with e.g.
//! `cargo bench --bench a3dconv --features candle -- 64x64`.

use a3d::a3dconv::{A3dConv, Conv2dParams};
use a3d::{fusion, Tensor};
use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

/// `(input shape, O, K)`, padding K / 2, fusion and bias on: the dense layer's 3x3 128 -> 32.
const CASES: [([usize; 5], usize, usize); 2] =
    [([1, 128, 3, 64, 64], 32, 3), ([1, 128, 3, 128, 128], 32, 3)];

fn candle_tensor(t: &Tensor) -> candle_core::Tensor {
    candle_core::Tensor::from_vec(t.to_f32_vec(), t.shape(), &Device::Cpu).unwrap()
}

/// The fusion + conv2d path of `a3d::candle::A3dConv`, written out here so the bench times it
/// whichever path the module picks: a3d's fusion as a candle op, the slices as a contiguous
/// `[B*D, C, H, W]`, candle's `conv2d` and bias add (what `candle_nn::Conv2d` does), and the
/// result viewed back as `[B, O, D, H', W']` (a permuted view, not copied).
fn candle_path(
    x: &candle_core::Tensor,
    fusion_weight: &candle_core::Tensor,
    conv_weight: &candle_core::Tensor,
    bias: &candle_core::Tensor,
    padding: usize,
) -> candle_core::Result<candle_core::Tensor> {
    let (b, c, d, h, w) = x.dims5()?;
    let z = a3d::candle::fuse(x, fusion_weight)?;
    let slices = z.permute((0, 2, 1, 3, 4))?.reshape((b * d, c, h, w))?;
    let y = slices
        .conv2d(conv_weight, padding, 1, 1, 1)?
        .broadcast_add(bias)?;
    let (_, o, h2, w2) = y.dims4()?;
    y.reshape((b, d, o, h2, w2))?.permute((0, 2, 1, 3, 4))
}

fn bench_a3dconv(c: &mut Criterion) {
    for (shape, o, k) in CASES {
        let [_, ch, d, h, w] = shape;
        let mut rng = a3d::rng::SplitMix64::new(1);
        let x = Tensor::from_vec(rng.vec_f32(shape.iter().product(), -1.0, 1.0), &shape).unwrap();
        let fw = fusion::init_weights(d, ch, 3).unwrap();
        let bound = 1.0 / ((ch * k * k) as f32).sqrt();
        let cw =
            Tensor::from_vec(rng.vec_f32(o * ch * k * k, -bound, bound), &[o, ch, k, k]).unwrap();
        let bias = Tensor::from_vec(rng.vec_f32(o, -bound, bound), &[o]).unwrap();
        let layer = A3dConv {
            fusion_weight: Some(&fw),
            conv_weight: &cw,
            bias: Some(&bias),
            params: Conv2dParams::padded(k / 2),
        };
        let dims = layer.dims(&x).unwrap();

        // The same parameters as candle tensors.
        let (cx, cfw, ccw) = (candle_tensor(&x), candle_tensor(&fw), candle_tensor(&cw));
        let cbias = candle_tensor(&bias).reshape((1, o, 1, 1)).unwrap();
        let candle_forward = || candle_path(&cx, &cfw, &ccw, &cbias, k / 2);

        // Both paths compute the same layer: compare once before timing.
        let ya = layer.forward(&x).unwrap().to_f32_vec();
        let yc = candle_forward().unwrap();
        assert_eq!(yc.dims(), &dims.output_shape());
        let yc = yc.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (num, den) = ya.iter().zip(&yc).fold((0.0f64, 0.0f64), |(n, d), (a, b)| {
            let (a, b) = (f64::from(*a), f64::from(*b));
            (n + (a - b) * (a - b), d + b * b)
        });
        let rel = (num / den.max(f64::MIN_POSITIVE)).sqrt();
        assert!(
            rel < 1e-4,
            "a3d and candle disagree: relative error {rel:.2e}"
        );

        let name = format!("a3dconv/{k}x{k}_c{ch}_o{o}/{h}x{w}");
        let mut g = c.benchmark_group(name);
        g.sample_size(10).measurement_time(Duration::from_secs(3));
        g.warm_up_time(Duration::from_millis(500));
        // Elements: the convolution's FLOPs, so criterion's "elem/s" reads as FLOP/s.
        g.throughput(Throughput::Elements(dims.conv_flops() as u64));
        g.bench_function("a3d", |b| b.iter(|| layer.forward(&x).unwrap()));
        g.bench_function("candle", |b| b.iter(|| candle_forward().unwrap()));
        g.finish();
    }
}

criterion_group!(benches, bench_a3dconv);
criterion_main!(benches);
