//! A container's log: what `--log-driver` and `--log-opt` ask for, and its
//! rotation.
//!
//! The log is one JSON record per piece of output (`stream`, `time`, `log`,
//! Docker's json-file shape) in the container's `ctr.log`. With
//! `max-size`, the supervisor rotates it when a record takes it past the
//! size: `ctr.log` becomes `ctr.log.1`, `.1` becomes `.2` and
//! so on, and the oldest beyond `max-file` files in all goes; `logs` reads
//! the rotated files oldest first, and a follower moves on to the new file.
//! `none` keeps no log (and `logs` says so, as Docker does).

use crate::commands::run::CreateArgs;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The log policy of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPolicy {
    /// False for `--log-driver none`.
    pub keep: bool,
    /// Rotate past this many bytes.
    pub max_size: Option<u64>,
    /// Files kept in all, the current one included (Docker's default: 1).
    pub max_file: usize,
}

impl LogPolicy {
    /// From `--log-driver` and `--log-opt`, with Docker's checks.
    pub fn of(req: &CreateArgs) -> Result<LogPolicy> {
        let keep = match req.log_driver.as_deref() {
            None | Some("json-file" | "local" | "k8s-file") => true,
            Some("none") => false,
            Some(other) => bail!(
                "logging driver {other:?} is not supported: strata keeps its own log (json-file, local or k8s-file) or none"
            ),
        };
        let mut policy = LogPolicy { keep, max_size: None, max_file: 1 };
        for opt in &req.log_opt {
            let Some((key, value)) = opt.split_once('=') else { bail!("invalid log opt {opt:?}: expected KEY=VALUE") };
            match key {
                "max-size" => {
                    let size = crate::containers::spec::parse_bytes(value)
                        .map_err(|_| anyhow::anyhow!("invalid log opt max-size={value}: give a size such as 10m"))?;
                    if size == 0 {
                        bail!("invalid log opt max-size={value}: must be more than 0");
                    }
                    policy.max_size = Some(size);
                }
                "max-file" => {
                    policy.max_file = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| anyhow::anyhow!("invalid log opt max-file={value}: must be 1 or more"))?;
                }
                _ if !keep => bail!("log opt {key:?} is not valid with the none logging driver"),
                // Docker's json-file options that change nothing in strata's log.
                "compress" | "labels" | "env" | "env-regex" | "tag" | "mode" | "max-buffer-size" => {}
                other => bail!("unknown log opt '{other}' (strata knows max-size and max-file)"),
            }
        }
        if policy.max_file > 1 && policy.max_size.is_none() {
            bail!("max-file cannot be set without max-size");
        }
        Ok(policy)
    }
}

/// The `n`th rotated file of the log at `path` (`n` >= 1).
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// Rotates the log at `path`: `.{max_file-1}` is dropped, each older one
/// moves up by one, and the current file becomes `.1` (with `max_file` 1
/// the current one is simply emptied by the caller reopening it truncated).
pub fn rotate(path: &Path, max_file: usize) -> std::io::Result<()> {
    if max_file <= 1 {
        return std::fs::remove_file(path).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        });
    }
    let _ = std::fs::remove_file(rotated(path, max_file - 1));
    for n in (1..max_file - 1).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

/// The log's files, oldest first: the rotated ones, then the current one.
pub fn files_oldest_first(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..).map(|n| rotated(path, n)).take_while(|p| p.exists()).collect();
    out.reverse();
    out.push(path.to_path_buf());
    out
}
