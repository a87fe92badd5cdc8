//! Criterion benchmarks of the symmetric context operators on the CPU: TSM, AlignShift (5 mm
//! slices, every shifted channel blended) and the depth convolution (K = 3), forward and
//! backward, next to a copy of the same bytes (the memory-bound limit) and A3D fusion on the
//! same input (the asymmetric operator they are compared with).
//!
//! `cargo bench --bench context_ops`; filter with e.g. `cargo bench --bench context_ops -- tsm`.

use a3d::fusion::{self, Grads};
use a3d::shift::Shift;
use a3d::{depthconv, DType, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;
use std::time::Duration;

const SHAPES: [[usize; 5]; 3] = [
    [1, 128, 7, 128, 128],
    [1, 256, 3, 128, 128],
    [2, 64, 7, 64, 64],
];

fn name(shape: &[usize; 5]) -> String {
    shape.map(|v| v.to_string()).join("x")
}

fn bench_context_ops(c: &mut Criterion) {
    for shape in SHAPES {
        let n: usize = shape.iter().product();
        let mut rng = a3d::rng::SplitMix64::new(1);
        let (xf, dyf) = (rng.vec_f32(n, -1.0, 1.0), rng.vec_f32(n, -1.0, 1.0));
        for dtype in [DType::F32, DType::BF16] {
            let x = Tensor::from_f32(&xf, &shape, dtype).unwrap();
            let dy = Tensor::from_f32(&dyf, &shape, dtype).unwrap();
            let mut y = Tensor::zeros(&shape, dtype).unwrap();
            let mut dx = Tensor::zeros(&shape, dtype).unwrap();
            let bytes = x.size_in_bytes();
            let mut g = c.benchmark_group(format!("context/{dtype}/{}", name(&shape)));
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
            let thickness = vec![5.0; shape[0]];
            let shifts = [
                ("tsm", Shift::tsm(8).unwrap()),
                (
                    "alignshift",
                    Shift::align_shift(&thickness, 2.0, false, 8).unwrap(),
                ),
            ];
            for (op, shift) in &shifts {
                g.bench_function(format!("{op}_forward"), |b| {
                    b.iter(|| shift.forward_into(&x, &mut y).unwrap())
                });
                g.bench_function(format!("{op}_backward"), |b| {
                    b.iter(|| shift.backward_into(&dy, &mut dx).unwrap())
                });
            }
            let v = depthconv::init_weights(3, shape[1], 2)
                .unwrap()
                .to_dtype(dtype);
            let mut dv = Tensor::zeros(v.shape(), dtype).unwrap();
            g.bench_function("depthconv_forward", |b| {
                b.iter(|| depthconv::forward_into(&x, &v, &mut y).unwrap())
            });
            let w = fusion::init_weights(shape[2], shape[1], 3)
                .unwrap()
                .to_dtype(dtype);
            g.bench_function("fusion_forward", |b| {
                b.iter(|| fusion::forward_into(&x, &w, &mut y).unwrap())
            });
            g.throughput(Throughput::Bytes(3 * bytes as u64));
            g.bench_function("depthconv_backward_dx_dv", |b| {
                b.iter(|| {
                    depthconv::backward_into(&x, &v, &dy, Some(&mut dx), Some(&mut dv)).unwrap()
                })
            });
            g.bench_function("depthconv_backward_dx", |b| {
                b.iter(|| depthconv::backward(&x, &v, &dy, Grads::INPUT).unwrap())
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench_context_ops);
criterion_main!(benches);
