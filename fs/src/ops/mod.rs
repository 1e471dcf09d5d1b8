//! The FUSE request handlers: the merged tree answers lookups, getattr and
//! readdir from memory; the upper directory takes every change.
//!
//! Locking: one `RwLock` around the tree. Reads of the namespace take it
//! shared; every namespace or metadata change takes it exclusively and does
//! its host work (including copy-up) while holding it, so host paths computed
//! from the tree stay valid. File data moves through per-handle fds without
//! the tree lock.
//!
//! Copy-up rules (as kernel overlayfs): a change of content, a rename or a new
//! hard link copies a lower file up whole (content with copy_file_range); a
//! chmod/chown/utimes/xattr change copies metadata only and leaves the content
//! below (`user.strata.metacopy`). Directories are copied up as empty
//! directories with their metadata, parents first, and the parent's
//! timestamps are restored afterwards. Renaming a lower directory copies its
//! whole subtree up (kernel overlayfs without redirect_dir answers EXDEV and
//! lets `mv` copy; we do the copy ourselves).
//!
//! Caching: nothing changes the mount behind the kernel's back (all changes
//! come through these handlers, and the kernel drops what each change
//! invalidates), so lower entries get long entry/attr TTLs, misses are
//! answered as negative entries (inode 0) with a long TTL, and opened files
//! keep the page cache. For the same reason no notify-based invalidation is
//! needed: a copy-up keeps the inode number and its attributes.
//!
//! Passthrough (FUSE_PASSTHROUGH, needs CAP_SYS_ADMIN in the initial user
//! namespace): the kernel then reads and writes the backing file itself. It
//! insists that all open files of an inode share one backing file and that
//! passthrough and cached opens of an inode never coexist. So upper files are
//! passed through for readers and writers (they share the upper file), lower
//! objects only on read-only mounts (a writer could otherwise arrive while a
//! reader holds the immutable object as the backing file), and an inode that
//! has cached opens gets cached opens only. An open whose writes must reach
//! this server (a set-id file's) next to passthrough opens names the backing
//! file too, with FOPEN_DIRECT_IO. `InodeIo` keeps that book.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::{AtFlags, OFlags};
use strata_layers::index::{Entry, EntryKind};

mod attrs;
mod caller;
mod copy_up;
mod handlers;
mod names;
mod stats;

pub(crate) use stats::Op;
use stats::{OpTimer, Stats};

use crate::source::{Content, FillRange, LayerSource};
use crate::tree::{Attr, Ino, Node, Tree, Ts, Up, ROOT};
use crate::upper::{self, errno, Upper};

const LOWER_TTL: Duration = Duration::from_secs(86400);
/// Upper entries change only through this mount too, and the kernel drops
/// what a change invalidates; the shorter TTL bounds the cost of a mistake.
const UPPER_TTL: Duration = Duration::from_secs(60);
const MAX_WRITE: u32 = 1 << 20;
/// Copy-ups of files up to this size run on the reading thread: handing a
/// request to a sleeping worker costs a cross-CPU wake-up, which is more
/// than copying a small file (appending a byte to 1,000 lower 4 KiB files:
/// 0.125 s with every copy-up on a worker).
const INLINE_COPY_UP: u64 = 128 << 10;
/// Reads up to this size first try the host's page cache on the reading
/// thread (RWF_NOWAIT); bigger ones are not worth zeroing a buffer for.
const NOWAIT_READ_MAX: u32 = 128 << 10;
/// Inodes whose backing file a read-only mount keeps registered after the
/// last close (each holds an open file here and in the kernel): at most
/// 4096, and a quarter of RLIMIT_NOFILE when that is lower, so that kept
/// files never crowd out the ones in use (with a soft limit of 1024,
/// reading 1,000 distinct files made later opens fail with EMFILE).
fn kept_backing_max() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    (soft / 4).clamp(16, 4096) as usize
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn eno(e: io::Error) -> Errno {
    match e.raw_os_error() {
        // This server's descriptor table is full, not the caller's: every
        // file open in the mount holds one here (see `raise_fd_limit`).
        // ENFILE says that a table shared with others is full; EMFILE
        // would send the caller looking at its own limit.
        Some(libc::EMFILE) => Errno::ENFILE,
        code => Errno::from_i32(code.unwrap_or(libc::EIO)),
    }
}

/// A non-directory's permission bits after the kernel's rule for a chown,
/// or for a write or truncation by a caller without CAP_FSETID: set-user-id
/// goes, set-group-id too when the file is group-executable. (File
/// capabilities the kernel removes itself, with REMOVEXATTR.)
fn without_set_id(type_and_mode: u32, perm: u32) -> u32 {
    if type_and_mode & libc::S_IFMT == libc::S_IFDIR {
        return perm;
    }
    let mut m = perm & !libc::S_ISUID;
    if perm & libc::S_IXGRP != 0 {
        m &= !libc::S_ISGID;
    }
    m
}

fn to_system_time(t: Ts) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

fn ts_of(t: SystemTime) -> Ts {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Ts { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Ts { sec, nsec }
        }
    }
}

fn now() -> Ts {
    ts_of(SystemTime::now())
}

/// Strata's own records (`user.strata.*`) are not the container's to set
/// or remove.
fn check_xattr_name(name: &[u8]) -> io::Result<()> {
    if name.starts_with(upper::RESERVED_PREFIX) {
        return Err(err(libc::EPERM));
    }
    if !known_xattr_namespace(name) {
        return Err(err(libc::EOPNOTSUPP));
    }
    Ok(())
}

/// Whether `name` is in a namespace that Linux filesystems keep (`user.`,
/// `trusted.`, `security.`, and POSIX ACLs of `system.`). FUSE passes any
/// name on; a host filesystem, and so kernel overlayfs, refuses the others
/// (`foo.bar`) with EOPNOTSUPP, and so does strata. A layer's own are not
/// shown either: no unpacker could have set them.
pub(crate) fn known_xattr_namespace(name: &[u8]) -> bool {
    const PREFIXES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
    PREFIXES.iter().any(|p| name.starts_with(p) && name.len() > p.len())
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

pub(crate) fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// Names the mount refuses to create: they would read as whiteouts in the
/// upper directory (and in any layer committed from it).
fn check_name(name: &[u8]) -> io::Result<()> {
    if name.starts_with(upper::WH_PREFIX) {
        return Err(err(libc::EINVAL));
    }
    if name.len() > 255 {
        return Err(err(libc::ENAMETOOLONG));
    }
    Ok(())
}

struct DirEnt {
    /// The READDIR offset of this entry, and of the next entry to read
    /// after it (`tree::Link::cookie`).
    off: u64,
    ino: Ino,
    kind: FileType,
    name: Box<[u8]>,
}

enum HandleKind {
    File {
        file: RwLock<Arc<File>>,
        writable: bool,
        mode: IoMode,
        /// For a lower file being fetched in parts: what must run before a
        /// range of `file` is read. Cleared when a copy-up gives the
        /// handle the upper file.
        fill: RwLock<Option<Arc<dyn FillRange>>>,
    },
    /// The directory's listing as taken by the latest READDIR at offset 0
    /// through this handle (see [`FsInner::listing`]).
    Dir(Mutex<Option<Arc<Vec<DirEnt>>>>),
}

/// What a copy-up of a regular file takes along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    /// Metadata only; the content stays below (metacopy).
    Meta,
    /// Metadata and content.
    Full,
    /// Metadata and at most this many bytes of content: the file is about
    /// to be truncated to that size, the rest would be thrown away.
    Head(u64),
}

/// A copy of a lower file's content made before a copy-up, outside the
/// tree lock ([`FsInner::precopy`]): a file in the upper root.
struct Prepared {
    name: Vec<u8>,
    /// How many bytes of the content it holds.
    len: u64,
}

impl Copy {
    /// How many bytes of a `size`-byte lower file this copy-up copies.
    fn content_len(self, size: u64) -> u64 {
        match self {
            Copy::Meta => 0,
            Copy::Full => size,
            Copy::Head(n) => n.min(size),
        }
    }
}

/// How the kernel was told to do I/O on an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoMode {
    /// Through the page cache (reads and writes come to us).
    Cached,
    /// Straight to the backing file in the kernel (FUSE passthrough).
    Passthrough,
    /// No page cache, reads and writes come to us: an open that must reach
    /// us while the inode has passthrough opens, which the kernel does not
    /// let coexist with cached ones. The kernel counts it as a passthrough
    /// open (FOPEN_PASSTHROUGH | FOPEN_DIRECT_IO).
    Direct,
}

/// Per inode: the open files by I/O mode and the registered backing file.
/// The kernel refuses a cached open while an inode has passthrough opens
/// (and the reverse), and wants one backing file per inode at a time.
#[derive(Default)]
struct InodeIo {
    passthrough: u32,
    cached: u32,
    backing: Option<fuser::BackingId>,
    /// On a read-only mount, the object behind `backing`, kept with it: a
    /// later open of the inode needs no host call at all.
    object: Option<Arc<File>>,
}

struct Handle {
    ino: Ino,
    kind: HandleKind,
}

/// What [`FsInner::do_open`] opened.
struct Opened {
    file: File,
    writable: bool,
    lower: bool,
    fill: Option<Arc<dyn FillRange>>,
}

/// The `fill` of a handle whose file is whole.
fn no_fill() -> RwLock<Option<Arc<dyn FillRange>>> {
    RwLock::new(None)
}

pub(crate) struct FsInner {
    tree: RwLock<Tree>,
    sources: Vec<Arc<dyn LayerSource>>,
    upper: Option<Upper>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// A directory to answer statfs for (the upper dir or an objects dir).
    statfs_fd: Option<OwnedFd>,
    /// Whether to try FUSE passthrough for read-only opens of lower files.
    want_passthrough: bool,
    /// Passthrough was negotiated and registering backing files works.
    passthrough: std::sync::atomic::AtomicBool,
    /// FUSE_HANDLE_KILLPRIV_V2 is on: this server clears set-id bits on
    /// chown, on truncation and on writes (see `kill_set_id`).
    killpriv: std::sync::atomic::AtomicBool,
    /// Whether a caller of uid 0 may hold CAP_FSETID, which keeps set-id
    /// bits through a truncation: the kernel asks for the capability in
    /// the initial user namespace, which no caller has when this server
    /// runs in a user namespace of its own (root of a rootless container).
    uid0_may_keep_set_id: bool,
    io: Mutex<HashMap<Ino, InodeIo>>,
    /// Open upper directories by inode, so that a request on an upper entry
    /// costs one *at() call instead of an `openat2` walk from the upper root
    /// first. An fd follows its directory across renames, so only removing
    /// a directory (after which its inode number may be reused) drops it.
    dirs: Mutex<HashMap<Ino, Arc<OwnedFd>>>,
    /// Read-only mounts answer OPENDIR with ENOSYS (see
    /// `kernel_opens_dirs`): READDIR then names the directory only, and
    /// these are its listings.
    ro_listings: Mutex<HashMap<Ino, Arc<Vec<DirEnt>>>>,
    /// How many directory fds `dirs` may hold.
    /// See [`kept_backing_max`].
    kept_backing_max: usize,
    dir_cache_cap: usize,
    /// A read-only mount of layers without a single xattr: getxattr answers
    /// ENOSYS, after which the kernel stops asking (see the notes in lib.rs).
    no_xattrs_at_all: bool,
    stats: Option<Stats>,
    /// Busy-polls the device while requests keep coming (`poll`).
    poller: Option<Arc<crate::poll::Poller>>,
    /// The session's notifier, set once the session exists.
    notifier: OnceLock<fuser::Notifier>,
    /// Read-ahead of a directory's small files after a cold read of one.
    prefetch: crate::prefetch::Prefetcher,
}

/// Upper directory fds kept open at most: 512, or an eighth of the soft
/// RLIMIT_NOFILE when that is lower (open files of the mount need fds too).
/// The cache starts over when full.
fn dir_cache_cap() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    (soft / 8).clamp(16, 512) as usize
}

impl FsInner {
    fn new(
        tree: Tree,
        sources: Vec<Arc<dyn LayerSource>>,
        upper: Option<Upper>,
        statfs_fd: Option<OwnedFd>,
        want_passthrough: bool,
        poller: Option<Arc<crate::poll::Poller>>,
    ) -> Self {
        let no_xattrs_at_all =
            upper.is_none() && sources.iter().all(|s| s.entries().iter().all(|e| e.xattrs.is_empty()));
        FsInner {
            tree: RwLock::new(tree),
            upper,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            statfs_fd,
            want_passthrough,
            passthrough: std::sync::atomic::AtomicBool::new(false),
            killpriv: std::sync::atomic::AtomicBool::new(false),
            uid0_may_keep_set_id: crate::in_initial_user_namespace(),
            io: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            ro_listings: Mutex::new(HashMap::new()),
            dir_cache_cap: dir_cache_cap(),
            kept_backing_max: kept_backing_max(),
            no_xattrs_at_all,
            sources,
            stats: Stats::from_env(),
            poller,
            notifier: OnceLock::new(),
            prefetch: Default::default(),
        }
    }

    /// The upper directory of directory `ino` (which must be in the upper
    /// directory already), from the cache when it is there.
    fn upper_dir(&self, t: &Tree, ino: Ino) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.dir_cache().get(&ino) {
            return Ok(fd.clone());
        }
        if ino != ROOT && t.get(ino).is_none_or(|n| n.nlink() == 0) {
            return Err(err(libc::ENOENT));
        }
        let up = self.upper()?;
        // Relative to the parent where its fd is at hand (the usual case, as
        // copy-ups go down from the root): one name, not a whole path.
        let n = t.node(ino);
        let parent = (ino != ROOT).then(|| self.dir_cache().get(&n.link.parent).cloned()).flatten();
        if let Some(p) = parent {
            return Ok(self.cache_dir(ino, up.subdir(p.as_fd(), &n.link.name)?));
        }
        let path = t.path_of(ino).ok_or_else(|| err(libc::ENOENT))?;
        if path.len() <= upper::PATH_PART {
            return Ok(self.cache_dir(ino, up.dir(&path)?));
        }
        // Deeper than a path the kernel takes at once: down from the nearest
        // ancestor at hand, keeping each level, so that the walk up a deep
        // tree (rm -rf removes the deepest first) finds its parents here
        // instead of walking the whole path again for each (that made
        // rm -rf of a tree 10,000 deep quadratic).
        let mut chain = vec![ino];
        let mut at = t.node(ino).link.parent;
        let mut fd = loop {
            if at == ROOT {
                break Arc::new(up.dir(b"")?);
            }
            if let Some(fd) = self.dir_cache().get(&at).cloned() {
                break fd;
            }
            chain.push(at);
            at = t.node(at).link.parent;
        };
        for &d in chain.iter().rev() {
            fd = self.cache_dir(d, up.subdir(fd.as_fd(), &t.node(d).link.name)?);
        }
        Ok(fd)
    }

    fn cache_dir(&self, ino: Ino, fd: OwnedFd) -> Arc<OwnedFd> {
        let fd = Arc::new(fd);
        let mut cache = self.dir_cache();
        if cache.len() >= self.dir_cache_cap {
            cache.clear();
        }
        cache.insert(ino, fd.clone());
        fd
    }

    /// Forgets the cached fd of a directory that is being removed.
    fn dir_removed(&self, ino: Ino) {
        self.dir_cache().remove(&ino);
    }

    fn dir_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, Arc<OwnedFd>>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts timing a request (when `STRATA_FS_STATS` is set) made by
    /// thread `caller`, and tells the poller of it.
    fn op(&self, op: Op, caller: u32) -> Option<OpTimer<'_>> {
        if let Some(p) = &self.poller {
            p.on_request(caller);
        }
        self.stats.as_ref().map(|stats| stats.time(op))
    }

    /// Whether a change of content this server sees (a truncation, an
    /// O_TRUNC open, fallocate) by this caller clears set-id bits: the
    /// caller lacks CAP_FSETID. fuser does not pass the
    /// kernel's own flag for it, so uid 0 stands for holding it, where it
    /// can (see `uid0_may_keep_set_id`).
    pub(super) fn change_kills_set_id(&self, req: &Request) -> bool {
        // The caller's real uid: capabilities go with it, not with the id it
        // maps to (see `crate::idmap`).
        self.killpriv.load(Ordering::Relaxed) && (req.uid() != 0 || !self.uid0_may_keep_set_id)
    }

    // Ids crossing into and out of the mount (see `crate::idmap`): the map
    // lives with the upper directory, whose host owners it describes.
    pub(super) fn uid_in(&self, id: u32) -> u32 {
        self.upper.as_ref().map_or(id, |u| u.ids.uid_in(id))
    }
    pub(super) fn gid_in(&self, id: u32) -> u32 {
        self.upper.as_ref().map_or(id, |u| u.ids.gid_in(id))
    }
    pub(super) fn uid_out(&self, id: u32) -> u32 {
        self.upper.as_ref().map_or(id, |u| u.ids.uid_out(id))
    }
    pub(super) fn gid_out(&self, id: u32) -> u32 {
        self.upper.as_ref().map_or(id, |u| u.ids.gid_out(id))
    }

    fn io(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, InodeIo>> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets an open file's I/O mode (at release).
    fn io_closed(&self, ino: Ino, mode: IoMode) {
        let mut io = self.io();
        if let Some(st) = io.get_mut(&ino) {
            match mode {
                IoMode::Cached => st.cached = st.cached.saturating_sub(1),
                IoMode::Passthrough | IoMode::Direct => {
                    st.passthrough = st.passthrough.saturating_sub(1);
                    // A read-only mount keeps the registered backing file
                    // of an immutable lower object for the next open.
                    if st.passthrough == 0 && self.upper.is_some() {
                        st.backing = None;
                    }
                }
            }
            if st.cached == 0 && st.passthrough == 0 && st.backing.is_none() {
                io.remove(&ino);
            }
            // Kept backing files are bounded: drop the unused ones when many.
            if io.len() > self.kept_backing_max {
                io.retain(|_, st| st.cached > 0 || st.passthrough > 0);
            }
        }
    }

    fn tree_read(&self) -> RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tree_write(&self) -> RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(|p| p.into_inner())
    }

    fn upper(&self) -> io::Result<&Upper> {
        self.upper.as_ref().ok_or_else(|| err(libc::EROFS))
    }

    fn lower_entry(&self, n: &Node) -> Option<(&dyn LayerSource, &Entry)> {
        let l = n.lower?;
        let src = self.sources.get(l.layer as usize)?;
        let e = src.entries().get(l.entry as usize)?;
        Some((src.as_ref(), e))
    }

    fn add_handle(&self, ino: Ino, kind: HandleKind) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, Arc::new(Handle { ino, kind }));
        fh
    }

    fn handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).get(&fh).cloned()
    }

    /// Whether the kernel opens directories without asking: a read-only
    /// mount never changes, so it answers the first OPENDIR with ENOSYS,
    /// and the kernel then opens directories on its own, keeps what it
    /// read of them, and sends no RELEASEDIR either (two round trips less
    /// per directory read; READDIR then comes with file handle 0).
    ///
    /// Files could go the same way (ENOSYS for OPEN), and small ones would
    /// gain most: a second `tar` of 4,000 small files took 0.054 s so
    /// (kernel overlayfs 0.069 s) against 0.16 s with an OPEN and RELEASE
    /// per file. But without an open there is no passthrough, and the
    /// kernel's page cache of a FUSE file copies out at about a third of the
    /// speed of the ext4 one below it: a second read of a 1 GiB file took
    /// 0.14-0.19 s against 0.06 s passed through (kernel overlayfs 0.067 s,
    /// fuse-overlayfs 2.x 0.066 s). Files keep their opens; the backing
    /// file registered for a lower object is kept for the next open of
    /// the same inode (`InodeIo::backing`).
    fn kernel_opens_dirs(&self) -> bool {
        self.upper.is_none()
    }

    /// Whether opening `ino` for writing (or truncating it) copies up more
    /// than `INLINE_COPY_UP` bytes, and so belongs on a worker.
    fn copy_up_is_big(&self, ino: Ino) -> bool {
        self.tree_read().get(ino).is_some_and(|n| n.up != Up::Full && n.attr.size > INLINE_COPY_UP)
    }

    /// The value of extended attribute `name` of `ino`, as getxattr shows it.
    fn xattr_of(&self, t: &Tree, ino: Ino, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if name.starts_with(upper::RESERVED_PREFIX) || !known_xattr_namespace(name) {
            return Ok(None);
        }
        let n = t.get(ino).ok_or_else(|| err(libc::ENOENT))?;
        Ok(if n.up == Up::No || self.upper.is_none() {
            self.lower_entry(n).and_then(|(_, e)| e.xattrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        } else if n.no_xattrs {
            None
        } else {
            self.upper()?.get_xattr_of(&self.upper_entry_fd(t, ino)?, name)?
        })
    }

    /// Whether writes to `ino` must reach this server: with
    /// FUSE_HANDLE_KILLPRIV_V2 the kernel leaves clearing set-id bits on a
    /// write to the server, which never sees a passed-through write; and a
    /// file capability must go on the first write too.
    fn writes_must_come_here(&self, t: &Tree, ino: Ino, mode: u32) -> bool {
        mode & (libc::S_ISUID | libc::S_ISGID) != 0
            || !matches!(self.xattr_of(t, ino, b"security.capability"), Ok(None))
    }

    /// The listing of directory `ino` for a READDIR at `offset`: from its
    /// handle, or on a read-only mount (file handle 0) from the listings kept
    /// per directory.
    ///
    /// A handle's listing is taken afresh at offset 0 (the first read, and
    /// every rewinddir) and kept for the reads that go on from there (a
    /// large directory takes many; offsets are cookies, which mean the same
    /// in every listing: see `tree::Dir::next_cookie`). Not at OPENDIR: the kernel keeps
    /// what it reads as the directory's cache (FOPEN_CACHE_DIR) and judges
    /// that cache by the directory's version when the read at offset 0
    /// starts, so a listing older than that read would stand for the
    /// directory until its next change, for every later reader too.
    fn listing(&self, ino: Ino, fh: u64, offset: u64) -> Result<Arc<Vec<DirEnt>>, Errno> {
        if fh == 0 && self.kernel_opens_dirs() {
            if let Some(l) = self.ro_listings.lock().unwrap_or_else(|p| p.into_inner()).get(&ino) {
                return Ok(l.clone());
            }
            let l = Arc::new(self.dir_snapshot(ino).map_err(eno)?);
            let mut all = self.ro_listings.lock().unwrap_or_else(|p| p.into_inner());
            if all.len() >= 4096 {
                all.clear();
            }
            all.insert(ino, l.clone());
            return Ok(l);
        }
        let Some(h) = self.handle(fh) else { return Err(Errno::EBADF) };
        let HandleKind::Dir(kept) = &h.kind else { return Err(Errno::ENOTDIR) };
        let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
        match &*kept {
            Some(l) if offset > 0 => Ok(l.clone()),
            _ => {
                let l = Arc::new(self.dir_snapshot(ino).map_err(eno)?);
                *kept = Some(l.clone());
                Ok(l)
            }
        }
    }

    fn ttl(n: &Node) -> Duration {
        if n.up == Up::No {
            LOWER_TTL
        } else {
            UPPER_TTL
        }
    }

    /// The upper directory holding the node's primary name, and that name.
    fn parent_fd(&self, t: &Tree, ino: Ino) -> io::Result<(Arc<OwnedFd>, Box<[u8]>)> {
        let n = t.node(ino);
        if n.link.parent == 0 {
            return Err(err(libc::ENOENT));
        }
        Ok((self.upper_dir(t, n.link.parent)?, n.link.name.clone()))
    }

    /// The upper directory holding the node and its name there ("." for the root).
    fn entry_fd(&self, t: &Tree, ino: Ino) -> io::Result<(Arc<OwnedFd>, Box<[u8]>)> {
        if ino == ROOT {
            return Ok((self.upper_dir(t, ROOT)?, (*b".").into()));
        }
        self.parent_fd(t, ino)
    }

    /// An fd of the node's upper entry for xattr calls: an `O_PATH` fd
    /// through its name, or, for a file removed while open, one of its open
    /// files (fgetxattr and fsetxattr work on a removed file, as on any
    /// local filesystem).
    fn upper_entry_fd(&self, t: &Tree, ino: Ino) -> io::Result<OwnedFd> {
        let n = t.node(ino);
        if ino != ROOT && n.nlink() == 0 {
            // (Only a full copy's: the open files of any other node are
            // lower content, which is never written.)
            let open = if n.up == Up::Full { self.open_file_of(ino) } else { None };
            return open.ok_or_else(|| err(libc::ENOENT))?.as_fd().try_clone_to_owned();
        }
        let (pfd, name) = self.entry_fd(t, ino)?;
        self.upper()?.path_fd(pfd.as_fd(), &name)
    }

    /// The node's attributes; upper nodes are refreshed from the host (times,
    /// size) with the recorded type, owner and mode.
    fn attr(&self, t: &Tree, ino: Ino, dir_hint: Option<(BorrowedFd, &[u8])>) -> FileAttr {
        let n = t.node(ino);
        let mut a = n.attr;
        if n.up == Up::Full && n.nlink() == 0 && n.attr.is_reg() {
            // Removed while open: the host file lives on in the open files
            // (their reads and writes change it; a cached reader reads no
            // further than the size answered here).
            if let Some(st) = self.open_file_of(ino).and_then(|f| rustix::fs::fstat(&*f).ok()) {
                a.atime = Ts::atime(&st);
                a.mtime = Ts::mtime(&st);
                a.ctime = Ts::ctime(&st);
                a.size = st.st_size as u64;
                a.blocks = st.st_blocks as u64;
            }
        }
        if n.up != Up::No && n.nlink() > 0 {
            if let Some(up) = &self.upper {
                // A directory whose fd is at hand is stat'ed through it (no
                // name lookup): the kernel asks for a directory's attributes
                // after every change in it.
                let cached_dir = || if a.is_dir() { self.dir_cache().get(&ino).cloned() } else { None };
                let st = match dir_hint {
                    Some((fd, name)) => stat_host(fd, name),
                    None if ino == ROOT => stat_host(up.root_fd(), b"."),
                    None if let Some(fd) = cached_dir() => stat_host(fd.as_fd(), b""),
                    None => self.parent_fd(t, ino).and_then(|(fd, name)| stat_host(fd.as_fd(), &name)),
                };
                if let Ok(st) = st {
                    a.atime = Ts::atime(&st);
                    a.mtime = Ts::mtime(&st);
                    a.ctime = Ts::ctime(&st);
                    // (Directories too: their size is the host's, as a
                    // remount would load it.)
                    if n.up == Up::Full {
                        a.size = st.st_size as u64;
                        a.blocks = st.st_blocks as u64;
                    }
                }
            }
        }
        let nlink = match &n.dir {
            Some(d) => 2 + t.subdirs(d),
            None => n.nlink(),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.blocks,
            atime: to_system_time(a.atime),
            mtime: to_system_time(a.mtime),
            ctime: to_system_time(a.ctime),
            crtime: to_system_time(a.ctime),
            kind: file_type(a.mode),
            perm: (a.mode & 0o7777) as u16,
            nlink,
            uid: self.uid_out(a.uid),
            gid: self.gid_out(a.gid),
            rdev: a.rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    fn symlink_target(&self, t: &Tree, ino: Ino) -> io::Result<Vec<u8>> {
        let n = t.node(ino);
        if n.attr.kind() != libc::S_IFLNK {
            return Err(err(libc::EINVAL));
        }
        if n.up == Up::No {
            return match self.lower_entry(n) {
                Some((_, Entry { kind: EntryKind::Symlink { target }, .. })) => Ok(target.clone()),
                _ => Err(err(libc::EIO)),
            };
        }
        let (fd, name) = self.parent_fd(t, ino)?;
        if n.stand_in {
            let f = self.upper()?.open_file(fd.as_fd(), &name, OFlags::RDONLY)?;
            let mut v = Vec::new();
            io::Read::read_to_end(&mut &f, &mut v)?;
            return Ok(v);
        }
        rustix::fs::readlinkat(fd, OsStr::from_bytes(&name), Vec::new()).map(|c| c.into_bytes()).map_err(errno)
    }
}

impl FsInner {
    /// Opens the file behind `ino`; returns it, whether it is writable,
    /// whether it is a lower object (never written: passthrough is safe)
    /// and, for a lower file being fetched in parts, what fills a range in
    /// before it is read.
    fn do_open(&self, ino: Ino, flags: i32) -> io::Result<Opened> {
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let trunc = flags & libc::O_TRUNC != 0;
        let file = if writable || trunc {
            self.upper()?;
            let prepared = if trunc { None } else { self.precopy(ino, Copy::Full) };
            let r = (|| {
                let mut t = self.tree_write();
                let n = t.get(ino).ok_or_else(|| err(libc::ENOENT))?;
                if !n.attr.is_reg() || n.stand_in {
                    return Err(err(libc::EINVAL));
                }
                let was = n.up;
                let made = match was {
                    Up::Full => None,
                    // Removed while open: no name left to copy up to.
                    _ if n.nlink() == 0 => return Err(err(libc::ENOENT)),
                    // O_TRUNC (atomic_o_trunc): the content would be thrown away.
                    _ if trunc => self.copy_up_file(&mut t, ino, Copy::Head(0), None)?,
                    _ => self.copy_up_file(&mut t, ino, Copy::Full, prepared.as_ref())?,
                };
                if was != Up::Full {
                    // What stat says now comes from the host file (its change
                    // time, blocks); the answer to OPEN carries no attributes.
                    self.invalidate_attrs(ino);
                }
                // (O_TRUNC opens again: truncating sets the times even of an
                // empty file.)
                if let Some(f) = made.filter(|_| !trunc) {
                    return Ok(f);
                }
                let (pfd, name) = self.parent_fd(&t, ino)?;
                let mut oflags = if acc == libc::O_WRONLY { OFlags::WRONLY } else { OFlags::RDWR };
                if trunc {
                    oflags |= OFlags::TRUNC;
                }
                self.upper()?.open_file(pfd.as_fd(), &name, oflags)
            })();
            self.drop_precopy(prepared);
            (r?, false, None)
        } else {
            let t = self.tree_read();
            let n = t.get(ino).ok_or_else(|| err(libc::ENOENT))?;
            if !n.attr.is_reg() || n.stand_in {
                return Err(err(libc::EINVAL));
            }
            if n.up == Up::Full {
                let (pfd, name) = self.parent_fd(&t, ino)?;
                (self.upper()?.open_file(pfd.as_fd(), &name, OFlags::RDONLY)?, false, None)
            } else {
                let (src, e) = self.lower_entry(n).ok_or_else(|| err(libc::EIO))?;
                let (f, fill) = match src.open_for_reader(e)? {
                    Content::Whole(f) => (f, None),
                    Content::Partial(p) => (p.file, Some(p.fill)),
                };
                // An object whose size is not the entry's (a store damaged
                // after the pull, which verified it) is an I/O error: read as
                // it is (passthrough reads the object itself), the file would
                // end early or run on without anyone being told. Checked at
                // the first open in the mount only: an fstat at every open
                // cost ~10% of the server's CPU time in `tar` of a warm tree.
                // (A copy-up reads only what it needs, and fails if that is
                // not there.)
                if !n.object_size_checked.load(Ordering::Relaxed) {
                    if rustix::fs::fstat(&f).map_err(errno)?.st_size as u64 != copy_up::entry_size(e) {
                        return Err(err(libc::EIO));
                    }
                    n.object_size_checked.store(true, Ordering::Relaxed);
                }
                (f, true, fill)
            }
        };
        Ok(Opened { file: file.0, writable, lower: file.1, fill: file.2 })
    }

    /// An open file of `ino`, if any handle holds one.
    fn open_file_of(&self, ino: Ino) -> Option<Arc<File>> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.values().filter(|h| h.ino == ino).find_map(|h| match &h.kind {
            HandleKind::File { file, .. } => Some(file.read().unwrap_or_else(|p| p.into_inner()).clone()),
            HandleKind::Dir(_) => None,
        })
    }

    fn entry_reply(&self, reply: ReplyEntry, r: io::Result<(Ino, FileAttr)>) {
        match r {
            Ok((_, a)) => reply.entry_with_ttls(&UPPER_TTL, &UPPER_TTL, &a, Generation(0)),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn xattr_reply(reply: ReplyXattr, size: u32, data: io::Result<Vec<u8>>) {
        match data {
            Err(e) => reply.error(eno(e)),
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
        }
    }

    /// Opens a file and answers (see [`Filesystem::open`]) `caller`.
    /// `kill_set_id`: an O_TRUNC open by a caller without CAP_FSETID, which
    /// clears set-id bits (FUSE_HANDLE_KILLPRIV_V2 leaves that to us).
    fn open_reply(&self, ino: Ino, flags: i32, kill_set_id: bool, caller: u32, reply: ReplyOpen) {
        let _op = self.op(Op::Open, caller);
        if self.upper.is_none() {
            let mut io = self.io();
            if let Some(st) = io.get_mut(&ino) {
                if let (Some(id), Some(object)) = (&st.backing, &st.object) {
                    st.passthrough += 1;
                    let file = RwLock::new(object.clone());
                    let fh = self.add_handle(
                        ino,
                        HandleKind::File { file, writable: false, mode: IoMode::Passthrough, fill: no_fill() },
                    );
                    return reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, id);
                }
            }
        }
        let Opened { file, writable, lower, fill } = match self.do_open(ino, flags) {
            Ok(x) => x,
            Err(e) => return reply.error(eno(e)),
        };
        if lower && !writable && fill.is_none() {
            self.prefetch_siblings(ino, &file);
        }
        if kill_set_id {
            if let Err(e) = self.kill_set_id(ino) {
                return reply.error(eno(e));
            }
        }
        let to_server = writable && self.killpriv.load(Ordering::Relaxed) && {
            let t = self.tree_read();
            t.get(ino).is_some_and(|n| self.writes_must_come_here(&t, ino, n.attr.mode))
        };
        let mut io = self.io();
        let st = io.entry(ino).or_default();
        // The kernel wants every open of an inode with a backing file to use
        // that same file, and refuses to mix passthrough and cached opens.
        // So: lower objects only on a read-only mount (a writer could come
        // later and must not get the object), upper files always (readers
        // and writers share the upper file), and never next to cached opens.
        // (A file fetched in parts is read here, after its range is in.)
        let eligible = if lower { self.upper.is_none() && !writable && fill.is_none() } else { !to_server };
        if eligible && st.cached == 0 && self.passthrough.load(Ordering::Relaxed) {
            if st.backing.is_none() {
                match reply.open_backing(&file) {
                    Ok(id) => st.backing = Some(id),
                    // Not permitted after all (e.g. no CAP_SYS_ADMIN): plain reads from now on.
                    Err(_) => self.passthrough.store(false, Ordering::Relaxed),
                }
            }
            if let Some(id) = &st.backing {
                st.passthrough += 1;
                let file = Arc::new(file);
                if self.upper.is_none() {
                    st.object = Some(file.clone());
                }
                let fh = self.add_handle(
                    ino,
                    HandleKind::File { file: RwLock::new(file), writable, mode: IoMode::Passthrough, fill: no_fill() },
                );
                return reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, id);
            }
        }
        if st.passthrough > 0 {
            if let Some(id) = &st.backing {
                // The kernel fails (EIO) any open of an inode in passthrough
                // mode that does not name its backing file; with
                // FOPEN_DIRECT_IO this one's reads and writes still come
                // here (a writer to a set-id file next to a reader).
                st.passthrough += 1;
                let file = RwLock::new(Arc::new(file));
                let fh = self.add_handle(
                    ino,
                    HandleKind::File { file, writable, mode: IoMode::Direct, fill: RwLock::new(fill) },
                );
                let fl = FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH;
                return reply.opened_passthrough(FileHandle(fh), fl, id);
            }
        }
        st.cached += 1;
        drop(io);
        let mode = IoMode::Cached;
        let fh = self.add_handle(
            ino,
            HandleKind::File { file: RwLock::new(Arc::new(file)), writable, mode, fill: RwLock::new(fill) },
        );
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH);
    }

    /// On the first open of a lower file of its directory, when that file
    /// is not in memory: reads ahead the directory's other small lower files
    /// (see [`crate::prefetch`]).
    fn prefetch_siblings(&self, ino: Ino, opened: &File) {
        use crate::prefetch::{is_cached, BYTES_PER_DIR, PER_DIR, SMALL_FILE};
        let Some(parent) = self.tree_read().get(ino).map(|n| n.link.parent) else { return };
        if !self.prefetch.first_visit(parent) || is_cached(opened) {
            return;
        }
        let objects: Vec<crate::source::ObjectRef> = {
            let t = self.tree_read();
            let Some(d) = t.dir(parent) else { return };
            let mut budget = BYTES_PER_DIR;
            d.children
                .values()
                .filter(|&&c| c != ino)
                .filter_map(|&c| {
                    let n = t.get(c)?;
                    let small = n.attr.is_reg() && n.attr.size > 0 && n.attr.size <= SMALL_FILE;
                    if !small || n.up != Up::No {
                        return None;
                    }
                    let (src, e) = self.lower_entry(n)?;
                    Some((n.attr.size, src.object(e)?))
                })
                .take_while(|&(size, _)| {
                    budget = budget.saturating_sub(size);
                    budget > 0
                })
                .map(|(_, object)| object)
                .take(PER_DIR)
                .collect()
        };
        self.prefetch.fetch(objects);
    }

    /// Where the session's notifier goes once the session exists.
    pub(crate) fn set_notifier(&self, notifier: fuser::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    fn dir_snapshot(&self, ino: Ino) -> io::Result<Vec<DirEnt>> {
        let t = self.tree_read();
        let n = t.get(ino).ok_or_else(|| err(libc::ENOENT))?;
        let d = n.dir.as_ref().ok_or_else(|| err(libc::ENOTDIR))?;
        let parent = if ino == ROOT { ROOT } else { n.link.parent };
        let mut v = Vec::with_capacity(d.children.len() + 2);
        v.push(DirEnt { off: 1, ino, kind: FileType::Directory, name: (*b".").into() });
        v.push(DirEnt { off: 2, ino: parent, kind: FileType::Directory, name: (*b"..").into() });
        for (name, &c) in &d.children {
            let n = t.node(c);
            let off = n.link_to(ino, name).map_or(u64::MAX >> 1, |l| l.cookie);
            v.push(DirEnt { off, ino: c, kind: file_type(n.attr.mode), name: name.clone() });
        }
        v.sort_unstable_by_key(|e| e.off);
        Ok(v)
    }
}

fn stat_host(dir: BorrowedFd, name: &[u8]) -> io::Result<rustix::fs::Stat> {
    let (name, flags) = if name.is_empty() || name == b"." {
        (OsStr::from_bytes(b""), AtFlags::EMPTY_PATH)
    } else {
        (OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
    };
    rustix::fs::statat(dir, name, flags).map_err(errno)
}

/// What fuser serves: the state ([`FsInner`]), shared with a pool of I/O
/// workers.
///
/// One thread reads requests and answers most of them itself; requests that
/// may block on I/O (READ, FSYNC, FALLOCATE, an OPEN for writing that
/// copies a file up, a truncating SETATTR) go to the workers,
/// which answer when done, so a slow request never holds up the others.
/// WRITE stays on the reading thread: its data lives in the request buffer
/// (handing it over means copying it), and the host write rarely blocks.
/// Measured (see lib.rs): with two threads reading requests every round trip
/// got slower (the kernel hands each request to the thread that waited
/// longest, so consecutive requests bounce between threads and cores).
pub(crate) struct StrataFs {
    inner: Arc<FsInner>,
    pool: Pool,
}

impl std::ops::Deref for StrataFs {
    type Target = FsInner;
    fn deref(&self) -> &FsInner {
        &self.inner
    }
}

impl StrataFs {
    pub fn new(
        tree: Tree,
        sources: Vec<Arc<dyn LayerSource>>,
        upper: Option<Upper>,
        statfs_fd: Option<OwnedFd>,
        want_passthrough: bool,
        workers: usize,
        poller: Option<Arc<crate::poll::Poller>>,
    ) -> Self {
        StrataFs {
            inner: Arc::new(FsInner::new(tree, sources, upper, statfs_fd, want_passthrough, poller)),
            pool: Pool::new(workers),
        }
    }

    /// The state shared with the session (see [`FsInner::set_notifier`]).
    pub(crate) fn shared(&self) -> Arc<FsInner> {
        self.inner.clone()
    }

    /// Runs `job` on an I/O worker.
    fn offload(&self, job: impl FnOnce(&FsInner) + Send + 'static) {
        let inner = self.inner.clone();
        self.pool.run(move || job(&inner));
    }
}

impl Drop for StrataFs {
    fn drop(&mut self) {
        if let Some(p) = &self.inner.poller {
            p.stop();
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of worker threads taking jobs from one queue.
struct Pool {
    tx: Option<std::sync::mpsc::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    fn new(n: usize) -> Pool {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..n.max(1))
            .filter_map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("strata-io-{i}"))
                    .spawn(move || loop {
                        // The queue's lock is held only while taking a job.
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the filesystem is gone
                        }
                    })
                    .ok()
            })
            .collect();
        Pool { tx: Some(tx), threads }
    }

    fn run(&self, job: impl FnOnce() + Send + 'static) {
        match &self.tx {
            // Inline when no worker could be started (or none is left).
            Some(tx) if !self.threads.is_empty() => {
                if let Err(e) = tx.send(Box::new(job)) {
                    (e.0)()
                }
            }
            _ => job(),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
