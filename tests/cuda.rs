//! The CUDA kernels on a real GPU against the float64 reference and the CPU path (feature
//! `cuda`). Outputs are NaN-poisoned before every launch. Without a GPU each test prints
//! "skipped: no CUDA device" to the terminal (not captured) and returns.
//!
//! Tests named `sanitizer_*` are small and cover every kernel family; `scripts/gpu-check.sh`
//! runs them under compute-sanitizer racecheck.
#![cfg(feature = "cuda")]

use a3d::backend::FusionBackend;
use a3d::cuda::{CudaDevice, CudaTensor};
use a3d::fusion::{self, reference, FusionDims, Grads};
use a3d::rng::SplitMix64;
use a3d::selftest;
use a3d::{DType, Error, Tensor};
use std::io::Write;

fn device() -> Option<CudaDevice> {
    match CudaDevice::open(0) {
        Ok(d) => Some(d),
        Err(e) => {
            // Written straight to the terminal: libtest captures println!, not this.
            let _ = writeln!(std::io::stderr(), "skipped: no CUDA device ({e})");
            None
        }
    }
}

fn dtypes(dev: &CudaDevice) -> Vec<DType> {
    DType::ALL
        .into_iter()
        .filter(|&d| d != DType::BF16 || dev.supports_bf16())
        .collect()
}

fn random(shape: &[usize], dtype: DType, rng: &mut SplitMix64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(&rng.vec_f32(n, -1.0, 1.0), shape, dtype).unwrap()
}

fn check_shape(dev: &CudaDevice, shape: [usize; 5], dtype: DType, rng: &mut SplitMix64) {
    let backend = a3d::backend::Cuda {
        device: dev.clone(),
    };
    let dims = FusionDims::from_input_shape(&shape).unwrap();
    let x = random(&shape, dtype, rng);
    let dy = random(&shape, dtype, rng);
    let w = fusion::init_weights(shape[2], shape[1], rng.next_u64())
        .unwrap()
        .to_dtype(dtype);
    let (xf, wf, dyf) = (x.to_f64_vec(), w.to_f64_vec(), dy.to_f64_vec());
    let tol = selftest::tolerance(dtype);
    let y = backend.forward(&x, &w).unwrap().to_f64_vec();
    let e = reference::relative_error(&y, &reference::forward(&dims, &xf, &wf));
    assert!(e <= tol, "forward {dtype} {shape:?}: {e:e}");
    let g = backend.backward(&x, &w, &dy, Grads::BOTH).unwrap();
    let dx = g.dx.unwrap().to_f64_vec();
    let e = reference::relative_error(&dx, &reference::grad_input(&dims, &wf, &dyf));
    assert!(e <= tol, "grad_input {dtype} {shape:?}: {e:e}");
    let dw = g.dw.unwrap().to_f64_vec();
    let e = reference::relative_error(&dw, &reference::grad_weight(&dims, &xf, &dyf));
    assert!(e <= tol, "grad_weight {dtype} {shape:?}: {e:e}");
}

#[test]
fn gpu_selftest_passes() {
    let Some(dev) = device() else { return };
    for c in selftest::run_fusion(&a3d::backend::Cuda { device: dev }, 17) {
        assert!(c.passed(), "{c}");
    }
}

#[test]
fn gpu_matches_reference_on_many_shapes() {
    let Some(dev) = device() else { return };
    let mut rng = SplitMix64::new(1);
    for b in [1, 2, 3] {
        for c in [1, 3, 5, 17] {
            for d in [1, 2, 3, 5, 7, 8, 9, 11, 16, 17, 33] {
                let (h, w) = [(1, 1), (1, 7), (5, 3), (9, 13), (33, 31)][(b + c + d) % 5];
                for dtype in dtypes(&dev) {
                    check_shape(&dev, [b, c, d, h, w], dtype, &mut rng);
                }
            }
        }
    }
}

#[test]
fn gpu_matches_cpu_on_large_shapes() {
    let Some(dev) = device() else { return };
    let mut rng = SplitMix64::new(2);
    for shape in [
        [2, 64, 7, 128, 128],
        [1, 96, 3, 255, 257],
        [1, 20, 16, 64, 64],
    ] {
        for dtype in dtypes(&dev) {
            let x = random(&shape, dtype, &mut rng);
            let dy = random(&shape, dtype, &mut rng);
            let w = fusion::init_weights(shape[2], shape[1], 3)
                .unwrap()
                .to_dtype(dtype);
            let gpu = a3d::backend::Cuda {
                device: dev.clone(),
            };
            let tol = 2.0 * selftest::tolerance(dtype);
            let y_gpu = gpu.forward(&x, &w).unwrap().to_f64_vec();
            let y_cpu = fusion::forward(&x, &w).unwrap().to_f64_vec();
            let e = reference::relative_error(&y_gpu, &y_cpu);
            assert!(e <= tol, "forward {dtype} {shape:?}: {e:e}");
            let g_gpu = gpu.backward(&x, &w, &dy, Grads::BOTH).unwrap();
            let g_cpu = fusion::backward(&x, &w, &dy, Grads::BOTH).unwrap();
            for (name, a, b) in [
                ("dx", g_gpu.dx.unwrap(), g_cpu.dx.unwrap()),
                ("dw", g_gpu.dw.unwrap(), g_cpu.dw.unwrap()),
            ] {
                let e = reference::relative_error(&a.to_f64_vec(), &b.to_f64_vec());
                assert!(e <= tol, "{name} {dtype} {shape:?}: {e:e}");
            }
        }
    }
}

#[test]
fn gpu_grad_weight_is_bitwise_reproducible() {
    let Some(dev) = device() else { return };
    let mut rng = SplitMix64::new(3);
    for dtype in dtypes(&dev) {
        let shape = [2, 33, 7, 97, 101];
        let x = CudaTensor::upload(&random(&shape, dtype, &mut rng), &dev).unwrap();
        let dy = CudaTensor::upload(&random(&shape, dtype, &mut rng), &dev).unwrap();
        let w = CudaTensor::upload(
            &fusion::init_weights(7, 33, 1).unwrap().to_dtype(dtype),
            &dev,
        )
        .unwrap();
        let dw = || {
            fusion::cuda::backward(&x, &w, &dy, Grads::WEIGHT)
                .unwrap()
                .dw
                .unwrap()
                .download()
                .unwrap()
        };
        let first = dw();
        for _ in 0..5 {
            assert_eq!(first, dw(), "{dtype}");
        }
    }
}

#[test]
fn gpu_handles_misaligned_views() {
    // Buffers offset by one element: the kernels must take their scalar path and agree.
    let Some(dev) = device() else { return };
    let mut rng = SplitMix64::new(4);
    let shape = [2, 3, 7, 16, 16];
    let dims = FusionDims::from_input_shape(&shape).unwrap();
    let n = dims.len();
    let stream = dev.stream();
    let xs = rng.vec_f32(n + 1, -1.0, 1.0);
    let ws = fusion::init_weights(7, 3, 2).unwrap().to_f32_vec();
    let mut wpad = vec![0.0f32];
    wpad.extend_from_slice(&ws);
    let x = stream.clone_htod(&xs).unwrap();
    let w = stream.clone_htod(&wpad).unwrap();
    let mut y = stream.clone_htod(&vec![f32::NAN; n + 1]).unwrap();
    fusion::cuda::launch_forward::<f32>(
        &dev,
        &dims,
        &x.slice(1..),
        &w.slice(1..),
        &mut y.slice_mut(1..),
    )
    .unwrap();
    let got: Vec<f64> = stream.clone_dtoh(&y).unwrap()[1..]
        .iter()
        .map(|&v| v as f64)
        .collect();
    let xf: Vec<f64> = xs[1..].iter().map(|&v| v as f64).collect();
    let wf: Vec<f64> = ws.iter().map(|&v| v as f64).collect();
    let e = reference::relative_error(&got, &reference::forward(&dims, &xf, &wf));
    assert!(e <= 1e-5, "misaligned forward: {e:e}");
}

#[test]
fn gpu_errors_are_typed() {
    let Some(dev) = device() else { return };
    let x = CudaTensor::zeros(&[1, 2, 3, 4, 5], DType::F32, &dev).unwrap();
    let w_bad = CudaTensor::zeros(&[3, 3, 3], DType::F32, &dev).unwrap();
    assert!(matches!(
        fusion::cuda::forward(&x, &w_bad),
        Err(Error::Shape { arg: "w", .. })
    ));
    let w16 = CudaTensor::zeros(&[3, 3, 2], DType::F16, &dev).unwrap();
    assert!(matches!(
        fusion::cuda::forward(&x, &w16),
        Err(Error::DTypeMismatch { arg: "w", .. })
    ));
    assert!(matches!(
        CudaDevice::open(1 << 20),
        Err(Error::Unavailable(_))
    ));
    let empty = CudaTensor::zeros(&[1, 2, 3, 0, 5], DType::F32, &dev).unwrap();
    let w = CudaTensor::zeros(&[3, 3, 2], DType::F32, &dev).unwrap();
    let mut dw = CudaTensor::full(&[3, 3, 2], f32::NAN, DType::F32, &dev).unwrap();
    fusion::cuda::backward_into(&empty, &w, &empty, None, Some(&mut dw)).unwrap();
    assert!(dw
        .download()
        .unwrap()
        .to_f32_vec()
        .iter()
        .all(|&v| v == 0.0));
}

/// Small launches of every kernel family (each dtype; specialised and general depths), sized
/// for compute-sanitizer racecheck/memcheck.
#[test]
fn sanitizer_every_kernel_small() {
    let Some(dev) = device() else { return };
    let mut rng = SplitMix64::new(5);
    for shape in [[2, 3, 3, 5, 7], [1, 2, 16, 4, 8], [1, 2, 17, 3, 5]] {
        for dtype in dtypes(&dev) {
            check_shape(&dev, shape, dtype, &mut rng);
        }
    }
}
