//! Criterion benchmarks of A3D fusion on the CPU: forward and backward (dx + dw) next to a copy
//! of the same bytes (the memory-bound limit) and a straightforward loop implementation.
//!
//! `cargo bench --bench fusion` (all dtypes and default shapes); filter with e.g.
//! `cargo bench --bench fusion -- f32/1x128x7x128x128`.

use a3d::fusion::{self, FusionDims, Grads};
use a3d::{DType, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use std::time::Duration;

const SHAPES: [[usize; 5]; 3] = [
    [1, 128, 7, 128, 128],
    [1, 256, 3, 128, 128],
    [2, 64, 7, 64, 64],
];

/// The loops a user would write first: one output element at a time, one thread.
fn naive_forward(dims: &FusionDims, x: &[f32], w: &[f32], y: &mut [f32]) {
    let (nc, nd, np) = (dims.channels, dims.depth, dims.pixels);
    for b in 0..dims.batch {
        for c in 0..nc {
            for k in 0..nd {
                for p in 0..np {
                    let mut s = 0.0f32;
                    for d in 0..nd {
                        s += x[((b * nc + c) * nd + d) * np + p] * w[(d * nd + k) * nc + c];
                    }
                    y[((b * nc + c) * nd + k) * np + p] = s;
                }
            }
        }
    }
}

fn name(shape: &[usize; 5]) -> String {
    shape.map(|v| v.to_string()).join("x")
}

fn bench_fusion(c: &mut Criterion) {
    for shape in SHAPES {
        let dims = FusionDims::from_input_shape(&shape).unwrap();
        let mut rng = a3d::rng::SplitMix64::new(1);
        let xf = rng.vec_f32(dims.len(), -1.0, 1.0);
        let dyf = rng.vec_f32(dims.len(), -1.0, 1.0);
        for dtype in DType::ALL {
            let x = Tensor::from_f32(&xf, &shape, dtype).unwrap();
            let dy = Tensor::from_f32(&dyf, &shape, dtype).unwrap();
            let w = fusion::init_weights(shape[2], shape[1], 3)
                .unwrap()
                .to_dtype(dtype);
            let mut y = Tensor::zeros(&shape, dtype).unwrap();
            let mut dx = Tensor::zeros(&shape, dtype).unwrap();
            let mut dw = Tensor::zeros(w.shape(), dtype).unwrap();
            let bytes = x.size_in_bytes();
            let mut g = c.benchmark_group(format!("fusion/{dtype}/{}", name(&shape)));
            g.sample_size(10).measurement_time(Duration::from_secs(2));
            g.warm_up_time(Duration::from_millis(300));

            g.throughput(Throughput::Bytes(2 * bytes as u64));
            let src = vec![7u8; bytes];
            let mut dst = vec![0u8; bytes];
            g.bench_function("copy", |b| {
                b.iter(|| {
                    dst.par_chunks_mut(1 << 20)
                        .zip(src.par_chunks(1 << 20))
                        .for_each(|(d, s)| d.copy_from_slice(s))
                })
            });
            g.bench_function("forward", |b| {
                b.iter(|| fusion::forward_into(&x, &w, &mut y).unwrap())
            });
            g.throughput(Throughput::Bytes(3 * bytes as u64));
            g.bench_function("backward_dx_dw", |b| {
                b.iter(|| fusion::backward_into(&x, &w, &dy, Some(&mut dx), Some(&mut dw)).unwrap())
            });
            g.bench_function("backward_dx", |b| {
                b.iter(|| fusion::backward(&x, &w, &dy, Grads::INPUT).unwrap())
            });
            if dtype == DType::F32 {
                let (xs, ws) = (x.as_slice::<f32>().unwrap(), w.as_slice::<f32>().unwrap());
                let mut ys = vec![0.0f32; dims.len()];
                g.throughput(Throughput::Bytes(2 * bytes as u64));
                g.bench_with_input(
                    BenchmarkId::new("naive_forward", "1 thread"),
                    &(),
                    |b, _| b.iter(|| naive_forward(&dims, xs, ws, &mut ys)),
                );
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench_fusion);
criterion_main!(benches);
