//! Every CPU instruction-set tier this machine has gives correct results. A separate test
//! binary (its own process), because the tier limit is process-wide.

use a3d::cpu::{self, Isa};
use a3d::fusion::{self, Grads};
use a3d::selftest;
use std::sync::Mutex;

/// The tier limit is process-wide: the tests that set it take turns.
static TIER: Mutex<()> = Mutex::new(());

#[test]
fn every_available_tier_passes_the_selftest_and_is_deterministic() {
    let _turn = TIER.lock().unwrap_or_else(|e| e.into_inner());
    let detected = cpu::detected_isa();
    println!("detected CPU tier: {}", detected.as_str());
    for tier in Isa::ALL.into_iter().filter(|t| *t <= detected) {
        cpu::set_isa_limit(tier);
        assert_eq!(cpu::active_isa(), tier);
        for check in selftest::run_fusion(&a3d::backend::Cpu, 21 + tier as u64) {
            assert!(check.passed(), "tier {}: {check}", tier.as_str());
        }
        let mut rng = a3d::rng::SplitMix64::new(3);
        let shape = [2, 3, 7, 95, 91];
        let n: usize = shape.iter().product();
        let x = a3d::Tensor::from_vec(rng.vec_f32(n, -1.0, 1.0), &shape).unwrap();
        let dy = a3d::Tensor::from_vec(rng.vec_f32(n, -1.0, 1.0), &shape).unwrap();
        let w = fusion::init_weights(7, 3, 5).unwrap();
        let dw = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| fusion::backward(&x, &w, &dy, Grads::WEIGHT).unwrap().dw)
        };
        assert_eq!(dw(1), dw(4), "tier {}", tier.as_str());
    }
    cpu::set_isa_limit(Isa::Avx512);
}

/// A3DConv's stride-1 convolutions run a direct AVX-512 kernel on the AVX-512 tier and im2col +
/// GEMM below it: both agree with the float64 reference, including the padding cases where the
/// input gradient's effective padding is negative, and both are thread-count deterministic.
#[test]
fn a3dconv_direct_and_gemm_paths_match_the_reference_on_every_tier() {
    use a3d::a3dconv::{reference, A3dConv, Conv2dParams, Grads as ConvGrads};
    let _turn = TIER.lock().unwrap_or_else(|e| e.into_inner());
    let detected = cpu::detected_isa();
    // (B, C, D, H, W, O, [kh, kw], padding, dilation, fused, bias)
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 2],
        bool,
        bool,
    );
    let cases: [Case; 6] = [
        (2, 5, 3, 17, 19, 7, [3, 3], [1, 1], [1, 1], true, true),
        (1, 3, 7, 21, 33, 9, [5, 5], [4, 4], [2, 2], true, false),
        (1, 4, 1, 9, 37, 5, [1, 3], [0, 2], [1, 1], false, true),
        (1, 3, 3, 6, 5, 2, [1, 1], [1, 2], [1, 1], true, true),
        (2, 2, 3, 7, 8, 3, [3, 3], [3, 0], [1, 1], true, true),
        (1, 17, 3, 33, 40, 6, [3, 3], [1, 1], [1, 1], false, false),
    ];
    for tier in Isa::ALL.into_iter().filter(|t| *t <= detected) {
        cpu::set_isa_limit(tier);
        for (i, &(b, c, d, h, w, o, kernel, padding, dilation, fused, with_bias)) in
            cases.iter().enumerate()
        {
            let mut rng = a3d::rng::SplitMix64::new(100 + i as u64);
            let x =
                a3d::Tensor::from_vec(rng.vec_f32(b * c * d * h * w, -1.0, 1.0), &[b, c, d, h, w])
                    .unwrap();
            let fw = fusion::init_weights(d, c, 7 + i as u64).unwrap();
            let n_w = o * c * kernel[0] * kernel[1];
            let cw =
                a3d::Tensor::from_vec(rng.vec_f32(n_w, -0.3, 0.3), &[o, c, kernel[0], kernel[1]])
                    .unwrap();
            let bias = a3d::Tensor::from_vec(rng.vec_f32(o, -0.5, 0.5), &[o]).unwrap();
            let layer = A3dConv {
                fusion_weight: fused.then_some(&fw),
                conv_weight: &cw,
                bias: with_bias.then_some(&bias),
                params: Conv2dParams {
                    stride: [1, 1],
                    padding,
                    dilation,
                },
            };
            let dims = layer.dims(&x).unwrap();
            let y = layer.forward(&x).unwrap();
            let dy = a3d::Tensor::from_vec(rng.vec_f32(y.len(), -1.0, 1.0), y.shape()).unwrap();
            let run = |threads| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| {
                        (
                            layer.forward(&x).unwrap(),
                            layer.backward(&x, &dy, ConvGrads::ALL).unwrap(),
                        )
                    })
            };
            let (y1, g1) = run(1);
            let (y3, g3) = run(3);
            assert_eq!(
                (&y1, &g1),
                (&y3, &g3),
                "tier {} case {i}: thread count changed bits",
                tier.as_str()
            );
            let fw64 = fw.to_f64_vec();
            let fw_ref = fused.then_some(&fw64[..]);
            let bias64 = bias.to_f64_vec();
            let y_ref = reference::forward(
                &dims,
                &x.to_f64_vec(),
                fw_ref,
                &cw.to_f64_vec(),
                with_bias.then_some(&bias64[..]),
            );
            let g_ref = reference::backward(
                &dims,
                &x.to_f64_vec(),
                fw_ref,
                &cw.to_f64_vec(),
                &dy.to_f64_vec(),
            );
            let close = |name: &str, got: &a3d::Tensor, want: &[f64], terms: usize| {
                let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                let tol = 8.0 * f32::EPSILON as f64 * (terms as f64).sqrt() * scale;
                for (j, (g, r)) in got.to_f64_vec().iter().zip(want).enumerate() {
                    assert!(
                        (g - r).abs() <= tol,
                        "tier {} case {i} {name}[{j}]: {g} vs {r} (tol {tol})",
                        tier.as_str()
                    );
                }
            };
            let taps = c * kernel[0] * kernel[1] * d;
            close("y", &y, &y_ref, taps);
            close(
                "dx",
                g1.dx.as_ref().unwrap(),
                &g_ref.dx,
                o * kernel[0] * kernel[1] * d,
            );
            close(
                "d_conv_weight",
                g1.d_conv_weight.as_ref().unwrap(),
                &g_ref.d_conv_weight,
                b * d * h * w * d,
            );
            close(
                "d_bias",
                g1.d_bias.as_ref().unwrap(),
                &g_ref.d_bias,
                b * d * h * w,
            );
            if fused {
                let dfw = g_ref.d_fusion_weight.as_ref().unwrap();
                close(
                    "d_fusion_weight",
                    g1.d_fusion_weight.as_ref().unwrap(),
                    dfw,
                    b * h * w * o * kernel[0] * kernel[1] * d,
                );
            }
        }
    }
    cpu::set_isa_limit(Isa::Avx512);
}

/// A3DConv with a BN-ReLU prologue (applied while the input is staged) equals BN-ReLU then
/// A3DConv, forward and every gradient, on every tier (the direct AVX-512 kernel and im2col +
/// GEMM), fused and unfused, pointwise, padded, strided.
#[test]
fn a3dconv_prologue_equals_bn_relu_then_a3dconv_on_every_tier() {
    use a3d::a3dconv::{A3dConv, Conv2dParams, Grads as ConvGrads};
    use a3d::batchnorm::{self, Affine};
    use a3d::{DType, Tensor};
    let _turn = TIER.lock().unwrap_or_else(|e| e.into_inner());
    let detected = cpu::detected_isa();
    let close = |a: &[f32], b: &[f32], what: &str| {
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 2e-5 * scale,
            "{what}: worst difference {worst} (scale {scale})"
        );
    };
    // (C, D, O, kernel, padding, stride, fused)
    let cases = [
        (5, 3, 4, 1, 0, 1, true),
        (6, 3, 5, 3, 1, 1, true),
        (4, 5, 3, 3, 1, 1, false),
        (3, 3, 4, 3, 0, 2, true),
        (7, 1, 2, 1, 0, 1, false),
        // D = 7: the direct kernel's slabs activate their source rows once for every slice;
        // unpadded, and padded wider than the kernel reaches (clipped source rows).
        (5, 7, 4, 3, 0, 1, true),
        (4, 7, 3, 3, 2, 1, true),
    ];
    for tier in Isa::ALL.into_iter().filter(|t| *t <= detected) {
        cpu::set_isa_limit(tier);
        for (i, &(c, d, o, k, p, s, fused)) in cases.iter().enumerate() {
            let mut rng = a3d::rng::SplitMix64::new(40 + i as u64);
            let shape = [2, c, d, 13, 11];
            let n: usize = shape.iter().product();
            let x = Tensor::from_vec(rng.vec_f32(n, -1.0, 1.0), &shape).unwrap();
            let a = Affine {
                scale: rng.vec_f32(c, -1.5, 1.5),
                shift: rng.vec_f32(c, -0.5, 0.5),
            };
            let fw = a3d::fusion::init_weights(d, c, 9).unwrap();
            let cw =
                Tensor::from_vec(rng.vec_f32(o * c * k * k, -0.5, 0.5), &[o, c, k, k]).unwrap();
            let bias = Tensor::from_vec(rng.vec_f32(o, -0.1, 0.1), &[o]).unwrap();
            let layer = A3dConv {
                fusion_weight: fused.then_some(&fw),
                conv_weight: &cw,
                bias: Some(&bias),
                params: Conv2dParams {
                    stride: [s, s],
                    padding: [p, p],
                    ..Conv2dParams::default()
                },
            };
            let what = format!("tier {} case {i}", tier.as_str());
            let act = batchnorm::bn_relu_forward(&x, &a).unwrap();
            let y = layer.forward_with(&x, Some(&a)).unwrap();
            let want = layer.forward(&act).unwrap();
            close(
                &y.to_f32_vec(),
                &want.to_f32_vec(),
                &format!("{what} forward"),
            );
            let dy = Tensor::from_vec(rng.vec_f32(y.len(), -1.0, 1.0), y.shape()).unwrap();
            let g = layer
                .backward_with(&x, Some(&a), &dy, ConvGrads::ALL)
                .unwrap();
            let r = layer.backward(&act, &dy, ConvGrads::ALL).unwrap();
            let through = batchnorm::bn_relu_backward(&x, &a, r.dx.as_ref().unwrap()).unwrap();
            let v = |t: &Option<Tensor>| t.as_ref().unwrap().to_f32_vec();
            close(&v(&g.dx), &through.dx.to_f32_vec(), &format!("{what} dx"));
            close(
                g.d_scale.as_ref().unwrap(),
                &through.d_scale,
                &format!("{what} d_scale"),
            );
            close(
                g.d_shift.as_ref().unwrap(),
                &through.d_shift,
                &format!("{what} d_shift"),
            );
            close(
                &v(&g.d_conv_weight),
                &v(&r.d_conv_weight),
                &format!("{what} d_conv_weight"),
            );
            close(&v(&g.d_bias), &v(&r.d_bias), &format!("{what} d_bias"));
            if fused {
                close(
                    &v(&g.d_fusion_weight),
                    &v(&r.d_fusion_weight),
                    &format!("{what} d_fusion_weight"),
                );
            }
            // Only the prologue's gradients asked for: they still come, and equal.
            let only = layer
                .backward_with(
                    &x,
                    Some(&a),
                    &dy,
                    ConvGrads {
                        input: false,
                        conv_weight: false,
                        bias: false,
                        fusion_weight: false,
                    },
                )
                .unwrap();
            assert!(only.dx.is_none());
            close(
                only.d_scale.as_ref().unwrap(),
                &through.d_scale,
                &format!("{what} d_scale alone"),
            );
            // The layer and the input must share a dtype.
            let yb = layer.forward_with(&x.to_dtype(DType::BF16), Some(&a));
            assert!(yb.is_err(), "{what}: mixed dtypes must be refused");
        }
        // A prologue of the wrong width is a typed error.
        let x = Tensor::zeros(&[1, 3, 3, 5, 5], DType::F32).unwrap();
        let cw = Tensor::zeros(&[2, 3, 1, 1], DType::F32).unwrap();
        let layer = A3dConv {
            fusion_weight: None,
            conv_weight: &cw,
            bias: None,
            params: Conv2dParams::default(),
        };
        let bad = Affine {
            scale: vec![1.0; 2],
            shift: vec![0.0; 2],
        };
        assert!(layer.forward_with(&x, Some(&bad)).is_err());
    }
    cpu::set_isa_limit(Isa::Avx512);
}
