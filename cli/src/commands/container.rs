//! Container life-cycle commands other than run/create/start (`run.rs`) and
//! exec (`exec.rs`): ps, stop, kill, restart, rm, wait, logs, top, inspect,
//! rename, port, diff, attach, commit (`commit.rs`), export (`export.rs`), `container prune`, and the `container ...`
//! aliases. Verbs, flags, columns, messages and exit statuses are Docker's:
//! errors about a container ("No such container", "is not running") print
//! `Error response from daemon: ...` and make the command exit 1 after it
//! has handled the other arguments.

use crate::commands::run::{self, CreateArgs, RunArgs};
use crate::containers::record::{self, Container, Status};
use crate::containers::{attach, networks, signals, supervisor};
use crate::context::Context;
use crate::exit;
use crate::format;
use anyhow::{bail, Context as _, Result};
use clap::{ArgAction, Args, Subcommand};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Duration;

#[derive(Subcommand)]
pub enum ContainerCommand {
    /// Create and run a new container from an image
    #[command(disable_help_flag = true)]
    Run(RunCmd),
    /// Create a new container
    #[command(disable_help_flag = true)]
    Create(CreateCmd),
    /// Start one or more stopped containers
    Start(StartArgs),
    /// List containers
    Ps(PsArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Kill one or more running containers
    Kill(KillArgs),
    /// Pause all processes within one or more containers
    Pause(PauseArgs),
    /// Update configuration of one or more containers
    Update(UpdateArgs),
    /// Unpause all processes within one or more containers
    Unpause(PauseArgs),
    /// Restart one or more containers
    Restart(StopArgs),
    /// Remove one or more containers
    Rm(RmArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(WaitArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// Execute a command in a running container
    Exec(crate::commands::exec::ExecArgs),
    /// Display the running processes of a container
    Top(TopArgs),
    /// Rename a container
    Rename(RenameArgs),
    /// List port mappings or a specific mapping for the container
    Port(PortArgs),
    /// Inspect changes to files or directories on a container's filesystem
    Diff(DiffArgs),
    /// Create a new image from a container's changes
    Commit(crate::commands::commit::CommitArgs),
    /// Export a container's filesystem as a tar archive
    Export(crate::commands::export::ExportArgs),
    /// Copy files/folders between a container and the local filesystem
    Cp(crate::commands::cp::CpArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(crate::commands::stats::StatsArgs),
    /// Attach local standard input, output, and error streams to a running container
    Attach(AttachArgs),
    /// Manage containers
    #[command(subcommand)]
    Container(ContainerSub),
    /// Manage volumes
    #[command(subcommand)]
    Volume(crate::commands::volume::VolumeCommand),
    /// Manage networks
    #[command(subcommand)]
    Network(crate::commands::network::NetworkCommand),
    /// Internal: supervise a container (started by run/start)
    #[command(hide = true)]
    InternalSupervise {
        id: String,
        #[arg(long)]
        attach: bool,
    },
    /// Internal: hold a user-defined network's namespaces (started with its first member)
    #[command(hide = true)]
    InternalNetworkHolder { name: String },
}

#[derive(Subcommand)]
pub enum ContainerSub {
    /// List containers
    #[command(alias = "ps", alias = "list")]
    Ls(PsArgs),
    /// Create and run a new container from an image
    #[command(disable_help_flag = true)]
    Run(RunCmd),
    /// Create a new container
    #[command(disable_help_flag = true)]
    Create(CreateCmd),
    /// Start one or more stopped containers
    Start(StartArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Kill one or more running containers
    Kill(KillArgs),
    /// Pause all processes within one or more containers
    Pause(PauseArgs),
    /// Update configuration of one or more containers
    Update(UpdateArgs),
    /// Unpause all processes within one or more containers
    Unpause(PauseArgs),
    /// Restart one or more containers
    Restart(StopArgs),
    /// Remove one or more containers
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(WaitArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// Execute a command in a running container
    Exec(crate::commands::exec::ExecArgs),
    /// Display the running processes of a container
    Top(TopArgs),
    /// Rename a container
    Rename(RenameArgs),
    /// List port mappings or a specific mapping for the container
    Port(PortArgs),
    /// Inspect changes to files or directories on a container's filesystem
    Diff(DiffArgs),
    /// Create a new image from a container's changes
    Commit(crate::commands::commit::CommitArgs),
    /// Export a container's filesystem as a tar archive
    Export(crate::commands::export::ExportArgs),
    /// Copy files/folders between a container and the local filesystem
    Cp(crate::commands::cp::CpArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(crate::commands::stats::StatsArgs),
    /// Attach local standard input, output, and error streams to a running container
    Attach(AttachArgs),
    /// Display detailed information on one or more containers
    Inspect(InspectArgs),
    /// Remove all stopped containers
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct RunCmd {
    #[command(flatten)]
    pub run: RunArgs,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Args)]
pub struct CreateCmd {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Args)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals
    #[arg(short = 'a', long)]
    attach: bool,
    /// Attach container's STDIN
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys")]
    detach_keys: Option<String>,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    all: bool,
    /// Only display container IDs
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Display total file sizes
    #[arg(short = 's', long)]
    size: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Filter output based on conditions provided
    #[arg(short = 'f', long = "filter", value_name = "filter")]
    filter: Vec<String>,
    /// Format output using a custom template
    #[arg(long)]
    format: Option<String>,
    /// Show n last created containers (includes all states)
    #[arg(short = 'n', long = "last", default_value_t = -1, allow_hyphen_values = true)]
    last: i64,
    /// Show the latest created container (includes all states)
    #[arg(short = 'l', long)]
    latest: bool,
}

#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(short = 't', long = "time", alias = "timeout", allow_hyphen_values = true)]
    time: Option<i64>,
    /// Signal to send to the container
    #[arg(short = 's', long)]
    signal: Option<String>,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short = 's', long, default_value = "KILL")]
    signal: String,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    resources: crate::containers::resources::ResourceArgs,
    /// Restart policy to apply when a container exits
    #[arg(long, value_name = "string")]
    restart: Option<String>,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct PauseArgs {
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short = 'f', long)]
    force: bool,
    /// Remove anonymous volumes associated with the container
    #[arg(short = 'v', long)]
    volumes: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct WaitArgs {
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short = 'f', long)]
    follow: bool,
    /// Number of lines to show from the end of the logs ("all" for everything)
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    /// Show timestamps
    #[arg(short = 't', long)]
    timestamps: bool,
    /// Show logs since timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m" for 42 minutes)
    #[arg(long)]
    since: Option<String>,
    /// Show logs before a timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m" for 42 minutes)
    #[arg(long)]
    until: Option<String>,
    container: String,
}

#[derive(Args)]
pub struct TopArgs {
    container: String,
    /// ps options
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    ps_args: Vec<String>,
}

#[derive(Args)]
pub struct RenameArgs {
    container: String,
    new_name: String,
}

#[derive(Args)]
pub struct PortArgs {
    container: String,
    /// PRIVATE_PORT[/PROTO]
    port: Option<String>,
}

#[derive(Args)]
pub struct DiffArgs {
    container: String,
}

#[derive(Args)]
pub struct AttachArgs {
    /// Do not attach STDIN
    #[arg(long = "no-stdin")]
    no_stdin: bool,
    /// Proxy all received signals to the process
    #[arg(long = "sig-proxy", default_value_t = true, action = ArgAction::Set)]
    sig_proxy: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys")]
    detach_keys: Option<String>,
    container: String,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Format output using a custom template
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Display total file sizes
    #[arg(short = 's', long)]
    size: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    force: bool,
    /// Provide filter values (e.g. "label=<key>=<value>")
    #[arg(long = "filter")]
    filter: Vec<String>,
}

/// Runs a container command. `run`, `create` and `start` fail with 125 as
/// Docker's do; the others, like the Docker CLI's, with 1 unless the error
/// carries a status of its own.
pub fn run(ctx: &Context, cmd: ContainerCommand) -> Result<i32> {
    match cmd {
        ContainerCommand::Run(a) => run::run(ctx, a.run),
        ContainerCommand::Create(a) => run::create(ctx, a.create),
        ContainerCommand::Start(a) => run::start(ctx, a.attach, a.interactive, a.detach_keys, a.containers),
        ContainerCommand::InternalSupervise { id, attach } => supervisor::supervise_main(ctx, &id, attach),
        ContainerCommand::InternalNetworkHolder { name } => crate::containers::networks::holder_main(ctx, &name),
        other => dispatch(ctx, other).map_err(|e| exit::or_code(e, exit::COMMAND_FAILED)),
    }
}

fn dispatch(ctx: &Context, cmd: ContainerCommand) -> Result<i32> {
    match cmd {
        ContainerCommand::Run(_)
        | ContainerCommand::Create(_)
        | ContainerCommand::Start(_)
        | ContainerCommand::InternalSupervise { .. }
        | ContainerCommand::InternalNetworkHolder { .. } => run(ctx, cmd),
        ContainerCommand::Ps(a) => ps(ctx, a),
        ContainerCommand::Stop(a) => stop(ctx, a, false),
        ContainerCommand::Kill(a) => kill(ctx, a),
        ContainerCommand::Pause(a) => pause(ctx, a, true),
        ContainerCommand::Update(a) => update(ctx, a),
        ContainerCommand::Unpause(a) => pause(ctx, a, false),
        ContainerCommand::Restart(a) => stop(ctx, a, true),
        ContainerCommand::Rm(a) => rm(ctx, a),
        ContainerCommand::Wait(a) => wait(ctx, a),
        ContainerCommand::Logs(a) => logs(ctx, a),
        ContainerCommand::Exec(a) => crate::commands::exec::exec(ctx, a),
        ContainerCommand::Top(a) => top(ctx, a),
        ContainerCommand::Rename(a) => rename(ctx, a),
        ContainerCommand::Port(a) => port(ctx, a),
        ContainerCommand::Diff(a) => diff(ctx, a),
        ContainerCommand::Commit(a) => crate::commands::commit::commit(ctx, a).map_err(fail),
        ContainerCommand::Export(a) => crate::commands::export::export(ctx, a).map_err(fail),
        ContainerCommand::Cp(a) => crate::commands::cp::cp(ctx, a),
        ContainerCommand::Stats(a) => crate::commands::stats::stats(ctx, a),
        ContainerCommand::Attach(a) => attach_cmd(ctx, a),
        ContainerCommand::Container(sub) => run_sub(ctx, sub),
        ContainerCommand::Volume(v) => crate::commands::volume::run(ctx, v),
        ContainerCommand::Network(n) => crate::commands::network::run(ctx, n),
    }
}

fn run_sub(ctx: &Context, sub: ContainerSub) -> Result<i32> {
    match sub {
        ContainerSub::Ls(a) => ps(ctx, a),
        // (125 as for `run`, `create` and `start`: the caller gives the others 1.)
        ContainerSub::Run(a) => run::run(ctx, a.run).map_err(|e| exit::or_code(e, exit::STRATA_ERROR)),
        ContainerSub::Create(a) => run::create(ctx, a.create).map_err(|e| exit::or_code(e, exit::STRATA_ERROR)),
        ContainerSub::Start(a) => run::start(ctx, a.attach, a.interactive, a.detach_keys, a.containers)
            .map_err(|e| exit::or_code(e, exit::STRATA_ERROR)),
        ContainerSub::Stop(a) => stop(ctx, a, false),
        ContainerSub::Kill(a) => kill(ctx, a),
        ContainerSub::Pause(a) => pause(ctx, a, true),
        ContainerSub::Update(a) => update(ctx, a),
        ContainerSub::Unpause(a) => pause(ctx, a, false),
        ContainerSub::Restart(a) => stop(ctx, a, true),
        ContainerSub::Rm(a) => rm(ctx, a),
        ContainerSub::Wait(a) => wait(ctx, a),
        ContainerSub::Logs(a) => logs(ctx, a),
        ContainerSub::Exec(a) => crate::commands::exec::exec(ctx, a),
        ContainerSub::Top(a) => top(ctx, a),
        ContainerSub::Rename(a) => rename(ctx, a),
        ContainerSub::Port(a) => port(ctx, a),
        ContainerSub::Diff(a) => diff(ctx, a),
        ContainerSub::Commit(a) => crate::commands::commit::commit(ctx, a).map_err(fail),
        ContainerSub::Export(a) => crate::commands::export::export(ctx, a).map_err(fail),
        ContainerSub::Cp(a) => crate::commands::cp::cp(ctx, a),
        ContainerSub::Stats(a) => crate::commands::stats::stats(ctx, a),
        ContainerSub::Attach(a) => attach_cmd(ctx, a),
        ContainerSub::Inspect(a) => inspect(ctx, a),
        ContainerSub::Prune(a) => prune(ctx, a),
    }
}

/// Prints Docker's daemon-error line for one argument of a multi-container verb.
fn daemon_err(e: &anyhow::Error) {
    eprintln!("Error response from daemon: {e:#}");
}

/// For single-container verbs: print like Docker and exit 1.
fn fail(e: anyhow::Error) -> anyhow::Error {
    if e.downcast_ref::<exit::ExitStatus>().is_some() {
        return e;
    }
    daemon_err(&e);
    exit::with_code(1, None)
}

// ---------------------------------------------------------------------------
// ps

fn parse_time(s: &Option<String>) -> Option<chrono::DateTime<chrono::Utc>> {
    s.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&chrono::Utc))
}

fn since(t: chrono::DateTime<chrono::Utc>) -> Duration {
    (chrono::Utc::now() - t).to_std().unwrap_or_default()
}

/// Docker's STATUS column.
pub fn status_text(c: &Container) -> String {
    match c.state.status {
        Status::Created => "Created".into(),
        Status::Running => {
            let up = match parse_time(&c.state.started_at) {
                Some(t) => format!("Up {}", format::human_duration(since(t))),
                None => "Up".into(),
            };
            if is_paused(c) {
                format!("{up} (Paused)")
            } else {
                up + &crate::containers::health::status_suffix(c)
            }
        }
        Status::Exited if c.state.is_restarting() => match parse_time(&c.state.finished_at) {
            Some(t) => format!("Restarting ({}) {} ago", c.state.exit_code, format::human_duration(since(t))),
            None => format!("Restarting ({})", c.state.exit_code),
        },
        Status::Exited => match parse_time(&c.state.finished_at) {
            Some(t) => format!("Exited ({}) {} ago", c.state.exit_code, format::human_duration(since(t))),
            None => format!("Exited ({})", c.state.exit_code),
        },
        Status::Removing => "Removal In Progress".into(),
    }
}

/// Docker's PORTS column.
pub fn ports_text(c: &Container) -> String {
    if c.running() && c.config.uses_pasta() && !c.config.ports.is_empty() {
        c.config
            .ports
            .iter()
            .map(|p| {
                let ip = if p.host_ip.is_empty() { "0.0.0.0" } else { &p.host_ip };
                format!("{ip}:{}->{}/{}", p.host_port, p.container_port, p.proto)
            })
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        c.config.exposed_ports.join(", ")
    }
}

fn command_text(c: &Container) -> String {
    let mut parts = vec![c.config.path.clone()];
    parts.extend(c.config.args.iter().cloned());
    parts.join(" ")
}

/// Column titles of `ps` rows ([`ps_row`]).
pub(crate) const PS_HEADERS: &[(&str, &str)] = &[
    ("ID", "CONTAINER ID"),
    ("Image", "IMAGE"),
    ("Command", "COMMAND"),
    ("CreatedAt", "CREATED AT"),
    ("RunningFor", "CREATED"),
    ("Ports", "PORTS"),
    ("State", "STATE"),
    ("Status", "STATUS"),
    ("Size", "SIZE"),
    ("Names", "NAMES"),
    ("Labels", "LABELS"),
    ("Mounts", "MOUNTS"),
    ("Networks", "NETWORKS"),
    ("LocalVolumes", "LOCAL VOLUMES"),
];

/// One `ps` row in Docker's field names; `Size` (a walk of the writable
/// layer) only `with_size`.
pub(crate) fn ps_row(ctx: &Context, c: &Container, no_trunc: bool, with_size: bool) -> Value {
    let cmd = command_text(c);
    let command = if no_trunc { format!("{cmd:?}") } else { format!("{:?}", format::ellipsis(&cmd, 20)) };
    let created = parse_time(&Some(c.config.created.clone()));
    let size = if with_size {
        let upper = upper_size(c);
        format!("{} (virtual {})", format::human_size3(upper), format::human_size3(image_size(ctx, c) + upper))
    } else {
        String::new()
    };
    let labels = c.config.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let mounts = c
        .config
        .mounts
        .iter()
        .map(|m| if m.kind == "volume" { format::ellipsis(&m.name, 15) } else { m.source.clone() })
        .collect::<Vec<_>>()
        .join(",");
    format::row([
        ("ID", if no_trunc { c.config.id.clone() } else { c.short_id().to_string() }),
        ("Image", c.config.image.clone()),
        ("Command", command),
        ("CreatedAt", created.map(|t| t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string()).unwrap_or_default()),
        ("RunningFor", created.map(|t| format!("{} ago", format::human_duration(since(t)))).unwrap_or_default()),
        ("Ports", ports_text(c)),
        ("State", c.state.status.as_str().to_string()),
        ("Status", status_text(c)),
        ("Size", size),
        ("Names", c.config.name.clone()),
        ("Labels", labels),
        ("Mounts", mounts),
        ("Networks", docker_network_name(&c.config.network).to_string()),
        ("LocalVolumes", c.config.mounts.iter().filter(|m| m.kind == "volume").count().to_string()),
    ])
}

/// Disk use of the container's writable layer (bytes of regular files).
pub(crate) fn upper_size(c: &Container) -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else { return 0 };
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => 0,
            })
            .sum()
    }
    walk(&c.upper())
}

fn image_size(ctx: &Context, c: &Container) -> u64 {
    let Ok(store) = strata_layers::store::Store::open(ctx.layout.clone()) else { return 0 };
    let Ok(id) = c.config.image_id.parse::<strata_layers::Digest>() else { return 0 };
    store.image(&id).ok().flatten().map(|r| r.size).unwrap_or(0)
}

/// Whether `c` passes filter `key=value`. `anchors`: the creation times of
/// the containers `before=`/`since=` name, looked up once by the caller.
fn matches_filter(
    ctx: &Context,
    c: &Container,
    key: &str,
    value: &str,
    anchors: &HashMap<String, chrono::DateTime<chrono::Utc>>,
) -> Result<bool> {
    Ok(match key {
        "status" => {
            if !matches!(value, "created" | "restarting" | "running" | "removing" | "paused" | "exited" | "dead") {
                bail!("invalid filter 'status={value}'");
            }
            let paused = is_paused(c);
            match value {
                "paused" => paused,
                "running" => c.running() && !paused,
                _ => c.state.status.as_str() == value,
            }
        }
        "health" => {
            if !matches!(value, "starting" | "healthy" | "unhealthy" | "none") {
                bail!("Unrecognised filter value for health: {value}");
            }
            let status = c.state.health.as_ref().filter(|_| c.running()).map_or("none", |h| h.status.as_str());
            status == value
        }
        // A regular expression, tried on the name with and without Docker's leading '/'.
        "name" => {
            let re = regex::Regex::new(value).with_context(|| format!("invalid filter 'name={value}'"))?;
            re.is_match(&c.config.name) || re.is_match(&format!("/{}", c.config.name))
        }
        "id" => c.config.id.starts_with(value),
        "label" => match value.split_once('=') {
            Some((k, v)) => c.config.labels.get(k).is_some_and(|x| x == v),
            None => c.config.labels.contains_key(value),
        },
        "exited" => c.state.status == Status::Exited && value.parse::<i32>().ok() == Some(c.state.exit_code),
        "ancestor" => {
            let by_name = c.config.image == value
                || c.config.image.strip_suffix(":latest") == Some(value)
                || format!("{value}:latest") == c.config.image;
            let by_id = {
                let hex = value.strip_prefix("sha256:").unwrap_or(value);
                hex.len() >= 4 && c.config.image_id.trim_start_matches("sha256:").starts_with(hex)
            };
            let resolved = strata_layers::store::Store::open(ctx.layout.clone())
                .ok()
                .and_then(|s| s.resolve_image(value).ok())
                .is_some_and(|r| r.id.to_string() == c.config.image_id);
            by_name || by_id || resolved
        }
        // Created before or after another container.
        "before" | "since" => {
            let (mine, theirs) = (parse_time(&Some(c.config.created.clone())), anchors.get(value).copied());
            match (mine, theirs) {
                (Some(m), Some(t)) if key == "before" => m < t,
                (Some(m), Some(t)) => m > t,
                _ => false,
            }
        }
        // `PORT[-PORT][/PROTO]` against the ports published (or exposed, which
        // published ones are too).
        "publish" | "expose" => {
            let (ports, proto) = value.split_once('/').unwrap_or((value, "tcp"));
            let (low, high) = ports.split_once('-').unwrap_or((ports, ports));
            let range = match (low.parse::<u16>(), high.parse::<u16>()) {
                (Ok(l), Ok(h)) if l <= h => l..=h,
                _ => bail!("invalid filter '{key}={value}': expected PORT[-PORT][/PROTO]"),
            };
            let published = c.config.ports.iter().map(|p| (p.container_port, p.proto.clone()));
            let exposed = c.config.exposed_ports.iter().filter_map(|e| {
                let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
                Some((port.parse::<u16>().ok()?, proto.to_string()))
            });
            let mut candidates: Vec<(u16, String)> = published.collect();
            if key == "expose" {
                candidates.extend(exposed);
            }
            candidates.iter().any(|(port, p)| range.contains(port) && p == proto)
        }
        "volume" => c.config.mounts.iter().any(|m| m.name == value || m.destination == value),
        "network" => docker_network_name(&c.config.network) == value || c.config.network == value,
        _ => bail!("invalid filter '{key}'"),
    })
}

/// A container's network as Docker names it: the default one is `bridge`.
fn docker_network_name(network: &str) -> &str {
    if network == "private" {
        "bridge"
    } else {
        network
    }
}

fn ps(ctx: &Context, a: PsArgs) -> Result<i32> {
    let mut filters = Vec::new();
    for f in &a.filter {
        let (k, v) = f.split_once('=').with_context(|| format!("bad format of filter (expected name=value): {f}"))?;
        // (Checked here too: with no container to test, a bad key would pass.)
        const KEYS: [&str; 13] = [
            "status", "health", "name", "id", "label", "exited", "ancestor", "before", "since", "volume", "network",
            "publish", "expose",
        ];
        if !KEYS.contains(&k) {
            bail!("invalid filter '{k}'");
        }
        filters.push((k.to_string(), v.to_string()));
    }
    let mut anchors = HashMap::new();
    for (_, v) in filters.iter().filter(|(k, _)| k == "before" || k == "since") {
        let other = record::find(&ctx.layout, v)?;
        if let Some(t) = parse_time(&Some(other.config.created.clone())) {
            anchors.insert(v.clone(), t);
        }
    }
    let mut all = record::list_fresh(&ctx.layout)?;
    let show_all = a.all || a.last >= 0 || a.latest || filters.iter().any(|(k, _)| k == "status" || k == "exited");
    if !show_all {
        all.retain(|c| c.running());
    }
    let mut selected = Vec::new();
    for c in all {
        // Filters with the same key are ORed, different keys ANDed (Docker).
        let mut ok = true;
        let mut keys: Vec<&str> = filters.iter().map(|(k, _)| k.as_str()).collect();
        keys.dedup();
        for key in keys {
            let mut any = false;
            for (k, v) in filters.iter().filter(|(k, _)| k == key) {
                any |= matches_filter(ctx, &c, k, v, &anchors)?;
            }
            ok &= any;
        }
        if ok {
            selected.push(c);
        }
    }
    if a.latest {
        selected.truncate(1);
    } else if a.last >= 0 {
        selected.truncate(a.last as usize);
    }
    if a.quiet && a.format.is_none() {
        for c in &selected {
            println!("{}", if a.no_trunc { c.config.id.as_str() } else { c.short_id() });
        }
        return Ok(0);
    }
    let default = if a.size {
        "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}\t{{.Size}}"
    } else {
        "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}"
    };
    let out = format::Output::new(a.format.as_deref(), default).map_err(|e| anyhow::anyhow!("{e}"))?;
    let with_size = a.size || a.format.as_deref().is_some_and(|f| f.contains(".Size"));
    let rows: Vec<Value> = selected.iter().map(|c| ps_row(ctx, c, a.no_trunc, with_size)).collect();
    let text = out.render(&rows, PS_HEADERS).map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{text}");
    Ok(0)
}

// ---------------------------------------------------------------------------
// stop / kill / restart / rm / wait

/// Stops a running container: its stop signal, then SIGKILL after `timeout`
/// seconds (negative: wait for ever). Returns once the supervisor recorded
/// the exit.
pub fn stop_container(ctx: &Context, c: &Container, signal: Option<&str>, timeout: Option<i64>) -> Result<()> {
    let layout = &ctx.layout;
    // Also between two runs under a restart policy: it is not started again.
    mark_stop_requested(layout, c);
    let fresh;
    let mut c = c;
    if !c.running() {
        // Its supervisor may have claimed it for a restart just before the
        // mark: wait for that start to show, then stop it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut now = c.clone();
        while !now.running() && now.state.supervisor.is_some_and(|p| p.alive()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
            match record::read_dir_record(&c.dir) {
                Some(r) => now = r,
                None => return Ok(()),
            }
        }
        if !now.running() {
            return Ok(());
        }
        fresh = now;
        c = &fresh;
    }
    let sig = signals::parse(signal.unwrap_or(&c.config.stop_signal))?;
    let secs = timeout.or(c.config.stop_timeout).unwrap_or(10);
    // Each signal sent is a `kill` event, as Docker records them.
    supervisor::container_event(ctx, c, "kill", &[("signal", &(sig as i32).to_string())]);
    let _ = supervisor::signal_container(c, sig);
    // A paused container handles the signal once thawed, as Docker's does.
    thaw_if_paused(c);
    let wait = if secs < 0 { None } else { Some(Duration::from_secs(secs as u64)) };
    if !supervisor::wait_supervisor(c, wait) {
        supervisor::container_event(ctx, c, "kill", &[("signal", "9")]);
        kill_container(layout, c);
    }
    Ok(())
}

/// Tells the supervisor that the coming exit is wanted: no restart.
fn mark_stop_requested(layout: &strata_layers::StoreLayout, c: &Container) {
    let _ = record::update_state(layout, &c.dir, |s| s.stop_requested = true);
}

/// SIGKILLs the container and waits for its supervisor to record the exit;
/// a supervisor that does not finish within 30 s (a hung filesystem) is
/// killed too, and the next look at the record repairs it.
pub fn kill_container(layout: &strata_layers::StoreLayout, c: &Container) {
    mark_stop_requested(layout, c);
    let _ = supervisor::signal_container(c, nix::sys::signal::Signal::SIGKILL);
    thaw_if_paused(c);
    if !supervisor::wait_supervisor(c, Some(Duration::from_secs(30))) {
        if let Some(sup) = c.state.supervisor.filter(|p| p.alive()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup.pid), nix::sys::signal::Signal::SIGKILL);
            supervisor::wait_supervisor(c, Some(Duration::from_secs(5)));
        }
    }
}

fn stop(ctx: &Context, a: StopArgs, restart: bool) -> Result<i32> {
    Ok(each_container(ctx, &a.containers, |_, c| {
        stop_container(ctx, &c, a.signal.as_deref(), a.time)?;
        supervisor::container_event(ctx, &c, "stop", &[]);
        if restart {
            let c = record::find_fresh(&ctx.layout, &c.config.id)?;
            if c.running() {
                bail!("container {} is still running", c.short_id());
            }
            supervisor::launch(ctx, &c, false)?.wait_started()?;
            // (After the die, stop and start events, as Docker's.)
            supervisor::container_event(ctx, &c, "restart", &[]);
        }
        Ok(())
    }))
}

/// Runs `f` on each container named in `keys`, printing the name when it
/// succeeds and Docker's daemon error when not; 1 if any failed.
fn each_container(ctx: &Context, keys: &[String], mut f: impl FnMut(&str, Container) -> Result<()>) -> i32 {
    let mut status = 0;
    for key in keys {
        match record::find_fresh(&ctx.layout, key).and_then(|c| f(key, c)) {
            Ok(()) => println!("{key}"),
            Err(e) => {
                daemon_err(&e);
                status = 1;
            }
        }
    }
    status
}

// ---------------------------------------------------------------------------
// pause / unpause

/// The container's own cgroup, where its processes are frozen. Root's
/// containers always have one; an ordinary user's only on cgroup v2 with
/// a delegated subtree and a resource limit (without a cgroup of its own
/// there is nothing to freeze, as with rootless podman on cgroup v1).
pub fn container_cgroup(c: &Container) -> Result<strata_runner::Cgroup> {
    let init = c.state.init.ok_or_else(|| anyhow::anyhow!("container {} is not running", c.config.id))?;
    strata_runner::Cgroup::of_container(init.pid, &c.config.id)?.ok_or_else(|| {
        anyhow::anyhow!(
            "container {} has no cgroup of its own to freeze: as an ordinary user that takes cgroup v2 with a \
             delegated subtree and a resource limit (--memory, --cpus or --pids-limit) at run",
            c.short_id()
        )
    })
}

/// True when the running container's processes are frozen by `pause`.
pub fn is_paused(c: &Container) -> bool {
    c.running() && c.state.init.is_some() && container_cgroup(c).is_ok_and(|cg| cg.is_frozen())
}

fn thaw_if_paused(c: &Container) {
    if let Ok(cg) = container_cgroup(c) {
        if cg.is_frozen() {
            let _ = cg.set_frozen(false);
        }
    }
}

/// `update`: new limits for a running container's cgroup at once, and for
/// its later starts (its record), and a new restart policy.
fn update(ctx: &Context, mut a: UpdateArgs) -> Result<i32> {
    if a.resources.is_empty() && a.restart.is_none() {
        bail!("you must provide one or more flags when using this command");
    }
    if let Some(r) = a.restart.as_deref() {
        crate::containers::restart::Policy::parse(Some(r))?;
    }
    a.resources.limits()?;
    a.resources.drop_unsupported();
    // What changes now; the record gets the same flags.
    let limits = a.resources.limits()?;
    Ok(each_container(ctx, &a.containers, |_, c| {
        if a.restart.as_deref().is_some_and(|r| r != "no") && c.config.request.rm {
            bail!("Cannot update restart policy for a container with --rm");
        }
        // Checked together with what the container already has (--cpus
        // against an earlier --cpu-quota, a reservation against the limit).
        let mut merged = c.config.request.resources.clone();
        merged.merge(&a.resources);
        merged.limits()?;
        if c.running() && !limits.is_empty() {
            let init = c.state.init.ok_or_else(|| anyhow::anyhow!("container {} is not running", c.config.id))?;
            let cgroup = strata_runner::Cgroup::of_container(init.pid, &c.config.id)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "container {} has no cgroup of its own to limit: as an ordinary user that takes cgroup v2 with a \
                     delegated subtree and a limit given at run",
                    c.short_id()
                )
            })?;
            cgroup.set_limits(&limits)?;
        }
        let _names = record::lock(&ctx.layout)?;
        let mut cfg = record::read_dir_record(&c.dir).map(|c| c.config).unwrap_or(c.config);
        cfg.request.resources.merge(&a.resources);
        if a.restart.is_some() {
            cfg.request.restart = a.restart.clone();
        }
        record::write_json(&c.dir.join("config.json"), &cfg)
    }))
}

fn pause(ctx: &Context, a: PauseArgs, freeze: bool) -> Result<i32> {
    Ok(each_container(ctx, &a.containers, |_, c| {
        if !c.running() {
            bail!("Container {} is not running", c.config.id);
        }
        let cg = container_cgroup(&c)?;
        match (freeze, cg.is_frozen()) {
            (true, true) => bail!("Container {} is already paused", c.config.id),
            (false, false) => bail!("Container {} is not paused", c.config.id),
            _ => {
                cg.set_frozen(freeze)?;
                supervisor::container_event(ctx, &c, if freeze { "pause" } else { "unpause" }, &[]);
                Ok(())
            }
        }
    }))
}

fn kill(ctx: &Context, a: KillArgs) -> Result<i32> {
    let sig = signals::parse(&a.signal)?;
    Ok(each_container(ctx, &a.containers, |key, c| {
        if !c.running() {
            bail!("cannot kill container: {key}: container {} is not running", c.config.id);
        }
        if sig == nix::sys::signal::Signal::SIGKILL {
            mark_stop_requested(&ctx.layout, &c);
        }
        supervisor::signal_container(&c, sig)?;
        supervisor::container_event(ctx, &c, "kill", &[("signal", &(sig as i32).to_string())]);
        if sig == nix::sys::signal::Signal::SIGKILL {
            thaw_if_paused(&c);
            supervisor::wait_supervisor(&c, Some(Duration::from_secs(10)));
        }
        Ok(())
    }))
}

/// Removes one container (`force`: kills it first if it runs).
pub fn remove_container(ctx: &Context, key: &str, force: bool, volumes: bool) -> Result<()> {
    let c = record::find_fresh(&ctx.layout, key)?;
    if let Some(m) = crate::mounts::container_mount(&ctx.layout, &c.config.id) {
        bail!(mounted_error(&c, &m));
    }
    if c.running() {
        if !force {
            bail!(running_error(&c));
        }
        supervisor::container_event(ctx, &c, "kill", &[("signal", "9")]);
        kill_container(&ctx.layout, &c);
    } else if c.state.is_restarting() {
        if !force {
            bail!(
                "You cannot remove a restarting container {}. Stop the container before attempting removal or force \
                 remove",
                c.config.id
            );
        }
        // Between two runs: its supervisor gives up within a back-off check.
        record::update_state(&ctx.layout, &c.dir, |s| s.stop_requested = true)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while c.state.restarting.is_some_and(|p| p.alive()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    } else if c.state.supervisor.is_some_and(|p| p.alive()) {
        // A supervisor that is starting or finishing up (e.g. a failed start).
        supervisor::wait_supervisor(&c, Some(Duration::from_secs(10)));
    }
    let c = record::refresh(&ctx.layout, c)?;
    mark_removing(&ctx.layout, &c)?;
    run::remove_container_files(ctx, &c, volumes)
}

/// The refusal to remove a container that `strata mount` serves.
fn mounted_error(c: &Container, m: &crate::mounts::MountRecord) -> String {
    format!("cannot remove container \"/{}\": it is {}; {} first", c.config.name, m.place(), m.release_hint())
}

/// Docker's refusal to remove a running container.
fn running_error(c: &Container) -> String {
    format!(
        "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
        c.config.name
    )
}

/// Marks the container as being removed, under the records lock, unless a
/// `start` got to it since we looked: a supervisor that claimed it (see
/// `supervisor::claim`) keeps it, and one that comes later refuses it.
fn mark_removing(layout: &strata_layers::StoreLayout, c: &Container) -> Result<()> {
    let _lock = record::lock(layout)?;
    let Some(mut cur) = record::read_dir_record(&c.dir) else { return Ok(()) };
    if cur.running() || cur.state.supervisor.is_some_and(|p| p.alive()) {
        bail!(running_error(&cur));
    }
    // Again under the lock, which `strata mount` holds until its record is
    // written: a mount may have come since the check in remove_container.
    if let Some(m) = crate::mounts::container_mount(layout, &cur.config.id) {
        bail!(mounted_error(&cur, &m));
    }
    cur.state.status = Status::Removing;
    record::save_state(&cur)
}

fn rm(ctx: &Context, a: RmArgs) -> Result<i32> {
    let mut status = 0;
    for key in &a.containers {
        match remove_container(ctx, key, a.force, a.volumes) {
            Ok(()) => println!("{key}"),
            Err(e) => {
                daemon_err(&e);
                status = 1;
            }
        }
    }
    Ok(status)
}

fn wait(ctx: &Context, a: WaitArgs) -> Result<i32> {
    let mut status = 0;
    for key in &a.containers {
        let r = record::find_fresh(&ctx.layout, key).map(|c| {
            // A running container's supervisor tells its clients the exit
            // status, also when `--rm` removes the record right after.
            if c.running() {
                if let Some(code) = attach::connect(&c.dir).ok().and_then(wait_for_exit_frame) {
                    return code;
                }
            }
            supervisor::wait_supervisor(&c, None);
            record::read_dir_record(&c.dir)
                .and_then(|c| record::refresh(&ctx.layout, c).ok())
                .map(|c| c.state.exit_code)
                .unwrap_or(c.state.exit_code)
        });
        match r {
            Ok(code) => println!("{code}"),
            Err(e) => {
                daemon_err(&e);
                status = 1;
            }
        }
    }
    Ok(status)
}

/// Reads an attach stream until its `EXIT` frame (output is ignored).
fn wait_for_exit_frame(mut stream: std::os::unix::net::UnixStream) -> Option<i32> {
    loop {
        match attach::read_frame(&mut stream).ok()?? {
            (attach::EXIT, p) if p.len() >= 4 => return Some(i32::from_be_bytes([p[0], p[1], p[2], p[3]])),
            _ => continue,
        }
    }
}

// ---------------------------------------------------------------------------
// logs

#[derive(serde::Deserialize)]
struct LogRecord {
    stream: String,
    time: String,
    log: String,
}

/// A `--since`/`--until` value as Docker reads it: an RFC 3339 time, Unix
/// seconds (fractions allowed), or a Go duration back from now (`42m`,
/// `1h30m`, `10s`).
pub(crate) fn log_time_bound(s: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Some(t) = parse_time(&Some(s.to_string())).or_else(|| partial_time(s)) {
        return Ok(t);
    }
    if let Ok(secs) = s.parse::<f64>() {
        let nanos = (secs * 1e9) as i64;
        return Ok(chrono::DateTime::from_timestamp_nanos(nanos));
    }
    let ago = format::go_duration(s).with_context(|| {
        format!(
            "invalid value for --since/--until: {s:?} \
             (a time such as 2013-01-02T13:23:37Z, Unix seconds, or a duration such as 42m)"
        )
    })?;
    Ok(chrono::Utc::now() - ago)
}

/// Docker's shorter time forms (`timetypes.GetTimestamp`): a date, or a
/// date and time down to the hour, minute, second or a fraction, in local
/// time unless a zone (`Z`, `+01:00`) follows.
fn partial_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone};
    let date_len = 10;
    let (local, zone) = match s.get(date_len..).map(|rest| rest.find(['Z', 'z', '+', '-'])) {
        Some(Some(at)) => (&s[..date_len + at], Some(&s[date_len + at..])),
        _ => (s, None),
    };
    let naive = if local.len() == date_len {
        NaiveDate::parse_from_str(local, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0)?
    } else {
        ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(local, f).ok())
            .or_else(|| NaiveDateTime::parse_from_str(&format!("{local}:00"), "%Y-%m-%dT%H:%M").ok())?
    };
    match zone {
        None => chrono::Local.from_local_datetime(&naive).earliest().map(|t| t.with_timezone(&chrono::Utc)),
        Some("Z" | "z") => Some(chrono::Utc.from_utc_datetime(&naive)),
        Some(offset) => {
            let fixed =
                chrono::DateTime::parse_from_str(&format!("2000-01-01T00:00:00{offset}"), "%Y-%m-%dT%H:%M:%S%:z")
                    .ok()?
                    .offset()
                    .to_owned();
            fixed.from_local_datetime(&naive).single().map(|t| t.with_timezone(&chrono::Utc))
        }
    }
}

fn logs(ctx: &Context, a: LogsArgs) -> Result<i32> {
    let c = record::find_fresh(&ctx.layout, &a.container).map_err(fail)?;
    let tail: Option<usize> = match a.tail.as_str() {
        "all" | "-1" => None,
        n => Some(n.parse().with_context(|| format!("invalid value for --tail: {n}"))?),
    };
    let since = a.since.as_deref().map(log_time_bound).transpose()?;
    let until = a.until.as_deref().map(log_time_bound).transpose()?;
    // A line is shown when its time is within --since/--until.
    let within = |line: &str| {
        if since.is_none() && until.is_none() {
            return true;
        }
        let Ok(r) = serde_json::from_str::<LogRecord>(line) else { return false };
        let Some(t) = parse_time(&Some(r.time)) else { return false };
        since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u)
    };
    if !crate::containers::logs::LogPolicy::of(&c.config.request).is_ok_and(|p| p.keep) {
        eprintln!("Error response from daemon: configured logging driver does not support reading");
        return Err(exit::with_code(1, None));
    }
    let path = c.log_path();
    // Rotated files first, oldest first (`--log-opt max-size`); then the
    // current one, which is followed.
    let mut earlier = String::new();
    for f in crate::containers::logs::files_oldest_first(&path).iter().filter(|f| **f != path) {
        if let Ok(text) = std::fs::read_to_string(f) {
            earlier.push_str(&text);
        }
    }
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !a.follow {
                return Ok(0);
            }
            // Not started yet: wait for the file.
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(f) = std::fs::File::open(&path) {
                    break f;
                }
                if record::read_dir_record(&c.dir).is_none() {
                    return Ok(0);
                }
            }
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let emit = |line: &str, stdout: &mut std::io::StdoutLock, stderr: &mut std::io::Stderr| {
        let Ok(r) = serde_json::from_str::<LogRecord>(line) else { return };
        let mut text = String::new();
        if a.timestamps {
            text.push_str(&r.time);
            text.push(' ');
        }
        text.push_str(&r.log);
        let _ = if r.stream == "stderr" {
            stderr.write_all(text.as_bytes())
        } else {
            stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush())
        };
    };
    // What is there now (honouring --tail), then follow.
    let mut lines: Vec<String> = earlier.lines().filter(|l| within(l)).map(|l| format!("{l}\n")).collect();
    let mut reader = std::io::BufReader::new(file);
    let mut pending = String::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l)? == 0 {
            break;
        }
        if !l.ends_with('\n') {
            pending = l;
        } else if within(l.trim_end_matches('\n')) {
            lines.push(l);
        }
    }
    let start = tail.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    for l in &lines[start..] {
        emit(l.trim_end_matches('\n'), &mut stdout, &mut stderr);
    }
    if !a.follow {
        return Ok(0);
    }
    loop {
        let mut l = String::new();
        let n = reader.read_line(&mut l)?;
        if n > 0 {
            pending.push_str(&l);
            if pending.ends_with('\n') {
                if within(pending.trim_end_matches('\n')) {
                    emit(pending.trim_end_matches('\n'), &mut stdout, &mut stderr);
                }
                pending.clear();
            }
            continue;
        }
        // Rotated away under us: once the rest of it is read, go on with the
        // file that came after it (the current one, or, when the log turned
        // over more than once meanwhile, a rotated one).
        if let Some(next) = next_log_file(&path, reader.get_ref()) {
            // (Written to just before it moved aside: the rest of it first.)
            let mut l = String::new();
            while reader.read_line(&mut l)? > 0 {
                pending.push_str(&l);
                l.clear();
                if pending.ends_with('\n') {
                    if within(pending.trim_end_matches('\n')) {
                        emit(pending.trim_end_matches('\n'), &mut stdout, &mut stderr);
                    }
                    pending.clear();
                }
            }
            reader = std::io::BufReader::new(next);
            continue;
        }
        let still = record::read_dir_record(&c.dir)
            .and_then(|c| record::refresh(&ctx.layout, c).ok())
            .is_some_and(|c| c.running() || c.state.supervisor.is_some_and(|p| p.alive()));
        if !still {
            // One last read: the supervisor writes the log before it exits.
            let mut l = String::new();
            while reader.read_line(&mut l)? > 0 {
                pending.push_str(&l);
                l.clear();
            }
            for line in pending.lines().filter(|l| within(l)) {
                emit(line, &mut stdout, &mut stderr);
            }
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The log file written after `current` (by inode, among the rotated files
/// oldest first and the current one), once `current` is no longer the one
/// being written; the oldest left when `current` has gone altogether.
fn next_log_file(path: &std::path::Path, current: &std::fs::File) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt as _;
    let ours = current.metadata().ok()?.ino();
    let files: Vec<(std::path::PathBuf, u64)> = crate::containers::logs::files_oldest_first(path)
        .into_iter()
        .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m.ino())))
        .collect();
    if files.last().is_some_and(|(_, ino)| *ino == ours) {
        return None; // still the one being written
    }
    let next = match files.iter().position(|(_, ino)| *ino == ours) {
        Some(i) => files.get(i + 1)?,
        None => files.first()?,
    };
    std::fs::File::open(&next.0).ok()
}

// ---------------------------------------------------------------------------
// top / rename / port / diff / attach

/// Host pids of every process in the container's pid namespace.
pub fn container_pids(c: &Container) -> Vec<i32> {
    let Some(init) = c.state.init.filter(|p| p.alive()) else { return Vec::new() };
    let Ok(ns) = std::fs::read_link(format!("/proc/{}/ns/pid", init.pid)) else { return vec![init.pid] };
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l == ns) {
                out.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

fn top(ctx: &Context, a: TopArgs) -> Result<i32> {
    let c = record::find_fresh(&ctx.layout, &a.container).map_err(fail)?;
    if !c.running() {
        return Err(fail(anyhow::anyhow!("container {} is not running", c.config.id)));
    }
    let pids = container_pids(&c);
    let ps_args: Vec<String> = if a.ps_args.is_empty() { vec!["-ef".into()] } else { a.ps_args.clone() };
    let out = std::process::Command::new("ps")
        .args(&ps_args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running ps")?;
    if !out.status.success() {
        return Err(fail(anyhow::anyhow!("ps: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let pid_col = header.split_whitespace().position(|h| h == "PID").context("ps output has no PID column")?;
    let mut rows = vec![header.split_whitespace().map(String::from).collect::<Vec<_>>()];
    let ncols = rows[0].len();
    for l in lines {
        let mut fields: Vec<String> = l.split_whitespace().map(String::from).collect();
        if fields.get(pid_col).and_then(|p| p.parse::<i32>().ok()).is_some_and(|p| pids.contains(&p)) {
            if fields.len() > ncols {
                let rest = fields.split_off(ncols - 1).join(" ");
                fields.push(rest);
            }
            rows.push(fields);
        }
    }
    let table: String = rows.iter().map(|r| r.join("\t") + "\n").collect();
    print!("{}", format::tabwrite(&table));
    Ok(0)
}

fn rename(ctx: &Context, a: RenameArgs) -> Result<i32> {
    let new = crate::containers::names::validate(&a.new_name).map_err(|m| fail(anyhow::anyhow!(m)))?;
    let _lock = record::lock(&ctx.layout)?;
    let c = record::find(&ctx.layout, &a.container).map_err(fail)?;
    if c.config.name == new {
        return Err(fail(anyhow::anyhow!("Renaming a container with the same name as its current name")));
    }
    if let Some(other) = record::list(&ctx.layout)?.into_iter().find(|o| o.config.name == new) {
        return Err(fail(anyhow::anyhow!(
            "Error when allocating new name: Conflict. The container name \"/{new}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
            other.config.id
        )));
    }
    let mut cfg = c.config.clone();
    cfg.name = new;
    record::write_json(&c.dir.join("config.json"), &cfg)?;
    let renamed = Container { config: cfg, ..c.clone() };
    // Its peers on a user network know it by the new name from now on.
    if let Some(Ok(Some(net))) = c.config.user_network().filter(|_| c.running()).map(|n| networks::find(ctx, n)) {
        if let Some(ip) = networks::lease_of(ctx, &net, &c.config.id) {
            networks::update_members_hosts(ctx, &net, &c.config.id, &networks::hosts_line(ip, &c), false);
            networks::update_members_hosts(ctx, &net, &c.config.id, &networks::hosts_line(ip, &renamed), true);
        }
    }
    supervisor::container_event(ctx, &renamed, "rename", &[("oldName", &format!("/{}", c.config.name))]);
    Ok(0)
}

fn port(ctx: &Context, a: PortArgs) -> Result<i32> {
    let c = record::find_fresh(&ctx.layout, &a.container).map_err(fail)?;
    let bindings: Vec<_> = if c.running() && c.config.uses_pasta() { c.config.ports.clone() } else { vec![] };
    match a.port {
        Some(p) => {
            let (num, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
            let num: u16 = num.parse().with_context(|| format!("Invalid port: {p}"))?;
            let found: Vec<_> = bindings.iter().filter(|b| b.container_port == num && b.proto == proto).collect();
            if found.is_empty() {
                return Err(fail(anyhow::anyhow!("No public port '{num}/{proto}' published for {}", a.container)));
            }
            for b in found {
                let ip = if b.host_ip.is_empty() { "0.0.0.0" } else { &b.host_ip };
                println!("{ip}:{}", b.host_port);
            }
        }
        None => {
            for b in &bindings {
                let ip = if b.host_ip.is_empty() { "0.0.0.0" } else { &b.host_ip };
                println!("{}/{} -> {ip}:{}", b.container_port, b.proto, b.host_port);
            }
        }
    }
    Ok(0)
}

fn diff(ctx: &Context, a: DiffArgs) -> Result<i32> {
    let c = record::find_fresh(&ctx.layout, &a.container).map_err(fail)?;
    let store = strata_layers::store::Store::open(ctx.layout.clone())?;
    let lowers = c.lowers(&store)?;
    let upper = c.upper();
    let runtime = runtime_paths(&c);
    let changes: Vec<(char, String)> = crate::containers::spec::in_user_namespace(ctx, move || {
        let hidden: Vec<&[u8]> = runtime.iter().map(Vec::as_slice).collect();
        Ok(strata_fs::changes_hiding(&lowers, &upper, &hidden)?
            .into_iter()
            .map(|ch| (ch.kind.letter(), ch.path))
            .collect())
    })?;
    for (letter, path) in changes {
        println!("{letter} {path}");
    }
    Ok(0)
}

/// The mount points the runner makes in a container's filesystem (Docker
/// keeps them in a separate "init" layer): not the container's changes, for
/// `diff` and `commit` alike. Relative paths, like `etc/hosts`.
pub fn runtime_paths(c: &record::Container) -> Vec<Vec<u8>> {
    let mut runtime: Vec<Vec<u8>> = ["dev", "proc", "sys", "etc/hosts", "etc/hostname", "etc/resolv.conf"]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    runtime.extend(c.config.mounts.iter().map(|m| {
        m.destination.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/").into_bytes()
    }));
    runtime
}

fn attach_cmd(ctx: &Context, a: AttachArgs) -> Result<i32> {
    let c = record::find_fresh(&ctx.layout, &a.container).map_err(fail)?;
    if !c.running() {
        eprintln!("You cannot attach to a stopped container, start it first");
        return Err(exit::with_code(1, None));
    }
    let stream = attach::connect(&c.dir)?;
    let keys = attach::parse_detach_keys(a.detach_keys.as_deref().or(c.config.request.detach_keys.as_deref()))?;
    let outcome = attach::run_client(
        stream,
        attach::ClientOptions {
            stdin: !a.no_stdin && c.config.request.interactive,
            tty: c.config.request.tty,
            detach_keys: keys,
            sig_proxy: a.sig_proxy && !c.config.request.tty,
            kill_on_interrupt: false,
        },
    );
    run::finish_attached(outcome)
}

// ---------------------------------------------------------------------------
// inspect / prune

fn rfc3339_or_zero(t: &Option<String>) -> String {
    t.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

/// Docker's `inspect` object for a container.
pub fn inspect_value(ctx: &Context, c: &Container, size: bool) -> Value {
    let cfg = &c.config;
    let st = &c.state;
    let ports: serde_json::Map<String, Value> = cfg
        .exposed_ports
        .iter()
        .map(|p| {
            let bindings: Vec<Value> = cfg
                .ports
                .iter()
                .filter(|b| format!("{}/{}", b.container_port, b.proto) == *p)
                .map(|b| {
                    json!({"HostIp": if b.host_ip.is_empty() { "0.0.0.0" } else { &b.host_ip }, "HostPort": b.host_port.to_string()})
                })
                .collect();
            (p.clone(), if bindings.is_empty() || !c.running() { Value::Null } else { Value::Array(bindings) })
        })
        .collect();
    let port_bindings: serde_json::Map<String, Value> = cfg
        .ports
        .iter()
        .map(|b| {
            (
                format!("{}/{}", b.container_port, b.proto),
                json!([{"HostIp": b.host_ip, "HostPort": b.host_port.to_string()}]),
            )
        })
        .collect();
    let exposed: serde_json::Map<String, Value> = cfg.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect();
    let mounts: Vec<Value> = cfg
        .mounts
        .iter()
        .map(|m| {
            let mut v = json!({
                "Type": m.kind,
                "Source": m.source,
                "Destination": m.destination,
                "Mode": if m.kind == "bind" { "" } else { "z" },
                "RW": m.rw,
                "Propagation": if m.kind == "bind" { "rprivate" } else { "" },
            });
            if m.kind == "volume" {
                v["Name"] = json!(m.name);
                v["Driver"] = json!("local");
            }
            v
        })
        .collect();
    let pid = st.init.filter(|_| c.running()).map(|p| p.pid).unwrap_or(0);
    let paused = is_paused(c);
    let restarting = st.is_restarting();
    let mut state = json!({
        "Status": if paused { "paused" } else if restarting { "restarting" } else { st.status.as_str() },
        "Running": c.running(),
        "Paused": paused,
        "Restarting": restarting,
        "OOMKilled": st.oom_killed,
        "Dead": false,
        "Pid": pid,
        "ExitCode": st.exit_code,
        "Error": st.error,
        "StartedAt": rfc3339_or_zero(&st.started_at),
        "FinishedAt": rfc3339_or_zero(&st.finished_at),
    });
    // Only a container with a health check has `Health` (Docker's shape).
    if let Some(h) = st.health.as_ref().filter(|_| c.config.healthcheck.is_some()) {
        state["Health"] = serde_json::to_value(h).unwrap_or_default();
    }
    let restart = crate::containers::restart::Policy::parse(cfg.request.restart.as_deref())
        .map(|p| p.docker_name())
        .unwrap_or(("no", 0));
    let host_config = json!({
        "Binds": cfg.request.volumes,
        "NetworkMode": cfg.network,
        "PidMode": cfg.request.pid.clone().unwrap_or_default(),
        "IpcMode": cfg.request.ipc.clone().unwrap_or_else(|| "private".into()),
        "UTSMode": cfg.request.uts.clone().unwrap_or_default(),
        "CgroupnsMode": cfg.request.cgroupns.clone().unwrap_or_else(|| "host".into()),
        "PortBindings": port_bindings,
        "AutoRemove": cfg.request.rm,
        "CapAdd": cfg.request.cap_add,
        "CapDrop": cfg.request.cap_drop,
        "Dns": cfg.request.dns,
        "ExtraHosts": cfg.request.add_host,
        "Privileged": cfg.request.privileged,
        "ReadonlyRootfs": cfg.request.read_only,
        "SecurityOpt": cfg.request.security_opt,
        "Init": cfg.request.init,
        "OomScoreAdj": cfg.request.oom_score_adj.unwrap_or(0),
        "LogConfig": {
            "Type": cfg.request.log_driver.clone().unwrap_or_else(|| "json-file".into()),
            "Config": cfg.request.log_opt.iter().filter_map(|o| o.split_once('=')).map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<String, Value>>(),
        },
        "RestartPolicy": {
            "Name": restart.0,
            "MaximumRetryCount": restart.1,
        },
        "Tmpfs": cfg.request.tmpfs,
    });
    let mut host_config = host_config;
    if let Value::Object(m) = &mut host_config {
        m.extend(cfg.request.resources.host_config(&cfg.request.create_limits));
    }
    let config = json!({
        "Hostname": cfg.hostname,
        "Domainname": cfg.request.domainname.clone().unwrap_or_default(),
        "User": cfg.user,
        "AttachStdin": cfg.request.interactive,
        "AttachStdout": true,
        "AttachStderr": true,
        "ExposedPorts": if exposed.is_empty() { Value::Null } else { Value::Object(exposed) },
        "Tty": cfg.request.tty,
        "OpenStdin": cfg.request.interactive,
        "StdinOnce": cfg.request.interactive,
        "Env": cfg.env,
        "Cmd": if cfg.cmd.is_empty() { Value::Null } else { json!(cfg.cmd) },
        "Image": cfg.image,
        "Volumes": Value::Null,
        "WorkingDir": cfg.working_dir,
        "Entrypoint": if cfg.entrypoint.is_empty() { Value::Null } else { json!(cfg.entrypoint) },
        "OnBuild": Value::Null,
        "Labels": cfg.labels,
        "StopSignal": cfg.stop_signal,
        "StopTimeout": cfg.stop_timeout,
    });
    let mut v = json!({
        "Id": cfg.id,
        "Created": cfg.created,
        "Path": cfg.path,
        "Args": cfg.args,
        "State": state,
        "Image": cfg.image_id,
        "ResolvConfPath": c.dir.join("resolv.conf"),
        "HostnamePath": c.dir.join("hostname"),
        "HostsPath": c.dir.join("hosts"),
        "LogPath": c.log_path(),
        "Name": format!("/{}", cfg.name),
        "RestartCount": st.restart_count,
        "Driver": "strata",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": Value::Null,
        "HostConfig": host_config,
        "GraphDriver": {
            "Name": "strata",
            "Data": {
                "UpperDir": c.upper(),
                "MergedDir": c.rootfs(),
            }
        },
        "Mounts": mounts,
        "Config": config,
        "NetworkSettings": {
            // (Docker's default-bridge fields: strata's default network is
            // pasta's copy of the host's, with no address of its own to show.)
            "Bridge": "",
            "Gateway": "",
            "IPAddress": "",
            "IPPrefixLen": 0,
            "MacAddress": "",
            "Ports": ports,
            "SandboxKey": if pid > 0 { format!("/proc/{pid}/ns/net") } else { String::new() },
            "Networks": user_network_settings(ctx, c),
        },
    });
    if size {
        let rw = upper_size(c);
        v["SizeRw"] = json!(rw);
        v["SizeRootFs"] = json!(rw + image_size(ctx, c));
    }
    v
}

/// `NetworkSettings.Networks` for a container on a user-defined network:
/// its address there while it runs.
fn user_network_settings(ctx: &Context, c: &Container) -> Value {
    use crate::containers::networks;
    let Some(Ok(Some(net))) = c.config.user_network().map(|n| networks::find(ctx, n)) else { return json!({}) };
    let ip = networks::lease_of(ctx, &net, &c.config.id).filter(|_| c.running());
    let (len, gateway) = (net.range().map(|(_, l)| l).unwrap_or(24), net.gateway().ok());
    let mut dns_names = vec![c.config.name.clone(), c.config.id[..12].to_string()];
    dns_names.extend(c.config.request.network_alias.iter().cloned());
    json!({ net.name.clone(): {
        "NetworkID": net.id,
        "IPAddress": ip.map(|i| i.to_string()).unwrap_or_default(),
        "IPPrefixLen": if ip.is_some() { len } else { 0 },
        "Gateway": gateway.map(|g| g.to_string()).unwrap_or_default(),
        "Aliases": c.config.request.network_alias,
        "DNSNames": dns_names,
    }})
}

/// For the generic `strata inspect NAME`: the container's inspect object,
/// or `None` when no container has that name or id (then it may be an image).
pub fn inspect_container(ctx: &Context, name: &str) -> Result<Option<Value>> {
    match record::find_fresh(&ctx.layout, name) {
        Ok(c) => Ok(Some(inspect_value(ctx, &c, false))),
        Err(e) if e.downcast_ref::<record::NoSuchContainer>().is_some() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Finds a container for `container inspect`.
pub fn inspect_one(ctx: &Context, key: &str, size: bool) -> Result<Value> {
    let c = record::find_fresh(&ctx.layout, key)?;
    Ok(inspect_value(ctx, &c, size))
}

fn inspect(ctx: &Context, a: InspectArgs) -> Result<i32> {
    let mut values = Vec::new();
    let mut status = 0;
    for key in &a.containers {
        match inspect_one(ctx, key, a.size) {
            Ok(v) => values.push(v),
            Err(e) => {
                eprintln!("Error: {e:#}");
                status = 1;
            }
        }
    }
    match a.format.as_deref() {
        None | Some("") | Some("json") => {
            println!("{}", serde_json::to_string_pretty(&Value::Array(values))?);
        }
        Some(f) => {
            for v in &values {
                let out = format::render_loose(f, v).map_err(|e| anyhow::anyhow!("template parsing error: {e}"))?;
                println!("{out}");
            }
        }
    }
    Ok(status)
}

fn prune(ctx: &Context, a: PruneArgs) -> Result<i32> {
    if !a.force && !crate::commands::support::confirm("WARNING! This will remove all stopped containers.")? {
        return Ok(0);
    }
    let mut labels = Vec::new();
    let mut until = None;
    for f in &a.filter {
        let (k, v) = f.split_once('=').with_context(|| format!("bad format of filter (expected name=value): {f}"))?;
        match k {
            "label" => labels.push(v.to_string()),
            "until" => until = Some(log_time_bound(v)?),
            _ => bail!("invalid filter '{k}'"),
        }
    }
    prune_containers_until(ctx, &labels, until)?.print();
    Ok(0)
}

/// Removes every stopped container that has all of `labels`.
pub fn prune_containers(ctx: &Context, labels: &[String]) -> Result<crate::commands::support::Pruned> {
    prune_containers_until(ctx, labels, None)
}

/// [`prune_containers`] of those created before `until` (`--filter until=`).
fn prune_containers_until(
    ctx: &Context,
    labels: &[String],
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<crate::commands::support::Pruned> {
    let mut pruned = crate::commands::support::Pruned { heading: "Deleted Containers", items: Vec::new(), bytes: 0 };
    for c in record::list_fresh(&ctx.layout)? {
        if c.running() || c.state.supervisor.is_some_and(|p| p.alive()) {
            continue;
        }
        let created = parse_time(&Some(c.config.created.clone()));
        if until.is_some_and(|u| created.is_none_or(|t| t >= u)) {
            continue;
        }
        if !labels.iter().all(|f| matches_filter(ctx, &c, "label", f, &HashMap::new()).unwrap_or(false)) {
            continue;
        }
        let size = upper_size(&c);
        if remove_container(ctx, &c.config.id, false, false).is_ok() {
            pruned.bytes += size;
            pruned.items.push(c.config.id.clone());
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dockers_short_time_forms() {
        use chrono::TimeZone;
        let utc = |s: &str| super::log_time_bound(s).unwrap().to_rfc3339();
        assert_eq!(utc("2026-11-29T05:07Z"), "2026-11-29T05:07:00+00:00");
        assert_eq!(utc("2026-11-29Z"), "2026-11-29T00:00:00+00:00");
        assert_eq!(utc("2026-11-29T05:07:30.5+01:00"), "2026-11-29T04:07:30.500+00:00");
        assert_eq!(utc("2026-11-29T06Z"), "2026-11-29T06:00:00+00:00");
        // Local time without a zone (this test's TZ is whatever the host's is).
        let local = chrono::Local.with_ymd_and_hms(2026, 11, 29, 5, 7, 0).unwrap().with_timezone(&chrono::Utc);
        assert_eq!(utc("2026-11-29T05:07"), local.to_rfc3339());
        assert!(super::log_time_bound("2026-13-40").is_err());
    }

    use super::*;
    use crate::containers::record::{test_record, Proc};

    #[test]
    fn rm_leaves_a_container_that_a_start_claimed_meanwhile() {
        let root = std::env::temp_dir().join(format!("strata-rm-test-{}", std::process::id()));
        let layout = strata_layers::StoreLayout::new(root.clone());
        let status = |c: &Container| record::read_dir_record(&c.dir).map(|c| c.state.status);

        // Looked stopped to rm, but a supervisor (here: us) claimed it since.
        let mut claimed = test_record(&layout, "claimed");
        claimed.state.supervisor = Proc::of(std::process::id() as i32);
        record::save_state(&claimed).unwrap();
        let err = mark_removing(&layout, &claimed).expect_err("removal of a claimed container");
        assert!(err.to_string().contains("container is running"), "{err}");
        assert_eq!(status(&claimed), Some(Status::Created));

        let mut running = test_record(&layout, "running");
        running.state.status = Status::Running;
        record::save_state(&running).unwrap();
        assert!(mark_removing(&layout, &running).is_err());
        assert_eq!(status(&running), Some(Status::Running));

        let stopped = test_record(&layout, "stopped");
        mark_removing(&layout, &stopped).unwrap();
        assert_eq!(status(&stopped), Some(Status::Removing));
        let _ = std::fs::remove_dir_all(&root);
    }
}
