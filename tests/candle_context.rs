//! The symmetric context operators in candle: `tsm`, `align_shift` and `depth_conv` through
//! candle's autograd against a3d's own forward and backward (f32, f16, bf16, strided inputs),
//! finite differences of a loss through a `ContextConv` layer of every fusion kind, the
//! reference parameter names, and errors.
#![cfg(feature = "candle")]

use a3d::candle::A3dConvConfig;
use a3d::candle::{align_shift, depth_conv, tsm, ContextConv, ContextConvConfig, ContextFusion};
use a3d::fusion::Grads;
use a3d::rng::SplitMix64;
use a3d::shift::Shift;
use a3d::{depthconv, DType};
use candle_core::{DType as CDType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

type R = candle_core::Result<()>;

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(CDType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor to vec")
}

fn to_a3d(t: &Tensor, dtype: DType) -> a3d::Tensor {
    a3d::Tensor::from_f32(&values(t), t.dims(), dtype).expect("a3d tensor")
}

fn a3d_dtype(d: CDType) -> DType {
    match d {
        CDType::F16 => DType::F16,
        CDType::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

fn random(rng: &mut SplitMix64, shape: &[usize], dtype: CDType) -> candle_core::Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_vec(rng.vec_f32(n, -1.0, 1.0), shape, &Device::Cpu)?.to_dtype(dtype)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// The loss sum(y * g) has gradient g with respect to y, so autograd's dx is the op's backward
/// of g.
#[test]
fn shifts_through_autograd_equal_a3d() -> R {
    let mut rng = SplitMix64::new(1);
    let shape = [2, 16, 5, 3, 7];
    for dtype in [CDType::F32, CDType::F16, CDType::BF16] {
        let x = Var::from_tensor(&random(&mut rng, &shape, dtype)?)?;
        let g = random(&mut rng, &shape, dtype)?;
        let ad = a3d_dtype(dtype);
        let cases = [
            (tsm(x.as_tensor(), 8)?, Shift::tsm(8).unwrap()),
            (
                align_shift(x.as_tensor(), &[5.0, 1.5], 2.0, true, 4)?,
                Shift::align_shift(&[5.0, 1.5], 2.0, true, 4).unwrap(),
            ),
        ];
        for (y, shift) in cases {
            let want_y = shift.forward(&to_a3d(x.as_tensor(), ad)).unwrap();
            assert_close("y", &values(&y), &want_y.to_f32_vec(), 0.0);
            let grads = (y.to_dtype(CDType::F32)? * g.to_dtype(CDType::F32)?)?
                .sum_all()?
                .backward()?;
            let dx = grads.get(x.as_tensor()).expect("dx");
            let want = shift.backward(&to_a3d(&g, ad)).unwrap();
            assert_close("dx", &values(dx), &want.to_f32_vec(), 1e-2);
        }
    }
    // A strided (transposed twice) input gives the same result.
    let x = random(&mut rng, &[2, 8, 3, 4, 5], CDType::F32)?;
    let strided = x.transpose(3, 4)?.contiguous()?.transpose(3, 4)?;
    assert!(!strided.is_contiguous());
    assert_eq!(values(&tsm(&strided, 4)?), values(&tsm(&x, 4)?));
    Ok(())
}

#[test]
fn depth_conv_through_autograd_equals_a3d() -> R {
    let mut rng = SplitMix64::new(2);
    let shape = [2, 3, 7, 5, 4];
    for (dtype, tol) in [
        (CDType::F32, 1e-5),
        (CDType::F16, 2e-2),
        (CDType::BF16, 8e-2),
    ] {
        let ad = a3d_dtype(dtype);
        let x = Var::from_tensor(&random(&mut rng, &shape, dtype)?)?;
        let v = Var::from_tensor(&random(&mut rng, &[3, 3], dtype)?)?;
        let g = random(&mut rng, &shape, dtype)?;
        let y = depth_conv(x.as_tensor(), v.as_tensor())?;
        let (xa, va, ga) = (
            to_a3d(x.as_tensor(), ad),
            to_a3d(v.as_tensor(), ad),
            to_a3d(&g, ad),
        );
        assert_close(
            "y",
            &values(&y),
            &depthconv::forward(&xa, &va).unwrap().to_f32_vec(),
            tol,
        );
        let grads = (y * &g)?.sum_all()?.backward()?;
        let want = depthconv::backward(&xa, &va, &ga, Grads::BOTH).unwrap();
        assert_close(
            "dx",
            &values(grads.get(x.as_tensor()).expect("dx")),
            &want.dx.unwrap().to_f32_vec(),
            tol,
        );
        assert_close(
            "dv",
            &values(grads.get(v.as_tensor()).expect("dv")),
            &want.dw.unwrap().to_f32_vec(),
            tol,
        );
    }
    Ok(())
}

fn layer(fusion: ContextFusion, map: &VarMap) -> candle_core::Result<ContextConv> {
    let vb = VarBuilder::from_varmap(map, CDType::F32, &Device::Cpu);
    let mut conv = A3dConvConfig::new(8, 4, 5);
    conv.kernel_size = 3;
    ContextConv::new(ContextConvConfig { conv, fusion }, vb)
}

/// Central differences of a scalar loss through the layer match autograd for every fusion kind
/// (f32 throughout, so the check uses a step of 1e-2 and a loose tolerance).
#[test]
fn context_conv_gradients_match_finite_differences() -> R {
    let mut rng = SplitMix64::new(3);
    for name in ["a3d", "tsm", "alignshift", "depthconv", "none"] {
        let fusion = ContextFusion::from_name(name).expect("known name");
        let map = VarMap::new();
        let l = layer(fusion, &map)?;
        let x = Var::from_tensor(&random(&mut rng, &[2, 8, 5, 6, 5], CDType::F32)?)?;
        let g = random(&mut rng, &[2, 4, 5, 6, 5], CDType::F32)?;
        let thickness = [5.0f32, 2.5];
        let loss = |x: &Tensor| -> candle_core::Result<f64> {
            let y = l.forward_with_thickness(x, Some(&thickness))?;
            (y.to_dtype(CDType::F32)? * &g)?
                .sum_all()?
                .to_dtype(CDType::F64)?
                .to_scalar::<f64>()
        };
        let y = l.forward_with_thickness(x.as_tensor(), Some(&thickness))?;
        let grads = (y.to_dtype(CDType::F32)? * &g)?.sum_all()?.backward()?;
        let dx = values(grads.get(x.as_tensor()).expect("dx"));
        let xv = values(x.as_tensor());
        let h = 1e-2f32;
        for i in (0..xv.len()).step_by(97) {
            let mut plus = xv.clone();
            let mut minus = xv.clone();
            plus[i] += h;
            minus[i] -= h;
            let t = |v: Vec<f32>| Tensor::from_vec(v, x.dims(), &Device::Cpu);
            let fd = (loss(&t(plus)?)? - loss(&t(minus)?)?) / (2.0 * h as f64);
            assert!(
                (fd - dx[i] as f64).abs() <= 2e-2 * (1.0 + fd.abs()),
                "{name} dx[{i}]: {fd} vs {}",
                dx[i]
            );
        }
    }
    Ok(())
}

#[test]
fn context_conv_names_and_errors() -> R {
    let map = VarMap::new();
    let _ = layer(ContextFusion::A3d, &map)?;
    let names: Vec<String> = map.data().lock().unwrap().keys().cloned().collect();
    assert!(
        names.contains(&"adaptive_align_weights".to_string()),
        "{names:?}"
    );
    let map = VarMap::new();
    let l = layer(ContextFusion::DepthConv { taps: 3 }, &map)?;
    let v = values(l.depth_conv_weights().expect("weights"));
    // Centre taps start at 1 + U(-0.1, 0.1), the others at U(-0.1, 0.1).
    assert!(v[8..16].iter().all(|&c| (0.9..=1.1).contains(&c)), "{v:?}");
    assert!(
        v[..8].iter().chain(&v[16..]).all(|&c| c.abs() <= 0.1),
        "{v:?}"
    );
    let map = VarMap::new();
    let l = layer(ContextFusion::from_name("alignshift").expect("known"), &map)?;
    let x = Tensor::zeros((1, 8, 5, 4, 4), CDType::F32, &Device::Cpu)?;
    let e = l.forward(&x).unwrap_err().to_string();
    assert!(e.contains("thickness"), "{e}");
    let e = l
        .forward_with_thickness(&x, Some(&[-1.0]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("thickness"), "{e}");
    assert!(layer(ContextFusion::DepthConv { taps: 2 }, &VarMap::new()).is_err());
    assert!(layer(ContextFusion::Tsm { fold_div: 0 }, &VarMap::new()).is_err());
    assert!(ContextFusion::from_name("i3d").is_none());
    let e = tsm(&x, 9).unwrap_err().to_string();
    assert!(e.contains("fold_div"), "{e}");
    Ok(())
}

/// With `candle-cuda` and a GPU: the ops on candle's CUDA tensors (a3d's kernels on candle's
/// memory and stream) equal the CPU ops, forward and gradients.
#[cfg(feature = "candle-cuda")]
#[test]
fn cuda_matches_cpu() -> R {
    let gpu = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            return Ok(());
        }
    };
    let mut rng = SplitMix64::new(5);
    let shape = [2, 16, 7, 9, 8];
    let x = random(&mut rng, &shape, CDType::F32)?;
    let g = random(&mut rng, &shape, CDType::F32)?;
    let v = random(&mut rng, &[3, 16], CDType::F32)?;
    let run = |dev: &Device| -> candle_core::Result<Vec<Vec<f32>>> {
        let xv = Var::from_tensor(&x.to_device(dev)?)?;
        let vv = Var::from_tensor(&v.to_device(dev)?)?;
        let gd = g.to_device(dev)?;
        let mut out = Vec::new();
        for y in [
            tsm(xv.as_tensor(), 8)?,
            align_shift(xv.as_tensor(), &[5.0, 1.5], 2.0, true, 8)?,
            depth_conv(xv.as_tensor(), vv.as_tensor())?,
        ] {
            out.push(values(&y.to_device(&Device::Cpu)?));
            let grads = (y * &gd)?.sum_all()?.backward()?;
            out.push(values(
                &grads
                    .get(xv.as_tensor())
                    .expect("dx")
                    .to_device(&Device::Cpu)?,
            ));
        }
        Ok(out)
    };
    for (i, (c, d)) in run(&Device::Cpu)?.iter().zip(&run(&gpu)?).enumerate() {
        assert_close(&format!("output {i}"), d, c, 1e-5);
    }
    Ok(())
}
