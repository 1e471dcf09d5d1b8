//! The resource flags `run`/`create` and `update` share (memory, CPU,
//! pids, cpuset, block I/O): their clap definitions, the way they are kept
//! in a container's record, Docker's checks, and their translation into the
//! runner's [`CgroupLimits`]. The per-device I/O limits, which `update`
//! does not take, are parsed here too.

use super::spec::{parse_bytes, parse_swap};
use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use strata_runner::{CgroupLimits, IoThrottle, IoThrottleKind};

/// Flattened into `run`/`create`'s flags (and so into the record, with the
/// same keys as before they were grouped) and into `update`'s.
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ResourceArgs {
    /// Memory limit (e.g. 512m, 1g)
    #[arg(short = 'm', long, value_name = "bytes")]
    pub memory: Option<String>,
    /// Swap limit equal to memory plus swap: -1 to enable unlimited swap
    #[arg(long = "memory-swap", value_name = "bytes", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Memory soft limit
    #[arg(long = "memory-reservation", value_name = "bytes")]
    pub memory_reservation: Option<String>,
    /// CPU shares (relative weight)
    #[arg(short = 'c', long = "cpu-shares", value_name = "int")]
    pub cpu_shares: Option<u64>,
    /// Number of CPUs
    #[arg(long, value_name = "decimal")]
    pub cpus: Option<f64>,
    /// Limit CPU CFS (Completely Fair Scheduler) period
    #[arg(long = "cpu-period", value_name = "int")]
    pub cpu_period: Option<u64>,
    /// Limit CPU CFS (Completely Fair Scheduler) quota
    #[arg(long = "cpu-quota", value_name = "int", allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// Tune container pids limit (set -1 for unlimited)
    #[arg(long = "pids-limit", value_name = "int", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// CPUs in which to allow execution (0-3, 0,1)
    #[arg(long = "cpuset-cpus", value_name = "string")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes in which to allow execution (0-3, 0,1)
    #[arg(long = "cpuset-mems", value_name = "string")]
    pub cpuset_mems: Option<String>,
    /// Block IO (relative weight), between 10 and 1000, or 0 to disable (default 0)
    #[arg(long = "blkio-weight", value_name = "uint16")]
    pub blkio_weight: Option<u16>,
}

/// The limits only `run`/`create` take: per-device block I/O limits
/// (`DEVICE:RATE`), and the OOM killer and swappiness of cgroup v1.
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
pub struct CreateLimitArgs {
    /// Disable OOM Killer
    #[arg(long = "oom-kill-disable")]
    pub oom_kill_disable: bool,
    /// Tune container memory swappiness (0 to 100) (default -1)
    #[arg(long = "memory-swappiness", value_name = "int", allow_hyphen_values = true)]
    pub memory_swappiness: Option<i64>,
    /// Limit read rate (bytes per second) from a device
    #[arg(long = "device-read-bps", value_name = "list")]
    pub device_read_bps: Vec<String>,
    /// Limit write rate (bytes per second) to a device
    #[arg(long = "device-write-bps", value_name = "list")]
    pub device_write_bps: Vec<String>,
    /// Limit read rate (IO per second) from a device
    #[arg(long = "device-read-iops", value_name = "list")]
    pub device_read_iops: Vec<String>,
    /// Limit write rate (IO per second) to a device
    #[arg(long = "device-write-iops", value_name = "list")]
    pub device_write_iops: Vec<String>,
}

/// Docker's warning when the kernel cannot weigh block I/O; the weight is
/// then dropped, as Docker drops it.
const NO_BLKIO_WEIGHT: &str =
    "WARNING: Your kernel does not support Block I/O weight or the cgroup is not mounted. Weight discarded.";

impl ResourceArgs {
    /// True when no flag was given (`update` needs one).
    pub fn is_empty(&self) -> bool {
        *self == ResourceArgs::default()
    }

    /// Every flag `newer` gives replaces this one's (`update` on a record).
    pub fn merge(&mut self, newer: &ResourceArgs) {
        fn take<T: Clone>(old: &mut Option<T>, new: &Option<T>) {
            if new.is_some() {
                old.clone_from(new);
            }
        }
        take(&mut self.memory, &newer.memory);
        take(&mut self.memory_swap, &newer.memory_swap);
        take(&mut self.memory_reservation, &newer.memory_reservation);
        take(&mut self.cpu_shares, &newer.cpu_shares);
        take(&mut self.cpus, &newer.cpus);
        take(&mut self.cpu_period, &newer.cpu_period);
        take(&mut self.cpu_quota, &newer.cpu_quota);
        take(&mut self.pids_limit, &newer.pids_limit);
        take(&mut self.cpuset_cpus, &newer.cpuset_cpus);
        take(&mut self.cpuset_mems, &newer.cpuset_mems);
        take(&mut self.blkio_weight, &newer.blkio_weight);
    }

    /// Drops a `--blkio-weight` the kernel cannot apply, with Docker's
    /// warning on stderr. A weight of 0 means none.
    pub fn drop_unsupported(&mut self) {
        if self.blkio_weight == Some(0) {
            self.blkio_weight = None;
        }
        if self.blkio_weight.is_some() && !strata_runner::supports_io_weight() {
            eprintln!("{NO_BLKIO_WEIGHT}");
            self.blkio_weight = None;
        }
    }

    /// The runner's limits for these flags (those not given stay unset),
    /// checked with Docker's messages.
    pub fn limits(&self) -> Result<CgroupLimits> {
        let limits = CgroupLimits {
            memory: self.memory.as_deref().map(parse_bytes).transpose()?,
            cpus: self.cpus,
            pids: self.pids_limit,
            cpu_shares: self.cpu_shares,
            memory_swap: self.memory_swap.as_deref().map(parse_swap).transpose()?,
            cpuset_cpus: self.cpuset_cpus.clone(),
            cpuset_mems: self.cpuset_mems.clone(),
            // 0 is Docker's "not set" for these.
            cpu_period: self.cpu_period.filter(|p| *p != 0),
            cpu_quota: self.cpu_quota.filter(|q| *q != 0),
            memory_reservation: self.memory_reservation.as_deref().map(parse_bytes).transpose()?.filter(|r| *r != 0),
            blkio_weight: self.blkio_weight.filter(|w| *w != 0),
            ..CgroupLimits::default()
        };
        if limits.cpu_shares == Some(0) {
            bail!("invalid --cpu-shares 0");
        }
        strata_runner::validate_limits(&limits)?;
        super::spec::check_cpuset(self.cpuset_cpus.as_deref(), self.cpuset_mems.as_deref())?;
        Ok(limits)
    }

    /// Their part of `inspect`'s HostConfig, in Docker's names.
    pub fn host_config(&self, devices: &CreateLimitArgs) -> serde_json::Map<String, Value> {
        let bytes = |v: &Option<String>| v.as_deref().and_then(|m| parse_bytes(m).ok()).unwrap_or(0);
        let rates = |list: &[String]| {
            let shown: Vec<Value> = list
                .iter()
                .filter_map(|d| d.rsplit_once(':'))
                .map(|(path, rate)| json!({"Path": path, "Rate": parse_bytes(rate).unwrap_or(0)}))
                .collect();
            if shown.is_empty() {
                Value::Null
            } else {
                Value::Array(shown)
            }
        };
        let v = json!({
            "Memory": bytes(&self.memory),
            "MemoryReservation": bytes(&self.memory_reservation),
            "MemorySwap": self.memory_swap.as_deref().and_then(|m| parse_swap(m).ok()).unwrap_or(0),
            "NanoCpus": self.cpus.map(|c| (c * 1e9) as i64).unwrap_or(0),
            "CpuShares": self.cpu_shares.unwrap_or(0),
            "CpuPeriod": self.cpu_period.unwrap_or(0),
            "CpuQuota": self.cpu_quota.unwrap_or(0),
            "PidsLimit": self.pids_limit,
            "CpusetCpus": self.cpuset_cpus.clone().unwrap_or_default(),
            "CpusetMems": self.cpuset_mems.clone().unwrap_or_default(),
            "BlkioWeight": self.blkio_weight.unwrap_or(0),
            "BlkioDeviceReadBps": rates(&devices.device_read_bps),
            "BlkioDeviceWriteBps": rates(&devices.device_write_bps),
            "BlkioDeviceReadIOps": rates(&devices.device_read_iops),
            "BlkioDeviceWriteIOps": rates(&devices.device_write_iops),
            "OomKillDisable": devices.oom_kill_disable,
            "MemorySwappiness": devices.memory_swappiness,
        });
        match v {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }
}

impl CreateLimitArgs {
    /// Docker's checks and warnings: a swappiness outside -1..=100 is
    /// refused; where the kernel has no v1 memory controller, both flags
    /// are dropped with Docker's warnings (to stderr), as is the advice
    /// against disabling the OOM killer without a memory limit.
    pub fn check(&mut self, memory_limited: bool) -> Result<()> {
        if let Some(s) = self.memory_swappiness.filter(|s| !(-1..=100).contains(s)) {
            bail!("Invalid value: {s}, valid memory swappiness range is 0-100");
        }
        if self.memory_swappiness == Some(-1) {
            self.memory_swappiness = None;
        }
        let v1_memory = std::path::Path::new("/sys/fs/cgroup/memory/memory.swappiness").exists();
        if self.memory_swappiness.is_some() && !v1_memory {
            eprintln!(
                "WARNING: Your kernel does not support memory swappiness capabilities or the cgroup is not mounted. \
                 Memory swappiness discarded."
            );
            self.memory_swappiness = None;
        }
        if self.oom_kill_disable && !v1_memory {
            eprintln!("WARNING: Your kernel does not support OomKillDisable. OomKillDisable discarded.");
            self.oom_kill_disable = false;
        }
        if self.oom_kill_disable && !memory_limited {
            eprintln!(
                "WARNING: OOM killer is disabled for the container, but no memory limit is set, this can result in \
                 the system running out of resources."
            );
        }
        Ok(())
    }

    /// Writes these limits into `limits`.
    pub fn apply(&self, limits: &mut CgroupLimits) -> Result<()> {
        limits.io_throttles = self.throttles()?;
        limits.oom_kill_disable = self.oom_kill_disable;
        limits.memory_swappiness = self.memory_swappiness.and_then(|s| u64::try_from(s).ok());
        Ok(())
    }

    /// The limits as the runner takes them: each device's numbers come from
    /// the host's device node, which must be a block device.
    pub fn throttles(&self) -> Result<Vec<IoThrottle>> {
        let mut out = Vec::new();
        for (kind, list) in IoThrottleKind::ALL.into_iter().zip([
            &self.device_read_bps,
            &self.device_write_bps,
            &self.device_read_iops,
            &self.device_write_iops,
        ]) {
            for given in list {
                out.push(parse_throttle(kind, given)?);
            }
        }
        Ok(out)
    }
}

fn flag_name(kind: IoThrottleKind) -> &'static str {
    match kind {
        IoThrottleKind::ReadBps => "--device-read-bps",
        IoThrottleKind::WriteBps => "--device-write-bps",
        IoThrottleKind::ReadIops => "--device-read-iops",
        IoThrottleKind::WriteIops => "--device-write-iops",
    }
}

/// `/dev/sda:1mb` (rates in bytes take k, m, g suffixes) or `/dev/sda:300`.
fn parse_throttle(kind: IoThrottleKind, given: &str) -> Result<IoThrottle> {
    use std::os::unix::fs::FileTypeExt;
    let flag = flag_name(kind);
    let (path, rate) = given
        .rsplit_once(':')
        .with_context(|| format!("invalid argument {given:?} for \"{flag}\" flag: bad format: {given}"))?;
    if !path.starts_with("/dev/") {
        bail!("invalid argument {given:?} for \"{flag}\" flag: {path} is not an absolute path");
    }
    let bytes = matches!(kind, IoThrottleKind::ReadBps | IoThrottleKind::WriteBps);
    let rate = if bytes { parse_bytes(rate).ok() } else { rate.parse::<u64>().ok() }.filter(|r| *r > 0).with_context(
        || {
            format!(
            "invalid argument {given:?} for \"{flag}\" flag: invalid rate for device: {given}. The correct format is \
             <device-path>:<number>{}. Number must be a positive integer.{}",
            if bytes { "[<unit>]" } else { "" },
            if bytes { " Unit is optional and can be kb, mb, or gb" } else { "" }
        )
        },
    )?;
    let meta = std::fs::metadata(path).with_context(|| format!("{flag} {given}: no such device {path}"))?;
    if !meta.file_type().is_block_device() {
        bail!("{flag} {given}: {path} is not a block device");
    }
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    Ok(IoThrottle { major: libc::major(rdev), minor: libc::minor(rdev), kind, rate })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_replaces_only_what_it_gives() {
        let mut record = ResourceArgs { memory: Some("64m".into()), cpu_quota: Some(50_000), ..Default::default() };
        record.merge(&ResourceArgs { cpu_quota: Some(-1), cpu_period: Some(20_000), ..Default::default() });
        assert_eq!(record.memory.as_deref(), Some("64m"));
        assert_eq!((record.cpu_quota, record.cpu_period), (Some(-1), Some(20_000)));
    }

    #[test]
    fn dockers_checks() {
        let err = |r: ResourceArgs| r.limits().unwrap_err().to_string();
        assert!(err(ResourceArgs { cpus: Some(1.0), cpu_period: Some(50_000), ..Default::default() })
            .contains("Nano CPUs and CPU Period cannot both be set"));
        assert!(err(ResourceArgs { cpu_period: Some(999), ..Default::default() }).contains("cfs period"));
        assert!(err(ResourceArgs { cpu_quota: Some(10), ..Default::default() }).contains("cfs quota"));
        assert!(err(ResourceArgs {
            memory: Some("16m".into()),
            memory_reservation: Some("32m".into()),
            ..Default::default()
        })
        .contains("can not be less than memory reservation"));
        assert!(err(ResourceArgs { blkio_weight: Some(5), ..Default::default() }).contains("from 10 to 1000"));
        let l = ResourceArgs { cpu_quota: Some(-1), cpu_period: Some(0), ..Default::default() }.limits().unwrap();
        assert_eq!((l.cpu_quota, l.cpu_period), (Some(-1), None));
    }

    #[test]
    fn device_limits() {
        let bad = |kind, s: &str| parse_throttle(kind, s).unwrap_err().to_string();
        assert!(bad(IoThrottleKind::ReadBps, "sda").contains("bad format"));
        assert!(bad(IoThrottleKind::ReadBps, "sda:1mb").contains("not an absolute path"));
        assert!(bad(IoThrottleKind::ReadBps, "/dev/sda:fast").contains("invalid rate"));
        assert!(bad(IoThrottleKind::ReadIops, "/dev/null:10").contains("not a block device"));
    }
}
