//! Code that runs in the forked child processes (the container process and `exec` processes)
//! between fork and execve: stdio placement, credentials and capabilities, signal state, the
//! `PATH` lookup inside the container, the exec-error report, and the optional pid-1 reaper.
//!
//! These processes are forks of a possibly multi-threaded caller. glibc's fork makes malloc
//! usable in the child, but other locks (Rust's stdio and environment locks) may be held by
//! threads that no longer exist, so nothing here prints through `std::io::stderr`, reads
//! `std::env`, or spawns with `std::process::Command`. Children always leave with `_exit`.
//!
//! The channel back to the caller is a close-on-exec SOCK_SEQPACKET socket: a successful execve
//! closes it (the caller sees EOF), a failure sends `E<code><message>` first.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;

use crate::caps;
use crate::spec::{path_from_env, User};
use crate::sys::{self, cstring, cvt};

/// A failure in the child: the Docker exit code it maps to (125 setup, 126 cannot execute,
/// 127 not found) and a message.
pub(crate) struct ChildError {
    pub code: u8,
    pub message: String,
}

impl ChildError {
    pub(crate) fn setup(message: impl Into<String>) -> ChildError {
        ChildError { code: 125, message: message.into() }
    }
}

impl From<String> for ChildError {
    fn from(message: String) -> Self {
        ChildError::setup(message)
    }
}

pub(crate) const MSG_ERROR: u8 = b'E';
pub(crate) const MSG_PID: u8 = b'P';
pub(crate) const MSG_PTY: u8 = b'T';
pub(crate) const MSG_GO: u8 = b'G';
pub(crate) const MSG_USERNS: u8 = b'U';
pub(crate) const MSG_MAPPED: u8 = b'M';
pub(crate) const MSG_FUSE: u8 = b'F';
pub(crate) const MSG_SERVED: u8 = b'S';

/// Send the error to the caller and exit with its code.
pub(crate) fn fail(sock: BorrowedFd<'_>, err: ChildError) -> ! {
    let mut msg = Vec::with_capacity(err.message.len() + 2);
    msg.push(MSG_ERROR);
    msg.push(err.code);
    msg.extend_from_slice(err.message.as_bytes());
    if sys::send_msg(sock, &msg, None).is_err() {
        sys::write_stderr(&format!("strata: {}\n", err.message));
    }
    // SAFETY: leaving the forked child without running the caller's destructors or atexit hooks.
    unsafe { libc::_exit(err.code as i32) }
}

/// Run `f` in a forked child: any error or panic is reported on `sock` and ends the process.
pub(crate) fn run_child(sock: BorrowedFd<'_>, f: impl FnOnce() -> Result<std::convert::Infallible, ChildError>) -> ! {
    let err = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(never)) => match never {},
        Ok(Err(e)) => e,
        Err(_) => ChildError::setup("internal error (panic) while setting up the container process"),
    };
    fail(sock, err)
}

/// Wait for a one-byte message `want` from the caller. EOF (the caller died) ends the process.
pub(crate) fn wait_for(sock: BorrowedFd<'_>, want: u8) -> Result<(), ChildError> {
    let mut buf = [0u8; 16];
    match sys::recv_msg(sock, &mut buf) {
        Ok((0, _)) => unsafe { libc::_exit(125) },
        Ok((_, _)) if buf[0] == want => Ok(()),
        Ok(_) => Err(ChildError::setup("unexpected message from the runner")),
        Err(e) => Err(ChildError::setup(format!("sync with the runner: {e}"))),
    }
}

/// Make sure `fd` is not one of 0, 1, 2 (which are about to be replaced); returns the fd to use.
pub(crate) fn move_above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd we own.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Put the given fds (None = keep the inherited one) on 0, 1, 2, handling overlaps.
pub(crate) fn place_stdio(fds: [Option<RawFd>; 3]) -> io::Result<()> {
    let mut tmp: [Option<OwnedFd>; 3] = [None, None, None];
    for (i, fd) in fds.iter().enumerate() {
        if let Some(fd) = fd {
            // SAFETY: duplicating an fd that is open in this process.
            let new = cvt(unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3) })?;
            tmp[i] = Some(unsafe { OwnedFd::from_raw_fd(new) });
        }
    }
    for (i, fd) in tmp.iter().enumerate() {
        if let Some(fd) = fd {
            sys::dup2(fd.as_raw_fd(), i as RawFd)?;
        }
    }
    Ok(())
}

/// Make the pty slave our controlling terminal and stdio (after setsid).
pub(crate) fn set_controlling_tty(slave: &OwnedFd) -> io::Result<()> {
    // SAFETY: ioctl on our own open tty fd.
    cvt(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) })?;
    for i in 0..3 {
        sys::dup2(slave.as_raw_fd(), i)?;
    }
    Ok(())
}

/// New session, so the container is not in the caller's process group or terminal.
pub(crate) fn new_session() {
    // SAFETY: plain syscall; fails only if we already lead a session, which is fine.
    unsafe { libc::setsid() };
}

/// Hand the container's own stdio (the supervisor's pipes, or the pty slave of its devpts) to
/// the user the command runs as, as runc does: otherwise `echo hi >/dev/stdout` (a reopen through
/// /proc) fails with EACCES for any user but root. Only pipes, sockets and pty slaves are
/// touched, never anything else that might be there (/dev/null). Where the kernel refuses
/// (an owner not mapped in the user namespace) stdio stays as it is.
pub(crate) fn give_stdio_to(user: &User) {
    if user.uid == 0 {
        return;
    }
    const PTY_SLAVE_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;
    for fd in 0..=2 {
        // SAFETY: fstat into a zeroed struct; fd may be closed (then it fails).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            continue;
        }
        let kind = st.st_mode & libc::S_IFMT;
        let ours = kind == libc::S_IFIFO
            || kind == libc::S_IFSOCK
            || (kind == libc::S_IFCHR && PTY_SLAVE_MAJORS.contains(&libc::major(st.st_rdev)));
        if ours {
            // SAFETY: plain syscall on an fd we hold; errors are ignored on purpose (see above).
            unsafe { libc::fchown(fd, user.uid, u32::MAX) };
        }
    }
}

/// Give the container a new, empty session keyring instead of the one of whoever ran strata
/// (its keys, e.g. Kerberos tickets, would otherwise be readable with keyctl inside), as runc
/// does. Where keyctl is refused (ENOSYS, or EPERM under an outer seccomp filter) the container
/// cannot reach the old keyring either.
pub(crate) fn new_session_keyring() -> Result<(), ChildError> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl(JOIN_SESSION_KEYRING, NULL) takes no pointers but the NULL name.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, std::ptr::null::<libc::c_char>()) };
    if r >= 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EPERM) => Ok(()),
        _ => Err(ChildError::setup(format!("create a session keyring for the container: {e}"))),
    }
}

/// Drop to `user` keeping exactly `caps` (as far as the kernel's exec rules allow: for a non-root
/// user only the bounding set survives execve, as with Docker), then no_new_privs if asked.
pub(crate) fn switch_user(user: &User, caps_mask: u64, last_cap: u32, no_new_privs: bool) -> Result<(), ChildError> {
    caps::drop_bounding(caps_mask, last_cap).map_err(|e| ChildError::setup(format!("drop capabilities: {e}")))?;
    // SAFETY: plain syscalls.
    unsafe {
        cvt(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0)).map_err(|e| ChildError::setup(format!("keepcaps: {e}")))?;
        // Like Docker, the primary group is also in the supplementary list.
        let mut groups: Vec<libc::gid_t> = vec![user.gid];
        groups.extend(user.additional_gids.iter().filter(|g| **g != user.gid));
        if libc::setgroups(groups.len(), groups.as_ptr()) == -1 {
            let e = io::Error::last_os_error();
            // A user namespace with a single-id map has setgroups denied; that is only a problem
            // when supplementary groups were asked for.
            if !(e.raw_os_error() == Some(libc::EPERM) && user.additional_gids.iter().all(|g| *g == user.gid)) {
                return Err(ChildError::setup(format!("setgroups {:?}: {e}", user.additional_gids)));
            }
        }
        cvt(libc::setresgid(user.gid, user.gid, user.gid))
            .map_err(|e| ChildError::setup(format!("setgid {}: {e}", user.gid)))?;
        cvt(libc::setresuid(user.uid, user.uid, user.uid))
            .map_err(|e| ChildError::setup(format!("setuid {}: {e}", user.uid)))?;
        cvt(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0)).map_err(|e| ChildError::setup(format!("keepcaps: {e}")))?;
    }
    caps::set_process_caps(caps_mask).map_err(|e| ChildError::setup(format!("set capabilities: {e}")))?;
    if no_new_privs {
        // SAFETY: plain prctl.
        cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
            .map_err(|e| ChildError::setup(format!("no_new_privs: {e}")))?;
    }
    Ok(())
}

/// Default dispositions and an empty signal mask (the caller may ignore SIGPIPE, as every Rust
/// program does, and ignored signals survive execve).
pub(crate) fn reset_signals() {
    // SAFETY: plain signal-state syscalls.
    unsafe {
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Apply resource limits by Docker name.
pub(crate) fn set_rlimits(limits: &[crate::spec::Rlimit]) -> Result<(), ChildError> {
    for l in limits {
        let res = crate::spec::rlimit_resource(&l.name)
            .ok_or_else(|| ChildError::setup(format!("unknown ulimit {:?}", l.name)))?;
        let lim = libc::rlimit { rlim_cur: l.soft, rlim_max: l.hard };
        // SAFETY: valid rlimit struct.
        cvt(unsafe { libc::setrlimit(res, &lim) })
            .map_err(|e| ChildError::setup(format!("setrlimit {}={}:{}: {e}", l.name, l.soft, l.hard)))?;
    }
    Ok(())
}

/// chdir into the working directory (we are already inside the container's root).
pub(crate) fn chdir(cwd: &str) -> Result<(), ChildError> {
    let c = cstring(cwd).map_err(|e| ChildError::setup(format!("working directory {cwd:?}: {e}")))?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::chdir(c.as_ptr()) })
        .map_err(|e| ChildError::setup(format!("chdir to cwd ({cwd:?}) set in config: {e}")))?;
    Ok(())
}

/// Find `arg0` like Go's exec.LookPath in the container's PATH: the first regular file with an
/// execute bit. A name with a `/` is used as is.
fn look_path(arg0: &str, env: &[String]) -> Result<String, ChildError> {
    if arg0.contains('/') {
        return Ok(arg0.to_string());
    }
    for dir in path_from_env(env).split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = format!("{dir}/{arg0}");
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(ChildError { code: 127, message: format!("exec: \"{arg0}\": executable file not found in $PATH") })
}

/// Look up and execve the command; returns only on failure, with Docker's code and message.
pub(crate) fn exec_command(args: &[String], env: &[String]) -> ChildError {
    let Some(arg0) = args.first() else {
        return ChildError::setup("no command specified");
    };
    let path = match look_path(arg0, env) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let to_c = |v: &[String]| v.iter().map(|s| cstring(s.as_str())).collect::<io::Result<Vec<CString>>>();
    let (Ok(c_path), Ok(argv), Ok(envp)) = (cstring(path.as_str()), to_c(args), to_c(env)) else {
        return ChildError::setup("command or environment contains a NUL byte");
    };
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // Every inherited fd but stdio goes away at exec; the error channel stays open until then.
    if let Err(e) = sys::cloexec_from(3) {
        return ChildError::setup(format!("close inherited fds: {e}"));
    }
    // SAFETY: NULL-terminated arrays of valid C strings.
    unsafe { libc::execve(c_path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
            ChildError { code: 127, message: format!("exec: \"{path}\": no such file or directory") }
        }
        Some(libc::ENOEXEC) => ChildError { code: 126, message: format!("exec: \"{path}\": exec format error") },
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EISDIR) => {
            ChildError { code: 126, message: format!("exec: \"{path}\": permission denied") }
        }
        _ => ChildError { code: 126, message: format!("exec: \"{path}\": {err}") },
    }
}

/// pid 1 with `init`: fork the command (in its own foreground process group), forward every
/// signal to it, reap every child, and exit with the command's status. The command reports exec
/// errors on `sock` itself.
pub(crate) fn reaper(sock: OwnedFd, args: &[String], env: &[String]) -> ! {
    // SAFETY: signal mask manipulation and fork in a single-threaded process.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        let child = libc::fork();
        if child == -1 {
            fail(sock.as_fd(), ChildError::setup(format!("fork: {}", io::Error::last_os_error())));
        }
        if child == 0 {
            // Still with every signal blocked, as the foreground switch needs (see there).
            if let Err(e) = own_foreground_group() {
                fail(sock.as_fd(), ChildError::setup(format!("put the command in the foreground: {e}")));
            }
            reset_signals();
            let err = exec_command(args, env);
            fail(sock.as_fd(), err);
        }
        drop(sock);
        sys::close_from(3);
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&all, &mut info);
            if sig == -1 {
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(child, sig);
                continue;
            }
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == child {
                    let code =
                        if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
                    libc::_exit(code);
                }
            }
        }
    }
}

/// Put the reaper's command in a process group of its own and, when stdin is our controlling
/// terminal, make that the terminal's foreground group, as tini does: the terminal's signals
/// (ctrl-c) then go to the command alone, and not also to the reaper, which would forward them
/// a second time. Called with SIGTTOU blocked, which lets a background process take the
/// terminal.
fn own_foreground_group() -> io::Result<()> {
    // SAFETY: plain syscalls on our own process and stdin.
    unsafe {
        cvt(libc::setpgid(0, 0))?;
        if let Err(e) = cvt(libc::tcsetpgrp(0, libc::getpid())) {
            // Not a terminal, or not ours (a terminal inherited without `tty`).
            if !matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::ENXIO)) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Send the pty master to the caller.
pub(crate) fn send_pty(sock: BorrowedFd<'_>, master: &OwnedFd) -> Result<(), ChildError> {
    sys::send_msg(sock, &[MSG_PTY], Some(master.as_fd())).map_err(|e| ChildError::setup(format!("send pty: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session keyring's serial number for the calling thread.
    fn session_keyring() -> libc::c_long {
        const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
        const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
        // SAFETY: keyctl with integer arguments only.
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1 as libc::c_long) }
    }

    #[test]
    fn container_gets_a_session_keyring_of_its_own() {
        // Credentials are per thread: a thread of its own keeps the test process's keyring.
        std::thread::spawn(|| {
            let before = session_keyring();
            if before < 0 {
                // keyctl refused here (seccomp, no keys support): then so it is for containers.
                assert!(new_session_keyring().is_ok());
                return;
            }
            assert!(new_session_keyring().is_ok(), "joining a new session keyring");
            let after = session_keyring();
            assert!(after > 0 && after != before, "session keyring {before} -> {after}");
        })
        .join()
        .expect("keyring thread");
    }
}
