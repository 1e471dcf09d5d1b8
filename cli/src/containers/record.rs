//! Container records: what `create` decided (`config.json`) and what happened
//! since (`state.json`), one directory per container under
//! `ROOT/containers/<64-hex id>/`:
//!
//! ```text
//! config.json    the creation request, the resolved image and command, name, created time
//! state.json     status, pids (+ start times), exit code, started/finished times, error
//! upper/         the container's writable layer
//! rootfs/        where the supervisor mounts the union filesystem
//! ctr.log        output, one JSON object per line: {"stream":"stdout","time":"...","log":"..."}
//! hosts hostname resolv.conf   bind-mounted over /etc/* inside the container
//! attach.sock    the supervisor's attach socket while it runs
//! ```
//!
//! Both JSON files are replaced atomically (temp file, rename) while the
//! store's records lock is held, so readers never see half a record and two
//! writers never lose each other's update. Only `config.json` is made durable
//! (fsync of the file and the directory): `state.json` is runtime state,
//! written four times per container run, and after a crash every container
//! is stopped anyway; a state file that a crash left empty reads as the
//! default state. (Those fsyncs were about a fifth of `run --rm`'s time.)
//!
//! Processes are remembered as pid plus the start time from `/proc/PID/stat`,
//! so a recycled pid is never mistaken for a container or supervisor that is
//! gone. A record that says "running" while its supervisor is gone is
//! repaired by [`refresh`]: the container is marked exited (255) with the
//! reason, its processes are killed and its stale mount is detached.

use crate::commands::run::CreateArgs;
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use strata_layers::StoreLayout;

/// Everything `create` resolved; never changes afterwards except for `name`
/// (rename).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ContainerConfig {
    pub id: String,
    pub name: String,
    /// RFC 3339 with nanoseconds, UTC.
    pub created: String,
    /// The image as the user named it.
    pub image: String,
    /// `sha256:...` of the image config.
    pub image_id: String,
    /// Layer diff_ids, bottom first.
    pub layers: Vec<String>,
    /// The full creation request, as parsed from the command line.
    pub request: CreateArgs,
    /// argv[0] and the rest, after Entrypoint/Cmd resolution.
    pub path: String,
    pub args: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    pub stop_signal: String,
    pub stop_timeout: Option<i64>,
    /// The health check the supervisor runs (see `health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<strata_layers::image::Healthcheck>,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<MountRecord>,
    pub ports: Vec<PortBinding>,
    /// `private`, `host` or `none`.
    pub network: String,
    /// Exposed ports of the image and `--expose`-like sources (`80/tcp`).
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// The seccomp profile given with `--security-opt seccomp=FILE` (Docker's
    /// JSON, read at create as Docker does); None: the default, unless
    /// `seccomp=unconfined` or `--privileged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MountRecord {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Volume name for volumes; absolute host path for binds; empty for tmpfs.
    #[serde(rename = "Name", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "Source")]
    pub source: String,
    #[serde(rename = "Destination")]
    pub destination: String,
    #[serde(rename = "RW")]
    pub rw: bool,
    /// tmpfs options (`size=64m,mode=1777`) or bind propagation.
    #[serde(rename = "Options", default, skip_serializing_if = "String::is_empty")]
    pub options: String,
    /// Anonymous volume (removed with `rm -v` / `--rm`).
    #[serde(rename = "Anonymous", default)]
    pub anonymous: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PortBinding {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    Exited,
    Removing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Removing => "removing",
        }
    }
}

/// A process remembered by pid and start time (clock ticks since boot).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
}

impl Proc {
    pub fn of(pid: i32) -> Option<Proc> {
        process_start_time(pid).map(|start| Proc { pid, start })
    }
    /// The same process (not a recycled pid) still runs (a zombie does not).
    pub fn alive(&self) -> bool {
        self.pid > 0
            && process_stat(self.pid).is_some_and(|(state, start)| start == self.start && state != 'Z' && state != 'X')
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ContainerState {
    pub status: Status,
    /// The container's init (host pid) while running.
    #[serde(default)]
    pub init: Option<Proc>,
    #[serde(default)]
    pub supervisor: Option<Proc>,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub error: String,
    /// The container's network namespace (`net:[INODE]`) while it runs with
    /// a private network: how a helper serving it (pasta) is found again when
    /// the supervisor died without stopping it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Docker's RestartCount (no restart policies yet: always 0).
    #[serde(default)]
    pub restart_count: u32,
    /// Set by `stop`, `kill` and `rm -f` before they signal: the restart
    /// policy does not apply to this exit (see `restart`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_requested: bool,
    /// Exited, and the supervisor named here (while it lives) starts it
    /// again after a back-off, as its restart policy says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarting: Option<Proc>,
    /// The health check's results while it runs (see `health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::containers::health::Health>,
}

impl ContainerState {
    /// Between two runs of a restart policy (see `restart`).
    pub fn is_restarting(&self) -> bool {
        self.status == Status::Exited && !self.stop_requested && self.restarting.is_some_and(|p| p.alive())
    }
}

/// A container as read from the store.
#[derive(Clone, Debug)]
pub struct Container {
    pub config: ContainerConfig,
    pub state: ContainerState,
    pub dir: PathBuf,
}

impl ContainerConfig {
    /// The user-defined network (`network create`) the container is on.
    pub fn user_network(&self) -> Option<&str> {
        let n = self.network.as_str();
        (!matches!(n, "private" | "host" | "none") && !n.starts_with("container:")).then_some(n)
    }
    /// A network namespace of its own reached through pasta (the default
    /// network, or a user-defined one), with its published ports.
    pub fn uses_pasta(&self) -> bool {
        self.network == "private" || self.user_network().is_some()
    }
}

impl Container {
    pub fn short_id(&self) -> &str {
        &self.config.id[..12]
    }
    pub fn running(&self) -> bool {
        self.state.status == Status::Running
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    /// The image's layers under the container's upper directory, for
    /// reading its changes (`diff`, `commit`, `export`) without a mount.
    pub fn lowers(&self, store: &strata_layers::store::Store) -> anyhow::Result<Vec<strata_fs::Lower>> {
        crate::lazy::lowers(store.layout(), &self.config.layers)
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("ctr.log")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("attach.sock")
    }
}

/// The store's records lock (`ROOT/records.lock`), held exclusively for the
/// duration of one read-modify-write of container or volume records.
pub type RecordsLock = crate::lockfile::LockGuard;

pub fn lock(layout: &StoreLayout) -> Result<RecordsLock> {
    fs::create_dir_all(layout.root()).with_context(|| format!("creating {}", layout.root().display()))?;
    crate::lockfile::lock_exclusive(&layout.records_lock_path())
}

/// Writes `value` as JSON to `path` atomically and durably: temp file,
/// fsync, rename, fsync of the directory.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_json_with(path, value, true)
}

/// Like [`write_json`]; without `durable`, atomic but not fsync'd (see the module docs).
fn write_json_with<T: Serialize>(path: &Path, value: &T, durable: bool) -> Result<()> {
    let dir = path.parent().context("record path has no parent")?;
    let data = serde_json::to_vec_pretty(value)?;
    let tmp =
        dir.join(format!(".{}.tmp{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("x"), std::process::id()));
    let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&data)
        .and_then(|_| if durable { f.sync_all() } else { Ok(()) })
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if durable {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))
}

/// Reads one container by directory; `None` if it is incomplete or gone, or
/// if its config does not name it (an id is used in paths and sliced as a
/// 64-hex string, so an edited one is never trusted).
pub fn read_dir_record(dir: &Path) -> Option<Container> {
    let config: ContainerConfig = read_json(&dir.join("config.json")).ok()?;
    if !is_container_id(&config.id) || dir.file_name()? != config.id.as_str() {
        return None;
    }
    let state: ContainerState = read_json(&dir.join("state.json")).unwrap_or_default();
    Some(Container { config, state, dir: dir.to_path_buf() })
}

/// A full container id: 64 lowercase hex digits.
fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// All containers, newest first (the order of `ps`).
pub fn list(layout: &StoreLayout) -> Result<Vec<Container>> {
    let dir = layout.containers_dir();
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_container_id(name) {
            continue;
        }
        if let Some(c) = read_dir_record(&entry.path()) {
            out.push(c);
        }
    }
    out.sort_by(|a, b| b.config.created.cmp(&a.config.created));
    Ok(out)
}

/// Docker's "No such container" error (exit status 1 for most verbs).
#[derive(Debug)]
pub struct NoSuchContainer(pub String);

impl std::fmt::Display for NoSuchContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "No such container: {}", self.0)
    }
}
impl std::error::Error for NoSuchContainer {}

/// Finds a container by full id, name (with or without `/`) or unique id prefix.
pub fn find(layout: &StoreLayout, key: &str) -> Result<Container> {
    let all = list(layout)?;
    let name = key.strip_prefix('/').unwrap_or(key);
    if let Some(c) = all.iter().find(|c| c.config.id == key || c.config.name == name) {
        return Ok(c.clone());
    }
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut matches = all.iter().filter(|c| c.config.id.starts_with(key));
        if let Some(c) = matches.next() {
            if matches.next().is_some() {
                anyhow::bail!("multiple IDs found with provided prefix: {key}");
            }
            return Ok(c.clone());
        }
    }
    Err(NoSuchContainer(key.to_string()).into())
}

/// Finds a container and repairs its record if its supervisor died.
pub fn find_fresh(layout: &StoreLayout, key: &str) -> Result<Container> {
    let c = find(layout, key)?;
    refresh(layout, c)
}

/// All containers, with dead supervisors detected.
pub fn list_fresh(layout: &StoreLayout) -> Result<Vec<Container>> {
    list(layout)?.into_iter().map(|c| refresh(layout, c)).collect()
}

/// Writes the state of `c` (caller holds the records lock).
pub fn save_state(c: &Container) -> Result<()> {
    write_json_with(&c.dir.join("state.json"), &c.state, false)
}

/// Re-reads the state of the container in `dir`, applies `f`, and writes it
/// back, all under the records lock. Returns the updated container, or `None`
/// when the container is gone.
pub fn update_state(
    layout: &StoreLayout,
    dir: &Path,
    f: impl FnOnce(&mut ContainerState),
) -> Result<Option<Container>> {
    let _lock = lock(layout)?;
    let Some(mut c) = read_dir_record(dir) else { return Ok(None) };
    f(&mut c.state);
    save_state(&c)?;
    Ok(Some(c))
}

/// A running container whose supervisor is gone (killed, crashed, host
/// rebooted) is marked `Exited (255)` with the reason; what is left of it is
/// cleaned up (its processes killed, its mount detached).
pub fn refresh(layout: &StoreLayout, c: Container) -> Result<Container> {
    if c.state.status != Status::Running {
        return Ok(c);
    }
    if c.state.supervisor.is_some_and(|s| s.alive()) {
        return Ok(c);
    }
    // Only a live supervisor records "running" (after the spawn), so a
    // running record without one means the supervisor died. Re-checked under
    // the lock: another command may have repaired it meanwhile.
    let dir = c.dir.clone();
    let updated = update_state(layout, &dir, |s| {
        if s.status == Status::Running && !s.supervisor.is_some_and(|p| p.alive()) {
            if let Some(init) = s.init.filter(|p| p.alive()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(init.pid), nix::sys::signal::SIGKILL);
            }
            if rustix::process::geteuid().is_root() {
                strata_runner::remove_leftover_cgroup(&c.config.id);
            }
            if let Some(ns) = s.netns.take() {
                kill_netns_helpers(&ns);
            }
            s.status = Status::Exited;
            s.exit_code = 255;
            s.init = None;
            s.supervisor = None;
            s.finished_at = Some(now());
            s.error = "the container's supervisor process died".to_string();
            // Its mount is left over too. Detached here, under the lock and
            // only by the command that repaired the record: a start that
            // claims the container right after mounts the rootfs anew.
            clear_stale_mount(&dir.join("rootfs"));
        }
    })?;
    Ok(updated.unwrap_or(c))
}

/// Stops `pasta` processes that hold the network namespace `ns` (they
/// outlive a supervisor killed with SIGKILL, which would have stopped them).
fn kill_netns_helpers(ns: &str) {
    let Ok(procs) = fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if fs::read_to_string(p.path().join("comm")).map(|c| c.trim() != "pasta" && c.trim() != "passt").unwrap_or(true)
        {
            continue;
        }
        let holds = fs::read_dir(p.path().join("fd"))
            .map(|fds| fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == ns)))
            .unwrap_or(false);
        if holds {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Detaches whatever is still mounted on `path` (a FUSE mount whose server
/// died answers ENOTCONN until it is unmounted).
pub fn clear_stale_mount(path: &Path) {
    use rustix::mount::{unmount, UnmountFlags};
    if unmount(path, UnmountFlags::DETACH).is_ok() {
        return;
    }
    // Rootless: a mount made through fusermount3 can only be removed by it.
    if is_mountpoint(path) {
        let _ = strata_fs::fusermount_unmount(path, true);
    }
}

/// Whether `path` is listed as a mount point in /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> bool {
    !strata_fs::mountinfo::mounts_at(path).is_empty()
}

/// Field 22 of /proc/PID/stat: the start time in clock ticks after boot.
pub fn process_start_time(pid: i32) -> Option<u64> {
    process_stat(pid).map(|(_, start)| start)
}

/// Fields 3 (state) and 22 (start time) of /proc/PID/stat.
fn process_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3; the start time is field 22.
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// Now, as RFC 3339 with nanoseconds in UTC (Docker's timestamp format).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A new random 64-hex container id whose 12-char prefix is not all digits
/// (Docker avoids those so short ids never look like numbers).
pub fn new_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let bytes: [u8; 32] = rng.random();
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if !id[..12].bytes().all(|b| b.is_ascii_digit()) {
            return id;
        }
    }
}

/// A created container named `name` written to the store of `layout`, for tests.
#[cfg(test)]
pub(crate) fn test_record(layout: &StoreLayout, name: &str) -> Container {
    let id = new_id();
    let dir = layout.container_dir(&id);
    fs::create_dir_all(&dir).unwrap();
    let config = ContainerConfig {
        id: id.clone(),
        name: name.into(),
        created: now(),
        image: "img".into(),
        image_id: String::new(),
        layers: vec![],
        request: CreateArgs::default(),
        path: "/bin/sh".into(),
        args: vec![],
        entrypoint: vec![],
        cmd: vec![],
        env: vec![],
        working_dir: "/".into(),
        user: String::new(),
        hostname: String::new(),
        stop_signal: "SIGTERM".into(),
        stop_timeout: None,
        healthcheck: None,
        labels: BTreeMap::new(),
        mounts: vec![],
        ports: vec![],
        network: "none".into(),
        exposed_ports: vec![],
        seccomp_profile: None,
    };
    write_json(&dir.join("config.json"), &config).unwrap();
    let c = Container { config, state: ContainerState::default(), dir };
    save_state(&c).unwrap();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self() {
        let me = std::process::id() as i32;
        let p = Proc::of(me).unwrap();
        assert!(p.alive());
        assert!(!Proc { pid: me, start: p.start + 1 }.alive());
    }

    #[test]
    fn ids() {
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    /// A command that read a stale "running" record, while another repaired
    /// it and a start mounted the rootfs anew, leaves that mount alone.
    #[test]
    fn repairing_a_record_someone_else_repaired_leaves_the_new_mount() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let root = std::env::temp_dir().join(format!("strata-refresh-test-{}", std::process::id()));
        let layout = StoreLayout::new(root.clone());
        let c = test_record(&layout, "c");
        let rootfs = c.dir.join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        // On disk: running, served by a live supervisor (this process), mounted.
        let mut cur = c.clone();
        cur.state.status = Status::Running;
        cur.state.supervisor = Proc::of(std::process::id() as i32);
        save_state(&cur).unwrap();
        nix::mount::mount(Some("tmpfs"), &rootfs, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
        // What the slow command read before: running, its supervisor dead.
        let mut stale = cur.clone();
        stale.state.supervisor = Some(Proc { pid: i32::MAX, start: 1 });
        let now = refresh(&layout, stale).unwrap();
        let mounted = fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&format!(" {} ", rootfs.display()));
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&root);
        assert!(mounted, "the new mount was detached");
        assert_eq!(now.state.status, Status::Running);
    }

    #[test]
    fn records_are_read_only_under_their_own_id() {
        let root = std::env::temp_dir().join(format!("strata-record-test-{}", std::process::id()));
        let layout = StoreLayout::new(root.clone());
        let c = test_record(&layout, "c");
        let id = c.config.id.clone();
        let (dir, mut config) = (c.dir, c.config);
        assert_eq!(read_dir_record(&dir).map(|c| c.config.id), Some(id.clone()));

        // An edited id: too short to slice, a path out of containers/, another
        // container's id, upper case.
        let other = new_id();
        for bad in ["x".to_string(), format!("../../{id}"), other, id.to_uppercase()] {
            config.id = bad.clone();
            write_json(&dir.join("config.json"), &config).unwrap();
            assert!(read_dir_record(&dir).is_none(), "{bad:?} accepted");
            let listed = list(&layout).unwrap();
            assert!(listed.is_empty(), "{bad:?} listed");
        }
        let _ = fs::remove_dir_all(&root);
    }
}
