//! The one error type of a3d-ct: every failure names the file (or argument) and the problem.

use std::path::PathBuf;

/// Result alias of a3d-ct.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are not what the format (or a3d) accepts.
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A row of a table is malformed.
    #[error("{}, row {row}, column `{column}`: {problem}", path.display())]
    Row {
        /// The table file.
        path: PathBuf,
        /// 1-based data row (the header is row 0).
        row: usize,
        /// Column name.
        column: String,
        /// What is wrong with the cell.
        problem: String,
    },
    /// A size from a header exceeds the configured [`crate::Limits`].
    #[error("{}: {what} of {got} exceeds the limit of {limit}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What was counted.
        what: &'static str,
        /// The header's value.
        got: u64,
        /// The limit.
        limit: u64,
    },
    /// A DICOM folder holds several CT series and none was chosen.
    #[error("{}: {} CT series; choose one (`--series UID`): {}", path.display(), series.len(), series.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; "))]
    SeveralSeries {
        /// The folder.
        path: PathBuf,
        /// Its series.
        series: Vec<crate::dicom::SeriesSummary>,
    },
    /// An argument is outside what the function accepts.
    #[error("`{arg}`: {problem}")]
    Argument {
        /// Argument name.
        arg: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl Error {
    pub(crate) fn invalid(path: impl Into<PathBuf>, problem: impl Into<String>) -> Error {
        Error::Invalid {
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
