//! Exclusive advisory locks on small lock files in the store, released when
//! the returned guard is dropped (the kernel drops them with the fd, also
//! when the process dies).

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::path::Path;

/// A held exclusive lock on one lock file.
pub struct LockGuard {
    _file: File,
}

/// Blocks until `path` (created if missing) is locked exclusively.
pub fn lock_exclusive(path: &Path) -> Result<LockGuard> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock().with_context(|| format!("locking {}", path.display()))?;
    Ok(LockGuard { _file: file })
}
