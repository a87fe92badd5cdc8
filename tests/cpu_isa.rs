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
