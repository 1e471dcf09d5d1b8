//! `stats`: a live view of containers' resource use, with Docker's columns
//! (CPU %, MEM USAGE / LIMIT, MEM %, NET I/O, BLOCK I/O, PIDS) and
//! `--format` fields.
//!
//! Counters come from the container's own cgroup (root's containers always
//! have one: `cpuacct`/`memory`/`pids`/`blkio` on cgroup v1, one directory
//! on v2). An ordinary user's container usually has none; its numbers are
//! then summed over its processes from /proc (CPU time, resident memory,
//! I/O of the processes alive now), which is what such a user can see.
//! Network bytes are those of the container's network namespace (none for
//! `--network host`, as with Docker). CPU % is the CPU time used between
//! two samples over the time between them, so 100% is one core busy.

use crate::containers::record::{self, Container};
use crate::context::Context;
use crate::format::{self, Output};
use anyhow::Result;
use clap::Args;
use serde_json::Value;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    all: bool,
    /// Disable streaming stats and only pull the first result
    #[arg(long = "no-stream")]
    no_stream: bool,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Format output using a custom template ('table', 'table TEMPLATE', 'json', 'TEMPLATE')
    #[arg(long)]
    format: Option<String>,
    #[arg(value_name = "CONTAINER")]
    containers: Vec<String>,
}

const TABLE: &str =
    "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}";
const HEADERS: [(&str, &str); 10] = [
    ("Container", "CONTAINER"),
    ("ID", "CONTAINER ID"),
    ("Name", "NAME"),
    ("CPUPerc", "CPU %"),
    ("MemUsage", "MEM USAGE / LIMIT"),
    ("MemPerc", "MEM %"),
    ("NetIO", "NET I/O"),
    ("BlockIO", "BLOCK I/O"),
    ("PIDs", "PIDS"),
    ("Memory", "MEMORY"),
];
/// Time between the two samples of one CPU % reading.
const INTERVAL: Duration = Duration::from_millis(500);

pub fn stats(ctx: &Context, a: StatsArgs) -> Result<i32> {
    let out = Output::new(a.format.as_deref(), TABLE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut previous: Vec<(String, Sample)> = Vec::new();
    loop {
        let containers = chosen(ctx, &a)?;
        if previous.is_empty() {
            previous = containers.iter().map(|(_, c)| (c.config.id.clone(), Sample::of(c))).collect();
            std::thread::sleep(INTERVAL);
        }
        let rows: Vec<Value> = containers
            .iter()
            .map(|(named, c)| {
                let now = Sample::of(c);
                let before = previous.iter().find(|(id, _)| *id == c.config.id).map(|(_, s)| s);
                row(named, c, before, &now, a.no_trunc)
            })
            .collect();
        let text = out.render(&rows, &HEADERS).map_err(|e| anyhow::anyhow!("{e}"))?;
        if a.no_stream {
            print!("{text}");
            return Ok(0);
        }
        // Docker redraws the screen in place.
        print!("\x1b[2J\x1b[H{text}");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        previous = containers.iter().map(|(_, c)| (c.config.id.clone(), Sample::of(c))).collect();
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The containers to show, each with the name it was asked by.
fn chosen(ctx: &Context, a: &StatsArgs) -> Result<Vec<(String, Container)>> {
    if a.containers.is_empty() {
        let all = record::list_fresh(&ctx.layout)?;
        return Ok(all.into_iter().filter(|c| a.all || c.running()).map(|c| (c.short_id().to_string(), c)).collect());
    }
    a.containers
        .iter()
        .map(|key| {
            record::find_fresh(&ctx.layout, key)
                .map(|c| (key.clone(), c))
                .map_err(|e| crate::exit::with_code(1, Some(format!("Error response from daemon: {e:#}"))))
        })
        .collect()
}

/// One reading of a container's counters.
#[derive(Default)]
struct Sample {
    at: Option<Instant>,
    cpu_ns: u64,
    memory: u64,
    memory_limit: u64,
    pids: u64,
    net: Option<(u64, u64)>,
    io: (u64, u64),
}

impl Sample {
    fn of(c: &Container) -> Sample {
        let Some(init) = c.state.init.filter(|p| c.running() && p.alive()) else { return Sample::default() };
        let host_memory = host_memory();
        let mut s = match strata_runner::Cgroup::of_container(init.pid, &c.config.id).ok().flatten() {
            Some(cg) => {
                let u = cg.usage();
                Sample {
                    at: Some(Instant::now()),
                    cpu_ns: u.cpu_ns.unwrap_or(0),
                    memory: u.memory.unwrap_or(0).saturating_sub(u.memory_inactive_file.unwrap_or(0)),
                    memory_limit: u.memory_limit.unwrap_or(host_memory),
                    pids: u.pids.unwrap_or(0),
                    net: None,
                    io: u.io.unwrap_or((0, 0)),
                }
            }
            None => from_processes(c),
        };
        // v1 says "no limit" with a huge number.
        s.memory_limit = s.memory_limit.min(host_memory);
        if c.config.uses_pasta() {
            s.net = net_bytes(init.pid);
        }
        s
    }
}

/// Counters summed over the container's live processes (no cgroup).
fn from_processes(c: &Container) -> Sample {
    let tick_ns = 1_000_000_000 / rustix::param::clock_ticks_per_second().max(1);
    let page = rustix::param::page_size() as u64;
    let mut s = Sample { at: Some(Instant::now()), ..Default::default() };
    for pid in crate::commands::container::container_pids(c) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command (which may hold spaces) end at its last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        let ticks: u64 = f.get(11..13).map_or(0, |t| t.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
        s.cpu_ns += ticks * tick_ns;
        s.pids += 1;
        if let Some(rss) = std::fs::read_to_string(format!("/proc/{pid}/statm"))
            .ok()
            .and_then(|m| m.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        {
            s.memory += rss * page;
        }
        if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
            let field = |k: &str| {
                io.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse::<u64>().ok())).unwrap_or(0)
            };
            s.io.0 += field("read_bytes:");
            s.io.1 += field("write_bytes:");
        }
    }
    s.memory_limit = host_memory();
    s
}

/// Received and sent bytes of every interface but `lo` in the network
/// namespace of `pid`.
fn net_bytes(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut total = (0, 0);
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else { continue };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = counters.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        if f.len() >= 9 {
            total.0 += f[0];
            total.1 += f[8];
        }
    }
    Some(total)
}

/// The limit a container without one has: the host's memory.
fn host_memory() -> u64 {
    match super::sysinfo::mem_total() {
        0 => u64::MAX,
        total => total,
    }
}

fn row(named: &str, c: &Container, before: Option<&Sample>, now: &Sample, no_trunc: bool) -> Value {
    let cpu = match (before.and_then(|b| b.at.map(|t| (t, b.cpu_ns))), now.at) {
        (Some((t0, cpu0)), Some(t1)) if t1 > t0 => {
            now.cpu_ns.saturating_sub(cpu0) as f64 / (t1 - t0).as_nanos() as f64 * 100.0
        }
        _ => 0.0,
    };
    let mem_perc = if now.memory_limit > 0 { now.memory as f64 / now.memory_limit as f64 * 100.0 } else { 0.0 };
    let pair = |(a, b): (u64, u64)| format!("{} / {}", format::human_size3(a), format::human_size3(b));
    let id = if no_trunc { c.config.id.clone() } else { c.short_id().to_string() };
    // A container that is not running reads all zeros, as with Docker.
    format::row([
        ("Container", named.to_string()),
        ("ID", id),
        ("Name", c.config.name.clone()),
        ("CPUPerc", format!("{cpu:.2}%")),
        ("MemUsage", format!("{} / {}", format::bytes_size(now.memory), format::bytes_size(now.memory_limit))),
        ("MemPerc", format!("{mem_perc:.2}%")),
        ("NetIO", pair(now.net.unwrap_or((0, 0)))),
        ("BlockIO", pair(now.io)),
        ("PIDs", now.pids.to_string()),
        ("Memory", format::bytes_size(now.memory)),
    ])
}
