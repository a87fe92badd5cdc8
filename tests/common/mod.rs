//! What the op tests share: the backends present in this build (the CPU, the host emulation of
//! the CUDA kernels in several pretend-device settings, and a real GPU when one is there), and
//! random tensors.
#![allow(dead_code)]

use a3d::backend::{
    BatchNormBackend, BoxBackend, Cpu, DepthConvBackend, FusionBackend, RoiAlignBackend,
    ShiftBackend,
};
use a3d::rng::SplitMix64;
use a3d::{DType, Tensor};
use safetensors::{Dtype, SafeTensors};

/// The emulation settings every op is tested under: a small GPU, the scalar (misaligned) path
/// with blocks looping over channels or rows, a large GPU with the threads of each block run
/// last-first (exposes missing barriers).
#[cfg(feature = "emulation")]
pub fn emulations() -> Vec<a3d::backend::Emulated> {
    use a3d::backend::Emulated;
    vec![
        Emulated::default(),
        Emulated {
            sm_count: 3,
            misaligned: true,
            reverse_threads: false,
            max_grid_y: 2,
        },
        Emulated {
            sm_count: 132,
            misaligned: false,
            reverse_threads: true,
            max_grid_y: 65535,
        },
        // One block per grid row: every block loops over all channels (rows).
        Emulated {
            sm_count: 1,
            misaligned: false,
            reverse_threads: true,
            max_grid_y: 1,
        },
    ]
}

#[cfg(feature = "cuda")]
fn gpu() -> Option<a3d::backend::Cuda> {
    match a3d::cuda::CudaDevice::open(0) {
        Ok(device) => Some(a3d::backend::Cuda { device }),
        Err(e) => {
            eprintln!("skipped cuda: {e}");
            None
        }
    }
}

/// Every backend of this build implementing `$trait`: the CPU, the emulations, a GPU.
macro_rules! backends_of {
    ($trait:ident) => {{
        // Extended only in builds with the emulation or CUDA.
        #[allow(unused_mut)]
        let mut out: Vec<Box<dyn $trait>> = vec![Box::new(Cpu)];
        #[cfg(feature = "emulation")]
        out.extend(
            emulations()
                .into_iter()
                .map(|e| Box::new(e) as Box<dyn $trait>),
        );
        #[cfg(feature = "cuda")]
        out.extend(gpu().map(|g| Box::new(g) as Box<dyn $trait>));
        out
    }};
}

/// Every fusion backend of this build.
pub fn fusion_backends() -> Vec<Box<dyn FusionBackend>> {
    backends_of!(FusionBackend)
}

/// Every shift backend of this build.
pub fn shift_backends() -> Vec<Box<dyn ShiftBackend>> {
    backends_of!(ShiftBackend)
}

/// Every depth-convolution backend of this build.
pub fn depthconv_backends() -> Vec<Box<dyn DepthConvBackend>> {
    backends_of!(DepthConvBackend)
}

/// Every IoU / NMS backend of this build.
pub fn box_backends() -> Vec<Box<dyn BoxBackend>> {
    backends_of!(BoxBackend)
}

/// Every RoIAlign backend of this build.
pub fn roi_align_backends() -> Vec<Box<dyn RoiAlignBackend>> {
    backends_of!(RoiAlignBackend)
}

/// Every batch-norm backend of this build.
pub fn batchnorm_backends() -> Vec<Box<dyn BatchNormBackend>> {
    backends_of!(BatchNormBackend)
}

/// Whether a backend name is the CPU (which takes any size, where kernels have limits).
pub fn is_cpu(name: &str) -> bool {
    name == "cpu"
}

/// U(-1, 1) values of `shape` stored as `dtype`.
pub fn random(shape: &[usize], dtype: DType, rng: &mut SplitMix64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(&rng.vec_f32(n, -1.0, 1.0), shape, dtype).unwrap()
}

/// Relative norm error `|got - want| / |want|` (absolute when `want` is zero); infinite on NaN.
pub fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    a3d::fusion::reference::relative_error(got, want)
}

/// Error bound by dtype against float64 (shared/docs/operator.md).
pub fn tolerance(dtype: DType) -> f64 {
    a3d::selftest::tolerance(dtype)
}

/// A committed fixture file, `tests/fixtures/<name>.safetensors`, written by a dev script.
pub struct Fixtures {
    bytes: Vec<u8>,
}

impl Fixtures {
    /// The committed fixture file: at the build's source path, else (a test binary carried to
    /// another machine, e.g. by scripts/gpu-check.sh) relative to the working directory.
    pub fn load(name: &str) -> Fixtures {
        let rel = format!("tests/fixtures/{name}.safetensors");
        let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel);
        let path = if built.is_file() { built } else { rel.into() };
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Fixtures { bytes }
    }

    fn file(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("a safetensors file")
    }

    pub fn meta(&self, key: &str) -> String {
        let (_, header) = SafeTensors::read_metadata(&self.bytes).expect("header");
        header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(key))
            .unwrap_or_else(|| panic!("metadata {key}"))
            .clone()
    }

    /// A tensor's values as f64 and its shape (f32 or f64 in the file).
    pub fn values(&self, name: &str) -> (Vec<f64>, Vec<usize>) {
        let file = self.file();
        let t = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data = t.data();
        let values = match t.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)
                .collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        (values, t.shape().to_vec())
    }

    /// An f32 input tensor stored as `dtype` (exact for f32).
    pub fn tensor(&self, name: &str, dtype: DType) -> Tensor {
        let (v, shape) = self.values(name);
        let v: Vec<f32> = v.iter().map(|&a| a as f32).collect();
        Tensor::from_f32(&v, &shape, dtype).expect("tensor")
    }
}
