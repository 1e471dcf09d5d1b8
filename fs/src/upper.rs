//! The writable upper directory on the host, and how strata records in it what
//! the host cannot hold.
//!
//! The upper directory is a plain directory tree in OCI layer form, so that a
//! commit is a walk of it:
//! - `.wh.NAME` (an empty regular file) hides NAME of the lower layers;
//! - `.wh..wh..opq` in a directory hides all lower content of that directory;
//! - whiteouts are hard links of one empty file, `.wh..wh..base` in the
//!   upper root (as kernel overlayfs links one whiteout inode), so a commit
//!   must treat them by name, not as a hard link group; files named
//!   `.wh..wh.*` other than the opaque marker are strata's own and carry no
//!   content of the container;
//! - a whiteout whose name would exceed the 255-byte name limit (NAME longer
//!   than 251 bytes) is `.wh..wh..lng.HASH` instead, HASH being the first 40 hex
//!   digits of NAME's sha256, and the file's content is NAME itself.
//!
//! Metadata the host cannot hold (a foreign uid/gid for an ordinary user, a
//! mode without owner read/write, device nodes) lives in the xattr
//! `user.strata.meta` = `"MODE UID GID RDEV"` (decimal; MODE includes the file
//! type bits, RDEV is the kernel's new encoding) on the upper file. A node
//! whose type cannot carry user xattrs (symlink, fifo, socket, device) is then
//! kept as a regular "stand-in" file with that xattr, and for symlinks the
//! file's content is the link target. `user.strata.metacopy` = digest hex
//! marks an upper file whose metadata was changed while its content is still
//! the lower object (the host file is empty). Other xattrs the host refuses
//! (trusted.*, security.* as an ordinary user) are kept as
//! `user.strata.x.NAME`. All `user.strata.*` names are hidden from and
//! reserved against the mounted view.
//!
//! Every host access is relative to a directory fd opened with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`) from the upper root, with
//! `O_NOFOLLOW` on the last component: content of the container can never make
//! strata touch a host path outside the upper directory.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use crate::tree::{decode_dev, Attr, Ts};
use crate::walk::Visit;

pub(crate) const OPAQUE: &[u8] = b".wh..wh..opq";
/// How much of a path [`Upper::dir`] hands the kernel at once: within
/// `PATH_MAX` (4,096 bytes with its NUL), with room to spare.
pub(crate) const PATH_PART: usize = 3072;
pub(crate) const WH_PREFIX: &[u8] = b".wh.";
pub(crate) const LONG_WH_PREFIX: &[u8] = b".wh..wh..lng.";
/// The empty file all whiteouts are hard links of (AUFS-style metadata name:
/// OCI tools ignore `.wh..wh.*` entries other than the opaque marker).
pub(crate) const WHITEOUT_BASE: &[u8] = b".wh..wh..base";
pub(crate) const META_XATTR: &str = "user.strata.meta";
pub(crate) const METACOPY_XATTR: &str = "user.strata.metacopy";
pub(crate) const RESERVED_PREFIX: &[u8] = b"user.strata.";
pub(crate) const ESCAPE_PREFIX: &[u8] = b"user.strata.x.";

pub(crate) fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

pub(crate) fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The host name of the whiteout for `name`.
pub(crate) fn whiteout_name(name: &[u8]) -> Vec<u8> {
    if WH_PREFIX.len() + name.len() <= 255 {
        [WH_PREFIX, name].concat()
    } else {
        let hex = strata_layers::Digest::of(name).hex();
        [LONG_WH_PREFIX, &hex.as_bytes()[..40]].concat()
    }
}

/// Host metadata of an upper entry plus what strata recorded about it.
#[derive(Debug, Clone)]
pub(crate) struct HostEntry {
    pub st: rustix::fs::Stat,
    /// `user.strata.meta`: (mode, uid, gid, rdev).
    pub meta: Option<(u32, u32, u32, u32)>,
    /// `user.strata.metacopy`: the content digest still below.
    pub metacopy: Option<strata_layers::Digest>,
}

impl HostEntry {
    pub fn host_kind(&self) -> u32 {
        self.st.st_mode & libc::S_IFMT
    }

    /// The attributes the mount reports for this entry.
    pub fn attr(&self) -> Attr {
        let st = &self.st;
        let rdev = crate::tree::encode_dev(rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
        let (mode, uid, gid, rdev) = self.meta.unwrap_or((st.st_mode, st.st_uid, st.st_gid, rdev));
        Attr {
            mode,
            uid,
            gid,
            rdev,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: Ts::atime(st),
            mtime: Ts::mtime(st),
            ctime: Ts::ctime(st),
        }
    }

    pub fn is_stand_in(&self) -> bool {
        self.meta.is_some_and(|m| m.0 & libc::S_IFMT != self.host_kind())
    }
}

/// An upper directory's `flock`, given up explicitly when dropped.
///
/// Closing our descriptor alone does not release it while a copy of the
/// descriptor lives on elsewhere: a child that another thread of this
/// process forks at that moment holds one until its exec (which closes
/// it, being close-on-exec). A mount of the same upper directory made
/// right after the unmount then found it taken (UpperInUse, seen once in
/// the remounts of the random tests). An explicit unlock releases it for
/// every copy.
struct MountLock(OwnedFd);

impl Drop for MountLock {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

pub(crate) struct Upper {
    root: OwnedFd,
    /// The root opened once more, holding an exclusive `flock` for as long
    /// as this serves a mount (see [`Upper::lock_for_mount`]).
    lock: Option<MountLock>,
    /// Root on the host (or in our user namespace): may chown and mknod.
    pub privileged: bool,
    /// Host owners are this map's outside ids (see `crate::idmap`).
    pub ids: crate::idmap::IdMap,
}

fn can_hold_user_xattrs(kind: u32) -> bool {
    kind == libc::S_IFREG || kind == libc::S_IFDIR
}

impl Upper {
    pub fn open(path: &std::path::Path) -> io::Result<Upper> {
        let root = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Upper { root, lock: None, privileged: rustix::process::geteuid().is_root(), ids: Default::default() })
    }

    /// Takes the upper directory for one mount: an exclusive `flock` on it,
    /// held until this is dropped (or the process dies). Two servers on one
    /// upper directory would each keep a tree of their own and undo each
    /// other's changes; kernel overlayfs refuses such a mount with EBUSY.
    /// `Ok(false)` when another holds it. Readers of an upper directory
    /// (`docker diff`, commit) take no lock.
    pub fn lock_for_mount(&mut self) -> io::Result<bool> {
        use rustix::fs::{flock, FlockOperation};
        // Not the O_PATH root: flock needs a file opened for real.
        let fd = rustix::fs::openat(
            &self.root,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(errno)?;
        match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                self.lock = Some(MountLock(fd));
                Ok(true)
            }
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(errno(e)),
        }
    }

    /// Host owners translated through `ids` (see `crate::idmap`).
    pub fn with_ids(mut self, ids: crate::idmap::IdMap) -> Upper {
        self.ids = ids;
        self
    }

    /// A host stat with its owner in the mount's own ids.
    fn inward(&self, mut st: rustix::fs::Stat) -> rustix::fs::Stat {
        if !self.ids.is_identity() {
            (st.st_uid, st.st_gid) = (self.ids.uid_in(st.st_uid), self.ids.gid_in(st.st_gid));
        }
        st
    }

    /// The host owner for the mount's own ids.
    fn host_owner(&self, want: &Attr) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
        let (u, g) = (self.ids.uid_out(want.uid), self.ids.gid_out(want.gid));
        (Some(rustix::fs::Uid::from_raw(u)), Some(rustix::fs::Gid::from_raw(g)))
    }

    /// Opens the directory at `rel` ("" for the upper root) for *at() calls.
    pub fn dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        self.open_beneath(rel, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// Opens the directory `name` of `dir` for *at() calls.
    pub fn subdir(&self, dir: BorrowedFd, name: &[u8]) -> io::Result<OwnedFd> {
        open_beneath_of(dir, name, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// Opens a directory readable (for listing).
    pub fn dir_readable(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// Opens `rel` below the upper root, never through a symlink. A path
    /// longer than the kernel takes at once (a tree nested deeper than
    /// `PATH_MAX`) is opened a part at a time, each relative to the last.
    fn open_beneath(&self, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        let mut rest = rel;
        let mut at: Option<OwnedFd> = None;
        while rest.len() > PATH_PART {
            // The last '/' within the part's length (a name is at most 255 bytes).
            let cut = rest[..PATH_PART]
                .iter()
                .rposition(|&b| b == b'/')
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
            let dir = at.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            at = Some(open_beneath_of(dir, &rest[..cut], OFlags::PATH | OFlags::DIRECTORY)?);
            rest = &rest[cut + 1..];
        }
        open_beneath_of(at.as_ref().map_or(self.root.as_fd(), |d| d.as_fd()), rest, flags)
    }

    pub fn stat(&self, dir: BorrowedFd, name: &[u8]) -> io::Result<HostEntry> {
        let st =
            rustix::fs::statat(dir, std::ffi::OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
        let st = self.inward(st);
        let kind = st.st_mode & libc::S_IFMT;
        let (mut meta, mut metacopy) = (None, None);
        if can_hold_user_xattrs(kind) {
            let f = self.path_fd(dir, name)?;
            if let Some(v) = get_xattr_fd(&f, META_XATTR)? {
                meta = parse_meta(&v).filter(|m| record_fits(kind, m.0));
            }
            if kind == libc::S_IFREG {
                if let Some(v) = get_xattr_fd(&f, METACOPY_XATTR)? {
                    metacopy = std::str::from_utf8(&v).ok().and_then(|h| strata_layers::Digest::from_hex(h).ok());
                }
            }
        }
        Ok(HostEntry { st, meta, metacopy })
    }

    /// An `O_PATH` fd of the entry itself (never following a symlink).
    pub fn path_fd(&self, dir: BorrowedFd, name: &[u8]) -> io::Result<OwnedFd> {
        rustix::fs::openat(
            dir,
            std::ffi::OsStr::from_bytes(name),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)
    }

    /// Opens a regular upper file for I/O.
    pub fn open_file(&self, dir: BorrowedFd, name: &[u8], flags: OFlags) -> io::Result<File> {
        let fd = rustix::fs::openat(
            dir,
            std::ffi::OsStr::from_bytes(name),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// The permission bits the host file gets for the wanted mode.
    fn host_perm(&self, want: u32) -> u32 {
        let perm = want & 0o7777;
        if self.privileged {
            perm
        } else {
            let owner = if want & libc::S_IFMT == libc::S_IFDIR { 0o700 } else { 0o600 };
            (perm & 0o777) | owner
        }
    }

    /// The mode a new host entry is created with.
    pub fn create_perm(&self, want: u32) -> Mode {
        Mode::from_raw_mode(self.host_perm(want) & 0o777)
    }

    /// Makes the host entry report `want` (type, permissions, owner, device),
    /// directly where the host can hold it, else through `user.strata.meta`.
    /// Returns `Ok(false)` when the entry's type cannot carry the xattr and
    /// has to become a stand-in (see [`Upper::make_stand_in`]). `recorded`:
    /// in, whether the entry may carry a record already (false for an entry
    /// just created by us); out, whether it carries one now.
    pub fn write_meta(&self, dir: BorrowedFd, name: &[u8], want: &Attr, recorded: &mut bool) -> io::Result<bool> {
        self.apply_meta(dir, name, want, recorded).map(|(held, _, _)| held)
    }

    /// [`Upper::write_meta`] for a chown or chmod a caller asked for: like
    /// chown(2) and chmod(2), it moves the entry's change time even when it
    /// changes nothing (kernel overlayfs passes such a call on to its upper
    /// file, and backup tools go by ctime). Where the host entry needed no
    /// change, a chmod to the mode it has moves its ctime alone (see
    /// [`touch_ctime`]).
    pub fn change_meta(&self, dir: BorrowedFd, name: &[u8], want: &Attr, recorded: &mut bool) -> io::Result<bool> {
        let (held, wrote, host_mode) = self.apply_meta(dir, name, want, recorded)?;
        if held && !wrote {
            touch_ctime(dir, name, host_mode)?;
        }
        Ok(held)
    }

    /// [`Upper::write_meta`], also telling whether anything was written to
    /// the host entry, and the host entry's mode.
    fn apply_meta(
        &self,
        dir: BorrowedFd,
        name: &[u8],
        want: &Attr,
        recorded: &mut bool,
    ) -> io::Result<(bool, bool, u32)> {
        let os = std::ffi::OsStr::from_bytes(name);
        let mut wrote = false;
        let mut st = self.inward(rustix::fs::statat(dir, os, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?);
        let kind = st.st_mode & libc::S_IFMT;
        if self.privileged && (st.st_uid != want.uid || st.st_gid != want.gid) {
            // Refused for ids outside our user namespace's map: falls back below.
            let owner = self.host_owner(want);
            if rustix::fs::chownat(dir, os, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                wrote = true;
                if st.st_mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
                    // chown changes the mode only by clearing set-id bits.
                    (st.st_uid, st.st_gid) = (want.uid, want.gid);
                } else {
                    st = self.inward(rustix::fs::statat(dir, os, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?);
                }
            }
        }
        if kind != libc::S_IFLNK {
            let perm = self.host_perm(want.mode);
            if st.st_mode & 0o7777 != perm {
                // The lstat above, under the tree lock, saw no symlink here:
                // chmod by name does not follow one.
                rustix::fs::chmodat(dir, os, Mode::from_raw_mode(perm), AtFlags::empty()).map_err(errno)?;
                wrote = true;
                st.st_mode = (st.st_mode & libc::S_IFMT) | perm;
            }
        }
        let host_rdev = crate::tree::encode_dev(rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
        let exact = st.st_mode == want.mode
            && st.st_uid == want.uid
            && st.st_gid == want.gid
            && (host_rdev == want.rdev || !matches!(kind, libc::S_IFCHR | libc::S_IFBLK));
        if !can_hold_user_xattrs(kind) {
            *recorded = false;
            return Ok((exact, wrote, st.st_mode));
        }
        if exact {
            if *recorded {
                let f = self.path_fd(dir, name)?;
                match remove_xattr_fd(&f, META_XATTR) {
                    Ok(()) => wrote = true,
                    Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                    Err(e) => return Err(e),
                }
            }
            *recorded = false;
        } else {
            let f = self.path_fd(dir, name)?;
            set_xattr_fd(&f, META_XATTR, meta_record(want).as_bytes(), 0)?;
            (*recorded, wrote) = (true, true);
        }
        Ok((true, wrote, st.st_mode))
    }

    /// [`Upper::write_meta`] for a regular file just created by us and held
    /// open (so it carries no record yet): through the fd, without the path
    /// walks and the `O_PATH` + `/proc/self/fd` detour a name needs (a
    /// metadata-only copy-up went from 16 to 11 host calls).
    pub fn write_meta_file(&self, f: &File, want: &Attr) -> io::Result<bool> {
        let mut st = self.inward(rustix::fs::fstat(f).map_err(errno)?);
        if self.privileged && (st.st_uid != want.uid || st.st_gid != want.gid) {
            let owner = self.host_owner(want);
            // Refused for ids outside our user namespace's map: recorded below.
            if rustix::fs::fchown(f, owner.0, owner.1).is_ok() {
                if st.st_mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
                    // chown changes the mode only by clearing set-id bits.
                    (st.st_uid, st.st_gid) = (want.uid, want.gid);
                } else {
                    st = self.inward(rustix::fs::fstat(f).map_err(errno)?);
                }
            }
        }
        let perm = self.host_perm(want.mode);
        if st.st_mode & 0o7777 != perm {
            rustix::fs::fchmod(f, Mode::from_raw_mode(perm)).map_err(errno)?;
            st.st_mode = (st.st_mode & libc::S_IFMT) | perm;
        }
        let exact = st.st_mode == want.mode && st.st_uid == want.uid && st.st_gid == want.gid;
        if !exact {
            let v = meta_record(want);
            rustix::fs::fsetxattr(f, META_XATTR, v.as_bytes(), rustix::fs::XattrFlags::empty()).map_err(errno)?;
        }
        Ok(!exact)
    }

    /// Marks an open upper file as a metadata-only copy of the lower object
    /// `digest` (see [`Upper::set_metacopy`]).
    pub fn set_metacopy_file(&self, f: &File, digest: &strata_layers::Digest) -> io::Result<()> {
        rustix::fs::fsetxattr(f, METACOPY_XATTR, digest.hex().as_bytes(), rustix::fs::XattrFlags::empty())
            .map_err(errno)
    }

    /// [`Upper::set_times`] for an open file.
    pub fn set_times_file(&self, f: &File, atime: Option<Ts>, mtime: Option<Ts>) -> io::Result<()> {
        rustix::fs::futimens(f, &timestamps(atime, mtime)).map_err(errno)
    }

    /// Replaces whatever is at `name` by a regular stand-in file for a node
    /// of another type (its content: the symlink target, if any).
    /// Built under a temporary name and renamed over `name`, so that a
    /// failure (a full disk) or a crash leaves the old entry, never none or
    /// a half-made one.
    pub fn make_stand_in(&self, dir: BorrowedFd, name: &[u8], want: &Attr, content: &[u8]) -> io::Result<()> {
        // (An interrupted one is removed by the next load.)
        const TMP: &[u8] = b".wh..wh..cu.stand-in";
        unlink_if_exists(dir, TMP, false)?;
        let made = (|| {
            let mut f = self.open_file(dir, TMP, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?;
            f.write_all(content)?;
            drop(f);
            self.write_meta(dir, TMP, want, &mut false)?;
            let os = std::ffi::OsStr::from_bytes;
            rustix::fs::renameat(dir, os(TMP), dir, os(name)).map_err(errno)
        })();
        if made.is_err() {
            let _ = unlink_if_exists(dir, TMP, false);
        }
        made
    }

    pub fn set_times(&self, dir: BorrowedFd, name: &[u8], atime: Option<Ts>, mtime: Option<Ts>) -> io::Result<()> {
        let times = timestamps(atime, mtime);
        if name.is_empty() {
            // The directory fd itself. An O_PATH fd takes AT_EMPTY_PATH on
            // recent kernels; older ones need its /proc link (slower: a
            // path walk through procfs per call).
            match rustix::fs::utimensat(dir, "", &times, AtFlags::EMPTY_PATH) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::BADF | rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(errno(e)),
            }
            let own = dup(dir)?;
            let p = proc_path(&own);
            return rustix::fs::utimensat(rustix::fs::CWD, p.as_c_str(), &times, AtFlags::empty()).map_err(errno);
        }
        rustix::fs::utimensat(dir, std::ffi::OsStr::from_bytes(name), &times, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
    }

    /// Creates the whiteout for `name` in `dir` (no error if it exists).
    ///
    /// Like kernel overlayfs, whiteouts are hard links of one empty file
    /// (`WHITEOUT_BASE` in the upper root) rather than one new inode each:
    /// deleting a large lower tree then costs no inode allocations.
    pub fn create_whiteout(&self, dir: BorrowedFd, name: &[u8]) -> io::Result<()> {
        let wh = whiteout_name(name);
        if !wh.starts_with(LONG_WH_PREFIX) {
            for _ in 0..3 {
                match rustix::fs::linkat(
                    &self.root,
                    std::ffi::OsStr::from_bytes(WHITEOUT_BASE),
                    dir,
                    std::ffi::OsStr::from_bytes(&wh),
                    AtFlags::empty(),
                ) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => return Ok(()),
                    // No base yet, or it has as many links as the fs allows: a fresh one.
                    Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::MLINK) => self.new_whiteout_base()?,
                    Err(_) => break,
                }
            }
        }
        let long = wh.starts_with(LONG_WH_PREFIX);
        for _ in 0..2 {
            match self.open_file(dir, &wh, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL) {
                Ok(mut f) => {
                    if long {
                        // A long whiteout names what it hides; one whose name
                        // did not make it in would hide the wrong thing.
                        if let Err(e) = f.write_all(name) {
                            let _ = unlink_if_exists(dir, &wh, false);
                            return Err(e);
                        }
                    }
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    // There already: done, unless a long one lacks its name
                    // (left by a failure before this check existed).
                    let ok = !long || crate::load::long_whiteout_target(self, dir, &wh)? == name;
                    if ok {
                        return Ok(());
                    }
                    unlink_if_exists(dir, &wh, false)?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from_raw_os_error(libc::EEXIST))
    }

    fn new_whiteout_base(&self) -> io::Result<()> {
        let tmp = b".wh..wh..wbtmp";
        unlink_if_exists(self.root.as_fd(), tmp, false)?;
        drop(self.open_file(self.root.as_fd(), tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?);
        let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
        rustix::fs::renameat(&self.root, os(tmp), &self.root, os(WHITEOUT_BASE)).map_err(errno)
    }

    pub fn remove_whiteout(&self, dir: BorrowedFd, name: &[u8]) -> io::Result<()> {
        unlink_if_exists(dir, &whiteout_name(name), false)
    }

    pub fn create_opaque(&self, dir: BorrowedFd) -> io::Result<()> {
        match self.open_file(dir, OPAQUE, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes everything inside the upper directory `name` of `parent`
    /// (whiteouts and markers of a directory that is empty in the merged
    /// view), however deep.
    pub fn empty_dir(&self, parent: BorrowedFd, name: &[u8]) -> io::Result<()> {
        let fd = crate::walk::open_subdir(parent, name)?;
        crate::walk::walk(
            fd,
            (),
            |fd, ()| {
                let mut todo = Vec::new();
                for ent in rustix::fs::Dir::read_from(fd).map_err(errno)? {
                    let ent = ent.map_err(errno)?;
                    let name = ent.file_name().to_bytes();
                    if name == b"." || name == b".." {
                        continue;
                    }
                    // The listing's type saves a stat per whiteout where the host fs gives it.
                    let is_dir = match ent.file_type() {
                        rustix::fs::FileType::Unknown => {
                            let st =
                                rustix::fs::statat(fd, std::ffi::OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
                                    .map_err(errno)?;
                            st.st_mode & libc::S_IFMT == libc::S_IFDIR
                        }
                        ft => ft == rustix::fs::FileType::Directory,
                    };
                    if is_dir {
                        // Emptied first, then removed.
                        todo.push(Visit::Descend(name.to_vec(), ()));
                        todo.push(Visit::Emit(name.to_vec()));
                    } else {
                        unlink_if_exists(fd, name, false)?;
                    }
                }
                Ok(todo)
            },
            |fd, name| unlink_if_exists(fd, &name, true),
        )
    }

    /// Lists the xattrs of an upper entry as the mount shows them.
    pub fn list_xattrs(&self, dir: BorrowedFd, name: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.list_xattrs_of(&self.path_fd(dir, name)?)
    }

    /// [`Upper::list_xattrs`] of the entry open as `f` (an `O_PATH` fd, or
    /// an open file: one removed while open has no name to go by).
    pub fn list_xattrs_of(&self, f: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
        let raw = list_xattr_fd(f)?;
        let mut out = Vec::new();
        for n in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if let Some(orig) = n.strip_prefix(ESCAPE_PREFIX) {
                out.push(orig.to_vec());
            } else if !n.starts_with(RESERVED_PREFIX) {
                out.push(n.to_vec());
            }
        }
        Ok(out)
    }

    pub fn get_xattr(&self, dir: BorrowedFd, name: &[u8], xname: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.get_xattr_of(&self.path_fd(dir, name)?, xname)
    }

    pub fn get_xattr_of(&self, f: &OwnedFd, xname: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let x = std::str::from_utf8(xname).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if let Some(v) = get_xattr_fd(f, x)? {
            return Ok(Some(v));
        }
        if !xname.starts_with(b"user.") {
            let escaped = format!("{}{x}", std::str::from_utf8(ESCAPE_PREFIX).unwrap_or_default());
            return get_xattr_fd(f, &escaped);
        }
        Ok(None)
    }

    /// Sets an xattr, escaping names the host refuses (see the module docs).
    pub fn set_xattr(&self, dir: BorrowedFd, name: &[u8], xname: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
        self.set_xattr_of(&self.path_fd(dir, name)?, xname, value, flags)
    }

    pub fn set_xattr_of(&self, f: &OwnedFd, xname: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
        let x = std::str::from_utf8(xname).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let escaped = format!("{}{x}", std::str::from_utf8(ESCAPE_PREFIX).unwrap_or_default());
        if x.starts_with("user.") {
            return set_xattr_fd(f, x, value, flags);
        }
        if self.privileged {
            match set_xattr_fd(f, x, value, flags) {
                Ok(()) => {
                    let _ = remove_xattr_fd(f, &escaped);
                    return Ok(());
                }
                // Refused by the host (not allowed here, not supported, or a
                // value it rejects: an ACL naming an unmapped id, an unknown
                // security label): kept escaped, as for ordinary users.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP | libc::EINVAL)) => {}
                Err(e) => return Err(e),
            }
        }
        set_xattr_fd(f, &escaped, value, flags)
    }

    pub fn remove_xattr_of(&self, f: &OwnedFd, xname: &[u8]) -> io::Result<()> {
        let x = std::str::from_utf8(xname).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        match remove_xattr_fd(f, x) {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) && !x.starts_with("user.") => {
                let escaped = format!("{}{x}", std::str::from_utf8(ESCAPE_PREFIX).unwrap_or_default());
                match remove_xattr_fd(f, &escaped) {
                    // A type that cannot carry user.* xattrs (a fifo, a
                    // device) has no escaped form either: it has no such xattr.
                    Err(escaped_err) if escaped_err.raw_os_error() == Some(libc::EPERM) => Err(e),
                    r => r,
                }
            }
            r => r,
        }
    }

    pub fn set_metacopy(&self, dir: BorrowedFd, name: &[u8], digest: Option<&strata_layers::Digest>) -> io::Result<()> {
        let f = self.path_fd(dir, name)?;
        match digest {
            Some(d) => set_xattr_fd(&f, METACOPY_XATTR, d.hex().as_bytes(), 0),
            None => match remove_xattr_fd(&f, METACOPY_XATTR) {
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
                r => r,
            },
        }
    }

    /// The dev_t to mknod with.
    pub fn host_dev(rdev: u32) -> rustix::fs::Dev {
        let (ma, mi) = decode_dev(rdev);
        rustix::fs::makedev(ma, mi)
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// Opens `path` (relative, "" for `dir` itself) below `dir`, through no
/// symlink and never above `dir`.
pub(crate) fn open_beneath_of(dir: BorrowedFd, path: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        std::ffi::OsStr::from_bytes(if path.is_empty() { b"." } else { path }),
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(errno)
}

/// Moves the change time of `name` in `dir` (whose host mode is `mode`)
/// and nothing else: a chmod to the mode it has. Not chown(-1, -1), which
/// moves it too but clears a regular file's set-id bits and capabilities;
/// a symlink, which chmod cannot reach, has neither.
pub fn touch_ctime(dir: BorrowedFd, name: &[u8], mode: u32) -> io::Result<()> {
    let os = std::ffi::OsStr::from_bytes(name);
    if mode & libc::S_IFMT == libc::S_IFLNK {
        return rustix::fs::chownat(dir, os, None, None, AtFlags::SYMLINK_NOFOLLOW).map_err(errno);
    }
    rustix::fs::chmodat(dir, os, Mode::from_raw_mode(mode & 0o7777), AtFlags::empty()).map_err(errno)
}

/// [`touch_ctime`] for an open regular file.
pub fn touch_ctime_file(f: &File) -> io::Result<()> {
    let st = rustix::fs::fstat(f).map_err(errno)?;
    rustix::fs::fchmod(f, Mode::from_raw_mode(st.st_mode & 0o7777)).map_err(errno)
}

/// utimensat(2)'s times: `None` leaves that time as it is (UTIME_OMIT).
fn timestamps(atime: Option<Ts>, mtime: Option<Ts>) -> rustix::fs::Timestamps {
    let ts = |t: Option<Ts>| match t {
        Some(t) => rustix::fs::Timespec { tv_sec: t.sec, tv_nsec: t.nsec as _ },
        None => rustix::fs::Timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT as _ },
    };
    rustix::fs::Timestamps { last_access: ts(atime), last_modification: ts(mtime) }
}
pub(crate) fn unlink_if_exists(dir: BorrowedFd, name: &[u8], is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
    match rustix::fs::unlinkat(dir, std::ffi::OsStr::from_bytes(name), flags) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

/// Names in a directory (without "." and "..").
pub(crate) fn list_dir(fd: impl AsFd) -> io::Result<Vec<Vec<u8>>> {
    let dir = rustix::fs::Dir::read_from(fd).map_err(errno)?;
    let mut out = Vec::new();
    for ent in dir {
        let ent = ent.map_err(errno)?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// The `user.strata.meta` value for `want` (read back by [`parse_meta`]).
fn meta_record(want: &Attr) -> String {
    format!("{} {} {} {}", want.mode, want.uid, want.gid, want.rdev)
}

/// Whether a recorded mode can describe a host entry of type `host_kind`:
/// its own type, or one a regular file stands in for. A record that says
/// a directory is a file, or a file a directory (an upper directory made
/// or changed by hand), is ignored: the entry would be neither.
fn record_fits(host_kind: u32, recorded_mode: u32) -> bool {
    let recorded = recorded_mode & libc::S_IFMT;
    recorded == host_kind
        || host_kind == libc::S_IFREG
            && [libc::S_IFLNK, libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFBLK].contains(&recorded)
}

fn parse_meta(v: &[u8]) -> Option<(u32, u32, u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut it = s.split_ascii_whitespace().map(|x| x.parse::<u32>());
    Some((it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?))
}

/// `/proc/self/fd/N` for an fd: lets path-based calls act on an `O_PATH` fd
/// (the magic link resolves to the entry itself, symlinks included).
fn proc_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

pub(crate) fn get_xattr_fd(fd: &OwnedFd, name: &str) -> io::Result<Option<Vec<u8>>> {
    let p = proc_path(fd);
    let n = cstr(name.as_bytes())?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid C strings and a buffer of the given length.
        let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 8, 0),
            _ => return Err(e),
        }
    }
}

pub(crate) fn set_xattr_fd(fd: &OwnedFd, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let p = proc_path(fd);
    let n = cstr(name.as_bytes())?;
    // SAFETY: valid C strings and a value slice.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn remove_xattr_fd(fd: &OwnedFd, name: &str) -> io::Result<()> {
    let p = proc_path(fd);
    let n = cstr(name.as_bytes())?;
    // SAFETY: valid C strings.
    if unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn list_xattr_fd(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let p = proc_path(fd);
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: valid C string and a buffer of the given length.
        let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
            Some(libc::ERANGE) if buf.len() < (1 << 22) => buf.resize(buf.len() * 8, 0),
            _ => return Err(e),
        }
    }
}

/// Duplicates a borrowed fd into an owned one.
pub(crate) fn dup(fd: BorrowedFd) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(mode: u32, uid: u32, gid: u32, rdev: u32) -> Attr {
        Attr { mode, uid, gid, rdev, ..Attr::default() }
    }

    /// What an ordinary user's upper directory holds for ids, modes and
    /// device nodes it cannot have on the host, and how it reads back.
    #[test]
    fn records_what_the_host_cannot_hold() {
        let tmp = tempfile::tempdir().unwrap();
        let mut up = Upper::open(tmp.path()).unwrap();
        up.privileged = false; // behave as an ordinary user, even as root
        let root = up.dir(b"").unwrap();

        // A file with a foreign owner and a mode without owner access.
        drop(up.open_file(root.as_fd(), b"f", OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL).unwrap());
        let want = attr(libc::S_IFREG | 0o4000, 7, 8, 0);
        let mut rec = false;
        assert!(up.write_meta(root.as_fd(), b"f", &want, &mut rec).unwrap());
        assert!(rec);
        let h = up.stat(root.as_fd(), b"f").unwrap();
        assert_eq!(h.st.st_mode & 0o7777, 0o600, "the host file stays usable");
        let a = h.attr();
        assert_eq!((a.mode, a.uid, a.gid), (want.mode, 7, 8));
        assert!(!h.is_stand_in());

        // Back to what the host holds: the record goes away.
        let own = rustix::fs::fstat(up.path_fd(root.as_fd(), b"f").unwrap()).unwrap();
        let plain = attr(libc::S_IFREG | 0o640, own.st_uid, own.st_gid, 0);
        assert!(up.write_meta(root.as_fd(), b"f", &plain, &mut rec).unwrap());
        assert!(!rec);
        assert!(up.stat(root.as_fd(), b"f").unwrap().meta.is_none());

        // A device node becomes a regular stand-in file.
        let dev = attr(libc::S_IFCHR | 0o666, 0, 0, crate::tree::encode_dev(1, 3));
        up.make_stand_in(root.as_fd(), b"null", &dev, b"").unwrap();
        let h = up.stat(root.as_fd(), b"null").unwrap();
        assert!(h.is_stand_in());
        let a = h.attr();
        assert_eq!((a.mode, a.rdev), (dev.mode, dev.rdev));

        // Whiteouts: short ones share one inode, long names get their own file.
        up.create_whiteout(root.as_fd(), b"a").unwrap();
        up.create_whiteout(root.as_fd(), b"b").unwrap();
        let sa = rustix::fs::statat(&root, ".wh.a", AtFlags::empty()).unwrap();
        let sb = rustix::fs::statat(&root, ".wh.b", AtFlags::empty()).unwrap();
        assert_eq!(sa.st_ino, sb.st_ino);
        let long = vec![b'x'; 255];
        up.create_whiteout(root.as_fd(), &long).unwrap();
        let wh = whiteout_name(&long);
        assert!(wh.len() <= 255 && wh.starts_with(LONG_WH_PREFIX));
        assert_eq!(std::fs::read(tmp.path().join(std::ffi::OsStr::from_bytes(&wh))).unwrap(), long);
    }
}
