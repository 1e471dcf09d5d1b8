//! The container's filesystem view, built inside its new mount namespace: the rootfs bind, /proc,
//! /dev (tmpfs with the usual nodes, devpts, shm, mqueue, console), /sys, user mounts, the /etc
//! files, pivot_root, then masked and read-only paths.
//!
//! Safety rule: every path that comes from the container (mount targets, the working directory)
//! is resolved with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) against an fd of the rootfs
//! and the mount is made onto `/proc/self/fd/N`, so a symlink in the image (`/data -> /etc`, or
//! `-> ../../../host`) resolves inside the rootfs and never on the host. Missing targets are
//! created one component at a time through such fds.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::spec::{Mount, MountKind};
use crate::sys::{self, cstring, cvt, fd_path, openat, openat2, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};

/// An error with the step that failed, for the message sent back to the caller.
pub(crate) fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// An O_PATH fd of the container's root directory (the rootfs bind mount).
pub(crate) struct Root(OwnedFd);

fn components(path: &str) -> VecDeque<String> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_string).collect()
}

/// The target of the symlink `name` in `dir`, if it is one.
fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> Option<String> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid fd, C string and buffer.
    let n =
        unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).ok()
}

/// Runs `create` (which makes an entry in `dir`) and sets the directory's
/// modification time back to what it was. The mount points made here are
/// the runtime's, not the container's changes (Docker keeps them in a
/// separate "init" layer): with the time moved, `strata diff` would report
/// the directory as changed (`C /etc` for a created `/etc/hosts`) as soon as
/// anything else in it changed, and a commit would carry the new time.
/// Only after a creation that `made` says succeeded (setting a time copies a
/// lower directory up). Best effort: a directory whose time cannot be set
/// keeps the new one.
fn keeping_mtime<T>(dir: BorrowedFd<'_>, made: impl FnOnce(&T) -> bool, create: impl FnOnce() -> T) -> T {
    // SAFETY: stat is plain data filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    let before = (unsafe { libc::fstat(dir.as_raw_fd(), &mut st) } == 0).then_some(st);
    let out = create();
    if let (Some(st), true) = (before, made(&out)) {
        let times = [
            libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
            libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec },
        ];
        // SAFETY: valid fd, empty C string and times. (AT_EMPTY_PATH: the
        // O_PATH fd itself, no name is resolved.)
        unsafe { libc::utimensat(dir.as_raw_fd(), c"".as_ptr(), times.as_ptr(), libc::AT_EMPTY_PATH) };
    }
    out
}

fn rel(path: &str) -> &str {
    let p = path.trim_start_matches('/');
    if p.is_empty() {
        "."
    } else {
        p
    }
}

impl Root {
    /// Make every mount private (nothing we do propagates to the host), bind the rootfs onto
    /// itself so it is a mount point pivot_root accepts, and open it.
    pub(crate) fn prepare(rootfs: &Path) -> Result<Root, String> {
        ctx(sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None), || "make / rprivate".into())?;
        let path = ctx(cstring(rootfs.as_os_str().as_bytes()), || "rootfs path".into())?;
        ctx(sys::mount(Some(&path), &path, None, libc::MS_BIND | libc::MS_REC, None), || {
            format!("bind rootfs {}", rootfs.display())
        })?;
        let fd =
            ctx(sys::open(&path, libc::O_PATH | libc::O_DIRECTORY), || format!("open rootfs {}", rootfs.display()))?;
        Ok(Root(fd))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Open `path` (container-absolute) inside the root.
    pub(crate) fn open(&self, path: &str, flags: i32) -> io::Result<OwnedFd> {
        openat2(self.fd(), &cstring(rel(path))?, flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    }

    /// `mkdir -p` inside the root; returns an O_PATH fd of the directory. A dangling symlink on
    /// the way is followed inside the root (its target is created), like runc's MkdirAllInRoot.
    pub(crate) fn mkdir_all(&self, path: &str, mode: u32) -> io::Result<OwnedFd> {
        let mut todo: VecDeque<String> = components(path);
        let mut done: Vec<String> = Vec::new();
        let mut links = 0;
        let mut dir = self.open(".", libc::O_PATH | libc::O_DIRECTORY)?;
        while let Some(comp) = todo.pop_front() {
            let prefix = if done.is_empty() { comp.clone() } else { format!("{}/{comp}", done.join("/")) };
            match self.open(&prefix, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(fd) => {
                    dir = fd;
                    done.push(comp);
                    continue;
                }
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                Err(_) => {}
            }
            let name = cstring(comp.as_str())?;
            // SAFETY: valid fd and C string. A single component never follows a symlink.
            let ret = keeping_mtime(
                dir.as_fd(),
                |r| *r == 0,
                || unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) },
            );
            if ret == -1 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
                // It exists but does not resolve: a dangling symlink. Continue at its target.
                if let Some(target) = readlinkat(dir.as_fd(), &name) {
                    links += 1;
                    if links > 40 {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    if target.starts_with('/') {
                        done.clear();
                        dir = self.open(".", libc::O_PATH | libc::O_DIRECTORY)?;
                    }
                    for c in components(&target).into_iter().rev() {
                        todo.push_front(c);
                    }
                    continue;
                }
            }
            dir = self.open(&prefix, libc::O_PATH | libc::O_DIRECTORY)?;
            done.push(comp);
        }
        Ok(dir)
    }

    /// Make sure a file exists at `path` (creating parents and an empty file); returns an O_PATH
    /// fd of it. An existing directory is returned as is (the mount then fails with a clear error).
    /// A dangling symlink is followed inside the root and its target created.
    pub(crate) fn ensure_file(&self, path: &str) -> io::Result<OwnedFd> {
        let mut path = rel(path).to_string();
        for _ in 0..40 {
            match self.open(&path, libc::O_PATH) {
                Ok(fd) => return Ok(fd),
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                Err(_) => {}
            }
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None => (".".to_string(), path.clone()),
            };
            let dir = self.mkdir_all(&parent, 0o755)?;
            let cname = cstring(name.as_str())?;
            // O_EXCL|O_NOFOLLOW: never create through a symlink on the host's terms.
            let made = keeping_mtime(dir.as_fd(), Result::is_ok, || {
                openat(dir.as_fd(), &cname, libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY, 0o644)
            });
            match made {
                Ok(_) => return self.open(&path, libc::O_PATH),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match readlinkat(dir.as_fd(), &cname) {
                    Some(t) if t.starts_with('/') => path = rel(&t).to_string(),
                    Some(t) => path = format!("{parent}/{t}"),
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from_raw_os_error(libc::ELOOP))
    }

    /// Mount onto a target inside the root (created as a directory or a file).
    pub(crate) fn mount(
        &self,
        target: &str,
        file: bool,
        source: Option<&CStr>,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), String> {
        let fd = if file { self.ensure_file(target) } else { self.mkdir_all(target, 0o755) };
        let fd = ctx(fd, || format!("create mount point {target}"))?;
        ctx(sys::mount(source, &fd_path(fd.as_fd()), fstype, flags, data), || format!("mount {target}"))
    }

    /// Make the mount at `target` (just mounted) read-only, recursively.
    pub(crate) fn make_readonly(&self, target: &str) -> Result<(), String> {
        self.restrict(target, sys::MOUNT_ATTR_RDONLY)
    }

    /// Set `attrs` (`MOUNT_ATTR_*`) on the mount at `target` (just mounted), recursively.
    fn restrict(&self, target: &str, attrs: u64) -> Result<(), String> {
        let fd = ctx(self.open(target, libc::O_PATH), || format!("open {target}"))?;
        ctx(sys::mount_setattr(fd.as_fd(), true, attrs), || format!("restrict mount {target}"))
    }
}

/// /proc for the container's pid namespace.
pub(crate) fn mount_proc(root: &Root) -> Result<(), String> {
    root.mount("/proc", false, Some(c"proc"), Some(c"proc"), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None)
}

/// /sys read-only (or rw when privileged). Without a network namespace of our own (rootless with
/// host network) the kernel refuses a sysfs mount; bind the host's /sys recursively instead.
/// True for a sysfs of its own (whose /sys/fs/cgroup is empty), false for the host's.
pub(crate) fn mount_sys(root: &Root, rw: bool) -> Result<bool, String> {
    let ro = if rw { 0 } else { libc::MS_RDONLY };
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | ro;
    match root.mount("/sys", false, Some(c"sysfs"), Some(c"sysfs"), flags, None) {
        Ok(()) => Ok(true),
        Err(_) => {
            root.mount("/sys", false, Some(c"/sys"), None, libc::MS_BIND | libc::MS_REC, None)?;
            if !rw {
                root.make_readonly("/sys")?;
            }
            Ok(false)
        }
    }
}

/// The device nodes every container gets, bound from the host's /dev.
const DEVICES: &[&CStr] = &[c"null", c"zero", c"full", c"random", c"urandom", c"tty"];

const DEV_LINKS: &[(&CStr, &CStr)] = &[
    (c"fd", c"/proc/self/fd"),
    (c"stdin", c"/proc/self/fd/0"),
    (c"stdout", c"/proc/self/fd/1"),
    (c"stderr", c"/proc/self/fd/2"),
    (c"ptmx", c"pts/ptmx"),
    (c"core", c"/proc/kcore"),
];

/// A pty pair allocated in the container's devpts instance.
pub(crate) struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// /dev: a fresh tmpfs with the standard nodes, devpts, shm, mqueue, and for a tty a pty pair
/// whose slave is bind-mounted on /dev/console.
///
/// Device access: strata keeps no device cgroup (Docker's allow-list), so the tmpfs is mounted
/// nodev and the standard nodes are bind mounts of the host's own (a bind mount keeps the host
/// mount's permission to open devices). A container root with CAP_MKNOD can still create a
/// node, here or anywhere else it can write (the root filesystem, volumes and --tmpfs are
/// nodev too), but not open it: `mknod /dev/sda b 8 0; cat /dev/sda` fails with EACCES.
pub(crate) fn setup_dev(
    root: &Root,
    pts_gid5: bool,
    tty: bool,
    shm_size: Option<u64>,
    shared_shm: Option<&OwnedFd>,
) -> Result<Option<Pty>, String> {
    root.mount(
        "/dev",
        false,
        Some(c"tmpfs"),
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME,
        Some(c"mode=755,size=65536k"),
    )?;
    // /dev is now our own empty tmpfs: names inside it cannot be symlinks we did not create.
    let dev = ctx(root.open("/dev", libc::O_PATH | libc::O_DIRECTORY), || "open /dev".into())?;
    let dfd = dev.as_raw_fd();
    for name in DEVICES {
        let f = ctx(openat(dev.as_fd(), name, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o666), || {
            format!("create /dev/{}", name.to_string_lossy())
        })?;
        let host = ctx(cstring(format!("/dev/{}", name.to_string_lossy())), || "device path".into())?;
        ctx(sys::mount(Some(&host), &fd_path(f.as_fd()), None, libc::MS_BIND, None), || {
            format!("bind host /dev/{}", name.to_string_lossy())
        })?;
    }
    for (name, target) in DEV_LINKS {
        // SAFETY: valid fd and C strings.
        let ret = unsafe { libc::symlinkat(target.as_ptr(), dfd, name.as_ptr()) };
        ctx(cvt(ret), || format!("symlink /dev/{}", name.to_string_lossy()))?;
    }
    for (name, mode) in [(c"pts", 0o755), (c"shm", 0o1777), (c"mqueue", 0o755)] {
        // SAFETY: valid fd and C string.
        ctx(cvt(unsafe { libc::mkdirat(dfd, name.as_ptr(), mode) }), || {
            format!("mkdir /dev/{}", name.to_string_lossy())
        })?;
    }
    let pts_opts =
        if pts_gid5 { c"newinstance,ptmxmode=0666,mode=0620,gid=5" } else { c"newinstance,ptmxmode=0666,mode=0620" };
    let pts_flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    if root.mount("/dev/pts", false, Some(c"devpts"), Some(c"devpts"), pts_flags, Some(pts_opts)).is_err() {
        // gid 5 may not exist in a user namespace set up by someone else: go without it.
        root.mount(
            "/dev/pts",
            false,
            Some(c"devpts"),
            Some(c"devpts"),
            pts_flags,
            Some(c"newinstance,ptmxmode=0666,mode=0620"),
        )?;
    }
    if let Some(tree) = shared_shm {
        // Another container's /dev/shm (see `spawn::donor_shm`).
        let target = ctx(root.mkdir_all("/dev/shm", 0o1777), || "create mount point /dev/shm".into())?;
        ctx(sys::move_mount(tree.as_fd(), target.as_fd()), || "mount the shared /dev/shm".into())?;
    } else {
        let shm_options =
            std::ffi::CString::new(format!("mode=1777,size={}k", shm_size.unwrap_or(64 << 20).div_ceil(1024)))
                .map_err(|e| e.to_string())?;
        root.mount(
            "/dev/shm",
            false,
            Some(c"shm"),
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some(&shm_options),
        )?;
    }
    // mqueue needs an IPC namespace owned by our user namespace; without one, go without it.
    let _ = root.mount(
        "/dev/mqueue",
        false,
        Some(c"mqueue"),
        Some(c"mqueue"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    );
    if !tty {
        return Ok(None);
    }
    let pty = ctx(open_pty(dev.as_fd()), || "allocate a pty".into())?;
    let console = ctx(openat(dev.as_fd(), c"console", libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o620), || {
        "create /dev/console".into()
    })?;
    drop(console);
    let console =
        ctx(openat(dev.as_fd(), c"console", libc::O_PATH | libc::O_NOFOLLOW, 0), || "open /dev/console".into())?;
    ctx(sys::mount(Some(&fd_path(pty.slave.as_fd())), &fd_path(console.as_fd()), None, libc::MS_BIND, None), || {
        "bind /dev/console".into()
    })?;
    Ok(Some(pty))
}

/// Open a new pty pair through `<dir>/pts/ptmx` (or `ptmx` when `dir` is /dev/pts itself).
pub(crate) fn open_pty(dev: BorrowedFd<'_>) -> io::Result<Pty> {
    let master = openat(dev, c"pts/ptmx", libc::O_RDWR | libc::O_NOCTTY, 0)?;
    let unlock: libc::c_int = 0;
    // SAFETY: ioctls on our own pty master with valid arguments.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // TIOCGPTPEER opens the slave without a path lookup.
    let slave = cvt(unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
    })?;
    // SAFETY: TIOCGPTPEER returned a new fd that we own.
    let slave = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(slave) };
    Ok(Pty { master, slave })
}

/// A user mount (`-v`, `--mount`, `--tmpfs`).
pub(crate) fn mount_user(root: &Root, m: &Mount) -> Result<(), String> {
    match &m.kind {
        MountKind::Bind { source, readonly } => {
            let meta = ctx(std::fs::metadata(source), || format!("bind source {}", source.display()))?;
            let src = ctx(cstring(source.as_os_str().as_bytes()), || "bind source".into())?;
            root.mount(&m.target, !meta.is_dir(), Some(&src), None, libc::MS_BIND | libc::MS_REC, None)?;
            // No device opens through a bind (see setup_dev), unless the user bound a device
            // node itself (`-v /dev/fuse:/dev/fuse`): that one they asked for.
            let ft = meta.file_type();
            let mut attrs = if ft.is_char_device() || ft.is_block_device() { 0 } else { sys::MOUNT_ATTR_NODEV };
            if *readonly {
                attrs |= sys::MOUNT_ATTR_RDONLY;
            }
            if attrs != 0 {
                root.restrict(&m.target, attrs)?;
            }
            Ok(())
        }
        MountKind::Tmpfs { options, readonly } => {
            let (mut flags, data) = tmpfs_options(options);
            if *readonly {
                flags |= libc::MS_RDONLY;
            }
            let data = ctx(cstring(data), || "tmpfs options".into())?;
            root.mount(&m.target, false, Some(c"tmpfs"), Some(c"tmpfs"), flags, Some(&data))
        }
    }
}

/// Docker's `--tmpfs` options as mount(2) wants them: the mount flags they name applied to the
/// default `nosuid,nodev,noexec` (the last of `ro`/`rw`, `exec`/`noexec`, ... wins), and the rest
/// (`size=`, `mode=`, `uid=`, `nr_inodes=`, ...) as the data string for tmpfs. `nodev` stays
/// whatever they say: `dev` would let the container open device nodes it creates there (see
/// setup_dev).
fn tmpfs_options(options: &str) -> (libc::c_ulong, String) {
    const ATIME: libc::c_ulong = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mut data = Vec::new();
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        // (flags to clear, flags to set)
        let (clear, set) = match opt {
            "ro" => (0, libc::MS_RDONLY),
            "rw" => (libc::MS_RDONLY, 0),
            "exec" => (libc::MS_NOEXEC, 0),
            "noexec" => (0, libc::MS_NOEXEC),
            "suid" => (libc::MS_NOSUID, 0),
            "nosuid" => (0, libc::MS_NOSUID),
            "dev" | "nodev" => (0, 0),
            "sync" => (0, libc::MS_SYNCHRONOUS),
            "async" => (libc::MS_SYNCHRONOUS, 0),
            "dirsync" => (0, libc::MS_DIRSYNC),
            "atime" => (libc::MS_NOATIME, 0),
            "noatime" => (ATIME, libc::MS_NOATIME),
            "relatime" => (ATIME, libc::MS_RELATIME),
            "norelatime" => (libc::MS_RELATIME, 0),
            "strictatime" => (ATIME, libc::MS_STRICTATIME),
            "nostrictatime" => (libc::MS_STRICTATIME, 0),
            "diratime" => (libc::MS_NODIRATIME, 0),
            "nodiratime" => (0, libc::MS_NODIRATIME),
            _ => {
                data.push(opt);
                continue;
            }
        };
        flags = (flags & !clear) | set;
    }
    (flags, data.join(","))
}

/// pivot_root into the root with the `pivot_root(".", ".")` trick: the old root ends up stacked
/// on the new one and is lazily detached, so no directory for it is needed in the image.
pub(crate) fn pivot(root: Root) -> Result<(), String> {
    // SAFETY: plain syscalls on a valid fd and static strings.
    unsafe {
        ctx(cvt(libc::fchdir(root.0.as_raw_fd())), || "chdir to rootfs".into())?;
        ctx(cvt(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32), || "pivot_root".into())?;
        ctx(sys::mount(None, c".", None, libc::MS_REC | libc::MS_PRIVATE, None), || "make old root private".into())?;
        ctx(cvt(libc::umount2(c".".as_ptr(), libc::MNT_DETACH)), || "detach old root".into())?;
        ctx(cvt(libc::chdir(c"/".as_ptr())), || "chdir /".into())?;
    }
    Ok(())
}

/// Masked paths (after pivot_root): /dev/null over files, an empty read-only tmpfs over
/// directories. Missing paths are skipped.
pub(crate) fn mask_paths(paths: &[String]) -> Result<(), String> {
    for p in paths {
        let path = ctx(cstring(p.as_str()), || "masked path".into())?;
        let fd = match sys::open(&path, libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(format!("open masked path {p}: {e}")),
        };
        let is_dir = fstat_is_dir(fd.as_fd());
        let target = fd_path(fd.as_fd());
        if is_dir {
            ctx(sys::mount(Some(c"tmpfs"), &target, Some(c"tmpfs"), libc::MS_RDONLY, Some(c"size=0")), || {
                format!("mask {p}")
            })?;
        } else {
            ctx(sys::mount(Some(c"/dev/null"), &target, None, libc::MS_BIND, None), || format!("mask {p}"))?;
        }
    }
    Ok(())
}

/// Read-only paths (after pivot_root): bind each onto itself and make the bind read-only.
pub(crate) fn readonly_paths(paths: &[String]) -> Result<(), String> {
    for p in paths {
        let path = ctx(cstring(p.as_str()), || "read-only path".into())?;
        let fd = match sys::open(&path, libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(format!("open read-only path {p}: {e}")),
        };
        let target = fd_path(fd.as_fd());
        ctx(sys::mount(Some(&target), &target, None, libc::MS_BIND | libc::MS_REC, None), || format!("bind {p}"))?;
        let fd = ctx(sys::open(&path, libc::O_PATH | libc::O_NOFOLLOW), || format!("open {p}"))?;
        ctx(sys::mount_setattr(fd.as_fd(), true, sys::MOUNT_ATTR_RDONLY), || format!("make {p} read-only"))?;
    }
    Ok(())
}

/// Make the (already pivoted) root mount read-only; mounts below it keep their own flags.
pub(crate) fn readonly_root() -> Result<(), String> {
    let fd = ctx(sys::open(c"/", libc::O_PATH | libc::O_DIRECTORY), || "open /".into())?;
    ctx(sys::mount_setattr(fd.as_fd(), false, sys::MOUNT_ATTR_RDONLY), || "make rootfs read-only".into())
}

fn fstat_is_dir(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: stat is plain data filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    ret == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_flags_are_split_from_the_data() {
        let defaults = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        assert_eq!(tmpfs_options(""), (defaults, String::new()));
        // Docker's documented example.
        assert_eq!(tmpfs_options("rw,noexec,nosuid,size=65536k"), (defaults, "size=65536k".to_string()));
        assert_eq!(tmpfs_options("exec"), (libc::MS_NOSUID | libc::MS_NODEV, String::new()));
        assert_eq!(
            tmpfs_options("ro,suid,size=1m,mode=1777,uid=5"),
            (libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOEXEC, "size=1m,mode=1777,uid=5".to_string())
        );
        // `dev` never lifts nodev; the last of a pair wins.
        assert_eq!(tmpfs_options("dev").0, defaults);
        assert_eq!(tmpfs_options("ro,rw,exec,noexec").0, defaults);
        assert_eq!(tmpfs_options("noatime,relatime").0, defaults | libc::MS_RELATIME);
        assert_eq!(tmpfs_options("sync,nodiratime").0, defaults | libc::MS_SYNCHRONOUS | libc::MS_NODIRATIME);
    }
}
