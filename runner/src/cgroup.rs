//! Cgroup placement, limits (memory, cpu, pids, cpuset, block I/O) and freezing (`pause`).
//!
//! - Unified cgroup v2 (`/sys/fs/cgroup` is cgroup2): a `strata/<name>` cgroup under the root as
//!   root, or `<own cgroup>/strata-<name>` as an ordinary user when systemd (or an admin) has
//!   delegated that subtree. Controllers are enabled in the parent's `cgroup.subtree_control`.
//! - v1 or hybrid (v1 controllers plus a cgroup2 mount at /sys/fs/cgroup/unified that holds no
//!   useful controller): `<controller>/strata/<name>` in each v1 hierarchy, as root only.
//!
//! Without limits an ordinary user simply gets no cgroup of its own; with limits that cannot be
//! applied, `create` fails with an explanation rather than silently running unlimited.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::RunnerError;
use crate::spec::{CgroupLimits, CgroupSpec};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;
const CPU_PERIOD: u64 = 100_000;
/// The v1 hierarchies a container gets a cgroup in: the three that limit,
/// the freezer for `pause`, the two that count for `stats` (cpuacct,
/// blkio) and cpuset, so that `update --cpuset-cpus` has one to write
/// (skipped where they are not mounted).
const V1_CONTROLLERS: [&str; 7] = ["memory", "cpu", "pids", "freezer", "cpuacct", "blkio", "cpuset"];
/// How long freezing may take before `set_frozen` gives up.
const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The cgroup directories a container was placed in.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

/// True on a host with the unified hierarchy alone (cgroup v2), where
/// Docker gives containers a cgroup namespace by default.
pub fn unified_hierarchy() -> bool {
    is_cgroup2(CGROUP_ROOT)
}

fn is_cgroup2(path: &str) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC).unwrap_or(false)
}

fn write(path: &Path, value: &str) -> Result<(), RunnerError> {
    fs::write(path, value).map_err(|e| RunnerError::Cgroup(format!("write {value:?} to {}: {e}", path.display())))
}

fn mkdir(path: &Path) -> Result<(), RunnerError> {
    match fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(RunnerError::Cgroup(format!("create {}: {e}", path.display()))),
    }
}

/// The leaf name must be a single path component.
fn check_name(name: &str) -> Result<(), RunnerError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(RunnerError::Invalid(format!("invalid cgroup name {name:?}")));
    }
    Ok(())
}

impl Cgroup {
    /// Create the container's cgroup(s) and write the limits. `Ok(None)` when no cgroup is
    /// needed (ordinary user, no limits).
    pub(crate) fn create(spec: &CgroupSpec, rootless: bool) -> Result<Option<Cgroup>, RunnerError> {
        check_name(&spec.name)?;
        match Self::create_placed(spec, rootless) {
            // Without limits the cgroup is a convenience (pause, stats):
            // where none can be made (a read-only /sys/fs/cgroup, as inside
            // another container), the container runs without one.
            Err(RunnerError::Cgroup(_)) if spec.limits.is_empty() => Ok(None),
            r => r,
        }
    }

    fn create_placed(spec: &CgroupSpec, rootless: bool) -> Result<Option<Cgroup>, RunnerError> {
        if is_cgroup2(CGROUP_ROOT) {
            return Self::create_v2(spec, rootless);
        }
        if rootless {
            if spec.limits.is_empty() {
                return Ok(None);
            }
            return Err(RunnerError::Cgroup(
                "resource limits (--memory, --cpus, --pids-limit, --cpuset-cpus, --blkio-weight, ...) as an ordinary user need cgroup v2 with a \
                 delegated subtree; this host uses cgroup v1 (or hybrid mode): run as root or drop the limits"
                    .into(),
            ));
        }
        let mut cg = Cgroup { dirs: Vec::new() };
        let l = &spec.limits;
        let controllers = l.controllers();
        for controller in V1_CONTROLLERS {
            let base = Path::new(CGROUP_ROOT).join(controller);
            let asked = controllers.iter().any(|(c, asked)| *c == controller && *asked);
            if !base.join("cgroup.procs").exists() {
                if asked {
                    cg.remove();
                    return Err(RunnerError::Cgroup(format!(
                        "the {controller} controller is not mounted at {}",
                        base.display()
                    )));
                }
                continue;
            }
            let dir = base.join("strata").join(&spec.name);
            mkdir(&dir)?;
            if controller == "cpuset" {
                if let Err(e) = init_v1_cpuset(&dir) {
                    let _ = remove_dir_retry(&dir);
                    if asked {
                        cg.remove();
                        return Err(e);
                    }
                    // Only there for a later `update`: go without it.
                    continue;
                }
            }
            cg.dirs.push(dir.clone());
            if let Err(e) = write_v1_limit(controller, &dir, l) {
                cg.remove();
                return Err(e);
            }
        }
        Ok(Some(cg))
    }

    fn create_v2(spec: &CgroupSpec, rootless: bool) -> Result<Option<Cgroup>, RunnerError> {
        let l = &spec.limits;
        let (parent, leaf) = if rootless {
            let own = fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)))
                .unwrap_or_default();
            (Path::new(CGROUP_ROOT).join(own.trim_start_matches('/')), format!("strata-{}", spec.name))
        } else {
            let parent = Path::new(CGROUP_ROOT).join("strata");
            mkdir(&parent)?;
            (parent, spec.name.clone())
        };
        let needed = v2_controllers(l);
        let delegated = access_w(&parent);
        if rootless && !delegated {
            if l.is_empty() {
                return Ok(None);
            }
            return Err(RunnerError::Cgroup(format!(
                "resource limits need a delegated cgroup v2 subtree, but {} is not writable; run under a systemd \
                 user session with delegation (e.g. `systemd-run --user --scope -p Delegate=yes`)",
                parent.display()
            )));
        }
        if !rootless {
            // As root, enable the controllers on the way down from the root.
            let root_ctl = Path::new(CGROUP_ROOT).join("cgroup.subtree_control");
            for c in &needed {
                let _ = fs::write(&root_ctl, format!("+{c}"));
            }
        }
        enable_v2_controllers(&parent, &needed)?;
        let dir = parent.join(leaf);
        mkdir(&dir)?;
        let cg = Cgroup { dirs: vec![dir.clone()] };
        if let Err(e) = write_v2_limits(&dir, l) {
            cg.remove();
            return Err(e);
        }
        Ok(Some(cg))
    }

    /// The cgroup(s) that the container named `name` (its [`CgroupSpec::name`]) got from
    /// `create`, found through the cgroups process `pid` (its init) is in: for an `exec`ed
    /// process to join. `None` when the container has no cgroup of its own.
    pub fn of_container(pid: libc::pid_t, name: &str) -> Result<Option<Cgroup>, RunnerError> {
        check_name(name)?;
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| RunnerError::Cgroup(format!("read the cgroups of process {pid}: {e}")))?;
        let ours = |path: &str| {
            let leaf = path.rsplit('/').next().unwrap_or_default();
            leaf == name || leaf.strip_prefix("strata-") == Some(name)
        };
        let mut dirs = Vec::new();
        // Lines are `ID:CONTROLLERS:PATH`; paths are relative to our cgroup namespace's root.
        for line in text.lines() {
            let mut f = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
            if !ours(path) {
                continue;
            }
            let rel = path.trim_start_matches('/');
            if controllers.is_empty() {
                // The unified hierarchy: strata uses it only when it is mounted at the root.
                if is_cgroup2(CGROUP_ROOT) {
                    dirs.push(Path::new(CGROUP_ROOT).join(rel));
                }
            } else {
                for c in controllers.split(',').filter(|c| V1_CONTROLLERS.contains(c)) {
                    dirs.push(Path::new(CGROUP_ROOT).join(c).join(rel));
                }
            }
        }
        Ok((!dirs.is_empty()).then_some(Cgroup { dirs }))
    }

    /// Move `pid` into the cgroup(s).
    pub(crate) fn add(&self, pid: libc::pid_t) -> Result<(), RunnerError> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The cgroup directories (one for v2, one per controller for v1).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Freezes every process of the cgroup (`frozen`), or thaws them:
    /// `cgroup.freeze` on cgroup v2, `freezer.state` on v1. Returns once
    /// the kernel reports the cgroup frozen (freezing waits for tasks in
    /// uninterruptible sleep).
    pub fn set_frozen(&self, frozen: bool) -> Result<(), RunnerError> {
        let (file, value) = match self.freezer() {
            Some(Freezer::V2(dir)) => (dir.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
            Some(Freezer::V1(dir)) => (dir.join("freezer.state"), if frozen { "FROZEN" } else { "THAWED" }),
            None => return Err(RunnerError::Cgroup("the container's cgroup has no freezer".into())),
        };
        write(&file, value)?;
        let start = std::time::Instant::now();
        while self.is_frozen() != frozen {
            if start.elapsed() > FREEZE_TIMEOUT {
                if frozen {
                    let _ = self.set_frozen(false);
                }
                return Err(RunnerError::Cgroup(format!(
                    "the container's processes did not {} within {} s",
                    if frozen { "freeze" } else { "thaw" },
                    FREEZE_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    /// True when the cgroup is frozen (a v1 cgroup still FREEZING is not).
    pub fn is_frozen(&self) -> bool {
        match self.freezer() {
            Some(Freezer::V2(dir)) => {
                fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|e| e.lines().any(|l| l.trim() == "frozen 1"))
            }
            Some(Freezer::V1(dir)) => fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN"),
            None => false,
        }
    }

    /// Changes the limits `l` sets (`docker update`); the others stay.
    pub fn set_limits(&self, l: &CgroupLimits) -> Result<(), RunnerError> {
        validate(l)?;
        if let Some(d) = self.dirs.iter().find(|d| d.join("cgroup.controllers").exists()) {
            // A controller the container was created without (cpuset) is enabled now.
            if let Some(parent) = d.parent() {
                enable_v2_controllers(parent, &v2_controllers(l))?;
            }
            return write_v2_limits(d, l);
        }
        for (controller, asked) in l.controllers() {
            let base = Path::new(CGROUP_ROOT).join(controller);
            match self.dirs.iter().find(|d| d.starts_with(&base)) {
                Some(d) => write_v1_limit(controller, d, l)?,
                None if asked => {
                    return Err(RunnerError::Cgroup(format!(
                        "the container has no cgroup of the {controller} controller"
                    )))
                }
                None => {}
            }
        }
        Ok(())
    }

    /// What the kernel counts for the cgroup's processes (None where a
    /// counter is not available).
    pub fn usage(&self) -> Usage {
        let v2 = self.dirs.iter().find(|d| d.join("cgroup.controllers").exists());
        let v1 = |ctl: &str| {
            let base = Path::new(CGROUP_ROOT).join(ctl);
            self.dirs.iter().find(|d| d.starts_with(&base))
        };
        let read = |p: PathBuf| fs::read_to_string(p).ok();
        let number = |p: PathBuf| read(p).and_then(|s| s.trim().parse::<u64>().ok());
        let keyed = |text: Option<String>, key: &str| {
            text.and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
            })
        };
        match v2 {
            Some(d) => {
                let (mut read_bytes, mut write_bytes) = (0, 0);
                for line in read(d.join("io.stat")).unwrap_or_default().lines() {
                    for field in line.split_whitespace() {
                        if let Some(v) = field.strip_prefix("rbytes=") {
                            read_bytes += v.parse::<u64>().unwrap_or(0);
                        } else if let Some(v) = field.strip_prefix("wbytes=") {
                            write_bytes += v.parse::<u64>().unwrap_or(0);
                        }
                    }
                }
                Usage {
                    cpu_ns: keyed(read(d.join("cpu.stat")), "usage_usec").map(|us| us * 1000),
                    memory: number(d.join("memory.current")),
                    memory_inactive_file: keyed(read(d.join("memory.stat")), "inactive_file"),
                    memory_limit: number(d.join("memory.max")),
                    pids: number(d.join("pids.current")),
                    io: Some((read_bytes, write_bytes)),
                }
            }
            None => Usage {
                cpu_ns: v1("cpuacct").and_then(|d| number(d.join("cpuacct.usage"))),
                memory: v1("memory").and_then(|d| number(d.join("memory.usage_in_bytes"))),
                memory_inactive_file: v1("memory")
                    .and_then(|d| keyed(read(d.join("memory.stat")), "total_inactive_file")),
                memory_limit: v1("memory").and_then(|d| number(d.join("memory.limit_in_bytes"))),
                pids: v1("pids").and_then(|d| number(d.join("pids.current"))),
                io: v1("blkio").map(|d| {
                    let text = read(d.join("blkio.throttle.io_service_bytes")).unwrap_or_default();
                    let sum = |op: &str| {
                        text.lines()
                            .filter_map(|l| {
                                let f: Vec<&str> = l.split_whitespace().collect();
                                (f.len() == 3 && f[1] == op).then(|| f[2].parse::<u64>().unwrap_or(0))
                            })
                            .sum()
                    };
                    (sum("Read"), sum("Write"))
                }),
            },
        }
    }

    /// Where this cgroup is frozen: the v2 directory, or the v1 freezer one.
    fn freezer(&self) -> Option<Freezer<'_>> {
        let v1 = Path::new(CGROUP_ROOT).join("freezer");
        match self.dirs.iter().find(|d| d.starts_with(&v1)) {
            Some(d) => Some(Freezer::V1(d)),
            None => self.dirs.iter().find(|d| d.join("cgroup.freeze").exists()).map(|d| Freezer::V2(d)),
        }
    }

    /// Remove the (empty) cgroup directories. Call after every process in them was reaped.
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = remove_dir_retry(d);
        }
    }
}

/// The v2 controllers the limits `l` ask for.
fn v2_controllers(l: &CgroupLimits) -> Vec<&'static str> {
    l.controllers().iter().filter(|(_, asked)| *asked).map(|(c, _)| if *c == "blkio" { "io" } else { *c }).collect()
}

/// Writes the limits `l` sets into the v1 cgroup `dir` of `controller`.
fn write_v1_limit(controller: &str, dir: &Path, l: &CgroupLimits) -> Result<(), RunnerError> {
    match controller {
        "memory" => {
            if let Some(m) = l.memory {
                // memsw may not go below memory: it is written before the
                // memory limit (may fail if that has to grow first) and after.
                let swap = dir.join("memory.memsw.limit_in_bytes");
                if l.memory_swap.is_some() && !swap.exists() {
                    return Err(RunnerError::Cgroup(
                        "--memory-swap needs swap accounting, which this kernel does not have".into(),
                    ));
                }
                if let Some(total) = l.memory_swap {
                    let _ = write(&swap, &total.to_string());
                }
                write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                if let Some(total) = l.memory_swap {
                    write(&swap, &total.to_string())?;
                }
            }
            if let Some(r) = l.memory_reservation {
                write(&dir.join("memory.soft_limit_in_bytes"), &r.to_string())?;
            }
            if let Some(s) = l.memory_swappiness {
                write(&dir.join("memory.swappiness"), &s.to_string())?;
            }
            if l.oom_kill_disable {
                write(&dir.join("memory.oom_control"), "1")?;
            }
            Ok(())
        }
        "cpu" => {
            if let Some(c) = l.cpus {
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota(c).to_string())?;
            }
            if let Some(p) = l.cpu_period {
                write(&dir.join("cpu.cfs_period_us"), &p.to_string())?;
            }
            if let Some(q) = l.cpu_quota {
                write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
            }
            if let Some(shares) = l.cpu_shares {
                write(&dir.join("cpu.shares"), &shares.to_string())?;
            }
            Ok(())
        }
        "pids" => l.pids.map_or(Ok(()), |p| write(&dir.join("pids.max"), &pids(p))),
        "cpuset" => write_cpuset(dir, l),
        "blkio" => {
            if let Some(w) = l.blkio_weight {
                let file = ["blkio.weight", "blkio.bfq.weight"]
                    .iter()
                    .map(|f| dir.join(f))
                    .find(|f| f.exists())
                    .ok_or_else(|| no_io_weight(dir))?;
                write(&file, &w.to_string())?;
            }
            for t in &l.io_throttles {
                write(&dir.join(t.kind.v1_file()), &format!("{}:{} {}", t.major, t.minor, t.rate))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn no_io_weight(dir: &Path) -> RunnerError {
    RunnerError::Cgroup(format!(
        "--blkio-weight: {} has no I/O weight file: the kernel has neither BFQ nor blk-iocost weights",
        dir.display()
    ))
}

/// True when a cgroup here could be given a block I/O weight
/// (`--blkio-weight`): v1's blkio.weight or blkio.bfq.weight, v2's
/// io.bfq.weight or io.weight (which appear in the root's children only, so
/// an existing child is asked, else the kernel's configuration is guessed
/// from the root's io.cost files).
pub fn supports_io_weight() -> bool {
    let root = Path::new(CGROUP_ROOT);
    if !is_cgroup2(CGROUP_ROOT) {
        return ["blkio.weight", "blkio.bfq.weight"].iter().any(|f| root.join("blkio").join(f).exists());
    }
    let child_has = fs::read_dir(root).into_iter().flatten().flatten().any(|e| {
        let d = e.path();
        d.join("io.bfq.weight").exists() || d.join("io.weight").exists()
    });
    child_has || root.join("io.cost.qos").exists()
}

/// Writes the limits `l` gives the v2 cpu controller into `cpu.max`
/// (`QUOTA PERIOD`, `max` for no quota). Writing one number changes the
/// quota alone, so a period alone is written with the quota already there.
fn write_v2_cpu_max(dir: &Path, l: &CgroupLimits) -> Result<(), RunnerError> {
    let file = dir.join("cpu.max");
    let quota = match (l.cpus, l.cpu_quota) {
        (Some(c), _) => Some(quota(c).to_string()),
        (None, Some(q)) if q > 0 => Some(q.to_string()),
        (None, Some(_)) => Some("max".to_string()),
        (None, None) => None,
    };
    let period = match l.cpus {
        Some(_) => Some(CPU_PERIOD),
        None => l.cpu_period,
    };
    let value = match (quota, period) {
        (Some(q), Some(p)) => format!("{q} {p}"),
        (Some(q), None) => q,
        (None, Some(p)) => {
            let now = fs::read_to_string(&file).unwrap_or_default();
            format!("{} {p}", now.split_whitespace().next().unwrap_or("max"))
        }
        (None, None) => return Ok(()),
    };
    write(&file, &value)
}

/// Gives a new v1 cpuset cgroup (and strata's parent, the first time) the
/// CPUs and memory nodes of its parent: v1 starts one with none, and then
/// refuses it any task.
fn init_v1_cpuset(dir: &Path) -> Result<(), RunnerError> {
    let read = |d: &Path, f: &str| {
        fs::read_to_string(d.join(f))
            .map(|t| t.trim().to_string())
            .map_err(|e| RunnerError::Cgroup(format!("read {}: {e}", d.join(f).display())))
    };
    let parent = dir.parent().ok_or_else(|| RunnerError::Cgroup(format!("{} has no parent", dir.display())))?;
    for d in [parent, dir] {
        let Some(above) = d.parent() else { continue };
        for f in ["cpuset.mems", "cpuset.cpus"] {
            if read(d, f)?.is_empty() {
                write(&d.join(f), &read(above, f)?)?;
            }
        }
    }
    Ok(())
}

/// Writes the cpuset the limits ask for (the same files on v1 and v2).
fn write_cpuset(dir: &Path, l: &CgroupLimits) -> Result<(), RunnerError> {
    if let Some(mems) = &l.cpuset_mems {
        write(&dir.join("cpuset.mems"), mems)?;
    }
    if let Some(cpus) = &l.cpuset_cpus {
        write(&dir.join("cpuset.cpus"), cpus)?;
    }
    Ok(())
}

/// Enables the v2 `controllers` for the children of `parent`.
fn enable_v2_controllers(parent: &Path, controllers: &[&str]) -> Result<(), RunnerError> {
    let ctl = parent.join("cgroup.subtree_control");
    for c in controllers {
        let enabled = fs::read_to_string(&ctl).unwrap_or_default();
        if !enabled.split_whitespace().any(|e| e == *c) {
            fs::write(&ctl, format!("+{c}")).map_err(|e| {
                RunnerError::Cgroup(format!(
                    "cannot enable the {c} controller in {} ({e}); it must be delegated to this cgroup",
                    ctl.display()
                ))
            })?;
        }
    }
    Ok(())
}

/// Writes the limits `l` sets into the v2 cgroup `dir`.
fn write_v2_limits(dir: &Path, l: &CgroupLimits) -> Result<(), RunnerError> {
    if let Some(m) = l.memory {
        write(&dir.join("memory.max"), &m.to_string())?;
        // v2 limits swap alone: what --memory-swap gives beyond --memory.
        match l.memory_swap {
            Some(-1) => write(&dir.join("memory.swap.max"), "max")?,
            Some(total) => write(&dir.join("memory.swap.max"), &(total as u64).saturating_sub(m).to_string())?,
            None => {}
        }
    }
    if let Some(shares) = l.cpu_shares {
        // runc's mapping of shares (2..262144) onto weights (1..10000).
        let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
        write(&dir.join("cpu.weight"), &weight.to_string())?;
    }
    if let Some(r) = l.memory_reservation {
        write(&dir.join("memory.low"), &r.to_string())?;
    }
    if l.oom_kill_disable || l.memory_swappiness.is_some() {
        return Err(RunnerError::Cgroup(
            "--oom-kill-disable and --memory-swappiness need cgroup v1: v2 has neither".into(),
        ));
    }
    write_v2_cpu_max(dir, l)?;
    if let Some(p) = l.pids {
        write(&dir.join("pids.max"), &pids(p))?;
    }
    if let Some(w) = l.blkio_weight {
        if dir.join("io.bfq.weight").exists() {
            write(&dir.join("io.bfq.weight"), &w.to_string())?;
        } else if dir.join("io.weight").exists() {
            // runc's mapping of blkio weights (10..1000) onto io weights (1..10000).
            let weight = 1 + (u64::from(w).clamp(10, 1000) - 10) * 9999 / 990;
            write(&dir.join("io.weight"), &format!("default {weight}"))?;
        } else {
            return Err(no_io_weight(dir));
        }
    }
    // One io.max line per device, with every limit it has.
    let mut devices: Vec<(u32, u32)> = l.io_throttles.iter().map(|t| (t.major, t.minor)).collect();
    devices.dedup();
    for (major, minor) in devices {
        let mut line = format!("{major}:{minor}");
        for t in l.io_throttles.iter().filter(|t| (t.major, t.minor) == (major, minor)) {
            line.push_str(&format!(" {}={}", t.kind.v2_key(), t.rate));
        }
        write(&dir.join("io.max"), &line)?;
    }
    write_cpuset(dir, l)
}

/// A cgroup's counters, as [`Cgroup::usage`] reads them.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// CPU time of every process that ran in it, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory charged to it, and the part of it that is inactive file
    /// cache (Docker shows the difference).
    pub memory: Option<u64>,
    pub memory_inactive_file: Option<u64>,
    /// The limit; None for none (v2 says `max`; v1's "no limit" is a huge number).
    pub memory_limit: Option<u64>,
    pub pids: Option<u64>,
    /// Bytes read from and written to block devices.
    pub io: Option<(u64, u64)>,
}

enum Freezer<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

/// Removes the cgroups root's container `name` was given, when its
/// supervisor died before it could (the container's processes killed
/// first). An ordinary user's are left: where they are depends on the
/// session the container was started from.
pub fn remove_leftover(name: &str) {
    if check_name(name).is_err() {
        return;
    }
    let root = Path::new(CGROUP_ROOT);
    let dirs: Vec<PathBuf> = if is_cgroup2(CGROUP_ROOT) {
        vec![root.join("strata").join(name)]
    } else {
        V1_CONTROLLERS.iter().map(|c| root.join(c).join("strata").join(name)).collect()
    };
    for d in dirs.iter().filter(|d| d.is_dir()) {
        let _ = remove_dir_retry(d);
    }
}

/// A just-reaped cgroup can report EBUSY for a moment while the kernel finishes tearing down.
fn remove_dir_retry(d: &Path) -> io::Result<()> {
    let mut last = Ok(());
    for _ in 0..50 {
        last = fs::remove_dir(d);
        match &last {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(std::time::Duration::from_millis(10)),
            _ => return last,
        }
    }
    last
}

fn access_w(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn quota(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD as f64).round() as u64).max(1000)
}

fn pids(p: i64) -> String {
    if p <= 0 {
        "max".to_string()
    } else {
        p.to_string()
    }
}

/// The smallest memory limit or reservation Docker allows.
const MIN_MEMORY: u64 = 6 << 20;

/// Checks limits before anything is created, with Docker's messages.
pub fn validate(l: &CgroupLimits) -> Result<(), RunnerError> {
    let invalid = |m: &str| Err(RunnerError::Invalid(m.to_string()));
    if let Some(c) = l.cpus {
        if !(c > 0.0 && c.is_finite()) {
            return Err(RunnerError::Invalid(format!("invalid --cpus {c}: must be a positive number")));
        }
        if l.cpu_period.is_some() {
            return invalid("Conflicting options: Nano CPUs and CPU Period cannot both be set");
        }
        if l.cpu_quota.is_some() {
            return invalid("Conflicting options: Nano CPUs and CPU Quota cannot both be set");
        }
    }
    if l.cpu_period.is_some_and(|p| !(1000..=1_000_000).contains(&p)) {
        return invalid("CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)");
    }
    if l.cpu_quota.is_some_and(|q| q != -1 && q < 1000) {
        return invalid("CPU cfs quota can not be less than 1ms (i.e. 1000)");
    }
    if let Some(r) = l.memory_reservation {
        if l.memory.is_some_and(|m| m < r) {
            return invalid("Minimum memory limit can not be less than memory reservation limit, see usage");
        }
        if r < MIN_MEMORY {
            return invalid("Minimum memory reservation allowed is 6MB");
        }
    }
    if let Some(s) = l.memory_swappiness.filter(|s| *s > 100) {
        return Err(RunnerError::Invalid(format!("Invalid value: {s}, valid memory swappiness range is 0-100")));
    }
    if l.blkio_weight.is_some_and(|w| !(10..=1000).contains(&w)) {
        return invalid("Range of blkio weight is from 10 to 1000");
    }
    if l.memory == Some(0) {
        return Err(RunnerError::Invalid("invalid --memory 0".into()));
    }
    if let Some(total) = l.memory_swap {
        match l.memory {
            None => {
                return Err(RunnerError::Invalid(
                    "you should always set the memory limit when using the memoryswap limit, see usage".into(),
                ))
            }
            Some(m) if total != -1 && (total < 0 || (total as u64) < m) => {
                return Err(RunnerError::Invalid(
                    "minimum memoryswap limit should be larger than memory limit, see usage".into(),
                ))
            }
            _ => {}
        }
    }
    if l.cpu_shares == Some(0) {
        return Err(RunnerError::Invalid("invalid --cpu-shares 0".into()));
    }
    for (list, what) in [(&l.cpuset_cpus, "cpus"), (&l.cpuset_mems, "mems")] {
        if let Some(list) = list {
            parse_id_list(list).map_err(|_| RunnerError::Invalid(format!("Invalid value {list} for cpuset {what}")))?;
        }
    }
    Ok(())
}

/// The ids a kernel list such as `0-2,4` names (cpuset syntax), sorted.
pub fn parse_id_list(list: &str) -> Result<Vec<u32>, String> {
    let mut ids = Vec::new();
    for part in list.trim().split(',') {
        let bad = || format!("{part:?} is not N or N-M");
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().map_err(|_| bad())?, b.parse::<u32>().map_err(|_| bad())?),
            None => {
                let n = part.parse::<u32>().map_err(|_| bad())?;
                (n, n)
            }
        };
        if first > last || last - first > 1 << 16 {
            return Err(bad());
        }
        ids.extend(first..=last);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::parse_id_list;

    #[test]
    fn id_lists_as_the_kernel_writes_them() {
        assert_eq!(parse_id_list("0").unwrap(), vec![0]);
        assert_eq!(parse_id_list("0-2,4").unwrap(), vec![0, 1, 2, 4]);
        assert_eq!(parse_id_list("3,1-2,2\n").unwrap(), vec![1, 2, 3]);
        for bad in ["", "1-x", "2-1", "-1", "1,,2", "0-99999999"] {
            assert!(parse_id_list(bad).is_err(), "{bad:?}");
        }
    }
}
