//! The candle integration: the fusion op against a3d's own forward and backward, autograd,
//! strided inputs, errors; the `A3dConv` layer's a3d custom op against a3d's A3DConv backward and
//! against fusion + candle's conv2d, in f32, f16 and bf16, with strided inputs; finite
//! differences through an `A3dConv` stack, and a short training run. With feature
//! `candle-cuda`, the CUDA path against the CPU (skipped without a CUDA device).
#![cfg(feature = "candle")]

use a3d::a3dconv::{self, Conv2dParams};
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
    reseed(&varmap, 20)?;
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
    // Deterministic parameters (candle's CPU generator cannot be seeded).
    reseed(&teacher_map, 70)?;
    reseed(&varmap, 71)?;
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

/// Overwrites every variable of `varmap` with deterministic values drawn like
/// `A3dConv::new`'s initialisation (candle's CPU generator cannot be seeded): fusion weights
/// identity + U(-0.1, 0.1), convolution weights U(-sqrt(6/fan_in), sqrt(6/fan_in)), biases
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = I/groups * k * k. Values are drawn in f32 and
/// rounded to each variable's dtype.
fn reseed(varmap: &VarMap, seed: u64) -> R {
    let data = varmap.data().lock().expect("varmap");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let fan_in = |weight: &str| -> usize { data[weight].dims()[1..].iter().product() };
    let mut rng = SplitMix64::new(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n = dims.iter().product();
        let v = if name.ends_with("adaptive_align_weights") {
            let (d, c) = (dims[0], dims[2]);
            let mut v = rng.vec_f32(n, -0.1, 0.1);
            for k in 0..d {
                for ch in 0..c {
                    v[(k * d + k) * c + ch] += 1.0;
                }
            }
            v
        } else if let Some(prefix) = name.strip_suffix("bias") {
            let bound = 1.0 / (fan_in(&format!("{prefix}weight")) as f32).sqrt();
            rng.vec_f32(n, -bound, bound)
        } else {
            let bound = (6.0 / fan_in(name) as f32).sqrt();
            rng.vec_f32(n, -bound, bound)
        };
        var.set(&Tensor::from_vec(v, dims, var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// One `A3dConv` configuration under test.
#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    fusion: bool,
    bias: bool,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
}

impl Case {
    const fn new(name: &'static str, fusion: bool, bias: bool) -> Case {
        Case {
            name,
            fusion,
            bias,
            kernel: 3,
            stride: 1,
            padding: 1,
            dilation: 1,
        }
    }

    fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: [self.stride; 2],
            padding: [self.padding; 2],
            dilation: [self.dilation; 2],
        }
    }
}

const CASES: [Case; 8] = [
    Case::new("fusion+bias", true, true),
    Case::new("fusion, no bias", true, false),
    Case::new("no fusion, bias", false, true),
    Case::new("no fusion, no bias", false, false),
    Case {
        stride: 2,
        ..Case::new("stride 2", true, true)
    },
    Case {
        dilation: 2,
        padding: 2,
        ..Case::new("dilation 2", true, true)
    },
    Case {
        stride: 2,
        dilation: 2,
        padding: 1,
        ..Case::new("stride 2, dilation 2, no bias", false, false)
    },
    Case {
        kernel: 1,
        padding: 0,
        ..Case::new("1x1", true, true)
    },
];

/// A layer `conv` of `case` with `(I, O, D)` channels and slices, in `dtype`, parameters from
/// `reseed(seed)`.
fn case_layer(
    case: &Case,
    (c, o, d): (usize, usize, usize),
    dtype: candle_core::DType,
    seed: u64,
) -> candle_core::Result<(VarMap, A3dConv)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let mut cfg = A3dConvConfig::new(c, o, d);
    cfg.kernel_size = case.kernel;
    cfg.stride = case.stride;
    cfg.padding = case.padding;
    cfg.dilation = case.dilation;
    cfg.bias = case.bias;
    cfg.fusion = case.fusion;
    let layer = A3dConv::new(cfg, vb.pp("conv"))?;
    reseed(&varmap, seed)?;
    Ok((varmap, layer))
}

/// The layer composed from candle primitives, as before the a3d op: `fuse`, then candle's
/// `conv2d` on the `B * D` slices (with the layer's groups), plus the bias.
fn reference_forward(layer: &A3dConv, x: &Tensor) -> candle_core::Result<Tensor> {
    let cfg = layer.config();
    let (b, c, d, h, w) = x.dims5()?;
    let z = match layer.adaptive_align_weights() {
        Some(align) => fuse(x, align)?,
        None => x.clone(),
    };
    let slices = z.permute((0, 2, 1, 3, 4))?.reshape((b * d, c, h, w))?;
    let mut y = slices.conv2d(
        layer.weight(),
        cfg.padding,
        cfg.stride,
        cfg.dilation,
        cfg.groups,
    )?;
    if let Some(bias) = layer.bias() {
        y = y.broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
    }
    let (_, o, h2, w2) = y.dims4()?;
    y.reshape((b, d, o, h2, w2))?.permute((0, 2, 1, 3, 4))
}

/// `y = forward(x)` and the gradients of `loss = sum(y * g)` through candle's autograd.
struct Run {
    y: Tensor,
    /// `None` when `x` was passed as a constant.
    dx: Option<Tensor>,
    dw: Tensor,
    db: Option<Tensor>,
    dalign: Option<Tensor>,
}

fn run(
    layer: &A3dConv,
    forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    x: &Tensor,
    x_var: bool,
    g: &Tensor,
) -> candle_core::Result<Run> {
    let xv = Var::from_tensor(x)?;
    let input = if x_var {
        xv.as_tensor().clone()
    } else {
        x.clone()
    };
    let y = forward(&input)?;
    let grads = y.mul(g)?.sum_all()?.backward()?;
    Ok(Run {
        dx: grads.get(xv.as_tensor()).cloned(),
        dw: grads.get(layer.weight()).expect("d weight").clone(),
        db: layer.bias().map(|b| grads.get(b).expect("d bias").clone()),
        dalign: layer
            .adaptive_align_weights()
            .map(|a| grads.get(a).expect("d align").clone()),
        y,
    })
}

/// `|got - want| <= tol * max(1, max |want|)`: for results of different precisions or
/// summation orders, whose error scales with the largest value.
fn assert_close_scaled(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: got {g}, want {w} (scale {scale})"
        );
    }
}

/// Compares two runs' forward and gradients (`None` on both sides, or both present).
fn compare_runs(what: &str, got: &Run, want: &Run, tol: f32) {
    let pairs = [
        ("y", Some(&got.y), Some(&want.y)),
        ("dx", got.dx.as_ref(), want.dx.as_ref()),
        ("d weight", Some(&got.dw), Some(&want.dw)),
        ("d bias", got.db.as_ref(), want.db.as_ref()),
        ("d align", got.dalign.as_ref(), want.dalign.as_ref()),
    ];
    for (name, g, w) in pairs {
        match (g, w) {
            (Some(g), Some(w)) => {
                assert_eq!(g.dims(), w.dims(), "{what} {name}: dims");
                assert_close_scaled(&format!("{what} {name}"), &values(g), &values(w), tol);
            }
            (None, None) => {}
            _ => panic!("{what} {name}: present on one side only"),
        }
    }
}

const SIZES: (usize, usize, usize, usize, usize, usize) = (2, 3, 4, 5, 9, 8);

/// The layer's forward and candle's gradients (through the a3d op) equal a3d's A3DConv forward
/// and `backward` called directly on the same data, bit for bit: the op runs that very code,
/// and candle only splits the packed parameter gradient.
fn check_layer_against_a3d(case: &Case, dtype: candle_core::DType) -> R {
    let (b, c, o, d, h, w) = SIZES;
    let (_varmap, layer) = case_layer(case, (c, o, d), dtype, 31)?;
    let mut rng = SplitMix64::new(41);
    let x = random(&mut rng, &[b, c, d, h, w])?.0.to_dtype(dtype)?;
    let y_dims = layer.forward(&x)?.dims().to_vec();
    let g = random(&mut rng, &y_dims)?.0.to_dtype(dtype)?;

    let fw = layer.adaptive_align_weights().map(to_a3d);
    let cw = to_a3d(layer.weight());
    let bias = layer.bias().map(to_a3d);
    let op = a3dconv::A3dConv {
        fusion_weight: fw.as_ref(),
        conv_weight: &cw,
        bias: bias.as_ref(),
        params: case.params(),
    };
    let (xa, ga) = (to_a3d(&x), to_a3d(&g));
    let ya = op.forward(&xa).expect("a3d forward");
    let grads = op
        .backward(&xa, &ga, a3dconv::Grads::ALL)
        .expect("a3d backward");
    let a3d_values = |t: Option<a3d::Tensor>| t.expect("a3d gradient").to_f32_vec();
    let dx_want = a3d_values(grads.dx);
    let dw_want = a3d_values(grads.d_conv_weight);

    // With x a variable (dx computed) and a constant (only the parameters' gradients).
    for x_var in [true, false] {
        let what = format!("{} {dtype:?} x_var={x_var}", case.name);
        let r = run(&layer, |x| layer.forward(x), &x, x_var, &g)?;
        assert_eq!(r.y.dims(), ya.shape(), "{what}");
        assert_eq!(r.y.dtype(), dtype, "{what}");
        assert_close(&format!("{what} y"), &values(&r.y), &ya.to_f32_vec(), 0.0);
        match &r.dx {
            Some(dx) => {
                assert!(x_var, "{what}: dx for a constant input");
                assert_eq!(dx.dtype(), dtype);
                assert_close(&format!("{what} dx"), &values(dx), &dx_want, 0.0);
            }
            None => assert!(!x_var, "{what}: no dx"),
        }
        assert_eq!(r.dw.dims(), layer.weight().dims(), "{what}");
        assert_close(&format!("{what} d weight"), &values(&r.dw), &dw_want, 0.0);
        match (&r.db, &grads.d_bias) {
            (Some(db), Some(want)) => assert_close(
                &format!("{what} d bias"),
                &values(db),
                &want.to_f32_vec(),
                0.0,
            ),
            (None, _) => assert!(!case.bias, "{what}: no d bias"),
            (Some(_), None) => panic!("{what}: a3d computed no d bias"),
        }
        match (&r.dalign, &grads.d_fusion_weight) {
            (Some(da), Some(want)) => assert_close(
                &format!("{what} d align"),
                &values(da),
                &want.to_f32_vec(),
                0.0,
            ),
            (None, None) => assert!(!case.fusion, "{what}"),
            _ => panic!("{what}: d align present on one side only"),
        }
    }
    Ok(())
}

#[test]
fn a3dconv_op_gradients_equal_a3d_backward() -> R {
    for case in &CASES {
        check_layer_against_a3d(case, candle_core::DType::F32)?;
    }
    Ok(())
}

#[test]
fn a3dconv_op_matches_fuse_plus_candle_conv2d() -> R {
    // A small shape for every case, and one with more channels (several GEMM blocks). Widths
    // with the stride-2 cases' rows and columns leaving the same remainder: candle 0.11's
    // conv2d backward takes the input gradient's output padding from the rows alone and fails
    // with a shape mismatch otherwise (W = 8 with H = 9 here); the a3d op has no such limit
    // (`a3dconv_op_gradients_equal_a3d_backward` runs W = 8).
    let (b, c, o, d, h, _) = SIZES;
    let shapes = [(b, c, o, d, h, 7), (1, 8, 16, 3, 17, 15)];
    for (b, c, o, d, h, w) in shapes {
        for case in &CASES {
            let (_varmap, layer) = case_layer(case, (c, o, d), candle_core::DType::F32, 51)?;
            let mut rng = SplitMix64::new(52);
            let (x, _) = random(&mut rng, &[b, c, d, h, w])?;
            let y_dims = reference_forward(&layer, &x)?.dims().to_vec();
            let (g, _) = random(&mut rng, &y_dims)?;
            let got = run(&layer, |x| layer.forward(x), &x, true, &g)?;
            let want = run(&layer, |x| reference_forward(&layer, x), &x, true, &g)?;
            compare_runs(&format!("{} c={c} o={o}", case.name), &got, &want, 1e-5);
        }
    }
    Ok(())
}

#[test]
fn a3dconv_op_half_precision() -> R {
    let (b, c, o, d, h, w) = SIZES;
    for (dtype, tol) in [
        (candle_core::DType::F16, 1e-2),
        (candle_core::DType::BF16, 5e-2),
    ] {
        for case in [&CASES[0], &CASES[3], &CASES[5]] {
            // Same storage dtype on both sides: identical to a3d's own half-precision results.
            check_layer_against_a3d(case, dtype)?;
            // Against the f32 layer with the same (unrounded) parameters and data, loosely.
            let (_m16, l16) = case_layer(case, (c, o, d), dtype, 61)?;
            let (_m32, l32) = case_layer(case, (c, o, d), candle_core::DType::F32, 61)?;
            let mut rng = SplitMix64::new(62);
            let (x, _) = random(&mut rng, &[b, c, d, h, w])?;
            let y_dims = l32.forward(&x)?.dims().to_vec();
            let (g, _) = random(&mut rng, &y_dims)?;
            let half = run(
                &l16,
                |x| l16.forward(x),
                &x.to_dtype(dtype)?,
                true,
                &g.to_dtype(dtype)?,
            )?;
            assert_eq!(half.y.dtype(), dtype);
            let full = run(&l32, |x| l32.forward(x), &x, true, &g)?;
            compare_runs(&format!("{} {dtype:?}", case.name), &half, &full, tol);
        }
    }
    Ok(())
}

#[test]
fn a3dconv_op_strided_inputs() -> R {
    let (b, c, o, d, h, w) = SIZES;
    let (_varmap, layer) = case_layer(&CASES[0], (c, o, d), candle_core::DType::F32, 71)?;
    let mut rng = SplitMix64::new(72);

    // A transposed view: stored as [B, C, W, H, D], used with dims 2 and 4 swapped.
    let (base, _) = random(&mut rng, &[b, c, w, h, d])?;
    let base = Var::from_tensor(&base)?;
    let xt = base.as_tensor().transpose(2, 4)?;
    assert!(!xt.is_contiguous());
    // A narrowed view at an offset into a wider tensor.
    let (wide, _) = random(&mut rng, &[b + 1, c, d, h, w + 3])?;
    let xn = wide.narrow(0, 1, b)?.narrow(4, 2, w)?;
    assert!(!xn.is_contiguous());
    // Contiguous, at an offset into its storage.
    let xo = wide.narrow(0, 1, b)?;
    assert!(xo.is_contiguous());
    for (name, x) in [("transposed", &xt), ("narrowed", &xn), ("offset", &xo)] {
        let y = layer.forward(x)?;
        let y_ref = layer.forward(&x.contiguous()?.detach())?;
        assert_eq!(values(&y), values(&y_ref), "{name}");
    }

    // Gradients through the transposed view, with loss = sum(y): candle hands the op a
    // broadcast (stride 0) dy.
    let loss = layer.forward(&xt)?.sum_all()?;
    let grads = loss.backward()?;
    let dbase = grads.get(base.as_tensor()).expect("d base");
    let dw = grads.get(layer.weight()).expect("d weight");
    let (fw, cw) = (
        to_a3d(layer.adaptive_align_weights().expect("align")),
        to_a3d(layer.weight()),
    );
    let bias = to_a3d(layer.bias().expect("bias"));
    let op = a3dconv::A3dConv {
        fusion_weight: Some(&fw),
        conv_weight: &cw,
        bias: Some(&bias),
        params: CASES[0].params(),
    };
    let xa = to_a3d(&xt.contiguous()?);
    let dims = op.dims(&xa).expect("dims").output_shape();
    let dy = a3d::Tensor::full(&dims, 1.0, DType::F32).expect("dy");
    let g = op
        .backward(&xa, &dy, a3dconv::Grads::ALL)
        .expect("a3d backward");
    assert_close(
        "transposed dx",
        &values(&dbase.transpose(2, 4)?),
        &g.dx.expect("dx").to_f32_vec(),
        0.0,
    );
    assert_close(
        "transposed d weight",
        &values(dw),
        &g.d_conv_weight.expect("dw").to_f32_vec(),
        0.0,
    );
    Ok(())
}

#[test]
fn a3dconv_op_errors_name_the_problem() -> R {
    let dev = Device::Cpu;
    let f32_ = candle_core::DType::F32;
    let (_varmap, layer) = case_layer(&CASES[0], (3, 4, 5), f32_, 81)?;

    let x = Tensor::zeros((2, 4, 5, 6, 6), f32_, &dev)?;
    let err = layer.forward(&x).expect_err("4 channels").to_string();
    assert!(
        err.contains("a3dconv") && err.contains("`conv_weight` must have shape [4, 4, 3, 3]"),
        "{err}"
    );
    let x = Tensor::zeros((2, 3, 6, 6), f32_, &dev)?;
    let err = layer.forward(&x).expect_err("rank 4").to_string();
    assert!(err.contains("`x` must have rank 5"), "{err}");
    let x = Tensor::zeros((2, 3, 4, 6, 6), f32_, &dev)?;
    let err = layer.forward(&x).expect_err("4 slices").to_string();
    assert!(err.contains("`fusion_weight` must have shape"), "{err}");
    let x = Tensor::zeros((2, 3, 5, 6, 6), candle_core::DType::F16, &dev)?;
    let err = layer.forward(&x).expect_err("f16 x").to_string();
    assert!(err.contains("`conv_weight` has dtype f32"), "{err}");
    let x = Tensor::zeros((2, 3, 5, 6, 6), candle_core::DType::F64, &dev)?;
    let err = layer.forward(&x).expect_err("f64 x").to_string();
    assert!(err.contains("expected f32, f16 or bf16"), "{err}");

    let case = Case {
        padding: 0,
        ..CASES[0]
    };
    let (_varmap, layer) = case_layer(&case, (3, 4, 5), f32_, 82)?;
    let x = Tensor::zeros((1, 3, 5, 2, 6), f32_, &dev)?;
    let err = layer.forward(&x).expect_err("kernel too large").to_string();
    assert!(err.contains("exceeds the padded input size 2"), "{err}");
    Ok(())
}

#[test]
fn a3dconv_groups_use_candle_conv2d() -> R {
    // groups > 1 is not supported by a3d's A3DConv op: the layer is fuse + candle's conv2d.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
    let mut cfg = A3dConvConfig::new(4, 6, 3);
    cfg.groups = 2;
    let layer = A3dConv::new(cfg, vb.pp("conv"))?;
    reseed(&varmap, 91)?;
    let mut rng = SplitMix64::new(92);
    let (x, _) = random(&mut rng, &[2, 4, 3, 7, 6])?;
    let (g, _) = random(&mut rng, &[2, 6, 3, 7, 6])?;
    let got = run(&layer, |x| layer.forward(x), &x, true, &g)?;
    let want = run(&layer, |x| reference_forward(&layer, x), &x, true, &g)?;
    compare_runs("groups 2", &got, &want, 0.0);
    Ok(())
}

/// The CUDA path (a3d's fusion kernels on candle's CUDA tensors, then candle's conv2d) against
/// the CPU path (the a3d ops), forward and gradients. Skipped without a CUDA device.
#[cfg(feature = "candle-cuda")]
#[test]
fn cuda_matches_cpu() -> R {
    let cuda = match Device::new_cuda(0) {
        Ok(dev) => dev,
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            return Ok(());
        }
    };
    // W = 7, not SIZES' 8: on CUDA the layer's convolution is candle's conv2d, whose backward
    // needs the stride-2 rows and columns to leave the same remainder (see
    // `a3dconv_op_matches_fuse_plus_candle_conv2d`).
    let (b, c, o, d, h, w) = (SIZES.0, SIZES.1, SIZES.2, SIZES.3, SIZES.4, 7);
    for (dtype, tol) in [
        (candle_core::DType::F32, 1e-4),
        (candle_core::DType::F16, 1e-2),
        (candle_core::DType::BF16, 5e-2),
    ] {
        // The fusion op alone.
        let mut rng = SplitMix64::new(101);
        let x = random(&mut rng, &[b, c, d, h, w])?.0.to_dtype(dtype)?;
        let wt = fusion::init_weights(d, c, 102).expect("init");
        let wt = Tensor::from_vec(wt.to_f32_vec(), &[d, d, c][..], &Device::Cpu)?;
        let wt = wt.to_dtype(dtype)?;
        let g = random(&mut rng, &[b, c, d, h, w])?.0.to_dtype(dtype)?;
        let fusion_run = |dev: &Device| -> candle_core::Result<Vec<Vec<f32>>> {
            let xv = Var::from_tensor(&x.to_device(dev)?)?;
            let wv = Var::from_tensor(&wt.to_device(dev)?)?;
            let y = fuse(xv.as_tensor(), wv.as_tensor())?;
            assert_eq!(y.dtype(), dtype);
            let grads = y.mul(&g.to_device(dev)?)?.sum_all()?.backward()?;
            Ok(vec![
                values(&y),
                values(grads.get(xv.as_tensor()).expect("dx")),
                values(grads.get(wv.as_tensor()).expect("dw")),
            ])
        };
        let (want, got) = (fusion_run(&Device::Cpu)?, fusion_run(&cuda)?);
        for (name, (g, w)) in ["y", "dx", "dw"].iter().zip(got.iter().zip(&want)) {
            assert_close_scaled(&format!("cuda fuse {dtype:?} {name}"), g, w, tol);
        }

        // The layer, with the same parameters on both devices.
        for case in &CASES {
            let (cpu_map, cpu_layer) = case_layer(case, (c, o, d), dtype, 103)?;
            let cuda_map = VarMap::new();
            let vb = VarBuilder::from_varmap(&cuda_map, dtype, &cuda);
            let cuda_layer = A3dConv::new(*cpu_layer.config(), vb.pp("conv"))?;
            {
                let src = cpu_map.data().lock().expect("varmap");
                let dst = cuda_map.data().lock().expect("varmap");
                for (name, var) in src.iter() {
                    dst[name].set(&var.as_tensor().to_device(&cuda)?)?;
                }
            }
            let y_dims = cpu_layer.forward(&x)?.dims().to_vec();
            let g = random(&mut rng, &y_dims)?.0.to_dtype(dtype)?;
            let want = run(&cpu_layer, |x| cpu_layer.forward(x), &x, true, &g)?;
            let (xc, gc) = (x.to_device(&cuda)?, g.to_device(&cuda)?);
            let got = run(&cuda_layer, |x| cuda_layer.forward(x), &xc, true, &gc)?;
            assert!(got.y.device().is_cuda());
            compare_runs(&format!("cuda {} {dtype:?}", case.name), &got, &want, tol);
        }
    }
    Ok(())
}
