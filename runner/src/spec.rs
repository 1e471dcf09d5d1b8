//! What to run and how: the runner's equivalent of an OCI runtime `config.json`, reduced to what
//! strata needs and with Docker's defaults (`Spec::new`).
//!
//! The spec is plain data (serde) so that it can be stored in a container record and replayed.
//! File descriptors for stdio are not part of it; they are passed to `spawn` separately.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::seccomp::SeccompProfile;

use crate::caps::{Cap, DEFAULT_CAPS};

/// The default `PATH` when the image does not set one (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default masked paths: bind-mounted over with /dev/null (files) or an empty read-only
/// tmpfs (directories).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's default read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The full description of a container process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The root filesystem (a directory; typically strata's union mount). It becomes `/`.
    pub rootfs: PathBuf,
    /// argv; `args[0]` is looked up in the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries. `PATH` here also drives the lookup of `args[0]`.
    pub env: Vec<String>,
    /// Working directory inside the container; created when missing (like Docker).
    pub cwd: String,
    pub user: User,
    /// Set in a new UTS namespace; empty leaves the namespace's inherited name.
    pub hostname: String,
    /// The NIS domain name, set with the host name (`--domainname`); empty: none.
    #[serde(default)]
    pub domainname: String,
    /// The OOM killer's preference for this container's processes
    /// (`--oom-score-adj`, -1000 to 1000); None: inherited.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    pub namespaces: Namespaces,
    /// `None` runs without a user namespace (needs real root). Anything else creates one.
    pub id_mapping: IdMapping,
    /// Extra mounts, applied in order after /proc, /sys and /dev.
    pub mounts: Vec<Mount>,
    pub readonly_rootfs: bool,
    /// /etc/hosts, /etc/hostname, /etc/resolv.conf to bind into the container.
    pub etc_files: Option<EtcFiles>,
    /// The capability set of the process (bounding, permitted, effective; inheritable and
    /// ambient stay empty as in Docker). A non-root user keeps only the bounding set across exec.
    pub capabilities: Vec<Cap>,
    pub no_new_privileges: bool,
    pub rlimits: Vec<Rlimit>,
    /// Allocate a pseudo-terminal: the slave becomes the controlling terminal and stdio of the
    /// process, the master is returned to the caller.
    pub tty: bool,
    /// Run a tiny reaper as pid 1 that forwards signals to the command and reaps zombies.
    pub init: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// Mount /sys read-write (privileged containers).
    pub sys_rw: bool,
    pub cgroup: Option<CgroupSpec>,
    pub network: Network,
    /// The syscall filter (see [`crate::seccomp`]); None: none.
    #[serde(default)]
    pub seccomp: Option<SeccompProfile>,
    /// A second interface on a bridge in another network namespace (a user-defined network),
    /// set up after the network namespace exists (as pasta is) and before the command runs.
    #[serde(default)]
    pub bridge: Option<BridgeAttachment>,
    /// Size of /dev/shm in bytes (Docker's default: 64 MiB).
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// Namespaced kernel parameters (`net.ipv4.ip_forward`, `1`) set in
    /// the container's namespaces before its command runs.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
}

impl Spec {
    /// A spec with Docker's defaults: root user, all namespaces but the user namespace, host
    /// network, Docker's default capabilities, masked and read-only paths.
    pub fn new(rootfs: impl Into<PathBuf>, args: Vec<String>) -> Spec {
        Spec {
            rootfs: rootfs.into(),
            args,
            env: vec![format!("PATH={DEFAULT_PATH}")],
            cwd: "/".to_string(),
            user: User::default(),
            hostname: String::new(),
            domainname: String::new(),
            oom_score_adj: None,
            namespaces: Namespaces::default(),
            id_mapping: IdMapping::None,
            mounts: Vec::new(),
            readonly_rootfs: false,
            etc_files: None,
            capabilities: DEFAULT_CAPS.to_vec(),
            no_new_privileges: false,
            rlimits: Vec::new(),
            tty: false,
            init: false,
            masked_paths: DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            readonly_paths: DEFAULT_READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
            sys_rw: false,
            cgroup: None,
            network: Network::Host,
            bridge: None,
            seccomp: None,
            shm_size: None,
            sysctls: Vec::new(),
        }
    }

    /// `--privileged`: every capability, nothing masked or read-only, /sys writable.
    pub fn set_privileged(&mut self) {
        self.capabilities = Cap::all();
        self.masked_paths.clear();
        self.readonly_paths.clear();
        self.sys_rw = true;
    }

    /// Docker's `--cap-add` / `--cap-drop` on top of the current set ([`Cap::adjusted`]).
    pub fn adjust_capabilities(&mut self, add: &[Cap], drop: &[Cap], add_all: bool, drop_all: bool) {
        self.capabilities = Cap::adjusted(&self.capabilities, add, drop, add_all, drop_all);
    }

    /// The value of `PATH` in `env`, or Docker's default.
    pub fn path_env(&self) -> &str {
        path_from_env(&self.env)
    }
}

pub(crate) fn path_from_env(env: &[String]) -> &str {
    env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH)
}

/// The user the process runs as, in container ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Which namespaces to create besides the mount namespace (always new) and the network namespace
/// (chosen by [`Network`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Namespaces {
    pub pid: bool,
    pub uts: bool,
    pub ipc: bool,
    pub cgroup: bool,
    /// Instead of a new pid namespace: that of the running process `pid_of`, another
    /// container's init (`--pid container:NAME`), in which the container's process is then not
    /// pid 1. The caller must be in (or, as root, may be outside) the user namespace that owns
    /// it.
    #[serde(default)]
    pub pid_of: Option<i32>,
    /// Instead of a new IPC namespace: that of the running process `ipc_of`, another
    /// container's init (`--ipc container:NAME`), with the same /dev/shm. The same rule for the
    /// user namespace as for `pid_of`.
    #[serde(default)]
    pub ipc_of: Option<i32>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces { pid: true, uts: true, ipc: true, cgroup: false, pid_of: None, ipc_of: None }
    }
}

/// One line of a uid_map/gid_map: `size` ids starting at `container` map to ids starting at `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// How container ids map to host ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdMapping {
    /// No user namespace: container ids are host ids (root only).
    None,
    /// A new user namespace with these maps. Root writes them directly; an ordinary user gets a
    /// one-line map of its own ids written directly, anything larger through
    /// newuidmap/newgidmap (which check /etc/subuid and /etc/subgid).
    Map { uids: Vec<IdRange>, gids: Vec<IdRange> },
}

impl IdMapping {
    /// Whether container gid `gid` exists in this mapping.
    pub fn maps_gid(&self, gid: u32) -> bool {
        match self {
            IdMapping::None => true,
            IdMapping::Map { gids, .. } => gids.iter().any(|r| gid >= r.container && gid - r.container < r.size),
        }
    }

    /// Whether container uid `uid` exists in this mapping.
    pub fn maps_uid(&self, uid: u32) -> bool {
        match self {
            IdMapping::None => true,
            IdMapping::Map { uids, .. } => uids.iter().any(|r| uid >= r.container && uid - r.container < r.size),
        }
    }
}

/// A mount inside the container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container; symlinks are resolved inside the rootfs.
    pub target: String,
    pub kind: MountKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MountKind {
    /// A recursive bind mount of a host path (a file or a directory; volumes are bind mounts of
    /// their store directory). The target is created like the source (file or directory).
    Bind { source: PathBuf, readonly: bool },
    /// A tmpfs with Docker's `--tmpfs` options (e.g. `rw,exec,size=64m,mode=1777`): the mount
    /// flags among them (`ro`, `exec`, `suid`, `noatime`, ...) adjust the default
    /// `nosuid,nodev,noexec`, the rest go to tmpfs. It is always `nodev` (see the runner's /dev
    /// setup); `readonly` makes it read-only whatever the options say.
    Tmpfs {
        options: String,
        #[serde(default)]
        readonly: bool,
    },
}

/// Contents for /etc/hosts, /etc/hostname and /etc/resolv.conf. The runner writes the given
/// files into `dir` (a host directory private to the container, e.g. its record directory) and
/// bind-mounts them, so that the container can edit them like in Docker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcFiles {
    pub dir: PathBuf,
    pub hosts: Option<String>,
    pub hostname: Option<String>,
    pub resolv_conf: Option<String>,
}

/// A resource limit (Docker's `--ulimit name=soft:hard`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Docker's names: core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc,
    /// rss, rtprio, rttime, sigpending, stack, as.
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// Cgroup placement and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// Leaf name of the container's cgroup (e.g. the container id).
    pub name: String,
    pub limits: CgroupLimits,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupLimits {
    /// Bytes (`--memory`).
    pub memory: Option<u64>,
    /// CPUs (`--cpus`), e.g. 0.5.
    pub cpus: Option<f64>,
    /// Maximum number of tasks (`--pids-limit`).
    pub pids: Option<i64>,
    /// Relative CPU weight (`--cpu-shares`, 1024 by default).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// Memory plus swap in bytes (`--memory-swap`); -1 for unlimited swap.
    #[serde(default)]
    pub memory_swap: Option<i64>,
    /// CPUs the container may run on (`--cpuset-cpus`, a list such as `0-2,4`).
    #[serde(default)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes it may allocate on (`--cpuset-mems`).
    #[serde(default)]
    pub cpuset_mems: Option<String>,
    /// CFS scheduler period in µs (`--cpu-period`), alone or with `cpu_quota`.
    #[serde(default)]
    pub cpu_period: Option<u64>,
    /// CPU time per period in µs (`--cpu-quota`); -1 for no limit.
    #[serde(default)]
    pub cpu_quota: Option<i64>,
    /// Soft memory limit in bytes (`--memory-reservation`): what the kernel
    /// reclaims the container down to first when memory runs short.
    #[serde(default)]
    pub memory_reservation: Option<u64>,
    /// Relative block I/O weight, 10-1000 (`--blkio-weight`).
    #[serde(default)]
    pub blkio_weight: Option<u16>,
    /// Per-device rate limits (`--device-read-bps` and the like).
    #[serde(default)]
    pub io_throttles: Vec<IoThrottle>,
    /// The OOM killer leaves the container alone; it waits for memory
    /// instead (`--oom-kill-disable`, cgroup v1 only).
    #[serde(default)]
    pub oom_kill_disable: bool,
    /// How readily its anonymous memory is swapped, 0-100 (`--memory-swappiness`, cgroup v1 only).
    #[serde(default)]
    pub memory_swappiness: Option<u64>,
}

/// One `--device-{read,write}-{bps,iops}` limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoThrottle {
    /// The block device's numbers.
    pub major: u32,
    pub minor: u32,
    pub kind: IoThrottleKind,
    /// Bytes or operations per second.
    pub rate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoThrottleKind {
    ReadBps,
    WriteBps,
    ReadIops,
    WriteIops,
}

impl IoThrottleKind {
    pub const ALL: [IoThrottleKind; 4] =
        [IoThrottleKind::ReadBps, IoThrottleKind::WriteBps, IoThrottleKind::ReadIops, IoThrottleKind::WriteIops];

    /// The v1 blkio file that holds limits of this kind.
    pub fn v1_file(self) -> &'static str {
        match self {
            IoThrottleKind::ReadBps => "blkio.throttle.read_bps_device",
            IoThrottleKind::WriteBps => "blkio.throttle.write_bps_device",
            IoThrottleKind::ReadIops => "blkio.throttle.read_iops_device",
            IoThrottleKind::WriteIops => "blkio.throttle.write_iops_device",
        }
    }

    /// Its key in a v2 `io.max` line.
    pub fn v2_key(self) -> &'static str {
        match self {
            IoThrottleKind::ReadBps => "rbps",
            IoThrottleKind::WriteBps => "wbps",
            IoThrottleKind::ReadIops => "riops",
            IoThrottleKind::WriteIops => "wiops",
        }
    }
}

impl CgroupLimits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none()
            && self.cpus.is_none()
            && self.pids.is_none()
            && self.cpu_shares.is_none()
            && self.memory_swap.is_none()
            && self.cpuset_cpus.is_none()
            && self.cpuset_mems.is_none()
            && self.cpu_period.is_none()
            && self.cpu_quota.is_none()
            && self.memory_reservation.is_none()
            && self.blkio_weight.is_none()
            && self.io_throttles.is_empty()
            && !self.oom_kill_disable
            && self.memory_swappiness.is_none()
    }

    fn asks_cpuset(&self) -> bool {
        self.cpuset_cpus.is_some() || self.cpuset_mems.is_some()
    }

    /// The v1 controller a limit of each kind needs, with whether one is
    /// asked. v2 has the same names, except that blkio is `io` there.
    pub(crate) fn controllers(&self) -> [(&'static str, bool); 5] {
        [
            (
                "memory",
                self.memory.is_some()
                    || self.memory_swap.is_some()
                    || self.memory_reservation.is_some()
                    || self.oom_kill_disable
                    || self.memory_swappiness.is_some(),
            ),
            (
                "cpu",
                self.cpus.is_some()
                    || self.cpu_shares.is_some()
                    || self.cpu_period.is_some()
                    || self.cpu_quota.is_some(),
            ),
            ("pids", self.pids.is_some()),
            ("cpuset", self.asks_cpuset()),
            ("blkio", self.blkio_weight.is_some() || !self.io_throttles.is_empty()),
        ]
    }
}

/// Network mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// Share the caller's network namespace (`--network host`).
    Host,
    /// A new network namespace with only loopback (`--network none`).
    None,
    /// A new network namespace connected to the host by `pasta`, with published ports.
    Private { ports: Vec<PortForward> },
    /// The network namespace of the running process `pid`: another container's init
    /// (`--network container:NAME`). The caller must be in (or, as root, may be outside) the
    /// user namespace that owns it.
    Join { pid: i32 },
}

/// A veth between the container's network namespace and a bridge in the network namespace of
/// process `holder_pid`: `host_veth` on the bridge `bridge` there, `interface` with `address`
/// (`A.B.C.D/N`) in the container. The caller must have CAP_SYS_ADMIN and CAP_NET_ADMIN over
/// both namespaces (root, or root of the user namespace that owns them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeAttachment {
    pub holder_pid: i32,
    pub bridge: String,
    pub host_veth: String,
    pub interface: String,
    pub address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// `-p [host_ip:]host_port:container_port[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// What to run in an existing container (`exec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub tty: bool,
    pub capabilities: Vec<Cap>,
    pub no_new_privileges: bool,
    /// The container's resource limits: an exec'd process gets them too (as with runc), not
    /// those of whoever runs the exec.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// The container's syscall filter, which an exec'd process runs under too.
    #[serde(default)]
    pub seccomp: Option<SeccompProfile>,
    /// The container's `--oom-score-adj`, which an exec'd process gets too.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

impl ExecSpec {
    pub fn new(args: Vec<String>) -> ExecSpec {
        ExecSpec {
            args,
            env: vec![format!("PATH={DEFAULT_PATH}")],
            cwd: "/".to_string(),
            user: User::default(),
            tty: false,
            capabilities: DEFAULT_CAPS.to_vec(),
            no_new_privileges: false,
            rlimits: Vec::new(),
            seccomp: None,
            oom_score_adj: None,
        }
    }
}

/// The RLIMIT_* resource for a Docker ulimit name.
pub(crate) fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        "as" => libc::RLIMIT_AS,
        _ => return None,
    })
}
