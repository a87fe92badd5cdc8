//! Argument checks every op shares: shape and dtype comparisons, and [`TensorInfo`], the view of
//! a tensor (host, device or a framework's) that validation looks at.

use crate::{DType, Error, Result, Tensor};

/// Shape and dtype of a tensor, host or device: what argument validation looks at. Implement
/// it for a tensor type of your own to validate arguments (e.g. [`a3dconv::check_forward`])
/// before allocating anything.
///
/// [`a3dconv::check_forward`]: crate::a3dconv::check_forward
pub trait TensorInfo {
    /// The dimensions.
    fn shape(&self) -> &[usize];
    /// The storage dtype.
    fn dtype(&self) -> DType;
}

/// A shape and dtype without the data: the argument checks of buffers held elsewhere (candle's
/// host or device storage).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShapeInfo<'a> {
    pub(crate) shape: &'a [usize],
    pub(crate) dtype: DType,
}

impl TensorInfo for ShapeInfo<'_> {
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

impl TensorInfo for Tensor {
    fn shape(&self) -> &[usize] {
        Tensor::shape(self)
    }
    fn dtype(&self) -> DType {
        Tensor::dtype(self)
    }
}

/// `Error::Shape` unless `got == expected`.
pub(crate) fn check_shape(arg: &'static str, expected: &[usize], got: &[usize]) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Shape {
            arg,
            expected: expected.to_vec(),
            got: got.to_vec(),
        })
    }
}

/// `Error::DTypeMismatch` unless `got == expected`.
pub(crate) fn check_dtype(arg: &'static str, expected: DType, got: DType) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::DTypeMismatch { arg, expected, got })
    }
}

/// `Error::Rank` unless `shape` has `expected` dimensions.
pub(crate) fn check_rank(
    arg: &'static str,
    expected: usize,
    layout: &'static str,
    shape: &[usize],
) -> Result<()> {
    if shape.len() == expected {
        Ok(())
    } else {
        Err(Error::Rank {
            arg,
            expected,
            layout,
            got: shape.to_vec(),
        })
    }
}

/// A zeroed f32 buffer of `len` elements for a result of `shape`, or `Error::OutOfMemory`
/// instead of an abort: every buffer sized from user input goes through here.
pub(crate) fn zeroed_f32(len: usize, shape: &[usize]) -> Result<Vec<f32>> {
    crate::tensor::try_zeroed_vec(len).ok_or_else(|| Error::OutOfMemory {
        shape: shape.to_vec(),
        bytes: len.saturating_mul(4),
    })
}

/// One kernel launch, described once and run by both the CUDA backend and the host emulation:
/// the module (`kernels/<module>.cu`), the kernel, the grid, the block and the dynamic shared
/// memory. The arguments are passed in the kernel's parameter order by each op's launcher.
#[cfg_attr(not(any(feature = "cuda", feature = "emulation")), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelLaunch {
    pub module: &'static str,
    pub name: String,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_mem_bytes: u32,
}

/// The CUDA limit on `gridDim.y` and `gridDim.z`.
#[cfg_attr(not(any(feature = "cuda", feature = "emulation")), allow(dead_code))]
pub(crate) const MAX_GRID_YZ: u64 = 65535;

/// A bare shape and dtype (what a launcher knows about a device buffer).
impl TensorInfo for (&[usize], DType) {
    fn shape(&self) -> &[usize] {
        self.0
    }
    fn dtype(&self) -> DType {
        self.1
    }
}
