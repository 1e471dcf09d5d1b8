//! Running another process in a running container (`docker exec`).
//!
//! Same process layout as `spawn`: a forked intermediate joins the container's namespaces in one
//! setns(pidfd, ...) call (which also moves it to the container's root), then clones the new
//! process with `CLONE_PARENT` so that it lands in the container's pid namespace as a child of
//! the caller. That process takes the container's resource limits and Docker's umask, drops to
//! the requested user and capabilities and execs.

use std::convert::Infallible;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::caps::{self, Cap};
use crate::cgroup::Cgroup;
use crate::child::{self, ChildError, MSG_GO, MSG_PID, MSG_PTY};
use crate::error::RunnerError;
use crate::mounts;
use crate::spawn::{child_error, Process, Stdio};
use crate::spec::ExecSpec;
use crate::sys;

/// The namespaces of `pid` that differ from ours, as CLONE_NEW* flags (setns refuses to "join"
/// the user namespace we are already in).
fn differing_namespaces(pid: libc::pid_t) -> libc::c_int {
    let mut flags = 0;
    for (name, flag) in [
        ("user", libc::CLONE_NEWUSER),
        ("mnt", libc::CLONE_NEWNS),
        ("pid", libc::CLONE_NEWPID),
        ("uts", libc::CLONE_NEWUTS),
        ("ipc", libc::CLONE_NEWIPC),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
    ] {
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{name}")).map(|m| m.ino());
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}")).map(|m| m.ino());
        if let (Ok(t), Ok(o)) = (theirs, ours) {
            if t != o {
                flags |= flag;
            }
        }
    }
    flags
}

/// Run `spec` inside the container whose init is `container_pid`; the new process joins
/// `cgroup` when given. Returns once the command has been exec'd.
pub fn exec(
    container_pid: libc::pid_t,
    spec: &ExecSpec,
    stdio: Stdio,
    cgroup: Option<&Cgroup>,
) -> Result<Process, RunnerError> {
    if spec.args.is_empty() {
        return Err(RunnerError::Invalid("no command specified".into()));
    }
    let target = sys::pidfd_open(container_pid)
        .map_err(|e| RunnerError::Invalid(format!("container process {container_pid} is not running: {e}")))?;
    let flags = differing_namespaces(container_pid);
    let last_cap = caps::last_cap();
    let caps_mask = Cap::mask(&spec.capabilities);
    let seccomp = spec.seccomp.as_ref().map(crate::seccomp::compile).transpose()?;
    let (parent_sock, child_sock) = sys::seqpacket_pair().map_err(|e| RunnerError::io("socketpair", e))?;
    // SAFETY: fork; the child never returns.
    let inter = unsafe { libc::fork() };
    if inter == -1 {
        return Err(RunnerError::io("fork", std::io::Error::last_os_error()));
    }
    if inter == 0 {
        drop(parent_sock);
        let sock = child_sock;
        child::run_child(sock.as_fd(), || {
            // SAFETY: single-threaded child; the pidfd is valid.
            sys::cvt(unsafe { libc::setns(target.as_raw_fd(), flags) })
                .map_err(|e| ChildError::setup(format!("join the container's namespaces: {e}")))?;
            if flags & libc::CLONE_NEWUSER != 0 {
                // SAFETY: plain syscalls; we hold every capability in the joined namespace.
                unsafe {
                    sys::cvt(libc::setresgid(0, 0, 0)).map_err(|e| ChildError::setup(format!("setgid 0: {e}")))?;
                    sys::cvt(libc::setresuid(0, 0, 0)).map_err(|e| ChildError::setup(format!("setuid 0: {e}")))?;
                }
            }
            let pid = sys::clone3(libc::CLONE_PARENT as u64).map_err(|e| ChildError::setup(format!("clone: {e}")))?;
            if pid == 0 {
                let sock = child::move_above_stdio(sock.try_clone().unwrap_or_else(|_| unsafe { libc::_exit(125) }))
                    .unwrap_or_else(|_| unsafe { libc::_exit(125) });
                child::run_child(sock.as_fd(), || {
                    exec_child(spec, &sock, &stdio, caps_mask, last_cap, seccomp.as_ref())
                });
            }
            let mut msg = vec![MSG_PID];
            msg.extend_from_slice(&pid.to_le_bytes());
            sys::send_msg(sock.as_fd(), &msg, None).map_err(|e| ChildError::setup(format!("sync: {e}")))?;
            // SAFETY: the intermediate's work is done.
            unsafe { libc::_exit(0) }
        });
    }
    drop(child_sock);
    drop(stdio);
    let result = (|| {
        let sock = parent_sock.as_fd();
        let mut buf = vec![0u8; 64 * 1024];
        let (n, _) = sys::recv_msg(sock, &mut buf).map_err(|e| RunnerError::io("read from the exec process", e))?;
        if n < 5 || buf[0] != MSG_PID {
            return Err(child_error(&buf[..n]));
        }
        let pid = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let mut process = Process::from_pid(pid)?;
        let res = (|| {
            if let Some(cg) = cgroup {
                cg.add(pid)?;
            }
            sys::send_msg(sock, &[MSG_GO], None).map_err(|e| RunnerError::io("write to the exec process", e))?;
            loop {
                let (n, fd) =
                    sys::recv_msg(sock, &mut buf).map_err(|e| RunnerError::io("read from the exec process", e))?;
                match (n, buf.first()) {
                    (0, _) => return Ok(()),
                    (_, Some(&MSG_PTY)) => process.set_pty_master(fd),
                    _ => return Err(child_error(&buf[..n])),
                }
            }
        })();
        match res {
            Ok(()) => Ok(process),
            Err(e) => {
                process.kill_and_reap();
                Err(e)
            }
        }
    })();
    let mut st = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(inter, &mut st, 0) };
    result
}

fn exec_child(
    spec: &ExecSpec,
    sock: &OwnedFd,
    stdio: &Stdio,
    caps_mask: u64,
    last_cap: u32,
    seccomp: Option<&crate::seccomp::Compiled>,
) -> Result<Infallible, ChildError> {
    child::wait_for(sock.as_fd(), MSG_GO)?;
    child::place_stdio(stdio.raw()).map_err(|e| ChildError::setup(format!("set up stdio: {e}")))?;
    child::new_session();
    if spec.tty {
        let dev = sys::open(c"/dev", libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| ChildError::setup(format!("open /dev in the container: {e}")))?;
        let pty = mounts::open_pty(dev.as_fd()).map_err(|e| ChildError::setup(format!("allocate a pty: {e}")))?;
        child::send_pty(sock.as_fd(), &pty.master)?;
        child::set_controlling_tty(&pty.slave).map_err(|e| ChildError::setup(format!("set up the terminal: {e}")))?;
    }
    // While still root of the container: raising a hard limit back up may need CAP_SYS_RESOURCE.
    child::set_rlimits(&spec.rlimits)?;
    child::new_session_keyring()?;
    crate::spawn::set_oom_score_adj(spec.oom_score_adj)?;
    crate::spawn::install_seccomp(seccomp)?;
    child::switch_user(&spec.user, caps_mask, last_cap, spec.no_new_privileges)?;
    child::chdir(&spec.cwd)?;
    child::reset_signals();
    // SAFETY: umask cannot fail. Docker's default, as for the container's own process, rather
    // than whatever the caller of exec had.
    unsafe { libc::umask(0o022) };
    Err(child::exec_command(&spec.args, &spec.env))
}
