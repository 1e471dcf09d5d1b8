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
//! has cached opens gets cached opens only. `InodeIo` keeps that book.

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

use crate::source::LayerSource;
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
/// last close (each holds an open file in the kernel).
const KEPT_BACKING_MAX: usize = 4096;

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn eno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
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
    ino: Ino,
    kind: FileType,
    name: Box<[u8]>,
}

enum HandleKind {
    File { file: RwLock<Arc<File>>, writable: bool, mode: IoMode },
    Dir(Arc<Vec<DirEnt>>),
}

/// What a copy-up of a regular file takes along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    /// Metadata only; the content stays below (metacopy).
    Meta,
    /// Metadata and content.
    Full,
    /// Metadata, and the file is about to be truncated: no content.
    Empty,
}

/// How the kernel was told to do I/O on an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoMode {
    /// Through the page cache (reads and writes come to us).
    Cached,
    /// Straight to the backing file in the kernel (FUSE passthrough).
    Passthrough,
    /// No page cache: used while the inode has passthrough opens, which the
    /// kernel does not let coexist with cached ones.
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
            io: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            ro_listings: Mutex::new(HashMap::new()),
            dir_cache_cap: dir_cache_cap(),
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
        // An unlinked directory has no path (path_of would give a prefix).
        if ino != ROOT && t.get(ino).is_none_or(|n| n.nlink() == 0) {
            return Err(err(libc::ENOENT));
        }
        let fd = Arc::new(self.upper()?.dir(&t.path_of(ino))?);
        let mut cache = self.dir_cache();
        if cache.len() >= self.dir_cache_cap {
            cache.clear();
        }
        cache.insert(ino, fd.clone());
        Ok(fd)
    }

    /// Forgets the cached fd of a directory that is being removed.
    fn dir_removed(&self, ino: Ino) {
        self.dir_cache().remove(&ino);
    }

    fn dir_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, Arc<OwnedFd>>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts timing a request (when `STRATA_FS_STATS` is set).
    fn op(&self, op: Op) -> Option<OpTimer<'_>> {
        if let Some(p) = &self.poller {
            p.on_request();
        }
        self.stats.as_ref().map(|stats| OpTimer { stats, op, start: std::time::Instant::now() })
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
                IoMode::Passthrough => {
                    st.passthrough = st.passthrough.saturating_sub(1);
                    // A read-only mount keeps the registered backing file
                    // of an immutable lower object for the next open.
                    if st.passthrough == 0 && self.upper.is_some() {
                        st.backing = None;
                    }
                }
                IoMode::Direct => {}
            }
            if st.cached == 0 && st.passthrough == 0 && st.backing.is_none() {
                io.remove(&ino);
            }
            // Kept backing files are bounded: drop the unused ones when many.
            if io.len() > KEPT_BACKING_MAX {
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
        if name.starts_with(upper::RESERVED_PREFIX) {
            return Ok(None);
        }
        let n = t.get(ino).ok_or_else(|| err(libc::ENOENT))?;
        Ok(if n.up == Up::No || self.upper.is_none() {
            self.lower_entry(n).and_then(|(_, e)| e.xattrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        } else if n.no_xattrs {
            None
        } else {
            let up = self.upper()?;
            let (pfd, nm) = self.entry_fd(t, ino)?;
            up.get_xattr(pfd.as_fd(), &nm, name)?
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

    /// The listing of directory `ino`: from its handle, or on a read-only
    /// mount (file handle 0) from the listings kept per directory.
    fn listing(&self, ino: Ino, fh: u64) -> Result<Arc<Vec<DirEnt>>, Errno> {
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
        match &h.kind {
            HandleKind::Dir(ents) => Ok(ents.clone()),
            HandleKind::File { .. } => Err(Errno::ENOTDIR),
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

    /// The node's attributes; upper nodes are refreshed from the host (times,
    /// size) with the recorded type, owner and mode.
    fn attr(&self, t: &Tree, ino: Ino, dir_hint: Option<(BorrowedFd, &[u8])>) -> FileAttr {
        let n = t.node(ino);
        let mut a = n.attr;
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
                    a.atime = Ts { sec: st.st_atime, nsec: st.st_atime_nsec as u32 };
                    a.mtime = Ts { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 };
                    a.ctime = Ts { sec: st.st_ctime, nsec: st.st_ctime_nsec as u32 };
                    if n.up == Up::Full && !a.is_dir() {
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
            uid: a.uid,
            gid: a.gid,
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

    // ---- copy-up -------------------------------------------------------

    /// Copies the lower xattrs of a node onto its new upper entry.
    fn copy_lower_xattrs(&self, n: &Node, dir: BorrowedFd, name: &[u8]) {
        if let Some((_, e)) = self.lower_entry(n) {
            if let Some(up) = &self.upper {
                // An image must not plant strata's own records (a forged
                // metacopy digest would expose another image's file).
                for (k, v) in e.xattrs.iter().filter(|(k, _)| !k.starts_with(upper::RESERVED_PREFIX)) {
                    // Best effort: a symlink cannot carry user.* xattrs, like on any fs.
                    let _ = up.set_xattr(dir, name, k, v, 0);
                }
            }
        }
    }

    /// Whether a copy-up of `ino` made now carries no xattrs on the host: the
    /// lower entry has none, and the upper parent has none it could pass on
    /// (a default ACL).
    fn copied_without_xattrs(&self, t: &Tree, ino: Ino) -> bool {
        let n = t.node(ino);
        let own = self
            .lower_entry(n)
            .is_some_and(|(_, e)| e.xattrs.iter().any(|(k, _)| !k.starts_with(upper::RESERVED_PREFIX)));
        !own && t.get(n.link.parent).is_some_and(|p| p.no_xattrs)
    }

    /// Runs `f` and restores the parent directory's timestamps afterwards (a
    /// copy-up is not a change of the parent).
    fn keeping_times<R>(&self, dir: BorrowedFd, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let st = rustix::fs::fstat(dir).map_err(errno)?;
        let r = f()?;
        let up = self.upper()?;
        let _ = up.set_times(
            dir,
            b"",
            Some(Ts { sec: st.st_atime, nsec: st.st_atime_nsec as u32 }),
            Some(Ts { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 }),
        );
        Ok(r)
    }

    /// Makes sure directory `ino` exists in the upper directory.
    fn ensure_upper_dir(&self, t: &mut Tree, ino: Ino) -> io::Result<()> {
        let n = t.node(ino);
        if !n.attr.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        if n.up == Up::Full || ino == ROOT {
            return Ok(());
        }
        let parent = n.link.parent;
        self.ensure_upper_dir(t, parent)?;
        let up = self.upper()?;
        let (pfd, name) = self.parent_fd(t, ino)?;
        let n = t.node(ino);
        let attr = n.attr;
        let no_xattrs = self.copied_without_xattrs(t, ino);
        let mut rec = false;
        self.keeping_times(pfd.as_fd(), || {
            match rustix::fs::mkdirat(&pfd, OsStr::from_bytes(&name), up.create_perm(attr.mode)) {
                Ok(()) => {}
                // Left by an earlier attempt: it may carry anything.
                Err(rustix::io::Errno::EXIST) => rec = true,
                Err(e) => return Err(errno(e)),
            }
            up.write_meta(pfd.as_fd(), &name, &attr, &mut rec)?;
            self.copy_lower_xattrs(n, pfd.as_fd(), &name);
            up.set_times(pfd.as_fd(), &name, Some(attr.atime), Some(attr.mtime))
        })?;
        let n = t.node_mut(ino);
        n.up = Up::Full;
        n.meta_rec = rec;
        n.no_xattrs = no_xattrs && !rec;
        Ok(())
    }

    /// Copies a non-directory's metadata up: a lower regular file becomes an
    /// empty metacopy file, anything else is created whole.
    fn copy_up_meta(&self, t: &mut Tree, ino: Ino) -> io::Result<()> {
        let n = t.node(ino);
        if n.up != Up::No {
            return Ok(());
        }
        if n.attr.is_dir() {
            return self.ensure_upper_dir(t, ino);
        }
        if n.attr.is_reg() {
            if n.nlink() > 1 {
                return self.copy_up_full(t, ino);
            }
            return self.copy_up_file(t, ino, Copy::Meta, None).map(drop);
        }
        let parent = n.link.parent;
        self.ensure_upper_dir(t, parent)?;
        let up = self.upper()?;
        let (pfd, name) = self.parent_fd(t, ino)?;
        let attr = t.node(ino).attr;
        let target = if attr.kind() == libc::S_IFLNK { self.symlink_target(t, ino)? } else { Vec::new() };
        let mut stand_in = false;
        let no_xattrs = self.copied_without_xattrs(t, ino);
        self.keeping_times(pfd.as_fd(), || {
            stand_in = self.create_special(up, pfd.as_fd(), &name, &attr, &target)?;
            self.copy_lower_xattrs(t.node(ino), pfd.as_fd(), &name);
            up.set_times(pfd.as_fd(), &name, Some(attr.atime), Some(attr.mtime))
        })?;
        let n = t.node_mut(ino);
        n.up = Up::Full;
        n.stand_in = stand_in;
        n.no_xattrs = no_xattrs;
        Ok(())
    }

    /// Creates a symlink, fifo, socket or device node in the upper directory
    /// with the given attributes; returns true when it had to become a stand-in.
    fn create_special(&self, up: &Upper, dir: BorrowedFd, name: &[u8], attr: &Attr, target: &[u8]) -> io::Result<bool> {
        let os = OsStr::from_bytes(name);
        let made = match attr.kind() {
            libc::S_IFLNK => rustix::fs::symlinkat(OsStr::from_bytes(target), dir, os),
            kind => {
                let ft = rustix::fs::FileType::from_raw_mode(kind);
                rustix::fs::mknodat(dir, os, ft, up.create_perm(attr.mode), Upper::host_dev(attr.rdev))
            }
        };
        match made {
            Ok(()) => {
                if up.write_meta(dir, name, attr, &mut false)? {
                    return Ok(false);
                }
            }
            Err(rustix::io::Errno::PERM) | Err(rustix::io::Errno::ACCESS) => {}
            Err(e) => return Err(errno(e)),
        }
        up.make_stand_in(dir, name, attr, target)?;
        Ok(true)
    }

    /// Copies a lower (or metacopy) regular file up with its content.
    fn copy_up_full(&self, t: &mut Tree, ino: Ino) -> io::Result<()> {
        let n = t.node(ino);
        match n.up {
            Up::Full => Ok(()),
            _ if !n.attr.is_reg() => self.copy_up_meta(t, ino),
            _ => self.copy_up_file(t, ino, Copy::Full, None).map(drop),
        }
    }

    /// Copies a lower regular file up. `prepared`: a file in the upper root
    /// that already holds the content (see [`FsInner::precopy`]).
    /// Returns the new upper file opened read-write when this made it (not
    /// for metadata-only copies, nor when `prepared` was moved into place),
    /// so that an open for writing need not open it again.
    fn copy_up_file(&self, t: &mut Tree, ino: Ino, how: Copy, prepared: Option<&[u8]>) -> io::Result<Option<File>> {
        let with_content = how != Copy::Meta;
        let up = self.upper()?;
        let n = t.node(ino);
        let (parent, was) = (n.link.parent, n.up);
        self.ensure_upper_dir(t, parent)?;
        let (pfd, name) = self.parent_fd(t, ino)?;
        let n = t.node(ino);
        let (src, entry) = self.lower_entry(n).ok_or_else(|| err(libc::EIO))?;
        let digest = match &entry.kind {
            EntryKind::File { digest, .. } => *digest,
            _ => return Err(err(libc::EIO)),
        };
        let attr = n.attr;
        let no_xattrs = self.copied_without_xattrs(t, ino);
        let mut rec = false;
        let mut made: Option<File> = None;
        if was == Up::Meta {
            // Metadata is already up; fill in the content, keep the times.
            let st = rustix::fs::statat(&pfd, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
            if how == Copy::Full {
                let out = up.open_file(pfd.as_fd(), &name, OFlags::WRONLY)?;
                copy_content(&src.open_content(entry)?, &out, attr.size)?;
                out.sync_data().ok();
            }
            up.set_metacopy(pfd.as_fd(), &name, None)?;
            up.set_times(
                pfd.as_fd(),
                &name,
                Some(Ts { sec: st.st_atime, nsec: st.st_atime_nsec as u32 }),
                Some(Ts { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 }),
            )?;
        } else {
            // Build the copy under a temporary name, then move it into place.
            let tmp = format!(".wh..wh..cu.{ino}").into_bytes();
            self.keeping_times(pfd.as_fd(), || {
                let out = match prepared.filter(|_| how == Copy::Full) {
                    Some(p) => {
                        upper::unlink_if_exists(pfd.as_fd(), &tmp, false)?;
                        rustix::fs::renameat(up.root_fd(), OsStr::from_bytes(p), &pfd, OsStr::from_bytes(&tmp))
                            .map_err(errno)?;
                        None
                    }
                    None => {
                        let create = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL;
                        // A leftover of an interrupted copy-up is in the way
                        // only after a crash: remove it then, not every time.
                        let out = match up.open_file(pfd.as_fd(), &tmp, create) {
                            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                                upper::unlink_if_exists(pfd.as_fd(), &tmp, false)?;
                                up.open_file(pfd.as_fd(), &tmp, create)?
                            }
                            r => r?,
                        };
                        if how == Copy::Full {
                            copy_content(&src.open_content(entry)?, &out, attr.size)?;
                        }
                        Some(out)
                    }
                };
                // Through the fd where we made the file (no path walks).
                match &out {
                    Some(f) => {
                        if !with_content {
                            up.set_metacopy_file(f, &digest)?;
                        }
                        rec = up.write_meta_file(f, &attr)?;
                    }
                    None => {
                        up.write_meta(pfd.as_fd(), &tmp, &attr, &mut rec)?;
                    }
                }
                self.copy_lower_xattrs(n, pfd.as_fd(), &tmp);
                match &out {
                    Some(f) => up.set_times_file(f, attr.atime, attr.mtime)?,
                    None => up.set_times(pfd.as_fd(), &tmp, Some(attr.atime), Some(attr.mtime))?,
                }
                if with_content {
                    made = out;
                }
                rustix::fs::renameat(&pfd, OsStr::from_bytes(&tmp), &pfd, OsStr::from_bytes(&name)).map_err(errno)
            })?;
            // The other names of a hard link group point at the same copy.
            let others: Vec<(Ino, Box<[u8]>)> = n.more.iter().map(|l| (l.parent, l.name.clone())).collect();
            for (p, other) in others {
                self.ensure_upper_dir(t, p)?;
                let ofd = self.upper_dir(t, p)?;
                self.keeping_times(ofd.as_fd(), || {
                    rustix::fs::linkat(
                        &pfd,
                        OsStr::from_bytes(&name),
                        &ofd,
                        OsStr::from_bytes(&other),
                        AtFlags::empty(),
                    )
                    .map_err(errno)
                })?;
            }
            let n = t.node_mut(ino);
            n.meta_rec = rec;
            n.no_xattrs = no_xattrs;
        }
        t.node_mut(ino).up = if with_content { Up::Full } else { Up::Meta };
        if with_content {
            // Open readers switch to the copy so they see later writes the way
            // the page cache does.
            let handles: Vec<Arc<Handle>> = self
                .handles
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|h| h.ino == ino)
                .cloned()
                .collect();
            if !handles.is_empty() {
                let f = Arc::new(up.open_file(pfd.as_fd(), &name, OFlags::RDONLY)?);
                for h in handles {
                    if let HandleKind::File { file, .. } = &h.kind {
                        *file.write().unwrap_or_else(|p| p.into_inner()) = f.clone();
                    }
                }
            }
        }
        Ok(made)
    }

    /// Copies a large lower file's content into a temporary file in the
    /// upper root without holding the tree lock, so that other requests go on
    /// meanwhile; the copy-up under the lock then only moves it into place.
    fn precopy(&self, ino: Ino) -> Option<Vec<u8>> {
        const WORTH_IT: u64 = 1 << 20;
        let up = self.upper.as_ref()?;
        let (src, entry) = {
            let t = self.tree_read();
            let n = t.get(ino)?;
            if n.up != Up::No || !n.attr.is_reg() || n.attr.size < WORTH_IT {
                return None;
            }
            self.lower_entry(n)?
        };
        self.drop_page_cache_meanwhile(ino);
        let tmp = format!(".wh..wh..cu.{ino}.{}", self.next_fh.fetch_add(1, Ordering::Relaxed)).into_bytes();
        let r = (|| {
            let out = up.open_file(up.root_fd(), &tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?;
            copy_content(&src.open_content(entry)?, &out, entry_size(entry))
        })();
        match r {
            Ok(()) => Some(tmp),
            Err(_) => {
                let _ = upper::unlink_if_exists(up.root_fd(), &tmp, false);
                None
            }
        }
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
        let paths: Vec<std::path::PathBuf> = {
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
                    Some((n.attr.size, src.content_path(e)?))
                })
                .take_while(|&(size, _)| {
                    budget = budget.saturating_sub(size);
                    budget > 0
                })
                .map(|(_, path)| path)
                .take(PER_DIR)
                .collect()
        };
        self.prefetch.fetch(paths);
    }

    /// Where the session's notifier goes once the session exists.
    pub(crate) fn set_notifier(&self, notifier: fuser::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Has the kernel drop the page cache of `ino` (filled by cached reads of
    /// the lower file) on another thread while the copy-up copies.
    ///
    /// The first open after the copy-up is a passthrough open, and the
    /// kernel empties the inode's page cache at every open without
    /// FOPEN_KEEP_CACHE: with 1 GiB cached that took 0.11 s of the caller's
    /// time on top of the copy (0.41 s). Done here, in parallel with the
    /// copy, the open finds it empty: appending a byte to a 1 GiB lower file
    /// read before took 0.53 s, now 0.40 s (kernel overlayfs 0.38-0.46 s).
    /// A dedicated thread, not a worker:
    /// the invalidation waits for page locks that a read being served by a
    /// worker may hold.
    fn drop_page_cache_meanwhile(&self, ino: Ino) {
        let Some(notifier) = self.notifier.get().cloned() else { return };
        let _ = std::thread::Builder::new().name("strata-inval".into()).spawn(move || {
            // ENOENT when the kernel holds no inode for it: nothing to drop.
            let _ = notifier.inval_inode(INodeNo(ino), 0, -1);
        });
    }

    /// Copies a node and, for a directory, everything below it, fully up.
    fn copy_up_tree(&self, t: &mut Tree, ino: Ino) -> io::Result<()> {
        if !t.node(ino).attr.is_dir() {
            return self.copy_up_full(t, ino);
        }
        self.ensure_upper_dir(t, ino)?;
        let children: Vec<Ino> = t.dir(ino).map(|d| d.children.values().copied().collect()).unwrap_or_default();
        for c in children {
            self.copy_up_tree(t, c)?;
        }
        Ok(())
    }

    /// After a directory moved: nothing below it covers a lower path any
    /// more, so its whiteouts are stale; drop them.
    fn forget_lower_below(&self, t: &mut Tree, dir: Ino) -> io::Result<()> {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            type Children = Vec<(Box<[u8]>, Ino)>;
            let (children, hidden): (Children, Vec<Box<[u8]>>) = match t.dir_mut(d) {
                Some(x) => (
                    x.children.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    x.hidden.take().map(|h| h.into_iter().collect()).unwrap_or_default(),
                ),
                None => continue,
            };
            if !hidden.is_empty() {
                let fd = self.upper_dir(t, d)?;
                for h in hidden {
                    self.upper()?.remove_whiteout(fd.as_fd(), &h)?;
                }
            }
            for (name, c) in children {
                if let Some(n) = t.get_mut(c) {
                    if n.link.parent == d && n.link.name == name {
                        n.link.covers = false;
                    }
                    for l in n.more.iter_mut() {
                        if l.parent == d && l.name == name {
                            l.covers = false;
                        }
                    }
                    if n.attr.is_dir() {
                        stack.push(c);
                    }
                }
            }
        }
        Ok(())
    }

    fn make_opaque(&self, t: &mut Tree, dir: Ino) -> io::Result<()> {
        let fd = self.upper_dir(t, dir)?;
        self.upper()?.create_opaque(fd.as_fd())?;
        if let Some(d) = t.dir_mut(dir) {
            d.opaque = true;
        }
        Ok(())
    }

    // ---- creating names ------------------------------------------------

    /// Common start of every creation: checks and the upper parent. Returns
    /// the parent's upper fd and whether the name hides a lower entry.
    fn prepare_create(&self, t: &mut Tree, parent: Ino, name: &[u8]) -> io::Result<(Arc<OwnedFd>, bool)> {
        check_name(name)?;
        self.upper()?;
        let d = t.dir(parent).ok_or_else(|| err(libc::ENOTDIR))?;
        if d.children.contains_key(name) {
            return Err(err(libc::EEXIST));
        }
        let hidden = d.is_hidden(name);
        self.ensure_upper_dir(t, parent)?;
        let fd = self.upper_dir(t, parent)?;
        Ok((fd, hidden))
    }

    /// Owner and mode of a new entry: the caller's ids, the directory's group
    /// when it is setgid (and setgid for new subdirectories).
    fn new_attr(&self, t: &Tree, req: &Request, parent: Ino, mode: u32) -> Attr {
        let p = t.node(parent).attr;
        let mut mode = mode;
        let gid = if p.mode & libc::S_ISGID != 0 {
            if mode & libc::S_IFMT == libc::S_IFDIR {
                mode |= libc::S_ISGID;
            }
            p.gid
        } else {
            req.gid()
        };
        let n = now();
        Attr { mode, uid: req.uid(), gid, rdev: 0, size: 0, blocks: 0, atime: n, mtime: n, ctime: n }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_create(
        &self,
        t: &mut Tree,
        pfd: &Arc<OwnedFd>,
        parent: Ino,
        name: &[u8],
        attr: Attr,
        hidden: bool,
        stand_in: bool,
        rec: bool,
    ) -> (Ino, FileAttr) {
        let ino = self.link_new(t, parent, name, attr, hidden, stand_in, rec);
        (ino, self.attr(t, ino, Some((pfd.as_fd(), name))))
    }

    /// Links a node strata just created in the upper directory. `rec`: the
    /// host entry carries a `user.strata.meta` record.
    #[allow(clippy::too_many_arguments)]
    fn link_new(
        &self,
        t: &mut Tree,
        parent: Ino,
        name: &[u8],
        attr: Attr,
        hidden: bool,
        stand_in: bool,
        rec: bool,
    ) -> Ino {
        let mut node = Node::new(attr, None, Up::Full);
        node.stand_in = stand_in;
        node.meta_rec = rec;
        // A new host entry carries no xattrs unless the host's parent passed
        // one on (a default ACL).
        node.no_xattrs = t.node(parent).no_xattrs;
        // The reply to the creating request hands the kernel its reference.
        node.looked_up();
        let ino = t.alloc(node);
        t.add_link(ino, parent, name, hidden);
        if hidden {
            if let Some(d) = t.dir_mut(parent) {
                d.unhide(name);
            }
        }
        ino
    }

    /// Creates a regular file; the returned file is open read-write (the
    /// handle records whether the caller may write).
    fn do_create(&self, req: &Request, parent: Ino, name: &[u8], mode: u32) -> io::Result<(Ino, FileAttr, File)> {
        let mut t = self.tree_write();
        let (pfd, hidden) = self.prepare_create(&mut t, parent, name)?;
        let up = self.upper()?;
        let attr = self.new_attr(&t, req, parent, libc::S_IFREG | (mode & 0o7777));
        if hidden {
            up.remove_whiteout(pfd.as_fd(), name)?;
        }
        let file = up.open_file(pfd.as_fd(), name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL)?;
        // Owner, mode and attributes through the new fd: no name lookups.
        let rec = up.write_meta_file(&file, &attr)?;
        let ino = self.link_new(&mut t, parent, name, attr, hidden, false, rec);
        let a = self.attr(&t, ino, Some((file.as_fd(), b"")));
        Ok((ino, a, file))
    }

    fn do_mkdir(&self, req: &Request, parent: Ino, name: &[u8], mode: u32) -> io::Result<(Ino, FileAttr)> {
        let mut t = self.tree_write();
        let (pfd, hidden) = self.prepare_create(&mut t, parent, name)?;
        let up = self.upper()?;
        let attr = self.new_attr(&t, req, parent, libc::S_IFDIR | (mode & 0o7777));
        if hidden {
            up.remove_whiteout(pfd.as_fd(), name)?;
        }
        rustix::fs::mkdirat(&pfd, OsStr::from_bytes(name), up.create_perm(attr.mode)).map_err(errno)?;
        let mut rec = false;
        up.write_meta(pfd.as_fd(), name, &attr, &mut rec)?;
        let ino = self.link_new(&mut t, parent, name, attr, hidden, false, rec);
        if hidden {
            // Recreated over a deleted lower entry: hide what was below.
            self.make_opaque(&mut t, ino)?;
        }
        Ok((ino, self.attr(&t, ino, Some((pfd.as_fd(), name)))))
    }

    fn do_mknod(&self, req: &Request, parent: Ino, name: &[u8], mode: u32, rdev: u32) -> io::Result<(Ino, FileAttr)> {
        if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
            let (ino, a, _) = self.do_create(req, parent, name, mode)?;
            return Ok((ino, a));
        }
        if mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(err(libc::EINVAL));
        }
        let mut t = self.tree_write();
        let (pfd, hidden) = self.prepare_create(&mut t, parent, name)?;
        let up = self.upper()?;
        let mut attr = self.new_attr(&t, req, parent, mode);
        if matches!(mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK) {
            attr.rdev = rdev;
        }
        if hidden {
            up.remove_whiteout(pfd.as_fd(), name)?;
        }
        let stand_in = self.create_special(up, pfd.as_fd(), name, &attr, b"")?;
        Ok(self.finish_create(&mut t, &pfd, parent, name, attr, hidden, stand_in, true))
    }

    fn do_symlink(&self, req: &Request, parent: Ino, name: &[u8], target: &[u8]) -> io::Result<(Ino, FileAttr)> {
        let mut t = self.tree_write();
        let (pfd, hidden) = self.prepare_create(&mut t, parent, name)?;
        let up = self.upper()?;
        let mut attr = self.new_attr(&t, req, parent, libc::S_IFLNK | 0o777);
        attr.size = target.len() as u64;
        if hidden {
            up.remove_whiteout(pfd.as_fd(), name)?;
        }
        let stand_in = self.create_special(up, pfd.as_fd(), name, &attr, target)?;
        Ok(self.finish_create(&mut t, &pfd, parent, name, attr, hidden, stand_in, true))
    }

    fn do_link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> io::Result<()> {
        let mut t = self.tree_write();
        if t.get(ino).is_none_or(|n| n.attr.is_dir() || n.nlink() == 0) {
            return Err(err(libc::EPERM));
        }
        let (dfd, hidden) = self.prepare_create(&mut t, newparent, newname)?;
        self.copy_up_full(&mut t, ino)?;
        let up = self.upper()?;
        let (sfd, sname) = self.parent_fd(&t, ino)?;
        if hidden {
            up.remove_whiteout(dfd.as_fd(), newname)?;
        }
        rustix::fs::linkat(&sfd, OsStr::from_bytes(&sname), &dfd, OsStr::from_bytes(newname), AtFlags::empty())
            .map_err(errno)?;
        t.add_link(ino, newparent, newname, hidden);
        t.node(ino).looked_up();
        if hidden {
            if let Some(d) = t.dir_mut(newparent) {
                d.unhide(newname);
            }
        }
        Ok(())
    }

    // ---- removing names ------------------------------------------------

    fn do_remove(&self, parent: Ino, name: &[u8], want_dir: bool) -> io::Result<()> {
        let mut t = self.tree_write();
        let up = self.upper()?;
        let c = t.child(parent, name).ok_or_else(|| err(libc::ENOENT))?;
        let n = t.node(c);
        let is_dir = n.attr.is_dir();
        if want_dir && !is_dir {
            return Err(err(libc::ENOTDIR));
        }
        if !want_dir && is_dir {
            return Err(err(libc::EISDIR));
        }
        if is_dir && n.dir.as_ref().is_some_and(|d| !d.children.is_empty()) {
            return Err(err(libc::ENOTEMPTY));
        }
        let covers = n.link_to(parent, name).is_some_and(|l| l.covers);
        let in_upper = n.up != Up::No;
        self.ensure_upper_dir(&mut t, parent)?;
        let pfd = self.upper_dir(&t, parent)?;
        if in_upper {
            if is_dir {
                up.empty_dir(&t.path_of(c))?;
            }
            upper::unlink_if_exists(pfd.as_fd(), name, is_dir)?;
        }
        if is_dir {
            self.dir_removed(c);
        }
        if covers {
            up.create_whiteout(pfd.as_fd(), name)?;
            if let Some(d) = t.dir_mut(parent) {
                d.hide(name);
            }
        }
        t.remove_link(c, parent, name);
        if t.node(c).nlink() == 0 {
            t.free_subtree(c);
        }
        Ok(())
    }

    // ---- rename --------------------------------------------------------

    fn do_rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> io::Result<()> {
        let mut t = self.tree_write();
        let up = self.upper()?;
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(err(libc::EINVAL));
        }
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        check_name(newname)?;
        let s = t.child(parent, name).ok_or_else(|| err(libc::ENOENT))?;
        let d = t.child(newparent, newname);
        if t.dir(newparent).is_none() {
            return Err(err(libc::ENOTDIR));
        }
        if exchange && d.is_none() {
            return Err(err(libc::ENOENT));
        }
        if noreplace && d.is_some() {
            return Err(err(libc::EEXIST));
        }
        let s_dir = t.node(s).attr.is_dir();
        // A directory cannot move below itself.
        if s_dir || d.is_some_and(|d| t.node(d).attr.is_dir()) {
            let mut cur = newparent;
            while cur != ROOT {
                if cur == s || Some(cur) == d.filter(|_| exchange) {
                    return Err(err(libc::EINVAL));
                }
                cur = t.node(cur).link.parent;
            }
        }
        if let (Some(d), false) = (d, exchange) {
            if d == s {
                return Ok(());
            }
            let d_dir = t.node(d).attr.is_dir();
            if s_dir && !d_dir {
                return Err(err(libc::ENOTDIR));
            }
            if !s_dir && d_dir {
                return Err(err(libc::EISDIR));
            }
            if d_dir && t.dir(d).is_some_and(|x| !x.children.is_empty()) {
                return Err(err(libc::ENOTEMPTY));
            }
        }
        self.copy_up_tree(&mut t, s)?;
        if let (Some(d), true) = (d, exchange) {
            self.copy_up_tree(&mut t, d)?;
        }
        self.ensure_upper_dir(&mut t, parent)?;
        self.ensure_upper_dir(&mut t, newparent)?;
        let sfd = self.upper_dir(&t, parent)?;
        let dfd = self.upper_dir(&t, newparent)?;
        let s_covers = t.node(s).link_to(parent, name).is_some_and(|l| l.covers);
        let d_link_covers = d.and_then(|d| t.node(d).link_to(newparent, newname)).is_some_and(|l| l.covers);
        let d_hidden = t.dir(newparent).is_some_and(|x| x.is_hidden(newname));
        let (oname, nname) = (OsStr::from_bytes(name), OsStr::from_bytes(newname));
        if exchange {
            let d = d.ok_or_else(|| err(libc::ENOENT))?;
            rustix::fs::renameat_with(&sfd, oname, &dfd, nname, rustix::fs::RenameFlags::EXCHANGE).map_err(errno)?;
            t.remove_link(s, parent, name);
            t.remove_link(d, newparent, newname);
            t.add_link(s, newparent, newname, d_link_covers);
            t.add_link(d, parent, name, s_covers);
            for (node, covers_now) in [(s, d_link_covers), (d, s_covers)] {
                if t.node(node).attr.is_dir() {
                    self.forget_lower_below(&mut t, node)?;
                    if covers_now {
                        self.make_opaque(&mut t, node)?;
                    }
                }
            }
            return Ok(());
        }
        if let Some(d) = d {
            if t.node(d).attr.is_dir() && t.node(d).up == Up::Full {
                // Empty in the merged view; clear its whiteouts so the host
                // rename can replace it.
                up.empty_dir(&t.path_of(d))?;
            }
        }
        let host_flags = if noreplace { rustix::fs::RenameFlags::NOREPLACE } else { rustix::fs::RenameFlags::empty() };
        rustix::fs::renameat_with(&sfd, oname, &dfd, nname, host_flags).map_err(errno)?;
        if d_hidden {
            up.remove_whiteout(dfd.as_fd(), newname)?;
        }
        if s_covers {
            up.create_whiteout(sfd.as_fd(), name)?;
        }
        if let Some(d) = d {
            if t.node(d).attr.is_dir() {
                self.dir_removed(d);
            }
            t.remove_link(d, newparent, newname);
            if t.node(d).nlink() == 0 {
                t.free_subtree(d);
            }
        }
        t.remove_link(s, parent, name);
        let covers = d_link_covers || d_hidden;
        t.add_link(s, newparent, newname, covers);
        if d_hidden {
            if let Some(x) = t.dir_mut(newparent) {
                x.unhide(newname);
            }
        }
        if s_covers {
            if let Some(x) = t.dir_mut(parent) {
                x.hide(name);
            }
        }
        if s_dir {
            self.forget_lower_below(&mut t, s)?;
            if covers {
                self.make_opaque(&mut t, s)?;
            }
        }
        Ok(())
    }

    // ---- attributes ----------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: Ino,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
        kill_set_id: bool,
    ) -> io::Result<FileAttr> {
        let mut t = self.tree_write();
        let up = self.upper()?;
        let Some(n) = t.get(ino) else { return Err(err(libc::ENOENT)) };
        let mut mode = mode;
        if kill_set_id {
            let cur = n.attr.mode;
            let perm = mode.unwrap_or(cur) & 0o7777;
            let killed = without_set_id(cur, perm);
            if mode.is_some() || killed != perm {
                mode = Some(killed);
            }
        }
        let linked = t.node(ino).nlink() > 0 || ino == ROOT;
        if let Some(size) = size {
            if t.node(ino).attr.is_dir() {
                return Err(err(libc::EISDIR));
            }
            let via_handle = fh.and_then(|fh| self.handle(fh.0)).and_then(|h| match &h.kind {
                HandleKind::File { file, writable: true, .. } => {
                    Some(file.read().unwrap_or_else(|p| p.into_inner()).clone())
                }
                _ => None,
            });
            if linked {
                self.copy_up_full(&mut t, ino)?;
            }
            match via_handle {
                Some(f) if !linked || t.node(ino).up == Up::Full => f.set_len(size)?,
                _ => {
                    let (pfd, name) = self.parent_fd(&t, ino)?;
                    up.open_file(pfd.as_fd(), &name, OFlags::WRONLY)?.set_len(size)?;
                }
            }
            t.node_mut(ino).attr.size = size;
        }
        if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
            if !linked {
                let a = &mut t.node_mut(ino).attr;
                if let Some(m) = mode {
                    a.mode = (a.mode & libc::S_IFMT) | (m & 0o7777);
                }
                a.uid = uid.unwrap_or(a.uid);
                a.gid = gid.unwrap_or(a.gid);
                return Ok(self.attr(&t, ino, None));
            }
            let was = t.node(ino).attr;
            let mut a = was;
            if let Some(m) = mode {
                a.mode = (a.mode & libc::S_IFMT) | (m & 0o7777);
            }
            a.uid = uid.unwrap_or(a.uid);
            a.gid = gid.unwrap_or(a.gid);
            let ids_or_mode = mode.is_some() || uid.is_some() || gid.is_some();
            // A lower file's metadata-only copy-up is made with the new mode
            // and owner at once (not copied, then changed: 3 host calls less).
            let n = t.node(ino);
            let at_once = ids_or_mode && n.up == Up::No && was.is_reg() && n.nlink() <= 1;
            if at_once {
                t.node_mut(ino).attr = a;
            }
            if let Err(e) = self.copy_up_meta(&mut t, ino) {
                if at_once {
                    t.node_mut(ino).attr = was;
                }
                return Err(e);
            }
            let (pfd, name) = self.entry_fd(&t, ino)?;
            let mut rec = t.node(ino).meta_rec;
            let held = !ids_or_mode || at_once || up.write_meta(pfd.as_fd(), &name, &a, &mut rec)?;
            t.node_mut(ino).meta_rec = rec;
            if !held {
                let target = if a.kind() == libc::S_IFLNK { self.symlink_target(&t, ino)? } else { Vec::new() };
                let st = stat_host(pfd.as_fd(), &name)?;
                up.make_stand_in(pfd.as_fd(), &name, &a, &target)?;
                let n = t.node_mut(ino);
                (n.meta_rec, n.no_xattrs) = (true, false);
                up.set_times(
                    pfd.as_fd(),
                    &name,
                    Some(Ts { sec: st.st_atime, nsec: st.st_atime_nsec as u32 }),
                    Some(Ts { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 }),
                )?;
                t.node_mut(ino).stand_in = true;
            }
            let conv = |x: Option<TimeOrNow>| {
                x.map(|v| match v {
                    TimeOrNow::Now => now(),
                    TimeOrNow::SpecificTime(s) => ts_of(s),
                })
            };
            let (at, mt) = (conv(atime), conv(mtime));
            if at.is_some() || mt.is_some() {
                up.set_times(pfd.as_fd(), &name, at, mt)?;
                a.atime = at.unwrap_or(a.atime);
                a.mtime = mt.unwrap_or(a.mtime);
            }
            a.ctime = now();
            t.node_mut(ino).attr = a;
        }
        Ok(self.attr(&t, ino, None))
    }

    /// Clears the set-id bits of `ino` as the kernel would for a write or
    /// truncation by a caller without CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2
    /// leaves that to us); see [`without_set_id`].
    fn kill_set_id(&self, ino: Ino) -> io::Result<FileAttr> {
        self.do_setattr(ino, None, None, None, None, None, None, None, true)
    }

    /// Opens the file behind `ino`; returns it, whether it is writable and
    /// whether it is a lower object (never written: passthrough is safe).
    fn do_open(&self, ino: Ino, flags: i32) -> io::Result<(File, bool, bool)> {
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let trunc = flags & libc::O_TRUNC != 0;
        let file = if writable || trunc {
            self.upper()?;
            let prepared = if trunc { None } else { self.precopy(ino) };
            let r = (|| {
                let mut t = self.tree_write();
                let n = t.get(ino).ok_or_else(|| err(libc::ENOENT))?;
                if !n.attr.is_reg() || n.stand_in {
                    return Err(err(libc::EINVAL));
                }
                let made = match n.up {
                    Up::Full => None,
                    // O_TRUNC (atomic_o_trunc): the content would be thrown away.
                    _ if trunc => self.copy_up_file(&mut t, ino, Copy::Empty, None)?,
                    _ if n.nlink() > 0 => self.copy_up_file(&mut t, ino, Copy::Full, prepared.as_deref())?,
                    _ => return Err(err(libc::ENOENT)),
                };
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
            if let (Some(p), Some(up)) = (&prepared, &self.upper) {
                // Not used when someone else copied the file up first.
                let _ = upper::unlink_if_exists(up.root_fd(), p, false);
            }
            (r?, false)
        } else {
            let t = self.tree_read();
            let n = t.get(ino).ok_or_else(|| err(libc::ENOENT))?;
            if !n.attr.is_reg() || n.stand_in {
                return Err(err(libc::EINVAL));
            }
            if n.up == Up::Full {
                let (pfd, name) = self.parent_fd(&t, ino)?;
                (self.upper()?.open_file(pfd.as_fd(), &name, OFlags::RDONLY)?, false)
            } else {
                let (src, e) = self.lower_entry(n).ok_or_else(|| err(libc::EIO))?;
                (src.open_content(e)?, true)
            }
        };
        Ok((file.0, writable, file.1))
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

    /// Opens a file and answers (see [`Filesystem::open`]).
    /// `kill_set_id`: an O_TRUNC open by a caller without CAP_FSETID, which
    /// clears set-id bits (FUSE_HANDLE_KILLPRIV_V2 leaves that to us).
    fn open_reply(&self, ino: Ino, flags: i32, kill_set_id: bool, reply: ReplyOpen) {
        let _op = self.op(Op::Open);
        if self.upper.is_none() {
            let mut io = self.io();
            if let Some(st) = io.get_mut(&ino) {
                if let (Some(id), Some(object)) = (&st.backing, &st.object) {
                    st.passthrough += 1;
                    let file = RwLock::new(object.clone());
                    let fh =
                        self.add_handle(ino, HandleKind::File { file, writable: false, mode: IoMode::Passthrough });
                    return reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, id);
                }
            }
        }
        let (file, writable, lower) = match self.do_open(ino, flags) {
            Ok(x) => x,
            Err(e) => return reply.error(eno(e)),
        };
        if lower && !writable {
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
        let eligible = if lower { self.upper.is_none() && !writable } else { !to_server };
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
                let fh = self
                    .add_handle(ino, HandleKind::File { file: RwLock::new(file), writable, mode: IoMode::Passthrough });
                return reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, id);
            }
        }
        let (mode, fl) = if st.passthrough > 0 {
            (IoMode::Direct, FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH)
        } else {
            st.cached += 1;
            (IoMode::Cached, FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH)
        };
        drop(io);
        let fh = self.add_handle(ino, HandleKind::File { file: RwLock::new(Arc::new(file)), writable, mode });
        reply.opened(FileHandle(fh), fl);
    }

    fn dir_snapshot(&self, ino: Ino) -> io::Result<Vec<DirEnt>> {
        let t = self.tree_read();
        let n = t.get(ino).ok_or_else(|| err(libc::ENOENT))?;
        let d = n.dir.as_ref().ok_or_else(|| err(libc::ENOTDIR))?;
        let parent = if ino == ROOT { ROOT } else { n.link.parent };
        let mut v = Vec::with_capacity(d.children.len() + 2);
        v.push(DirEnt { ino, kind: FileType::Directory, name: (*b".").into() });
        v.push(DirEnt { ino: parent, kind: FileType::Directory, name: (*b"..").into() });
        for (name, &c) in &d.children {
            v.push(DirEnt { ino: c, kind: file_type(t.node(c).attr.mode), name: name.clone() });
        }
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

/// Whether copy_file_range failed across filesystems before (then a plain
/// copy is made at once): an upper directory on another filesystem than
/// the store (e.g. a tmpfs) refuses it every time.
static NO_COPY_RANGE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Copies the `len` bytes of `src` (the size the layer index gives), in
/// kernel where the filesystems allow it.
fn copy_content(src: &File, dst: &File, len: u64) -> io::Result<()> {
    let mut off_in = 0u64;
    let mut off_out = 0u64;
    while off_in < len && !NO_COPY_RANGE.load(Ordering::Relaxed) {
        let chunk = (len - off_in).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk) {
            Ok(0) => return Err(err(libc::EIO)), // the object is shorter than its index says
            Ok(_) => {}
            Err(rustix::io::Errno::XDEV) => NO_COPY_RANGE.store(true, Ordering::Relaxed),
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => break,
            Err(e) => return Err(errno(e)),
        }
    }
    // Across filesystems: sendfile still copies inside the kernel (one copy
    // instead of two through a buffer here: 1 GiB from the page cache to a
    // tmpfs upper took 0.75 s with a 1 MiB buffer).
    // (sendfile writes at the file position of `dst`.)
    let positioned = off_in >= len || rustix::fs::seek(dst, rustix::fs::SeekFrom::Start(off_out)).is_ok();
    while positioned && off_in < len {
        let chunk = (len - off_in).min(1 << 30) as usize;
        let mut at = off_in;
        match rustix::fs::sendfile(dst, src, Some(&mut at), chunk) {
            Ok(0) => return Err(err(libc::EIO)),
            Ok(n) => {
                off_in += n as u64;
                off_out += n as u64;
            }
            Err(_) => break,
        }
    }
    if off_in < len {
        let mut buf = vec![0u8; (len - off_in).min(1 << 20) as usize];
        while off_in < len {
            let want = ((len - off_in) as usize).min(buf.len());
            let n = src.read_at(&mut buf[..want], off_in)?;
            if n == 0 {
                return Err(err(libc::EIO));
            }
            dst.write_all_at(&buf[..n], off_out)?;
            off_in += n as u64;
            off_out += n as u64;
        }
    }
    Ok(())
}

/// The content size of a regular-file index entry.
fn entry_size(e: &Entry) -> u64 {
    match &e.kind {
        EntryKind::File { size, .. } => *size,
        _ => 0,
    }
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

// ---- request statistics --------------------------------------------------

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
    fn from_env() -> Option<Stats> {
        let path = std::env::var_os("STRATA_FS_STATS").filter(|p| !p.is_empty())?;
        Some(Stats {
            path: path.into(),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            nanos: std::array::from_fn(|_| AtomicU64::new(0)),
        })
    }

    fn write(&self) {
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

impl Filesystem for StrataFs {
    fn destroy(&mut self) {
        if let Some(s) = &self.stats {
            s.write();
        }
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        use fuser::InitFlags as F;
        let _ = config.set_max_write(MAX_WRITE);
        // Bigger readahead and more requests in flight for sequential reads.
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let wanted = F::FUSE_DO_READDIRPLUS
            | F::FUSE_READDIRPLUS_AUTO
            | F::FUSE_PARALLEL_DIROPS
            | F::FUSE_CACHE_SYMLINKS
            | F::FUSE_ATOMIC_O_TRUNC
            | F::FUSE_DIRECT_IO_ALLOW_MMAP
            | F::FUSE_MAX_PAGES
            | F::FUSE_ASYNC_READ
            | F::FUSE_BIG_WRITES;
        // Ask only for what this kernel offers: add_capabilities refuses unknown bits.
        let _ = config.add_capabilities(wanted & config.capabilities());
        // The kernel then leaves clearing set-id bits on chown, truncation
        // and writes to us, and stops asking for security.capability
        // before every write (SB_NOSEC): without it each write(2), even to
        // a passed-through file, cost a GETXATTR round trip (50,000 4 KiB
        // writes: 0.60 s, kernel overlayfs 0.27 s), and each chown a
        // GETATTR. Writes that must clear something are kept off
        // passthrough (`writes_must_come_here`).
        if self.upper.is_some()
            && config.capabilities().contains(F::FUSE_HANDLE_KILLPRIV_V2)
            && config.add_capabilities(F::FUSE_HANDLE_KILLPRIV_V2).is_ok()
        {
            self.killpriv.store(true, Ordering::Relaxed);
        }
        // Passthrough: registering backing files needs CAP_SYS_ADMIN in the
        // initial user namespace; without it the first open falls back.
        if self.want_passthrough
            && config.capabilities().contains(F::FUSE_PASSTHROUGH)
            && config.set_max_stack_depth(1).is_ok()
            && config.add_capabilities(F::FUSE_PASSTHROUGH).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = self.op(Op::Lookup);
        let t = self.tree_read();
        let Some(d) = t.dir(parent.0) else {
            // A removed directory has no entries left: ENOENT, as on any fs.
            let not_dir = t.get(parent.0).is_some_and(|n| !n.attr.is_dir());
            return reply.error(if not_dir { Errno::ENOTDIR } else { Errno::ENOENT });
        };
        match d.children.get(name.as_bytes()) {
            Some(&c) => {
                let a = self.attr(&t, c, None);
                let n = t.node(c);
                n.looked_up();
                reply.entry_with_ttls(&FsInner::ttl(n), &FsInner::ttl(n), &a, Generation(0));
            }
            None => {
                // A negative entry: the kernel caches the miss (creations come
                // through us, and the kernel drops the negative dentry then).
                let a = FileAttr {
                    ino: INodeNo(0),
                    size: 0,
                    blocks: 0,
                    atime: UNIX_EPOCH,
                    mtime: UNIX_EPOCH,
                    ctime: UNIX_EPOCH,
                    crtime: UNIX_EPOCH,
                    kind: FileType::RegularFile,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: 4096,
                    flags: 0,
                };
                reply.entry_with_ttls(&Duration::ZERO, &LOWER_TTL, &a, Generation(0));
            }
        }
    }

    // Forgets take the tree lock shared: only a node that is gone for good
    // needs it exclusively (they arrive with every other request, and an
    // exclusive lock each made the others wait). fuser's batch_forget calls
    // this per inode (its argument type is not public to override it).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _op = self.op(Op::Forget);
        if self.tree_read().forget(ino.0, nlookup) {
            self.tree_write().reclaim_forgotten(ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = self.op(Op::Getattr);
        let t = self.tree_read();
        match t.get(ino.0) {
            Some(n) => {
                let ttl = FsInner::ttl(n);
                reply.attr(&ttl, &self.attr(&t, ino.0, None))
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _op = self.op(Op::Setattr);
        // With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to us: a
        // chown clears set-id bits, a truncation by a caller without
        // CAP_FSETID too (fuser does not pass the kernel's flag for that;
        // uid 0 stands for holding the capability).
        let kill = self.killpriv.load(Ordering::Relaxed)
            && (uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0));
        let run = move |fs: &FsInner| match fs.do_setattr(ino.0, mode, uid, gid, size, atime, mtime, fh, kill) {
            Ok(a) => reply.attr(&UPPER_TTL, &a),
            Err(e) => reply.error(eno(e)),
        };
        if size.is_some() && self.copy_up_is_big(ino.0) {
            // Truncating a lower file copies it up.
            return self.offload(run);
        }
        run(self);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _op = self.op(Op::Readlink);
        let t = self.tree_read();
        if t.get(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        match self.symlink_target(&t, ino.0) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _op = self.op(Op::Mknod);
        self.entry_reply(reply, self.do_mknod(req, parent.0, name.as_bytes(), mode, rdev));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let _op = self.op(Op::Mkdir);
        self.entry_reply(reply, self.do_mkdir(req, parent.0, name.as_bytes(), mode));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.op(Op::Unlink);
        match self.do_remove(parent.0, name.as_bytes(), false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.op(Op::Rmdir);
        match self.do_remove(parent.0, name.as_bytes(), true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let _op = self.op(Op::Symlink);
        self.entry_reply(reply, self.do_symlink(req, parent.0, link_name.as_bytes(), target.as_os_str().as_bytes()));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = self.op(Op::Rename);
        match self.do_rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _op = self.op(Op::Link);
        let r = self.do_link(ino.0, newparent.0, newname.as_bytes()).map(|()| {
            let t = self.tree_read();
            (ino.0, self.attr(&t, ino.0, None))
        });
        self.entry_reply(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.0 & libc::O_ACCMODE;
        let for_writing = acc != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let kill = self.killpriv.load(Ordering::Relaxed) && flags.0 & libc::O_TRUNC != 0 && req.uid() != 0;
        if for_writing && self.upper.is_some() && self.copy_up_is_big(ino.0) {
            // Copies the file up first.
            return self.offload(move |fs| fs.open_reply(ino.0, flags.0, kill, reply));
        }
        self.open_reply(ino.0, flags.0, kill, reply);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(h) = self.handle(fh.0) else { return reply.error(Errno::EBADF) };
        let HandleKind::File { file, .. } = &h.kind else { return reply.error(Errno::EISDIR) };
        let f = file.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Data in the host's page cache is answered right here; a read that
        // would wait for the disk goes on on a worker.
        let mut buf: Vec<u8> = Vec::new();
        if size <= NOWAIT_READ_MAX {
            buf = vec![0u8; size as usize];
            match rustix::io::preadv2(
                &*f,
                &mut [std::io::IoSliceMut::new(&mut buf)],
                offset,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                Ok(n) if n == buf.len() => {
                    let _op = self.op(Op::Read);
                    return reply.data(&buf);
                }
                Ok(n) => buf.truncate(n),
                Err(_) => buf.clear(),
            }
        }
        self.offload(move |fs| {
            let _op = fs.op(Op::Read);
            // Read into spare capacity: zeroing a buffer of up to 1 MiB per
            // request first showed up as a tenth of the server's time.
            buf.reserve_exact((size as usize).saturating_sub(buf.len()));
            while buf.len() < size as usize {
                let at = offset + buf.len() as u64;
                match rustix::io::pread(&*f, rustix::buffer::spare_capacity(&mut buf), at) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return reply.error(Errno::from_i32(e.raw_os_error())),
                }
            }
            reply.data(&buf);
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = self.op(Op::Write);
        let Some(h) = self.handle(fh.0) else { return reply.error(Errno::EBADF) };
        let HandleKind::File { file, writable: true, .. } = &h.kind else { return reply.error(Errno::EBADF) };
        let f = file.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Err(e) = f.write_all_at(data, offset) {
            return reply.error(eno(e));
        }
        // The kernel asks for this (FUSE_HANDLE_KILLPRIV_V2) when the
        // writer lacks CAP_FSETID.
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && self.tree_read().get(ino.0).is_some_and(|n| n.attr.mode & (libc::S_ISUID | libc::S_ISGID) != 0)
        {
            if let Err(e) = self.kill_set_id(ino.0) {
                return reply.error(eno(e));
            }
        }
        reply.written(data.len() as u32)
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing to do at close (writes are on the host already): ENOSYS
        // makes the kernel stop sending FLUSH for this mount.
        let _op = self.op(Op::Flush);
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.op(Op::Release);
        let h = self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh.0);
        if let Some(h) = h {
            if let HandleKind::File { mode, .. } = &h.kind {
                self.io_closed(h.ino, *mode);
            }
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let _op = self.op(Op::Fsync);
        let Some(h) = self.handle(fh.0) else { return reply.error(Errno::EBADF) };
        let HandleKind::File { file, .. } = &h.kind else { return reply.ok() };
        let f = file.read().unwrap_or_else(|p| p.into_inner()).clone();
        self.offload(move |_| {
            let r = if datasync { f.sync_data() } else { f.sync_all() };
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(eno(e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = self.op(Op::Opendir);
        if self.kernel_opens_dirs() {
            return reply.error(Errno::ENOSYS);
        }
        match self.dir_snapshot(ino.0) {
            // The kernel may keep what it read of the directory: every change
            // comes through it and drops that cache.
            Ok(v) => reply.opened(
                FileHandle(self.add_handle(ino.0, HandleKind::Dir(Arc::new(v)))),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _op = self.op(Op::Readdir);
        let ents = match self.listing(ino.0, fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        for (i, e) in ents.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _op = self.op(Op::Readdirplus);
        let ents = match self.listing(ino.0, fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let t = self.tree_read();
        // One fd of the upper directory serves the host stats of all entries.
        let dir_fd = match (&self.upper, t.get(ino.0)) {
            (Some(up), Some(n)) if n.up != Up::No && n.nlink() > 0 || ino.0 == ROOT && self.upper.is_some() => {
                self.upper_dir(&t, ino.0).ok()
            }
            _ => None,
        };
        for (i, e) in ents.iter().enumerate().skip(offset as usize) {
            let dots = &*e.name == b"." || &*e.name == b"..";
            // The kernel makes dentries from these entries: answer with what
            // the name is now, and leave out names removed since opendir (a
            // stale entry would bring a deleted inode back under its name).
            let cur = if dots { Some(e.ino) } else { t.child(ino.0, &e.name) };
            let Some(cur) = cur else { continue };
            let Some(n) = t.get(cur) else { continue };
            let hint = match &dir_fd {
                Some(fd) if !dots => Some((fd.as_fd(), &*e.name)),
                _ => None,
            };
            let a = self.attr(&t, cur, hint);
            if reply.add(INodeNo(cur), (i + 1) as u64, OsStr::from_bytes(&e.name), &FsInner::ttl(n), &a, Generation(0))
            {
                break; // full: this entry did not go out
            }
            if !dots {
                n.looked_up();
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _op = self.op(Op::Releasedir);
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _op = self.op(Op::Fsyncdir);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = self.op(Op::Statfs);
        let fd = match (&self.upper, &self.statfs_fd) {
            (Some(up), _) => up.root_fd(),
            (None, Some(fd)) => fd.as_fd(),
            (None, None) => return reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096),
        };
        match rustix::fs::fstatvfs(fd) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _op = self.op(Op::Setxattr);
        let r = (|| {
            let name = name.as_bytes();
            if name.starts_with(upper::RESERVED_PREFIX) {
                return Err(err(libc::EPERM));
            }
            let mut t = self.tree_write();
            let up = self.upper()?;
            if t.get(ino.0).is_none() {
                return Err(err(libc::ENOENT));
            }
            self.copy_up_meta(&mut t, ino.0)?;
            t.node_mut(ino.0).no_xattrs = false;
            let (pfd, n) = self.entry_fd(&t, ino.0)?;
            up.set_xattr(pfd.as_fd(), &n, name, value, flags)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = self.op(Op::Getxattr);
        if self.no_xattrs_at_all {
            // The kernel remembers this for the mount: every later getxattr
            // fails with EOPNOTSUPP without a round trip (ls -l asks two
            // per file). Nothing can ever be found here, nor set.
            return reply.error(Errno::ENOSYS);
        }
        let r = (|| {
            let t = self.tree_read();
            self.xattr_of(&t, ino.0, name.as_bytes())?.ok_or_else(|| err(libc::ENODATA))
        })();
        FsInner::xattr_reply(reply, size, r);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = self.op(Op::Listxattr);
        let r = (|| {
            let t = self.tree_read();
            let n = t.get(ino.0).ok_or_else(|| err(libc::ENOENT))?;
            let names: Vec<Vec<u8>> = if n.up == Up::No || self.upper.is_none() {
                self.lower_entry(n)
                    .map(|(_, e)| {
                        e.xattrs
                            .iter()
                            .filter(|(k, _)| !k.starts_with(upper::RESERVED_PREFIX))
                            .map(|(k, _)| k.clone())
                            .collect()
                    })
                    .unwrap_or_default()
            } else if n.no_xattrs {
                Vec::new()
            } else {
                let up = self.upper()?;
                let (pfd, nm) = self.entry_fd(&t, ino.0)?;
                up.list_xattrs(pfd.as_fd(), &nm)?
            };
            let mut out = Vec::new();
            for k in names {
                out.extend_from_slice(&k);
                out.push(0);
            }
            Ok(out)
        })();
        FsInner::xattr_reply(reply, size, r);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.op(Op::Removexattr);
        let r = (|| {
            let name = name.as_bytes();
            if name.starts_with(upper::RESERVED_PREFIX) {
                return Err(err(libc::EPERM));
            }
            let mut t = self.tree_write();
            let up = self.upper()?;
            let n = t.get(ino.0).ok_or_else(|| err(libc::ENOENT))?;
            if n.up == Up::No {
                let has = self.lower_entry(n).is_some_and(|(_, e)| e.xattrs.iter().any(|(k, _)| k == name));
                if !has {
                    return Err(err(libc::ENODATA));
                }
            }
            self.copy_up_meta(&mut t, ino.0)?;
            let (pfd, n) = self.entry_fd(&t, ino.0)?;
            up.remove_xattr(pfd.as_fd(), &n, name)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _op = self.op(Op::Access);
        let t = self.tree_read();
        let Some(n) = t.get(ino.0) else { return reply.error(Errno::ENOENT) };
        let mask = mask.bits() & 7;
        if mask == 0 {
            return reply.ok();
        }
        if mask & 2 != 0 && self.upper.is_none() {
            return reply.error(Errno::EROFS);
        }
        let a = n.attr;
        let perm = if req.uid() == 0 {
            // root: everything except executing a file without any x bit
            if mask & 1 != 0 && !a.is_dir() && a.mode & 0o111 == 0 {
                0
            } else {
                7
            }
        } else if req.uid() == a.uid {
            (a.mode >> 6) & 7
        } else if req.gid() == a.gid {
            (a.mode >> 3) & 7
        } else {
            a.mode & 7
        };
        if perm & (mask as u32) == mask as u32 {
            reply.ok()
        } else {
            reply.error(Errno::EACCES)
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _op = self.op(Op::Create);
        match self.do_create(req, parent.0, name.as_bytes(), mode) {
            Ok((ino, a, file)) => {
                let acc = flags & libc::O_ACCMODE;
                // A new inode: nothing else has it open. One created set-id
                // has its writes come here (see `writes_must_come_here`).
                let set_id = a.perm as u32 & (libc::S_ISUID | libc::S_ISGID) != 0;
                let mut io = self.io();
                let st = io.entry(ino).or_default();
                if self.passthrough.load(Ordering::Relaxed) && !(set_id && self.killpriv.load(Ordering::Relaxed)) {
                    match reply.open_backing(&file) {
                        Ok(id) => {
                            st.passthrough = 1;
                            let fh = self.add_handle(
                                ino,
                                HandleKind::File {
                                    file: RwLock::new(Arc::new(file)),
                                    writable: acc != libc::O_RDONLY,
                                    mode: IoMode::Passthrough,
                                },
                            );
                            let id = st.backing.insert(id);
                            return reply.created_passthrough(
                                &UPPER_TTL,
                                &a,
                                Generation(0),
                                FileHandle(fh),
                                FopenFlags::FOPEN_NOFLUSH,
                                id,
                            );
                        }
                        Err(_) => self.passthrough.store(false, Ordering::Relaxed),
                    }
                }
                st.cached += 1;
                drop(io);
                let fh = self.add_handle(
                    ino,
                    HandleKind::File {
                        file: RwLock::new(Arc::new(file)),
                        writable: acc != libc::O_RDONLY,
                        mode: IoMode::Cached,
                    },
                );
                reply.created(
                    &UPPER_TTL,
                    &a,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
                );
            }
            Err(e) => reply.error(eno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _op = self.op(Op::Fallocate);
        let Some(h) = self.handle(fh.0) else { return reply.error(Errno::EBADF) };
        let HandleKind::File { file, writable: true, .. } = &h.kind else { return reply.error(Errno::EBADF) };
        let f = file.read().unwrap_or_else(|p| p.into_inner()).clone();
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        self.offload(move |_| match rustix::fs::fallocate(&*f, flags, offset, length) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        });
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: fuser::ReplyLseek) {
        let _op = self.op(Op::Lseek);
        let Some(h) = self.handle(fh.0) else { return reply.error(Errno::EBADF) };
        let HandleKind::File { file, .. } = &h.kind else { return reply.error(Errno::EBADF) };
        let f = file.read().unwrap_or_else(|p| p.into_inner()).clone();
        let pos = match whence {
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset as u64),
            libc::SEEK_SET => rustix::fs::SeekFrom::Start(offset as u64),
            libc::SEEK_END => rustix::fs::SeekFrom::End(offset),
            _ => return reply.error(Errno::EINVAL),
        };
        match rustix::fs::seek(&*f, pos) {
            Ok(p) => reply.offset(p as i64),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }
}
