//! The fuser `Filesystem` implementation: decodes each request, calls the
//! state's operations, and answers (or hands the request to a worker).

use super::*;

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
            | F::FUSE_BIG_WRITES
            // POSIX ACLs: the kernel then enforces the ACLs it reads
            // (system.posix_acl_*, from the layers or the upper file) in
            // its permission checks, as kernel overlayfs does, and follows
            // an ACL change with the mode change it implies. Without it,
            // ACLs were stored and shown but not enforced.
            | F::FUSE_POSIX_ACL
            // The caller's umask comes with the request instead of being
            // applied by the kernel: in a directory with a default ACL it
            // does not apply (`FsInner::creation_mode`).
            | F::FUSE_DONT_MASK;
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

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = self.op(Op::Lookup, req.pid());
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
    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        let _op = self.op(Op::Forget, req.pid());
        if self.tree_read().forget(ino.0, nlookup) {
            self.tree_write().reclaim_forgotten(ino.0);
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = self.op(Op::Getattr, req.pid());
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
        let _op = self.op(Op::Setattr, req.pid());
        // With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to us: a
        // chown clears set-id bits, a truncation by a caller without
        // CAP_FSETID too.
        let kill = self.killpriv.load(Ordering::Relaxed)
            && (uid.is_some() || gid.is_some() || (size.is_some() && self.change_kills_set_id(req)));
        let (uid, gid) = (uid.map(|u| self.uid_in(u)), gid.map(|g| self.gid_in(g)));
        let change = super::attrs::AttrChange { mode, uid, gid, size, atime, mtime, fh };
        let run = move |fs: &FsInner| match fs.do_setattr(ino.0, change, kill) {
            Ok(a) => reply.attr(&UPPER_TTL, &a),
            Err(e) => reply.error(eno(e)),
        };
        if size.is_some() && self.copy_up_is_big(ino.0) {
            // Truncating a lower file copies it up.
            return self.offload(run);
        }
        run(self);
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _op = self.op(Op::Readlink, req.pid());
        let t = self.tree_read();
        if t.get(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        match self.symlink_target(&t, ino.0) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let _op = self.op(Op::Mknod, req.pid());
        let mode = self.creation_mode(parent.0, mode, umask);
        self.entry_reply(reply, self.do_mknod(req, parent.0, name.as_bytes(), mode, rdev));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _op = self.op(Op::Mkdir, req.pid());
        let mode = self.creation_mode(parent.0, mode, umask);
        self.entry_reply(reply, self.do_mkdir(req, parent.0, name.as_bytes(), mode));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.op(Op::Unlink, req.pid());
        match self.do_remove(parent.0, name.as_bytes(), false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.op(Op::Rmdir, req.pid());
        match self.do_remove(parent.0, name.as_bytes(), true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let _op = self.op(Op::Symlink, req.pid());
        self.entry_reply(reply, self.do_symlink(req, parent.0, link_name.as_bytes(), target.as_os_str().as_bytes()));
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = self.op(Op::Rename, req.pid());
        match self.do_rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _op = self.op(Op::Link, req.pid());
        let r = self.do_link(ino.0, newparent.0, newname.as_bytes()).map(|()| {
            let t = self.tree_read();
            (ino.0, self.attr(&t, ino.0, None))
        });
        self.entry_reply(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.0 & libc::O_ACCMODE;
        let for_writing = acc != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let kill = flags.0 & libc::O_TRUNC != 0 && self.change_kills_set_id(req);
        if for_writing && self.upper.is_some() && self.copy_up_is_big(ino.0) {
            // Copies the file up first.
            let caller = req.pid();
            return self.offload(move |fs| fs.open_reply(ino.0, flags.0, kill, caller, reply));
        }
        self.open_reply(ino.0, flags.0, kill, req.pid(), reply);
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(h) = self.handle(fh.0) else { return reply.error(Errno::EBADF) };
        let HandleKind::File { file, fill, .. } = &h.kind else { return reply.error(Errno::EISDIR) };
        // `fill` first: a copy-up replaces the file before it clears `fill`,
        // so a file in parts is never taken without its fill.
        let fill = fill.read().unwrap_or_else(|p| p.into_inner()).clone();
        let f = file.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Data in the host's page cache is answered right here; a read that
        // would wait for the disk goes on on a worker, as does one of a file
        // being fetched in parts (its range may have to come first).
        let mut buf: Vec<u8> = Vec::new();
        if size <= NOWAIT_READ_MAX && fill.is_none() {
            buf = vec![0u8; size as usize];
            match rustix::io::preadv2(
                &*f,
                &mut [std::io::IoSliceMut::new(&mut buf)],
                offset,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                Ok(n) if n == buf.len() => {
                    let _op = self.op(Op::Read, req.pid());
                    return reply.data(&buf);
                }
                Ok(n) => buf.truncate(n),
                Err(_) => buf.clear(),
            }
        }
        let caller = req.pid();
        self.offload(move |fs| {
            let _op = fs.op(Op::Read, caller);
            if let Some(Err(e)) = fill.map(|f| f.fill(offset, size.into())) {
                return reply.error(eno(e));
            }
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
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = self.op(Op::Write, req.pid());
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

    fn flush(&self, req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing to do at close (writes are on the host already): ENOSYS
        // makes the kernel stop sending FLUSH for this mount.
        let _op = self.op(Op::Flush, req.pid());
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.op(Op::Release, req.pid());
        let h = self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh.0);
        if let Some(h) = h {
            if let HandleKind::File { mode, .. } = &h.kind {
                self.io_closed(h.ino, *mode);
            }
        }
        reply.ok();
    }

    fn fsync(&self, req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let _op = self.op(Op::Fsync, req.pid());
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

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = self.op(Op::Opendir, req.pid());
        if self.kernel_opens_dirs() {
            return reply.error(Errno::ENOSYS);
        }
        let is_dir = self.tree_read().get(ino.0).map(|n| n.dir.is_some());
        match is_dir {
            // The kernel may keep what it read of the directory: every change
            // comes through it and drops that cache. The listing is taken
            // at the first read (`FsInner::listing`).
            Some(true) => reply.opened(
                FileHandle(self.add_handle(ino.0, HandleKind::Dir(Mutex::new(None)))),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Some(false) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _op = self.op(Op::Readdir, req.pid());
        let ents = match self.listing(ino.0, fh.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        // What follows the entry at `offset` (a cookie, see `tree::Dir`).
        let start = ents.partition_point(|e| e.off <= offset);
        for e in &ents[start..] {
            if reply.add(INodeNo(e.ino), e.off, e.kind, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _op = self.op(Op::Readdirplus, req.pid());
        let ents = match self.listing(ino.0, fh.0, offset) {
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
        let start = ents.partition_point(|e| e.off <= offset);
        for e in &ents[start..] {
            let dots = &*e.name == b"." || &*e.name == b"..";
            // The kernel makes dentries from these entries: answer with what
            // the name is now, and leave out names removed since the listing (a
            // stale entry would bring a deleted inode back under its name).
            let cur = if dots { Some(e.ino) } else { t.child(ino.0, &e.name) };
            let Some(cur) = cur else { continue };
            let Some(n) = t.get(cur) else { continue };
            let hint = match &dir_fd {
                Some(fd) if !dots => Some((fd.as_fd(), &*e.name)),
                _ => None,
            };
            let a = self.attr(&t, cur, hint);
            if reply.add(INodeNo(cur), e.off, OsStr::from_bytes(&e.name), &FsInner::ttl(n), &a, Generation(0)) {
                break; // full: this entry did not go out
            }
            if !dots {
                n.looked_up();
            }
        }
        reply.ok();
    }

    fn releasedir(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _op = self.op(Op::Releasedir, req.pid());
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _op = self.op(Op::Fsyncdir, req.pid());
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = self.op(Op::Statfs, req.pid());
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
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _op = self.op(Op::Setxattr, req.pid());
        let r = (|| {
            let name = name.as_bytes();
            check_xattr_name(name)?;
            let mut t = self.tree_write();
            let up = self.upper()?;
            if t.get(ino.0).is_none() {
                return Err(err(libc::ENOENT));
            }
            self.copy_up_meta(&mut t, ino.0)?;
            t.node_mut(ino.0).no_xattrs = false;
            up.set_xattr_of(&self.upper_entry_fd(&t, ino.0)?, name, value, flags)?;
            // An access ACL carries the permission bits (its owner, mask or
            // group, and other entries): the mode follows it, as on any
            // filesystem with ACLs. The kernel leaves that to the server,
            // and also clearing S_ISGID when the caller is neither in the
            // file's group nor holds CAP_FSETID (it would say so with
            // FUSE_SETXATTR_ACL_KILL_SGID, but fuser cannot parse the
            // extended request that needs).
            let Some(attr) = t.get(ino.0).map(|n| n.attr) else { return Ok(None) };
            if name != b"system.posix_acl_access" {
                return Ok(None);
            }
            let keep_sgid = attr.mode & libc::S_ISGID == 0
                || caller::in_group_or_capable(req.pid(), req.uid(), req.gid(), self.gid_out(attr.gid));
            let mode = if keep_sgid { attr.mode } else { attr.mode & !libc::S_ISGID };
            Ok(acl_mode(value, mode).or((mode != attr.mode).then_some(mode)))
        })();
        let r = match r {
            Ok(Some(mode)) => {
                self.do_setattr(ino.0, attrs::AttrChange { mode: Some(mode), ..Default::default() }, false).map(drop)
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = self.op(Op::Getxattr, req.pid());
        if self.no_xattrs_at_all {
            // The kernel remembers this for the mount: every later getxattr
            // fails with EOPNOTSUPP without a round trip (ls -l asks two
            // per file). Nothing can ever be found here, nor set.
            return reply.error(Errno::ENOSYS);
        }
        let r = (|| {
            if !known_xattr_namespace(name.as_bytes()) {
                return Err(err(libc::EOPNOTSUPP));
            }
            let t = self.tree_read();
            self.xattr_of(&t, ino.0, name.as_bytes())?.ok_or_else(|| err(libc::ENODATA))
        })();
        FsInner::xattr_reply(reply, size, r);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = self.op(Op::Listxattr, req.pid());
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
                self.upper()?.list_xattrs_of(&self.upper_entry_fd(&t, ino.0)?)?
            };
            let trusted = |k: &Vec<u8>| k.starts_with(b"trusted.");
            let hide_trusted = names.iter().any(trusted) && !caller::has_init_sys_admin(req.pid());
            let mut out = Vec::new();
            for k in names.into_iter().filter(|k| !(hide_trusted && trusted(k)) && known_xattr_namespace(k)) {
                out.extend_from_slice(&k);
                out.push(0);
            }
            Ok(out)
        })();
        FsInner::xattr_reply(reply, size, r);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.op(Op::Removexattr, req.pid());
        let r = (|| {
            let name = name.as_bytes();
            check_xattr_name(name)?;
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
            up.remove_xattr_of(&self.upper_entry_fd(&t, ino.0)?, name)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(eno(e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _op = self.op(Op::Access, req.pid());
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
        // The caller's ids against the owner the kernel was shown.
        let (uid, gid) = (req.uid(), req.gid());
        let (owner, group) = (self.uid_out(a.uid), self.gid_out(a.gid));
        let perm = if uid == 0 {
            // root: everything except executing a file without any x bit
            if mask & 1 != 0 && !a.is_dir() && a.mode & 0o111 == 0 {
                0
            } else {
                7
            }
        } else if uid == owner {
            (a.mode >> 6) & 7
        } else if gid == group {
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
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _op = self.op(Op::Create, req.pid());
        let mode = self.creation_mode(parent.0, mode, umask);
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
                                    fill: no_fill(),
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
                        fill: no_fill(),
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
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _op = self.op(Op::Fallocate, req.pid());
        let Some(h) = self.handle(fh.0) else { return reply.error(Errno::EBADF) };
        let HandleKind::File { file, writable: true, .. } = &h.kind else { return reply.error(Errno::EBADF) };
        let f = file.read().unwrap_or_else(|p| p.into_inner()).clone();
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        // Like a write, it clears set-id bits of a caller without
        // CAP_FSETID (the kernel passes no flag for it).
        let kill = self.change_kills_set_id(req);
        self.offload(move |fs| match rustix::fs::fallocate(&*f, flags, offset, length) {
            Ok(()) => match kill.then(|| fs.kill_set_id(ino.0)) {
                Some(Err(e)) => reply.error(eno(e)),
                _ => reply.ok(),
            },
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        });
    }

    fn lseek(&self, req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: fuser::ReplyLseek) {
        let _op = self.op(Op::Lseek, req.pid());
        let Some(h) = self.handle(fh.0) else { return reply.error(Errno::EBADF) };
        let HandleKind::File { file, fill, .. } = &h.kind else { return reply.error(Errno::EBADF) };
        let in_parts = fill.read().unwrap_or_else(|p| p.into_inner()).is_some(); // (first: see `read`)
        let f = file.read().unwrap_or_else(|p| p.into_inner()).clone();
        if in_parts && (whence == libc::SEEK_DATA || whence == libc::SEEK_HOLE) {
            // The holes of a file being fetched in parts are what is not
            // here yet; to the reader it is data throughout.
            let size = rustix::fs::fstat(&*f).map(|st| st.st_size).unwrap_or(0);
            return match offset {
                o if o < 0 || o >= size => reply.error(Errno::ENXIO),
                o if whence == libc::SEEK_DATA => reply.offset(o),
                _ => reply.offset(size),
            };
        }
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

impl FsInner {
    /// The mode a new entry in `parent` gets from the `mode` and `umask` of
    /// its request (FUSE_DONT_MASK): under a default ACL the ACL's owner,
    /// mask (or group) and other bits limit it and the umask does not apply,
    /// as POSIX ACLs have it (the host then gives the entry the inherited
    /// ACL); elsewhere the umask applies.
    fn creation_mode(&self, parent: Ino, mode: u32, umask: u32) -> u32 {
        let t = self.tree_read();
        match self.xattr_of(&t, parent, b"system.posix_acl_default") {
            Ok(Some(acl)) => match acl_mode(&acl, mode) {
                Some(limit) => mode & (!0o777 | limit),
                None => mode & !umask,
            },
            _ => mode & !umask,
        }
    }
}

/// The mode an access ACL (`system.posix_acl_access`, in the kernel's
/// xattr form) gives a file whose mode is `mode`: the owner bits from its
/// owner entry, the group bits from its mask (or, without one, its group
/// entry), the other bits from its other entry; type and set-id bits kept.
/// `None` when the value is no ACL this understands (the kernel checked it
/// before sending it).
fn acl_mode(value: &[u8], mode: u32) -> Option<u32> {
    const VERSION: u32 = 2;
    let (head, entries) = value.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != VERSION || entries.len() % 8 != 0 {
        return None;
    }
    let (mut user, mut group, mut mask, mut other) = (None, None, None, None);
    for e in entries.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u32::from(u16::from_le_bytes([e[2], e[3]]) & 7);
        match tag {
            0x01 => user = Some(perm),
            0x04 => group = Some(perm),
            0x10 => mask = Some(perm),
            0x20 => other = Some(perm),
            _ => {}
        }
    }
    let bits = (user? << 6) | (mask.or(group)? << 3) | other?;
    Some((mode & !0o777) | bits)
}
