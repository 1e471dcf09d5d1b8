//! User-defined networks (`network create NAME`): containers on one reach
//! each other by name and address over a bridge.
//!
//! A network is a bridge in a network namespace of its own, held by a
//! process that does nothing else (`strata internal-network-holder NAME`,
//! started when a member first needs it, stopped by `network rm`). A
//! container on the network gets a second interface, `eth1`: a veth whose
//! other end is on that bridge, with an address of the network's subnet
//! leased for as long as it runs. Its /etc/hosts names the running
//! members, and theirs gain it (written in place: they are bind-mounted).
//! Outbound traffic and published ports go through the container's own
//! pasta, as on the default network, so nothing on the host changes: no
//! bridge, no NAT rule (Docker routes a user network out through NAT on
//! the host; to the container the outcome is the same).
//!
//! The holder leaves once the network has had no running member for a
//! while (`STRATA_NETWORK_IDLE` seconds, default 60): nothing of strata
//! runs when no container does. The next member starts a new one.
//!
//! The holder also answers DNS on the bridge's address with the members'
//! addresses (`dns`); members list it as their first nameserver.
//!
//! For an ordinary user the holder's namespaces belong to a user namespace
//! it makes (with the subordinate id mapping every container gets), and
//! members join that user namespace instead of making their own: only
//! root of the user namespace that owns both network namespaces may put
//! one end of a veth in each.

use crate::containers::record::{self, Container, Proc};
use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;

/// The bridge in a network's namespace.
pub const BRIDGE: &str = "br0";
/// The container's interface on the network.
pub const INTERFACE: &str = "eth1";
/// Names `--network` takes for the built-in networks.
pub const BUILTIN: [&str; 5] = ["bridge", "host", "none", "private", "default"];

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Network {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Created")]
    pub created: String,
    /// `A.B.C.D/PREFIX`
    #[serde(rename = "Subnet")]
    pub subnet: String,
    #[serde(rename = "Labels", default)]
    pub labels: BTreeMap<String, String>,
    /// `--internal`: members get no link outside (no pasta, no ports).
    #[serde(rename = "Internal", default)]
    pub internal: bool,
    /// `--gateway`: the bridge's address, when not the subnet's first.
    #[serde(rename = "Gateway", default, skip_serializing_if = "Option::is_none")]
    pub custom_gateway: Option<Ipv4Addr>,
}

impl Network {
    /// The subnet's base address and prefix length.
    pub fn range(&self) -> Result<(u32, u8)> {
        parse_subnet(&self.subnet)
    }
    /// The bridge's address: the subnet's first.
    pub fn gateway(&self) -> Result<Ipv4Addr> {
        match self.custom_gateway {
            Some(g) => Ok(g),
            None => Ok(Ipv4Addr::from(self.range()?.0 + 1)),
        }
    }

    /// The addresses members may have: the subnet's, but for its own
    /// address, its broadcast address and the gateway's.
    fn member_addresses(&self) -> Result<impl Iterator<Item = Ipv4Addr>> {
        let (base, len) = self.range()?;
        let last = base | (u32::MAX >> len);
        let gateway = self.gateway()?;
        Ok((base + 1..last).map(Ipv4Addr::from).filter(move |ip| *ip != gateway))
    }
    fn dir(&self, ctx: &Context) -> PathBuf {
        dir_of(ctx, &self.name)
    }
}

fn dir_of(ctx: &Context, name: &str) -> PathBuf {
    ctx.layout.root().join("networks").join(name)
}

/// `A.B.C.D/N` with 8 <= N <= 29, the host bits zero.
pub fn parse_subnet(s: &str) -> Result<(u32, u8)> {
    let bad = || anyhow::anyhow!("invalid subnet {s:?}: give an IPv4 network such as 10.90.0.0/24");
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=29).contains(&len) {
        bail!("invalid subnet {s:?}: the prefix length must be between 8 and 29");
    }
    let base = u32::from(addr);
    if base & (u32::MAX >> len) != 0 {
        bail!("invalid subnet {s:?}: the address has host bits set");
    }
    Ok((base, len))
}

/// Every user-defined network, by name.
pub fn list(ctx: &Context) -> Result<Vec<Network>> {
    let dir = ctx.layout.root().join("networks");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in entries {
        let path = e?.path().join("network.json");
        if let Ok(bytes) = std::fs::read(&path) {
            out.push(serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?);
        }
    }
    out.sort_by(|a: &Network, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The network named `key`, or whose id starts with it.
pub fn find(ctx: &Context, key: &str) -> Result<Option<Network>> {
    let all = list(ctx)?;
    if let Some(n) = all.iter().find(|n| n.name == key) {
        return Ok(Some(n.clone()));
    }
    let by_id: Vec<&Network> = all.iter().filter(|n| !key.is_empty() && n.id.starts_with(key)).collect();
    match by_id.as_slice() {
        [n] => Ok(Some((*n).clone())),
        [] => Ok(None),
        _ => bail!("network {key} is ambiguous ({} matches)", by_id.len()),
    }
}

/// `network create`: records a network (its holder starts with the first
/// member). Without `subnet` the first free 10.89.N.0/24.
pub fn create(
    ctx: &Context,
    name: &str,
    subnet: Option<&str>,
    gateway: Option<&str>,
    labels: BTreeMap<String, String>,
    internal: bool,
) -> Result<Network> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid {
        bail!("invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
    }
    if BUILTIN.contains(&name) {
        bail!("{name} is a pre-defined network and cannot be created");
    }
    let _lock = record::lock(&ctx.layout)?;
    let existing = list(ctx)?;
    if existing.iter().any(|n| n.name == name) {
        bail!("network with name {name} already exists");
    }
    let taken: Vec<(u32, u8)> = existing.iter().filter_map(|n| n.range().ok()).collect();
    let overlaps = |(b, l): (u32, u8)| {
        taken.iter().any(|&(tb, tl)| {
            let m = u32::MAX << (32 - l.min(tl));
            b & m == tb & m
        })
    };
    let subnet = match subnet {
        Some(s) => {
            let r = parse_subnet(s)?;
            if overlaps(r) {
                bail!("invalid pool request: Pool overlaps with other one on this address space");
            }
            s.to_string()
        }
        None => (1..=254u32)
            .map(|n| (u32::from(Ipv4Addr::new(10, 89, 0, 0)) | (n << 8), 24u8))
            .find(|r| !overlaps(*r))
            .map(|(b, l)| format!("{}/{l}", Ipv4Addr::from(b)))
            .ok_or_else(|| anyhow::anyhow!("no free subnet left in 10.89.0.0/16: give one with --subnet"))?,
    };
    let custom_gateway = match gateway {
        None => None,
        Some(g) => {
            let ip: Ipv4Addr = g.parse().map_err(|_| anyhow::anyhow!("invalid gateway address {g:?}"))?;
            let (base, len) = parse_subnet(&subnet)?;
            let last = base | (u32::MAX >> len);
            let a = u32::from(ip);
            if a & (u32::MAX << (32 - len)) != base || a == base || a == last {
                bail!("no matching subnet for gateway {g}: it must be an address of {subnet} (not its first or last)");
            }
            Some(ip)
        }
    };
    let net = Network {
        name: name.to_string(),
        id: record::new_id(),
        created: record::now(),
        subnet,
        labels,
        internal,
        custom_gateway,
    };
    let dir = net.dir(ctx);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    record::write_json(&dir.join("network.json"), &net)?;
    crate::events::emit(&ctx.layout, "network", "create", &net.id, &[("name", &net.name), ("type", "bridge")]);
    Ok(net)
}

/// The containers (any state) that name the network.
pub fn users(ctx: &Context, net: &Network) -> Result<Vec<Container>> {
    Ok(record::list_fresh(&ctx.layout)?.into_iter().filter(|c| c.config.network == net.name).collect())
}

/// `network rm`: refused while a member runs; stops the holder.
pub fn remove(ctx: &Context, net: &Network) -> Result<()> {
    // (The holder's lock: a member starting now waits, then finds no
    // network. Not the records lock, which refreshing records may take.)
    let _lock = crate::lockfile::lock_exclusive(&net.dir(ctx).join("holder.lock"))?;
    let running: Vec<String> = users(ctx, net)?.into_iter().filter(|c| c.running()).map(|c| c.config.name).collect();
    if !running.is_empty() {
        bail!(
            "error while removing network: network {} id {} has active endpoints ({})",
            net.name,
            net.id,
            running.join(", ")
        );
    }
    if let Some(h) = holder(ctx, net).filter(Proc::alive) {
        // SAFETY: plain kill of the holder we started (checked by start time).
        unsafe { libc::kill(h.pid, libc::SIGKILL) };
    }
    let dir = net.dir(ctx);
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    crate::events::emit(&ctx.layout, "network", "destroy", &net.id, &[("name", &net.name), ("type", "bridge")]);
    Ok(())
}

fn holder(ctx: &Context, net: &Network) -> Option<Proc> {
    let bytes = std::fs::read(net.dir(ctx).join("holder.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The running holder of `net`, started if it is not running.
pub fn ensure_holder(ctx: &Context, net: &Network) -> Result<Proc> {
    let _lock = crate::lockfile::lock_exclusive(&net.dir(ctx).join("holder.lock"))?;
    if !net.dir(ctx).join("network.json").exists() {
        bail!("network {} was removed", net.name);
    }
    if let Some(h) = holder(ctx, net).filter(Proc::alive) {
        // A member is on its way: the holder must not leave as idle now.
        let _ = std::fs::File::options()
            .write(true)
            .open(net.dir(ctx).join("holder.json"))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        return Ok(h);
    }
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| "/proc/self/exe".into());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(net.dir(ctx).join("holder.log"))
        .context("opening the network holder's log")?;
    let (mut ours, theirs) = UnixStream::pair().context("creating a socket pair")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0("strata")
        .arg("--root")
        .arg(ctx.layout.root())
        .args(["internal-network-holder", &net.name])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
        .envs(std::env::var_os(IDLE_ENV).map(|v| (IDLE_ENV, v)))
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // (Above the target first: dup2 onto itself would keep close-on-exec.)
            let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
            if libc::setsid() < 0 || high < 0 || libc::dup2(high, HOLDER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::inherited_fds::cloexec_from(HOLDER_FD + 1);
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the network's holder")?;
    drop(theirs);
    let mut answer = String::new();
    let _ = ours.read_to_string(&mut answer);
    if answer != "ok" {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        bail!("setting up network {}: {}", net.name, if answer.is_empty() { "the holder exited" } else { &answer });
    }
    let pid = child.id() as i32;
    drop(child); // It lives on (reaped by init, or a subreaper).
    let h = Proc::of(pid).ok_or_else(|| anyhow::anyhow!("the holder of network {} exited", net.name))?;
    record::write_json(&net.dir(ctx).join("holder.json"), &h)?;
    Ok(h)
}

/// Where the holder reports "ok" or what failed.
const HOLDER_FD: i32 = 3;
/// Seconds without a running member after which a holder leaves.
pub const IDLE_ENV: &str = "STRATA_NETWORK_IDLE";

/// `strata internal-network-holder NAME`: makes the network's namespaces
/// and bridge, reports, and waits to be killed.
pub fn holder_main(ctx: &Context, name: &str) -> Result<i32> {
    // SAFETY: fd 3 was placed by `ensure_holder`; taken once. Close-on-exec
    // again, so that no helper run here holds the report open.
    let mut report = unsafe {
        libc::fcntl(HOLDER_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(HOLDER_FD)
    };
    let result = (|| -> Result<std::net::UdpSocket> {
        let net = find(ctx, name)?.ok_or_else(|| anyhow::anyhow!("network {name} not found"))?;
        if ctx.rootless {
            let (mapping, _) = strata_runner::rootless_mapping();
            crate::containers::spec::enter_user_namespace(&mapping)?;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("creating a network namespace")?;
        let (_, len) = net.range()?;
        ip_batch(&format!(
            "link set lo up\nlink add {BRIDGE} type bridge\naddr add {}/{len} dev {BRIDGE}\nlink set {BRIDGE} up\n",
            net.gateway()?
        ))?;
        std::net::UdpSocket::bind((net.gateway()?, 53)).context("opening the network's name server on port 53")
    })();
    match result {
        Ok(dns) => {
            let _ = report.write_all(b"ok");
            drop(report);
            let idle = std::env::var(IDLE_ENV).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(60);
            let idle = std::time::Duration::from_secs(idle.max(1));
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|scope| {
                scope.spawn(|| crate::containers::dns::serve(dns, &stop, |asked| member_address(ctx, name, asked)));
                loop {
                    std::thread::sleep(idle / 2);
                    if let Some(net) = find(ctx, name).ok().flatten() {
                        if !leave_if_idle(ctx, &net, idle) {
                            continue;
                        }
                    }
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(0);
                }
            })
        }
        Err(e) => {
            let _ = report.write_all(format!("{e:#}").as_bytes());
            Err(e)
        }
    }
}

/// In the holder's name server: the address of the running member of
/// network `name` that `asked` names (its name, short id or an alias).
fn member_address(ctx: &Context, name: &str, asked: &str) -> Option<Ipv4Addr> {
    let net = find(ctx, name).ok().flatten()?;
    members(ctx, &net, "").into_iter().find_map(|(ip, c)| {
        let named = c.config.name.eq_ignore_ascii_case(asked)
            || c.config.id.get(..12) == Some(asked)
            || c.config.request.network_alias.iter().any(|a| a.eq_ignore_ascii_case(asked));
        named.then_some(ip)
    })
}

/// In the holder: whether to leave now, because no member runs and none
/// has asked for the holder within `idle` (then its record goes).
fn leave_if_idle(ctx: &Context, net: &Network, idle: std::time::Duration) -> bool {
    let Ok(_lock) = crate::lockfile::lock_exclusive(&net.dir(ctx).join("holder.lock")) else { return false };
    let record = net.dir(ctx).join("holder.json");
    let asked = std::fs::metadata(&record).and_then(|m| m.modified()).ok();
    let quiet = asked.and_then(|t| t.elapsed().ok()).is_none_or(|e| e >= idle);
    if !quiet || !members(ctx, net, "").is_empty() {
        return false;
    }
    let _ = std::fs::remove_file(&record);
    true
}

/// Runs `ip -batch -` with `commands` in this process's network namespace.
fn ip_batch(commands: &str) -> Result<()> {
    let mut child = std::process::Command::new("ip")
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running ip (install iproute2 for user-defined networks)")?;
    child.stdin.take().map(|mut i| i.write_all(commands.as_bytes())).transpose()?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `--ip`: an address of the network's a member may have (not its own
/// address, the bridge's, nor the broadcast address).
pub fn check_address(net: &Network, ip: &str) -> std::result::Result<Ipv4Addr, String> {
    let addr: Ipv4Addr = ip.parse().map_err(|_| format!("invalid IPv4 address: {ip}"))?;
    let (base, len) = net.range().map_err(|e| format!("{e:#}"))?;
    let a = u32::from(addr);
    if a & (u32::MAX << (32 - len)) != base || !net.member_addresses().is_ok_and(|mut m| m.any(|ip| ip == addr)) {
        return Err(format!(
            "no configured subnet or ip-range contain the IP address {ip} (network {}: {})",
            net.name, net.subnet
        ));
    }
    Ok(addr)
}

/// The address container `id` has on `net` while it runs: the one it asked
/// for (`--ip`), or the one it has, else the lowest free one (leases of
/// members no longer running are dropped first).
pub fn lease(ctx: &Context, net: &Network, id: &str, wanted: Option<&str>) -> Result<Ipv4Addr> {
    let _lock = crate::lockfile::lock_exclusive(&net.dir(ctx).join("leases.lock"))?;
    let mut leases = read_leases(ctx, net);
    leases.retain(|_, owner| owner == id || running(ctx, owner).is_some());
    let wanted = wanted.map(|w| check_address(net, w).map_err(|e| anyhow::anyhow!(e))).transpose()?;
    if let Some(w) = wanted {
        match leases.get(&w) {
            Some(owner) if owner != id => bail!("Address already in use ({w} on network {})", net.name),
            _ => leases.retain(|ip, owner| owner != id || *ip == w),
        }
    }
    if let Some((ip, _)) = leases.iter().find(|(_, owner)| *owner == id) {
        return Ok(*ip);
    }
    let ip = wanted
        .or_else(|| net.member_addresses().ok()?.find(|ip| !leases.contains_key(ip)))
        .ok_or_else(|| anyhow::anyhow!("no free address left in network {} ({})", net.name, net.subnet))?;
    leases.insert(ip, id.to_string());
    record::write_json(&net.dir(ctx).join("leases.json"), &leases)?;
    Ok(ip)
}

/// The address leased to container `id`, if any.
pub fn lease_of(ctx: &Context, net: &Network, id: &str) -> Option<Ipv4Addr> {
    read_leases(ctx, net).into_iter().find(|(_, owner)| owner == id).map(|(ip, _)| ip)
}

/// Gives back container `id`'s address.
pub fn release(ctx: &Context, net: &Network, id: &str) {
    if let Ok(_lock) = crate::lockfile::lock_exclusive(&net.dir(ctx).join("leases.lock")) {
        let mut leases = read_leases(ctx, net);
        leases.retain(|_, owner| owner != id);
        let _ = record::write_json(&net.dir(ctx).join("leases.json"), &leases);
    }
}

fn read_leases(ctx: &Context, net: &Network) -> BTreeMap<Ipv4Addr, String> {
    std::fs::read(net.dir(ctx).join("leases.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn running(ctx: &Context, id: &str) -> Option<Container> {
    record::find_fresh(&ctx.layout, id).ok().filter(|c| c.running() && c.state.init.is_some_and(|p| p.alive()))
}

/// The running members of `net` other than `except`, with their addresses.
pub fn members(ctx: &Context, net: &Network, except: &str) -> Vec<(Ipv4Addr, Container)> {
    read_leases(ctx, net)
        .into_iter()
        .filter(|(_, owner)| owner != except)
        .filter_map(|(ip, owner)| running(ctx, &owner).map(|c| (ip, c)))
        .collect()
}

/// The /etc/hosts line naming container `c` at `ip`: its name, short id
/// and `--network-alias`es.
pub fn hosts_line(ip: Ipv4Addr, c: &Container) -> String {
    let mut line = format!("{ip}\t{} {}", c.config.name, &c.config.id[..12]);
    for a in &c.config.request.network_alias {
        line.push(' ');
        line.push_str(a);
    }
    line.push('\n');
    line
}

/// Adds `line` to, or (`add` false) removes it from, the /etc/hosts of
/// every running member but `except`. Written in place: each member has
/// its file bind-mounted, so a renamed new file would not reach it.
pub fn update_members_hosts(ctx: &Context, net: &Network, except: &str, line: &str, add: bool) {
    for (_, m) in members(ctx, net, except) {
        let path = m.dir.join("hosts");
        let Ok(old) = std::fs::read_to_string(&path) else { continue };
        let mut new: String = old.lines().filter(|l| format!("{l}\n") != line).map(|l| format!("{l}\n")).collect();
        if add {
            new.push_str(line);
        }
        if new != old {
            write_in_place(&path, &new);
        }
    }
}

/// The veth of container `id` (address `ip`) on `net`, whose holder is `holder`.
pub fn attachment(
    net: &Network,
    holder: &Proc,
    id: &str,
    ip: Ipv4Addr,
) -> Result<strata_runner::spec::BridgeAttachment> {
    Ok(strata_runner::spec::BridgeAttachment {
        holder_pid: holder.pid,
        bridge: BRIDGE.into(),
        host_veth: format!("st{}", &id[..12]),
        interface: INTERFACE.into(),
        address: format!("{ip}/{}", net.range()?.1),
    })
}

/// `network connect NET CONTAINER`: puts a container of the default
/// network on `net` (strata keeps one user-defined network per container;
/// its pasta link stays). A running one is attached now, which only root
/// can do (an ordinary user's container has a user namespace of its own,
/// the network's holder another: stop it first).
pub fn connect(ctx: &Context, net: &Network, c: &Container, aliases: &[String], ip: Option<&str>) -> Result<()> {
    let cfg = &c.config;
    if cfg.network == net.name {
        bail!("endpoint with name {} already exists in network {}", cfg.name, net.name);
    }
    match cfg.network.as_str() {
        "private" => {}
        "host" => bail!("container cannot be disconnected from host network or connected to host network"),
        "none" => bail!("container cannot be connected to multiple networks with one of the networks in private (none) mode"),
        n if n.starts_with("container:") => bail!("container sharing network namespace with another container cannot be connected to any other network"),
        other => bail!("{} is on network {other} already; strata puts a container on one user-defined network: disconnect it first", cfg.name),
    }
    if let Some(ip) = ip {
        check_address(net, ip).map_err(|e| anyhow::anyhow!(e))?;
    }
    let live = c.running().then(|| c.state.init.filter(|p| p.alive())).flatten();
    if live.is_some() && ctx.rootless {
        bail!("{} is running: an ordinary user's container joins a user-defined network when it starts; stop it, connect it, start it", cfg.name);
    }
    let mut new = cfg.clone();
    new.network = net.name.clone();
    new.request.network_alias = aliases.to_vec();
    new.request.ip = ip.map(String::from);
    {
        let _lock = record::lock(&ctx.layout)?;
        record::write_json(&c.dir.join("config.json"), &new)?;
    }
    if let Some(init) = live {
        let c = Container { config: new, ..c.clone() };
        let attached = (|| -> Result<()> {
            let holder = ensure_holder(ctx, net)?;
            let ip = lease(ctx, net, &c.config.id, ip)?;
            strata_runner::attach_bridge(init.pid, &attachment(net, &holder, &c.config.id, ip)?)?;
            let mut own = std::fs::read_to_string(c.dir.join("hosts")).unwrap_or_default();
            own.push_str(&hosts_line(ip, &c));
            for (ip, m) in members(ctx, net, &c.config.id) {
                own.push_str(&hosts_line(ip, &m));
            }
            write_in_place(&c.dir.join("hosts"), &own);
            update_members_hosts(ctx, net, &c.config.id, &hosts_line(ip, &c), true);
            Ok(())
        })();
        if let Err(e) = attached {
            let _lock = record::lock(&ctx.layout)?;
            record::write_json(&c.dir.join("config.json"), cfg)?;
            release(ctx, net, &cfg.id);
            return Err(e);
        }
    }
    let attrs = [("container", cfg.id.as_str()), ("name", net.name.as_str()), ("type", "bridge")];
    crate::events::emit(&ctx.layout, "network", "connect", &net.id, &attrs);
    Ok(())
}

/// `network disconnect NET CONTAINER`: back to the default network; a
/// running container (root's: see [`connect`]) loses its interface now.
pub fn disconnect(ctx: &Context, net: &Network, c: &Container) -> Result<()> {
    let cfg = &c.config;
    if cfg.network != net.name {
        bail!("container {} is not connected to network {}", cfg.name, net.name);
    }
    let live = c.running().then(|| c.state.init.filter(|p| p.alive())).flatten();
    if live.is_some() && ctx.rootless {
        bail!(
            "{} is running: an ordinary user's container leaves a user-defined network when it stops; stop it first",
            cfg.name
        );
    }
    if live.is_some() {
        if let (Some(holder), Some(ip)) = (holder(ctx, net).filter(Proc::alive), lease_of(ctx, net, &cfg.id)) {
            strata_runner::detach_bridge(&attachment(net, &holder, &cfg.id, ip)?)?;
            update_members_hosts(ctx, net, &cfg.id, &hosts_line(ip, c), false);
            // Its own lines lose every name on the network.
            let (base, len) = net.range()?;
            let on_network = |l: &str| {
                let addr = l.split('\t').next().and_then(|a| a.parse::<Ipv4Addr>().ok());
                addr.is_some_and(|a| u32::from(a) & (u32::MAX << (32 - len)) == base)
            };
            let own: String = std::fs::read_to_string(c.dir.join("hosts"))
                .unwrap_or_default()
                .lines()
                .filter(|l| !on_network(l))
                .map(|l| format!("{l}\n"))
                .collect();
            write_in_place(&c.dir.join("hosts"), &own);
        }
        release(ctx, net, &cfg.id);
    }
    let mut new = cfg.clone();
    new.network = "private".into();
    new.request.network_alias.clear();
    new.request.ip = None;
    let _lock = record::lock(&ctx.layout)?;
    record::write_json(&c.dir.join("config.json"), &new)?;
    let attrs = [("container", cfg.id.as_str()), ("name", net.name.as_str()), ("type", "bridge")];
    crate::events::emit(&ctx.layout, "network", "disconnect", &net.id, &attrs);
    Ok(())
}

fn write_in_place(path: &std::path::Path, text: &str) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(subnet: &str) -> Network {
        Network {
            name: "n".into(),
            id: "0".repeat(64),
            created: String::new(),
            subnet: subnet.into(),
            labels: Default::default(),
            internal: false,
            custom_gateway: None,
        }
    }

    #[test]
    fn subnets_are_networks_of_8_to_29_bits() {
        assert_eq!(parse_subnet("10.89.3.0/24").unwrap(), (u32::from(Ipv4Addr::new(10, 89, 3, 0)), 24));
        assert_eq!(parse_subnet("172.20.0.0/16").unwrap().1, 16);
        for (bad, why) in [
            ("10.89.3.1/24", "host bits"),
            ("10.89.3.0/30", "between 8 and 29"),
            ("10.89.3.0", "IPv4 network"),
            ("fd00::/64", "IPv4 network"),
            ("10.89.3.0/x", "IPv4 network"),
        ] {
            let e = parse_subnet(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn members_get_addresses_inside_the_subnet_past_the_bridge() {
        let n = net("10.89.3.0/24");
        assert_eq!(n.gateway().unwrap(), Ipv4Addr::new(10, 89, 3, 1));
        assert_eq!(check_address(&n, "10.89.3.2").unwrap(), Ipv4Addr::new(10, 89, 3, 2));
        assert_eq!(check_address(&n, "10.89.3.254").unwrap(), Ipv4Addr::new(10, 89, 3, 254));
        for bad in ["10.89.3.0", "10.89.3.1", "10.89.3.255", "10.89.4.2", "10.89.3", "x"] {
            assert!(check_address(&n, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_hosts_line_names_the_container_its_short_id_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = record::test_record(&strata_layers::StoreLayout::new(dir.path().to_path_buf()), "web");
        c.config.request.network_alias = vec!["api".into(), "www".into()];
        let short = c.config.id[..12].to_string();
        assert_eq!(hosts_line(Ipv4Addr::new(10, 89, 3, 7), &c), format!("10.89.3.7\tweb {short} api www\n"));
    }
}
