//! Batch-norm statistics and BN-ReLU against float64, every dtype, odd shapes; the reductions
//! bitwise identical for any thread count; PyTorch's running-statistics update; bad input.

mod common;

use a3d::batchnorm::{self, reference, Affine};
use a3d::rng::SplitMix64;
use a3d::{DType, Tensor};
use common::{random, relative_error, tolerance};

const SHAPE: [usize; 5] = [3, 5, 3, 17, 19];

#[test]
fn stats_and_bn_relu_match_float64() {
    let mut rng = SplitMix64::new(1);
    let (b, c, rest) = (SHAPE[0], SHAPE[1], SHAPE[2] * SHAPE[3] * SHAPE[4]);
    for dtype in DType::ALL {
        let x = random(&SHAPE, dtype, &mut rng);
        let dy = random(&SHAPE, dtype, &mut rng);
        let (x64, dy64) = (x.to_f64_vec(), dy.to_f64_vec());
        let (mean, var) = reference::stats(&x64, b, c, rest);
        let st = batchnorm::channel_stats(&x).unwrap();
        assert_eq!(st.count, b * rest);
        let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
        assert!(relative_error(&f(&st.mean), &mean) < 1e-6, "{dtype} mean");
        assert!(relative_error(&f(&st.var), &var) < 1e-6, "{dtype} var");

        let weight = rng.vec_f32(c, 0.5, 1.5);
        let bias = rng.vec_f32(c, -0.3, 0.3);
        let a = Affine::from_batch_norm(&weight, &bias, &st.mean, &st.var, 1e-5).unwrap();
        let (s64, t64) = (f(&a.scale), f(&a.shift));
        let (y, dx, ds, dt) = reference::bn_relu(&x64, &s64, &t64, &dy64, c, rest);
        let got = batchnorm::bn_relu_forward(&x, &a).unwrap();
        assert_eq!(got.dtype(), dtype);
        assert!(
            relative_error(&got.to_f64_vec(), &y) <= tolerance(dtype),
            "{dtype} y"
        );
        let g = batchnorm::bn_relu_backward(&x, &a, &dy).unwrap();
        assert!(
            relative_error(&g.dx.to_f64_vec(), &dx) <= tolerance(dtype),
            "{dtype} dx"
        );
        assert!(
            relative_error(&f(&g.d_scale), &ds) < 1e-5,
            "{dtype} d_scale"
        );
        assert!(
            relative_error(&f(&g.d_shift), &dt) < 1e-5,
            "{dtype} d_shift"
        );
    }
}

#[test]
fn reductions_are_the_same_bits_for_any_thread_count() {
    let mut rng = SplitMix64::new(2);
    let shape = [2, 3, 5, 101, 103]; // several chunks per plane
    let x = random(&shape, DType::F32, &mut rng);
    let dy = random(&shape, DType::F32, &mut rng);
    let a = Affine {
        scale: vec![1.1, -0.7, 0.4],
        shift: vec![0.1, 0.0, -0.2],
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let st = batchnorm::channel_stats(&x).unwrap();
            let g = batchnorm::bn_relu_backward(&x, &a, &dy).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            (
                bits(&st.mean),
                bits(&st.var),
                bits(&g.d_scale),
                bits(&g.d_shift),
            )
        })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn running_statistics_follow_pytorch() {
    let stats = batchnorm::ChannelStats {
        mean: vec![1.0, -2.0],
        var: vec![4.0, 0.5],
        count: 5,
    };
    let (mut m, mut v) = (vec![0.0, 0.0], vec![1.0, 1.0]);
    batchnorm::update_running(&mut m, &mut v, &stats, 0.1).unwrap();
    assert_eq!(m, vec![0.1, -0.2]);
    // unbiased: 4 * 5 / 4 = 5 -> 0.9 + 0.5; 0.5 * 5 / 4 = 0.625 -> 0.9 + 0.0625
    assert!(
        (v[0] - 1.4).abs() < 1e-6 && (v[1] - 0.9625).abs() < 1e-6,
        "{v:?}"
    );
    assert!(batchnorm::update_running(&mut m, &mut v, &stats, 1.5).is_err());
    assert!(batchnorm::update_running(&mut m[..1], &mut v, &stats, 0.1).is_err());
}

#[test]
fn bad_input_is_a_typed_error() {
    let x = Tensor::zeros(&[2, 3, 4], DType::F32).unwrap();
    let a = Affine {
        scale: vec![1.0; 2],
        shift: vec![0.0; 2],
    };
    assert!(batchnorm::bn_relu_forward(&x, &a).is_err()); // 3 channels, 2 scales
    assert!(batchnorm::channel_stats(&Tensor::zeros(&[4], DType::F32).unwrap()).is_err());
    assert!(Affine::from_batch_norm(&[1.0], &[0.0], &[0.0], &[-1.0], 1e-5).is_err());
    assert!(Affine::from_batch_norm(&[1.0], &[0.0, 1.0], &[0.0], &[1.0], 1e-5).is_err());
    assert!(Affine::from_batch_norm(&[1.0], &[0.0], &[0.0], &[1.0], f32::NAN).is_err());
    let dy = Tensor::zeros(&[2, 3, 5], DType::F32).unwrap();
    let a3 = Affine {
        scale: vec![1.0; 3],
        shift: vec![0.0; 3],
    };
    assert!(batchnorm::bn_relu_backward(&x, &a3, &dy).is_err());
    // Empty planes: zero statistics, no NaN.
    let e = batchnorm::channel_stats(&Tensor::zeros(&[0, 3, 4], DType::F32).unwrap()).unwrap();
    assert!(e.mean.iter().chain(&e.var).all(|v| *v == 0.0));
}

/// The training-mode gradients (through the batch statistics) against central finite
/// differences of the float64 training loss, at sampled coordinates of x, weight and bias.
#[test]
fn training_backward_matches_finite_differences() {
    let mut rng = SplitMix64::new(4);
    let shape = [2, 3, 3, 5, 7];
    let (b, c, rest) = (2, 3, 3 * 5 * 7);
    let x = random(&shape, DType::F32, &mut rng);
    let dy = random(&shape, DType::F32, &mut rng);
    let weight = rng.vec_f32(c, 0.5, 1.5);
    let bias = rng.vec_f32(c, -0.3, 0.3);
    let eps = 1e-5;
    let bn = batchnorm::BatchNorm {
        weight: &weight,
        bias: &bias,
        eps,
    };
    let (y, stats) = bn.train_forward(&x).unwrap();
    let g = bn.train_backward(&x, &stats, &dy).unwrap();
    let (x64, dy64) = (x.to_f64_vec(), dy.to_f64_vec());
    let w64: Vec<f64> = weight.iter().map(|&v| v as f64).collect();
    let b64: Vec<f64> = bias.iter().map(|&v| v as f64).collect();
    let loss = |x: &[f64], w: &[f64], bi: &[f64]| {
        reference::train_loss(x, w, bi, eps as f64, &dy64, b, c, rest)
    };
    // The forward equals the float64 loss's integrand.
    let l32: f64 = y.to_f64_vec().iter().zip(&dy64).map(|(a, g)| a * g).sum();
    assert!((l32 - loss(&x64, &w64, &b64)).abs() < 1e-3);
    let h = 1e-4;
    let dx = g.dx.to_f64_vec();
    for i in (0..x64.len()).step_by(17) {
        let (mut xp, mut xm) = (x64.clone(), x64.clone());
        xp[i] += h;
        xm[i] -= h;
        let fd = (loss(&xp, &w64, &b64) - loss(&xm, &w64, &b64)) / (2.0 * h);
        assert!(
            (fd - dx[i]).abs() < 2e-3 * (1.0 + fd.abs()),
            "dx[{i}]: {} vs fd {fd}",
            dx[i]
        );
    }
    for ch in 0..c {
        let (mut wp, mut wm) = (w64.clone(), w64.clone());
        wp[ch] += h;
        wm[ch] -= h;
        let fd = (loss(&x64, &wp, &b64) - loss(&x64, &wm, &b64)) / (2.0 * h);
        assert!(
            (fd - g.d_weight[ch] as f64).abs() < 1e-3 * (1.0 + fd.abs()),
            "d_weight[{ch}]"
        );
        let (mut bp, mut bm) = (b64.clone(), b64.clone());
        bp[ch] += h;
        bm[ch] -= h;
        let fd = (loss(&x64, &w64, &bp) - loss(&x64, &w64, &bm)) / (2.0 * h);
        assert!(
            (fd - g.d_bias[ch] as f64).abs() < 1e-3 * (1.0 + fd.abs()),
            "d_bias[{ch}]"
        );
    }
}

/// Statistics and the fused BN-ReLU-fusion forward on every backend (the CUDA kernels under
/// the emulation and on a GPU) against float64, every dtype, with and without fusion weights.
#[test]
fn every_backend_matches_float64() {
    let mut rng = SplitMix64::new(6);
    for shape in [[2usize, 5, 3, 9, 11], [1, 3, 7, 5, 13], [3, 2, 1, 17, 3]] {
        let (b, c, d, rest) = (shape[0], shape[1], shape[2], shape[2] * shape[3] * shape[4]);
        for dtype in DType::ALL {
            let x = random(&shape, dtype, &mut rng);
            let x64 = x.to_f64_vec();
            let (mean, var) = reference::stats(&x64, b, c, rest);
            let a = Affine {
                scale: rng.vec_f32(c, -1.5, 1.5),
                shift: rng.vec_f32(c, -0.5, 0.5),
            };
            let w = a3d::fusion::init_weights(d, c, 3).unwrap().to_dtype(dtype);
            let f = |v: &[f32]| v.iter().map(|&q| q as f64).collect::<Vec<_>>();
            let zeros = vec![0.0; x64.len()];
            let (act, ..) = reference::bn_relu(&x64, &f(&a.scale), &f(&a.shift), &zeros, c, rest);
            let act_t = Tensor::from_f32(
                &act.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                &shape,
                DType::F32,
            )
            .unwrap();
            let w32 = w.to_dtype(DType::F32);
            let want_fused = a3d::fusion::reference::forward(
                &a3d::fusion::FusionDims::from_input_shape(&shape).unwrap(),
                &act_t.to_f64_vec(),
                &w32.to_f64_vec(),
            );
            for be in common::batchnorm_backends() {
                let name = be.name();
                let st = be.channel_stats(&x).unwrap();
                assert!(
                    relative_error(&f(&st.mean), &mean) < 1e-6,
                    "{name} {dtype} mean"
                );
                assert!(
                    relative_error(&f(&st.var), &var) < 1e-6,
                    "{name} {dtype} var"
                );
                let y = be.bn_relu_fusion_forward(&x, &a, None).unwrap();
                assert!(
                    relative_error(&y.to_f64_vec(), &act) <= tolerance(dtype),
                    "{name} {dtype} bn-relu"
                );
                let y = be.bn_relu_fusion_forward(&x, &a, Some(&w)).unwrap();
                let e = relative_error(&y.to_f64_vec(), &want_fused);
                assert!(e <= tolerance(dtype) * 2.0, "{name} {dtype} fused: {e}");
            }
        }
    }
    // Beyond the GPU kernel's 16 slices: the CPU takes it, the kernels say so.
    let x = random(&[1, 2, 17, 3, 3], DType::F32, &mut rng);
    let a = Affine {
        scale: vec![1.0; 2],
        shift: vec![0.0; 2],
    };
    for be in common::batchnorm_backends() {
        let r = be.bn_relu_fusion_forward(&x, &a, None);
        assert_eq!(r.is_ok(), common::is_cpu(&be.name()), "{}", be.name());
    }
}

/// Training-mode BN-ReLU as the prologue of an A3DConv: the layer's prologue gradients plus
/// `train_backward_from_prologue` equal the unfused chain (BN-ReLU, A3DConv, their backwards).
#[test]
fn prologue_training_gradients_equal_the_unfused_chain() {
    use a3d::a3dconv::{A3dConv, Conv2dParams, Grads};
    let mut rng = SplitMix64::new(12);
    let shape = [2, 4, 3, 9, 7];
    let x = random(&shape, DType::F32, &mut rng);
    let weight = rng.vec_f32(4, 0.5, 1.5);
    let bias = rng.vec_f32(4, -0.3, 0.3);
    let bn = batchnorm::BatchNorm {
        weight: &weight,
        bias: &bias,
        eps: 1e-5,
    };
    let fw = a3d::fusion::init_weights(3, 4, 2).unwrap();
    let cw = random(&[5, 4, 3, 3], DType::F32, &mut rng);
    let layer = A3dConv {
        fusion_weight: Some(&fw),
        conv_weight: &cw,
        bias: None,
        params: Conv2dParams::padded(1),
    };
    // Unfused.
    let (act, stats) = bn.train_forward(&x).unwrap();
    let y = layer.forward(&act).unwrap();
    let dy = random(y.shape(), DType::F32, &mut rng);
    let dact = layer.backward(&act, &dy, Grads::ALL).unwrap().dx.unwrap();
    let want = bn.train_backward(&x, &stats, &dact).unwrap();
    // Fused.
    let a = bn.eval_affine(&stats.mean, &stats.var).unwrap();
    let yf = layer.forward_with(&x, Some(&a)).unwrap();
    assert!(relative_error(&yf.to_f64_vec(), &y.to_f64_vec()) < 1e-5);
    let g = layer.backward_with(&x, Some(&a), &dy, Grads::ALL).unwrap();
    let mut dx = g.dx.unwrap();
    let (dw, db) = bn
        .train_backward_from_prologue(
            &x,
            &stats,
            g.d_scale.as_ref().unwrap(),
            g.d_shift.as_ref().unwrap(),
            &mut dx,
        )
        .unwrap();
    let f = |v: &[f32]| v.iter().map(|&q| q as f64).collect::<Vec<_>>();
    assert!(
        relative_error(&dx.to_f64_vec(), &want.dx.to_f64_vec()) < 1e-4,
        "dx"
    );
    assert!(
        relative_error(&f(&dw), &f(&want.d_weight)) < 1e-4,
        "d_weight"
    );
    assert!(relative_error(&f(&db), &f(&want.d_bias)) < 1e-4, "d_bias");
}
