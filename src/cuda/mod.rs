//! CUDA backend (feature `cuda`): devices, device tensors, and the launch of the kernels in
//! `kernels/*.cu`, which build.rs compiles with nvcc into one embedded fatbin per source file.
//! Each fatbin is a module named by its file stem (`kernels/shift.cu` is module `"shift"`),
//! loaded lazily on first use by [`CudaDevice::function`]; nothing here knows an op's name.
//!
//! A binary built with this feature starts on machines without a driver or GPU: the driver
//! library is probed before cudarc touches it, and [`CudaDevice::open`] returns
//! [`Error::Unavailable`] instead of panicking.

pub(crate) mod launch;
mod tensor;

pub use launch::CudaElement;
pub use tensor::{CudaStorage, CudaTensor};

use crate::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One embedded kernel module: the fatbin of `kernels/<name>.cu` (machine code for
/// sm_75..sm_90, PTX for compute_75) and its ptxas register/spill report.
#[derive(Debug, Clone, Copy)]
pub struct KernelModule {
    /// The source's file stem (`fusion`, `shift`, ...).
    pub name: &'static str,
    /// The fatbin bytes.
    pub fatbin: &'static [u8],
    /// The ptxas report, one line per kernel and architecture.
    pub ptxas_report: &'static str,
}

/// Every module build.rs compiled, sorted by name (generated table).
pub static KERNEL_MODULES: &[KernelModule] =
    include!(concat!(env!("OUT_DIR"), "/kernel_modules.rs"));

/// The ptxas reports of all modules, one after another.
pub fn ptxas_report() -> String {
    KERNEL_MODULES
        .iter()
        .map(|m| format!("== kernels/{}.cu\n{}", m.name, m.ptxas_report))
        .collect()
}

pub(crate) fn driver_error(e: DriverError) -> Error {
    Error::Backend {
        backend: "cuda",
        message: e.to_string(),
    }
}

/// Whether the CUDA driver library can be loaded on this machine (no GPU needed to answer).
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        let names: &[&str] = if cfg!(windows) {
            &["nvcuda.dll"]
        } else {
            &["libcuda.so.1", "libcuda.so"]
        };
        names.iter().any(|name| {
            // SAFETY: loading libcuda runs its initialisers, which is exactly what cudarc does
            // on first use; the handle is dropped at once (the library stays mapped).
            unsafe { libloading::Library::new(*name) }.is_ok()
        })
    })
}

/// Number of CUDA devices, or [`Error::Unavailable`] when there is no driver.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::Unavailable(
            "no CUDA driver (libcuda) on this machine".into(),
        ));
    }
    let n = CudaContext::device_count().map_err(driver_error)?;
    Ok(n.max(0) as usize)
}

/// An opened GPU: its context, the stream a3d launches on, and the kernels loaded so far.
/// Cloning is cheap (shared).
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<DeviceInner>,
}

struct DeviceInner {
    ordinal: usize,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (i32, i32),
    sm_count: u32,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaDevice({}: {}, sm_{}{}, {} SMs)",
            self.inner.ordinal,
            self.inner.name,
            self.inner.compute_capability.0,
            self.inner.compute_capability.1,
            self.inner.sm_count
        )
    }
}

impl CudaDevice {
    /// Opens device `ordinal` with its own stream. Errors with [`Error::Unavailable`] when there
    /// is no driver or no such device.
    pub fn open(ordinal: usize) -> Result<CudaDevice> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::Unavailable(format!(
                "CUDA device {ordinal} requested, {count} present"
            )));
        }
        let context = CudaContext::new(ordinal).map_err(driver_error)?;
        let stream = context.new_stream().map_err(driver_error)?;
        Self::from_stream(stream)
    }

    /// Wraps an existing stream (e.g. another framework's), launching everything on it.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<CudaDevice> {
        use cudarc::driver::sys::CUdevice_attribute as Attr;
        let context = stream.context().clone();
        let name = context.name().map_err(driver_error)?;
        let compute_capability = context.compute_capability().map_err(driver_error)?;
        let sm_count = context
            .attribute(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_error)?
            .max(1) as u32;
        Ok(CudaDevice {
            inner: Arc::new(DeviceInner {
                ordinal: context.ordinal(),
                context,
                stream,
                name,
                compute_capability,
                sm_count,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Device ordinal.
    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// Marketing name (e.g. "NVIDIA H100 80GB HBM3").
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `(major, minor)` compute capability.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.inner.compute_capability
    }

    /// Streaming multiprocessors; grids are sized from it.
    pub fn sm_count(&self) -> u32 {
        self.inner.sm_count
    }

    /// The stream every a3d launch on this device is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.stream.synchronize().map_err(driver_error)
    }

    /// Milliseconds of GPU time taken by the work `f` queues on this device's stream, measured
    /// with CUDA events recorded around it (waits for that work to finish).
    pub fn time_ms(&self, f: impl FnOnce() -> Result<()>) -> Result<f32> {
        use cudarc::driver::sys::CUevent_flags;
        let stream = &self.inner.stream;
        let start = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_error)?;
        f()?;
        let end = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_error)?;
        start.elapsed_ms(&end).map_err(driver_error)
    }

    /// Whether bf16 kernels exist for this device (machine code for sm_80 and newer).
    pub fn supports_bf16(&self) -> bool {
        self.inner.compute_capability.0 >= 8
    }

    /// Kernel `name` of module `module` (`kernels/<module>.cu`). The module is loaded once per
    /// device on first use and functions are cached by name.
    pub(crate) fn function(&self, module: &'static str, name: &str) -> Result<CudaFunction> {
        let key = (module, name.to_owned());
        if let Some(f) = lock(&self.inner.functions).get(&key) {
            return Ok(f.clone());
        }
        let loaded = {
            let mut modules = lock(&self.inner.modules);
            match modules.get(module) {
                Some(m) => m.clone(),
                None => {
                    let image = KERNEL_MODULES
                        .iter()
                        .find(|m| m.name == module)
                        .ok_or_else(|| Error::Backend {
                            backend: "cuda",
                            message: format!("no kernel module `{module}` was built"),
                        })?;
                    let ptx = cudarc::nvrtc::Ptx::from_binary(image.fatbin.to_vec());
                    let m = self.inner.context.load_module(ptx).map_err(driver_error)?;
                    modules.insert(module, m.clone());
                    m
                }
            }
        };
        let f = loaded.load_function(name).map_err(|e| Error::Backend {
            backend: "cuda",
            message: format!("kernel `{module}::{name}` not loadable on {self:?}: {e}"),
        })?;
        lock(&self.inner.functions).insert(key, f.clone());
        Ok(f)
    }
}

/// A cache lock; a panic elsewhere cannot leave a cache half-written, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
