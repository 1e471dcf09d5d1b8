//! Starting a container: the caller side of `spawn` and the container process's setup.
//!
//! Process layout (no helper binary, no re-exec):
//!
//! ```text
//! caller ──fork──> intermediate ──clone3(CLONE_PARENT | new namespaces)──> container process
//! ```
//!
//! The intermediate exists because the caller may be multi-threaded: unshare(CLONE_NEWUSER)
//! needs a single-threaded process, and a plain fork (unlike a raw clone3) runs glibc's atfork
//! handlers so that malloc works in the child. The intermediate creates the user namespace (the
//! caller writes its id maps, through newuidmap/newgidmap when needed), then clones the container
//! process with `CLONE_PARENT`, so the container process is the caller's own child (the caller
//! can wait for it and hold a pidfd to it) and pid 1 of its new pid namespace, and exits.
//!
//! The container process waits until the caller has placed it in its cgroup and started pasta,
//! then builds its filesystem view (see `mounts`), drops privileges and execs. A seqpacket socket
//! carries the steps back and forth; an error message on it, or EOF at a successful execve, ends
//! `spawn`.
//!
//! Cost: spawn + wait of `true` in a busybox rootfs measured ~2.6 ms as root with the host
//! network and ~3.9 ms with a new network namespace (release build, 2-core VM); for comparison
//! `crun run` takes ~12 ms there. A caller that never calls `wait` must still reap: the
//! container is its child (a caller that sets SIGCHLD to SIG_IGN loses the exit status).

use std::convert::Infallible;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use crate::caps::{self, Cap};
use crate::cgroup::{self, Cgroup};
use crate::cgroup_view::CgroupView;
use crate::child::{
    self, ChildError, MSG_ERROR, MSG_FUSE, MSG_GO, MSG_MAPPED, MSG_PID, MSG_PTY, MSG_SERVED, MSG_USERNS,
};
use crate::error::RunnerError;
use crate::idmap;
use crate::mounts::{self, Root};
use crate::network::{self, Pasta};
use crate::spec::{IdMapping, Network, Spec};
use crate::sys;

/// Where the process's stdin, stdout and stderr come from. `None` inherits the caller's.
/// Ignored for streams replaced by the pty when `tty` is set.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl Stdio {
    pub(crate) fn raw(&self) -> [Option<RawFd>; 3] {
        [&self.stdin, &self.stdout, &self.stderr].map(|f| f.as_ref().map(|f| f.as_raw_fd()))
    }
}

/// A process started by the runner (the container's init, or an `exec`ed process). It is a child
/// of the caller: `wait` reaps it.
#[derive(Debug)]
pub struct Process {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    pty_master: Option<OwnedFd>,
    status: Option<i32>,
}

impl Process {
    /// The pid in the caller's pid namespace.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The master side of the pty (tty mode); the caller relays it to the user's terminal.
    pub fn take_pty_master(&mut self) -> Option<OwnedFd> {
        self.pty_master.take()
    }

    /// Send a signal (through the pidfd, so never to a recycled pid).
    pub fn signal(&self, signal: i32) -> Result<(), RunnerError> {
        if self.status.is_some() {
            return Ok(());
        }
        sys::pidfd_send_signal(self.pidfd.as_fd(), signal).map_err(|e| RunnerError::io("signal the container", e))
    }

    /// Wait for the process to exit; returns its exit code, or 128 + signal when it was killed.
    pub fn wait(&mut self) -> Result<i32, RunnerError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = sys::pidfd_wait(self.pidfd.as_fd(), false)
            .map_err(|e| RunnerError::io("wait for the container", e))?
            .unwrap_or(125);
        self.status = Some(s);
        Ok(s)
    }

    /// Like `wait` but returns `None` at once if the process is still running.
    pub fn try_wait(&mut self) -> Result<Option<i32>, RunnerError> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let s = sys::pidfd_wait(self.pidfd.as_fd(), true).map_err(|e| RunnerError::io("wait for the container", e))?;
        self.status = s;
        Ok(s)
    }

    pub(crate) fn set_pty_master(&mut self, fd: Option<OwnedFd>) {
        self.pty_master = fd;
    }

    pub(crate) fn from_pid(pid: libc::pid_t) -> Result<Process, RunnerError> {
        let pidfd = sys::pidfd_open(pid).map_err(|e| RunnerError::io("pidfd_open", e))?;
        Ok(Process { pid, pidfd, pty_master: None, status: None })
    }

    /// Kill and reap (cleanup path).
    pub(crate) fn kill_and_reap(&mut self) {
        let _ = self.signal(libc::SIGKILL);
        let _ = self.wait();
    }
}

/// A running container: its init process plus what was set up for it. Dropping a container that
/// was not waited for kills it.
#[derive(Debug)]
pub struct Container {
    process: Process,
    cgroup: Option<Cgroup>,
    pasta: Option<Pasta>,
}

impl Container {
    pub fn pid(&self) -> libc::pid_t {
        self.process.pid
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn take_pty_master(&mut self) -> Option<OwnedFd> {
        self.process.take_pty_master()
    }

    pub fn signal(&self, signal: i32) -> Result<(), RunnerError> {
        self.process.signal(signal)
    }

    /// The cgroup the container runs in, if any.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// The pasta instance serving a private network, if any (record its pid to stop it from
    /// another process when this handle is lost).
    pub fn pasta(&self) -> Option<&Pasta> {
        self.pasta.as_ref()
    }

    /// Wait for pid 1 to exit, then stop pasta and remove the cgroup. Returns Docker's status.
    pub fn wait(&mut self) -> Result<i32, RunnerError> {
        let status = self.process.wait()?;
        self.cleanup();
        Ok(status)
    }

    fn cleanup(&mut self) {
        if let Some(p) = self.pasta.take() {
            p.stop();
        }
        if let Some(cg) = self.cgroup.take() {
            cg.remove();
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.process.status.is_none() {
            self.process.kill_and_reap();
        }
        self.cleanup();
    }
}

/// Facts computed in the caller before forking (the children should not have to look them up).
struct Plan {
    userns: bool,
    pts_gid5: bool,
    last_cap: u32,
    caps_mask: u64,
    new_netns: bool,
    /// pidfds of the processes whose network and pid namespaces the container joins.
    join_netns: Option<OwnedFd>,
    join_pidns: Option<OwnedFd>,
    join_ipcns: Option<OwnedFd>,
    /// The syscall filter, compiled before the fork.
    seccomp: Option<crate::seccomp::Compiled>,
    etc_binds: Vec<(&'static str, std::path::PathBuf)>,
    fuse: Option<FuseRootfs>,
}

/// A FUSE filesystem that the container process mounts on `spec.rootfs` itself, inside its own
/// mount (and user) namespace, handing the /dev/fuse connection to the caller to serve.
///
/// This is how a rootless container gets a union rootfs whose ownership is right: a FUSE mount
/// made in the container's user namespace interprets the uids/gids the server reports (and
/// sends in requests) as container ids, and `allow_other` lets every container user in, which
/// an unprivileged fusermount3 mount in the host namespace cannot offer. The mount exists only
/// in the container's mount namespace and disappears with it; the server then sees ENODEV.
#[derive(Debug, Clone)]
pub struct FuseRootfs {
    /// The mount source shown in mountinfo (e.g. `strata`).
    pub fsname: String,
    /// The mount type is `fuse.<subtype>`.
    pub subtype: String,
    /// Extra mount options appended to `fd=N,rootmode=40000,user_id=0,group_id=0,allow_other`
    /// (e.g. `default_permissions`); may be empty.
    pub options: String,
}

/// Start a container as described by `spec`.
///
/// Returns once the command has been exec'd (or fails with the reason: `RunnerError::Exec` with
/// 126/127 when the command cannot be run, other errors for setup problems).
pub fn spawn(spec: &Spec, stdio: Stdio) -> Result<Container, RunnerError> {
    spawn_inner(spec, stdio, None, &mut |_| Ok(()))
}

/// Like [`spawn`], with the rootfs a FUSE filesystem mounted by the container process (see
/// [`FuseRootfs`]). `serve` receives the /dev/fuse fd and must start serving it (e.g. on a
/// thread) and return; the container's setup continues when it returns and blocks on the
/// filesystem until the server answers. `spec.rootfs` must be an existing (empty) directory.
pub fn spawn_with_fuse_rootfs(
    spec: &Spec,
    stdio: Stdio,
    fuse: &FuseRootfs,
    serve: &mut dyn FnMut(OwnedFd) -> Result<(), RunnerError>,
) -> Result<Container, RunnerError> {
    spawn_inner(spec, stdio, Some(fuse.clone()), serve)
}

fn spawn_inner(
    spec: &Spec,
    stdio: Stdio,
    fuse: Option<FuseRootfs>,
    serve: &mut dyn FnMut(OwnedFd) -> Result<(), RunnerError>,
) -> Result<Container, RunnerError> {
    validate(spec)?;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let userns = spec.id_mapping != IdMapping::None;
    if !userns && euid != 0 {
        return Err(RunnerError::Invalid(
            "running without a user namespace needs root; use a rootless id mapping (IdMapping::Map)".into(),
        ));
    }
    let pasta = match &spec.network {
        Network::Private { .. } => Some(network::find_pasta()?),
        _ => None,
    };
    // Opened before the fork: a recycled pid fails here, not half-way through the setup.
    let donor = |pid: i32, what: &str| {
        sys::pidfd_open(pid).map_err(|e| {
            RunnerError::Invalid(format!("the container whose {what} is to be joined (pid {pid}) is not running: {e}"))
        })
    };
    let join_netns = match &spec.network {
        Network::Join { pid } => Some(donor(*pid, "network")?),
        _ => None,
    };
    let join_pidns = spec.namespaces.pid_of.map(|pid| donor(pid, "pid namespace")).transpose()?;
    let join_ipcns = spec.namespaces.ipc_of.map(|pid| donor(pid, "IPC namespace")).transpose()?;
    let plan = Plan {
        userns,
        pts_gid5: spec.id_mapping.maps_gid(5),
        last_cap: caps::last_cap(),
        caps_mask: Cap::mask(&spec.capabilities),
        new_netns: matches!(spec.network, Network::None | Network::Private { .. }),
        join_netns,
        join_pidns,
        join_ipcns,
        seccomp: spec.seccomp.as_ref().map(crate::seccomp::compile).transpose()?,
        etc_binds: write_etc_files(spec)?,
        fuse,
    };
    let cgroup = match &spec.cgroup {
        Some(c) => Cgroup::create(c, euid != 0 || !idmap::in_initial_user_namespace())?,
        None => None,
    };
    let (parent_sock, child_sock) = sys::seqpacket_pair().map_err(|e| RunnerError::io("socketpair", e))?;

    // SAFETY: fork; the child only runs `intermediate`, which never returns.
    let inter = unsafe { libc::fork() };
    if inter == -1 {
        if let Some(cg) = &cgroup {
            cg.remove();
        }
        return Err(RunnerError::io("fork", std::io::Error::last_os_error()));
    }
    if inter == 0 {
        drop(parent_sock);
        intermediate(spec, &plan, child_sock, &stdio);
    }
    drop(child_sock);
    drop(stdio);
    let result = start(spec, &plan, parent_sock.as_fd(), inter, cgroup.as_ref(), pasta.as_ref(), serve);
    // The intermediate has exited (or is about to): reap it.
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(inter, &mut st, 0) };
    match result {
        Ok((process, pasta)) => Ok(Container { process, cgroup, pasta }),
        Err(e) => {
            if let Some(cg) = &cgroup {
                cg.remove();
            }
            Err(e)
        }
    }
}

/// The caller's half of the handshake.
fn start(
    spec: &Spec,
    plan: &Plan,
    sock: BorrowedFd<'_>,
    inter: libc::pid_t,
    cgroup: Option<&Cgroup>,
    pasta: Option<&std::path::PathBuf>,
    serve: &mut dyn FnMut(OwnedFd) -> Result<(), RunnerError>,
) -> Result<(Process, Option<Pasta>), RunnerError> {
    let mut buf = vec![0u8; 64 * 1024];
    if plan.userns {
        let (n, _) = recv(sock, &mut buf)?;
        if n == 0 || buf[0] != MSG_USERNS {
            return Err(child_error(&buf[..n]));
        }
        if let Err(e) = idmap::apply(inter, &spec.id_mapping) {
            // SAFETY: killing our own child.
            unsafe { libc::kill(inter, libc::SIGKILL) };
            return Err(e);
        }
        send(sock, MSG_MAPPED)?;
    }
    let (n, _) = recv(sock, &mut buf)?;
    if n < 5 || buf[0] != MSG_PID {
        return Err(child_error(&buf[..n]));
    }
    let pid = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let mut process = Process::from_pid(pid).inspect_err(|_| {
        // SAFETY: killing our own child (no pidfd yet).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, 0) };
    })?;
    let mut started_pasta = None;
    let res = (|| {
        if let Some(cg) = cgroup {
            cg.add(pid)?;
        }
        if let (Some(pasta), Network::Private { ports }) = (pasta, &spec.network) {
            started_pasta = Some(network::start_pasta(pasta, pid, process.pidfd(), plan.userns, ports)?);
        }
        if let Some(att) = &spec.bridge {
            network::attach_bridge(pid, att)?;
        }
        send(sock, MSG_GO)?;
        loop {
            let (n, fd) = recv(sock, &mut buf)?;
            match (n, buf.first()) {
                (0, _) => return Ok(()),
                (_, Some(&MSG_PTY)) => process.pty_master = fd,
                (_, Some(&MSG_FUSE)) => {
                    let fd = fd.ok_or_else(|| RunnerError::Setup("no /dev/fuse fd received".into()))?;
                    serve(fd)?;
                    send(sock, MSG_SERVED)?;
                }
                _ => return Err(child_error(&buf[..n])),
            }
        }
    })();
    if let Err(e) = res {
        process.kill_and_reap();
        if let Some(p) = started_pasta {
            p.stop();
        }
        return Err(e);
    }
    Ok((process, started_pasta))
}

fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>), RunnerError> {
    sys::recv_msg(sock, buf).map_err(|e| RunnerError::io("read from the container process", e))
}

fn send(sock: BorrowedFd<'_>, msg: u8) -> Result<(), RunnerError> {
    sys::send_msg(sock, &[msg], None).map_err(|e| RunnerError::io("write to the container process", e))
}

/// Decode an `E<code><message>` report (or explain an unexpected end).
pub(crate) fn child_error(msg: &[u8]) -> RunnerError {
    if msg.len() >= 2 && msg[0] == MSG_ERROR {
        let message = String::from_utf8_lossy(&msg[2..]).into_owned();
        return match msg[1] {
            126 | 127 => RunnerError::Exec { code: msg[1] as i32, message },
            _ => RunnerError::Setup(message),
        };
    }
    RunnerError::Setup("the container process exited unexpectedly during setup".into())
}

fn validate(spec: &Spec) -> Result<(), RunnerError> {
    if spec.args.is_empty() {
        return Err(RunnerError::Invalid("no command specified".into()));
    }
    if !spec.cwd.starts_with('/') {
        return Err(RunnerError::Invalid(format!("the working directory {:?} is not absolute", spec.cwd)));
    }
    if !spec.rootfs.is_dir() {
        return Err(RunnerError::Invalid(format!("rootfs {} is not a directory", spec.rootfs.display())));
    }
    for m in &spec.mounts {
        if !m.target.starts_with('/') {
            return Err(RunnerError::Invalid(format!("mount target {:?} is not absolute", m.target)));
        }
    }
    if !spec.id_mapping.maps_uid(spec.user.uid) || !spec.id_mapping.maps_gid(spec.user.gid) {
        return Err(RunnerError::Invalid(format!(
            "user {}:{} is not mapped in the container's user namespace",
            spec.user.uid, spec.user.gid
        )));
    }
    for l in &spec.rlimits {
        if crate::spec::rlimit_resource(&l.name).is_none() {
            return Err(RunnerError::Invalid(format!("invalid ulimit type: {}", l.name)));
        }
        if l.soft > l.hard {
            return Err(RunnerError::Invalid(format!(
                "ulimit {}: soft limit {} above hard limit {}",
                l.name, l.soft, l.hard
            )));
        }
    }
    if let Some(c) = &spec.cgroup {
        cgroup::validate(&c.limits)?;
    }
    Ok(())
}

/// Write the /etc files atomically into their directory; returns (target, source) pairs.
/// Not fsync'd: they are rewritten at every start, so a crash loses nothing worth three fsyncs
/// (~1.5 ms each here) per start.
fn write_etc_files(spec: &Spec) -> Result<Vec<(&'static str, std::path::PathBuf)>, RunnerError> {
    let Some(etc) = &spec.etc_files else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (target, name, content) in [
        ("/etc/hosts", "hosts", &etc.hosts),
        ("/etc/hostname", "hostname", &etc.hostname),
        ("/etc/resolv.conf", "resolv.conf", &etc.resolv_conf),
    ] {
        let Some(content) = content else { continue };
        let path = etc.dir.join(name);
        write_atomic(&path, content.as_bytes()).map_err(|e| RunnerError::io(format!("write {}", path.display()), e))?;
        out.push((target, path));
    }
    Ok(out)
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    f.write_all(data)?;
    fs::rename(&tmp, path)
}

/// The intermediate process: user namespace, then the container process.
fn intermediate(spec: &Spec, plan: &Plan, sock: OwnedFd, stdio: &Stdio) -> ! {
    child::run_child(sock.as_fd(), || {
        if plan.userns {
            // SAFETY: we are single-threaded (just forked).
            sys::cvt(unsafe { libc::unshare(libc::CLONE_NEWUSER) })
                .map_err(|e| ChildError::setup(format!("create a user namespace: {e}")))?;
            sys::send_msg(sock.as_fd(), &[MSG_USERNS], None).map_err(|e| ChildError::setup(format!("sync: {e}")))?;
            child::wait_for(sock.as_fd(), MSG_MAPPED)?;
            // Become root of the namespace (when the caller's id is not the one mapped to 0).
            // SAFETY: plain syscalls.
            unsafe {
                sys::cvt(libc::setresgid(0, 0, 0))
                    .map_err(|e| ChildError::setup(format!("setgid 0 in userns: {e}")))?;
                sys::cvt(libc::setresuid(0, 0, 0))
                    .map_err(|e| ChildError::setup(format!("setuid 0 in userns: {e}")))?;
            }
        }
        for (target, flag, what) in [
            (&plan.join_netns, libc::CLONE_NEWNET, "network namespace"),
            // (Taken by the children made from here on: the container process.)
            (&plan.join_pidns, libc::CLONE_NEWPID, "pid namespace"),
            (&plan.join_ipcns, libc::CLONE_NEWIPC, "IPC namespace"),
        ] {
            if let Some(target) = target {
                // SAFETY: single-threaded child; the pidfd is valid.
                sys::cvt(unsafe { libc::setns(target.as_raw_fd(), flag) })
                    .map_err(|e| ChildError::setup(format!("join the other container's {what}: {e}")))?;
            }
        }
        let mut flags = libc::CLONE_PARENT | libc::CLONE_NEWNS;
        if spec.namespaces.pid && plan.join_pidns.is_none() {
            flags |= libc::CLONE_NEWPID;
        }
        if spec.namespaces.uts {
            flags |= libc::CLONE_NEWUTS;
        }
        if spec.namespaces.ipc && plan.join_ipcns.is_none() {
            flags |= libc::CLONE_NEWIPC;
        }
        let donor_shm = plan.join_ipcns.as_ref().map(donor_shm).transpose()?;
        if plan.new_netns {
            flags |= libc::CLONE_NEWNET;
        }
        let pid = sys::clone3(flags as u64).map_err(|e| ChildError::setup(format!("clone: {e}")))?;
        if pid == 0 {
            let sock = sock.try_clone().unwrap_or_else(|_| unsafe { libc::_exit(125) });
            container_main(spec, plan, sock, stdio, donor_shm.as_ref());
        }
        let mut msg = vec![MSG_PID];
        msg.extend_from_slice(&pid.to_le_bytes());
        sys::send_msg(sock.as_fd(), &msg, None).map_err(|e| ChildError::setup(format!("sync: {e}")))?;
        // SAFETY: the intermediate's work is done.
        unsafe { libc::_exit(0) }
    })
}

/// The container process: everything from the new namespaces to execve.
fn container_main(spec: &Spec, plan: &Plan, sock: OwnedFd, stdio: &Stdio, shm: Option<&OwnedFd>) -> ! {
    let sock = child::move_above_stdio(sock).unwrap_or_else(|_| unsafe { libc::_exit(125) });
    child::run_child(sock.as_fd(), || setup_and_exec(spec, plan, &sock, stdio, shm))
}

/// The /dev/shm of the container whose init `pidfd` is, as a detached mount. A bind mount
/// across mount namespaces is refused, so it is cloned from inside the other namespace, and
/// the copy (in a namespace of its own) is then moved into ours. The two are one tmpfs: what
/// one container puts in /dev/shm the other sees, as with Docker's shareable IPC.
fn donor_shm(pidfd: &OwnedFd) -> Result<OwnedFd, ChildError> {
    let fail =
        |what: &str, e: std::io::Error| ChildError::setup(format!("share the other container's /dev/shm: {what}: {e}"));
    let own = sys::open(c"/proc/self/ns/mnt", libc::O_RDONLY).map_err(|e| fail("open our mount namespace", e))?;
    // SAFETY: single-threaded child (CLONE_NEWNS needs an unshared fs_struct); valid fds.
    sys::cvt(unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWNS) })
        .map_err(|e| fail("enter its mount namespace", e))?;
    let tree = sys::open_tree_clone(c"/dev/shm");
    // SAFETY: as above.
    sys::cvt(unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNS) })
        .map_err(|e| fail("return to our mount namespace", e))?;
    tree.map_err(|e| fail("copy its mount", e))
}

fn setup_and_exec(
    spec: &Spec,
    plan: &Plan,
    sock: &OwnedFd,
    stdio: &Stdio,
    shm: Option<&OwnedFd>,
) -> Result<Infallible, ChildError> {
    child::wait_for(sock.as_fd(), MSG_GO)?;
    // Through the host's /proc, before this process has a /proc of its own.
    set_oom_score_adj(spec.oom_score_adj)?;
    // (Read while /proc/self/cgroup still shows host paths.)
    let cgroup_view = CgroupView::of_self();
    if spec.namespaces.cgroup {
        // After the caller moved us into our cgroup, so that it becomes the namespace's root.
        // SAFETY: plain syscall.
        sys::cvt(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) })
            .map_err(|e| ChildError::setup(format!("create a cgroup namespace: {e}")))?;
    }
    child::place_stdio(stdio.raw()).map_err(|e| ChildError::setup(format!("set up stdio: {e}")))?;
    // SAFETY: umask cannot fail. Device nodes and mount points get exactly the modes we ask for.
    unsafe { libc::umask(0) };
    if plan.new_netns {
        network::loopback_up().map_err(|e| ChildError::setup(format!("bring up loopback: {e}")))?;
    }

    if let Some(fuse) = &plan.fuse {
        mount_fuse_rootfs(spec, fuse, sock)?;
    }
    let root = Root::prepare(&spec.rootfs)?;
    mounts::mount_proc(&root)?;
    let pty = mounts::setup_dev(&root, plan.pts_gid5, spec.tty, spec.shm_size, shm)?;
    if mounts::mount_sys(&root, spec.sys_rw)? {
        cgroup_view.mount(&root, spec.namespaces.cgroup, spec.sys_rw)?;
    }
    for m in &spec.mounts {
        mounts::mount_user(&root, m)?;
    }
    for (target, source) in &plan.etc_binds {
        let src = sys::cstring(source.as_os_str().as_encoded_bytes()).map_err(|e| ChildError::setup(e.to_string()))?;
        root.mount(target, true, Some(&src), None, libc::MS_BIND, None)?;
    }
    mounts::ctx(root.mkdir_all(&spec.cwd, 0o755), || format!("create working directory {}", spec.cwd))?;
    mounts::pivot(root)?;
    // Before /proc/sys turns read-only: the container's own /proc, whose
    // net.* and kernel IPC entries are those of its namespaces.
    for (key, value) in &spec.sysctls {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| ChildError::setup(format!("sysctl {key}={value}: {e}")))?;
    }
    mounts::mask_paths(&spec.masked_paths)?;
    mounts::readonly_paths(&spec.readonly_paths)?;
    if spec.readonly_rootfs {
        mounts::readonly_root()?;
    }
    if spec.namespaces.uts && !spec.hostname.is_empty() {
        let h = spec.hostname.as_bytes();
        // SAFETY: valid buffer.
        sys::cvt(unsafe { libc::sethostname(h.as_ptr() as *const libc::c_char, h.len()) })
            .map_err(|e| ChildError::setup(format!("sethostname: {e}")))?;
    }
    if spec.namespaces.uts && !spec.domainname.is_empty() {
        let d = spec.domainname.as_bytes();
        // SAFETY: valid buffer.
        sys::cvt(unsafe { libc::setdomainname(d.as_ptr() as *const libc::c_char, d.len()) })
            .map_err(|e| ChildError::setup(format!("setdomainname: {e}")))?;
    }

    child::new_session();
    if let Some(pty) = &pty {
        child::send_pty(sock.as_fd(), &pty.master)?;
        child::set_controlling_tty(&pty.slave).map_err(|e| ChildError::setup(format!("set up the terminal: {e}")))?;
    }
    drop(pty);
    child::set_rlimits(&spec.rlimits)?;
    child::new_session_keyring()?;
    child::give_stdio_to(&spec.user);
    install_seccomp(plan.seccomp.as_ref())?;
    child::switch_user(&spec.user, plan.caps_mask, plan.last_cap, spec.no_new_privileges)?;
    child::chdir(&spec.cwd)?;
    child::reset_signals();
    // SAFETY: umask cannot fail; Docker's default.
    unsafe { libc::umask(0o022) };
    if spec.init {
        let sock = sock.try_clone().map_err(|e| ChildError::setup(format!("dup: {e}")))?;
        child::reaper(sock, &spec.args, &spec.env);
    }
    Err(child::exec_command(&spec.args, &spec.env))
}

/// Mount a FUSE filesystem on the rootfs path in our mount namespace and hand the connection to
/// the caller (see [`FuseRootfs`]).
fn mount_fuse_rootfs(spec: &Spec, fuse: &FuseRootfs, sock: &OwnedFd) -> Result<(), ChildError> {
    let err = |what: &str, e: std::io::Error| ChildError::setup(format!("{what}: {e}"));
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None).map_err(|e| err("make / rprivate", e))?;
    let dev = sys::open(c"/dev/fuse", libc::O_RDWR).map_err(|e| err("open /dev/fuse", e))?;
    let extra = if fuse.options.is_empty() { String::new() } else { format!(",{}", fuse.options) };
    let data = format!("fd={},rootmode=40000,user_id=0,group_id=0,allow_other{extra}", dev.as_raw_fd());
    let c = |s: &str| sys::cstring(s).map_err(|e| err("fuse mount options", e));
    let target = sys::cstring(spec.rootfs.as_os_str().as_encoded_bytes()).map_err(|e| err("rootfs path", e))?;
    sys::mount(Some(&c(&fuse.fsname)?), &target, Some(&c(&format!("fuse.{}", fuse.subtype))?), 0, Some(&c(&data)?))
        .map_err(|e| err(&format!("mount the FUSE rootfs on {}", spec.rootfs.display()), e))?;
    sys::send_msg(sock.as_fd(), &[MSG_FUSE], Some(dev.as_fd())).map_err(|e| err("send the /dev/fuse fd", e))?;
    drop(dev);
    child::wait_for(sock.as_fd(), MSG_SERVED)
}

/// Installs the syscall filter, the last step while the process still holds
/// every capability (see [`crate::seccomp`]).
pub(crate) fn install_seccomp(compiled: Option<&crate::seccomp::Compiled>) -> Result<(), ChildError> {
    match compiled {
        Some(c) => {
            crate::seccomp::install(c).map_err(|e| ChildError::setup(format!("install the seccomp filter: {e}")))
        }
        None => Ok(()),
    }
}

/// Writes `/proc/self/oom_score_adj` (children inherit it). Lowering it
/// below what the caller had takes CAP_SYS_RESOURCE, which an ordinary
/// user's container lacks: that is an error, not silently ignored.
pub(crate) fn set_oom_score_adj(value: Option<i32>) -> Result<(), ChildError> {
    match value {
        Some(v) => std::fs::write("/proc/self/oom_score_adj", v.to_string())
            .map_err(|e| ChildError::setup(format!("set oom_score_adj to {v}: {e}"))),
        None => Ok(()),
    }
}
