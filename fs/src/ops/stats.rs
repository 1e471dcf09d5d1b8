//! Request statistics (`STRATA_FS_STATS=FILE`): how many requests of each
//! kind a mount answered and the server time they took, written at unmount.

use super::*;

/// Request kinds counted by [`Stats`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
    Lseek,
}

const OP_COUNT: usize = Op::Lseek as usize + 1;
const OP_NAMES: [&str; OP_COUNT] = [
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
    "fallocate",
    "lseek",
];

/// Requests served and server time spent per kind, written to the file named
/// by `STRATA_FS_STATS` when the filesystem is unmounted: the numbers the
/// performance notes in `lib.rs` were taken with.
pub(crate) struct Stats {
    path: std::path::PathBuf,
    counts: [AtomicU64; OP_COUNT],
    nanos: [AtomicU64; OP_COUNT],
}

/// Adds one request's time to [`Stats`] when dropped.
pub(crate) struct OpTimer<'a> {
    stats: &'a Stats,
    op: Op,
    start: std::time::Instant,
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        let i = self.op as usize;
        self.stats.counts[i].fetch_add(1, Ordering::Relaxed);
        self.stats.nanos[i].fetch_add(self.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Stats {
    /// Times one request until the returned guard is dropped.
    pub(super) fn time(&self, op: Op) -> OpTimer<'_> {
        OpTimer { stats: self, op, start: std::time::Instant::now() }
    }

    pub(super) fn from_env() -> Option<Stats> {
        let path = std::env::var_os("STRATA_FS_STATS").filter(|p| !p.is_empty())?;
        Some(Stats {
            path: path.into(),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            nanos: std::array::from_fn(|_| AtomicU64::new(0)),
        })
    }

    pub(super) fn write(&self) {
        let mut out = String::from("op count server_ms\n");
        for ((name, count), nanos) in OP_NAMES.iter().zip(&self.counts).zip(&self.nanos) {
            let n = count.load(Ordering::Relaxed);
            if n > 0 {
                let ms = nanos.load(Ordering::Relaxed) as f64 / 1e6;
                out += &format!("{name} {n} {ms:.1}\n");
            }
        }
        // Diagnostics only: a file that cannot be written is no reason to fail.
        let _ = std::fs::write(&self.path, out);
    }
}
