//! Exit statuses as Docker uses them, and the one place errors are printed.

/// A command failed: the Docker CLI's status for any error that carries no
/// status of its own (`pull`, `images`, `tag`, `rmi`, `inspect`, `login`, ...).
pub const COMMAND_FAILED: i32 = 1;
/// strata itself failed before a container could run: Docker's status for
/// errors of `run`, `create` and `start`, and for usage errors.
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

/// `e`, made to exit with `code` unless it already carries a status. What is
/// printed does not change.
pub fn or_code(e: anyhow::Error, code: i32) -> anyhow::Error {
    if e.downcast_ref::<ExitStatus>().is_some() {
        return e;
    }
    with_code(code, Some(format!("{e:#}")))
}

/// Prints an error the way Docker does (`Error: ...` with its causes) and
/// returns the process exit status: `Ok(code)` is a command's own status
/// (e.g. a container's exit code), an error without one is [`STRATA_ERROR`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn or_code_sets_a_status_only_where_there_is_none() {
        let e = or_code(with_code(CANNOT_EXECUTE, None), COMMAND_FAILED);
        assert_eq!(e.downcast_ref::<ExitStatus>().map(|s| s.code), Some(CANNOT_EXECUTE));
        let e = or_code(anyhow::anyhow!("inner").context("outer"), COMMAND_FAILED);
        let s = e.downcast_ref::<ExitStatus>().expect("a status");
        assert_eq!((s.code, s.message.as_deref()), (COMMAND_FAILED, Some("outer: inner")));
    }
}
