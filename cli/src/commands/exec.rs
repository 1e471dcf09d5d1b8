//! `strata exec [-i] [-t] [-d] [-e] [-u] [-w] CONTAINER COMMAND...`: runs a
//! process in a running container through the runner (which joins the
//! container's namespaces through its init's pidfd). The exec'd process is
//! our child: without `-d` we wait for it and exit with its status; with
//! `-t` we relay a pseudo-terminal between it and ours.

use crate::containers::record;
use crate::context::Context;
use crate::exit;
use anyhow::{Context as _, Result};
use clap::Args;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Detached mode: run command in the background
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    tty: bool,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file", value_name = "list")]
    env_file: Vec<std::path::PathBuf>,
    /// Username or UID (format: "<name|uid>[:<group|gid>]")
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// Give extended privileges to the command
    #[arg(long)]
    privileged: bool,
    container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn exec(ctx: &Context, a: ExecArgs) -> Result<i32> {
    if !a.detach {
        crate::commands::run::refuse_tty_without_terminal(a.interactive, a.tty)?;
    }
    let c = match record::find_fresh(&ctx.layout, &a.container) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error response from daemon: {e:#}");
            return Err(exit::with_code(1, None));
        }
    };
    let init = match c.state.init.filter(|p| c.running() && p.alive()) {
        Some(p) => p,
        None => {
            eprintln!("Error response from daemon: container {} is not running", c.config.id);
            return Err(exit::with_code(1, None));
        }
    };
    if crate::commands::container::is_paused(&c) {
        eprintln!("Error response from daemon: Container {} is paused, unpause the container before exec", c.config.id);
        return Err(exit::with_code(1, None));
    }
    let cfg = &c.config;
    if ctx.rootless {
        // A rootless container's filesystem is a FUSE mount made inside its
        // user namespace, which the kernel only lets processes of that
        // namespace use: join it first (we own it, and are single-threaded).
        let ns = std::fs::File::open(format!("/proc/{}/ns/user", init.pid))
            .context("opening the container's user namespace")?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWUSER)
            .context("joining the container's user namespace")?;
    }
    // --env-file lines first: -e wins over them.
    let mut env_args = Vec::new();
    for f in &a.env_file {
        env_args.extend(crate::commands::run::read_env_file(f)?);
    }
    env_args.extend(a.env.iter().cloned());
    let spec =
        match exec_spec(&c, init.pid, &a.command, a.user.as_deref(), &env_args, a.workdir.clone(), a.tty, a.privileged)
        {
            Ok(spec) => spec,
            Err(e) if e.downcast_ref::<strata_runner::RunnerError>().is_some() => {
                eprintln!("Error response from daemon: {e}");
                return Err(exit::with_code(126, None));
            }
            Err(e) => return Err(e),
        };
    let devnull = || -> Result<OwnedFd> { Ok(std::fs::File::open("/dev/null")?.into()) };
    let stdio = if a.detach {
        let null_out = || -> Result<OwnedFd> { Ok(std::fs::OpenOptions::new().write(true).open("/dev/null")?.into()) };
        strata_runner::Stdio { stdin: Some(devnull()?), stdout: Some(null_out()?), stderr: Some(null_out()?) }
    } else if a.interactive {
        strata_runner::Stdio::default()
    } else {
        strata_runner::Stdio { stdin: Some(devnull()?), stdout: None, stderr: None }
    };
    // The exec'd process counts against the container's limits. (Unreadable
    // cgroups mean that the init is gone: the exec below says so.) Not
    // rootless: moving a process between delegated cgroups takes write
    // access to their common ancestor, which an exec from another login
    // session lacks; there it stays in the caller's cgroup.
    let cgroup =
        if ctx.rootless { None } else { strata_runner::Cgroup::of_container(init.pid, &cfg.id).ok().flatten() };
    let mut process = match strata_runner::exec(init.pid, &spec, stdio, cgroup.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("OCI runtime exec failed: {e}");
            return Err(exit::with_code(if code == exit::STRATA_ERROR { exit::CANNOT_EXECUTE } else { code }, None));
        }
    };
    let command = a.command.join(" ");
    crate::containers::supervisor::container_event(ctx, &c, &format!("exec_start: {command}"), &[]);
    if a.detach {
        return Ok(0);
    }
    let code = match process.take_pty_master() {
        Some(master) => relay_pty(master, &mut process, a.interactive),
        None => process.wait().context("waiting for the exec'd process"),
    }?;
    crate::containers::supervisor::container_event(ctx, &c, "exec_die", &[("exitCode", &code.to_string())]);
    Ok(code)
}

/// What a process started in container `c` (whose init is `pid`) runs as,
/// as `docker exec` sets it: the container's user (or `user`), environment
/// (plus `env`, `KEY` alone taken from ours), working directory (or
/// `workdir`), capabilities, no-new-privileges and ulimits. Also used for
/// health checks.
#[allow(clippy::too_many_arguments)]
pub fn exec_spec(
    c: &crate::containers::record::Container,
    pid: i32,
    command: &[String],
    user: Option<&str>,
    env_args: &[String],
    workdir: Option<String>,
    tty: bool,
    privileged: bool,
) -> Result<strata_runner::ExecSpec> {
    let cfg = &c.config;
    // The container's root as its init sees it (also for a rootless
    // container whose mount only exists in its supervisor's namespace).
    let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    let user = strata_runner::resolve_user(&root, user.unwrap_or(&cfg.user))?;
    let mut spec = strata_runner::ExecSpec::new(command.to_vec());
    let mut env = cfg.env.clone();
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", cfg.hostname));
    }
    if tty {
        env.push("TERM=xterm".into());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    for e in env_args {
        let entry = if e.contains('=') {
            e.clone()
        } else {
            match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            }
        };
        let key = entry.split('=').next().unwrap_or("").to_string();
        env.retain(|x| x.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }
    spec.env = env;
    spec.cwd = workdir.unwrap_or_else(|| cfg.working_dir.clone());
    spec.user = user.user;
    spec.tty = tty;
    spec.capabilities = if cfg.request.privileged || privileged {
        strata_runner::Cap::all()
    } else {
        let (add, add_all) = crate::containers::spec::parse_caps(&cfg.request.cap_add)?;
        let (drop, drop_all) = crate::containers::spec::parse_caps(&cfg.request.cap_drop)?;
        strata_runner::Cap::adjusted(strata_runner::DEFAULT_CAPS, &add, &drop, add_all, drop_all)
    };
    spec.no_new_privileges =
        cfg.request.security_opt.iter().any(|o| o.starts_with("no-new-privileges") && !o.ends_with("false"));
    spec.seccomp = crate::containers::spec::seccomp_profile(cfg)?;
    spec.oom_score_adj = cfg.request.oom_score_adj;
    // The container's `--ulimit`s hold for every process in it, as with runc.
    spec.rlimits =
        cfg.request.ulimit.iter().map(|u| crate::containers::spec::parse_ulimit(u)).collect::<Result<_>>()?;
    Ok(spec)
}

/// Relays our terminal to `master` until the process exits.
fn relay_pty(master: OwnedFd, process: &mut strata_runner::Process, stdin: bool) -> Result<i32> {
    use crate::containers::attach::window_size;
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGWINCH);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    let set_size = |fd: i32| {
        if let Some((rows, cols)) = window_size(0) {
            let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
            // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
            unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
        }
    };
    set_size(master.as_raw_fd());
    let raw_fd = master.as_raw_fd();
    std::thread::spawn(move || loop {
        if set.wait().is_err() {
            return;
        }
        set_size(raw_fd);
    });
    let saved = nix::sys::termios::tcgetattr(std::io::stdin().as_fd()).ok();
    if let (Some(s), true) = (&saved, stdin) {
        let mut raw = s.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ = nix::sys::termios::tcsetattr(std::io::stdin().as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw);
    }
    if stdin {
        let m = master.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match nix::unistd::read(std::io::stdin().as_fd(), &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if nix::unistd::write(&m, &buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut buf = [0u8; 32 * 1024];
    loop {
        match nix::unistd::read(master.as_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                use std::io::Write;
                let mut out = std::io::stdout();
                let _ = out.write_all(&buf[..n]).and_then(|_| out.flush());
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if let (Some(s), true) = (&saved, stdin) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin().as_fd(), nix::sys::termios::SetArg::TCSANOW, s);
    }
    Ok(process.wait()?)
}
