//! strata's FUSE union filesystem.
//!
//! [`mount`] stacks read-only image layers (layer indexes from the store, file
//! contents from its object directory) into one view and, given an upper
//! directory, makes it writable with copy-up, whiteouts and opaque
//! directories in OCI form. It serves from background threads of the calling
//! process until [`MountHandle::unmount`] or an external unmount.
//!
//! Modules: `source` (where layers come from), `tree` (the merged in-memory
//! tree), `upper` (host side of the writable layer and its on-disk
//! conventions), `load` (remounting an existing upper directory), `ops` (the
//! FUSE handlers: the state and its caches in `ops`, with `copy_up`,
//! `names` for creating, removing and renaming, `attrs`, `handlers` for the
//! fuser `Filesystem` impl, `stats`), `poll` (keeping the request reader and
//! idle CPUs awake while requests come densely), `cpu_use` (how many CPUs
//! other work keeps busy, which tells `poll` when to stop), `prefetch` (reading a
//! directory's small lower files ahead after a cold read), `changes`
//! (`docker diff`), `layer` (an upper directory read back as layer entries,
//! for commit and export), `walk` (depth-first walks of an upper
//! directory), `mountinfo` (whose mount is on top at a mount point),
//! `testing` (behind the `test-support` feature: the
//! differential tests against kernel overlayfs,
//! and the seeded random steps they and the tests against a plain
//! directory take, which this crate's tests and the end-to-end tests
//! share).
//!
//! What the mount reports — owners, modes, times, device numbers, xattrs — is
//! exactly what the layer indexes and the upper directory's records say, also
//! when an ordinary user mounts: FUSE reports what we answer. Permission
//! checks are the kernel's (`default_permissions`) against those values.
//!
//! Copy-ups take only what they must: chmod, chown, utimes, xattr changes
//! and renames (also of whole lower trees, and of files with several
//! names: one metacopy file under all of them) copy metadata, leaving the
//! content below as a metacopy found by digest; a truncation copies the part
//! that stays; opening for writing copies the content. Every large content
//! copy (a metacopy's filling in too, and the head a truncation keeps) is
//! made outside the tree lock and then moved into place under it: `ls -l`
//! of 10,000 entries while a 1 GiB metacopy was filled in took 1.0-1.1 s
//! with the copy under the lock, 0.45-0.55 s now (0.24-0.29 s alone; the
//! copy holds one of 2 CPUs).
//!
//! Upper trees may be nested past `PATH_MAX`, as with kernel overlayfs: no
//! host call takes a whole path from the upper root (directories are
//! opened relative to their parent, in parts where a path is long), and
//! the walks of a remount, of `docker diff` and of a commit are loops that
//! hold one directory fd at a time (`walk`).
//!
//! # Performance notes (measured)
//!
//! Numbers from this crate's request counter: `STRATA_FS_STATS=FILE` makes a
//! mount write requests served and server time per request kind to FILE when
//! it is unmounted. Kernel call sites of requests came from the
//! `fuse:fuse_request_send` tracepoint. Machine: 2 cores, upper directory on
//! tmpfs, workloads of `benches/fs.sh`.
//!
//! - Round trips, not server work, are what is left: on the 2-vCPU VM
//!   measured, a round trip whose two threads sleep on different CPUs costs
//!   ~57 µs (each wake-up is an inter-processor interrupt to a halted vCPU),
//!   ~6 µs when the server side polls. `poll` polls while requests come:
//!   extract 9.4-11.4 s to 3.9-4.7 s (kernel overlayfs 0.5 s; with the
//!   guest's halt polling switched on, `haltpoll.guest_halt_poll_ns`, it
//!   was 2.1 s, so much of the rest was that machine's wake-up cost). As
//!   root it now also holds idle CPUs polling meanwhile (a 0 µs PM QoS CPU
//!   latency request), which takes the caller's wake-up off as well:
//!   1.7-2.1 s.
//! - FUSE_HANDLE_KILLPRIV_V2 (writable mounts): without it the kernel asks
//!   for `security.capability` before every write(2), even one passed
//!   through, and refreshes the mode before every chown: 50,000 4 KiB
//!   writes took 0.60 s (kernel overlayfs 0.27 s), now 0.16 s. The server
//!   clears set-id bits itself (chown; truncation and O_TRUNC by a non-root
//!   caller, or by any caller when the server runs in a user namespace of
//!   its own, as fuser does not pass the kernel's CAP_FSETID flag for those;
//!   writes the kernel flags), and keeps writes to set-id or capability
//!   files off passthrough so that they reach it. Not covered: a file made
//!   set-id while a writer already holds it open with passthrough keeps its
//!   bits on that writer's later writes.
//! - Read-only mounts answer OPENDIR with ENOSYS, so the kernel opens
//!   directories by itself and sends no RELEASEDIR; files keep their OPEN
//!   (passthrough needs one), and the backing file registered for a lower
//!   object stays for the next open (`ops::FsInner::kernel_opens_dirs`):
//!   a second `tar` of 4,000 small files 0.16 s to 0.10 s (kernel 0.07 s).
//! - Extracting 20,000 small files with tar cost ten round trips per file
//!   whatever the server does (nine with KILLPRIV_V2, which drops the
//!   GETATTR before the chown): LOOKUP (negative) + CREATE for the open,
//!   GETXATTR `security.capability` for the write and again for the fchown
//!   (the kernel's killpriv checks), SETATTR for each of utimensat, fchown
//!   and fchmod, a GETATTR the kernel forces before a chown (it refreshes the
//!   mode to clear set-id bits), a GETATTR of the parent for the permission
//!   check (every entry change in a directory invalidates its attributes),
//!   and RELEASE. fuse-overlayfs 1.10 sends the same plus a WRITE. So the
//!   cost per request is what there is to win: it was 30-50 µs of server
//!   time for SETATTR, GETXATTR and GETATTR on upper files, mostly an
//!   `openat2` walk from the upper root to the parent directory for every
//!   request and xattr calls through `/proc/self/fd`. Now upper directory fds
//!   are cached per inode (`ops::FsInner::upper_dir`), a node strata
//!   created knows it carries no xattrs (`tree::Node::no_xattrs`: GETXATTR
//!   answers from memory) and whether it carries a `user.strata.meta` record
//!   (`tree::Node::meta_rec`: a chown that changes nothing costs no failing
//!   removexattr). Server time per file went from ~380 µs to ~160 µs (and
//!   ~100 µs with the threading below); the rest is context switches of the
//!   round trips. Later, with polling: per request LOOKUP 1.9 µs, GETATTR
//!   2.5, GETXATTR 2.4, SETATTR 5.8, CREATE 10.5, RELEASE 3.2, so ~41 µs
//!   per file, 0.81 s of an extract of 1.68 s (kernel overlayfs 0.47 s for
//!   all of it): even a server that took no time would leave it over 1.5x.
//! - FUSE_HANDLE_KILLPRIV_V2 is taken on writable mounts: it saves the
//!   forced GETATTR per chown and a GETXATTR `security.capability` per
//!   write(2) to a file already checked; the server clears set-id bits
//!   itself, and keeps writes that must clear something off passthrough
//!   (`ops::handlers`, init). Where it clears them behind an answer without
//!   attributes (WRITE, an O_TRUNC OPEN, FALLOCATE) it also invalidates the
//!   kernel's cached attributes: the kernel execs by its cached mode, and
//!   kept the set-id bits it had. Still sent per created file: one GETXATTR
//!   for its first write and one for a chown (the VFS asks before every
//!   ATTR_KILL_PRIV). Answering getxattr with ENOSYS turns xattrs off for
//!   the whole mount for good, so it is done only where no xattr can ever
//!   exist (next item). The writeback cache was measured on extract: no
//!   gain (it adds a FLUSH per file) and it excludes passthrough.
//! - FUSE_POSIX_ACL is taken: the kernel reads `system.posix_acl_access`
//!   once per inode (it caches ACLs) and enforces it in its permission
//!   checks, as kernel overlayfs does; setting an access ACL also sets the
//!   mode it implies (the server does that; the kernel leaves it to it).
//!   Warm `ls -l` and the stat walk measured the same with it. With
//!   FUSE_DONT_MASK the caller's umask comes with each create, so that
//!   under a default ACL the ACL's bits limit the new entry instead, as
//!   POSIX ACLs have it (`ops::FsInner::creation_mode`).
//! - FUSE over io_uring (kernel `fuse.enable_uring`), measured with libfuse's
//!   own passthrough_hp example built from upstream with io_uring on, same
//!   extract onto a tmpfs: /dev/fuse 10.7-10.9 s, io_uring 3.7-4.3 s; with
//!   idle CPUs held polling (as strata does) 4.1-5.0 s against 3.4 s. strata
//!   over /dev/fuse with its polling: 1.8-1.9 s. So a ring transport (which
//!   fuser lacks) would be worth perhaps a fifth here, not the 3-4x that
//!   separates FUSE from the kernel's overlayfs on this workload.
//! - Leaving permission checks to the server (no `default_permissions`,
//!   which FUSE_POSIX_ACL also forces on) drops the GETATTR of the parent
//!   that follows every change in a directory. Measured: `rm -rf` of the
//!   extracted tree 0.49 s -> 0.34 s warm (kernel 0.25 s), extract and
//!   small copy-ups unchanged within noise. Not taken: FUSE requests carry
//!   neither the caller's supplementary groups nor its capabilities, so
//!   the server could not decide as the kernel does (group access, a
//!   container root without CAP_DAC_OVERRIDE), and ACLs would be ours to
//!   enforce too.
//! - Threads: with two threads reading requests, extract took 3.4-4.1 s;
//!   with one, 2.5-3.1 s (fuse-overlayfs 1.10, single-threaded: 3.1-3.8 s).
//!   The kernel gives each request to the reader that waited longest, so
//!   consecutive requests of one process bounce between threads and cores.
//!   So one thread takes all requests and answers those that only touch
//!   memory or do a quick host call; the ones that may block on I/O go to a
//!   pool of `MountOptions::threads` workers (`ops::StrataFs`), so that a
//!   copy-up or a cold read does not stall everyone else.
//! - `ls -l` of 10,000 entries sends GETXATTR `security.selinux` and
//!   `system.posix_acl_access` per entry (nothing in FUSE caches xattrs or
//!   their absence). A read-only mount of layers without a single xattr
//!   answers getxattr with ENOSYS, which the kernel remembers for the mount:
//!   warm `ls -l` went from 1.0 s to 0.08 s (kernel overlayfs: 0.12 s).
//!   Mounts with xattrs, or writable ones, answer every request as before.
//! - Forgets take the tree lock shared (only freeing a node needs it
//!   exclusively): they arrive next to every other request.
//! - Copy-up (appending to 1,000 lower files): ~440 µs of server time per
//!   OPEN, of which zeroing a 1 MiB copy buffer (now sized to the file) and
//!   restoring the parent's times through `/proc/self/fd` (now
//!   `utimensat(AT_EMPTY_PATH)` on the O_PATH fd) were the largest parts;
//!   now ~190 µs. READ requests no longer zero their buffer either.
//! - `rm -rf` of a lower tree: emptying an upper directory of its whiteouts
//!   at rmdir took a stat per whiteout; the directory listing's d_type says
//!   enough (RMDIR ~250 µs to ~160 µs of server time).

mod changes;
mod cpu_use;
pub mod idmap;
mod layer;
mod load;
pub mod mountinfo;
mod ops;
mod poll;
mod prefetch;
mod source;
#[cfg(feature = "test-support")]
pub mod testing;
mod tree;
mod upper;
mod walk;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use changes::{changes, changes_hiding, Change, ChangeKind};
pub use layer::{
    merged_entries, open_upper_file, upper_entries, upper_entries_hiding, write_layer_tar, UpperContent, UpperEntry,
    UpperKind,
};
pub use source::{Content, FetchObject, FillRange, LayerSource, Lower, ObjectRef, PartialContent};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{what} {}: {cause}", path.display())]
    Io { what: &'static str, path: PathBuf, cause: io::Error },
    #[error("cannot mount at {}: {cause}", path.display())]
    Mount { path: PathBuf, cause: io::Error },
    #[error("cannot unmount {}: {detail}", path.display())]
    Unmount { path: PathBuf, detail: String },
    #[error(
        "upper directory {}: its filesystem keeps no user extended attributes, where strata records \
         whiteouts, metadata-only copies and owners; put it on ext4, xfs, btrfs or tmpfs",
        path.display()
    )]
    UpperWithoutXattrs { path: PathBuf },
    #[error(
        "upper directory {}: strata may not change its user.strata.* extended attributes, where it records \
         whiteouts, metadata-only copies and owners (a strata mount keeps them for itself, so an upper \
         directory cannot be inside one; nor can it be another user's directory); choose a directory of \
         your own on ext4, xfs, btrfs or tmpfs",
        path.display()
    )]
    UpperRefusesStrataXattrs { path: PathBuf },
    #[error(
        "upper directory {} is in use by another mount (a strata mount of another store, or a process \
         that mounted it itself); unmount that one first, or choose another directory",
        path.display()
    )]
    UpperInUse { path: PathBuf },
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The writable upper directory; `None` mounts read-only.
    pub upper: Option<PathBuf>,
    /// Source name shown in /proc/mounts.
    pub fsname: String,
    /// Let users other than the mounting one in (containers whose processes
    /// run as other uids need this). Through fusermount3 it requires
    /// `user_allow_other` in /etc/fuse.conf; a direct mount does not.
    pub allow_other: bool,
    /// Worker threads for requests that may block on I/O (one more thread
    /// takes all requests and answers the others).
    pub threads: usize,
    /// Honour setuid/setgid bits (a container root filesystem wants this).
    pub suid: bool,
    /// Allow device nodes to be opened as devices.
    pub dev: bool,
    /// Let the kernel read lower files directly (FUSE passthrough) when the
    /// kernel offers it and strata has CAP_SYS_ADMIN; plain reads otherwise.
    /// `STRATA_FS_NO_PASSTHROUGH=1` turns it off (for comparisons).
    pub passthrough: bool,
    /// How long the request reader keeps polling the device after a request
    /// before it goes to sleep (see `poll`); zero never polls.
    /// `STRATA_FS_POLL_US` overrides it.
    pub poll: Duration,
    /// While the reader polls, ask idle CPUs to poll too (a 0 µs PM QoS CPU
    /// latency request; root only, see `poll`).
    /// `STRATA_FS_NO_CPU_LATENCY=1` turns it off (for comparisons).
    pub hold_cpus: bool,
    /// How the mount's own ids (its layers' and records') map to the ids of
    /// the user namespace it is served to; identity by default (see
    /// [`idmap`]).
    pub id_map: idmap::IdMap,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            upper: None,
            fsname: "strata".into(),
            allow_other: false,
            threads: std::thread::available_parallelism().map(|n| n.get().clamp(2, 8)).unwrap_or(2),
            suid: false,
            dev: false,
            passthrough: true,
            poll: Duration::from_millis(1),
            hold_cpus: true,
            id_map: idmap::IdMap::default(),
        }
    }
}

/// A live mount. Dropping it unmounts (lazily when busy).
///
/// It unmounts only while its own mount is the one on top at its mount
/// point, and never lets fuser's session unmount on drop: that unmounts by
/// path whatever is there, which after an unmount from outside or a lazy
/// one can be the mount underneath (a user's tmpfs) or another mount made
/// there since.
#[derive(Debug)]
pub struct MountHandle {
    /// `None` once finished.
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    /// Device numbers of this mount's filesystem, as mountinfo shows them.
    dev: Option<(u32, u32)>,
    /// The mount point as mountinfo lists it (resolved before mounting,
    /// so a symlink to the directory counts as the directory).
    listed: PathBuf,
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the serving threads to finish. When the mount
    /// is busy it is detached instead (it goes away with its last user) and
    /// the serving threads end on their own then.
    pub fn unmount(mut self) -> Result<(), FsError> {
        self.finish(false)
    }

    /// Unmounts a filesystem nobody may use any more (a container's root
    /// after its last process exited), aborting the FUSE connection first
    /// (a forced unmount, as root). A mount namespace that another process
    /// unshared while this was mounted (another user's container or its
    /// pasta, on a host whose mounts do not propagate) holds a copy of the
    /// mount; a plain unmount here leaves that copy, the kernel keeps the
    /// connection for it, and the serving threads would wait for it for as
    /// long as that namespace lives. Aborted, the copy answers ENOTCONN.
    /// Without the privilege for a forced unmount it is [`Self::unmount`].
    pub fn unmount_abandoned(mut self) -> Result<(), FsError> {
        self.finish(true)
    }

    fn finish(&mut self, abort: bool) -> Result<(), FsError> {
        let Some(session) = self.session.take() else { return Ok(()) };
        // Where the mount is now: a parent directory renamed since
        // mounting has moved it.
        if let Some(now) = self.dev.and_then(|dev| mountinfo::mount_point_of(dev, &self.listed)) {
            self.listed = now;
        }
        let path = self.listed.clone();
        if !self.on_top() {
            // Unmounted from outside already (lazily perhaps, with users
            // left): the threads end on their own when the session does.
            std::mem::forget(session);
            return Ok(());
        }
        let forced = abort && rustix::mount::unmount(&path, rustix::mount::UnmountFlags::FORCE).is_ok();
        let plain = forced
            || match rustix::mount::unmount(&path, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => true,
                Err(rustix::io::Errno::PERM) => fusermount_unmount(&path, false).is_ok(),
                Err(_) => false,
            };
        if plain {
            join_leaving_the_path_alone(session);
            return Ok(());
        }
        // Busy: the threads serve on until the last user leaves.
        std::mem::forget(session);
        unmount_path(&path)
    }

    /// Whether this mount is the one on top at its mount point.
    fn on_top(&self) -> bool {
        self.dev.is_some() && mountinfo::top_mount(&self.listed).map(|m| m.dev) == self.dev
    }

    /// Blocks until the filesystem is unmounted from outside (umount,
    /// `fusermount3 -u`, or a lazy unmount whose last user has left).
    pub fn join(mut self) {
        if let Some(session) = self.session.take() {
            join_leaving_the_path_alone(session);
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        let _ = self.finish(false);
    }
}

/// Waits for a session's thread to end, then drops nothing of it: its
/// unmount on drop acts on a path (see [`MountHandle`]).
fn join_leaving_the_path_alone(mut session: fuser::BackgroundSession) {
    // The thread's handle, taken out (`guard` is public) so that the
    // session itself need not be dropped to wait for it.
    let stand_in = std::thread::spawn(|| Ok(()));
    let _ = std::mem::replace(&mut session.guard, stand_in).join();
    std::mem::forget(session);
}

/// Mounts `lowers` (bottom layer first) at `mountpoint`.
///
/// Privileged callers (root, or root of a user namespace that owns the mount
/// namespace) mount with mount(2) directly; anyone else goes through
/// fusermount3.
pub fn mount(lowers: Vec<Lower>, mountpoint: &Path, opts: MountOptions) -> Result<MountHandle, FsError> {
    // Object directories are opened before the mount exists (see
    // `source::StoreLayer`), once for all layers that share one.
    let mut dirs: std::collections::HashMap<PathBuf, Arc<OwnedFd>> = Default::default();
    let mut sources: Vec<Arc<dyn LayerSource>> = Vec::with_capacity(lowers.len());
    for l in &lowers {
        let fd = match dirs.get(&l.objects_dir) {
            Some(fd) => fd.clone(),
            None => {
                let io =
                    |cause| FsError::Io { what: "opening the object directory", path: l.objects_dir.clone(), cause };
                let fd = Arc::new(source::open_objects_dir(&l.objects_dir).map_err(io)?);
                dirs.insert(l.objects_dir.clone(), fd.clone());
                fd
            }
        };
        sources.push(Arc::new(l.open(fd)));
    }
    let mut tree = tree::Tree::build(&sources);
    let upper = match &opts.upper {
        Some(p) => {
            let io = |cause| FsError::Io { what: "opening upper directory", path: p.clone(), cause };
            let mut up = upper::Upper::open(p).map_err(io)?.with_ids(opts.id_map.clone());
            if !up.lock_for_mount().map_err(io)? {
                return Err(FsError::UpperInUse { path: p.clone() });
            }
            // Known at once, not at the first chmod or rm that needs one.
            // Removing an attribute that is not there: ENODATA where strata
            // may record its own, and no change anywhere.
            let probe = rustix::fs::lremovexattr(p, "user.strata.probe");
            match probe {
                Err(rustix::io::Errno::NOTSUP) => return Err(FsError::UpperWithoutXattrs { path: p.clone() }),
                Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => {
                    return Err(FsError::UpperRefusesStrataXattrs { path: p.clone() })
                }
                _ => {}
            }
            load::load_upper(&mut tree, &up, &sources).map_err(io)?;
            Some(up)
        }
        None => None,
    };
    let statfs_fd: Option<OwnedFd> = lowers.first().and_then(|l| {
        rustix::fs::open(
            &l.objects_dir,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()
    });
    let passthrough = opts.passthrough
        && privileged_host()
        && std::env::var_os("STRATA_FS_NO_PASSTHROUGH").is_none_or(|v| v.is_empty());
    let poll = std::env::var("STRATA_FS_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_micros)
        .unwrap_or(opts.poll);
    let hold_cpus = opts.hold_cpus && std::env::var_os("STRATA_FS_NO_CPU_LATENCY").is_none_or(|v| v.is_empty());
    let poller = poll::Poller::new(poll, hold_cpus);
    let fs = ops::StrataFs::new(tree, sources, upper, statfs_fd, passthrough, opts.threads.max(1), poller.clone());

    use fuser::MountOption as M;
    let mut mo = vec![M::FSName(opts.fsname.clone()), M::Subtype("strata".into()), M::DefaultPermissions];
    mo.push(if opts.upper.is_some() { M::RW } else { M::RO });
    mo.push(if opts.suid { M::Suid } else { M::NoSuid });
    mo.push(if opts.dev { M::Dev } else { M::NoDev });
    let mut config = fuser::Config::default();
    config.mount_options = mo;
    config.acl = if opts.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    // One thread takes requests; `opts.threads` I/O workers serve those that
    // may block (see `ops::StrataFs`).
    config.n_threads = Some(1);
    config.clone_fd = true;
    let merr = |cause| FsError::Mount { path: mountpoint.to_path_buf(), cause };
    let listed = mountpoint.canonicalize().unwrap_or_else(|_| mountinfo::as_listed(mountpoint));
    let inner = fs.shared();
    let session = fuser::Session::new(fs, mountpoint, &config).map_err(merr)?;
    inner.set_notifier(session.notifier());
    if let Some(p) = &poller {
        // Without the governor the reader simply always sleeps.
        let _ = p.attach(&session);
    }
    let session = session.spawn().map_err(merr)?;
    let dev = mountinfo::top_mount(&listed).map(|m| m.dev);
    Ok(MountHandle { session: Some(session), mountpoint: mountpoint.to_path_buf(), dev, listed })
}

/// Root in the initial user namespace (what FUSE passthrough requires).
fn privileged_host() -> bool {
    rustix::process::geteuid().is_root() && in_initial_user_namespace()
}

/// Whether this process runs in the initial user namespace (its uid map is
/// the whole identity map).
pub(crate) fn in_initial_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| is_identity_map(&m))
}

/// Whether a `/proc/PID/uid_map` reads as the whole identity map, as the
/// initial user namespace's does (seen from itself).
pub(crate) fn is_identity_map(map: &str) -> bool {
    map.split_whitespace().eq(["0", "0", "4294967295"])
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit, for a
/// process that serves a mount, and returns the limit as it was (for the
/// children it starts, which should not see the change).
///
/// Every file open in the mount holds a descriptor in the serving process
/// (the backing file of passthrough, or the file reads come from): with
/// the usual soft limit of 1024, the mount's users could hold only about
/// a thousand files open in it at once, whatever their own limits, and
/// the next open failed with EMFILE. Kernel overlayfs has no such limit.
/// The hard limit, often 524,288 but as low as 20,000 on some hosts, is
/// then how many files all the mount's users together can hold open; past
/// it an open fails with ENFILE (see `ops::eno`).
pub fn raise_fd_limit() -> rustix::process::Rlimit {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let old = getrlimit(Resource::Nofile);
    if old.current != old.maximum {
        // Best effort: the limit only decides how many files can be open.
        let _ = setrlimit(Resource::Nofile, Rlimit { current: old.maximum, maximum: old.maximum });
    }
    old
}

/// Unmounts whatever is mounted at `path`, lazily (detached when busy):
/// umount2(MNT_DETACH) when we may, else `fusermount3 -u -z`.
pub fn unmount_path(path: &Path) -> Result<(), FsError> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::PERM) => {}
        Err(e) => {
            return Err(FsError::Unmount { path: path.to_path_buf(), detail: io::Error::from(e).to_string() });
        }
    }
    fusermount_unmount(path, true)
}

/// The fusermount3 binary: `$FUSERMOUNT_PATH` (which fuser, mounting
/// through it, reads too), else the first of `$PATH` and the usual
/// directories that holds it. A server started with a `PATH` that lacks
/// it (a service's minimal environment) must still unmount what fuser
/// mounted: before, its unmount failed and was taken for a busy mount.
fn fusermount_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FUSERMOUNT_PATH") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let usual = ["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(usual)
        .map(|d| d.join("fusermount3"))
        .find(|p| rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok())
        .unwrap_or_else(|| PathBuf::from("fusermount3"))
}

/// `fusermount3 -u [-z] PATH`, the unprivileged way to unmount a FUSE mount
/// (`lazy`: detached if busy).
pub fn fusermount_unmount(path: &Path, lazy: bool) -> Result<(), FsError> {
    let mut cmd = std::process::Command::new(fusermount_bin());
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| FsError::Unmount { path: path.to_path_buf(), detail: format!("running fusermount3: {e}") })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FsError::Unmount {
            path: path.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
