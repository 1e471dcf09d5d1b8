//! Copy-up: bringing lower entries into the upper directory, whole or
//! metadata only, and the helpers that move content.

use super::*;

impl FsInner {
    /// Copies the lower xattrs of a node onto its new upper entry.
    /// A copy-up that cannot take an xattr along fails: the copy would lose
    /// it for good (a commit reads the upper entry).
    pub(super) fn copy_lower_xattrs(&self, n: &Node, dir: BorrowedFd, name: &[u8]) -> io::Result<()> {
        let (Some((_, e)), Some(up)) = (self.lower_entry(n), &self.upper) else { return Ok(()) };
        // An image must not plant strata's own records (a forged metacopy
        // digest would expose another image's file).
        for (k, v) in e.xattrs.iter().filter(|(k, _)| !k.starts_with(upper::RESERVED_PREFIX)) {
            match up.set_xattr(dir, name, k, v, 0) {
                // A symlink cannot carry user.* xattrs on the host, like on any fs.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && n.attr.kind() == libc::S_IFLNK => {}
                r => r?,
            }
        }
        Ok(())
    }

    /// Whether a copy-up of `ino` made now carries no xattrs on the host: the
    /// lower entry has none, and the upper parent has none it could pass on
    /// (a default ACL).
    pub(super) fn copied_without_xattrs(&self, t: &Tree, ino: Ino) -> bool {
        let n = t.node(ino);
        let own = self
            .lower_entry(n)
            .is_some_and(|(_, e)| e.xattrs.iter().any(|(k, _)| !k.starts_with(upper::RESERVED_PREFIX)));
        !own && t.get(n.link.parent).is_some_and(|p| p.no_xattrs)
    }

    /// Runs `f` and restores the parent directory's timestamps afterwards (a
    /// copy-up is not a change of the parent).
    pub(super) fn keeping_times<R>(&self, dir: BorrowedFd, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let st = rustix::fs::fstat(dir).map_err(errno)?;
        let r = f()?;
        let up = self.upper()?;
        let _ = up.set_times(dir, b"", Some(Ts::atime(&st)), Some(Ts::mtime(&st)));
        Ok(r)
    }

    /// Makes sure directory `ino` exists in the upper directory.
    pub(super) fn ensure_upper_dir(&self, t: &mut Tree, ino: Ino) -> io::Result<()> {
        if !t.node(ino).attr.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        // The directories still missing above, nearest first: a loop, not
        // recursion, as an image may nest directories deeper than a stack.
        let mut missing = Vec::new();
        let mut at = ino;
        while at != ROOT && t.node(at).up != Up::Full {
            missing.push(at);
            at = t.node(at).link.parent;
            if at == 0 {
                // Removed while still open: no name left to copy up to.
                return Err(err(libc::ENOENT));
            }
        }
        for dir in missing.into_iter().rev() {
            self.copy_up_one_dir(t, dir)?;
        }
        Ok(())
    }

    /// Creates directory `ino` in the upper directory; its parent is there.
    fn copy_up_one_dir(&self, t: &mut Tree, ino: Ino) -> io::Result<()> {
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
            self.copy_lower_xattrs(n, pfd.as_fd(), &name)?;
            up.set_times(pfd.as_fd(), &name, Some(attr.atime), Some(attr.mtime))
        })?;
        let n = t.node_mut(ino);
        n.up = Up::Full;
        n.meta_rec = rec;
        n.no_xattrs = no_xattrs && !rec;
        // Its size, blocks and change time are the host directory's now:
        // the kernel is told (a directory is copied up once, and most
        // requests that do it carry no attributes of it).
        self.invalidate_attrs(ino);
        Ok(())
    }

    /// Copies a non-directory's metadata up: a lower regular file becomes an
    /// empty metacopy file, anything else is created whole.
    pub(super) fn copy_up_meta(&self, t: &mut Tree, ino: Ino) -> io::Result<()> {
        let n = t.node(ino);
        if n.up != Up::No {
            return Ok(());
        }
        if n.link.parent == 0 && ino != ROOT {
            return Err(err(libc::ENOENT));
        }
        if n.attr.is_dir() {
            return self.ensure_upper_dir(t, ino);
        }
        if n.attr.is_reg() {
            // Every name of a lower hard link group gets the one metacopy
            // file (a chmod of a 1 GiB linked file copied all of it).
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
            self.copy_lower_xattrs(t.node(ino), pfd.as_fd(), &name)?;
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
    pub(super) fn create_special(
        &self,
        up: &Upper,
        dir: BorrowedFd,
        name: &[u8],
        attr: &Attr,
        target: &[u8],
    ) -> io::Result<bool> {
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
    pub(super) fn copy_up_full(&self, t: &mut Tree, ino: Ino) -> io::Result<()> {
        let n = t.node(ino);
        match n.up {
            Up::Full => Ok(()),
            _ if !n.attr.is_reg() => self.copy_up_meta(t, ino),
            _ => self.copy_up_file(t, ino, Copy::Full, None).map(drop),
        }
    }

    /// Copies a lower regular file up. `prepared`: a file in the upper root
    /// that already holds the content (see [`FsInner::precopy`]); used when
    /// it holds just what `how` copies.
    /// Returns the new upper file opened read-write when this made it (not
    /// for metadata-only copies, nor when `prepared` was moved into place),
    /// so that an open for writing need not open it again.
    pub(super) fn copy_up_file(
        &self,
        t: &mut Tree,
        ino: Ino,
        how: Copy,
        prepared: Option<&Prepared>,
    ) -> io::Result<Option<File>> {
        let with_content = how != Copy::Meta;
        let up = self.upper()?;
        let n = t.node(ino);
        let (parent, was) = (n.link.parent, n.up);
        if parent == 0 {
            return Err(err(libc::ENOENT));
        }
        self.ensure_upper_dir(t, parent)?;
        let (pfd, name) = self.parent_fd(t, ino)?;
        // The other names (upper directory, name): of a lower hard link
        // group, which the copy gets; of a metacopy, which a prepared copy
        // replaces (their directories are up already).
        let mut others: Vec<(Arc<OwnedFd>, Box<[u8]>)> = Vec::new();
        let names: Vec<(Ino, Box<[u8]>)> = t.node(ino).more.iter().map(|l| (l.parent, l.name.clone())).collect();
        for (p, other) in names {
            self.ensure_upper_dir(t, p)?;
            others.push((self.upper_dir(t, p)?, other));
        }
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
        let prepared = prepared.filter(|p| how != Copy::Meta && p.len == how.content_len(entry_size(entry)));
        if was == Up::Meta {
            // Metadata is already up; fill in the content, keep the times.
            let st = rustix::fs::statat(&pfd, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
            let len = how.content_len(attr.size);
            // A file whose content was copied beforehand takes that copy's
            // inode instead, under each of its names.
            if let Some(p) = prepared {
                let (f, r) = self.fill_from_prepared(pfd.as_fd(), &name, &others, ino, &p.name, &attr, &st)?;
                let n = t.node_mut(ino);
                n.meta_rec = r;
                made = Some(f);
            } else if len > 0 {
                let out = up.open_file(pfd.as_fd(), &name, OFlags::WRONLY)?;
                // On disk before the marker that points below goes (the
                // copy-up fsync policy in the README); a failure keeps it,
                // and gives back the space of what was copied (a full disk
                // stayed full).
                let filled =
                    src.open_content(entry).and_then(|c| copy_content(&c, &out, len)).and_then(|()| out.sync_data());
                if let Err(e) = filled {
                    let _ = out.set_len(0);
                    return Err(e);
                }
                if attr.mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
                    // Our own writes cleared the host file's set-id bits when
                    // this server lacks CAP_FSETID (root of a user namespace).
                    let mut rec = t.node(ino).meta_rec;
                    up.write_meta(pfd.as_fd(), &name, &attr, &mut rec)?;
                    t.node_mut(ino).meta_rec = rec;
                }
            }
            if made.is_none() {
                up.set_metacopy(pfd.as_fd(), &name, None)?;
                up.set_times(pfd.as_fd(), &name, Some(Ts::atime(&st)), Some(Ts::mtime(&st)))?;
            }
        } else {
            // Build the copy under a temporary name, then move it into place.
            let tmp = format!(".wh..wh..cu.{ino}").into_bytes();
            let copied = self.keeping_times(pfd.as_fd(), || {
                let out = match prepared {
                    Some(p) => {
                        upper::unlink_if_exists(pfd.as_fd(), &tmp, false)?;
                        rustix::fs::renameat(up.root_fd(), OsStr::from_bytes(&p.name), &pfd, OsStr::from_bytes(&tmp))
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
                        let len = how.content_len(attr.size);
                        if len > 0 {
                            copy_content(&src.open_content(entry)?, &out, len)?;
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
                self.copy_lower_xattrs(n, pfd.as_fd(), &tmp)?;
                match &out {
                    Some(f) => up.set_times_file(f, Some(attr.atime), Some(attr.mtime))?,
                    None => up.set_times(pfd.as_fd(), &tmp, Some(attr.atime), Some(attr.mtime))?,
                }
                if with_content {
                    made = out;
                }
                self.place_copy(pfd.as_fd(), &tmp, &name, &others)
            });
            if let Err(e) = copied {
                // A half-made copy (a full disk, a failing lower read) must
                // not keep its space until the next copy-up of this file.
                let _ = self.keeping_times(pfd.as_fd(), || upper::unlink_if_exists(pfd.as_fd(), &tmp, false));
                return Err(e);
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
                    if let HandleKind::File { file, fill, .. } = &h.kind {
                        *file.write().unwrap_or_else(|p| p.into_inner()) = f.clone();
                        *fill.write().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                }
            }
        }
        Ok(made)
    }

    /// Fills in a metacopy file by replacing it with `prepared` (a copy of
    /// its content in the upper root, made outside the tree lock by
    /// [`FsInner::precopy`]): the copy takes over the upper file's xattrs
    /// (all but the metacopy marker), owner, mode and times, then its
    /// `others` names (directory, name) and its name. Returns the copy
    /// opened read-write and whether it carries a `user.strata.meta` record.
    #[allow(clippy::too_many_arguments)]
    fn fill_from_prepared(
        &self,
        dir: BorrowedFd,
        name: &[u8],
        others: &[(Arc<OwnedFd>, Box<[u8]>)],
        ino: Ino,
        prepared: &[u8],
        attr: &Attr,
        st: &rustix::fs::Stat,
    ) -> io::Result<(File, bool)> {
        let up = self.upper()?;
        let tmp = format!(".wh..wh..cu.{ino}").into_bytes();
        let r = (|| {
            upper::unlink_if_exists(dir, &tmp, false)?;
            self.keeping_times(dir, || {
                rustix::fs::renameat(up.root_fd(), OsStr::from_bytes(prepared), dir, OsStr::from_bytes(&tmp))
                    .map_err(errno)
            })?;
            let f = up.open_file(dir, &tmp, OFlags::RDWR)?;
            // Owner and mode before the xattrs: a chown drops
            // security.capability.
            let rec = up.write_meta_file(&f, attr)?;
            let old = up.path_fd(dir, name)?;
            let raw = upper::list_xattr_fd(&old)?;
            for x in raw.split(|&b| b == 0).filter(|x| !x.is_empty()) {
                let x = std::str::from_utf8(x).map_err(|_| err(libc::EINVAL))?;
                if x == upper::METACOPY_XATTR || x == upper::META_XATTR {
                    continue;
                }
                if let Some(v) = upper::get_xattr_fd(&old, x)? {
                    rustix::fs::fsetxattr(&f, x, &v, rustix::fs::XattrFlags::empty()).map_err(errno)?;
                }
            }
            up.set_times_file(&f, Some(Ts::atime(st)), Some(Ts::mtime(st)))?;
            self.replace_names(dir, &tmp, name, others)?;
            Ok((f, rec))
        })();
        if r.is_err() {
            let _ = upper::unlink_if_exists(dir, &tmp, false);
        }
        r
    }

    /// Gives a finished copy (`tmp` in `dir`) the other names of its hard
    /// link group and then its own: a failure on the way leaves no group
    /// half linked (and a later attempt no name in its way).
    fn place_copy(
        &self,
        dir: BorrowedFd,
        tmp: &[u8],
        name: &[u8],
        others: &[(Arc<OwnedFd>, Box<[u8]>)],
    ) -> io::Result<()> {
        let mut linked: Vec<(BorrowedFd, &[u8])> = Vec::new();
        let placed = (|| {
            for (ofd, other) in others {
                self.keeping_times(ofd.as_fd(), || {
                    // Only a crash can have left one there: the tree has the name as below.
                    upper::unlink_if_exists(ofd.as_fd(), other, false)?;
                    rustix::fs::linkat(dir, OsStr::from_bytes(tmp), ofd, OsStr::from_bytes(other), AtFlags::empty())
                        .map_err(errno)
                })?;
                linked.push((ofd.as_fd(), other));
            }
            rustix::fs::renameat(dir, OsStr::from_bytes(tmp), dir, OsStr::from_bytes(name)).map_err(errno)
        })();
        if placed.is_err() {
            for (ofd, other) in linked {
                let _ = upper::unlink_if_exists(ofd, other, false);
            }
        }
        placed
    }

    /// Puts a finished copy (`tmp` in `dir`) in place of the file that has
    /// the names `others` and `name` (one host inode, so each name gets the
    /// copy): first a link of it beside each other name, so that a failure
    /// (a full disk) changes no name and the group never splits; then each
    /// moved over its name, the primary name last.
    fn replace_names(
        &self,
        dir: BorrowedFd,
        tmp: &[u8],
        name: &[u8],
        others: &[(Arc<OwnedFd>, Box<[u8]>)],
    ) -> io::Result<()> {
        let beside: Vec<Vec<u8>> = (0..others.len()).map(|i| [tmp, format!(".l{i}").as_bytes()].concat()).collect();
        let mut linked = 0;
        let r = others.iter().zip(&beside).try_for_each(|((ofd, _), b)| {
            upper::unlink_if_exists(ofd.as_fd(), b, false)?;
            self.keeping_times(ofd.as_fd(), || {
                rustix::fs::linkat(dir, OsStr::from_bytes(tmp), ofd, OsStr::from_bytes(b), AtFlags::empty())
                    .map_err(errno)
            })?;
            linked += 1;
            Ok(())
        });
        if let Err(e) = r {
            for ((ofd, _), b) in others.iter().zip(&beside).take(linked) {
                let _ = upper::unlink_if_exists(ofd.as_fd(), b, false);
            }
            return Err(e);
        }
        for ((ofd, other), b) in others.iter().zip(&beside) {
            self.keeping_times(ofd.as_fd(), || {
                rustix::fs::renameat(ofd, OsStr::from_bytes(b), ofd, OsStr::from_bytes(other)).map_err(errno)
            })?;
        }
        self.keeping_times(dir, || {
            rustix::fs::renameat(dir, OsStr::from_bytes(tmp), dir, OsStr::from_bytes(name)).map_err(errno)
        })
    }

    /// Copies a large lower file's content into a temporary file in the
    /// upper root without holding the tree lock, so that other requests go on
    /// meanwhile; the copy-up under the lock then only moves it into place.
    /// Also for a metacopy about to be filled in (after a rename of a lower
    /// file, a chmod): filling in 1 GiB under the lock stalled every other
    /// request of the mount for the 0.5-3 s of the copy.
    pub(super) fn precopy(&self, ino: Ino, how: Copy) -> Option<Prepared> {
        const WORTH_IT: u64 = 1 << 20;
        let up = self.upper.as_ref()?;
        let (src, entry, fills_metacopy) = {
            let t = self.tree_read();
            let n = t.get(ino)?;
            // A lower file, or a metacopy (filled in by taking the copy's
            // inode under all its names, see copy_up_file).
            if n.up == Up::Full || !n.attr.is_reg() {
                return None;
            }
            let (src, entry) = self.lower_entry(n)?;
            (src, entry, n.up == Up::Meta)
        };
        let len = how.content_len(entry_size(entry));
        if len < WORTH_IT {
            return None;
        }
        self.drop_page_cache_meanwhile(ino);
        let name = format!(".wh..wh..cu.{ino}.{}", self.next_fh.fetch_add(1, Ordering::Relaxed)).into_bytes();
        let r = (|| -> io::Result<()> {
            let out = up.open_file(up.root_fd(), &name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?;
            copy_content(&src.open_content(entry)?, &out, len)?;
            if fills_metacopy {
                // On disk before it replaces the file that points below
                // (the copy-up fsync policy in the README), and here,
                // outside the tree lock.
                out.sync_data()?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => Some(Prepared { name, len }),
            Err(_) => {
                let _ = upper::unlink_if_exists(up.root_fd(), &name, false);
                None
            }
        }
    }

    /// Removes a precopy that was not used (someone else copied the file
    /// up first, or the copy-up failed).
    pub(super) fn drop_precopy(&self, p: Option<Prepared>) {
        if let (Some(p), Some(up)) = (p, &self.upper) {
            let _ = upper::unlink_if_exists(up.root_fd(), &p.name, false);
        }
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
    pub(super) fn drop_page_cache_meanwhile(&self, ino: Ino) {
        let Some(notifier) = self.notifier.get().cloned() else { return };
        let _ = std::thread::Builder::new().name("strata-inval".into()).spawn(move || {
            // ENOENT when the kernel holds no inode for it: nothing to drop.
            let _ = notifier.inval_inode(INodeNo(ino), 0, -1);
        });
    }

    /// Has the kernel ask for the attributes of `ino` again (they changed
    /// behind an answer that carried none). Attributes only, no page
    /// cache, so it takes no lock a request in flight may hold and is
    /// safe from within a handler.
    pub(super) fn invalidate_attrs(&self, ino: Ino) {
        if let Some(notifier) = self.notifier.get() {
            // ENOENT when the kernel holds no inode for it: nothing cached.
            let _ = notifier.inval_inode(INodeNo(ino), -1, 0);
        }
    }

    /// Copies a lower regular file up before it is truncated to `size`:
    /// only the part that stays is copied (`truncate -s 0` of a 1 GiB lower
    /// file copied all of it first: 0.6 s).
    pub(super) fn copy_up_for_truncate(
        &self,
        t: &mut Tree,
        ino: Ino,
        size: u64,
        prepared: Option<&Prepared>,
    ) -> io::Result<()> {
        let n = t.node(ino);
        if n.up == Up::Full || !n.attr.is_reg() {
            return self.copy_up_full(t, ino);
        }
        self.copy_up_file(t, ino, Copy::Head(size), prepared).map(drop)
    }

    /// Copies a node and, for a directory, everything below it, up for a
    /// rename: regular files as metacopies (their content is found by
    /// digest, wherever the name goes), so that moving a lower file or tree
    /// copies no content (`mv` of a 1 GiB lower file took 3.0 s, as a full
    /// copy). Kernel overlayfs does the same with metacopy=on.
    pub(super) fn copy_up_tree(&self, t: &mut Tree, ino: Ino) -> io::Result<()> {
        // Parents before children, with a stack of our own (no recursion).
        let mut todo = vec![ino];
        while let Some(at) = todo.pop() {
            if !t.node(at).attr.is_dir() {
                let below = t.node(at).up == Up::No;
                self.copy_up_meta(t, at)?;
                if below && at != ino {
                    // Its change time and blocks are the metacopy's now; the
                    // kernel updates those of the renamed entry itself.
                    self.invalidate_attrs(at);
                }
                continue;
            }
            self.ensure_upper_dir(t, at)?;
            todo.extend(t.dir(at).iter().flat_map(|d| d.children.values().copied()));
        }
        Ok(())
    }

    /// After a directory moved: nothing below it covers a lower path any
    /// more, so its whiteouts are stale; drop them (best effort on the host:
    /// a stale whiteout where no lower path is hides nothing, and where the
    /// directory landed over a lower one it is opaque).
    pub(super) fn forget_lower_below(&self, t: &mut Tree, dir: Ino) {
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
            if let (false, Ok(fd), Some(up)) = (hidden.is_empty(), self.upper_dir(t, d), self.upper.as_ref()) {
                // Not a change of the directory: its times stay.
                let _ = self.keeping_times(fd.as_fd(), || {
                    for h in hidden {
                        let _ = up.remove_whiteout(fd.as_fd(), &h);
                    }
                    Ok(())
                });
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
    }
}

/// Whether copy_file_range failed across filesystems before (then a plain
/// copy is made at once): an upper directory on another filesystem than
/// the store (e.g. a tmpfs) refuses it every time.
pub(super) static NO_COPY_RANGE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Copies the `len` bytes of `src` (the size the layer index gives), in
/// kernel where the filesystems allow it.
pub(super) fn copy_content(src: &File, dst: &File, len: u64) -> io::Result<()> {
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
pub(super) fn entry_size(e: &Entry) -> u64 {
    match &e.kind {
        EntryKind::File { size, .. } => *size,
        _ => 0,
    }
}
