//! The candle integration: the custom op against a3d's own forward and backward, autograd,
//! finite differences through `A3dConv`, strided inputs, errors, and a short training run.
#![cfg(feature = "candle")]

use a3d::candle::{fuse, A3dConv, A3dConvConfig};
use a3d::rng::SplitMix64;
use a3d::{fusion, DType};
use candle_core::{Device, Tensor, Var};
use candle_nn::{Module, Optimizer, VarBuilder, VarMap};

type R = candle_core::Result<()>;

fn a3d_dtype(d: candle_core::DType) -> DType {
    match d {
        candle_core::DType::F16 => DType::F16,
        candle_core::DType::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

/// A random f32 candle tensor and its values.
fn random(rng: &mut SplitMix64, shape: &[usize]) -> candle_core::Result<(Tensor, Vec<f32>)> {
    let n = shape.iter().product();
    let v = rng.vec_f32(n, -1.0, 1.0);
    Ok((Tensor::from_vec(v.clone(), shape, &Device::Cpu)?, v))
}

/// A candle tensor as an a3d tensor (values in f32, stored in the candle tensor's dtype).
fn to_a3d(t: &Tensor) -> a3d::Tensor {
    let v: Vec<f32> = t
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor to vec");
    a3d::Tensor::from_f32(&v, t.dims(), a3d_dtype(t.dtype())).expect("a3d tensor")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor to vec")
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Forward, dx and dw through candle's autograd equal a3d's direct results.
fn check_against_a3d(shape: [usize; 5], dtype: candle_core::DType, tol: f32) -> R {
    let [_, c, d, _, _] = shape;
    let mut rng = SplitMix64::new(11 + shape.iter().sum::<usize>() as u64);
    let (x, _) = random(&mut rng, &shape)?;
    let w = fusion::init_weights(d, c, 5).expect("init");
    let w = Tensor::from_vec(w.to_f32_vec(), &[d, d, c][..], &Device::Cpu)?;
    let (g, _) = random(&mut rng, &shape)?;
    let (x, w, g) = (x.to_dtype(dtype)?, w.to_dtype(dtype)?, g.to_dtype(dtype)?);

    let xv = Var::from_tensor(&x)?;
    let wv = Var::from_tensor(&w)?;
    let y = fuse(xv.as_tensor(), wv.as_tensor())?;
    assert_eq!(y.dims(), &shape[..]);
    assert_eq!(y.dtype(), dtype);
    // loss = sum(y * g), so dL/dy = g.
    let loss = y.mul(&g)?.sum_all()?;
    let grads = loss.backward()?;
    let dx = grads.get(xv.as_tensor()).expect("dx");
    let dw = grads.get(wv.as_tensor()).expect("dw");

    let (xa, wa, ga) = (to_a3d(&x), to_a3d(&w), to_a3d(&g));
    let ya = fusion::forward(&xa, &wa).expect("a3d forward");
    let ref_grads = fusion::backward(&xa, &wa, &ga, fusion::Grads::BOTH).expect("a3d backward");
    let (dxa, dwa) = (ref_grads.dx.expect("dx"), ref_grads.dw.expect("dw"));
    assert_close("y", &values(&y), &ya.to_f32_vec(), tol);
    assert_close("dx", &values(dx), &dxa.to_f32_vec(), tol);
    assert_close("dw", &values(dw), &dwa.to_f32_vec(), tol);
    assert_eq!(dx.dims(), x.dims());
    assert_eq!(dw.dims(), w.dims());
    Ok(())
}

#[test]
fn forward_and_gradients_match_a3d_f32() -> R {
    for shape in [
        [1, 1, 1, 1, 1],
        [2, 3, 5, 7, 9],
        [1, 4, 7, 13, 11],
        [3, 2, 17, 5, 3],
    ] {
        check_against_a3d(shape, candle_core::DType::F32, 1e-6)?;
    }
    Ok(())
}

#[test]
fn forward_and_gradients_match_a3d_half() -> R {
    // Same dtype on both sides; the tolerance covers candle's rounding of dL/dy = g * 1.
    for shape in [[2, 3, 5, 7, 9], [1, 2, 3, 4, 5]] {
        check_against_a3d(shape, candle_core::DType::F16, 1e-3)?;
        check_against_a3d(shape, candle_core::DType::BF16, 1e-2)?;
    }
    Ok(())
}

#[test]
fn strided_inputs_match_their_contiguous_copies() -> R {
    let mut rng = SplitMix64::new(3);
    let (b, c, d, h, w) = (2, 3, 5, 4, 6);
    let wt = fusion::init_weights(d, c, 9).expect("init");
    let wt = Tensor::from_vec(wt.to_f32_vec(), &[d, d, c][..], &Device::Cpu)?;

    // A transposed view: [B, C, W, H, D] with dims 2 and 4 swapped.
    let (base, _) = random(&mut rng, &[b, c, w, h, d])?;
    let xt = base.transpose(2, 4)?;
    assert!(!xt.is_contiguous());
    // A narrowed view with a start offset: the middle of a wider tensor.
    let (wide, _) = random(&mut rng, &[b + 1, c, d, h, w + 3])?;
    let xn = wide.narrow(0, 1, b)?.narrow(4, 2, w)?;
    assert!(!xn.is_contiguous());
    // Contiguous, but at an offset into its storage.
    let xo = wide.narrow(0, 1, b)?;

    for (name, x) in [("transposed", xt), ("narrowed", xn), ("offset", xo)] {
        let y = fuse(&x, &wt)?;
        let y_ref = fuse(&x.contiguous()?, &wt)?;
        assert_eq!(values(&y), values(&y_ref), "{name}");
        // Gradients through a strided x and a transposed (hence strided) w.
        let wv = Var::from_tensor(&wt.transpose(0, 1)?.contiguous()?)?;
        let wview = wv.as_tensor().transpose(0, 1)?;
        let xv = Var::from_tensor(&x.contiguous()?)?;
        let loss = fuse(&xv.as_tensor().transpose(2, 3)?.transpose(2, 3)?, &wview)?
            .sqr()?
            .sum_all()?;
        let grads = loss.backward()?;
        let dx = grads.get(xv.as_tensor()).expect("dx");
        let dw = grads.get(wv.as_tensor()).expect("dw");
        let ya = fusion::forward(&to_a3d(&x), &to_a3d(&wt)).expect("a3d");
        let dy = ya.to_f32_vec().iter().map(|v| 2.0 * v).collect::<Vec<_>>();
        let dy = a3d::Tensor::from_vec(dy, ya.shape()).expect("dy");
        let g = fusion::backward(&to_a3d(&x), &to_a3d(&wt), &dy, fusion::Grads::BOTH)
            .expect("a3d backward");
        assert_close(name, &values(dx), &g.dx.expect("dx").to_f32_vec(), 1e-5);
        let dw_t = values(&dw.transpose(0, 1)?);
        assert_close(name, &dw_t, &g.dw.expect("dw").to_f32_vec(), 1e-5);
    }
    Ok(())
}

#[test]
fn errors_name_the_problem() -> R {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3, 4, 5), candle_core::DType::F32, &dev)?;
    let w = Tensor::zeros((4, 4, 3), candle_core::DType::F32, &dev)?;
    let err = fuse(&x, &w).expect_err("rank 4 x").to_string();
    assert!(
        err.contains("a3d-fusion") && err.contains("`x` must have rank 5"),
        "{err}"
    );

    let x = Tensor::zeros((2, 3, 4, 5, 6), candle_core::DType::F32, &dev)?;
    let w = Tensor::zeros((4, 4, 2), candle_core::DType::F32, &dev)?;
    let err = fuse(&x, &w).expect_err("bad w").to_string();
    assert!(err.contains("`w` must have shape [4, 4, 3]"), "{err}");

    let w = Tensor::zeros((4, 4, 3), candle_core::DType::F16, &dev)?;
    let err = fuse(&x, &w).expect_err("mixed dtypes").to_string();
    assert!(err.contains("`w` has dtype"), "{err}");

    let x64 = x.to_dtype(candle_core::DType::F64)?;
    let w64 = w.to_dtype(candle_core::DType::F64)?;
    let err = fuse(&x64, &w64).expect_err("f64").to_string();
    assert!(err.contains("expected f32, f16 or bf16"), "{err}");
    Ok(())
}

fn two_layers(vb: VarBuilder, c: usize, d: usize) -> candle_core::Result<(A3dConv, A3dConv)> {
    let l1 = A3dConv::new(A3dConvConfig::new(c, 4, d), vb.pp("l1"))?;
    let mut cfg2 = A3dConvConfig::new(4, 2, d);
    cfg2.kernel_size = 1;
    cfg2.padding = 0;
    let l2 = A3dConv::new(cfg2, vb.pp("l2"))?;
    Ok((l1, l2))
}

#[test]
fn a3dconv_shapes_names_and_init() -> R {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
    let mut cfg = A3dConvConfig::new(4, 6, 5);
    cfg.stride = 2;
    cfg.groups = 2;
    let layer = A3dConv::new(cfg, vb.pp("conv"))?;
    let x = Tensor::randn(0f32, 1.0, (2, 4, 5, 9, 8), &Device::Cpu)?;
    let y = layer.forward(&x)?;
    assert_eq!(y.dims(), &[2, 6, 5, 5, 4]);
    let data = varmap.data().lock().expect("varmap");
    assert_eq!(data["conv.weight"].dims(), &[6, 2, 3, 3]);
    assert_eq!(data["conv.bias"].dims(), &[6]);
    let align = &data["conv.adaptive_align_weights"];
    assert_eq!(align.dims(), &[5, 5, 4]);
    // Identity + U(-0.1, 0.1), stored in the variable itself.
    let a = values(align.as_tensor());
    for dd in 0..5 {
        for k in 0..5 {
            for c in 0..4 {
                let v = a[(dd * 5 + k) * 4 + c];
                let base = if dd == k { 1.0 } else { 0.0 };
                assert!((v - base).abs() <= 0.1, "align[{dd},{k},{c}] = {v}");
            }
        }
    }
    Ok(())
}

#[test]
fn a3dconv_gradients_match_finite_differences() -> R {
    let (b, c, d, h, w) = (1, 3, 4, 5, 6);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
    let (l1, l2) = two_layers(vb, c, d)?;
    let mut rng = SplitMix64::new(21);
    let (x0, xs) = random(&mut rng, &[b, c, d, h, w])?;
    let out_shape = [b, 2, d, h, w];
    let (g, _) = random(&mut rng, &out_shape)?;
    let loss_of = |x: &Tensor| -> candle_core::Result<Tensor> {
        let y = l2.forward(&l1.forward(x)?.tanh()?)?;
        y.sqr()?.mul(&g)?.sum_all()
    };
    // f64 sum of the f32 loss terms, for the finite differences.
    let loss_f64 = |x: &Tensor| -> candle_core::Result<f64> {
        let y = l2.forward(&l1.forward(x)?.tanh()?)?;
        let terms = values(&y.sqr()?.mul(&g)?);
        Ok(terms.iter().map(|&v| v as f64).sum())
    };

    let xv = Var::from_tensor(&x0)?;
    let grads = loss_of(xv.as_tensor())?.backward()?;
    let dx = values(grads.get(xv.as_tensor()).expect("dx"));
    let align_var = varmap.data().lock().expect("varmap")["l1.adaptive_align_weights"].clone();
    let dalign = values(grads.get(align_var.as_tensor()).expect("d align"));

    let eps = 1e-2f32;
    let check = |what: &str, analytic: f32, plus: f64, minus: f64| {
        let numeric = ((plus - minus) / (2.0 * eps as f64)) as f32;
        assert!(
            (analytic - numeric).abs() <= 2e-2 * (1.0 + numeric.abs()),
            "{what}: autograd {analytic}, finite difference {numeric}"
        );
    };
    for &i in &[0usize, 7, 31, 64, 119] {
        let mut p = xs.clone();
        p[i] += eps;
        let plus = loss_f64(&Tensor::from_vec(p.clone(), x0.dims(), &Device::Cpu)?)?;
        p[i] -= 2.0 * eps;
        let minus = loss_f64(&Tensor::from_vec(p, x0.dims(), &Device::Cpu)?)?;
        check(&format!("dx[{i}]"), dx[i], plus, minus);
    }
    let a0 = values(align_var.as_tensor());
    let shape = align_var.as_tensor().dims().to_vec();
    for &i in &[0usize, 5, 17, 30, 47] {
        let mut p = a0.clone();
        p[i] += eps;
        align_var.set(&Tensor::from_vec(p.clone(), &shape[..], &Device::Cpu)?)?;
        let plus = loss_f64(&x0)?;
        p[i] -= 2.0 * eps;
        align_var.set(&Tensor::from_vec(p, &shape[..], &Device::Cpu)?)?;
        let minus = loss_f64(&x0)?;
        align_var.set(&Tensor::from_vec(a0.clone(), &shape[..], &Device::Cpu)?)?;
        check(&format!("d align[{i}]"), dalign[i], plus, minus);
    }
    Ok(())
}

#[test]
fn training_two_a3dconv_layers_lowers_the_loss() -> R {
    let (b, c, d, h, w) = (2, 3, 5, 6, 6);
    let dev = Device::Cpu;
    // Teacher: fixed random layers; student: fresh layers trained to match it.
    let teacher_map = VarMap::new();
    let (t1, t2) = two_layers(
        VarBuilder::from_varmap(&teacher_map, candle_core::DType::F32, &dev),
        c,
        d,
    )?;
    let varmap = VarMap::new();
    let (s1, s2) = two_layers(
        VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &dev),
        c,
        d,
    )?;
    let mut rng = SplitMix64::new(77);
    let (x, _) = random(&mut rng, &[b, c, d, h, w])?;
    let target = t2.forward(&t1.forward(&x)?)?.detach();
    let mut opt = candle_nn::SGD::new(varmap.all_vars(), 0.05)?;
    let loss = |_: ()| -> candle_core::Result<Tensor> {
        s2.forward(&s1.forward(&x)?)?
            .sub(&target)?
            .sqr()?
            .mean_all()
    };
    let first = loss(())?.to_scalar::<f32>()?;
    for _ in 0..150 {
        opt.backward_step(&loss(())?)?;
    }
    let last = loss(())?.to_scalar::<f32>()?;
    println!("training loss {first} -> {last}");
    assert!(
        last.is_finite() && last < 0.25 * first,
        "loss {first} -> {last}"
    );
    Ok(())
}
