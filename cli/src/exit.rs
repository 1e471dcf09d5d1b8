//! Exit statuses as Docker uses them, and the one place errors are printed.

/// strata itself failed (bad flag, missing image, store error).
pub const STRATA_ERROR: i32 = 125;
/// The container command was found but could not be executed.
pub const CANNOT_EXECUTE: i32 = 126;
// 127 (command not found) comes from the runner's own error codes.

/// An error that carries the exit status to use, for the cases where it is
/// not [`STRATA_ERROR`] (e.g. 126/127 from a container start).
#[derive(Debug)]
pub struct ExitStatus {
    pub code: i32,
    pub message: Option<String>,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(f, "exit status {}", self.code),
        }
    }
}

impl std::error::Error for ExitStatus {}

/// Returns an error that makes strata exit with `code` (printing `message` if any).
pub fn with_code(code: i32, message: Option<String>) -> anyhow::Error {
    anyhow::Error::new(ExitStatus { code, message })
}

/// Prints an error the way Docker does (`Error: ...` with its causes) and
/// returns the process exit status. `Ok(code)` is a command's own status
/// (e.g. a container's exit code).
pub fn report(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(s) = e.downcast_ref::<ExitStatus>() {
                if let Some(m) = &s.message {
                    eprintln!("Error: {m}");
                }
                return s.code;
            }
            eprintln!("Error: {e:#}");
            STRATA_ERROR
        }
    }
}
