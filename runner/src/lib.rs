//! strata's container runner: runs a process in a root filesystem under new Linux namespaces,
//! like runc/crun, as root or as an ordinary user.
//!
//! - [`spawn`] starts a container from a [`Spec`] (namespaces, id maps, mounts, pivot_root,
//!   masked paths, capabilities, seccomp, rlimits, cgroups, network, pty) and returns a
//!   [`Container`] whose init is a child of the caller. Namespaces may be another container's
//!   (network, pid), and a second interface may join a bridge ([`attach_bridge`]).
//! - [`seccomp`]: syscall filter profiles, Docker's default and Docker's JSON format.
//! - [`spawn_with_fuse_rootfs`] does the same with the rootfs a FUSE filesystem that the
//!   container process mounts inside its own (user) namespace and the caller serves.
//! - [`exec`] runs another process inside a running container (setns through its pidfd).
//! - [`resolve_user`] turns Docker's `--user` syntax into ids using the image's /etc/passwd and
//!   /etc/group, read safely inside the rootfs.
//! - [`rootless_mapping`] picks the id mapping for an ordinary user from /etc/subuid.
//!
//! The caller may be multi-threaded; see `spawn`'s module docs for the process layout and what
//! that implies (the container is the caller's child and must be reaped).
//!
//! Errors carry Docker's exit-code convention ([`RunnerError::exit_code`]): 127 for a command
//! that is not found, 126 for one that cannot be executed, 125 for everything else.

mod caps;
mod cgroup;
mod cgroup_view;
mod child;
mod error;
mod exec;
mod idmap;
mod mounts;
mod network;
pub mod seccomp;
mod spawn;
pub mod spec;
mod sys;
mod user;

pub use caps::{Cap, DEFAULT_CAPS};
pub use cgroup::{
    parse_id_list, remove_leftover as remove_leftover_cgroup, supports_io_weight, unified_hierarchy,
    validate as validate_limits, Cgroup, Usage as CgroupUsage,
};
pub use error::RunnerError;
pub use exec::exec;
pub use idmap::{in_initial_user_namespace, rootless_mapping, ROOTLESS_RANGE};
pub use network::{attach_bridge, detach_bridge, Pasta};
pub use spawn::{spawn, spawn_with_fuse_rootfs, Container, FuseRootfs, Process, Stdio};
pub use spec::{
    CgroupLimits, CgroupSpec, EtcFiles, ExecSpec, IdMapping, IdRange, IoThrottle, IoThrottleKind, Mount, MountKind,
    Namespaces, Network, PortForward, Protocol, Rlimit, Spec, User,
};
pub use user::{resolve_groups, resolve_user, ResolvedUser};
