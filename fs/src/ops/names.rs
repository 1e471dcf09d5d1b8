//! Changes of the namespace: creating, removing and renaming names.
//!
//! Each change is several host steps (an entry, its whiteout, an opaque
//! marker, a rename), and the disk can fill up or the process die between
//! any two. They are ordered so that every state in between reads, after a
//! remount, as either the old or the new one: an entry and its whiteout side
//! by side read as the entry, so a creation makes the entry before removing
//! the whiteout and a removal writes the whiteout before removing the entry;
//! a rename does whatever can fail before the host rename. The tree changes
//! only once the host steps are done.

use super::*;

impl FsInner {
    /// Common start of every creation: checks and the upper parent. Returns
    /// the parent's upper fd and whether the name hides a lower entry.
    pub(super) fn prepare_create(&self, t: &mut Tree, parent: Ino, name: &[u8]) -> io::Result<(Arc<OwnedFd>, bool)> {
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
    pub(super) fn new_attr(&self, t: &Tree, req: &Request, parent: Ino, mode: u32) -> Attr {
        let p = t.node(parent).attr;
        let mut mode = mode;
        let gid = if p.mode & libc::S_ISGID != 0 {
            if mode & libc::S_IFMT == libc::S_IFDIR {
                mode |= libc::S_ISGID;
            }
            p.gid
        } else {
            self.gid_in(req.gid())
        };
        let n = now();
        Attr { mode, uid: self.uid_in(req.uid()), gid, rdev: 0, size: 0, blocks: 0, atime: n, mtime: n, ctime: n }
    }

    /// Links a node strata just created in the upper directory. `rec`: the
    /// host entry carries a `user.strata.meta` record.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn link_new(
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
    pub(super) fn do_create(
        &self,
        req: &Request,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> io::Result<(Ino, FileAttr, File)> {
        let mut t = self.tree_write();
        let (pfd, hidden) = self.prepare_create(&mut t, parent, name)?;
        let up = self.upper()?;
        let attr = self.new_attr(&t, req, parent, libc::S_IFREG | (mode & 0o7777));
        let (file, rec) = create_over(up, pfd.as_fd(), name, hidden, false, || {
            let file = up.open_file(pfd.as_fd(), name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL)?;
            // Owner, mode and attributes through the new fd: no name lookups.
            let rec = up.write_meta_file(&file, &attr)?;
            Ok((file, rec))
        })?;
        let ino = self.link_new(&mut t, parent, name, attr, hidden, false, rec);
        let a = self.attr(&t, ino, Some((file.as_fd(), b"")));
        Ok((ino, a, file))
    }

    pub(super) fn do_mkdir(&self, req: &Request, parent: Ino, name: &[u8], mode: u32) -> io::Result<(Ino, FileAttr)> {
        let mut t = self.tree_write();
        let (pfd, hidden) = self.prepare_create(&mut t, parent, name)?;
        let up = self.upper()?;
        let attr = self.new_attr(&t, req, parent, libc::S_IFDIR | (mode & 0o7777));
        let rec = create_over(up, pfd.as_fd(), name, hidden, true, || {
            rustix::fs::mkdirat(&pfd, OsStr::from_bytes(name), up.create_perm(attr.mode)).map_err(errno)?;
            let mut rec = false;
            up.write_meta(pfd.as_fd(), name, &attr, &mut rec)?;
            if hidden {
                // Recreated over a deleted lower entry: hide what was below.
                up.create_opaque(open_new_dir(pfd.as_fd(), name)?.as_fd())?;
            }
            Ok(rec)
        })?;
        let ino = self.link_new(&mut t, parent, name, attr, hidden, false, rec);
        if let Some(d) = t.dir_mut(ino).filter(|_| hidden) {
            d.opaque = true;
        }
        Ok((ino, self.attr(&t, ino, Some((pfd.as_fd(), name)))))
    }

    pub(super) fn do_mknod(
        &self,
        req: &Request,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> io::Result<(Ino, FileAttr)> {
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
        let stand_in = create_over(up, pfd.as_fd(), name, hidden, false, || {
            self.create_special(up, pfd.as_fd(), name, &attr, b"")
        })?;
        let ino = self.link_new(&mut t, parent, name, attr, hidden, stand_in, true);
        Ok((ino, self.attr(&t, ino, Some((pfd.as_fd(), name)))))
    }

    pub(super) fn do_symlink(
        &self,
        req: &Request,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> io::Result<(Ino, FileAttr)> {
        let mut t = self.tree_write();
        let (pfd, hidden) = self.prepare_create(&mut t, parent, name)?;
        let up = self.upper()?;
        let mut attr = self.new_attr(&t, req, parent, libc::S_IFLNK | 0o777);
        attr.size = target.len() as u64;
        let stand_in = create_over(up, pfd.as_fd(), name, hidden, false, || {
            self.create_special(up, pfd.as_fd(), name, &attr, target)
        })?;
        let ino = self.link_new(&mut t, parent, name, attr, hidden, stand_in, true);
        Ok((ino, self.attr(&t, ino, Some((pfd.as_fd(), name)))))
    }

    pub(super) fn do_link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> io::Result<()> {
        let mut t = self.tree_write();
        if t.get(ino).is_none_or(|n| n.attr.is_dir() || n.nlink() == 0) {
            return Err(err(libc::EPERM));
        }
        let (dfd, hidden) = self.prepare_create(&mut t, newparent, newname)?;
        // A metacopy can take more names: filling in its content later
        // writes into the one host inode they share.
        self.copy_up_meta(&mut t, ino)?;
        let up = self.upper()?;
        let (sfd, sname) = self.parent_fd(&t, ino)?;
        create_over(up, dfd.as_fd(), newname, hidden, false, || {
            rustix::fs::linkat(&sfd, OsStr::from_bytes(&sname), &dfd, OsStr::from_bytes(newname), AtFlags::empty())
                .map_err(errno)
        })?;
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

    pub(super) fn do_remove(&self, parent: Ino, name: &[u8], want_dir: bool) -> io::Result<()> {
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
        // The whiteout first: until the upper entry is gone too, the two side
        // by side read as the entry, so a failure in between loses nothing.
        // On a full upper filesystem the entry goes first instead, freeing
        // what the whiteout needs: removing files must work there.
        let mut whiteout_made = false;
        if covers {
            match up.create_whiteout(pfd.as_fd(), name) {
                Ok(()) => whiteout_made = true,
                Err(e) if in_upper && matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) => {}
                Err(e) => return Err(e),
            }
        }
        let single_open_file =
            !is_dir && t.node(c).up == Up::Full && t.node(c).nlink() == 1 && self.open_file_of(c).is_some();
        if covers && !whiteout_made && single_open_file {
            // Still open, its host inode outlives the removal: removing it
            // first would free nothing for the whiteout, and the change
            // would be lost (the lower file would show again).
            return Err(err(libc::ENOSPC));
        }
        if in_upper {
            let removed = (|| {
                if is_dir {
                    up.empty_dir(pfd.as_fd(), name)?;
                }
                upper::unlink_if_exists(pfd.as_fd(), name, is_dir)
            })();
            if let Err(e) = removed {
                if whiteout_made {
                    let _ = up.remove_whiteout(pfd.as_fd(), name);
                }
                return Err(e);
            }
            if is_dir {
                // Our fd of it would keep the host directory (and its
                // inode, which the whiteout may need) alive.
                self.dir_removed(c);
            }
        }
        if covers && !whiteout_made {
            // What the removed entry held is free only once its last open
            // file is closed, and the kernel may close a passthrough backing
            // file a moment after the RELEASE (a deferred fput): on a full
            // filesystem the whiteout waits for that moment, briefly.
            let mut waited = 0;
            loop {
                match up.create_whiteout(pfd.as_fd(), name) {
                    Err(e) if in_upper && e.raw_os_error() == Some(libc::ENOSPC) && waited < 20 => {
                        waited += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    r => break r?,
                }
            }
        }
        if is_dir {
            self.dir_removed(c);
        }
        if covers {
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

    pub(super) fn do_rename(
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
        // Everything that can fail happens before the host rename, and what
        // it adds is harmless where the entries still are (an opaque marker
        // on a directory copied up whole hides nothing it shows; a whiteout
        // beside its entry reads as the entry); after the rename only
        // best-effort clean-up follows, so the host never ends up ahead of
        // the tree.
        if exchange {
            let d = d.ok_or_else(|| err(libc::ENOENT))?;
            // Each directory becomes opaque where it lands over a lower entry.
            let markers: Vec<Arc<OwnedFd>> = [(s, d_link_covers), (d, s_covers)]
                .into_iter()
                .filter(|&(node, covers_now)| covers_now && t.node(node).attr.is_dir())
                .map(|(node, _)| self.upper_dir(&t, node))
                .collect::<io::Result<_>>()?;
            for fd in &markers {
                self.keeping_times(fd.as_fd(), || up.create_opaque(fd.as_fd()))?;
            }
            rustix::fs::renameat_with(&sfd, oname, &dfd, nname, rustix::fs::RenameFlags::EXCHANGE).map_err(errno)?;
            t.remove_link(s, parent, name);
            t.remove_link(d, newparent, newname);
            t.add_link(s, newparent, newname, d_link_covers);
            t.add_link(d, parent, name, s_covers);
            for (node, covers_now) in [(s, d_link_covers), (d, s_covers)] {
                if t.node(node).attr.is_dir() {
                    self.forget_lower_below(&mut t, node);
                    if let Some(x) = t.dir_mut(node).filter(|_| covers_now) {
                        x.opaque = true;
                    }
                }
            }
            return Ok(());
        }
        let covers = d_link_covers || d_hidden;
        let s_marker = if s_dir && covers { Some(self.upper_dir(&t, s)?) } else { None };
        if let Some(fd) = &s_marker {
            // A marker, not a change of the directory: its times stay (where
            // kernel overlayfs sets an xattr, which changes no times).
            self.keeping_times(fd.as_fd(), || up.create_opaque(fd.as_fd()))?;
        }
        if s_covers {
            up.create_whiteout(sfd.as_fd(), name)?;
        }
        if let Some(d) = d {
            if t.node(d).attr.is_dir() && t.node(d).up == Up::Full {
                // Empty in the merged view; clear its whiteouts so the host
                // rename can replace it.
                up.empty_dir(dfd.as_fd(), newname)?;
            }
        }
        let host_flags = if noreplace { rustix::fs::RenameFlags::NOREPLACE } else { rustix::fs::RenameFlags::empty() };
        if let Err(e) = rustix::fs::renameat_with(&sfd, oname, &dfd, nname, host_flags) {
            if s_covers {
                let _ = up.remove_whiteout(sfd.as_fd(), name);
            }
            if let Some(fd) = &s_marker {
                let _ = self.keeping_times(fd.as_fd(), || upper::unlink_if_exists(fd.as_fd(), upper::OPAQUE, false));
            }
            return Err(errno(e));
        }
        if d_hidden {
            // Left behind, it would still read as the entry (see create_over).
            let _ = up.remove_whiteout(dfd.as_fd(), newname);
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
            self.forget_lower_below(&mut t, s);
            if let Some(x) = t.dir_mut(s).filter(|_| covers) {
                x.opaque = true;
            }
        }
        Ok(())
    }
}

/// Opens directory `name` of `dir` in the upper directory (never through a symlink).
fn open_new_dir(dir: BorrowedFd, name: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, OsStr::from_bytes(name), flags, rustix::fs::Mode::empty()).map_err(errno)
}

/// Removes what a failed creation left of `name` in `dir`, best effort: the
/// entry, and for a directory the opaque marker it may hold.
fn undo_create(dir: BorrowedFd, name: &[u8], is_dir: bool) {
    if is_dir {
        if let Ok(fd) = open_new_dir(dir, name) {
            let _ = upper::unlink_if_exists(fd.as_fd(), upper::OPAQUE, false);
        }
    }
    let _ = upper::unlink_if_exists(dir, name, is_dir);
}

/// The host steps of creating `name` in `dir`: `make` creates the entry, then
/// the whiteout it replaces (`hidden`) goes. An entry and its whiteout side
/// by side read as the entry (`load`), so no crash or full disk between the
/// steps can bring the deleted lower entry back; when a step fails, the entry
/// is removed again and the whiteout stays. (An entry the tree does not know,
/// left by an earlier crash, goes the same way: the next attempt succeeds.)
fn create_over<R>(
    up: &Upper,
    dir: BorrowedFd,
    name: &[u8],
    hidden: bool,
    is_dir: bool,
    make: impl FnOnce() -> io::Result<R>,
) -> io::Result<R> {
    let made = make().and_then(|v| {
        if hidden {
            up.remove_whiteout(dir, name)?;
        }
        Ok(v)
    });
    if made.is_err() {
        undo_create(dir, name, is_dir);
    }
    made
}
