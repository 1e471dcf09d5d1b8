//! Attribute changes (chmod, chown, utimes, truncate) and set-id clearing.

use super::*;

/// What a SETATTR asks to change (`None`: left as it is).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    /// The open file it came through (ftruncate).
    pub fh: Option<FileHandle>,
}

impl FsInner {
    pub(super) fn do_setattr(&self, ino: Ino, change: AttrChange, kill_set_id: bool) -> io::Result<FileAttr> {
        // A large lower file about to be truncated: the part that stays is
        // copied before the tree lock is taken.
        let prepared = change.size.and_then(|s| self.precopy(ino, Copy::Head(s)));
        let r = self.setattr_locked(ino, change, kill_set_id, prepared.as_ref());
        self.drop_precopy(prepared);
        r
    }

    fn setattr_locked(
        &self,
        ino: Ino,
        change: AttrChange,
        kill_set_id: bool,
        prepared: Option<&Prepared>,
    ) -> io::Result<FileAttr> {
        let AttrChange { mode, uid, gid, size, atime, mtime, fh } = change;
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
                self.copy_up_for_truncate(&mut t, ino, size, prepared)?;
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
        let conv = |x: Option<TimeOrNow>| {
            x.map(|v| match v {
                TimeOrNow::Now => now(),
                TimeOrNow::SpecificTime(s) => ts_of(s),
            })
        };
        let (at, mt) = (conv(atime), conv(mtime));
        if mode.is_some() || uid.is_some() || gid.is_some() || at.is_some() || mt.is_some() {
            if !linked {
                // Removed while open: the host file lives on in the open
                // files, and `attr` reads its times from one of them. So the
                // times go to it, as does the change time a chown or chmod
                // moves; type, owner and mode are the tree's.
                let host = if t.node(ino).up == Up::Full { self.open_file_of(ino) } else { None };
                if let Some(f) = &host {
                    if at.is_some() || mt.is_some() {
                        up.set_times_file(f, at, mt)?;
                    } else {
                        upper::touch_ctime_file(f)?;
                    }
                }
                let a = &mut t.node_mut(ino).attr;
                if let Some(m) = mode {
                    a.mode = (a.mode & libc::S_IFMT) | (m & 0o7777);
                }
                a.uid = uid.unwrap_or(a.uid);
                a.gid = gid.unwrap_or(a.gid);
                a.atime = at.unwrap_or(a.atime);
                a.mtime = mt.unwrap_or(a.mtime);
                a.ctime = now();
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
            let held = !ids_or_mode || at_once || up.change_meta(pfd.as_fd(), &name, &a, &mut rec)?;
            t.node_mut(ino).meta_rec = rec;
            if !held {
                let target = if a.kind() == libc::S_IFLNK { self.symlink_target(&t, ino)? } else { Vec::new() };
                let st = stat_host(pfd.as_fd(), &name)?;
                up.make_stand_in(pfd.as_fd(), &name, &a, &target)?;
                let n = t.node_mut(ino);
                (n.meta_rec, n.no_xattrs) = (true, false);
                up.set_times(pfd.as_fd(), &name, Some(Ts::atime(&st)), Some(Ts::mtime(&st)))?;
                t.node_mut(ino).stand_in = true;
            }
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
    ///
    /// Its callers (WRITE, an O_TRUNC OPEN, FALLOCATE) answer without
    /// attributes, and the kernel keeps the mode it has cached after them:
    /// a stat asking for the mode alone, and exec, which goes by the cached
    /// mode, would still see the set-id bits (a container's user could
    /// write into a set-uid-root binary and run it as root). So the
    /// kernel's attributes of the inode are invalidated before the answer
    /// whenever bits went.
    pub(super) fn kill_set_id(&self, ino: Ino) -> io::Result<FileAttr> {
        let had = |t: &Tree| t.get(ino).map_or(0, |n| n.attr.mode & (libc::S_ISUID | libc::S_ISGID));
        let before = had(&self.tree_read());
        let a = self.do_setattr(ino, AttrChange::default(), true)?;
        if before != 0 && had(&self.tree_read()) != before {
            self.invalidate_attrs(ino);
        }
        Ok(a)
    }
}
