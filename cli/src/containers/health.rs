//! Health checks (`HEALTHCHECK` of the image, `run --health-*`), run by
//! the container's supervisor as Docker's daemon runs them.
//!
//! Every interval the check's command is started in the container as
//! `exec` starts processes (its user, environment, working directory and
//! limits); exit status 0 is a pass, anything else (or running past the
//! timeout, when it is killed) a failure. The state is `starting` until the
//! first pass; `retries` failures in a row make it `unhealthy`, one pass
//! `healthy` again. Failures within the start period do not count while
//! the state is still `starting`. The last five results, with their output
//! (4 KiB at most), are kept in the container's state for `inspect`; `ps`
//! shows the status after `Up ...`.

use crate::containers::record::{self, Container, Proc, Status};
use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::time::{Duration, Instant};
use strata_layers::image::Healthcheck;

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;
/// Results kept, and output kept per result (Docker's).
const LOG_ENTRIES: usize = 5;
const OUTPUT_BYTES: usize = 4096;

/// `State.Health` of `inspect`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    pub failing_streak: u32,
    pub log: Vec<Probe>,
}

/// One run of the check.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Probe {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

/// The check a container runs: the image's, changed by `--health-*`, or
/// none (`--no-healthcheck`, or `NONE`).
pub fn resolve(request: &crate::commands::run::CreateArgs, image: Option<Healthcheck>) -> Result<Option<Healthcheck>> {
    if request.no_healthcheck {
        if request.health_cmd.is_some() {
            bail!("--no-healthcheck conflicts with --health-* options");
        }
        return Ok(None);
    }
    let mut check = image.unwrap_or_default();
    if let Some(cmd) = &request.health_cmd {
        check.test = Some(vec!["CMD-SHELL".into(), cmd.clone()]);
    }
    let nanos = |flag: &str, v: &Option<String>| -> Result<Option<i64>> {
        v.as_deref()
            .map(|d| {
                crate::format::go_duration(d)
                    .and_then(|d| d.num_nanoseconds())
                    .filter(|n| *n >= 0)
                    .with_context(|| format!("invalid argument {d:?} for \"--{flag}\" flag: a duration such as 10s"))
            })
            .transpose()
    };
    if let Some(n) = nanos("health-interval", &request.health_interval)? {
        check.interval = Some(n);
    }
    if let Some(n) = nanos("health-timeout", &request.health_timeout)? {
        check.timeout = Some(n);
    }
    if let Some(n) = nanos("health-start-period", &request.health_start_period)? {
        check.start_period = Some(n);
    }
    if let Some(r) = request.health_retries {
        check.retries = Some(r);
    }
    Ok(match check.test.as_deref() {
        Some([kind, ..]) if kind == "NONE" => None,
        Some([_, _, ..]) => Some(check),
        _ => None,
    })
}

/// The command line of a check: `CMD-SHELL` through `/bin/sh -c`.
fn command(check: &Healthcheck) -> Option<Vec<String>> {
    match check.test.as_deref()? {
        [kind, cmd] if kind == "CMD-SHELL" => Some(vec!["/bin/sh".into(), "-c".into(), cmd.clone()]),
        [kind, rest @ ..] if kind == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
        _ => None,
    }
}

fn duration(nanos: Option<i64>, default: Duration) -> Duration {
    nanos.filter(|n| *n > 0).map_or(default, |n| Duration::from_nanos(n as u64))
}

/// Starts checking container `c`, whose init is `init`, from a thread of
/// the supervisor; the thread ends with the init.
pub fn start(ctx: &Context, c: &Container, init: Proc) {
    let Some(check) = c.config.healthcheck.clone() else { return };
    let Some(argv) = command(&check) else { return };
    let layout = ctx.layout.clone();
    let rootless = ctx.rootless;
    let c = c.clone();
    let _ = record::update_state(&layout, &c.dir, |s| {
        s.health = Some(Health { status: "starting".into(), ..Default::default() });
    });
    let spawned = std::thread::Builder::new().name("health".into()).spawn(move || {
        let interval = duration(check.interval, DEFAULT_INTERVAL);
        let timeout = duration(check.timeout, DEFAULT_TIMEOUT);
        let start_period = duration(check.start_period, Duration::ZERO);
        let retries = check.retries.filter(|r| *r > 0).map_or(DEFAULT_RETRIES, |r| r as u32);
        let started = Instant::now();
        loop {
            std::thread::sleep(interval);
            if !init.alive() {
                return;
            }
            let begin = record::now();
            let (exit_code, output) = match probe(&c, init, &argv, timeout, rootless) {
                Ok(r) => r,
                Err(e) => (-1, format!("{e:#}")),
            };
            let result = Probe { start: begin, end: record::now(), exit_code, output };
            let in_start_period = started.elapsed() < start_period;
            let updated = record::update_state(&layout, &c.dir, |s| {
                if s.status != Status::Running || s.init != Some(init) {
                    return;
                }
                let h = s.health.get_or_insert_with(Health::default);
                h.log.push(result);
                let excess = h.log.len().saturating_sub(LOG_ENTRIES);
                h.log.drain(..excess);
                if exit_code == 0 {
                    h.status = "healthy".into();
                    h.failing_streak = 0;
                } else if !(in_start_period && h.status == "starting") {
                    h.failing_streak += 1;
                    if h.failing_streak >= retries {
                        h.status = "unhealthy".into();
                    }
                }
            });
            if updated.is_err() {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("strata: cannot start the health checks: {e}");
    }
}

/// Runs the check once: its exit status (-1 when it ran past `timeout`
/// and was killed) and the start of its output.
fn probe(c: &Container, init: Proc, argv: &[String], timeout: Duration, rootless: bool) -> Result<(i32, String)> {
    let spec = crate::commands::exec::exec_spec(c, init.pid, argv, None, &[], None, false, false)?;
    let (mut reader, writer) = std::io::pipe().context("creating the health check's output pipe")?;
    let stdin = std::fs::File::open("/dev/null")?;
    let stdio = strata_runner::Stdio {
        stdin: Some(stdin.into()),
        stdout: Some(writer.try_clone()?.into()),
        stderr: Some(writer.into()),
    };
    let cgroup =
        if rootless { None } else { strata_runner::Cgroup::of_container(init.pid, &c.config.id).ok().flatten() };
    let mut process = strata_runner::exec(init.pid, &spec, stdio, cgroup.as_ref())?;
    // Read by a thread of its own: a process the check left running may
    // hold the pipe open long after the check ended.
    let (sender, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut reader).take(OUTPUT_BYTES as u64).read_to_end(&mut out);
        let _ = sender.send(out);
        // The rest is drained so that the check never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let collect = || output.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(code) = process.try_wait()? {
            break code;
        }
        if Instant::now() > deadline {
            let _ = process.signal(libc::SIGKILL);
            let _ = process.wait();
            return Ok((-1, format!("Health check exceeded timeout ({}s)", timeout.as_secs_f64())));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok((code, String::from_utf8_lossy(&collect()).into_owned()))
}

/// What `ps` adds after `Up ...`: ` (healthy)`, ` (unhealthy)`,
/// ` (health: starting)`, or nothing without a check.
pub fn status_suffix(c: &Container) -> String {
    match c.state.health.as_ref().map(|h| h.status.as_str()) {
        Some("starting") => " (health: starting)".into(),
        Some(s) if !s.is_empty() => format!(" ({s})"),
        _ => String::new(),
    }
}
