//! Helpers for differential tests against the kernel's overlayfs (feature
//! `test-support`; nothing of the filesystem itself uses them).
//!
//! A differential test mounts the same layers twice — kernel overlayfs over
//! plain lower directories, and strata — runs one script of operations on
//! both, and requires the same result (errno) of every operation, the same
//! resulting trees and the same `docker diff` change lists. The pieces:
//!
//! - [`overlay`]: layers as overlayfs lower directories, made from layer
//!   index entries or from OCI layer tars extracted with GNU tar; the
//!   whiteout and opaque conventions for root (`trusted.overlay.*`) and for
//!   user namespaces (`user.overlay.*`, mount option `userxattr`); mounts.
//! - [`tree`]: a mounted tree as path -> description, and the differences.
//! - [`ops`]: file operations whose results compare across filesystems, and
//!   running a script on two mounts.
//! - [`changes`]: the change list of an overlayfs upper directory, by the
//!   rules strata's [`crate::changes`] follows.
//! - [`userns`]: running a test body again as an unprivileged user who is
//!   root in a user namespace of its own.
//! - [`random`]: seeded random steps over the differential layers' paths.
//!
//! Setup failures panic with a message: this is test code.

pub mod changes;
pub mod ops;
pub mod overlay;
pub mod random;
pub mod tree;
pub mod userns;

use std::fmt::Display;

/// Unwraps `r` or panics naming what failed.
fn ok<T, E: Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{}: {e}", what()),
    }
}
