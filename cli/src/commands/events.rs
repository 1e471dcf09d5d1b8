//! `events` (`system events`): the recorded events (see `crate::events`),
//! with Docker's `--since`, `--until`, `--filter` and `--format`. Without
//! `--until` it goes on printing new events until interrupted, as Docker
//! does.

use crate::context::Context;
use crate::events::{self, Event};
use anyhow::{bail, Context as _, Result};
use clap::Args;
use std::io::{BufRead, Write};
use std::time::Duration;

#[derive(Args)]
pub struct EventsArgs {
    /// Show all events created since timestamp
    #[arg(long, value_name = "string")]
    since: Option<String>,
    /// Stream events until this timestamp
    #[arg(long, value_name = "string")]
    until: Option<String>,
    /// Filter output based on conditions provided (type=, event=, container=, image=, network=, volume=)
    #[arg(short, long = "filter", value_name = "filter")]
    filter: Vec<String>,
    /// Format output using a custom template
    #[arg(long, value_name = "string")]
    format: Option<String>,
}

pub fn run(ctx: &Context, a: EventsArgs) -> Result<i32> {
    let bound = |s: &Option<String>| s.as_deref().map(super::container::log_time_bound).transpose();
    let (since, until) = (bound(&a.since)?, bound(&a.until)?);
    // Streaming with no --since: what happens from now on, as Docker does.
    let since = since.or_else(|| until.is_none().then(chrono::Utc::now));
    let mut filters: Vec<(String, String)> = Vec::new();
    for f in &a.filter {
        let (k, v) = f.split_once('=').with_context(|| format!("bad format of filter (expected name=value): {f}"))?;
        if !matches!(k, "type" | "event" | "action" | "container" | "image" | "network" | "volume") {
            bail!("invalid filter '{k}'");
        }
        filters.push((k.to_string(), v.to_string()));
    }
    let wanted = |e: &Event| {
        let nanos = e.time_nano;
        let after = since.is_none_or(|s| nanos >= s.timestamp_nanos_opt().unwrap_or(0));
        let before = until.is_none_or(|u| nanos <= u.timestamp_nanos_opt().unwrap_or(i64::MAX));
        // Filters of one key are alternatives; different keys must all hold.
        let keys: std::collections::BTreeSet<&str> = filters.iter().map(|(k, _)| k.as_str()).collect();
        after
            && before
            && keys.into_iter().all(|key| filters.iter().filter(|(k, _)| k == key).any(|(_, v)| matches(e, key, v)))
    };
    let out = std::io::stdout();
    let print = |e: &Event| -> Result<()> {
        let line = match a.format.as_deref() {
            Some("json") => serde_json::to_string(&docker_json(e))?,
            Some(f) => crate::format::render_loose(f, &template_data(e))?,
            None => events::text(e),
        };
        let mut out = out.lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    };
    let path = events::log_path(&ctx.layout);
    let mut old = path.clone().into_os_string();
    old.push(".1");
    for p in [std::path::PathBuf::from(old), path.clone()] {
        if p != path {
            if let Ok(text) = std::fs::read_to_string(&p) {
                for e in text.lines().filter_map(|l| serde_json::from_str::<Event>(l).ok()).filter(&wanted) {
                    print(&e)?;
                }
            }
        }
    }
    // The current file: read to its end, then (without --until) follow it.
    let mut file = open_when_there(&path, until.is_none())?;
    loop {
        let Some(f) = file.as_mut() else { return Ok(0) };
        let mut line = String::new();
        let n = f.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            if let Some(e) = serde_json::from_str::<Event>(line.trim_end()).ok().filter(&wanted) {
                print(&e)?;
            }
            continue;
        }
        if until.is_some_and(|u| chrono::Utc::now() > u) || (until.is_some() && n == 0) {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
        // Rotated: go on with the new file.
        if rotated(&path, f.get_ref()) {
            file = open_when_there(&path, true)?;
        }
    }
}

fn matches(e: &Event, key: &str, value: &str) -> bool {
    let attr = |k: &str| e.actor.attributes.get(k).map(String::as_str);
    match key {
        "type" => e.kind == value,
        "event" | "action" => e.action == value,
        "container" => e.kind == "container" && (e.actor.id.starts_with(value) || attr("name") == Some(value)),
        "image" => e.actor.id == value || attr("image") == Some(value) || attr("name") == Some(value),
        "network" => e.kind == "network" && (e.actor.id.starts_with(value) || attr("name") == Some(value)),
        "volume" => e.kind == "volume" && e.actor.id == value,
        _ => false,
    }
}

/// The event log for reading; None when there is none and `wait` is off.
fn open_when_there(path: &std::path::Path, wait: bool) -> Result<Option<std::io::BufReader<std::fs::File>>> {
    loop {
        match std::fs::File::open(path) {
            Ok(f) => return Ok(Some(std::io::BufReader::new(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && wait => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
}

fn rotated(path: &std::path::Path, current: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(path), current.metadata()) {
        (Ok(now), Ok(ours)) => now.ino() != ours.ino(),
        _ => false,
    }
}

/// Docker's legacy fields of container and image events: `status` (the
/// action), `id` and `from` (the container's image).
fn legacy_fields(e: &Event) -> Option<(String, String, String)> {
    matches!(e.kind.as_str(), "container" | "image").then(|| {
        let from = e.actor.attributes.get("image").cloned().unwrap_or_default();
        (e.action.clone(), e.actor.id.clone(), from)
    })
}

/// An event as `--format json` prints it: Docker's JSON keys.
fn docker_json(e: &Event) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let (Some((status, id, from)), serde_json::Value::Object(m)) = (legacy_fields(e), &mut v) {
        m.insert("status".into(), status.into());
        m.insert("id".into(), id.into());
        if !from.is_empty() {
            m.insert("from".into(), from.into());
        }
    }
    v
}

/// An event as templates see it: the Go field names of Docker's message
/// (`.Type`, `.Action`, `.Actor.ID`, `.Scope`, `.Time`, `.TimeNano`,
/// `.Status`, `.ID`, `.From`).
fn template_data(e: &Event) -> serde_json::Value {
    let (status, id, from) = legacy_fields(e).unwrap_or_default();
    serde_json::json!({
        "Status": status,
        "ID": id,
        "From": from,
        "Type": e.kind,
        "Action": e.action,
        "Actor": e.actor,
        "Scope": e.scope,
        "Time": e.time,
        "TimeNano": e.time_nano,
    })
}
