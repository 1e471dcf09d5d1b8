//! The runner's error type. `exit_code` maps each error to Docker's convention: 126 when the
//! command cannot be executed, 127 when it is not found, 125 for everything else.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The command could not be started: `code` is 126 (not executable) or 127 (not found).
    #[error("{message}")]
    Exec { code: i32, message: String },
    /// Setting up the container process failed (mounts, pivot_root, credentials ...).
    #[error("container setup failed: {0}")]
    Setup(String),
    #[error("{context}: {cause}")]
    Io { context: String, cause: io::Error },
    /// The spec asks for something impossible or malformed.
    #[error("{0}")]
    Invalid(String),
    #[error("user namespace mapping: {0}")]
    IdMap(String),
    #[error("cgroups: {0}")]
    Cgroup(String),
    #[error("network: {0}")]
    Network(String),
    /// A user or group from `--user` does not exist in the image.
    #[error("{0}")]
    User(String),
}

impl RunnerError {
    pub(crate) fn io(context: impl Into<String>, cause: io::Error) -> RunnerError {
        RunnerError::Io { context: context.into(), cause }
    }

    /// Docker's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunnerError::Exec { code, .. } => *code,
            _ => 125,
        }
    }
}
