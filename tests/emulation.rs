//! The CUDA kernels' own source (kernels/fusion.cu), run on the CPU through the host emulation,
//! against the float64 reference: every kernel family (forward, grad-input, grad-weight partial
//! and reduce), every dtype, specialised and general depths, aligned (vector) and misaligned
//! (scalar) buffers, grids for small and large GPUs, and both thread orders.
#![cfg(feature = "emulation")]

use a3d::backend::{Emulated, FusionBackend};
use a3d::fusion::{self, Grads};
use a3d::selftest;
use a3d::{DType, Tensor};

fn assert_all_pass(backend: &Emulated, seed: u64) {
    let checks = selftest::run_fusion(backend, seed);
    assert_eq!(checks.len(), selftest::SHAPES.len() * 9);
    for c in &checks {
        assert!(c.passed(), "{c}");
    }
}

#[test]
fn kernels_match_reference_on_a_small_gpu_grid() {
    assert_all_pass(&Emulated::default(), 1);
}

#[test]
fn kernels_match_reference_misaligned_scalar_path() {
    assert_all_pass(
        &Emulated {
            sm_count: 3,
            misaligned: true,
            reverse_threads: false,
            max_grid_y: 2,
        },
        2,
    );
}

#[test]
fn kernels_match_reference_with_h100_grids_and_reversed_threads() {
    assert_all_pass(
        &Emulated {
            sm_count: 132,
            misaligned: false,
            reverse_threads: true,
            max_grid_y: 65535,
        },
        3,
    );
}

#[test]
fn kernels_match_reference_when_blocks_loop_over_channels() {
    for reverse_threads in [false, true] {
        assert_all_pass(
            &Emulated {
                sm_count: 1,
                misaligned: false,
                reverse_threads,
                max_grid_y: 1,
            },
            5,
        );
    }
}

#[test]
fn emulated_grad_weight_is_deterministic_and_alignment_independent() {
    let mut rng = a3d::rng::SplitMix64::new(4);
    for (shape, dtype) in [
        ([2, 3, 7, 33, 35], DType::F32),
        ([1, 2, 17, 20, 21], DType::BF16),
    ] {
        let n: usize = shape.iter().product();
        let x = Tensor::from_f32(&rng.vec_f32(n, -1.0, 1.0), &shape, dtype).unwrap();
        let dy = Tensor::from_f32(&rng.vec_f32(n, -1.0, 1.0), &shape, dtype).unwrap();
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

#[test]
fn emulated_kernels_reject_nothing_valid_and_handle_empty_inputs() {
    let b = Emulated::default();
    let x = Tensor::zeros(&[2, 3, 4, 0, 5], DType::F16).unwrap();
    let w = Tensor::zeros(&[4, 4, 3], DType::F16).unwrap();
    assert!(b.forward(&x, &w).unwrap().is_empty());
    let g = b.backward(&x, &w, &x, Grads::BOTH).unwrap();
    assert!(g.dw.unwrap().to_f32_vec().iter().all(|&v| v == 0.0));
}
