//! Where `a3d detect` and `a3d train` run the model.

use candle_core::Device;

/// `--device` of the model commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ModelDevice {
    /// The CPU (a3d's multi-threaded kernels).
    Cpu,
    /// The first NVIDIA GPU: candle's CUDA backend with a3d's kernels (build with
    /// `--features candle-cuda`).
    Cuda,
}

impl ModelDevice {
    /// The candle device, or what stops it (no CUDA build, no GPU, no driver).
    pub(crate) fn open(self) -> Result<Device, String> {
        match self {
            ModelDevice::Cpu => Ok(Device::Cpu),
            ModelDevice::Cuda if !cfg!(feature = "candle-cuda") => Err(
                "--device cuda: this a3d was built without candle's CUDA backend (cargo build \
                 --release -p a3d-cli --features candle-cuda, on a machine with the CUDA libraries)"
                    .into(),
            ),
            ModelDevice::Cuda => {
                Device::new_cuda(0).map_err(|e| format!("--device cuda: no usable GPU 0: {e}"))
            }
        }
    }
}
