//! Changes of the namespace: creating, removing and renaming names.

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
            req.gid()
        };
        let n = now();
        Attr { mode, uid: req.uid(), gid, rdev: 0, size: 0, blocks: 0, atime: n, mtime: n, ctime: n }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_create(
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

    pub(super) fn do_mkdir(&self, req: &Request, parent: Ino, name: &[u8], mode: u32) -> io::Result<(Ino, FileAttr)> {
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
        if hidden {
            up.remove_whiteout(pfd.as_fd(), name)?;
        }
        let stand_in = self.create_special(up, pfd.as_fd(), name, &attr, b"")?;
        Ok(self.finish_create(&mut t, &pfd, parent, name, attr, hidden, stand_in, true))
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
        if hidden {
            up.remove_whiteout(pfd.as_fd(), name)?;
        }
        let stand_in = self.create_special(up, pfd.as_fd(), name, &attr, target)?;
        Ok(self.finish_create(&mut t, &pfd, parent, name, attr, hidden, stand_in, true))
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
}
