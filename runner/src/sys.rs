//! Thin, allocation-light wrappers around the Linux system calls the runner needs and that neither
//! `libc` nor `rustix` expose the way we use them (clone3 with `CLONE_PARENT`, pidfds, openat2
//! resolution inside a root, mount_setattr, SCM_RIGHTS fd passing).
//!
//! Everything here is safe to call in a process forked from a multi-threaded caller: no global
//! locks, no environment access, no stdio.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Turn a `-1`-on-error return value into an `io::Result`.
pub(crate) fn cvt<T: PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path or string as a C string; interior NULs become an `InvalidInput` error.
pub(crate) fn cstring(s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

/// The kernel's `struct clone_args` (the fields up to `cgroup`, CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// fork-like clone3 (no new stack, no shared VM). Returns 0 in the child and the child's pid in the
/// parent. With `CLONE_PARENT` the new process becomes a child of our parent and the exit signal
/// is inherited, so `exit_signal` must then be 0.
pub(crate) fn clone3(flags: u64) -> io::Result<libc::pid_t> {
    let exit_signal = if flags & libc::CLONE_PARENT as u64 != 0 { 0 } else { libc::SIGCHLD as u64 };
    let mut args = CloneArgs { flags, exit_signal, ..Default::default() };
    // SAFETY: the struct is a valid clone_args of the size we pass; without CLONE_VM the child gets
    // a copy of our address space and returns here like after fork().
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, std::mem::size_of::<CloneArgs>()) };
    cvt(ret).map(|pid| pid as libc::pid_t)
}

pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd that we own.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall with a null siginfo.
    cvt(unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
    })?;
    Ok(())
}

/// Wait for a process (our child) through its pidfd; returns the Docker-style status: the exit
/// code, or 128 + signal number when it was killed.
pub(crate) fn pidfd_wait(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<Option<i32>> {
    const P_PIDFD: libc::idtype_t = 3;
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | if nohang { libc::WNOHANG } else { 0 };
    loop {
        let ret = unsafe { libc::waitid(P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, flags) };
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        break;
    }
    // SAFETY: waitid filled a SIGCHLD siginfo (or left it zeroed with WNOHANG and no change).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => status,
        _ => 128 + status,
    }))
}

/// `struct open_how` for openat2.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub(crate) const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub(crate) const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2(2): open `path` relative to `dir` with `resolve` restrictions. `O_CLOEXEC` is always
/// added.
pub(crate) fn openat2(dir: BorrowedFd<'_>, path: &CStr, flags: i32, mode: u32, resolve: u64) -> io::Result<OwnedFd> {
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: mode as u64, resolve };
    loop {
        // SAFETY: valid pointers for the duration of the call; returns a new fd on success.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                size_of::<OpenHow>(),
            )
        };
        match cvt(ret) {
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
            // openat2 asks to retry when a rename raced with RESOLVE_IN_ROOT resolution.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `openat(dir, name)` for a single path component that must not be a symlink.
pub(crate) fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: valid pointers; new fd on success.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn open(path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: valid pointer; new fd on success.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// mount(2) with optional source, fstype and data.
pub(crate) fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: all pointers are valid C strings or null.
    cvt(unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data) as *const libc::c_void) })?;
    Ok(())
}

/// open_tree(2) with OPEN_TREE_CLONE: a detached copy of the mount at `path`.
pub(crate) fn open_tree_clone(path: &CStr) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: valid C string; new fd on success.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// move_mount(2) of the detached mount `tree` onto the directory `target` (an fd: move_mount
/// refuses a `/proc/self/fd/N` path with EINVAL).
pub(crate) fn move_mount(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    // SAFETY: valid fds and C strings.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// The magic-link path of an fd of this process, used as a mount target or source so that paths
/// resolved safely inside the rootfs are never re-resolved on the host.
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> CString {
    // A formatted integer never contains NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;

/// mount_setattr(2) on the mount that `fd` (an O_PATH fd of a mount root) refers to. Unlike a
/// `MS_REMOUNT|MS_BIND` it leaves every other (possibly locked) flag alone.
pub(crate) fn mount_setattr(fd: BorrowedFd<'_>, recursive: bool, attr_set: u64) -> io::Result<()> {
    let attr = MountAttr { attr_set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: valid pointers for the duration of the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Mark every fd >= `first` close-on-exec (close_range with CLOSE_RANGE_CLOEXEC), so that the
/// exec-error channel stays open until the execve succeeds.
/// Empties the calling thread's signal mask. For `pre_exec` of long-lived
/// helpers (pasta): a mask inherited from a caller that blocked signals for
/// `sigwait` would keep SIGTERM from ever reaching them. Async-signal-safe.
pub(crate) fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset fills it; a null old set is allowed.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        cvt(libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()))?;
    }
    Ok(())
}

pub(crate) fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: i32 = 1 << 2;
    // SAFETY: plain syscall.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) })?;
    Ok(())
}

/// Close every fd >= `first`.
pub(crate) fn close_from(first: u32) {
    // SAFETY: plain syscall; closing fds we do not own is intended here (process about to become
    // a long-lived reaper that needs none of them).
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

pub(crate) fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::dup2(old, new) })?;
    Ok(())
}

/// A connected SOCK_SEQPACKET pair: one message per send, EOF when every copy of the peer end is
/// closed. Both ends are close-on-exec.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Send one message, optionally carrying one file descriptor.
pub(crate) fn send_msg(sock: BorrowedFd<'_>, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // Room for one cmsghdr carrying one int, 8-byte aligned.
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data; all pointers reference live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        // SAFETY: the control buffer is large enough for one fd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd.as_raw_fd());
        }
    }
    loop {
        // SAFETY: msg is fully initialised.
        let ret = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match cvt(ret) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receive one message (up to `buf.len()` bytes) and the fd it carries, if any. Returns 0 bytes at
/// EOF.
pub(crate) fn recv_msg(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let mut cbuf = [0u64; 8];
    // SAFETY: see send_msg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: msg points at live buffers.
        let ret = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match cvt(ret) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let mut fd = None;
    // SAFETY: walking the control messages the kernel wrote into cbuf.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd);
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, fd))
}

/// Write a message to fd 2 without touching Rust's stderr lock (usable after fork).
pub(crate) fn write_stderr(msg: &str) {
    // SAFETY: plain write of a valid buffer; errors are irrelevant here.
    unsafe { libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len()) };
}
