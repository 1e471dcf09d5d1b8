//! `network`: the three built-in networks under Docker's names: `bridge`
//! (strata's `private`: a network namespace of its own, reached through
//! pasta), `host` and `none`; and user-defined ones (`network create`, see
//! `containers::networks`), on which containers reach each other by name.
//! `connect` and `disconnect` move a container between the default network
//! and a user-defined one.

use crate::containers::networks::{self, Network};
use crate::containers::record;
use crate::context::Context;
use crate::format::{self, Output};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// List networks
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// Create a network
    Create(CreateArgs),
    /// Remove one or more networks
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Connect a container to a network
    Connect(ConnectArgs),
    /// Disconnect a container from a network
    Disconnect(DisconnectArgs),
    /// Remove all unused networks
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Driver to manage the Network (bridge only)
    #[arg(short, long, default_value = "bridge")]
    driver: String,
    /// Subnet in CIDR format (default: a free 10.89.N.0/24)
    #[arg(long)]
    subnet: Option<String>,
    /// IPv4 Gateway for the master subnet (default: its first address)
    #[arg(long)]
    gateway: Option<String>,
    /// Set metadata on a network
    #[arg(long = "label")]
    label: Vec<String>,
    /// Restrict external access to the network
    #[arg(long)]
    internal: bool,
    #[arg(value_name = "NETWORK")]
    name: String,
}

#[derive(Args)]
pub struct RmArgs {
    /// Do not error if the network does not exist
    #[arg(short, long)]
    force: bool,
    #[arg(required = true, value_name = "NETWORK")]
    networks: Vec<String>,
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
pub struct ConnectArgs {
    /// Add network-scoped alias for the container
    #[arg(long = "alias")]
    alias: Vec<String>,
    /// IPv4 address (e.g., 10.89.1.10)
    #[arg(long)]
    ip: Option<String>,
    #[arg(value_name = "NETWORK")]
    network: String,
    #[arg(value_name = "CONTAINER")]
    container: String,
}

#[derive(Args)]
pub struct DisconnectArgs {
    /// Force the container to disconnect from a network
    #[arg(short, long)]
    force: bool,
    #[arg(value_name = "NETWORK")]
    network: String,
    #[arg(value_name = "CONTAINER")]
    container: String,
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
        NetworkCommand::Ls(a) => ls(ctx, a),
        NetworkCommand::Inspect(a) => inspect(ctx, a),
        NetworkCommand::Create(a) => create(ctx, a),
        NetworkCommand::Rm(a) => rm(ctx, a),
        NetworkCommand::Prune(a) => prune(ctx, a),
        NetworkCommand::Connect(a) => network_and_container(ctx, &a.network, &a.container)
            .and_then(|(net, c)| networks::connect(ctx, &net, &c, &a.alias, a.ip.as_deref()))
            .map(|()| 0)
            .map_err(daemon_error),
        NetworkCommand::Disconnect(a) => network_and_container(ctx, &a.network, &a.container)
            .and_then(|(net, c)| networks::disconnect(ctx, &net, &c))
            .map(|()| 0)
            .map_err(daemon_error),
    }
}

/// Docker's way of reporting a refused request: exit status 1.
fn daemon_error(e: anyhow::Error) -> anyhow::Error {
    eprintln!("Error response from daemon: {e:#}");
    crate::exit::with_code(1, None)
}

/// The user-defined network and the container `connect`/`disconnect` name.
fn network_and_container(ctx: &Context, network: &str, container: &str) -> Result<(Network, record::Container)> {
    if NETWORKS.iter().any(|(n, _, _)| *n == network) {
        bail!("strata connects containers to user-defined networks only; {network} is given with `run --network`");
    }
    let net = networks::find(ctx, network)?.ok_or_else(|| anyhow::anyhow!("network {network} not found"))?;
    Ok((net, record::find_fresh(&ctx.layout, container)?))
}

fn create(ctx: &Context, a: CreateArgs) -> Result<i32> {
    if a.driver != "bridge" {
        bail!("plugin \"{}\" not found: strata's networks use the bridge driver", a.driver);
    }
    let labels: BTreeMap<String, String> = a
        .label
        .iter()
        .map(|l| l.split_once('=').map_or((l.clone(), String::new()), |(k, v)| (k.to_string(), v.to_string())))
        .collect();
    if a.gateway.is_some() && a.subnet.is_none() {
        bail!("no matching subnet for gateway {}: give --subnet with --gateway", a.gateway.as_deref().unwrap_or(""));
    }
    let net = networks::create(ctx, &a.name, a.subnet.as_deref(), a.gateway.as_deref(), labels, a.internal)?;
    println!("{}", net.id);
    Ok(0)
}

fn rm(ctx: &Context, a: RmArgs) -> Result<i32> {
    let mut status = 0;
    for key in &a.networks {
        if NETWORKS.iter().any(|(n, _, _)| n == key) {
            eprintln!("Error response from daemon: {key} is a pre-defined network and cannot be removed");
            status = 1;
            continue;
        }
        match networks::find(ctx, key)? {
            Some(net) => match networks::remove(ctx, &net) {
                Ok(()) => println!("{key}"),
                Err(e) => {
                    eprintln!("Error response from daemon: {e:#}");
                    status = 1;
                }
            },
            None if a.force => {}
            None => {
                eprintln!("Error response from daemon: network {key} not found");
                status = 1;
            }
        }
    }
    Ok(status)
}

fn prune(ctx: &Context, a: PruneArgs) -> Result<i32> {
    if !a.force
        && !crate::commands::support::confirm(
            "WARNING! This will remove all custom networks not used by at least one container.",
        )?
    {
        return Ok(0);
    }
    let pruned = prune_networks(ctx)?;
    if !pruned.items.is_empty() {
        println!("{}:", pruned.heading);
        for n in pruned.items {
            println!("{n}");
        }
    }
    Ok(0)
}

/// Removes the user-defined networks no container names.
pub fn prune_networks(ctx: &Context) -> Result<crate::commands::support::Pruned> {
    let mut items = Vec::new();
    for net in networks::list(ctx)? {
        if networks::users(ctx, &net)?.is_empty() && networks::remove(ctx, &net).is_ok() {
            items.push(net.name);
        }
    }
    Ok(crate::commands::support::Pruned { heading: "Deleted Networks", items, bytes: 0 })
}

fn ls(ctx: &Context, a: LsArgs) -> Result<i32> {
    let mut rows = Vec::new();
    let user = networks::list(ctx)?;
    let all = NETWORKS
        .iter()
        .map(|(name, driver, _)| (name.to_string(), driver.to_string(), network_id(name), true, None))
        .chain(user.iter().map(|n| (n.name.clone(), "bridge".to_string(), n.id.clone(), false, Some(n))));
    for (name, driver, id, builtin, user_network) in all {
        let labels = user_network
            .map(|n| n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let internal = user_network.is_some_and(|n| n.internal);
        let (name, driver) = (name.as_str(), driver.as_str());
        let keep = a.filter.iter().all(|f| match f.split_once('=') {
            // A regular expression, as Docker takes it (a bad one matches nothing).
            Some(("name", v)) => regex::Regex::new(v).is_ok_and(|re| re.is_match(name)),
            Some(("driver", v)) => driver == v,
            Some(("id", v)) => id.starts_with(v),
            Some(("scope", v)) => v == "local",
            Some(("type", v)) => (v == "builtin") == builtin && (v == "builtin" || v == "custom"),
            _ => false,
        });
        if keep {
            let shown = if a.no_trunc { id.clone() } else { id[..12].to_string() };
            rows.push(format::row([
                ("ID", shown),
                ("Name", name.to_string()),
                ("Driver", driver.to_string()),
                ("Scope", "local".to_string()),
                ("Labels", labels),
                ("Internal", internal.to_string()),
                ("IPv6", "false".to_string()),
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
    let headers = [
        ("ID", "NETWORK ID"),
        ("Name", "NAME"),
        ("Driver", "DRIVER"),
        ("Scope", "SCOPE"),
        ("Labels", "LABELS"),
        ("Internal", "INTERNAL"),
        ("IPv6", "IPV6"),
    ];
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
            match networks::find(ctx, key)? {
                Some(net) => found.push(user_network_json(ctx, &net)?),
                None => {
                    eprintln!("Error response from daemon: network {key} not found");
                    status = 1;
                }
            }
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

/// `network inspect` of a user-defined network: Docker's shape, members
/// with their addresses.
fn user_network_json(ctx: &Context, net: &Network) -> Result<Value> {
    let (_, len) = net.range()?;
    let mut members = serde_json::Map::new();
    for (ip, c) in networks::members(ctx, net, "") {
        members.insert(c.config.id.clone(), json!({ "Name": c.config.name, "IPv4Address": format!("{ip}/{len}") }));
    }
    Ok(json!({
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": false,
        "IPAM": { "Driver": "default", "Config": [{ "Subnet": net.subnet, "Gateway": net.gateway()?.to_string() }] },
        "Internal": net.internal,
        "Attachable": false,
        "Containers": Value::Object(members),
        "Options": {},
        "Labels": net.labels,
    }))
}
