//! The one error type of a3d: every bad input is reported as a value naming the problem.

use crate::DType;

/// Result alias used by every fallible a3d function.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Each variant names the argument and the values that disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The product of a shape's dimensions (or its size in bytes) does not fit in `usize`.
    #[error("element count of shape {shape:?} overflows usize")]
    ElementCountOverflow {
        /// The offending shape.
        shape: Vec<usize>,
    },

    /// Memory for a tensor could not be reserved.
    #[error("cannot allocate {bytes} bytes for a tensor of shape {shape:?}")]
    OutOfMemory {
        /// Requested shape.
        shape: Vec<usize>,
        /// Bytes requested.
        bytes: usize,
    },

    /// A buffer's length does not match the shape it is said to have.
    #[error("data of length {len} does not fit shape {shape:?} ({expected} elements)")]
    DataLength {
        /// Requested shape.
        shape: Vec<usize>,
        /// Elements the shape holds.
        expected: usize,
        /// Elements supplied.
        len: usize,
    },

    /// An argument has the wrong number of dimensions.
    #[error("`{arg}` must have rank {expected} ({layout}), got shape {got:?}")]
    Rank {
        /// Argument name (`x`, `w`, `dy`, ...).
        arg: &'static str,
        /// Expected rank.
        expected: usize,
        /// Expected layout, e.g. `[B, C, D, H, W]`.
        layout: &'static str,
        /// The shape that was passed.
        got: Vec<usize>,
    },

    /// An argument's shape is inconsistent with the others.
    #[error("`{arg}` must have shape {expected:?}, got {got:?}")]
    Shape {
        /// Argument name.
        arg: &'static str,
        /// Shape implied by the other arguments.
        expected: Vec<usize>,
        /// The shape that was passed.
        got: Vec<usize>,
    },

    /// Two arguments that must share a dtype do not.
    #[error("`{arg}` has dtype {got}, expected {expected} (the dtype of `x`)")]
    DTypeMismatch {
        /// Argument name.
        arg: &'static str,
        /// The dtype of the reference argument.
        expected: DType,
        /// The dtype that was passed.
        got: DType,
    },

    /// An argument's value is outside what the operator accepts (e.g. a zero stride, or a
    /// kernel larger than the padded input).
    #[error("`{arg}`: {message}")]
    InvalidArgument {
        /// Argument name.
        arg: &'static str,
        /// What is wrong with it.
        message: String,
    },

    /// A typed view was requested with the wrong element type.
    #[error("tensor holds {actual}, requested as {requested}")]
    WrongElementType {
        /// Dtype of the tensor.
        actual: DType,
        /// Element type the caller asked for.
        requested: DType,
    },

    /// A backend (CUDA, host emulation) is not present on this machine or in this build.
    #[error("backend unavailable: {0}")]
    Unavailable(String),

    /// A backend reported a failure (driver error, kernel launch error, emulation error).
    #[error("{backend} error: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What it said.
        message: String,
    },
}
