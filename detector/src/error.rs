//! The detector's error type.

use std::path::PathBuf;

/// Result alias of a3d-detector.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A checkpoint does not fit the model: missing, unexpected or mis-shaped tensors, each
    /// named.
    #[error("{}: {problem}", path.display())]
    Weights {
        /// The checkpoint.
        path: PathBuf,
        /// What does not fit.
        problem: String,
    },
    /// The configuration is not one the detector can build.
    #[error("detector configuration: {0}")]
    Config(String),
    /// An input has the wrong shape or content.
    #[error("`{arg}`: {problem}")]
    Argument {
        /// The argument.
        arg: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
