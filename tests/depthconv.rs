//! The symmetric depth convolution on every backend of the build (CPU, host emulation of
//! kernels/depthconv.cu, a GPU when present) against the float64 reference, finite differences
//! of the reference, the banded Toeplitz cross-check through the fusion kernels, deterministic
//! weight gradients, and every bad argument.

mod common;

use a3d::backend::{Cpu, FusionBackend};
use a3d::depthconv::{self, reference, DepthConvDims};
use a3d::fusion::{FusionDims, Grads};
use a3d::rng::SplitMix64;
use a3d::{DType, Error, Tensor};
use common::{depthconv_backends, is_cpu, random, relative_error, tolerance};

const SHAPES: [[usize; 5]; 6] = [
    [1, 1, 1, 1, 1],
    [2, 3, 3, 5, 7],
    [1, 5, 7, 9, 11],
    [3, 2, 2, 1, 13],
    [1, 4, 16, 4, 4],
    [2, 2, 5, 17, 3],
];

fn dims(shape: [usize; 5], taps: usize) -> DepthConvDims {
    DepthConvDims {
        input: FusionDims::from_input_shape(&shape).unwrap(),
        taps,
    }
}

#[test]
fn every_backend_matches_the_reference() {
    let mut rng = SplitMix64::new(17);
    let backends = depthconv_backends();
    let mut checked = 0;
    for shape in SHAPES {
        for taps in [1, 3, 5, 7, 9] {
            let d = dims(shape, taps);
            for dtype in DType::ALL {
                let x = random(&shape, dtype, &mut rng);
                let dy = random(&shape, dtype, &mut rng);
                let v = depthconv::init_weights(taps, shape[1], rng.next_u64())
                    .unwrap()
                    .to_dtype(dtype);
                let (xf, vf, dyf) = (x.to_f64_vec(), v.to_f64_vec(), dy.to_f64_vec());
                let want = [
                    reference::forward(&d, &xf, &vf),
                    reference::grad_input(&d, &vf, &dyf),
                    reference::grad_weight(&d, &xf, &dyf),
                ];
                for backend in &backends {
                    let name = backend.name();
                    if taps > 7 && !is_cpu(&name) {
                        // Kernels exist for K <= 7; larger kernels are refused by name.
                        let e = backend.depthconv_forward(&x, &v).unwrap_err();
                        assert!(matches!(e, Error::Unavailable(_)), "{name}: {e:?}");
                        continue;
                    }
                    let y = backend.depthconv_forward(&x, &v).unwrap();
                    let g = backend
                        .depthconv_backward(&x, &v, &dy, Grads::BOTH)
                        .unwrap();
                    let got = [y, g.dx.unwrap(), g.dw.unwrap()];
                    for (pass, (got, want)) in ["forward", "grad_input", "grad_weight"]
                        .iter()
                        .zip(got.iter().zip(&want))
                    {
                        let err = relative_error(&got.to_f64_vec(), want);
                        assert!(
                            err <= tolerance(dtype),
                            "{name} {pass} K={taps} {dtype} {shape:?}: error {err:e}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    // 6 shapes x 3 dtypes x K = 1, 3, 5, 7 on every backend, and K = 9 on the CPU.
    assert_eq!(
        checked,
        6 * 3 * (4 * backends.len() + 1),
        "{checked} checks"
    );
}

/// Central differences of the float64 forward confirm the reference gradients, which the
/// kernels are checked against above.
#[test]
fn reference_gradients_match_finite_differences() {
    let mut rng = SplitMix64::new(4);
    let shape = [2, 3, 5, 2, 3];
    for taps in [1, 3, 5] {
        let d = dims(shape, taps);
        let n: usize = shape.iter().product();
        let x: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let g: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let v: Vec<f64> = (0..taps * 3).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let loss = |x: &[f64], v: &[f64]| -> f64 {
            reference::forward(&d, x, v)
                .iter()
                .zip(&g)
                .map(|(a, b)| a * b)
                .sum()
        };
        let dx = reference::grad_input(&d, &v, &g);
        let dv = reference::grad_weight(&d, &x, &g);
        let h = 1e-6;
        for i in (0..n).step_by(7) {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd = (loss(&xp, &v) - loss(&xm, &v)) / (2.0 * h);
            assert!(
                (fd - dx[i]).abs() < 1e-6,
                "dx[{i}] K={taps}: {fd} vs {}",
                dx[i]
            );
        }
        for i in 0..v.len() {
            let (mut vp, mut vm) = (v.clone(), v.clone());
            vp[i] += h;
            vm[i] -= h;
            let fd = (loss(&x, &vp) - loss(&x, &vm)) / (2.0 * h);
            assert!(
                (fd - dv[i]).abs() < 1e-6,
                "dv[{i}] K={taps}: {fd} vs {}",
                dv[i]
            );
        }
    }
}

/// The depth convolution equals A3D fusion with the banded Toeplitz matrix of its taps, run by
/// the fusion kernels: forward, input gradient, and the weight gradient summed along the band.
#[test]
fn equals_fusion_with_the_toeplitz_matrix() {
    let mut rng = SplitMix64::new(8);
    let shape = [2, 6, 7, 5, 9];
    // Extended only in builds with the emulation or CUDA.
    #[allow(unused_mut)]
    let mut fusion_backends: Vec<Box<dyn FusionBackend>> = vec![Box::new(Cpu)];
    #[cfg(feature = "emulation")]
    fusion_backends.push(Box::new(a3d::backend::Emulated::default()));
    for taps in [1, 3, 5, 7, 11] {
        let d = dims(shape, taps);
        let (nd, nc) = (shape[2], shape[1]);
        let x = random(&shape, DType::F32, &mut rng);
        let dy = random(&shape, DType::F32, &mut rng);
        let v = depthconv::init_weights(taps, nc, rng.next_u64()).unwrap();
        let w64 = reference::fusion_weights(&d, &v.to_f64_vec());
        let w = Tensor::from_vec(w64.iter().map(|&a| a as f32).collect(), &[nd, nd, nc]).unwrap();
        let y = depthconv::forward(&x, &v).unwrap().to_f64_vec();
        let g = depthconv::backward(&x, &v, &dy, Grads::BOTH).unwrap();
        for fb in &fusion_backends {
            let fy = fb.forward(&x, &w).unwrap().to_f64_vec();
            let fg = fb.backward(&x, &w, &dy, Grads::BOTH).unwrap();
            assert!(
                relative_error(&y, &fy) < 1e-6,
                "{} forward K={taps}",
                fb.name()
            );
            let fdx = fg.dx.unwrap().to_f64_vec();
            assert!(
                relative_error(&g.dx.clone().unwrap().to_f64_vec(), &fdx) < 1e-6,
                "dx K={taps}"
            );
            // dv[t, c] = sum over the band's diagonal t of dw[d, k, c].
            let fdw = fg.dw.unwrap().to_f64_vec();
            let r = taps / 2;
            let mut band = vec![0.0; taps * nc];
            for k in 0..nd {
                for t in 0..taps {
                    if let Some(src) = (k + t).checked_sub(r).filter(|&s| s < nd) {
                        for c in 0..nc {
                            band[t * nc + c] += fdw[(src * nd + k) * nc + c];
                        }
                    }
                }
            }
            let dv = g.dw.clone().unwrap().to_f64_vec();
            assert!(
                relative_error(&dv, &band) < 1e-5,
                "{} dv K={taps}",
                fb.name()
            );
        }
    }
}

/// The weight gradient does not depend on the thread count, bit for bit, and a run asking for
/// one gradient gives the same bits as a run asking for both.
#[test]
fn weight_gradient_is_deterministic() {
    let mut rng = SplitMix64::new(9);
    let shape = [2, 3, 7, 97, 101];
    let x = random(&shape, DType::F32, &mut rng);
    let dy = random(&shape, DType::F32, &mut rng);
    let v = depthconv::init_weights(3, 3, 1).unwrap();
    let run = |threads: usize, grads: Grads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| depthconv::backward(&x, &v, &dy, grads).unwrap())
    };
    let both = run(1, Grads::BOTH);
    for threads in [2, 3, 4] {
        assert_eq!(run(threads, Grads::BOTH), both, "{threads} threads");
    }
    assert_eq!(run(3, Grads::WEIGHT).dw, both.dw);
    assert_eq!(run(3, Grads::INPUT).dx, both.dx);
}

#[test]
fn bad_arguments_are_typed_errors() {
    let x = Tensor::zeros(&[2, 4, 3, 5, 5], DType::F32).unwrap();
    let v = Tensor::zeros(&[3, 4], DType::F32).unwrap();
    let even = Tensor::zeros(&[2, 4], DType::F32).unwrap();
    assert!(matches!(
        depthconv::forward(&x, &even).unwrap_err(),
        Error::InvalidArgument { arg: "v", .. }
    ));
    assert!(matches!(
        depthconv::init_weights(4, 3, 0).unwrap_err(),
        Error::InvalidArgument { arg: "taps", .. }
    ));
    let wrong_c = Tensor::zeros(&[3, 5], DType::F32).unwrap();
    assert!(matches!(
        depthconv::forward(&x, &wrong_c).unwrap_err(),
        Error::Shape { arg: "v", .. }
    ));
    let rank = Tensor::zeros(&[3, 4, 1], DType::F32).unwrap();
    assert!(matches!(
        depthconv::forward(&x, &rank).unwrap_err(),
        Error::Rank { arg: "v", .. }
    ));
    let v16 = v.to_dtype(DType::F16);
    assert!(matches!(
        depthconv::forward(&x, &v16).unwrap_err(),
        Error::DTypeMismatch { arg: "v", .. }
    ));
    let dy = Tensor::zeros(&[2, 4, 3, 5, 4], DType::F32).unwrap();
    assert!(matches!(
        depthconv::backward(&x, &v, &dy, Grads::BOTH).unwrap_err(),
        Error::Shape { arg: "dy", .. }
    ));
    let flat = Tensor::zeros(&[2, 4, 3], DType::F32).unwrap();
    assert!(matches!(
        depthconv::forward(&flat, &v).unwrap_err(),
        Error::Rank { arg: "x", .. }
    ));
    for backend in depthconv_backends() {
        assert!(
            backend.depthconv_forward(&x, &even).is_err(),
            "{}",
            backend.name()
        );
        assert!(backend
            .depthconv_backward(&flat, &v, &flat, Grads::BOTH)
            .is_err());
    }
    // Empty problems: zero gradients, no panic.
    let empty = Tensor::zeros(&[0, 4, 3, 5, 5], DType::F32).unwrap();
    for backend in depthconv_backends() {
        let g = backend
            .depthconv_backward(&empty, &v, &empty, Grads::BOTH)
            .unwrap();
        assert_eq!(
            g.dw.unwrap().to_f32_vec(),
            vec![0.0; 12],
            "{}",
            backend.name()
        );
    }
}
