//! TSM and AlignShift on every backend of the build (CPU, host emulation of kernels/shift.cu,
//! a GPU when present) against the float64 reference, the same maps computed by the A3D fusion
//! kernels with the structured weights, bit-exact TSM moves, and every bad argument.

mod common;

use a3d::backend::{Cpu, FusionBackend, ShiftBackend};
use a3d::fusion::{self, Grads};
use a3d::rng::SplitMix64;
use a3d::shift::reference::ShiftProblem;
use a3d::shift::Shift;
use a3d::{DType, Error, Tensor};
use common::{random, relative_error, shift_backends, tolerance};

/// Odd shapes: depth 1..7, channel counts that fold_div does and does not divide, planes that
/// are not a multiple of any vector width.
const SHAPES: [[usize; 5]; 6] = [
    [1, 1, 1, 1, 1],
    [2, 9, 3, 5, 7],
    [1, 16, 7, 3, 11],
    [3, 5, 2, 1, 13],
    [2, 17, 5, 4, 4],
    [1, 8, 4, 17, 9],
];

fn cases(rng: &mut SplitMix64, shape: [usize; 5]) -> Vec<(Shift, ShiftProblem)> {
    let c = shape[1];
    let mut out = Vec::new();
    for fold_div in [1, 2, 3, 8].into_iter().filter(|&f| f <= c) {
        out.push((
            Shift::tsm(fold_div).unwrap(),
            ShiftProblem::tsm(shape, fold_div),
        ));
        for padding_zero in [false, true] {
            // Thicker and thinner than the reference spacing, and exactly it (alpha 0).
            let thickness: Vec<f32> = (0..shape[0])
                .map(|b| [0.7, 2.0, 5.0, 1.25 + rng.below(40) as f32 * 0.25][b % 4])
                .collect();
            let th64: Vec<f64> = thickness.iter().map(|&t| t as f64).collect();
            out.push((
                Shift::align_shift(&thickness, 2.0, padding_zero, fold_div).unwrap(),
                ShiftProblem::align_shift(shape, fold_div, &th64, 2.0, padding_zero),
            ));
        }
    }
    out
}

#[test]
fn every_backend_matches_the_reference() {
    let mut rng = SplitMix64::new(11);
    let backends = shift_backends();
    let mut checked = 0;
    for shape in SHAPES {
        for (shift, problem) in cases(&mut rng, shape) {
            for dtype in DType::ALL {
                let x = random(&shape, dtype, &mut rng);
                let dy = random(&shape, dtype, &mut rng);
                let want_y = problem.forward(&x.to_f64_vec());
                let want_dx = problem.backward(&dy.to_f64_vec());
                for backend in &backends {
                    let y = backend.shift_forward(&shift, &x).unwrap();
                    let dx = backend.shift_backward(&shift, &dy).unwrap();
                    // TSM only moves values: exact in every dtype.
                    let tol = if shift.is_align_shift() {
                        tolerance(dtype)
                    } else {
                        0.0
                    };
                    for (what, got, want) in [("forward", &y, &want_y), ("backward", &dx, &want_dx)]
                    {
                        let err = relative_error(&got.to_f64_vec(), want);
                        assert!(
                            err <= tol,
                            "{} {what} {shift:?} {dtype} {shape:?}: error {err:e}",
                            backend.name()
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    // Every case ran on every backend (the cases: 6 shapes x fold_divs x 3 settings x 3 dtypes).
    assert_eq!(checked, 180 * backends.len(), "{checked} checks");
}

/// The backward pass is the transpose: <shift(x), dy> = <x, shift^T(dy)>.
#[test]
fn backward_is_the_transpose_of_forward() {
    let mut rng = SplitMix64::new(5);
    let shape = [2, 12, 5, 3, 7];
    for (shift, _) in cases(&mut rng, shape) {
        let x = random(&shape, DType::F32, &mut rng);
        let dy = random(&shape, DType::F32, &mut rng);
        let y = shift.forward(&x).unwrap().to_f64_vec();
        let dx = shift.backward(&dy).unwrap().to_f64_vec();
        let lhs: f64 = y.iter().zip(dy.to_f64_vec()).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.to_f64_vec().iter().zip(&dx).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rhs).abs() <= 1e-5 * lhs.abs().max(1.0),
            "{shift:?}: {lhs} vs {rhs}"
        );
    }
}

/// Each sample's shift equals A3D fusion with the shift's structured weight matrix, computed by
/// the fusion kernels of every fusion backend (forward and grad-input).
#[test]
fn equals_fusion_with_the_shift_matrix() {
    let mut rng = SplitMix64::new(23);
    let shape = [1, 16, 7, 5, 9];
    // Extended only in builds with the emulation or CUDA.
    #[allow(unused_mut)]
    let mut fusion_backends: Vec<Box<dyn FusionBackend>> = vec![Box::new(Cpu)];
    #[cfg(feature = "emulation")]
    fusion_backends.push(Box::new(a3d::backend::Emulated::default()));
    for (shift, problem) in cases(&mut rng, shape) {
        let x = random(&shape, DType::F32, &mut rng);
        let dy = random(&shape, DType::F32, &mut rng);
        let w: Vec<f32> = problem
            .fusion_weights(0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let w = Tensor::from_vec(w, &[shape[2], shape[2], shape[1]]).unwrap();
        let y = shift.forward(&x).unwrap().to_f64_vec();
        let dx = shift.backward(&dy).unwrap().to_f64_vec();
        for fb in &fusion_backends {
            let fy = fb.forward(&x, &w).unwrap().to_f64_vec();
            let fdx = fb.backward(&x, &w, &dy, Grads::INPUT).unwrap().dx.unwrap();
            assert!(
                relative_error(&y, &fy) < 1e-6,
                "{} forward {shift:?}",
                fb.name()
            );
            assert!(
                relative_error(&dx, &fdx.to_f64_vec()) < 1e-6,
                "{} backward {shift:?}",
                fb.name()
            );
        }
    }
    // And the fusion weights of a TSM really are a permutation with zero rows.
    let p = ShiftProblem::tsm([1, 8, 3, 1, 1], 8);
    let w = p.fusion_weights(0);
    assert!(w.iter().all(|&v| v == 0.0 || v == 1.0));
    let w = Tensor::from_vec(w.iter().map(|&v| v as f32).collect(), &[3, 3, 8]).unwrap();
    let x = random(&[1, 8, 3, 1, 1], DType::F32, &mut rng);
    assert_eq!(
        fusion::forward(&x, &w).unwrap().to_f32_vec(),
        Shift::tsm(8).unwrap().forward(&x).unwrap().to_f32_vec()
    );
}

/// TSM moves stored bits: infinities stay infinities, NaN stays NaN (no 0 * inf), and half
/// types are not rounded.
#[test]
fn tsm_moves_values_exactly() {
    let shape = [1, 4, 3, 1, 2];
    let mut vals: Vec<f32> = (0..24).map(|i| i as f32 * 0.1 + 1e-3).collect();
    vals[0] = f32::INFINITY;
    vals[9] = f32::NAN;
    vals[13] = f32::NEG_INFINITY;
    for dtype in DType::ALL {
        let x = Tensor::from_f32(&vals, &shape, dtype).unwrap();
        let stored = x.to_f32_vec();
        let shift = Shift::tsm(4).unwrap();
        for backend in shift_backends() {
            let y = backend.shift_forward(&shift, &x).unwrap().to_f32_vec();
            // fold = 1: channel 0 takes slice d+1, channel 1 slice d-1, channels 2, 3 pass.
            for d in 0..3 {
                for p in 0..2 {
                    let at = |c: usize, d: usize| (c * 3 + d) * 2 + p;
                    let expect =
                        |c: usize, src: Option<usize>| src.map_or(0.0, |s| stored[at(c, s)]);
                    let cases = [
                        (0, expect(0, (d + 1 < 3).then_some(d + 1))),
                        (1, expect(1, d.checked_sub(1))),
                        (2, stored[at(2, d)]),
                        (3, stored[at(3, d)]),
                    ];
                    for (c, want) in cases {
                        let got = y[at(c, d)];
                        assert!(
                            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                            "{} {dtype} c{c} d{d}: {got} vs {want}",
                            backend.name()
                        );
                    }
                }
            }
        }
    }
}

/// A tensor larger than the streaming-store threshold (16 MiB) and than one pixel chunk.
#[test]
fn large_planes_take_the_streaming_path() {
    let mut rng = SplitMix64::new(3);
    let shape = [1, 16, 3, 301, 299];
    let x = random(&shape, DType::F32, &mut rng);
    for shift in [
        Shift::tsm(8).unwrap(),
        Shift::align_shift(&[3.0], 2.0, true, 4).unwrap(),
    ] {
        let problem = if shift.is_align_shift() {
            ShiftProblem::align_shift(shape, 4, &[3.0], 2.0, true)
        } else {
            ShiftProblem::tsm(shape, 8)
        };
        let y = Cpu.shift_forward(&shift, &x).unwrap();
        let err = relative_error(&y.to_f64_vec(), &problem.forward(&x.to_f64_vec()));
        assert!(err <= 1e-7, "{shift:?}: {err:e}");
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let x = Tensor::zeros(&[2, 8, 3, 4, 5], DType::F32).unwrap();
    let invalid = |e: Error, arg: &str| match e {
        Error::InvalidArgument { arg: a, .. } => assert_eq!(a, arg),
        other => panic!("expected InvalidArgument({arg}), got {other:?}"),
    };
    invalid(Shift::tsm(0).unwrap_err(), "fold_div");
    invalid(Shift::tsm(9).unwrap().forward(&x).unwrap_err(), "fold_div");
    for t in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        invalid(
            Shift::align_shift(&[2.0, t], 2.0, false, 8).unwrap_err(),
            "thickness",
        );
        invalid(
            Shift::align_shift(&[2.0, 2.0], t, false, 8).unwrap_err(),
            "ref_thickness",
        );
    }
    let one = Shift::align_shift(&[2.0], 2.0, false, 8).unwrap();
    assert!(matches!(
        one.forward(&x).unwrap_err(),
        Error::Shape {
            arg: "thickness",
            ..
        }
    ));
    let tsm = Shift::tsm(8).unwrap();
    let flat = Tensor::zeros(&[2, 8, 3], DType::F32).unwrap();
    assert!(matches!(
        tsm.forward(&flat).unwrap_err(),
        Error::Rank { arg: "x", .. }
    ));
    assert!(matches!(
        tsm.backward(&flat).unwrap_err(),
        Error::Rank { arg: "dy", .. }
    ));
    let mut y16 = Tensor::zeros(x.shape(), DType::F16).unwrap();
    assert!(matches!(
        tsm.forward_into(&x, &mut y16).unwrap_err(),
        Error::DTypeMismatch { arg: "y", .. }
    ));
    let mut wrong = Tensor::zeros(&[2, 8, 3, 4, 4], DType::F32).unwrap();
    assert!(matches!(
        tsm.forward_into(&x, &mut wrong).unwrap_err(),
        Error::Shape { arg: "y", .. }
    ));
    for backend in shift_backends() {
        assert!(
            backend.shift_forward(&Shift::tsm(9).unwrap(), &x).is_err(),
            "{}",
            backend.name()
        );
        assert!(
            backend.shift_backward(&one, &x).is_err(),
            "{}",
            backend.name()
        );
    }
    // Empty tensors are fine.
    let empty = Tensor::zeros(&[0, 8, 3, 4, 5], DType::F32).unwrap();
    assert_eq!(tsm.forward(&empty).unwrap().shape(), empty.shape());
    let no_pixels = Tensor::zeros(&[1, 8, 3, 0, 5], DType::BF16).unwrap();
    for backend in shift_backends() {
        assert_eq!(
            backend.shift_forward(&tsm, &no_pixels).unwrap().shape(),
            no_pixels.shape()
        );
    }
}
