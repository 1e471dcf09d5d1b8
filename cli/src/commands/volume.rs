//! `strata volume create|ls|inspect|rm|prune` (records: `containers/volumes.rs`).

use super::support::{confirm, Pruned};
use crate::containers::volumes;
use crate::context::Context;
use crate::exit;
use crate::format;
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a volume
    Create(CreateArgs),
    /// List volumes
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more volumes
    Inspect(InspectArgs),
    /// Remove one or more volumes
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Remove unused local volumes
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Set metadata for a volume
    #[arg(long)]
    label: Vec<String>,
    /// Specify volume driver name
    #[arg(short = 'd', long, default_value = "local")]
    driver: String,
    /// Set driver specific options (type=none, o=bind, device=/host/path)
    #[arg(short = 'o', long = "opt", value_name = "map")]
    opt: Vec<String>,
    name: Option<String>,
}

#[derive(Args)]
pub struct LsArgs {
    /// Only display volume names
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Provide filter values (e.g. "dangling=true")
    #[arg(short = 'f', long = "filter")]
    filter: Vec<String>,
    /// Format output using a custom template
    #[arg(long)]
    format: Option<String>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Format output using a custom template
    #[arg(short = 'f', long)]
    format: Option<String>,
    #[arg(required = true, value_name = "VOLUME")]
    volumes: Vec<String>,
}

#[derive(Args)]
pub struct RmArgs {
    /// Force the removal of one or more volumes
    #[arg(short = 'f', long)]
    force: bool,
    #[arg(required = true, value_name = "VOLUME")]
    volumes: Vec<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Remove all unused volumes, not just anonymous ones
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    force: bool,
}

/// Docker's confirmation prompt; stdin that is not a terminal and says
/// nothing counts as "no".
pub fn run(ctx: &Context, cmd: VolumeCommand) -> Result<i32> {
    match cmd {
        VolumeCommand::Create(a) => {
            if a.driver != "local" {
                anyhow::bail!("error looking up volume plugin {}: plugin \"{}\" not found", a.driver, a.driver);
            }
            let mut labels = BTreeMap::new();
            for l in &a.label {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                labels.insert(k.to_string(), v.to_string());
            }
            let (name, anonymous) = match a.name {
                Some(n) => (n, false),
                None => (crate::containers::record::new_id(), true),
            };
            let mut options = BTreeMap::new();
            for o in &a.opt {
                let (k, v) = o.split_once('=').unwrap_or((o.as_str(), ""));
                options.insert(k.to_string(), v.to_string());
            }
            let v = volumes::create(ctx, &name, labels, options, anonymous).map_err(|e| {
                eprintln!("Error response from daemon: {e:#}");
                exit::with_code(1, None)
            })?;
            println!("{}", v.name);
            Ok(0)
        }
        VolumeCommand::Ls(a) => {
            let mut list = volumes::list(ctx)?;
            for f in &a.filter {
                let (k, v) =
                    f.split_once('=').with_context(|| format!("bad format of filter (expected name=value): {f}"))?;
                match k {
                    "dangling" => {
                        let want = matches!(v, "true" | "1");
                        let mut keep = Vec::new();
                        for vol in list {
                            if volumes::users(ctx, &vol.name)?.is_empty() == want {
                                keep.push(vol);
                            }
                        }
                        list = keep;
                    }
                    // A regular expression, as Docker takes it.
                    "name" => {
                        let re = regex::Regex::new(v).with_context(|| format!("invalid filter 'name={v}'"))?;
                        list.retain(|vol| re.is_match(&vol.name))
                    }
                    "label" => list.retain(|vol| match v.split_once('=') {
                        Some((lk, lv)) => vol.labels.get(lk).is_some_and(|x| x == lv),
                        None => vol.labels.contains_key(v),
                    }),
                    "driver" => list.retain(|vol| vol.driver == v),
                    _ => anyhow::bail!("invalid filter '{k}'"),
                }
            }
            if a.quiet && a.format.is_none() {
                for v in &list {
                    println!("{}", v.name);
                }
                return Ok(0);
            }
            let out = format::Output::new(a.format.as_deref(), "table {{.Driver}}\t{{.Name}}")
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let rows: Vec<Value> = list
                .iter()
                .map(|v| {
                    format::row([
                        ("Driver", v.driver.clone()),
                        ("Name", v.name.clone()),
                        ("Mountpoint", v.mountpoint.clone()),
                        ("Scope", v.scope.clone()),
                        ("CreatedAt", v.created_at.clone()),
                        ("Labels", v.labels.iter().map(|(k, x)| format!("{k}={x}")).collect::<Vec<_>>().join(",")),
                    ])
                })
                .collect();
            let headers = [
                ("Driver", "DRIVER"),
                ("Name", "VOLUME NAME"),
                ("Mountpoint", "MOUNTPOINT"),
                ("Scope", "SCOPE"),
                ("CreatedAt", "CREATED"),
                ("Labels", "LABELS"),
            ];
            print!("{}", out.render(&rows, &headers).map_err(|e| anyhow::anyhow!("{e}"))?);
            Ok(0)
        }
        VolumeCommand::Inspect(a) => {
            let mut values = Vec::new();
            let mut status = 0;
            for name in &a.volumes {
                match volumes::read(ctx, name) {
                    Some(v) => {
                        let mut j = serde_json::to_value(&v)?;
                        if let Some(o) = j.as_object_mut() {
                            o.remove("Anonymous");
                        }
                        values.push(j)
                    }
                    None => {
                        eprintln!("Error response from daemon: get {name}: no such volume");
                        status = 1;
                    }
                }
            }
            match a.format.as_deref() {
                None | Some("") | Some("json") => println!("{}", serde_json::to_string_pretty(&Value::Array(values))?),
                Some(f) => {
                    for v in &values {
                        println!("{}", format::render_loose(f, v).map_err(|e| anyhow::anyhow!("{e}"))?);
                    }
                }
            }
            Ok(status)
        }
        VolumeCommand::Rm(a) => {
            let mut status = 0;
            for name in &a.volumes {
                match volumes::remove(ctx, name, a.force) {
                    Ok(()) => println!("{name}"),
                    Err(e) if a.force && volumes::read(ctx, name).is_none() => {
                        let _ = e;
                    }
                    Err(e) => {
                        eprintln!("Error response from daemon: {e:#}");
                        status = 1;
                    }
                }
            }
            Ok(status)
        }
        VolumeCommand::Prune(a) => {
            if !a.force
                && !confirm("WARNING! This will remove anonymous local volumes not used by at least one container.")?
            {
                return Ok(0);
            }
            prune_volumes(ctx, a.all)?.print();
            Ok(0)
        }
    }
}

/// Removes the volumes no container uses: anonymous ones, or all (`all`).
pub fn prune_volumes(ctx: &Context, all: bool) -> Result<Pruned> {
    let mut pruned = Pruned { heading: "Deleted Volumes", items: Vec::new(), bytes: 0 };
    for v in volumes::list(ctx)? {
        if (!all && !v.anonymous) || !volumes::users(ctx, &v.name)?.is_empty() {
            continue;
        }
        let size = dir_size(std::path::Path::new(&v.mountpoint));
        if volumes::remove(ctx, &v.name, false).is_ok() {
            pruned.bytes += size;
            pruned.items.push(v.name);
        }
    }
    Ok(pruned)
}

fn dir_size(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
