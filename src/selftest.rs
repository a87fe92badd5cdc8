//! Self-test: runs a backend on fresh random odd-sized inputs and measures every result against
//! the float64 reference. `a3d selftest` prints these checks; a user runs it to trust an install.

#[cfg(feature = "emulation")]
pub use crate::fusion::emulated::Emulated;
use crate::fusion::{self, reference, FusionDims, Gradients, Grads};
use crate::rng::SplitMix64;
use crate::{DType, Result, Tensor};

/// A place fusion can run: the CPU here, CUDA and host emulation where built.
pub trait FusionBackend {
    /// Short name printed in reports (`cpu`, `cuda:0`, `emulated`).
    fn name(&self) -> String;
    /// `y = fuse(x, w)`.
    fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor>;
    /// The requested gradients.
    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor, grads: Grads) -> Result<Gradients>;
}

/// The CPU path. Outputs are filled with NaN before the kernels run, so an element a kernel
/// forgets to write shows up as an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

impl FusionBackend for Cpu {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let mut y = Tensor::full(x.shape(), f32::NAN, x.dtype())?;
        fusion::forward_into(x, w, &mut y)?;
        Ok(y)
    }

    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor, grads: Grads) -> Result<Gradients> {
        let poisoned = |shape: &[usize], wanted: bool| -> Result<Option<Tensor>> {
            wanted
                .then(|| Tensor::full(shape, f32::NAN, x.dtype()))
                .transpose()
        };
        let mut dx = poisoned(x.shape(), grads.input)?;
        let dw_shape = [x.shape()[2], x.shape()[2], x.shape()[1]];
        let mut dw = poisoned(&dw_shape, grads.weight)?;
        fusion::backward_into(x, w, dy, dx.as_mut(), dw.as_mut())?;
        Ok(Gradients { dx, dw })
    }
}

/// Error bound for a dtype, by relative norm against float64 (shared/docs/operator.md).
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
    }
}

/// One measured comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Backend name.
    pub backend: String,
    /// `forward`, `grad_input` or `grad_weight`.
    pub pass: &'static str,
    /// Storage dtype.
    pub dtype: DType,
    /// `[B, C, D, H, W]`.
    pub shape: [usize; 5],
    /// Relative norm error against float64 (infinite on NaN or on a failed call).
    pub error: f64,
    /// Allowed error.
    pub tolerance: f64,
    /// The backend's error message when the call itself failed.
    pub failure: Option<String>,
}

impl Check {
    /// Whether the result is within tolerance.
    pub fn passed(&self) -> bool {
        self.failure.is_none() && self.error <= self.tolerance
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [b, c, d, h, w] = self.shape;
        write!(
            f,
            "{:<4} {:<8} fusion {:<11} {:<4} [{b},{c},{d},{h},{w}]  error {:.2e}  tolerance {:.1e}",
            if self.passed() { "ok" } else { "FAIL" },
            self.backend,
            self.pass,
            self.dtype,
            self.error,
            self.tolerance
        )?;
        if let Some(msg) = &self.failure {
            write!(f, "  ({msg})")?;
        }
        Ok(())
    }
}

/// Shapes the self-test draws its sizes around: odd sizes, every specialised depth class, a
/// general depth, and a plane larger than one CPU work item.
pub const SHAPES: [[usize; 5]; 7] = [
    [1, 1, 1, 1, 1],
    [2, 3, 3, 5, 7],
    [1, 5, 7, 9, 11],
    [3, 2, 2, 1, 13],
    [1, 3, 16, 4, 9],
    [2, 2, 17, 3, 5],
    [1, 2, 3, 91, 97],
];

/// Runs forward, grad-input and grad-weight for every dtype and every shape of [`SHAPES`]
/// (with H and W perturbed by the seed so every run sees fresh sizes).
pub fn run_fusion(backend: &dyn FusionBackend, seed: u64) -> Vec<Check> {
    let mut rng = SplitMix64::new(seed);
    let mut checks = Vec::new();
    for base in SHAPES {
        let mut shape = base;
        // Keep H, W odd and close to the listed sizes.
        shape[3] += 2 * rng.below(2) as usize;
        shape[4] += 2 * rng.below(2) as usize;
        for dtype in DType::ALL {
            checks.extend(check_shape(backend, shape, dtype, &mut rng));
        }
    }
    checks
}

fn check_shape(
    backend: &dyn FusionBackend,
    shape: [usize; 5],
    dtype: DType,
    rng: &mut SplitMix64,
) -> Vec<Check> {
    let check = |pass: &'static str, result: Result<Vec<f64>>, want: &[f64]| {
        let (error, failure) = match result {
            Ok(got) => (reference::relative_error(&got, want), None),
            Err(e) => (f64::INFINITY, Some(e.to_string())),
        };
        Check {
            backend: backend.name(),
            pass,
            dtype,
            shape,
            error,
            tolerance: tolerance(dtype),
            failure,
        }
    };
    let inputs = (|| -> Result<(FusionDims, Tensor, Tensor, Tensor)> {
        let dims = FusionDims::from_input_shape(&shape)?;
        let x = Tensor::from_f32(&rng.vec_f32(dims.len(), -1.0, 1.0), &shape, dtype)?;
        let w = fusion::init_weights(shape[2], shape[1], rng.next_u64())?.to_dtype(dtype);
        let dy = Tensor::from_f32(&rng.vec_f32(dims.len(), -1.0, 1.0), &shape, dtype)?;
        Ok((dims, x, w, dy))
    })();
    let (dims, x, w, dy) = match inputs {
        Ok(v) => v,
        Err(e) => return vec![check("setup", Err(e), &[])],
    };
    // The reference sees exactly the rounded values the backend sees.
    let (xf, wf, dyf) = (x.to_f64_vec(), w.to_f64_vec(), dy.to_f64_vec());
    let y = backend.forward(&x, &w).map(|t| t.to_f64_vec());
    let grads = backend.backward(&x, &w, &dy, Grads::BOTH);
    let (dx, dw) = match grads {
        Ok(Gradients {
            dx: Some(dx),
            dw: Some(dw),
        }) => (Ok(dx.to_f64_vec()), Ok(dw.to_f64_vec())),
        Ok(_) => {
            let missing = || crate::Error::Backend {
                backend: "selftest",
                message: "backward returned no gradient".into(),
            };
            (Err(missing()), Err(missing()))
        }
        Err(e) => (Err(e.clone()), Err(e)),
    };
    vec![
        check("forward", y, &reference::forward(&dims, &xf, &wf)),
        check("grad_input", dx, &reference::grad_input(&dims, &wf, &dyf)),
        check("grad_weight", dw, &reference::grad_weight(&dims, &xf, &dyf)),
    ]
}

/// The CUDA kernels on a GPU (feature `cuda`). Outputs are NaN-poisoned before each launch.
#[cfg(feature = "cuda")]
#[derive(Debug, Clone)]
pub struct Cuda {
    /// The device to run on.
    pub device: crate::cuda::CudaDevice,
}

#[cfg(feature = "cuda")]
impl FusionBackend for Cuda {
    fn name(&self) -> String {
        format!("cuda:{}", self.device.ordinal())
    }

    fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        use crate::cuda::CudaTensor;
        let dev = &self.device;
        let (xd, wd) = (CudaTensor::upload(x, dev)?, CudaTensor::upload(w, dev)?);
        let mut y = CudaTensor::full(x.shape(), f32::NAN, x.dtype(), dev)?;
        fusion::cuda::forward_into(&xd, &wd, &mut y)?;
        y.download()
    }

    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor, grads: Grads) -> Result<Gradients> {
        use crate::cuda::CudaTensor;
        let dev = &self.device;
        let (xd, wd, dyd) = (
            CudaTensor::upload(x, dev)?,
            CudaTensor::upload(w, dev)?,
            CudaTensor::upload(dy, dev)?,
        );
        let dims = FusionDims::from_input_shape(x.shape())?;
        let poisoned = |wanted: bool, shape: &[usize]| {
            wanted
                .then(|| CudaTensor::full(shape, f32::NAN, x.dtype(), dev))
                .transpose()
        };
        let mut dx = poisoned(grads.input, x.shape())?;
        let mut dw = poisoned(grads.weight, &dims.weight_shape())?;
        fusion::cuda::backward_into(&xd, &wd, &dyd, dx.as_mut(), dw.as_mut())?;
        Ok(Gradients {
            dx: dx.map(|t| t.download()).transpose()?,
            dw: dw.map(|t| t.download()).transpose()?,
        })
    }
}
