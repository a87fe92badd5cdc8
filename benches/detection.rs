//! Criterion benchmarks of the detection ops on the CPU: RoIAlign forward and backward (the
//! reference box head: 7 x 7, sampling 2, scale 1/4) next to a copy of the output's bytes, NMS
//! of proposal-like boxes at IoU 0.7, and the IoU matrix.
//!
//! `cargo bench --bench detection`; filter with e.g. `cargo bench --bench detection -- nms`.
//! (`a3d bench roi-align | nms` times the full-size problems against torchvision.)

use a3d::boxes::{iou_matrix, Nms, PixelConvention};
use a3d::roi_align::RoiAlign;
use a3d::{DType, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;

/// `n` boxes clustered around 30 objects in a 512 x 512 image.
fn clustered(n: usize, rng: &mut a3d::rng::SplitMix64) -> Vec<[f32; 4]> {
    let objects: Vec<[f64; 4]> = (0..30)
        .map(|_| {
            [
                rng.uniform(0.0, 512.0),
                rng.uniform(0.0, 512.0),
                rng.uniform(8.0, 200.0),
                rng.uniform(8.0, 200.0),
            ]
        })
        .collect();
    (0..n)
        .map(|_| {
            let o = objects[rng.below(30) as usize];
            let (cx, cy) = (
                o[0] + o[2] * rng.uniform(-0.1, 0.1),
                o[1] + o[3] * rng.uniform(-0.1, 0.1),
            );
            let (w, h) = (o[2] * rng.uniform(0.8, 1.2), o[3] * rng.uniform(0.8, 1.2));
            [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
                .map(|v| v.clamp(0.0, 511.0) as f32)
        })
        .collect()
}

fn bench_detection(c: &mut Criterion) {
    let mut rng = a3d::rng::SplitMix64::new(2);
    let mut g = c.benchmark_group("detection");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));

    let shape = [1usize, 256, 64, 64];
    let x = Tensor::from_f32(
        &rng.vec_f32(shape.iter().product(), -1.0, 1.0),
        &shape,
        DType::F32,
    )
    .unwrap();
    let rois: Vec<[f32; 5]> = clustered(100, &mut rng)
        .into_iter()
        .map(|b| [0.0, b[0] / 2.0, b[1] / 2.0, b[2] / 2.0, b[3] / 2.0])
        .collect();
    let op = RoiAlign::reference();
    let mut y = op.forward(&x, &rois).unwrap();
    let dy = Tensor::from_f32(&rng.vec_f32(y.len(), -1.0, 1.0), y.shape(), DType::F32).unwrap();
    let mut dx = Tensor::zeros(&shape, DType::F32).unwrap();
    let (src, mut dst) = (vec![1u8; y.size_in_bytes()], vec![0u8; y.size_in_bytes()]);
    g.bench_function("copy/roi_align_output/100x256x7x7", |b| {
        b.iter(|| dst.copy_from_slice(&src))
    });
    g.bench_function("roi_align/forward/100_rois/1x256x64x64", |b| {
        b.iter(|| op.forward_into(&x, &rois, &mut y).unwrap())
    });
    g.bench_function("roi_align/backward/100_rois/1x256x64x64", |b| {
        b.iter(|| op.backward_into(&rois, &dy, &mut dx).unwrap())
    });

    let boxes = clustered(6000, &mut rng);
    let scores = rng.vec_f32(6000, 0.0, 1.0);
    let nms = Nms::reference(0.7);
    g.bench_function("nms/6000/iou0.7", |b| {
        b.iter(|| nms.run(&boxes, &scores).unwrap())
    });
    g.bench_function("iou_matrix/300x6000", |b| {
        b.iter(|| iou_matrix(&boxes[..300], &boxes, PixelConvention::Inclusive).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_detection);
criterion_main!(benches);
