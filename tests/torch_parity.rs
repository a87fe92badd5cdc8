//! Parity with PyTorch: TSM, AlignShift and the depth convolution on every backend of the build
//! against fixtures that straightforward PyTorch implementations of the reference formulas
//! wrote (forward and autograd backward, float64 on float32 inputs). The fixtures are committed
//! (tests/fixtures/context_ops.safetensors); scripts/torch_context_fixtures.py regenerates them.

mod common;

use a3d::fusion::Grads;
use a3d::shift::Shift;
use a3d::DType;
use common::{depthconv_backends, relative_error, shift_backends, Fixtures};

/// Error bound against PyTorch's float64: f32 arithmetic on the same inputs.
const F32_TOLERANCE: f64 = 1e-6;

#[test]
fn shifts_match_pytorch() {
    let fx = Fixtures::load("context_ops");
    let mut cases = Vec::new();
    for case in ["tsm_fd8", "tsm_fd3"] {
        let fold_div: usize = fx
            .meta(&format!("{case}.fold_div"))
            .parse()
            .expect("fold_div");
        cases.push((case, Shift::tsm(fold_div).expect("tsm")));
    }
    for case in ["alignshift_pz0", "alignshift_pz1"] {
        let (thickness, _) = fx.values(&format!("{case}.thickness"));
        let thickness: Vec<f32> = thickness.iter().map(|&t| t as f32).collect();
        let fold_div: usize = fx
            .meta(&format!("{case}.fold_div"))
            .parse()
            .expect("fold_div");
        let ref_t: f32 = fx
            .meta(&format!("{case}.ref_thickness"))
            .parse()
            .expect("ref");
        let pz = fx.meta(&format!("{case}.padding_zero")) == "true";
        cases.push((
            case,
            Shift::align_shift(&thickness, ref_t, pz, fold_div).expect("shift"),
        ));
    }
    for (case, shift) in cases {
        let x = fx.tensor(&format!("{case}.x"), DType::F32);
        let dy = fx.tensor(&format!("{case}.dy"), DType::F32);
        let (want_y, _) = fx.values(&format!("{case}.y"));
        let (want_dx, _) = fx.values(&format!("{case}.dx"));
        for backend in shift_backends() {
            let y = backend.shift_forward(&shift, &x).expect("forward");
            let dx = backend.shift_backward(&shift, &dy).expect("backward");
            let (ey, edx) = (
                relative_error(&y.to_f64_vec(), &want_y),
                relative_error(&dx.to_f64_vec(), &want_dx),
            );
            assert!(
                ey <= F32_TOLERANCE,
                "{} {case} forward: {ey:e}",
                backend.name()
            );
            assert!(
                edx <= F32_TOLERANCE,
                "{} {case} backward: {edx:e}",
                backend.name()
            );
        }
    }
}

#[test]
fn depth_conv_matches_pytorch() {
    let fx = Fixtures::load("context_ops");
    for case in ["depthconv_k3", "depthconv_k5"] {
        let x = fx.tensor(&format!("{case}.x"), DType::F32);
        let v = fx.tensor(&format!("{case}.v"), DType::F32);
        let dy = fx.tensor(&format!("{case}.dy"), DType::F32);
        let want: Vec<Vec<f64>> = ["y", "dx", "dv"]
            .iter()
            .map(|k| fx.values(&format!("{case}.{k}")).0)
            .collect();
        for backend in depthconv_backends() {
            let y = backend.depthconv_forward(&x, &v).expect("forward");
            let g = backend
                .depthconv_backward(&x, &v, &dy, Grads::BOTH)
                .expect("backward");
            let got = [y, g.dx.expect("dx"), g.dw.expect("dv")];
            for (what, (got, want)) in ["y", "dx", "dv"].iter().zip(got.iter().zip(&want)) {
                let e = relative_error(&got.to_f64_vec(), want);
                assert!(
                    e <= F32_TOLERANCE,
                    "{} {case} {what}: {e:e}",
                    backend.name()
                );
            }
        }
    }
}
