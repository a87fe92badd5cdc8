//! RoIAlign on every backend of the build against the float64 reference: both pixel
//! conventions, fixed and adaptive sampling, RoIs inside, across and outside the map, inverted
//! and degenerate, every dtype; the backward pass checked the same way and as the exact adjoint
//! of the forward pass; the CPU gradient bitwise identical for any thread count.

mod common;

use a3d::rng::SplitMix64;
use a3d::roi_align::{reference, RoiAlign, RoiAlignMode};
use a3d::{DType, Tensor};
use common::{random, relative_error, roi_align_backends, tolerance};

const SHAPE: [usize; 4] = [2, 5, 13, 17];

fn rois(rng: &mut SplitMix64) -> Vec<[f32; 5]> {
    let mut out = vec![
        [0.0, 0.0, 0.0, 67.0, 51.0],       // the whole map at scale 1/4
        [1.0, 10.5, 7.25, 30.0, 41.75],    // interior, fractional
        [1.0, -20.0, -9.0, 12.0, 6.0],     // across the top-left edge
        [0.0, 60.0, 45.0, 90.0, 80.0],     // across the bottom-right edge
        [0.0, 100.0, 100.0, 140.0, 130.0], // outside: zeros
        [1.0, 33.0, 20.0, 31.5, 19.0],     // inverted (delta decoding can make these)
        [0.0, 40.0, 30.0, 40.0, 30.0],     // a single pixel
    ];
    for _ in 0..6 {
        let v = rng.vec_f32(4, 0.0, 1.0);
        let (x, y) = (v[0] * 60.0, v[1] * 45.0);
        out.push([
            (v[2] > 0.5) as u8 as f32,
            x,
            y,
            x + v[2] * 40.0,
            y + v[3] * 30.0,
        ]);
    }
    out
}

fn settings() -> Vec<RoiAlign> {
    let base = RoiAlign::reference();
    vec![
        base,
        RoiAlign {
            mode: RoiAlignMode::Aligned,
            ..base
        },
        RoiAlign {
            sampling_ratio: 0,
            pooled_h: 3,
            pooled_w: 2,
            ..base
        },
        RoiAlign {
            sampling_ratio: 0,
            mode: RoiAlignMode::Aligned,
            spatial_scale: 0.5,
            ..base
        },
    ]
}

#[test]
fn forward_and_backward_match_float64_on_every_backend() {
    let mut rng = SplitMix64::new(3);
    let r = rois(&mut rng);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let x = random(&SHAPE, dtype, &mut rng);
        let x64 = x.to_f64_vec();
        for op in settings() {
            let out_shape = [r.len(), SHAPE[1], op.pooled_h, op.pooled_w];
            let dy = random(&out_shape, dtype, &mut rng);
            let want_y = reference::forward(&op, &x64, SHAPE, &r);
            let want_dx = reference::backward(&op, SHAPE, &r, &dy.to_f64_vec());
            // The adjoint identity <dy, RoIAlign(x)> = <RoIAlign^T(dy), x> holds for the
            // reference pair (the op is linear in x, so this is the finite-difference check).
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
            let (lhs, rhs) = (dot(&dy.to_f64_vec(), &want_y), dot(&want_dx, &x64));
            assert!(
                (lhs - rhs).abs() <= 1e-9 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
            for b in roi_align_backends() {
                let name = b.name();
                let y = b.roi_align_forward(&op, &x, &r).unwrap();
                assert_eq!(y.shape(), &out_shape);
                assert_eq!(y.dtype(), dtype);
                let e = relative_error(&y.to_f64_vec(), &want_y);
                assert!(e <= tolerance(dtype), "{name} {dtype} {op:?} forward: {e}");
                let dx = b.roi_align_backward(&op, &SHAPE, &r, &dy).unwrap();
                assert_eq!(dx.dtype(), dtype);
                let e = relative_error(&dx.to_f64_vec(), &want_dx);
                assert!(e <= tolerance(dtype), "{name} {dtype} {op:?} backward: {e}");
            }
        }
    }
}

#[test]
fn outside_rois_pool_zeros_and_get_no_gradient() {
    let mut rng = SplitMix64::new(8);
    let x = random(&SHAPE, DType::F32, &mut rng);
    let op = RoiAlign::reference();
    let far = [[0.0, 200.0, 200.0, 260.0, 240.0]];
    for b in roi_align_backends() {
        let y = b.roi_align_forward(&op, &x, &far).unwrap();
        assert!(y.to_f32_vec().iter().all(|&v| v == 0.0), "{}", b.name());
        let dy = Tensor::full(y.shape(), 1.0, DType::F32).unwrap();
        let dx = b.roi_align_backward(&op, &SHAPE, &far, &dy).unwrap();
        assert!(dx.to_f32_vec().iter().all(|&v| v == 0.0), "{}", b.name());
    }
}

#[test]
fn cpu_backward_is_the_same_bits_for_any_thread_count() {
    let mut rng = SplitMix64::new(9);
    let r: Vec<[f32; 5]> = (0..40).map(|_| rois(&mut rng)[8]).collect();
    let op = RoiAlign::reference();
    let dy = random(&[r.len(), SHAPE[1], 7, 7], DType::F32, &mut rng);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| op.backward(&SHAPE, &r, &dy).unwrap().to_f32_vec())
    };
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(run(1)), bits(run(3)));
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = Tensor::zeros(&SHAPE, DType::F32).unwrap();
    let op = RoiAlign::reference();
    let ok = [0.0, 1.0, 1.0, 5.0, 5.0];
    let cases: Vec<(RoiAlign, Vec<[f32; 5]>)> = vec![
        (op, vec![[0.0, f32::NAN, 1.0, 5.0, 5.0]]),
        (op, vec![[2.0, 1.0, 1.0, 5.0, 5.0]]), // batch index out of range
        (op, vec![[0.5, 1.0, 1.0, 5.0, 5.0]]), // not an integer
        (op, vec![[-1.0, 1.0, 1.0, 5.0, 5.0]]),
        (
            RoiAlign {
                spatial_scale: 0.0,
                ..op
            },
            vec![ok],
        ),
        (
            RoiAlign {
                spatial_scale: f32::INFINITY,
                ..op
            },
            vec![ok],
        ),
        (RoiAlign { pooled_h: 0, ..op }, vec![ok]),
        (
            RoiAlign {
                sampling_ratio: 0,
                spatial_scale: 1e30,
                ..op
            },
            vec![[0.0, 0.0, 0.0, 1e9, 1e9]],
        ),
    ];
    for b in roi_align_backends() {
        for (o, r) in &cases {
            assert!(
                b.roi_align_forward(o, &x, r).is_err(),
                "{} {o:?} {r:?}",
                b.name()
            );
        }
        let bad_rank = Tensor::zeros(&[2, 5, 13], DType::F32).unwrap();
        assert!(b.roi_align_forward(&op, &bad_rank, &[ok]).is_err());
        // No RoIs: an empty result, not an error.
        let y = b.roi_align_forward(&op, &x, &[]).unwrap();
        assert_eq!(y.shape(), &[0, 5, 7, 7]);
        let dy = Tensor::zeros(&[1, 5, 6, 7], DType::F32).unwrap();
        assert!(
            b.roi_align_backward(&op, &SHAPE, &[ok], &dy).is_err(),
            "{}",
            b.name()
        );
    }
}
