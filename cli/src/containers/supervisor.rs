//! The per-container supervisor: `strata internal-supervise ID`.
//!
//! One supervisor process per running container, detached from the
//! terminal and the process that started it (its own session; stdio on
//! `supervisor.log` in the container directory). It
//! 1. claims the container (records its own pid + start time under the lock),
//! 2. rootless: enters the container's user namespace first, so that the
//!    FUSE mount it serves shows image-owned files with their real owners
//!    and `chown` inside the container works,
//! 3. mounts the union filesystem (image layers + `upper/`) on `rootfs/`,
//!    serving it from background threads of this process,
//! 4. seeds empty volumes from the image and spawns the container through
//!    the runner,
//! 5. copies the container's output into `ctr.log` and to attached clients,
//!    and their input, window sizes and signals to the container,
//! 6. records the exit status, unmounts, and for `--rm` removes everything,
//!    then tells the clients the exit status.
//!
//! The process that launches the supervisor passes it one end of a socket
//! pair (fd 3): the supervisor reports `STARTED` or `ERROR(code, message)`
//! there, so `run -d` prints the id only once the container runs and `run`
//! sees every byte of output. Later clients use `attach.sock`. The store root
//! comes as a directory fd (fd 4) and the environment is cut down to a few
//! variables, because a container's `--init` is a fork of the supervisor and
//! shows its command line and environment as /proc/1/cmdline and environ.

use crate::commands::run::remove_container_files;
use crate::containers::attach::{self, FrameBuf};
use crate::containers::record::{self, Container, Proc, Status};
use crate::containers::volumes;
use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;

/// The fd number the supervisor finds its first client on.
const CLIENT_FD: RawFd = 3;
/// The fd number the supervisor finds the store root on (an `O_PATH`
/// descriptor of the directory). Passed this way, the host path appears
/// neither in the supervisor's command line nor in its environment, both of
/// which a container's `--init` (a fork of the supervisor) shows as its own
/// /proc/1/cmdline and /proc/1/environ.
const ROOT_FD: RawFd = 4;
/// How often a restart back-off looks whether the container was removed,
/// stopped or given another policy meanwhile.
const BACKOFF_CHECK: std::time::Duration = std::time::Duration::from_millis(200);
/// What the supervisor keeps of the launching environment: the search path
/// (newuidmap, pasta) and diagnostics. Everything else would only be visible
/// in an `--init` container's /proc/1/environ.
const SUPERVISOR_ENV: &[&str] =
    &["PATH", "TMPDIR", "STRATA_LOG", "RUST_LOG", "RUST_BACKTRACE", crate::containers::networks::IDLE_ENV];

/// A start failure reported by the supervisor, with Docker's exit status.
#[derive(Debug)]
pub struct StartError {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for StartError {}

/// The launching side of a supervisor.
pub struct Session {
    stream: Option<UnixStream>,
    dir: std::path::PathBuf,
}

impl Session {
    /// Waits for `STARTED`; turns `ERROR` into a [`StartError`].
    pub fn wait_started(&mut self) -> Result<()> {
        let mut s = self.stream.take().context("session already used")?;
        loop {
            match attach::read_frame(&mut s).context("waiting for the supervisor")? {
                Some((attach::STARTED, _)) => return Ok(()),
                Some((attach::ERROR, p)) => {
                    let code = p.get(..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(125);
                    let message = String::from_utf8_lossy(p.get(4..).unwrap_or_default()).into_owned();
                    return Err(StartError { code, message }.into());
                }
                Some((attach::EXIT, _)) => return Ok(()),
                Some(_) => continue,
                None => {
                    let log = std::fs::read_to_string(self.dir.join("supervisor.log")).unwrap_or_default();
                    bail!("the container's supervisor exited before the container started: {}", log.trim());
                }
            }
        }
    }

    /// The connection to the supervisor, for an attached client.
    pub fn take_stream(&mut self) -> Result<UnixStream> {
        self.stream.take().context("session already used")
    }
}

/// Starts `strata internal-supervise ID` as a detached process. With
/// `attach` the supervisor sends output to the returned session too.
pub fn launch(ctx: &Context, c: &Container, attach: bool) -> Result<Session> {
    if let Some(m) = crate::mounts::container_mount(&ctx.layout, &c.config.id) {
        bail!(
            "container {} is {}: its filesystem is served by that mount; {} before starting it",
            c.config.name,
            m.place(),
            m.release_hint()
        );
    }
    // Lazy layers are fetched by the supervisor, whose environment is cut
    // down: where the registry settings are goes into a file instead.
    crate::lazy::RegistrySettings::save_for(&c.dir, &c.config.layers)?;
    let (ours, theirs) = UnixStream::pair().context("creating the supervisor socket pair")?;
    // Our own binary; /proc/self/exe itself if its file was replaced since
    // we started (the path keeps the process name `strata` otherwise).
    let exe = std::fs::read_link("/proc/self/exe")
        .ok()
        .filter(|p| p.is_file() && !p.to_string_lossy().ends_with(" (deleted)"))
        .unwrap_or_else(|| "/proc/self/exe".into());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(c.dir.join("supervisor.log"))
        .context("opening supervisor.log")?;
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(ctx.layout.root())
        .with_context(|| format!("opening the store root {}", ctx.layout.root().display()))?;
    let mut cmd = std::process::Command::new(exe);
    // argv[0] "strata", no --root: see ROOT_FD.
    cmd.arg0("strata").arg("internal-supervise").arg(&c.config.id);
    if attach {
        cmd.arg("--attach");
    }
    cmd.env_clear();
    for (k, v) in std::env::vars_os().filter(|(k, _)| SUPERVISOR_ENV.iter().any(|e| k == *e)) {
        cmd.env(k, v);
    }
    // Like a daemon, the supervisor keeps no directory of the caller busy.
    cmd.current_dir("/").stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let fds = [(theirs.as_raw_fd(), CLIENT_FD), (root.as_raw_fd(), ROOT_FD)];
    // SAFETY: only async-signal-safe calls (setsid, fcntl, dup2, close_range) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Copies above the targets first, so that no dup2 overwrites a
            // source that happens to sit on the other target number.
            let mut high = [0; 2];
            for (i, (fd, _)) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, (_, target)) in fds.iter().enumerate() {
                // dup2 clears close-on-exec on the new descriptor.
                if libc::dup2(high[i], *target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            crate::inherited_fds::cloexec_from(CLIENT_FD.max(ROOT_FD) + 1);
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the container's supervisor")?;
    drop(theirs);
    // The supervisor outlives us; it is reaped by init (or a subreaper).
    drop(child);
    Ok(Session { stream: Some(ours), dir: c.dir.clone() })
}

/// A connected client.
struct Client {
    stream: UnixStream,
    frames: FrameBuf,
}

/// Output of the container being copied: the fd and its stream name.
struct Output {
    fd: OwnedFd,
    stream: &'static str,
    kind: u8,
    /// Bytes of an unfinished line, kept for the next log record.
    open: bool,
}

/// `strata internal-supervise ID`: runs until the container has exited.
pub fn supervise_main(ctx: &Context, id: &str, attach_first: bool) -> Result<i32> {
    // SAFETY: fd 3 was placed by `launch`; we take ownership of it once.
    let first = unsafe { UnixStream::from_raw_fd(CLIENT_FD) };
    let own_ctx;
    let ctx = match take_root_fd() {
        Some(root) => {
            own_ctx = Context::new(Some(root));
            &own_ctx
        }
        None => ctx,
    };
    // Our output goes to supervisor.log; a client going away must not kill us.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let mut first = Some(first);
    let report = |first: &mut Option<UnixStream>, code: i32, msg: &str| {
        if let Some(s) = first.as_mut() {
            let _ = attach::write_frame(s, attach::ERROR, &attach::error_payload(code, msg));
        }
        eprintln!("start failed ({code}): {msg}");
    };
    let c = match claim(ctx, id).and_then(|c| {
        // A start by hand: a stop asked for before no longer holds.
        record::update_state(&ctx.layout, &c.dir, |s| s.stop_requested = false)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            report(&mut first, 125, &format!("{e:#}"));
            return Ok(125);
        }
    };
    let mut sup =
        Supervisor { ctx, c, clients: Vec::new(), log: None, log_size: 0, log_rotation: None, listener: None };
    match sup.start() {
        Ok(running) => {
            if let Some(mut s) = first.take() {
                let _ = attach::write_frame(&mut s, attach::STARTED, &[]);
                if attach_first {
                    let _ = s.set_nonblocking(false);
                    sup.clients.push(Client { stream: s, frames: FrameBuf::default() });
                }
            }
            let mut code = sup.serve(running);
            // The restart policy (see `restart`): start again after a back-off
            // while it says so and nobody else took the container meanwhile.
            // The policy is read from the record each time: `update
            // --restart` changes it under a running container.
            let restarts = |c: &record::Container, code: i32| {
                crate::containers::restart::Policy::parse(c.config.request.restart.as_deref())
                    .unwrap_or(crate::containers::restart::Policy::No)
                    .restarts(code, c.state.restart_count, c.state.stop_requested)
            };
            let mut delay = None;
            let mut started = std::time::Instant::now();
            while let Some(now) = record::read_dir_record(&sup.c.dir) {
                if !restarts(&now, code) {
                    break;
                }
                let wait = crate::containers::restart::next_delay(delay, started.elapsed());
                delay = Some(wait);
                let me = Proc::of(std::process::id() as i32);
                let _ = record::update_state(&ctx.layout, &sup.c.dir, |s| s.restarting = me);
                // The back-off ends early, and the loop with it, when the
                // container is removed, stopped or no longer to be restarted.
                let deadline = std::time::Instant::now() + wait;
                let mut called_off = false;
                while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(left.min(BACKOFF_CHECK));
                    if !record::read_dir_record(&sup.c.dir).is_some_and(|c| restarts(&c, code)) {
                        called_off = true;
                        break;
                    }
                }
                let _ = record::update_state(&ctx.layout, &sup.c.dir, |s| s.restarting = None);
                if called_off {
                    break;
                }
                match claim(ctx, id) {
                    // Stopped during the back-off: it stays stopped.
                    Ok(c) if c.state.stop_requested => {
                        let _ = record::update_state(&ctx.layout, &c.dir, |s| s.supervisor = None);
                        break;
                    }
                    Ok(c) => sup.c = c,
                    Err(_) => break,
                }
                let _ = record::update_state(&ctx.layout, &sup.c.dir, |s| s.restart_count += 1);
                started = std::time::Instant::now();
                match sup.start() {
                    Ok(running) => code = sup.serve(running),
                    Err(e) => {
                        let msg = format!("failed to restart the container: {e:#}");
                        eprintln!("{msg}");
                        let _ = record::update_state(&ctx.layout, &sup.c.dir, |s| {
                            s.supervisor = None;
                            s.init = None;
                            s.status = Status::Exited;
                            s.error = msg.clone();
                        });
                        sup.teardown();
                        break;
                    }
                }
            }
            Ok(code)
        }
        Err(e) => {
            let (code, msg) = match e.downcast_ref::<strata_runner::RunnerError>() {
                Some(r) => (r.exit_code(), r.to_string()),
                None => (125, format!("{e:#}")),
            };
            let msg = format!("failed to create task for container: {msg}");
            let _ = record::update_state(&ctx.layout, &sup.c.dir, |s| {
                s.supervisor = None;
                s.init = None;
                s.exit_code = code;
                s.error = msg.clone();
                if s.status != Status::Exited {
                    s.status = Status::Created;
                }
            });
            sup.teardown();
            if sup.c.config.request.rm {
                let _ = remove_container_files(ctx, &sup.c, true);
            }
            report(&mut first, code, &msg);
            Ok(code)
        }
    }
}

/// The store root `launch` passed on [`ROOT_FD`] (closed here, so that the
/// container never inherits it); `None` when there is no directory there.
fn take_root_fd() -> Option<std::path::PathBuf> {
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    if unsafe { libc::fcntl(ROOT_FD, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: open, placed by `launch`; ownership is taken once (and given
    // back below if it is not what `launch` puts there).
    let fd = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(ROOT_FD) });
    if !fd.metadata().is_ok_and(|m| m.is_dir()) {
        std::mem::forget(fd);
        return None;
    }
    std::fs::read_link(format!("/proc/self/fd/{ROOT_FD}")).ok()
}

/// Marks the container as owned by this supervisor; fails if another one
/// runs it, or if `rm` is removing it (`rm` in turn leaves a claimed one
/// alone: both decide under the records lock).
fn claim(ctx: &Context, id: &str) -> Result<Container> {
    let me = Proc::of(std::process::id() as i32).context("reading our own start time")?;
    let _lock = record::lock(&ctx.layout)?;
    let dir = ctx.layout.container_dir(id);
    let mut c = record::read_dir_record(&dir).with_context(|| format!("No such container: {id}"))?;
    if c.state.status == Status::Removing {
        bail!("container is marked for removal and cannot be started");
    }
    if c.state.supervisor.is_some_and(|p| p.alive() && p != me) {
        bail!("container {} is already running", c.short_id());
    }
    // `strata mount CONTAINER` writes to the same upper directory.
    if let Some(m) = crate::mounts::list_live(&ctx.layout)?.iter().find(|m| m.container_id.as_deref() == Some(id)) {
        bail!("container {} is {} (`strata mount`): {} before starting it", c.config.name, m.place(), m.release_hint());
    }
    c.state.supervisor = Some(me);
    record::save_state(&c)?;
    Ok(c)
}

struct Supervisor<'a> {
    ctx: &'a Context,
    c: Container,
    clients: Vec<Client>,
    log: Option<std::fs::File>,
    /// Bytes in the current log file, and past how many it rotates into how
    /// many files in all (`--log-opt max-size`, `max-file`).
    log_size: u64,
    log_rotation: Option<(u64, usize)>,
    listener: Option<UnixListener>,
}

/// What `start` hands to the serving loop.
struct Running {
    child: strata_runner::Container,
    _mount: strata_fs::MountHandle,
    /// Container input (pipe or pty master), non-blocking; what clients sent
    /// that it has not taken yet waits in `stdin_buf`.
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_eof: bool,
    outputs: Vec<Output>,
    tty: Option<OwnedFd>,
}

impl Supervisor<'_> {
    fn start(&mut self) -> Result<Running> {
        let c = self.c.clone();
        let rootfs = c.rootfs();
        record::clear_stale_mount(&rootfs);
        std::fs::create_dir_all(&rootfs)?;
        // Each file open in the mount holds a descriptor here; the
        // container keeps the limit it had (unless --ulimit nofile says).
        let caller_fd_limit = strata_fs::raise_fd_limit();
        let spec_builder = crate::containers::spec::SpecBuilder::new(self.ctx, &c)?.with_fd_limit(caller_fd_limit);
        // Rootless: from here on we are root of the container's user namespace.
        spec_builder.enter_user_namespace()?;
        let mount =
            crate::containers::spec::mount_rootfs(self.ctx, &c).context("mounting the container's filesystem")?;
        volumes::seed_volumes(self.ctx, &c, &rootfs)?;
        let spec = spec_builder.build()?;

        // (`--log-driver none`: no log at all.)
        let policy = crate::containers::logs::LogPolicy::of(&c.config.request)?;
        self.log_rotation = policy.max_size.map(|size| (size, policy.max_file));
        if policy.keep {
            let log =
                std::fs::OpenOptions::new().create(true).append(true).open(c.log_path()).context("opening the log")?;
            self.log_size = log.metadata().map(|m| m.len()).unwrap_or(0);
            self.log = Some(log);
        }

        let (mut stdio, parent_stdin, outputs) = if spec.tty {
            (strata_runner::Stdio::default(), None, Vec::new())
        } else {
            let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let (in_child, in_parent) = if c.config.request.interactive {
                let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
                (Some(r), Some(w))
            } else {
                (None, None)
            };
            let outputs = vec![
                Output { fd: out_r, stream: "stdout", kind: attach::STDOUT, open: false },
                Output { fd: err_r, stream: "stderr", kind: attach::STDERR, open: false },
            ];
            (strata_runner::Stdio { stdin: in_child, stdout: Some(out_w), stderr: Some(err_w) }, in_parent, outputs)
        };
        let mut child = strata_runner::spawn(&spec, std::mem::take(&mut stdio))?;
        drop(stdio);
        let mut outputs = outputs;
        let tty = child.take_pty_master();
        if let Some(m) = &tty {
            outputs.push(Output { fd: m.try_clone()?, stream: "stdout", kind: attach::STDOUT, open: false });
        }
        let init = Proc::of(child.pid()).unwrap_or(Proc { pid: child.pid(), start: 0 });
        let netns = c
            .config
            .uses_pasta()
            .then(|| std::fs::read_link(format!("/proc/{}/ns/net", child.pid())).ok())
            .flatten()
            .map(|l| l.to_string_lossy().into_owned());
        record::update_state(&self.ctx.layout, &c.dir, |s| {
            s.status = Status::Running;
            s.init = Some(init);
            s.netns = netns;
            s.exit_code = 0;
            s.error.clear();
            s.oom_killed = false;
            s.started_at = Some(record::now());
            s.finished_at = None;
        })?;
        crate::containers::health::start(self.ctx, &c, init);
        self.network_membership(true);
        container_event(self.ctx, &c, "start", &[]);
        // Later clients (`attach`, `start -a`) connect here.
        self.listener = bind_socket(&c.dir).ok();
        let stdin = if tty.is_some() { tty.as_ref().map(|m| m.try_clone()).transpose()? } else { parent_stdin };
        if let Some(fd) = &stdin {
            let fl = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
            let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(fl))?;
        }
        Ok(Running { child, _mount: mount, stdin, stdin_buf: Vec::new(), stdin_eof: false, outputs, tty })
    }

    /// Copies output and input until the container exits; returns its status.
    fn serve(&mut self, mut run: Running) -> i32 {
        let pidfd = run.child.process().pidfd().try_clone_to_owned().ok();
        let mut exited = false;
        loop {
            let mut fds: Vec<PollFd> = Vec::new();
            for o in &run.outputs {
                fds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLIN));
            }
            let n_out = fds.len();
            if let Some(p) = &pidfd {
                if !exited {
                    fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                }
            }
            let pid_slot = if pidfd.is_some() && !exited { Some(fds.len() - 1) } else { None };
            let listen_slot = self.listener.as_ref().map(|l| {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let stdin_slot = match &run.stdin {
                Some(fd) if !run.stdin_buf.is_empty() => {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
                    Some(fds.len() - 1)
                }
                _ => None,
            };
            // Input waiting for the container beyond this stops reading clients.
            let take_input = run.stdin_buf.len() < MAX_STDIN_BUF;
            let client_base = fds.len();
            for cl in &self.clients {
                let ev = if take_input { PollFlags::POLLIN } else { PollFlags::empty() };
                fds.push(PollFd::new(cl.stream.as_fd(), ev));
            }
            // After the exit, drain what is left in the pipes, but do not
            // wait for ever on a descendant that still holds them.
            let timeout = if exited { PollTimeout::from(500u16) } else { PollTimeout::NONE };
            let ready = match poll(&mut fds, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => 0,
            };
            let revents: Vec<PollFlags> = fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
            drop(fds);
            if exited && ready == 0 {
                break;
            }
            // Output.
            let mut closed = Vec::new();
            for (i, ev) in revents[..n_out].iter().enumerate() {
                if ev.is_empty() {
                    continue;
                }
                let mut buf = [0u8; 32 * 1024];
                match nix::unistd::read(run.outputs[i].fd.as_fd(), &mut buf) {
                    Ok(n) if n > 0 => self.output(&mut run.outputs[i], &buf[..n]),
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    // EOF, or EIO from a pty whose other side is all closed.
                    _ => closed.push(i),
                }
            }
            for i in closed.into_iter().rev() {
                run.outputs.remove(i);
            }
            if stdin_slot.is_some_and(|slot| !revents[slot].is_empty()) {
                flush_stdin(&mut run);
            }
            if let Some(slot) = pid_slot {
                if !revents[slot].is_empty() {
                    exited = true;
                }
            }
            if let Some(slot) = listen_slot {
                if !revents[slot].is_empty() {
                    if let Some(Ok((s, _))) = self.listener.as_ref().map(|l| l.accept()) {
                        let _ = s.set_nonblocking(false);
                        self.clients.push(Client { stream: s, frames: FrameBuf::default() });
                    }
                }
            }
            // Client input.
            let mut gone = Vec::new();
            let n_clients = revents.len() - client_base;
            for i in 0..n_clients.min(self.clients.len()) {
                if revents[client_base + i].is_empty() {
                    continue;
                }
                let mut buf = [0u8; 32 * 1024];
                let n = match (&self.clients[i].stream).read(&mut buf) {
                    Ok(0) | Err(_) => {
                        gone.push(i);
                        continue;
                    }
                    Ok(n) => n,
                };
                self.clients[i].frames.push(&buf[..n]);
                loop {
                    match self.clients[i].frames.next_frame() {
                        Ok(Some((kind, payload))) => self.client_frame(&mut run, kind, &payload),
                        Ok(None) => break,
                        Err(_) => {
                            gone.push(i);
                            break;
                        }
                    }
                }
            }
            gone.sort_unstable();
            gone.dedup();
            for i in gone.into_iter().rev() {
                self.clients.remove(i);
            }
            if exited && run.outputs.is_empty() {
                break;
            }
        }
        for o in run.outputs.iter_mut() {
            if o.open {
                self.log_record(o.stream, b"");
            }
        }
        let code = run.child.wait().unwrap_or(255);
        self.finish(code, run)
    }

    fn output(&mut self, o: &mut Output, data: &[u8]) {
        // One log record per line; an unfinished line is continued later.
        let mut rest = data;
        while !rest.is_empty() {
            let (piece, more) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..=i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            self.log_record(o.stream, piece);
            o.open = !piece.ends_with(b"\n");
            rest = more;
        }
        let mut gone = Vec::new();
        for (i, cl) in self.clients.iter_mut().enumerate() {
            if attach::write_frame(&mut cl.stream, o.kind, data).is_err() {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.remove(i);
        }
    }

    fn log_record(&mut self, stream: &str, piece: &[u8]) {
        if piece.is_empty() {
            return;
        }
        let Some(log) = self.log.as_mut() else { return };
        let line = serde_json::json!({
            "stream": stream,
            "time": record::now(),
            "log": String::from_utf8_lossy(piece),
        });
        let mut text = line.to_string();
        text.push('\n');
        let _ = log.write_all(text.as_bytes());
        self.log_size += text.len() as u64;
        self.rotate_log_if_full();
    }

    /// `--log-opt max-size`: past it, the log moves aside (see `logs`) and
    /// a new one starts.
    fn rotate_log_if_full(&mut self) {
        let Some((_, max_file)) = self.log_rotation.filter(|(size, _)| self.log_size >= *size) else { return };
        let path = self.c.log_path();
        self.log = None;
        if let Err(e) = crate::containers::logs::rotate(&path, max_file) {
            eprintln!("rotating the log: {e}");
        }
        self.log = std::fs::OpenOptions::new().create(true).append(true).open(&path).ok();
        self.log_size = 0;
    }

    fn client_frame(&mut self, run: &mut Running, kind: u8, payload: &[u8]) {
        match kind {
            attach::STDIN if run.stdin.is_some() && !run.stdin_eof => {
                run.stdin_buf.extend_from_slice(payload);
                flush_stdin(run);
            }
            // A terminal has no end of input; a pipe is closed once drained.
            attach::STDIN_EOF if run.tty.is_none() => {
                run.stdin_eof = true;
                flush_stdin(run);
            }
            attach::RESIZE => {
                if let (Some(m), Some((rows, cols))) = (&run.tty, attach::parse_resize(payload)) {
                    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
                    unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
            }
            attach::SIGNAL if payload.len() >= 4 => {
                let sig = i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                let _ = run.child.signal(sig);
            }
            _ => {}
        }
    }

    /// Records the exit, unmounts, removes for `--rm`, tells the clients.
    fn finish(&mut self, code: i32, run: Running) -> i32 {
        container_event(self.ctx, &self.c, "die", &[("exitCode", &code.to_string())]);
        let _ = record::update_state(&self.ctx.layout, &self.c.dir, |s| {
            s.status = Status::Exited;
            s.exit_code = code;
            s.init = None;
            s.netns = None;
            s.supervisor = None;
            s.oom_killed = false;
            s.finished_at = Some(record::now());
        });
        // `--rm` removes the log in a moment: no point in making it durable.
        if let Some(l) = self.log.as_mut().filter(|_| !self.c.config.request.rm) {
            let _ = l.sync_all();
        }
        // The container's processes are gone: its filesystem is served to
        // no one any more (see `MountHandle::unmount_abandoned`).
        let Running { child, _mount: mount, .. } = run;
        drop(child);
        let _ = mount.unmount_abandoned();
        self.teardown();
        if self.c.config.request.rm {
            if let Err(e) = remove_container_files(self.ctx, &self.c, true) {
                eprintln!("removing the container: {e:#}");
            }
        }
        for cl in self.clients.iter_mut() {
            let _ = attach::write_frame(&mut cl.stream, attach::EXIT, &code.to_be_bytes());
        }
        code
    }

    /// Unmounts the container's filesystem and removes the attach socket.
    fn teardown(&mut self) {
        self.listener = None;
        let _ = std::fs::remove_file(self.c.socket_path());
        record::clear_stale_mount(&self.c.rootfs());
        self.network_membership(false);
    }

    /// On a user-defined network: names the container in the other running
    /// members' /etc/hosts once it runs (`joined`), and removes it and gives
    /// its address back once it has stopped.
    fn network_membership(&self, joined: bool) {
        use crate::containers::networks;
        let Some(Ok(Some(net))) = self.c.config.user_network().map(|n| networks::find(self.ctx, n)) else { return };
        let id = &self.c.config.id;
        let Some(ip) = networks::lease_of(self.ctx, &net, id) else { return };
        networks::update_members_hosts(self.ctx, &net, id, &networks::hosts_line(ip, &self.c), joined);
        if !joined {
            networks::release(self.ctx, &net, id);
        }
    }
}

/// Input beyond this much waiting for the container makes the supervisor
/// stop reading from clients until the container catches up.
const MAX_STDIN_BUF: usize = 1 << 20;

/// Writes what the container's stdin takes now; closes it after an EOF
/// once everything is written, or when the container closed its side.
fn flush_stdin(run: &mut Running) {
    let Some(fd) = &run.stdin else {
        run.stdin_buf.clear();
        return;
    };
    while !run.stdin_buf.is_empty() {
        match nix::unistd::write(fd, &run.stdin_buf) {
            Ok(n) => {
                run.stdin_buf.drain(..n);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return,
            Err(_) => {
                run.stdin_buf.clear();
                run.stdin = None;
                return;
            }
        }
    }
    if run.stdin_eof && run.tty.is_none() {
        run.stdin = None;
    }
}

/// Binds `DIR/attach.sock`, reaching a long DIR through an fd.
fn bind_socket(dir: &Path) -> Result<UnixListener> {
    let d = std::fs::File::open(dir)?;
    let path = format!("/proc/self/fd/{}/attach.sock", d.as_raw_fd());
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The instant `timeout` from now; `None` (no deadline) for no timeout or
/// one too far ahead to represent (`stop -t 9223372036854775807`).
fn deadline_after(timeout: Option<std::time::Duration>) -> Option<std::time::Instant> {
    timeout.and_then(|t| std::time::Instant::now().checked_add(t))
}

/// Sends `sig` to the container's init, if it still is the process we started.
pub fn signal_container(c: &Container, sig: nix::sys::signal::Signal) -> Result<()> {
    let Some(init) = c.state.init.filter(|p| p.alive()) else {
        bail!("container {} is not running", c.config.id);
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init.pid), sig)
        .with_context(|| format!("sending {sig} to the container"))
}

/// Waits until the supervisor of `c` has exited (it records the exit status
/// first), or until `timeout` passed. Returns whether it exited.
pub fn wait_supervisor(c: &Container, timeout: Option<std::time::Duration>) -> bool {
    let Some(sup) = c.state.supervisor else { return true };
    let deadline = deadline_after(timeout);
    // pidfd_open gives a pollable handle on a process that is not our child.
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, sup.pid, 0) } as i32;
    if fd >= 0 {
        // SAFETY: fd was just returned by pidfd_open.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        if !sup.alive() {
            return true;
        }
        loop {
            let left = match deadline {
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return false;
                    }
                    PollTimeout::try_from((d - now).as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, left) {
                Ok(n) if n > 0 => return true,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
    }
    // Fallback: poll /proc.
    while sup.alive() {
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Records `action` of container `c` for `events`, with Docker's attributes.
pub fn container_event(ctx: &Context, c: &Container, action: &str, extra: &[(&str, &str)]) {
    let mut attrs: Vec<(&str, &str)> = vec![("image", c.config.image.as_str()), ("name", c.config.name.as_str())];
    attrs.extend_from_slice(extra);
    crate::events::emit(&ctx.layout, "container", action, &c.config.id, &attrs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_container_being_removed_is_not_claimed() {
        let root = std::env::temp_dir().join(format!("strata-claim-test-{}", std::process::id()));
        let ctx = Context::new(Some(root.clone()));
        let mut c = record::test_record(&ctx.layout, "c");
        c.state.status = Status::Removing;
        record::save_state(&c).unwrap();
        let err = claim(&ctx, &c.config.id).expect_err("claimed a container being removed");
        assert_eq!(err.to_string(), "container is marked for removal and cannot be started");
        let after = record::read_dir_record(&c.dir).unwrap();
        assert_eq!((after.state.status, after.state.supervisor), (Status::Removing, None));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_timeout_too_far_ahead_means_no_deadline() {
        // `stop -t 9223372036854775807`
        assert_eq!(deadline_after(Some(Duration::from_secs(i64::MAX as u64))), None);
        assert_eq!(deadline_after(Some(Duration::MAX)), None);
        assert_eq!(deadline_after(None), None);
        let before = Instant::now();
        let d = deadline_after(Some(Duration::from_secs(10))).expect("a deadline");
        assert!(d >= before + Duration::from_secs(10));
    }
}
