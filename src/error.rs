//! Error types. Every error that comes from an input names the file, the row
//! or the parameter it is about, so a user sees one clear line.

use std::path::{Path, PathBuf};

#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// A problem with a whole file (missing, unreadable, malformed).
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// A problem with one row or record of a file.
    #[error("{path}: {location}: {msg}")]
    Record { path: PathBuf, location: String, msg: String },
    /// A configuration parameter that is unknown or has a bad value.
    #[error("parameter `{name}`: {msg}")]
    Param { name: String, msg: String },
    /// Anything else, already phrased for the user.
    #[error("{0}")]
    Msg(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Error {
        Error::File { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }

    pub fn record(path: impl AsRef<Path>, location: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::Record { path: path.as_ref().to_path_buf(), location: location.into(), msg: msg.into() }
    }

    pub fn param(name: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::Param { name: name.into(), msg: msg.into() }
    }

    pub fn msg(msg: impl Into<String>) -> Error {
        Error::Msg(msg.into())
    }
}

/// Attach a file path to an I/O error.
pub fn io_err(path: impl AsRef<Path>, e: std::io::Error) -> Error {
    Error::file(path, e.to_string())
}
