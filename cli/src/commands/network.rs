//! `network`: the three networks a container can have, under Docker's
//! names: `bridge` (strata's `private`: a network namespace of its own,
//! reached through pasta), `host` and `none`. They can be listed and
//! inspected; user-defined networks (`network create`, `connect`) are not
//! there yet, and those verbs say so.

use crate::containers::record;
use crate::context::Context;
use crate::format::{self, Output};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// List networks
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// Create a network (not supported)
    Create(UnsupportedArgs),
    /// Remove one or more networks (not supported)
    #[command(visible_alias = "remove")]
    Rm(UnsupportedArgs),
    /// Connect a container to a network (not supported)
    Connect(UnsupportedArgs),
    /// Disconnect a container from a network (not supported)
    Disconnect(UnsupportedArgs),
    /// Remove all unused networks (there are none to remove)
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct LsArgs {
    /// Only display network IDs
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate the output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Pretty-print networks using a Go template
    #[arg(long)]
    format: Option<String>,
    /// Provide filter values (name=, driver=, id=)
    #[arg(short, long = "filter")]
    filter: Vec<String>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Format output using a custom template
    #[arg(short, long)]
    format: Option<String>,
    #[arg(required = true, value_name = "NETWORK")]
    networks: Vec<String>,
}

#[derive(Args)]
pub struct UnsupportedArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

/// (Docker's name, Docker's driver, strata's `--network` value).
const NETWORKS: [(&str, &str, &str); 3] =
    [("bridge", "bridge", "private"), ("host", "host", "host"), ("none", "null", "none")];

/// A stable ID per network, as Docker shows 64 hex digits.
fn network_id(name: &str) -> String {
    strata_layers::Digest::of(format!("strata network {name}").as_bytes()).hex()
}

pub fn run(ctx: &Context, cmd: NetworkCommand) -> Result<i32> {
    match cmd {
        NetworkCommand::Ls(a) => ls(a),
        NetworkCommand::Inspect(a) => inspect(ctx, a),
        NetworkCommand::Prune(_) => Ok(0),
        NetworkCommand::Create(_)
        | NetworkCommand::Rm(_)
        | NetworkCommand::Connect(_)
        | NetworkCommand::Disconnect(_) => {
            bail!(
                "user-defined networks are not supported by strata yet: a container has --network private \
                 (Docker's bridge; the default), host or none"
            )
        }
    }
}

fn ls(a: LsArgs) -> Result<i32> {
    let mut rows = Vec::new();
    for (name, driver, _) in NETWORKS {
        let id = network_id(name);
        let keep = a.filter.iter().all(|f| match f.split_once('=') {
            Some(("name", v)) => name.contains(v),
            Some(("driver", v)) => driver == v,
            Some(("id", v)) => id.starts_with(v),
            Some(("scope", v)) => v == "local",
            Some(("type", v)) => v == "builtin",
            _ => false,
        });
        if keep {
            let shown = if a.no_trunc { id.clone() } else { id[..12].to_string() };
            rows.push(format::row([
                ("ID", shown),
                ("Name", name.to_string()),
                ("Driver", driver.to_string()),
                ("Scope", "local".to_string()),
            ]));
        }
    }
    if let Some(bad) = a
        .filter
        .iter()
        .find(|f| !matches!(f.split_once('=').map(|(k, _)| k), Some("name" | "driver" | "id" | "scope" | "type")))
    {
        bail!("invalid filter {bad:?}");
    }
    if a.quiet && a.format.is_none() {
        for r in &rows {
            println!("{}", r["ID"].as_str().unwrap_or_default());
        }
        return Ok(0);
    }
    let out = Output::new(a.format.as_deref(), "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let headers = [("ID", "NETWORK ID"), ("Name", "NAME"), ("Driver", "DRIVER"), ("Scope", "SCOPE")];
    print!("{}", out.render(&rows, &headers).map_err(|e| anyhow::anyhow!("{e}"))?);
    Ok(0)
}

fn inspect(ctx: &Context, a: InspectArgs) -> Result<i32> {
    let containers = record::list_fresh(&ctx.layout)?;
    let mut found = Vec::new();
    let mut status = 0;
    for key in &a.networks {
        let Some((name, driver, mode)) =
            NETWORKS.iter().find(|(n, _, _)| n == key || network_id(n).starts_with(key.as_str())).copied()
        else {
            eprintln!("Error response from daemon: network {key} not found");
            status = 1;
            continue;
        };
        let mut members = serde_json::Map::new();
        for c in containers.iter().filter(|c| c.running() && c.config.network == mode) {
            members.insert(c.config.id.clone(), json!({ "Name": c.config.name }));
        }
        found.push(json!({
            "Name": name,
            "Id": network_id(name),
            "Scope": "local",
            "Driver": driver,
            "EnableIPv6": false,
            "Internal": false,
            "Attachable": false,
            "Containers": Value::Object(members),
            "Options": {},
            "Labels": {},
        }));
    }
    match a.format.as_deref() {
        Some(f) => {
            for v in &found {
                println!("{}", format::render_loose(f, v)?);
            }
        }
        None => println!("{}", serde_json::to_string_pretty(&found)?),
    }
    Ok(status)
}
