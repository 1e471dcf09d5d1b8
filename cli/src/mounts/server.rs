//! The process that serves one `strata mount`, and how the command line
//! starts and stops it.
//!
//! `strata mount` must return to the shell while the FUSE server lives on, so
//! the command re-executes strata as `strata internal-mount-serve REQUEST`, a
//! detached process (own session, stdio on /dev/null, working directory `/`)
//! that inherits the write end of a pipe as fd 3. The server mounts, writes
//! the mount record, and only then writes `OK` to the pipe; on failure it
//! writes `ERR message`. The command waits for that line, so it exits 0 only
//! once the mount is live and otherwise reports the server's error.
//!
//! The server blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1 before the
//! filesystem's threads start (they inherit the mask) and waits for them in
//! its main thread. SIGTERM (what `strata umount` sends) unmounts and exits;
//! SIGUSR1 is sent by the server to itself when the session ends because the
//! mount was removed from outside (`fusermount3 -u`, `umount`). Either way it
//! removes its record and private directory before it exits. A busy mount
//! is detached at SIGTERM instead: the server marks its record detached and
//! serves on until the session ends, when the last process using the mount
//! leaves it (or until a second SIGTERM).

use super::{clear, record_path, remove_private, save, Kind, MountRecord};
use crate::containers::record::Proc;
use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The fd on which the server finds the ready pipe.
const READY_FD: RawFd = 3;

/// How long `strata umount` lets a server unmount and exit after SIGTERM
/// before it kills it (a healthy server needs milliseconds).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Starts the server for `rec` and waits until the mount is live (`Ok`) or
/// the server reports why it could not mount (`Err` with its message).
pub fn start(ctx: &Context, rec: &MountRecord) -> Result<()> {
    let request = serde_json::to_string(rec).context("encoding the mount request")?;
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating the mount server's ready pipe")?;
    let exe = std::fs::read_link("/proc/self/exe").context("finding the strata binary")?;
    // The server works from `/`: a relative store root must not change meaning.
    let root = std::path::absolute(ctx.layout.root()).context("resolving the store root")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(root)
        .arg("internal-mount-serve")
        .arg(request)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    let fd = write_end.as_raw_fd();
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl, close_range) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec on the new descriptor; an fd that is
            // already READY_FD needs it cleared by hand.
            let r = if fd == READY_FD { libc::fcntl(fd, libc::F_SETFD, 0) } else { libc::dup2(fd, READY_FD) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::inherited_fds::cloexec_from(READY_FD + 1);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount server")?;
    drop(write_end);
    let mut reply = String::new();
    let read = File::from(read_end).read_to_string(&mut reply);
    if read.is_ok() && reply.starts_with("OK") {
        // The server lives on, detached; init (or a subreaper) reaps it.
        return Ok(());
    }
    if let Some(msg) = reply.strip_prefix("ERR ") {
        let _ = child.wait();
        bail!("{}", msg.trim_end());
    }
    let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
    bail!("the mount server exited before the mount was ready ({status})")
}

/// How [`stop`] left a mount.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Unmounted, its server gone.
    Gone,
    /// Busy: detached from its mount point, its server serving the
    /// processes still in it until they leave.
    Detached,
}

/// Stops the server of `rec` (SIGTERM, then SIGKILL after a grace period)
/// and clears what is left of the mount. Works as well when the server is
/// already gone. A busy mount's server detaches it instead and stays.
pub fn stop(ctx: &Context, rec: &MountRecord) -> Result<Stopped> {
    if let Some(top) = rec.covered_by() {
        bail!(
            "cannot unmount {}: another mount ({} {}) is on top of it; unmount that one first",
            rec.mountpoint.display(),
            top.fstype,
            top.source
        );
    }
    if let Some(p) = rec.server.filter(|p| p.alive()) {
        let pid = Pid::from_raw(p.pid);
        // A pidfd to wait on a process that is not our child; opened before
        // the signal so the pid cannot be recycled in between.
        let pidfd = rustix::process::Pid::from_raw(p.pid)
            .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok());
        // A failure the server reports from here on is about this signal.
        let failures_before = super::read(&ctx.layout, &rec.id).map_or(0, |r| r.unmount_failures);
        if p.alive() {
            match kill(pid, Signal::SIGTERM) {
                Ok(()) => {}
                Err(nix::errno::Errno::ESRCH) => {}
                Err(nix::errno::Errno::EPERM) => {
                    bail!(
                        "cannot unmount {}: it is served by another user's process {}",
                        rec.mountpoint.display(),
                        p.pid
                    )
                }
                Err(e) => bail!("cannot signal the mount server {}: {e}", p.pid),
            }
            if let Some(fd) = &pidfd {
                let deadline = std::time::Instant::now() + STOP_GRACE;
                loop {
                    if wait_exit(fd.as_fd(), Duration::from_millis(20)) || !p.alive() {
                        break;
                    }
                    let now = super::read(&ctx.layout, &rec.id);
                    if now.as_ref().is_some_and(|r| r.detached) {
                        return Ok(Stopped::Detached);
                    }
                    if let Some(r) = now.filter(|r| r.unmount_failures > failures_before) {
                        // The server's error names the mount point.
                        let why = r.unmount_error.unwrap_or_else(|| "failed".to_string());
                        bail!("{why}; it is still mounted and served");
                    }
                    if std::time::Instant::now() > deadline {
                        let _ = kill(pid, Signal::SIGKILL);
                        wait_exit(fd.as_fd(), STOP_GRACE);
                        break;
                    }
                }
            }
        }
    }
    clear(&ctx.layout, rec);
    if rec.on_top() {
        bail!("{} could not be unmounted", rec.mountpoint.display());
    }
    Ok(Stopped::Gone)
}

/// Waits until the process behind `pidfd` exits; false on timeout.
fn wait_exit(pidfd: std::os::fd::BorrowedFd, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// `strata internal-mount-serve REQUEST`: mounts, reports readiness on fd 3,
/// serves until unmounted or told to stop.
pub fn serve_main(ctx: &Context, request: &str) -> Result<i32> {
    let mut ready = take_ready_pipe();
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGUSR1] {
        signals.add(s);
    }
    let started = (|| {
        let rec: MountRecord = serde_json::from_str(request).context("parsing the mount request")?;
        // Before any thread exists, so every thread inherits the mask and
        // only `wait` below ever sees these signals.
        signals.thread_block().context("blocking signals")?;
        // Each file open in the mount holds a descriptor here.
        strata_fs::raise_fd_limit();
        let handle = mount(ctx, &rec)?;
        anyhow::Ok((rec, handle))
    })();
    let (mut rec, handle) = match started {
        Ok(x) => x,
        Err(e) => {
            report(&mut ready, &format!("ERR {}\n", message(&e)));
            return Ok(1);
        }
    };
    rec.server = Proc::of(std::process::id() as i32);
    if let Err(e) = save(&ctx.layout, &rec) {
        let _ = handle.unmount();
        report(&mut ready, &format!("ERR {}\n", message(&e)));
        return Ok(1);
    }
    report(&mut ready, "OK\n");
    drop(ready);

    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    std::thread::spawn(move || {
        handle.join();
        flag.store(true, Ordering::SeqCst);
        let _ = kill(Pid::this(), Signal::SIGUSR1);
    });
    loop {
        match signals.wait() {
            Ok(Signal::SIGUSR1) if !ended.load(Ordering::SeqCst) => continue,
            Ok(Signal::SIGUSR1) => break,
            Ok(_) => {
                rec.follow_moves(&strata_fs::mountinfo::read());
                if rec.covered_by().is_some() {
                    // Out of reach under another mount: the session ends
                    // with this process, and the record stays so that the
                    // dead mount is cleared once it is on top again.
                    return Ok(0);
                } else if !rec.on_top() {
                    // Gone from there, or another mount now covers it:
                    // unmounting by path would take that one. The session
                    // ends with this process.
                } else if unmount_now(&rec.mountpoint) {
                    // Not busy: the session ends at once; wait for it so
                    // no request is still writing to the upper directory.
                    while !ended.load(Ordering::SeqCst) {
                        let _ = signals.wait();
                    }
                } else if let Err(e) = strata_fs::unmount_path(&rec.mountpoint) {
                    // Neither unmounted nor detached (say fusermount3 failed):
                    // the mount is still there, so serve on, and let the
                    // umount waiting for us say why.
                    rec.unmount_failures += 1;
                    rec.unmount_error = Some(e.to_string());
                    let _ = save(&ctx.layout, &rec);
                    continue;
                } else {
                    // Busy: detached; serve whoever still uses it until the
                    // last of them leaves (the session ends then). A second
                    // signal ends it at once (they get ENOTCONN).
                    rec.detached = true;
                    let _ = save(&ctx.layout, &rec);
                    while !ended.load(Ordering::SeqCst) {
                        if !matches!(signals.wait(), Ok(Signal::SIGUSR1) | Err(_)) {
                            break;
                        }
                    }
                }
                break;
            }
            Err(_) => continue,
        }
    }
    let _ = std::fs::remove_file(record_path(&ctx.layout, &rec.id));
    remove_private(&ctx.layout, &rec.id);
    Ok(0)
}

/// Mounts what `rec` describes, served from threads of this process.
fn mount(ctx: &Context, rec: &MountRecord) -> Result<strata_fs::MountHandle> {
    let range = rec.view.layers(rec.layers.len()).map_err(anyhow::Error::msg)?;
    let single = matches!(rec.view, super::View::Layer(_));
    let lowers = crate::lazy::lowers_with(&ctx.layout, &rec.layers[range], None, |index| match single {
        true => super::view::expose_whiteouts(&index, ctx.rootless),
        false => index,
    })?;
    let opts = strata_fs::MountOptions {
        upper: rec.upper.clone(),
        fsname: rec.fsname(),
        // Root's mounts are open to every user, as a kernel overlay mount
        // is, with the image's modes deciding; an ordinary user's stay its
        // own (fusermount3 allows more only with user_allow_other).
        allow_other: !ctx.rootless,
        id_map: match rec.kind {
            Kind::Container if ctx.rootless => container_id_map(),
            _ => strata_fs::idmap::IdMap::default(),
        },
        ..Default::default()
    };
    Ok(strata_fs::mount(lowers, &rec.mountpoint, opts)?)
}

/// A rootless container's ids as the host holds its files: through the same
/// mapping its user namespace gets (see `strata_fs::idmap`). Its upper files
/// carry the host's ids for them, its layers the container's own.
fn container_id_map() -> strata_fs::idmap::IdMap {
    let ranges = |r: &[strata_runner::spec::IdRange]| {
        r.iter().map(|r| strata_fs::idmap::IdRange { inside: r.container, outside: r.host, count: r.size }).collect()
    };
    match strata_runner::rootless_mapping().0 {
        strata_runner::spec::IdMapping::Map { uids, gids } => {
            strata_fs::idmap::IdMap { uids: ranges(&uids), gids: ranges(&gids) }
        }
        strata_runner::spec::IdMapping::None => strata_fs::idmap::IdMap::default(),
    }
}

/// Unmounts `path` if nothing uses it: umount(2), or `fusermount3 -u` for
/// an ordinary user. False when it is busy or cannot be unmounted.
fn unmount_now(path: &Path) -> bool {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::empty()) {
        Ok(()) => true,
        Err(rustix::io::Errno::PERM) => strata_fs::fusermount_unmount(path, false).is_ok(),
        Err(_) => false,
    }
}

/// The ready pipe the starting command left on fd 3, if there is one.
fn take_ready_pipe() -> Option<File> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(READY_FD, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: fd 3 is open and nothing else in this process owns it: the
    // starting command put the pipe there for us before exec.
    let fd = unsafe { OwnedFd::from_raw_fd(READY_FD) };
    // Keep it away from anything this process might start (fusermount3).
    let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    Some(File::from(fd))
}

/// An error with its causes, like `{:#}`, but without causes whose text the
/// message before already contains (errors that embed their source).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn report(ready: &mut Option<File>, line: &str) {
    if let Some(f) = ready.as_mut() {
        let _ = f.write_all(line.as_bytes());
    }
}
