//! `BnReluA3dConv` through candle: the BN-ReLU op against candle-nn's own BatchNorm + ReLU
//! (training and evaluation: outputs, autograd gradients to x / weight / bias, running
//! statistics), the reference parameter names, and the whole layer's gradient by finite
//! differences.
#![cfg(feature = "candle")]

use a3d::candle::{
    A3dConvConfig, BnReluA3dConv, BnReluA3dConvConfig, ContextConvConfig, ContextFusion,
};
use a3d::rng::SplitMix64;
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{BatchNormConfig, VarBuilder, VarMap};

type R = candle_core::Result<()>;

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("values")
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
    }
}

fn layer(c: usize, d: usize, varmap: &VarMap) -> candle_core::Result<BnReluA3dConv> {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
    let conv = ContextConvConfig {
        conv: A3dConvConfig::new(c, 4, d),
        fusion: ContextFusion::A3d,
    };
    BnReluA3dConv::new(
        BnReluA3dConvConfig::new(conv),
        vb.pp("norm1"),
        vb.pp("conv1"),
    )
}

#[test]
fn bn_relu_matches_candle_nn_in_both_modes() -> R {
    let dev = Device::Cpu;
    let (b, c, d, h, w) = (2, 5, 3, 7, 9);
    let mut rng = SplitMix64::new(7);
    let mut varmap = VarMap::new();
    let l = layer(c, d, &varmap)?;
    // Non-trivial affine parameters, shared with the candle-nn reference.
    let weight = rng.vec_f32(c, 0.5, 1.5);
    let bias = rng.vec_f32(c, -0.3, 0.3);
    varmap.set_one("norm1.weight", Tensor::new(weight.clone(), &dev)?)?;
    varmap.set_one("norm1.bias", Tensor::new(bias.clone(), &dev)?)?;
    let mut refmap = VarMap::new();
    let rvb = VarBuilder::from_varmap(&refmap, DType::F32, &dev);
    let bn = candle_nn::batch_norm(
        c,
        BatchNormConfig {
            eps: 1e-5,
            remove_mean: true,
            affine: true,
            momentum: 0.1,
        },
        rvb.pp("n"),
    )?;
    refmap.set_one("n.weight", Tensor::new(weight, &dev)?)?;
    refmap.set_one("n.bias", Tensor::new(bias, &dev)?)?;

    for train in [true, false] {
        let x = Var::from_tensor(&Tensor::from_vec(
            rng.vec_f32(b * c * d * h * w, -1.0, 1.0),
            (b, c, d, h, w),
            &dev,
        )?)?;
        let g = Tensor::from_vec(
            rng.vec_f32(b * c * d * h * w, -1.0, 1.0),
            (b, c, d, h, w),
            &dev,
        )?;
        let y = l.bn_relu_t(x.as_tensor(), train)?;
        let want = bn.forward_t(x.as_tensor(), train)?.relu()?;
        close(&values(&y), &values(&want), 2e-5, "y");
        let ga = (&y * &g)?.sum_all()?.backward()?;
        let gb = (&want * &g)?.sum_all()?.backward()?;
        let get = |gs: &candle_core::backprop::GradStore, t: &Tensor| {
            values(gs.get(t).expect("gradient"))
        };
        close(
            &get(&ga, x.as_tensor()),
            &get(&gb, x.as_tensor()),
            2e-4,
            "dx",
        );
        let vars = varmap.data().lock().unwrap().clone();
        let rvars = refmap.data().lock().unwrap().clone();
        for p in ["weight", "bias"] {
            let (a, r) = (&vars[&format!("norm1.{p}")], &rvars[&format!("n.{p}")]);
            close(&get(&ga, a.as_tensor()), &get(&gb, r.as_tensor()), 2e-4, p);
        }
        let (rm, rv) = l.running_stats();
        close(
            &values(rm),
            &values(&rvars["n.running_mean"].as_tensor().clone()),
            1e-5,
            "running_mean",
        );
        close(
            &values(rv),
            &values(&rvars["n.running_var"].as_tensor().clone()),
            1e-5,
            "running_var",
        );
    }
    assert_eq!(values(l.num_batches_tracked()), vec![1.0]);
    // The reference checkpoint names.
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    for n in [
        "norm1.weight",
        "norm1.bias",
        "norm1.running_mean",
        "norm1.running_var",
        "norm1.num_batches_tracked",
        "conv1.weight",
        "conv1.adaptive_align_weights",
    ] {
        assert!(names.iter().any(|k| k == n), "{n} missing from {names:?}");
    }
    Ok(())
}

/// The whole layer (BN-ReLU, fusion, conv) in evaluation mode: d loss / d x by finite
/// differences (f32 central differences at a few coordinates).
#[test]
fn whole_layer_gradient_by_finite_differences() -> R {
    let dev = Device::Cpu;
    let (b, c, d, h, w) = (1, 3, 3, 5, 6);
    let mut rng = SplitMix64::new(9);
    let mut varmap = VarMap::new();
    let l = layer(c, d, &varmap)?;
    varmap.set_one(
        "norm1.running_mean",
        Tensor::new(rng.vec_f32(c, -0.2, 0.2), &dev)?,
    )?;
    varmap.set_one(
        "norm1.running_var",
        Tensor::new(rng.vec_f32(c, 0.5, 2.0), &dev)?,
    )?;
    let xv = rng.vec_f32(b * c * d * h * w, -1.0, 1.0);
    let x = Var::from_tensor(&Tensor::from_vec(xv.clone(), (b, c, d, h, w), &dev)?)?;
    let y = l.forward_t(x.as_tensor(), false)?;
    let g = Tensor::from_vec(rng.vec_f32(y.elem_count(), -1.0, 1.0), y.shape(), &dev)?;
    let grads = (&y * &g)?.sum_all()?.backward()?;
    let dx = values(grads.get(x.as_tensor()).expect("dx"));
    let loss = |v: &[f32]| -> candle_core::Result<f64> {
        let t = Tensor::from_vec(v.to_vec(), (b, c, d, h, w), &dev)?;
        (l.forward_t(&t, false)? * &g)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    };
    let eps = 1e-2f32;
    for i in (0..xv.len()).step_by(13) {
        let (mut p, mut m) = (xv.clone(), xv.clone());
        p[i] += eps;
        m[i] -= eps;
        let fd = (loss(&p)? - loss(&m)?) / (2.0 * eps as f64);
        // A ReLU kink inside the step makes the difference meaningless: skip those points.
        if (fd - dx[i] as f64).abs() > 1e-2 * (1.0 + fd.abs()) {
            let (lp, lm, l0) = (loss(&p)?, loss(&m)?, loss(&xv)?);
            let curvature = (lp - 2.0 * l0 + lm).abs();
            assert!(curvature > 1e-4, "dx[{i}]: {} vs fd {fd}", dx[i]);
        }
    }
    Ok(())
}

/// The layer's fused path (BN-ReLU inside the convolution's op) against the same layer run as
/// BN-ReLU op then convolution: outputs, every parameter's gradient and dx, running statistics,
/// in training and evaluation mode, with A3D fusion and without.
#[test]
fn fused_layer_equals_bn_relu_then_conv() -> R {
    let dev = Device::Cpu;
    let (b, c, d, h, w) = (2, 6, 3, 9, 8);
    for fusion in [ContextFusion::A3d, ContextFusion::None] {
        let mut rng = SplitMix64::new(21);
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let mut conv = A3dConvConfig::new(c, 5, d);
        conv.padding = 1;
        let cfg = BnReluA3dConvConfig::new(ContextConvConfig { conv, fusion });
        let l = BnReluA3dConv::new(cfg, vb.pp("norm"), vb.pp("conv"))?;
        varmap.set_one("norm.weight", Tensor::new(rng.vec_f32(c, 0.5, 1.5), &dev)?)?;
        varmap.set_one("norm.bias", Tensor::new(rng.vec_f32(c, -0.3, 0.3), &dev)?)?;
        for train in [true, false] {
            let x = Var::from_tensor(&Tensor::from_vec(
                rng.vec_f32(b * c * d * h * w, -1.0, 1.0),
                (b, c, d, h, w),
                &dev,
            )?)?;
            let before = (values(l.running_stats().0), values(l.running_stats().1));
            // Unfused: the BN-ReLU op, then the convolution (the running update happens once
            // here; restore the statistics before the fused run).
            let y_ref = l
                .conv()
                .forward_t(&l.bn_relu_t(x.as_tensor(), train)?, false)?;
            let after_ref = (values(l.running_stats().0), values(l.running_stats().1));
            varmap.set_one("norm.running_mean", Tensor::new(before.0.clone(), &dev)?)?;
            varmap.set_one("norm.running_var", Tensor::new(before.1.clone(), &dev)?)?;
            let y = l.forward_t(x.as_tensor(), train)?;
            close(&values(&y), &values(&y_ref), 1e-5, "y");
            close(
                &values(l.running_stats().0),
                &after_ref.0,
                1e-6,
                "running_mean",
            );
            close(
                &values(l.running_stats().1),
                &after_ref.1,
                1e-6,
                "running_var",
            );
            let g = Tensor::from_vec(rng.vec_f32(y.elem_count(), -1.0, 1.0), y.shape(), &dev)?;
            let ga = (&y * &g)?.sum_all()?.backward()?;
            let gb = (&y_ref * &g)?.sum_all()?.backward()?;
            let vars = varmap.data().lock().unwrap().clone();
            let mut names: Vec<&String> = vars.keys().collect();
            names.sort();
            for name in names {
                let t = vars[name].as_tensor();
                match (ga.get(t), gb.get(t)) {
                    (Some(a), Some(r)) => close(&values(a), &values(r), 2e-4, name),
                    (None, None) => {}
                    _ => panic!("{fusion:?} train={train}: {name} has a gradient on one path only"),
                }
            }
            close(
                &values(ga.get(x.as_tensor()).unwrap()),
                &values(gb.get(x.as_tensor()).unwrap()),
                2e-4,
                "dx",
            );
        }
    }
    Ok(())
}
