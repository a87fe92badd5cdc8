//! A3D fusion against the float64 reference on every backend of the build (the CPU, the host
//! emulation of kernels/fusion.cu on several pretend GPUs, a real GPU when present), finite
//! differences, determinism and error handling.

mod common;

use a3d::backend::FusionBackend;
use a3d::fusion::{self, reference, FusionDims, Grads};
use a3d::rng::SplitMix64;
use a3d::selftest;
use a3d::{DType, Error, Tensor};
use half::{bf16, f16};

fn random(shape: &[usize], dtype: DType, rng: &mut SplitMix64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(&rng.vec_f32(n, -1.0, 1.0), shape, dtype).unwrap()
}

/// Forward, dx and dw against float64 for one shape and dtype; outputs are NaN-poisoned first
/// (by the `a3d::backend::Cpu` backend) so unwritten elements fail.
fn check_against_reference(shape: [usize; 5], dtype: DType, rng: &mut SplitMix64) {
    let dims = FusionDims::from_input_shape(&shape).unwrap();
    let x = random(&shape, dtype, rng);
    let dy = random(&shape, dtype, rng);
    let w = fusion::init_weights(shape[2], shape[1], rng.next_u64())
        .unwrap()
        .to_dtype(dtype);
    let (xf, wf, dyf) = (x.to_f64_vec(), w.to_f64_vec(), dy.to_f64_vec());
    let cpu = a3d::backend::Cpu;
    let tol = selftest::tolerance(dtype);

    let y = cpu.forward(&x, &w).unwrap();
    let err = reference::relative_error(&y.to_f64_vec(), &reference::forward(&dims, &xf, &wf));
    assert!(
        err <= tol,
        "forward {dtype} {shape:?}: error {err:e} > {tol:e}"
    );

    let g = cpu.backward(&x, &w, &dy, Grads::BOTH).unwrap();
    let dx = g.dx.unwrap().to_f64_vec();
    let err = reference::relative_error(&dx, &reference::grad_input(&dims, &wf, &dyf));
    assert!(err <= tol, "dx {dtype} {shape:?}: error {err:e} > {tol:e}");
    let dw = g.dw.unwrap().to_f64_vec();
    let err = reference::relative_error(&dw, &reference::grad_weight(&dims, &xf, &dyf));
    assert!(err <= tol, "dw {dtype} {shape:?}: error {err:e} > {tol:e}");
}

#[test]
fn matches_float64_reference_on_odd_shapes() {
    let mut rng = SplitMix64::new(1);
    let planes = [(1, 1), (1, 7), (5, 3), (9, 13)];
    let mut cases = 0;
    for b in [1, 2, 3] {
        for c in [1, 3, 5, 17] {
            for d in [1, 2, 3, 5, 7, 9, 16, 17] {
                // Every combination of B, C, D; the plane sizes rotate through the list.
                let (h, w) = planes[(b + c + d) % planes.len()];
                for dtype in DType::ALL {
                    check_against_reference([b, c, d, h, w], dtype, &mut rng);
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 3 * 4 * 8 * 3);
}

#[test]
fn matches_reference_on_every_plane_size() {
    let mut rng = SplitMix64::new(2);
    for (h, w) in [(1, 1), (1, 7), (5, 3), (9, 13), (7, 1), (17, 19)] {
        for d in [1, 3, 7, 16, 17] {
            for dtype in DType::ALL {
                check_against_reference([2, 3, d, h, w], dtype, &mut rng);
            }
        }
    }
}

#[test]
fn matches_reference_across_work_items() {
    // Planes larger than one CPU work item (8192 pixels), with a partial last item.
    let mut rng = SplitMix64::new(3);
    for shape in [[2, 3, 3, 97, 101], [1, 2, 17, 91, 93], [3, 1, 7, 128, 65]] {
        for dtype in DType::ALL {
            check_against_reference(shape, dtype, &mut rng);
        }
    }
}

/// `L(x, w) = sum(fuse(x, w) * r)`, evaluated through the f32 forward, summed in f64.
fn loss(x: &Tensor, w: &Tensor, r: &[f64]) -> f64 {
    let y = fusion::forward(x, w).unwrap().to_f64_vec();
    y.iter().zip(r).map(|(a, b)| a * b).sum()
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = SplitMix64::new(4);
    for shape in [[2, 3, 5, 3, 7], [1, 2, 17, 5, 5], [3, 1, 1, 1, 9]] {
        let x = random(&shape, DType::F32, &mut rng);
        let w = fusion::init_weights(shape[2], shape[1], 9).unwrap();
        let r = random(&shape, DType::F32, &mut rng);
        let rf = r.to_f64_vec();
        let g = fusion::backward(&x, &w, &r, Grads::BOTH).unwrap();
        let (dx, dw) = (g.dx.unwrap().to_f64_vec(), g.dw.unwrap().to_f64_vec());
        // The loss is linear in each argument, so a large step is exact up to rounding.
        let h = 0.25f32;
        let probe = |t: &Tensor, i: usize, delta: f32| {
            let mut v = t.to_f32_vec();
            v[i] += delta;
            Tensor::from_vec(v, t.shape()).unwrap()
        };
        for _ in 0..25 {
            let i = rng.below(x.len() as u64) as usize;
            let fd = (loss(&probe(&x, i, h), &w, &rf) - loss(&probe(&x, i, -h), &w, &rf))
                / (2.0 * h as f64);
            assert!(
                (fd - dx[i]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "dx[{i}] {shape:?}: analytic {} vs finite difference {fd}",
                dx[i]
            );
            let j = rng.below(w.len() as u64) as usize;
            let fd = (loss(&x, &probe(&w, j, h), &rf) - loss(&x, &probe(&w, j, -h), &rf))
                / (2.0 * h as f64);
            assert!(
                (fd - dw[j]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "dw[{j}] {shape:?}: analytic {} vs finite difference {fd}",
                dw[j]
            );
        }
    }
}

fn dw_in_pool(threads: usize, x: &Tensor, w: &Tensor, dy: &Tensor) -> Tensor {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| fusion::backward(x, w, dy, Grads::WEIGHT).unwrap())
        .dw
        .unwrap()
}

#[test]
fn weight_gradient_is_bitwise_identical_for_any_thread_count() {
    let mut rng = SplitMix64::new(5);
    for (shape, dtype) in [
        ([3, 5, 7, 91, 97], DType::F32),
        ([2, 3, 17, 101, 83], DType::F32),
        ([2, 4, 3, 99, 101], DType::BF16),
        ([1, 3, 5, 120, 77], DType::F16),
    ] {
        // Scale up so the sums are large and rounding-order sensitive.
        let x = random(&shape, dtype, &mut rng);
        let dy = random(&shape, dtype, &mut rng);
        let w = fusion::init_weights(shape[2], shape[1], 1)
            .unwrap()
            .to_dtype(dtype);
        let one = dw_in_pool(1, &x, &w, &dy);
        let four = dw_in_pool(4, &x, &w, &dy);
        let again = dw_in_pool(4, &x, &w, &dy);
        let three = dw_in_pool(3, &x, &w, &dy);
        assert_eq!(one, four, "{shape:?} {dtype}: 1 vs 4 threads");
        assert_eq!(four, again, "{shape:?} {dtype}: run to run");
        assert_eq!(one, three, "{shape:?} {dtype}: 1 vs 3 threads");
    }
}

#[test]
fn one_gradient_costs_only_itself_and_agrees_with_both() {
    let mut rng = SplitMix64::new(6);
    let shape = [2, 3, 7, 9, 11];
    let x = random(&shape, DType::F32, &mut rng);
    let dy = random(&shape, DType::F32, &mut rng);
    let w = fusion::init_weights(7, 3, 2).unwrap();
    let both = fusion::backward(&x, &w, &dy, Grads::BOTH).unwrap();
    let dx_only = fusion::backward(&x, &w, &dy, Grads::INPUT).unwrap();
    let dw_only = fusion::backward(&x, &w, &dy, Grads::WEIGHT).unwrap();
    assert!(dx_only.dw.is_none() && dw_only.dx.is_none());
    assert_eq!(dx_only.dx, both.dx);
    assert_eq!(dw_only.dw, both.dw);
    // dx does not depend on x at all: garbage in x must not change it.
    let nan_x = Tensor::full(&shape, f32::NAN, DType::F32).unwrap();
    let dx_nan = fusion::backward(&nan_x, &w, &dy, Grads::INPUT).unwrap();
    assert_eq!(dx_nan.dx, both.dx);
}

#[test]
fn symmetric_depth_conv_is_a_banded_a3d() {
    // A shared 3-tap depth convolution v[3, C] is A3D with w[d, k, c] = v[d - k + 1, c].
    let mut rng = SplitMix64::new(7);
    let (b, c, d, h, wd) = (2, 3, 6, 5, 4);
    let x = random(&[b, c, d, h, wd], DType::F32, &mut rng);
    let v = rng.vec_f32(3 * c, -1.0, 1.0);
    let mut w = vec![0.0f32; d * d * c];
    for di in 0..d {
        for k in 0..d {
            let t = di as isize - k as isize + 1;
            if (0..3).contains(&t) {
                for ch in 0..c {
                    w[(di * d + k) * c + ch] = v[t as usize * c + ch];
                }
            }
        }
    }
    let y = fusion::forward(&x, &Tensor::from_vec(w, &[d, d, c]).unwrap())
        .unwrap()
        .to_f32_vec();
    let xs = x.to_f32_vec();
    let p = h * wd;
    for bi in 0..b {
        for ch in 0..c {
            for k in 0..d {
                for px in 0..p {
                    let mut s = 0.0f64;
                    for t in -1isize..=1 {
                        let src = k as isize + t;
                        if (0..d as isize).contains(&src) {
                            s += v[(t + 1) as usize * c + ch] as f64
                                * xs[((bi * c + ch) * d + src as usize) * p + px] as f64;
                        }
                    }
                    let got = y[((bi * c + ch) * d + k) * p + px] as f64;
                    assert!((got - s).abs() < 1e-5, "depth conv mismatch");
                }
            }
        }
    }
}

#[test]
fn bad_inputs_return_typed_errors() {
    let x = Tensor::zeros(&[2, 3, 4, 5, 6], DType::F32).unwrap();
    let w = Tensor::zeros(&[4, 4, 3], DType::F32).unwrap();
    let dy = x.clone();

    let rank4 = Tensor::zeros(&[2, 3, 4, 5], DType::F32).unwrap();
    assert!(matches!(
        fusion::forward(&rank4, &w),
        Err(Error::Rank { arg: "x", .. })
    ));
    let w_rank = Tensor::zeros(&[16, 3], DType::F32).unwrap();
    assert!(matches!(
        fusion::forward(&x, &w_rank),
        Err(Error::Rank { arg: "w", .. })
    ));
    for bad in [[4, 4, 2], [3, 4, 3], [4, 3, 3]] {
        let w_bad = Tensor::zeros(&bad, DType::F32).unwrap();
        assert_eq!(
            fusion::forward(&x, &w_bad).unwrap_err(),
            Error::Shape {
                arg: "w",
                expected: vec![4, 4, 3],
                got: bad.to_vec()
            }
        );
    }
    let w16 = w.to_dtype(DType::F16);
    assert_eq!(
        fusion::forward(&x, &w16).unwrap_err(),
        Error::DTypeMismatch {
            arg: "w",
            expected: DType::F32,
            got: DType::F16
        }
    );
    let dy_bad = Tensor::zeros(&[2, 3, 4, 5, 7], DType::F32).unwrap();
    assert!(matches!(
        fusion::backward(&x, &w, &dy_bad, Grads::BOTH),
        Err(Error::Shape { arg: "dy", .. })
    ));
    assert!(matches!(
        fusion::backward(&x, &w, &rank4, Grads::BOTH),
        Err(Error::Rank { arg: "dy", .. })
    ));
    assert!(matches!(
        fusion::backward(&x, &w, &dy.to_dtype(DType::BF16), Grads::INPUT),
        Err(Error::DTypeMismatch { arg: "dy", .. })
    ));
    let mut y_bad = Tensor::zeros(&[2, 3, 4, 5, 5], DType::F32).unwrap();
    assert!(matches!(
        fusion::forward_into(&x, &w, &mut y_bad),
        Err(Error::Shape { arg: "y", .. })
    ));
    let mut y_dt = Tensor::zeros(x.shape(), DType::BF16).unwrap();
    assert!(matches!(
        fusion::forward_into(&x, &w, &mut y_dt),
        Err(Error::DTypeMismatch { arg: "y", .. })
    ));
    let mut dw_bad = Tensor::zeros(&[4, 4, 4], DType::F32).unwrap();
    assert!(matches!(
        fusion::backward_into(&x, &w, &dy, None, Some(&mut dw_bad)),
        Err(Error::Shape { arg: "dw", .. })
    ));
    let mut dx_bad = Tensor::zeros(x.shape(), DType::F16).unwrap();
    assert!(matches!(
        fusion::backward_into(&x, &w, &dy, Some(&mut dx_bad), None),
        Err(Error::DTypeMismatch { arg: "dx", .. })
    ));
    // Shapes whose element count overflows are refused before anything is allocated.
    assert!(matches!(
        FusionDims::from_input_shape(&[usize::MAX / 2, 3, 1, 1, 1]),
        Err(Error::ElementCountOverflow { .. })
    ));
    assert!(matches!(
        Tensor::zeros(&[1 << 22, 1 << 22, 1 << 22, 1, 1], DType::F32),
        Err(Error::ElementCountOverflow { .. })
    ));
    // Countable but far beyond any memory: an error, not an abort.
    assert!(matches!(
        Tensor::zeros(&[1 << 20, 1 << 20, 1 << 20, 1, 1], DType::F32),
        Err(Error::OutOfMemory { .. })
    ));
    assert!(matches!(
        fusion::init_weights(usize::MAX, 2, 0),
        Err(Error::ElementCountOverflow { .. })
    ));
    assert!(matches!(
        Tensor::from_vec(vec![0.0f32; 10], &[2, 3]),
        Err(Error::DataLength { .. })
    ));
}

#[test]
fn empty_tensors_give_empty_results() {
    for shape in [
        [0, 3, 4, 5, 6],
        [2, 0, 4, 5, 6],
        [2, 3, 0, 5, 6],
        [2, 3, 4, 0, 6],
        [2, 3, 4, 5, 0],
    ] {
        for dtype in DType::ALL {
            let x = Tensor::zeros(&shape, dtype).unwrap();
            let w = Tensor::full(&[shape[2], shape[2], shape[1]], 1.0, dtype).unwrap();
            let y = fusion::forward(&x, &w).unwrap();
            assert_eq!(y.shape(), &shape);
            assert!(y.is_empty());
            let g = fusion::backward(&x, &w, &x, Grads::BOTH).unwrap();
            assert!(g.dx.unwrap().is_empty());
            let dw = g.dw.unwrap();
            assert_eq!(dw.shape(), w.shape());
            assert!(dw.to_f32_vec().iter().all(|&v| v == 0.0));
            // Into a NaN-poisoned dw: zero sums must still be written.
            let mut dw = Tensor::full(w.shape(), f32::NAN, dtype).unwrap();
            fusion::backward_into(&x, &w, &x, None, Some(&mut dw)).unwrap();
            assert!(dw.to_f32_vec().iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn nan_and_inf_propagate_like_arithmetic() {
    let shape = [1, 2, 3, 2, 17];
    let mut rng = SplitMix64::new(8);
    for dtype in DType::ALL {
        let mut xs = rng.vec_f32(2 * 3 * 34, -1.0, 1.0);
        xs[0] = f32::NAN; // channel 0, slice 0, pixel 0
        xs[(3 + 1) * 34 + 5] = f32::INFINITY; // channel 1, slice 1, pixel 5
        let x = Tensor::from_f32(&xs, &shape, dtype).unwrap();
        let w = fusion::init_weights(3, 2, 3).unwrap().to_dtype(dtype);
        let y = fusion::forward(&x, &w).unwrap().to_f32_vec();
        for k in 0..3 {
            assert!(
                y[k * 34].is_nan(),
                "{dtype}: NaN reaches every output slice"
            );
            assert!(y[k * 34 + 1].is_finite());
            assert!(y[(3 + k) * 34 + 5].is_infinite(), "{dtype}: Inf propagates");
            assert!(y[(3 + k) * 34 + 6].is_finite());
        }
        let g = fusion::backward(&x, &w, &x, Grads::WEIGHT).unwrap();
        let dw = g.dw.unwrap().to_f32_vec();
        // Channel 0 saw a NaN in x and dy; channel 1 an Inf in both (Inf * Inf = Inf, and
        // Inf * finite of either sign may meet -Inf: NaN or Inf, never finite).
        assert!(dw.iter().step_by(2).any(|v| v.is_nan()));
        assert!(dw.iter().skip(1).step_by(2).any(|v| !v.is_finite()));
    }
}

#[test]
fn typed_tensors_round_trip() {
    let t = Tensor::from_vec(vec![f16::from_f32(0.5); 6], &[1, 1, 1, 2, 3]).unwrap();
    assert_eq!(
        t.to_dtype(DType::BF16).as_slice::<bf16>().unwrap()[0],
        bf16::from_f32(0.5)
    );
    assert!(t.as_slice::<f32>().is_err());
}

/// Forward, grad-input and grad-weight (every kernel family: specialised and general depths,
/// vector and scalar paths, grids of small and large GPUs, both thread orders) on every backend.
#[test]
fn every_backend_passes_the_selftest() {
    for (i, backend) in common::fusion_backends().iter().enumerate() {
        let checks = selftest::run_fusion(backend.as_ref(), 11 + i as u64);
        assert_eq!(checks.len(), selftest::SHAPES.len() * 3 * 3);
        for c in &checks {
            assert!(c.passed(), "{c}");
        }
    }
}

/// The emulated grad-weight kernels give the same bits run to run and on the vector and the
/// scalar (misaligned) path.
#[cfg(feature = "emulation")]
#[test]
fn emulated_grad_weight_is_deterministic_and_alignment_independent() {
    use a3d::backend::Emulated;
    let mut rng = SplitMix64::new(4);
    for (shape, dtype) in [
        ([2, 3, 7, 33, 35], DType::F32),
        ([1, 2, 17, 20, 21], DType::BF16),
    ] {
        let x = random(&shape, dtype, &mut rng);
        let dy = random(&shape, dtype, &mut rng);
        let w = fusion::init_weights(shape[2], shape[1], 1)
            .unwrap()
            .to_dtype(dtype);
        let dw = |b: Emulated| b.backward(&x, &w, &dy, Grads::WEIGHT).unwrap().dw.unwrap();
        let aligned = Emulated::default();
        let misaligned = Emulated {
            misaligned: true,
            ..aligned
        };
        let first = dw(aligned);
        assert_eq!(first, dw(aligned), "{shape:?} {dtype}: run to run");
        assert_eq!(
            first,
            dw(misaligned),
            "{shape:?} {dtype}: vector vs scalar path"
        );
    }
}

/// Empty inputs on every backend: empty outputs, zero weight gradients.
#[test]
fn every_backend_handles_empty_inputs() {
    let x = Tensor::zeros(&[2, 3, 4, 0, 5], DType::F16).unwrap();
    let w = Tensor::zeros(&[4, 4, 3], DType::F16).unwrap();
    for b in common::fusion_backends() {
        assert!(b.forward(&x, &w).unwrap().is_empty(), "{}", b.name());
        let g = b.backward(&x, &w, &x, Grads::BOTH).unwrap();
        assert!(
            g.dw.unwrap().to_f32_vec().iter().all(|&v| v == 0.0),
            "{}",
            b.name()
        );
    }
}

/// The backend validates before it reads the shape: a rank-2 input is an error, not a panic.
#[test]
fn backend_backward_validates_before_indexing() {
    let x = Tensor::zeros(&[2, 3], DType::F32).unwrap();
    let w = Tensor::zeros(&[3, 3, 2], DType::F32).unwrap();
    let err = a3d::backend::Cpu
        .backward(&x, &w, &x, Grads::BOTH)
        .unwrap_err();
    assert!(matches!(err, Error::Rank { arg: "x", .. }), "{err:?}");
    assert!(a3d::backend::Cpu.forward(&x, &w).is_err());
}
