//! From a container record to what the runner and the filesystem need: the
//! union mount of the image layers with the container's `upper/`, and the
//! runner's [`Spec`] (command, environment, user, mounts, capabilities,
//! limits, network, /etc files).

use crate::containers::networks;
use crate::containers::record::{Container, Proc};
use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use std::os::fd::AsFd;
use strata_runner::spec::{
    CgroupLimits, CgroupSpec, EtcFiles, IdMapping, Mount, MountKind, Network, PortForward, Protocol, Rlimit, Spec,
};
use strata_runner::Cap;

/// Mounts the container's union filesystem on `rootfs/`, served by this
/// process until the handle is dropped.
pub fn mount_rootfs(ctx: &Context, c: &Container) -> Result<strata_fs::MountHandle> {
    let lowers = crate::lazy::container_lowers(&ctx.layout, &c.dir, &c.config.layers)?;
    crate::lazy::complete_in_background(&lowers);
    let opts = strata_fs::MountOptions {
        upper: Some(c.upper()),
        fsname: format!("strata:{}", &c.config.id[..12]),
        // Container processes run as many uids; set-id programs work as in Docker.
        allow_other: true,
        suid: true,
        ..Default::default()
    };
    Ok(strata_fs::mount(lowers, &c.rootfs(), opts)?)
}

pub struct SpecBuilder<'a> {
    ctx: &'a Context,
    c: &'a Container,
    /// RLIMIT_NOFILE for the container when --ulimit does not set it.
    fd_limit: Option<rustix::process::Rlimit>,
    /// [`Self::user_network`], looked up (and its holder started) once.
    user_network: std::cell::OnceCell<Option<(networks::Network, Proc)>>,
}

impl<'a> SpecBuilder<'a> {
    pub fn new(ctx: &'a Context, c: &'a Container) -> Result<Self> {
        Ok(SpecBuilder { ctx, c, fd_limit: None, user_network: std::cell::OnceCell::new() })
    }

    /// The container's RLIMIT_NOFILE unless --ulimit nofile sets one: the
    /// one its caller had (the serving process raises its own).
    pub fn with_fd_limit(mut self, limit: rustix::process::Rlimit) -> Self {
        self.fd_limit = Some(limit);
        self
    }

    /// Rootless: creates the container's user namespace (full subordinate
    /// range when /etc/subuid grants one) and a mount namespace, and moves
    /// this process into them, so that the union mount made next belongs
    /// to that namespace. As root: nothing to do.
    ///
    /// A container that shares another's network namespace joins that
    /// container's user namespace instead (the kernel lets only a process
    /// with CAP_SYS_ADMIN in the namespace's owner join it; Docker and
    /// Podman share the user namespace for this too).
    pub fn enter_user_namespace(&self) -> Result<()> {
        if !self.ctx.rootless {
            return Ok(());
        }
        if let Some(donor) = self.network_donor()?.or(self.pid_donor()?).or(self.ipc_donor()?) {
            return join_user_namespace(donor.pid);
        }
        if let Some((_, holder)) = self.user_network()? {
            return join_user_namespace(holder.pid);
        }
        let (mapping, note) = strata_runner::rootless_mapping();
        if let Some(n) = note {
            eprintln!("WARNING: {n}");
        }
        enter_user_namespace(&mapping).context("entering the container's user namespace")
    }

    /// The running init of the container whose network this one shares
    /// (`--network container:ID`), if it does, unless that network is the
    /// host's (then this container is simply on the host's network too).
    fn network_donor(&self) -> Result<Option<Proc>> {
        let Some(id) = self.c.config.network.strip_prefix("container:") else { return Ok(None) };
        let (donor, init) = self.running_donor(id, "network")?;
        // (A chain of such containers ends at one with a network of its own.)
        let mut network = donor.config.network;
        for _ in 0..16 {
            match network.strip_prefix("container:") {
                Some(next) => network = self.donor(next, "network")?.config.network,
                None => break,
            }
        }
        Ok((network != "host").then_some(init))
    }

    /// The user-defined network the container is on, with its holder
    /// (started if need be: see `networks`).
    fn user_network(&self) -> Result<Option<(networks::Network, Proc)>> {
        if let Some(found) = self.user_network.get() {
            return Ok(found.clone());
        }
        let found = match self.c.config.user_network() {
            None => None,
            Some(name) => {
                let net = networks::find(self.ctx, name)?.ok_or_else(|| {
                    anyhow::anyhow!("network {name} not found: it was removed; connect the container to another")
                })?;
                let holder = networks::ensure_holder(self.ctx, &net)?;
                Some((net, holder))
            }
        };
        Ok(self.user_network.get_or_init(|| found).clone())
    }

    /// The running init of the container whose pid namespace this one
    /// shares (`--pid container:ID`), if it does.
    fn pid_donor(&self) -> Result<Option<Proc>> {
        let Some(id) = self.c.config.request.pid.as_deref().and_then(|p| p.strip_prefix("container:")) else {
            return Ok(None);
        };
        Ok(Some(self.running_donor(id, "PID namespace")?.1))
    }

    /// The running init of the container whose IPC namespace (and
    /// /dev/shm) this one shares (`--ipc container:ID`), if it does.
    fn ipc_donor(&self) -> Result<Option<Proc>> {
        let Some(id) = self.c.config.request.ipc.as_deref().and_then(|p| p.strip_prefix("container:")) else {
            return Ok(None);
        };
        Ok(Some(self.running_donor(id, "IPC namespace")?.1))
    }

    fn donor(&self, id: &str, what: &str) -> Result<Container> {
        crate::containers::record::find_fresh(&self.ctx.layout, id)
            .with_context(|| format!("the container whose {what} {} shares", self.c.config.name))
    }

    fn running_donor(&self, id: &str, what: &str) -> Result<(Container, Proc)> {
        let donor = self.donor(id, what)?;
        match donor.state.init.filter(|p| donor.running() && p.alive()) {
            Some(init) => Ok((donor, init)),
            None => bail!("cannot join {what} of a non running container: {id}"),
        }
    }

    pub fn build(&self) -> Result<Spec> {
        let cfg = &self.c.config;
        let req = &cfg.request;
        let rootfs = self.c.rootfs();
        let mut argv = vec![cfg.path.clone()];
        argv.extend(cfg.args.iter().cloned());
        let mut spec = Spec::new(&rootfs, argv);
        let mut env = cfg.env.clone();
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.insert(1.min(env.len()), format!("HOSTNAME={}", cfg.hostname));
        }
        if req.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        spec.env = env;
        spec.cwd = cfg.working_dir.clone();
        let user = strata_runner::resolve_user(&rootfs, &cfg.user)?;
        spec.user = user.user;
        for gid in strata_runner::resolve_groups(&rootfs, &cfg.request.group_add)? {
            if !spec.user.additional_gids.contains(&gid) {
                spec.user.additional_gids.push(gid);
            }
        }
        if !spec.env.iter().any(|e| e.starts_with("HOME=")) {
            spec.env.push(format!("HOME={}", user.home));
        }
        spec.hostname = cfg.hostname.clone();
        spec.domainname = req.domainname.clone().unwrap_or_default();
        spec.oom_score_adj = req.oom_score_adj;
        let host = |v: &Option<String>| v.as_deref() == Some("host");
        spec.namespaces.pid = !host(&req.pid);
        spec.namespaces.pid_of = self.pid_donor()?.map(|p| p.pid);
        spec.namespaces.ipc = !host(&req.ipc);
        spec.namespaces.ipc_of = self.ipc_donor()?.map(|p| p.pid);
        spec.namespaces.uts = !host(&req.uts);
        spec.namespaces.cgroup = req.cgroupns.as_deref() == Some("private");
        if host(&req.uts) {
            spec.hostname.clear();
        }
        // Already inside the user namespace (rootless) or real root: the
        // runner creates no further user namespace.
        spec.id_mapping = IdMapping::None;
        for m in &cfg.mounts {
            let kind = match m.kind.as_str() {
                "bind" | "volume" => MountKind::Bind { source: m.source.clone().into(), readonly: !m.rw },
                "tmpfs" => MountKind::Tmpfs { options: m.options.clone(), readonly: !m.rw },
                other => bail!("unknown mount type {other}"),
            };
            spec.mounts.push(Mount { target: m.destination.clone(), kind });
        }
        // A device node bound in keeps working (the runner leaves such a
        // bind `dev`).
        for d in &req.device {
            let (source, target, _) = parse_device(d)?;
            let kind = MountKind::Bind { source, readonly: false };
            spec.mounts.push(Mount { target, kind });
        }
        spec.readonly_rootfs = req.read_only;
        // A user network's members ask its name server first.
        // (With `--network container:X`, X's network: the files are X's.)
        let donor = match cfg.network.strip_prefix("container:") {
            Some(id) => crate::containers::record::find(&self.ctx.layout, id).ok(),
            None => None,
        };
        let user_network = donor.as_ref().map_or(cfg.user_network(), |d| d.config.user_network());
        let network_dns = match user_network {
            Some(n) => crate::containers::networks::find(self.ctx, n)?.and_then(|net| net.gateway().ok()),
            None => None,
        };
        spec.etc_files = Some(etc_files(self.c, network_dns));
        let (add, add_all) = parse_caps(&req.cap_add)?;
        let (drop, drop_all) = parse_caps(&req.cap_drop)?;
        if req.privileged {
            // Every capability, whatever --cap-add/--cap-drop say (as in Docker).
            spec.set_privileged();
        } else {
            spec.adjust_capabilities(&add, &drop, add_all, drop_all);
        }
        spec.seccomp = seccomp_profile(cfg)?;
        spec.no_new_privileges = req
            .security_opt
            .iter()
            .any(|o| matches!(o.as_str(), "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"));
        spec.rlimits = req.ulimit.iter().map(|u| parse_ulimit(u)).collect::<Result<_>>()?;
        if let Some(l) = self.fd_limit.as_ref().filter(|_| !spec.rlimits.iter().any(|r| r.name == "nofile")) {
            // None is RLIM_INFINITY.
            let (soft, hard) = (l.current.unwrap_or(u64::MAX), l.maximum.unwrap_or(u64::MAX));
            spec.rlimits.push(Rlimit { name: "nofile".to_string(), soft, hard });
        }
        spec.tty = req.tty;
        spec.sysctls = req.sysctl.iter().map(|s| parse_sysctl(s, req)).collect::<Result<_>>()?;
        spec.shm_size = req.shm_size.as_deref().map(parse_bytes).transpose()?;
        spec.init = req.init;
        let mut limits = CgroupLimits {
            // (-1, "unlimited", is what a new cgroup has anyway.)
            pids: req.resources.pids_limit.filter(|p| *p > 0),
            ..req.resources.limits()?
        };
        req.create_limits.apply(&mut limits)?;
        // Root's containers always get a cgroup of their own (to `pause`
        // them, as with Docker); an ordinary user's only when a limit needs
        // one, since it may have no delegated subtree.
        if !limits.is_empty() || !self.ctx.rootless {
            spec.cgroup = Some(CgroupSpec { name: cfg.id.clone(), limits });
        }
        if let Some(donor) = self.network_donor()? {
            spec.network = Network::Join { pid: donor.pid };
            return Ok(spec);
        }
        spec.network = match cfg.network.as_str() {
            // (Sharing a container's network that is the host's.)
            n if n == "host" || n.starts_with("container:") => Network::Host,
            "none" => Network::None,
            _ => Network::Private {
                ports: cfg
                    .ports
                    .iter()
                    .map(|p| PortForward {
                        host_ip: (!p.host_ip.is_empty()).then(|| p.host_ip.clone()),
                        host_port: p.host_port,
                        container_port: p.container_port,
                        protocol: if p.proto == "udp" { Protocol::Udp } else { Protocol::Tcp },
                    })
                    .collect(),
            },
        };
        if let Some((net, holder)) = self.user_network()? {
            // An internal network's members reach each other only.
            if net.internal {
                spec.network = Network::None;
            }
            let id = &self.c.config.id;
            let ip = networks::lease(self.ctx, &net, id, self.c.config.request.ip.as_deref())?;
            spec.bridge = Some(networks::attachment(&net, &holder, id, ip)?);
            // Its own name at its address, and the running members'.
            if let Some(hosts) = spec.etc_files.as_mut().and_then(|f| f.hosts.as_mut()) {
                hosts.push_str(&networks::hosts_line(ip, self.c));
                for (ip, m) in networks::members(self.ctx, &net, id) {
                    hosts.push_str(&networks::hosts_line(ip, &m));
                }
            }
        }
        Ok(spec)
    }
}

/// The syscall filter of a container's processes (its exec'd ones too):
/// none when privileged or `seccomp=unconfined`, else its own profile
/// (`seccomp=FILE`) or the default, for its capabilities.
pub fn seccomp_profile(
    cfg: &crate::containers::record::ContainerConfig,
) -> Result<Option<strata_runner::seccomp::SeccompProfile>> {
    let req = &cfg.request;
    let unconfined = req.security_opt.iter().any(|o| o == "seccomp=unconfined" || o == "seccomp:unconfined");
    if req.privileged || unconfined {
        return Ok(None);
    }
    let (add, add_all) = parse_caps(&req.cap_add)?;
    let (drop, drop_all) = parse_caps(&req.cap_drop)?;
    let caps = Cap::adjusted(strata_runner::DEFAULT_CAPS, &add, &drop, add_all, drop_all);
    Ok(Some(match &cfg.seccomp_profile {
        Some(json) => strata_runner::seccomp::SeccompProfile::from_docker_json(json.as_bytes(), &caps)
            .map_err(|e| anyhow::anyhow!("the container's seccomp profile: {e}"))?,
        None => strata_runner::seccomp::default_profile(&caps),
    }))
}

/// `--cap-add`/`--cap-drop` values: the capabilities named, and whether `ALL` was among them.
pub(crate) fn parse_caps(list: &[String]) -> Result<(Vec<Cap>, bool)> {
    let mut out = Vec::new();
    let mut all = false;
    for c in list {
        if c.eq_ignore_ascii_case("ALL") {
            all = true;
            continue;
        }
        match Cap::parse(c) {
            Some(cap) => out.push(cap),
            None => bail!("invalid capability: {c}"),
        }
    }
    Ok((out, all))
}

/// Runs `f` where it can touch every file of a container: as root, here;
/// as an ordinary user, in a forked child that enters a user namespace with
/// the containers' id mapping, so that files the container created as other
/// users (subordinate ids on the host) can be read and removed. The result
/// comes back as JSON through a pipe. The caller must be single-threaded (a
/// rootless supervisor, which already is inside such a namespace, runs `f`
/// directly).
pub fn in_user_namespace<T: serde::Serialize + serde::de::DeserializeOwned>(
    ctx: &Context,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if !ctx.rootless || rustix::process::geteuid().is_root() {
        return f();
    }
    use nix::unistd::{fork, ForkResult};
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: strata's commands are single-threaded when they call this, so
    // the child may run ordinary code; it leaves with _exit.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(r);
            let (mapping, _) = strata_runner::rootless_mapping();
            let result = enter_user_namespace(&mapping).and_then(|_| f()).map_err(|e| format!("{e:#}"));
            let data = serde_json::to_vec(&result).unwrap_or_default();
            let mut out = std::fs::File::from(w);
            let ok = std::io::Write::write_all(&mut out, &data).is_ok();
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut data = Vec::new();
            let read = std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut data);
            let _ = nix::sys::wait::waitpid(child, None);
            read.context("reading the result from the user namespace")?;
            let result: std::result::Result<T, String> =
                serde_json::from_slice(&data).context("the user-namespace helper failed")?;
            result.map_err(anyhow::Error::msg)
        }
    }
}

/// Moves this (single-threaded) process into a new user namespace with
/// `mapping` and then into a new mount namespace whose mounts do not
/// propagate anywhere. A mapping with more than our own ids is written by
/// newuidmap/newgidmap, which must run outside the new namespace: a child
/// forked before the unshare does that once we signal it.
pub(crate) fn enter_user_namespace(mapping: &IdMapping) -> Result<()> {
    use nix::sched::{unshare, CloneFlags};
    use nix::unistd::{fork, ForkResult};
    let IdMapping::Map { uids, gids } = mapping else { return Ok(()) };
    let text = |r: &[strata_runner::IdRange]| {
        r.iter().map(|r| format!("{} {} {}\n", r.container, r.host, r.size)).collect::<String>()
    };
    let single = uids.len() == 1 && gids.len() == 1;
    if single {
        unshare(CloneFlags::CLONE_NEWUSER).context("unshare(CLONE_NEWUSER)")?;
        std::fs::write("/proc/self/setgroups", "deny").context("writing setgroups")?;
        std::fs::write("/proc/self/uid_map", text(uids)).context("writing uid_map")?;
        std::fs::write("/proc/self/gid_map", text(gids)).context("writing gid_map")?;
    } else {
        let parent = std::process::id();
        let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: we are single-threaded here (the supervisor has started no
        // threads yet), so the child may run ordinary code.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                drop(go_w);
                drop(done_r);
                let mut b = [0u8; 1];
                let _ = nix::unistd::read(go_r.as_fd(), &mut b);
                let run = |prog: &str, ranges: &[strata_runner::IdRange]| -> std::result::Result<(), String> {
                    let mut cmd = std::process::Command::new(prog);
                    cmd.arg(parent.to_string());
                    for r in ranges {
                        cmd.args([r.container.to_string(), r.host.to_string(), r.size.to_string()]);
                    }
                    let out = cmd.stdin(std::process::Stdio::null()).output().map_err(|e| format!("{prog}: {e}"))?;
                    if out.status.success() {
                        Ok(())
                    } else {
                        Err(format!("{prog} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
                    }
                };
                let msg = match run("newuidmap", uids).and_then(|_| run("newgidmap", gids)) {
                    Ok(()) => String::new(),
                    Err(e) => e,
                };
                let _ = nix::unistd::write(&done_w, if msg.is_empty() { b"+" } else { msg.as_bytes() });
                // SAFETY: leave the forked child without running the parent's destructors.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(go_r);
                drop(done_w);
                let r = unshare(CloneFlags::CLONE_NEWUSER);
                let _ = nix::unistd::write(&go_w, b"g");
                drop(go_w);
                let mut answer = Vec::new();
                let mut f = std::fs::File::from(done_r);
                let _ = std::io::Read::read_to_end(&mut f, &mut answer);
                let _ = nix::sys::wait::waitpid(child, None);
                r.context("unshare(CLONE_NEWUSER)")?;
                if answer != b"+" {
                    bail!("{}; check /etc/subuid and /etc/subgid", String::from_utf8_lossy(&answer));
                }
            }
        }
    }
    own_mount_namespace()
}

/// Moves this (single-threaded) process into the user namespace of `pid`
/// and a mount namespace of its own, as [`enter_user_namespace`] does with
/// a new one.
fn join_user_namespace(pid: i32) -> Result<()> {
    use nix::sched::{setns, CloneFlags};
    let ns = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let theirs = format!("/proc/{pid}/ns/user");
    if ns(&theirs).context("the other container's user namespace")? != ns("/proc/self/ns/user")? {
        let f = std::fs::File::open(&theirs).context("opening the other container's user namespace")?;
        setns(f, CloneFlags::CLONE_NEWUSER).context("joining the other container's user namespace")?;
    }
    own_mount_namespace()
}

/// A mount namespace of this process's own, in which mounts made now reach
/// no other namespace.
fn own_mount_namespace() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .context("making mounts private")?;
    Ok(())
}

/// `--ulimit nofile=1024:2048` (a single value sets both).
pub(crate) fn parse_ulimit(s: &str) -> Result<Rlimit> {
    let (name, vals) = s.split_once('=').with_context(|| format!("invalid ulimit argument: {s}"))?;
    let (soft, hard) = vals.split_once(':').unwrap_or((vals, vals));
    let num = |v: &str| -> Result<u64> {
        if v == "-1" || v == "unlimited" {
            return Ok(u64::MAX);
        }
        v.parse().with_context(|| format!("invalid ulimit argument: {s}"))
    };
    let (soft, hard) = (num(soft)?, num(hard)?);
    if soft > hard {
        bail!("ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}");
    }
    Ok(Rlimit { name: name.to_string(), soft, hard })
}

/// `512m`, `1g`, `100000` (bytes), as Docker's RAMInBytes (binary units).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.parse().with_context(|| format!("invalid size: '{s}'"))?;
    if n < 0.0 {
        bail!("invalid size: '{s}'");
    }
    Ok((n * mult as f64) as u64)
}

/// `--memory-swap`: bytes, or -1 for unlimited swap.
pub fn parse_swap(s: &str) -> Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    Ok(i64::try_from(parse_bytes(s)?)?)
}

/// `--sysctl KEY=VALUE`: only parameters of the container's own
/// namespaces (Docker's list), and none of a namespace it shares with the
/// host.
pub fn parse_sysctl(spec: &str, req: &crate::commands::run::CreateArgs) -> Result<(String, String)> {
    let (key, value) = spec.split_once('=').with_context(|| format!("sysctl {spec:?} is not in KEY=VALUE form"))?;
    let ipc = matches!(
        key,
        "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
            | "kernel.sem"
            | "kernel.shmall"
            | "kernel.shmmax"
            | "kernel.shmmni"
            | "kernel.shm_rmid_forced"
    ) || key.starts_with("fs.mqueue.");
    if key.starts_with("net.") {
        if req.network.as_deref() == Some("host") {
            bail!("sysctl {key:?} is not allowed with --network host: it would change the host's");
        }
        if req.network.as_deref().is_some_and(|n| n.starts_with("container:")) {
            bail!("sysctl {key:?} is not allowed with --network container: it would change the other container's");
        }
    } else if ipc {
        if req.ipc.as_deref() == Some("host") {
            bail!("sysctl {key:?} is not allowed with --ipc host: it would change the host's");
        }
    } else {
        bail!("sysctl {key:?} is not namespaced: only net.*, kernel IPC parameters and fs.mqueue.* can be set");
    }
    if key.split('.').any(|p| p.is_empty() || p == "..") || key.contains('/') {
        bail!("invalid sysctl name {key:?}");
    }
    Ok((key.to_string(), value.to_string()))
}

/// `--device HOST[:CONTAINER[:PERMISSIONS]]`: the host device node, where
/// it goes (the same path by default) and `rwm`-style permissions.
pub fn parse_device(spec: &str) -> Result<(std::path::PathBuf, String, String)> {
    use std::os::unix::fs::FileTypeExt;
    let mut parts = spec.split(':');
    let host = parts.next().unwrap_or_default();
    let (target, perms) = match (parts.next(), parts.next()) {
        (Some(p), None) if !p.starts_with('/') => (host, p),
        (Some(t), p) => (t, p.unwrap_or("rwm")),
        (None, _) => (host, "rwm"),
    };
    if parts.next().is_some() || !host.starts_with('/') || !target.starts_with('/') {
        bail!("invalid device specification {spec:?}: expected HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]]");
    }
    if perms.is_empty() || !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        bail!("invalid device permissions {perms:?} in {spec:?}: use a combination of r, w and m");
    }
    // A read-only mount does not stop writes to a device node; only a
    // device cgroup would, and strata sets none up.
    if !perms.contains('r') || !perms.contains('w') {
        bail!("device permissions {perms:?} in {spec:?} cannot be enforced without a device cgroup: give rw (or rwm)");
    }
    let meta = std::fs::metadata(host).with_context(|| format!("error gathering device information for {host}"))?;
    if !(meta.file_type().is_char_device() || meta.file_type().is_block_device()) {
        bail!("{host} is not a device node");
    }
    Ok((host.into(), target.to_string(), perms.to_string()))
}

/// What `--add-host NAME:host-gateway` names: an address of the container's
/// that reaches the host. pasta gives the container the host's default
/// gateway as its own and answers connections to it from the host, its
/// loopback included; on the host's network that is 127.0.0.1.
fn host_gateway(cfg: &crate::containers::record::ContainerConfig) -> String {
    if !cfg.uses_pasta() {
        return "127.0.0.1".into();
    }
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    default_gateway(&routes).map_or_else(|| "127.0.0.1".into(), |ip| ip.to_string())
}

/// The IPv4 default gateway of a `/proc/net/route` table (hex, host byte order).
fn default_gateway(routes: &str) -> Option<std::net::Ipv4Addr> {
    routes.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (destination, gateway, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
        if *destination != "00000000" || *mask != "00000000" || *gateway == "00000000" {
            return None;
        }
        let raw = u32::from_str_radix(gateway, 16).ok()?;
        Some(std::net::Ipv4Addr::from(raw.to_le_bytes()))
    })
}

/// /etc/hosts, /etc/hostname and /etc/resolv.conf for the container.
/// `network_dns`: the name server of the container's user network, listed first.
pub fn etc_files(c: &Container, network_dns: Option<std::net::Ipv4Addr>) -> EtcFiles {
    let cfg = &c.config;
    // Sharing another container's network: its files (as in Docker).
    if let Some(id) = cfg.network.strip_prefix("container:") {
        if let Some(donor) = c.dir.parent().and_then(|d| crate::containers::record::read_dir_record(&d.join(id))) {
            return EtcFiles { dir: c.dir.clone(), ..etc_files(&donor, network_dns) };
        }
    }
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for h in &cfg.request.add_host {
        if let Some((name, ip)) = h.split_once(':').or_else(|| h.split_once('=')) {
            let ip = if ip == "host-gateway" { host_gateway(cfg) } else { ip.to_string() };
            hosts.push_str(&format!("{ip}\t{name}\n"));
        }
    }
    hosts.push_str(&format!("127.0.1.1\t{}\n", cfg.hostname));
    let resolv = if !cfg.request.dns.is_empty() {
        cfg.request.dns.iter().map(|d| format!("nameserver {d}\n")).collect::<String>()
    } else {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        // The host's loopback resolvers are unreachable from a private network.
        let mut out: String = host
            .lines()
            .filter(|l| {
                let mut w = l.split_whitespace();
                let is_loopback_ns =
                    w.next() == Some("nameserver") && w.next().is_some_and(|a| a.starts_with("127.") || a == "::1");
                !(cfg.uses_pasta() && is_loopback_ns)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if !out.contains("nameserver") && cfg.network != "host" {
            out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        }
        out
    };
    let mut resolv = match network_dns {
        Some(ip) => format!("nameserver {ip}\n{resolv}"),
        None => resolv,
    };
    // --dns-search and --dns-option replace the host's lines of their kind.
    let req = &cfg.request;
    if !req.dns_search.is_empty() {
        resolv = resolv.lines().filter(|l| !l.starts_with("search ")).map(|l| format!("{l}\n")).collect();
        resolv.push_str(&format!("search {}\n", req.dns_search.join(" ")));
    }
    if !req.dns_option.is_empty() {
        resolv = resolv.lines().filter(|l| !l.starts_with("options ")).map(|l| format!("{l}\n")).collect();
        resolv.push_str(&format!("options {}\n", req.dns_option.join(" ")));
    }
    EtcFiles {
        dir: c.dir.clone(),
        hosts: Some(hosts),
        hostname: Some(format!("{}\n", cfg.hostname)),
        resolv_conf: Some(resolv),
    }
}

/// Checks the create-time flags that only the spec builder interprets.
pub fn validate(req: &crate::commands::run::CreateArgs) -> Result<()> {
    parse_caps(&req.cap_add)?;
    parse_caps(&req.cap_drop)?;
    for u in &req.ulimit {
        parse_ulimit(u)?;
    }
    req.resources.limits()?;
    req.create_limits.throttles()?;
    Ok(())
}

/// Docker's checks of `--cpuset-cpus` and `--cpuset-mems`: the list's
/// syntax, and that what it names is there (online CPUs, memory nodes).
pub fn check_cpuset(cpus: Option<&str>, mems: Option<&str>) -> Result<()> {
    for (list, what, online, label) in [
        (cpus, "cpus", "/sys/devices/system/cpu/online", "CPUs"),
        (mems, "mems", "/sys/devices/system/node/online", "memory nodes"),
    ] {
        let Some(list) = list else { continue };
        let asked = strata_runner::parse_id_list(list)
            .map_err(|_| anyhow::anyhow!("Invalid value {list} for cpuset {what}"))?;
        // (A kernel without NUMA has node 0 alone.)
        let available = std::fs::read_to_string(online).unwrap_or_else(|_| "0".into());
        let there = strata_runner::parse_id_list(&available).unwrap_or_default();
        if asked.iter().any(|id| !there.contains(id)) {
            bail!("Requested {label} are not available - requested {list}, available: {}", available.trim());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("x").is_err());
    }

    #[test]
    fn the_default_gateway_of_a_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_gateway(table), Some(std::net::Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(default_gateway("Iface\n"), None);
    }

    #[test]
    fn ulimits() {
        assert_eq!(parse_ulimit("nofile=10:20").unwrap(), Rlimit { name: "nofile".into(), soft: 10, hard: 20 });
        assert!(parse_ulimit("nofile=30:20").is_err());
    }
}
