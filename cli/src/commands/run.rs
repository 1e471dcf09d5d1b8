//! `run`, `create` and `start`: turning an image plus Docker's creation flags
//! into a container record, and starting its supervisor.
//!
//! `create` resolves everything that can be resolved once (the image and its
//! layers, Entrypoint/Cmd, environment, user, working directory, volumes,
//! ports, hostname) into `config.json`, so that a later `start` from any
//! shell runs exactly the same container. `run` is `create` + `start` +
//! attach, with Docker's exit statuses: 125 when strata fails, 126 when the
//! command cannot be executed, 127 when it is not found, otherwise the
//! container's own status (128+N when killed by signal N).
//!
//! Every start goes through a separate supervisor process
//! (`strata internal-supervise`, see `containers/supervisor.rs`), also for a
//! foreground `run`: the client attaches to it over a socket pair. One code
//! path serves `run`, `run -d`, `run -it` with detach keys, `start -a` and
//! `attach`; the container outlives a client that exits or is killed; and the
//! supervisor starts single-threaded, which a rootless supervisor needs to
//! enter a new user namespace (a client that just pulled an image with a
//! thread pool could not). The cost is one more fork+exec per start.
//!
//! Networking default: `private` (own network namespace connected by pasta)
//! when `pasta` is installed, like rootless Podman; otherwise `host`, with a
//! warning, since there would be no other way to reach the network.
//! `container:NAME` shares another container's network namespace (and, for
//! an ordinary user, its user namespace: see `containers::spec`).

use crate::containers::record::{self, Container, ContainerConfig, ContainerState, PortBinding};
use crate::containers::{attach, images, names, supervisor, volumes};
use crate::context::Context;
use crate::exit;
use anyhow::{bail, Context as _, Result};
use clap::{ArgAction, Args};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The flags shared by `run` and `create` (Docker's names and short forms).
#[derive(Args, Serialize, Deserialize, Clone, Debug, Default)]
pub struct CreateArgs {
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Automatically remove the container and its anonymous volumes when it exits
    #[arg(long)]
    pub rm: bool,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (KEY=VALUE, or KEY to take it from this environment)
    #[arg(short = 'e', long = "env", value_name = "list")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file", value_name = "list")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir", value_name = "string")]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long, value_name = "string")]
    pub user: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long, value_name = "string")]
    pub entrypoint: Option<String>,
    /// Bind mount a volume (HOST:CTR[:ro], NAME:CTR[:ro] or CTR for an anonymous volume)
    #[arg(short = 'v', long = "volume", value_name = "list")]
    pub volumes: Vec<String>,
    /// Attach a filesystem mount (type=bind|volume|tmpfs,source=,target=,readonly)
    #[arg(long = "mount", value_name = "mount")]
    pub mounts: Vec<String>,
    /// Mount a tmpfs directory (PATH[:OPTIONS])
    #[arg(long = "tmpfs", value_name = "list")]
    pub tmpfs: Vec<String>,
    /// Mount volumes from the specified container(s) (CONTAINER[:ro|:rw])
    #[arg(long = "volumes-from", value_name = "list")]
    #[serde(default)]
    pub volumes_from: Vec<String>,
    /// Mount the container's root filesystem as read only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Container host name
    #[arg(short = 'h', long, value_name = "string")]
    pub hostname: Option<String>,
    /// Logging driver for the container (json-file, local, k8s-file: strata's log; none)
    #[arg(long = "log-driver", value_name = "string")]
    #[serde(default)]
    pub log_driver: Option<String>,
    /// Log driver options (max-size=SIZE, max-file=N)
    #[arg(long = "log-opt", value_name = "list")]
    #[serde(default)]
    pub log_opt: Vec<String>,
    /// Container NIS domain name
    #[arg(long, value_name = "string")]
    #[serde(default)]
    pub domainname: Option<String>,
    /// Tune host's OOM preferences (-1000 to 1000)
    #[arg(long = "oom-score-adj", value_name = "int", allow_hyphen_values = true)]
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// Add a custom host-to-IP mapping (host:ip)
    #[arg(long = "add-host", value_name = "list")]
    pub add_host: Vec<String>,
    /// Set custom DNS servers
    #[arg(long = "dns", value_name = "list")]
    pub dns: Vec<String>,
    /// Set custom DNS search domains
    #[arg(long = "dns-search", value_name = "list")]
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// Set DNS options
    #[arg(long = "dns-option", value_name = "list")]
    #[serde(default)]
    pub dns_option: Vec<String>,
    /// Connect a container to a network (private, host, none, or container:NAME to share another container's)
    #[arg(long = "network", alias = "net", value_name = "network")]
    pub network: Option<String>,
    /// IPv4 address (e.g., 10.89.1.10) on a user-defined network
    #[arg(long, value_name = "string")]
    #[serde(default)]
    pub ip: Option<String>,
    /// Add network-scoped alias for the container (user-defined networks)
    #[arg(long = "network-alias", value_name = "list")]
    #[serde(default)]
    pub network_alias: Vec<String>,
    /// Publish a container's port(s) to the host ([IP:]HOST:CTR[/PROTO])
    #[arg(short = 'p', long = "publish", value_name = "list")]
    pub publish: Vec<String>,
    /// Run an init inside the container that forwards signals and reaps processes
    #[arg(long)]
    pub init: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub resources: crate::containers::resources::ResourceArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub create_limits: crate::containers::resources::CreateLimitArgs,
    /// Add Linux capabilities
    #[arg(long = "cap-add", value_name = "list")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long = "cap-drop", value_name = "list")]
    pub cap_drop: Vec<String>,
    /// Give extended privileges to this container
    #[arg(long)]
    pub privileged: bool,
    /// Security options (no-new-privileges)
    #[arg(long = "security-opt", value_name = "list")]
    pub security_opt: Vec<String>,
    /// Ulimit options (NAME=SOFT[:HARD])
    #[arg(long = "ulimit", value_name = "ulimit")]
    pub ulimit: Vec<String>,
    /// Signal to stop the container
    #[arg(long = "stop-signal", value_name = "string")]
    pub stop_signal: Option<String>,
    /// Timeout (in seconds) to stop a container
    #[arg(long = "stop-timeout", value_name = "int", allow_hyphen_values = true)]
    pub stop_timeout: Option<i64>,
    /// Command to run to check health
    #[arg(long = "health-cmd", value_name = "string")]
    #[serde(default)]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h) (default 30s)
    #[arg(long = "health-interval", value_name = "duration")]
    #[serde(default)]
    pub health_interval: Option<String>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long = "health-retries", value_name = "int")]
    #[serde(default)]
    pub health_retries: Option<i64>,
    /// Maximum time to allow one check to run (ms|s|m|h) (default 30s)
    #[arg(long = "health-timeout", value_name = "duration")]
    #[serde(default)]
    pub health_timeout: Option<String>,
    /// Start period for the container to initialize before counting retries towards unstable (ms|s|m|h)
    #[arg(long = "health-start-period", value_name = "duration")]
    #[serde(default)]
    pub health_start_period: Option<String>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long = "no-healthcheck")]
    #[serde(default)]
    pub no_healthcheck: bool,
    /// Write the container ID to the file
    #[arg(long, value_name = "string")]
    #[serde(default)]
    pub cidfile: Option<PathBuf>,
    /// Read in a line delimited file of labels
    #[arg(long = "label-file", value_name = "list")]
    #[serde(default)]
    pub label_file: Vec<PathBuf>,
    /// Publish all exposed ports to random ports
    #[arg(short = 'P', long = "publish-all")]
    #[serde(default)]
    pub publish_all: bool,
    /// Set platform if server is multi-platform capable
    #[arg(long, value_name = "string", env = "DOCKER_DEFAULT_PLATFORM")]
    #[serde(default)]
    pub platform: Option<String>,
    /// Add a host device to the container (HOST[:CONTAINER[:PERMISSIONS]])
    #[arg(long, value_name = "list")]
    #[serde(default)]
    pub device: Vec<String>,
    /// Sysctl options (namespaced ones: net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)
    #[arg(long, value_name = "map")]
    #[serde(default)]
    pub sysctl: Vec<String>,
    /// Add additional groups to join
    #[arg(long = "group-add", value_name = "list")]
    #[serde(default)]
    pub group_add: Vec<String>,
    /// PID namespace to use ("host" shares the host's, "container:NAME" another container's)
    #[arg(long, value_name = "string")]
    #[serde(default)]
    pub pid: Option<String>,
    /// IPC mode to use ("host" shares the host's, "container:NAME" another container's, with its /dev/shm)
    #[arg(long, value_name = "string")]
    #[serde(default)]
    pub ipc: Option<String>,
    /// UTS namespace to use ("host" shares the host's)
    #[arg(long, value_name = "string")]
    #[serde(default)]
    pub uts: Option<String>,
    /// Cgroup namespace to use ("host", or "private": the default on cgroup v2, as with Docker)
    #[arg(long, value_name = "string")]
    #[serde(default)]
    pub cgroupns: Option<String>,
    /// Suppress the pull output
    #[arg(short = 'q', long)]
    #[serde(skip)]
    pub quiet: bool,
    /// Size of /dev/shm
    #[arg(long = "shm-size", value_name = "bytes")]
    #[serde(default)]
    pub shm_size: Option<String>,
    /// Restart policy to apply when a container exits ("no", "always", "unless-stopped", "on-failure[:max-retries]")
    #[arg(long, value_name = "string")]
    #[serde(default)]
    pub restart: Option<String>,
    /// Set meta data on a container
    #[arg(short = 'l', long = "label", value_name = "list")]
    pub label: Vec<String>,
    /// Pull image before running ("always", "missing", "never")
    #[arg(long, default_value = "missing", value_name = "string")]
    pub pull: String,
    /// Expose a port or a range of ports
    #[arg(long, value_name = "list")]
    pub expose: Vec<String>,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys", value_name = "string")]
    pub detach_keys: Option<String>,
    /// The image to create the container from (from `image_and_command`).
    #[arg(skip)]
    pub image: String,
    /// Command and arguments (from `image_and_command`).
    #[arg(skip)]
    pub command: Vec<String>,
    /// The image, then the command and its arguments. One list, so that
    /// everything after the image is the container's, as with Docker
    /// (`run IMG --help`, `run --entrypoint sh IMG -c ...`): options end
    /// at the first word that is not one.
    #[arg(value_name = "IMAGE [COMMAND [ARG...]]", required = true, num_args = 1..)]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    #[serde(skip)]
    pub image_and_command: Vec<String>,
}

impl CreateArgs {
    /// Moves the parsed positional words into `image` and `command`.
    fn take_positionals(&mut self) {
        let mut words = std::mem::take(&mut self.image_and_command).into_iter();
        if let Some(image) = words.next() {
            self.image = image;
            self.command = words.collect();
        }
    }
}

/// `run`: `create` flags plus detaching and signal proxying.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run container in background and print container ID
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Proxy received signals to the process
    #[arg(long = "sig-proxy", default_value_t = true, action = ArgAction::Set, value_name = "bool")]
    pub sig_proxy: bool,
    #[command(flatten)]
    pub create: CreateArgs,
}

/// Prints an error the way Docker's CLI prints daemon errors for this verb
/// (`strata: Error response from daemon: ...`) and returns the exit status.
fn daemon_error(code: i32, msg: impl std::fmt::Display) -> anyhow::Error {
    eprintln!("strata: Error response from daemon: {msg}");
    exit::with_code(code, None)
}

/// The container whose network `--network container:NAME` joins, after
/// Docker's checks: it exists, and nothing is asked that would configure
/// the network it shares (ports, hostname, DNS, hosts entries are the
/// other container's). Whether it runs is checked at each start.
fn joined_network(ctx: &Context, args: &CreateArgs, name: &str) -> Result<record::Container> {
    let conflict = |what: &str| daemon_error(exit::STRATA_ERROR, format!("conflicting options: {what}"));
    if !args.publish.is_empty() || args.publish_all {
        return Err(conflict("port publishing and the container type network mode"));
    }
    if !args.expose.is_empty() {
        return Err(conflict("port exposing and the container type network mode"));
    }
    if args.hostname.is_some() {
        return Err(conflict("hostname and the network mode"));
    }
    if !args.dns.is_empty() || !args.dns_search.is_empty() || !args.dns_option.is_empty() {
        return Err(conflict("dns and the network mode"));
    }
    if !args.add_host.is_empty() {
        return Err(conflict("custom host-to-IP mapping and the network mode"));
    }
    if name.is_empty() {
        return Err(daemon_error(exit::STRATA_ERROR, "--network container: needs a container name or ID"));
    }
    record::find(&ctx.layout, name).map_err(|e| daemon_error(exit::STRATA_ERROR, format!("{e:#}")))
}

/// `strata create`: prints the new container's id.
pub fn create(ctx: &Context, args: CreateArgs) -> Result<i32> {
    let c = create_container(ctx, args)?;
    println!("{}", c.config.id);
    Ok(0)
}

/// `strata run`.
pub fn run(ctx: &Context, args: RunArgs) -> Result<i32> {
    if !args.detach {
        refuse_tty_without_terminal(args.create.interactive, args.create.tty)?;
    }
    let c = create_container(ctx, args.create.clone())?;
    if args.detach {
        let mut start = supervisor::launch(ctx, &c, false).map_err(start_error)?;
        start.wait_started().map_err(start_error)?;
        println!("{}", c.config.id);
        return Ok(0);
    }
    let interactive = c.config.request.interactive;
    let mut session = supervisor::launch(ctx, &c, true).map_err(start_error)?;
    let detach_keys = attach::parse_detach_keys(c.config.request.detach_keys.as_deref())?;
    let outcome = attach::run_client(
        session.take_stream()?,
        attach::ClientOptions {
            stdin: interactive,
            tty: c.config.request.tty,
            detach_keys,
            sig_proxy: args.sig_proxy && !c.config.request.tty,
            kill_on_interrupt: false,
        },
    );
    finish_attached(outcome)
}

/// Docker's CLI check before attaching: `-i` with `-t` relays a terminal,
/// so standard input must be one (exit 1 otherwise, before anything is created).
pub fn refuse_tty_without_terminal(interactive: bool, tty: bool) -> Result<()> {
    if interactive && tty && !nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        eprintln!("the input device is not a TTY");
        return Err(exit::with_code(exit::COMMAND_FAILED, None));
    }
    Ok(())
}

/// Maps what an attached client saw to strata's exit status.
pub fn finish_attached(outcome: Result<attach::Outcome>) -> Result<i32> {
    match outcome? {
        attach::Outcome::Exited(code) => Ok(code),
        attach::Outcome::StartFailed { code, message } => {
            eprintln!("strata: Error response from daemon: {message}");
            Err(exit::with_code(code, None))
        }
        attach::Outcome::Detached => Ok(0),
        attach::Outcome::Lost => {
            Err(exit::with_code(exit::STRATA_ERROR, Some("lost the connection to the container's supervisor".into())))
        }
    }
}

fn start_error(e: anyhow::Error) -> anyhow::Error {
    if let Some(s) = e.downcast_ref::<supervisor::StartError>() {
        eprintln!("strata: Error response from daemon: {}", s.message);
        return exit::with_code(s.code, None);
    }
    e
}

/// Resolves the request into a container record and writes it.
pub fn create_container(ctx: &Context, mut args: CreateArgs) -> Result<Container> {
    args.take_positionals();
    if let Some(f) = args.cidfile.as_ref().filter(|f| f.exists()) {
        return Err(daemon_error(
            exit::STRATA_ERROR,
            format!("Container ID file found, make sure the other container isn't running or delete {}", f.display()),
        ));
    }
    for mode in [&mut args.pid, &mut args.ipc] {
        if let Some(name) = mode.as_deref().and_then(|p| p.strip_prefix("container:")) {
            let donor =
                record::find(&ctx.layout, name).map_err(|e| daemon_error(exit::STRATA_ERROR, format!("{e:#}")))?;
            *mode = Some(format!("container:{}", donor.config.id));
        }
    }
    match args.cgroupns.as_deref() {
        None | Some("") => {
            let private = strata_runner::unified_hierarchy();
            args.cgroupns = Some(if private { "private" } else { "host" }.into());
        }
        Some("host" | "private") => {}
        Some(other) => {
            return Err(daemon_error(
                exit::STRATA_ERROR,
                format!("invalid --cgroupns {other:?}: it is \"host\" or \"private\""),
            ))
        }
    }
    // Every container's IPC namespace can be joined: Docker's "shareable" is the default here.
    if args.ipc.as_deref() == Some("shareable") {
        args.ipc = Some("private".into());
    }
    for (flag, value) in [("pid", &args.pid), ("ipc", &args.ipc), ("uts", &args.uts)] {
        match value.as_deref() {
            None | Some("") | Some("private") | Some("host") => {}
            Some(p) if flag != "uts" && p.starts_with("container:") => {}
            Some(other) => {
                let also = if flag != "uts" { ", container:NAME" } else { "" };
                return Err(daemon_error(
                    exit::STRATA_ERROR,
                    format!(
                        "invalid --{flag} {other:?}: strata supports \"host\"{also} (or the default, a namespace of its own)"
                    ),
                ));
            }
        }
    }
    crate::containers::logs::LogPolicy::of(&args).map_err(|e| daemon_error(exit::STRATA_ERROR, format!("{e:#}")))?;
    if let Some(v) = args.oom_score_adj.filter(|v| !(-1000..=1000).contains(v)) {
        return Err(daemon_error(
            exit::STRATA_ERROR,
            format!("Invalid value {v}, range for oom score adj is [-1000, 1000]"),
        ));
    }
    if ctx.rootless && args.pid.as_deref() == Some("host") {
        return Err(daemon_error(
            exit::STRATA_ERROR,
            "--pid host is not supported for an ordinary user's containers: /proc of the host's pid namespace cannot be mounted from a user namespace",
        ));
    }
    for sc in &args.sysctl {
        crate::containers::spec::parse_sysctl(sc, &args)
            .map_err(|e| daemon_error(exit::STRATA_ERROR, format!("{e:#}")))?;
    }
    for d in &args.device {
        crate::containers::spec::parse_device(d).map_err(|e| daemon_error(exit::STRATA_ERROR, format!("{e:#}")))?;
    }
    if let Some(size) = &args.shm_size {
        crate::containers::spec::parse_bytes(size).map_err(|e| daemon_error(exit::STRATA_ERROR, format!("{e:#}")))?;
    }
    let policy = crate::containers::restart::Policy::parse(args.restart.as_deref())
        .map_err(|e| daemon_error(exit::STRATA_ERROR, format!("{e:#}")))?;
    if args.rm && policy != crate::containers::restart::Policy::No {
        return Err(daemon_error(exit::STRATA_ERROR, "Conflicting options: --restart and --rm"));
    }
    if args.detach_keys.is_some() {
        attach::parse_detach_keys(args.detach_keys.as_deref())?;
    }
    if !matches!(args.pull.as_str(), "missing" | "always" | "never") {
        bail!("invalid pull option: '{}': must be one of \"always\", \"missing\" or \"never\"", args.pull);
    }
    let name = match &args.name {
        Some(n) => Some(names::validate(n).map_err(|m| daemon_error(exit::STRATA_ERROR, m))?),
        None => None,
    };
    let image = images::resolve_for(ctx, &args.image, &args.pull, args.platform.as_deref(), args.quiet)?;
    let ic = image.config.clone();

    // Command: --entrypoint replaces the image's Entrypoint and drops its Cmd.
    let entrypoint: Vec<String> = match &args.entrypoint {
        Some(e) if e.is_empty() => vec![],
        Some(e) => vec![e.clone()],
        None => ic.entrypoint.clone(),
    };
    let cmd: Vec<String> = if !args.command.is_empty() {
        args.command.clone()
    } else if args.entrypoint.is_some() {
        vec![]
    } else {
        ic.cmd.clone()
    };
    let argv: Vec<String> = entrypoint.iter().chain(cmd.iter()).cloned().collect();
    if argv.is_empty() {
        return Err(daemon_error(exit::STRATA_ERROR, "No command specified"));
    }

    let env = resolve_env(&ic.env, &args)?;
    let mut label_flags = Vec::new();
    for f in &args.label_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("open {}", f.display()))?;
        label_flags
            .extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
    }
    label_flags.extend(args.label.iter().cloned());
    let labels = parse_labels(&ic.labels, &label_flags)?;
    let mut ports = Vec::new();
    for p in &args.publish {
        ports.extend(parse_publish(p)?);
    }
    let network = match args.network.as_deref() {
        None | Some("") | Some("default") | Some("bridge") => {
            if which("pasta") {
                "private".to_string()
            } else {
                eprintln!("WARNING: pasta (passt) is not installed: the container shares the host's network");
                "host".to_string()
            }
        }
        Some(n @ ("private" | "host" | "none")) => n.to_string(),
        Some(other) if other.starts_with("container:") => {
            let donor = joined_network(ctx, &args, other.trim_start_matches("container:"))?;
            format!("container:{}", donor.config.id)
        }
        Some(other) => match crate::containers::networks::find(ctx, other)? {
            Some(net) => net.name,
            None => {
                return Err(daemon_error(
                    exit::STRATA_ERROR,
                    format!("network {other} not found (use private, host, none, container:NAME or a network made by `network create`)"),
                ))
            }
        },
    };
    // The containers whose pid or IPC namespace this one joins.
    let shared: Vec<&str> =
        [&args.pid, &args.ipc].into_iter().filter_map(|m| m.as_deref()?.strip_prefix("container:")).collect();
    if ctx.rootless {
        let mut donors: Vec<&str> = shared.iter().copied().chain(network.strip_prefix("container:")).collect();
        donors.sort_unstable();
        donors.dedup();
        if donors.len() > 1 {
            return Err(daemon_error(
                exit::STRATA_ERROR,
                "an ordinary user's container shares namespaces with one other container only \
                 (its user namespace): give --network, --pid and --ipc the same container",
            ));
        }
    }
    let user_network = !matches!(network.as_str(), "private" | "host" | "none") && !network.starts_with("container:");
    if ctx.rootless && user_network && !shared.is_empty() {
        return Err(daemon_error(
            exit::STRATA_ERROR,
            "an ordinary user's container on a user-defined network joins the network's user namespace, \
             so it cannot share another container's pid or IPC namespace: use --network container: with the same container",
        ));
    }
    if !args.network_alias.is_empty() && !user_network {
        return Err(daemon_error(
            exit::STRATA_ERROR,
            "network-scoped alias is supported only for containers in user defined networks",
        ));
    }
    if let Some(ip) = &args.ip {
        let net = crate::containers::networks::find(ctx, &network)?.filter(|_| user_network).ok_or_else(|| {
            daemon_error(exit::STRATA_ERROR, "user specified IP address is supported on user defined networks only")
        })?;
        crate::containers::networks::check_address(&net, ip).map_err(|e| daemon_error(exit::STRATA_ERROR, e))?;
    }
    if network != "private" && !user_network && !ports.is_empty() {
        eprintln!("WARNING: Published ports are discarded when using {network} network mode");
    }
    let stop_signal = match &args.stop_signal {
        Some(s) => s.clone(),
        None => ic.stop_signal.clone().unwrap_or_else(|| "SIGTERM".into()),
    };
    crate::containers::signals::parse(&stop_signal)?;
    crate::containers::spec::validate(&args)?;
    // (Kept out of the record when the kernel cannot apply them, as Docker does.)
    args.resources.drop_unsupported();
    let memory_limited = args.resources.memory.is_some();
    args.create_limits.check(memory_limited)?;
    let mut seccomp_profile = None;
    for o in &args.security_opt {
        match o.as_str() {
            "no-new-privileges"
            | "no-new-privileges:true"
            | "no-new-privileges=true"
            | "no-new-privileges:false"
            | "no-new-privileges=false" => {}
            // Less confinement than strata applies anyway (it loads no LSM profile).
            "label=disable" | "label:disable" | "apparmor=unconfined" | "apparmor:unconfined" => {}
            "seccomp=unconfined" | "seccomp:unconfined" => {}
            _ if o.starts_with("seccomp=") || o.starts_with("seccomp:") => {
                let path = &o["seccomp=".len()..];
                let json = std::fs::read(path).with_context(|| format!("opening seccomp profile ({path}) failed"))?;
                strata_runner::seccomp::SeccompProfile::from_docker_json(&json, strata_runner::DEFAULT_CAPS)
                    .map_err(|e| anyhow::anyhow!("loading seccomp profile ({path}) failed: {e}"))?;
                seccomp_profile = Some(String::from_utf8(json).context("the seccomp profile is not UTF-8")?);
            }
            _ => bail!(
                "invalid --security-opt: {o:?} (supported: no-new-privileges, seccomp=unconfined|FILE, \
                 label=disable, apparmor=unconfined)"
            ),
        }
    }
    let mut exposed: Vec<String> = ic.exposed_ports.clone();
    for p in ports.iter().map(|p| format!("{}/{}", p.container_port, p.proto)).chain(args.expose.iter().map(|e| {
        if e.contains('/') {
            e.clone()
        } else {
            format!("{e}/tcp")
        }
    })) {
        if !exposed.contains(&p) {
            exposed.push(p);
        }
    }

    // -P: every exposed port not published yet, on a free host port.
    if args.publish_all && (network == "private" || user_network) {
        for e in &exposed {
            let (port, proto) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
            let Ok(container_port) = port.parse::<u16>() else { continue };
            if ports.iter().any(|p| p.container_port == container_port && p.proto == proto) {
                continue;
            }
            let host_port = free_host_port(proto)?;
            ports.push(PortBinding { host_ip: String::new(), host_port, container_port, proto: proto.to_string() });
        }
    }
    let id = record::new_id();
    let mounts = volumes::resolve_mounts(ctx, &args, &ic.volumes)?;
    // Docker: the short id, or the host's name when sharing its network,
    // or the other container's when sharing that.
    let hostname = match &args.hostname {
        Some(h) => h.clone(),
        None if network.starts_with("container:") => {
            record::find(&ctx.layout, network.trim_start_matches("container:"))?.config.hostname
        }
        None if network == "host" || args.uts.as_deref() == Some("host") => nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| id[..12].to_string()),
        None => id[..12].to_string(),
    };
    let working_dir =
        args.workdir.clone().or(ic.working_dir.clone()).filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
    if !working_dir.starts_with('/') {
        return Err(daemon_error(
            exit::STRATA_ERROR,
            format!("the working directory '{working_dir}' is invalid, it needs to be an absolute path"),
        ));
    }
    // `-e KEY` was resolved from this environment: record the result only.
    args.env = env.iter().skip(ic.env.len()).cloned().collect();

    let config = ContainerConfig {
        id: id.clone(),
        name: String::new(),
        created: record::now(),
        image: args.image.clone(),
        image_id: image.id.clone(),
        layers: image.layers.clone(),
        path: argv[0].clone(),
        args: argv[1..].to_vec(),
        entrypoint,
        cmd,
        env,
        working_dir,
        user: args.user.clone().or(ic.user.clone()).unwrap_or_default(),
        hostname,
        stop_signal,
        stop_timeout: args.stop_timeout,
        healthcheck: crate::containers::health::resolve(&args, ic.healthcheck.clone())
            .map_err(|e| daemon_error(exit::STRATA_ERROR, format!("{e:#}")))?,
        labels,
        mounts,
        ports,
        network,
        exposed_ports: exposed,
        seccomp_profile,
        request: args,
    };

    // rmi refuses to delete an image a container uses, which it learns from
    // the container's config: until that is written, hold the store's
    // content lock (rmi and image prune take it exclusively), and check that
    // the image was not removed since it was resolved.
    let store = strata_layers::store::Store::open(ctx.layout.clone()).context("opening the store")?;
    let _content = store.lock_shared()?;
    let image_digest: strata_layers::Digest = image.id.parse().with_context(|| format!("image id {}", image.id))?;
    if store.image(&image_digest)?.is_none() {
        return Err(daemon_error(
            exit::STRATA_ERROR,
            format!("image {} was removed while the container was being created", config.image),
        ));
    }
    // Name and directory are claimed together under the records lock.
    let _lock = record::lock(&ctx.layout)?;
    let existing = record::list(&ctx.layout)?;
    let name = match name {
        Some(n) => {
            if let Some(other) = existing.iter().find(|c| c.config.name == n) {
                return Err(daemon_error(
                    exit::STRATA_ERROR,
                    format!(
                        "Conflict. The container name \"/{n}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                        other.config.id
                    ),
                ));
            }
            n
        }
        None => {
            let mut retry = 0;
            loop {
                let n = names::random_name(if retry > 5 { retry } else { 0 });
                if !existing.iter().any(|c| c.config.name == n) {
                    break n;
                }
                retry += 1;
            }
        }
    };
    let mut config = config;
    config.name = name;
    let dir = ctx.layout.container_dir(&id);
    std::fs::create_dir_all(dir.join("upper")).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join("rootfs"))?;
    let c = Container { config, state: ContainerState::default(), dir };
    record::save_state(&c)?;
    record::write_json(&c.dir.join("config.json"), &c.config)?;
    drop(_lock);
    volumes::ensure_volumes(ctx, &c)?;
    if let Some(f) = &c.config.request.cidfile {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(f)
            .and_then(|mut file| std::io::Write::write_all(&mut file, c.config.id.as_bytes()))
            .with_context(|| format!("writing the container ID to {}", f.display()))?;
    }
    supervisor::container_event(ctx, &c, "create", &[]);
    Ok(c)
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file())).unwrap_or(false)
}

/// The environment: the image's, then --env-file lines, then -e, later
/// entries replacing earlier ones with the same key.
fn resolve_env(image_env: &[String], args: &CreateArgs) -> Result<Vec<String>> {
    let mut out: Vec<String> = image_env.to_vec();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or("").to_string();
        if let Some(slot) = out.iter_mut().find(|e| e.split('=').next() == Some(key.as_str())) {
            *slot = entry;
        } else {
            out.push(entry);
        }
    };
    let add = |spec: &str, set: &mut dyn FnMut(String)| -> Result<()> {
        if spec.is_empty() || spec.starts_with('=') {
            bail!("invalid environment variable: {spec}");
        }
        if spec.contains('=') {
            set(spec.to_string());
        } else if let Some(v) = std::env::var_os(spec) {
            set(format!("{spec}={}", v.to_string_lossy()));
        }
        Ok(())
    };
    for f in &args.env_file {
        for line in read_env_file(f)? {
            add(&line, &mut set)?;
        }
    }
    for e in &args.env {
        add(e, &mut set)?;
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    Ok(out)
}

/// The entries of an `--env-file` (`KEY=VALUE`, or `KEY` to take it from
/// this environment; blank lines and `#` comments skipped), with Docker's
/// refusal of a name holding white space (`export KEY=...`).
pub fn read_env_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("open {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim_start).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name = line.split('=').next().unwrap_or_default();
        if name.contains(char::is_whitespace) {
            bail!("poorly formatted environment: variable '{name}' contains whitespaces ({})", path.display());
        }
        out.push(line.to_string());
    }
    Ok(out)
}

fn parse_labels(image: &BTreeMap<String, String>, flags: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = image.clone();
    for l in flags {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            bail!("invalid label: {l:?}");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// A host port nothing listens on now, from the kernel's ephemeral range
/// (as Docker picks one for `-P`).
fn free_host_port(proto: &str) -> Result<u16> {
    let port = if proto == "udp" {
        std::net::UdpSocket::bind(("0.0.0.0", 0))?.local_addr()?.port()
    } else {
        std::net::TcpListener::bind(("0.0.0.0", 0))?.local_addr()?.port()
    };
    Ok(port)
}

/// `-p [IP:][HOST:]CTR[/PROTO]`, where HOST and CTR may be ranges
/// (`8000-8001:80-81`), as Docker takes it: ranges of one length pair up;
/// a host range for one container port means one free port of it; no host
/// port means a free one from the kernel's ephemeral range.
pub fn parse_publish(spec: &str) -> Result<Vec<PortBinding>> {
    let bad = || anyhow::anyhow!("invalid publish spec {spec:?}: expected [IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]");
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, p)) if p == "tcp" || p == "udp" => (r, p.to_string()),
        Some(_) => return Err(bad()),
        None => (spec, "tcp".to_string()),
    };
    // IPv6 addresses come bracketed: [::1]:8080:80
    let (ip, ports) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, after) = r.split_once("]:").ok_or_else(bad)?;
        (ip.to_string(), after.to_string())
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (String::new(), rest.to_string()),
            3 => (parts[0].to_string(), format!("{}:{}", parts[1], parts[2])),
            _ => return Err(bad()),
        }
    };
    let (host, ctr) = match ports.split_once(':') {
        Some((h, c)) => (h.to_string(), c.to_string()),
        None => (String::new(), ports.clone()),
    };
    let range = |text: &str| -> Result<(u16, u16)> {
        let (low, high) = text.split_once('-').unwrap_or((text, text));
        match (low.parse::<u16>(), high.parse::<u16>()) {
            (Ok(l), Ok(h)) if l > 0 && l <= h => Ok((l, h)),
            _ => Err(bad()),
        }
    };
    let (ctr_low, ctr_high) = range(&ctr)?;
    let binding = |host_port, container_port| PortBinding {
        host_ip: ip.clone(),
        host_port,
        container_port,
        proto: proto.clone(),
    };
    if host.is_empty() {
        return (ctr_low..=ctr_high).map(|c| Ok(binding(free_host_port(&proto)?, c))).collect();
    }
    let (host_low, host_high) = range(&host)?;
    if ctr_low == ctr_high && host_low != host_high {
        // One container port, a host range: the first port of it that is free.
        let free = (host_low..=host_high).find(|p| port_is_free(&ip, *p, &proto)).ok_or_else(|| {
            anyhow::anyhow!("no free host port in {host_low}-{host_high} to publish {ctr_low}/{proto} on")
        })?;
        return Ok(vec![binding(free, ctr_low)]);
    }
    if host_high - host_low != ctr_high - ctr_low {
        bail!("Invalid ranges specified for container and host Ports: {ctr} and {host}");
    }
    Ok((0..=ctr_high - ctr_low).map(|i| binding(host_low + i, ctr_low + i)).collect())
}

/// Nothing listens on `port` of `ip` (all addresses when empty) now.
fn port_is_free(ip: &str, port: u16, proto: &str) -> bool {
    let ip = if ip.is_empty() { "0.0.0.0" } else { ip };
    if proto == "udp" {
        std::net::UdpSocket::bind((ip, port)).is_ok()
    } else {
        std::net::TcpListener::bind((ip, port)).is_ok()
    }
}

/// `strata start [-a] [-i] CONTAINER...`.
pub fn start(
    ctx: &Context,
    attach_out: bool,
    interactive: bool,
    detach_keys: Option<String>,
    containers: Vec<String>,
) -> Result<i32> {
    if (attach_out || interactive) && containers.len() > 1 {
        bail!("you cannot start and attach multiple containers at once");
    }
    let mut status = 0;
    for key in containers {
        let c = match record::find_fresh(&ctx.layout, &key) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                status = 1;
                continue;
            }
        };
        if c.running() && !attach_out && !interactive {
            println!("{key}");
            continue;
        }
        if attach_out || interactive {
            // Already running: attach to it, as Docker does.
            let stream = if c.running() {
                attach::connect(&c.dir)?
            } else {
                supervisor::launch(ctx, &c, true).map_err(start_error)?.take_stream()?
            };
            let keys = attach::parse_detach_keys(detach_keys.as_deref().or(c.config.request.detach_keys.as_deref()))?;
            let outcome = attach::run_client(
                stream,
                attach::ClientOptions {
                    stdin: interactive && c.config.request.interactive,
                    tty: c.config.request.tty,
                    detach_keys: keys,
                    sig_proxy: !c.config.request.tty,
                    kill_on_interrupt: false,
                },
            );
            return finish_attached(outcome);
        }
        match supervisor::launch(ctx, &c, false).and_then(|mut s| s.wait_started()) {
            Ok(()) => println!("{key}"),
            // Another `start` got there first: started is started, as with Docker.
            Err(_) if started_by_another(ctx, &c) => println!("{key}"),
            Err(e) => {
                let msg = match e.downcast_ref::<supervisor::StartError>() {
                    Some(s) => s.message.clone(),
                    None => format!("{e:#}"),
                };
                eprintln!("Error response from daemon: {msg}");
                eprintln!("Error: failed to start containers: {key}");
                status = 1;
            }
        }
    }
    Ok(status)
}

/// True when container `c` runs, or comes up within a few seconds, under
/// a supervisor that another `start` launched.
fn started_by_another(ctx: &Context, c: &record::Container) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let Ok(now) = record::find_fresh(&ctx.layout, &c.config.id) else { return false };
        if now.running() {
            return true;
        }
        let starting = now.state.supervisor.is_some_and(|p| p.alive());
        if !starting || std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Removes a container's directory and its anonymous volumes (`rm -v`, `--rm`).
pub fn remove_container_files(ctx: &Context, c: &Container, volumes_too: bool) -> Result<()> {
    record::clear_stale_mount(&c.rootfs());
    // Rootless: the upper layer holds files of the container's other users.
    let dir = c.dir.clone();
    crate::containers::spec::in_user_namespace(ctx, move || remove_tree(&dir))?;
    supervisor::container_event(ctx, c, "destroy", &[]);
    if volumes_too {
        for m in c.config.mounts.iter().filter(|m| m.kind == "volume" && m.anonymous) {
            let _ = volumes::remove(ctx, &m.name, false);
        }
    }
    Ok(())
}

/// Removes a directory tree without following symlinks; the container's
/// upper layer may hold files the container made read-only.
pub fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(dir);
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
        }
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(entries) = std::fs::read_dir(dir) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs() {
        let one = |s: &str| {
            let mut v = parse_publish(s).unwrap();
            assert_eq!(v.len(), 1, "{s}");
            v.remove(0)
        };
        let p = one("8080:80");
        assert_eq!((p.host_port, p.container_port, p.proto.as_str(), p.host_ip.as_str()), (8080, 80, "tcp", ""));
        let p = one("127.0.0.1:8080:80/udp");
        assert_eq!((p.host_ip.as_str(), p.host_port, p.proto.as_str()), ("127.0.0.1", 8080, "udp"));
        let p = one("[::1]:8080:80");
        assert_eq!(p.host_ip, "::1");
        assert!(parse_publish("x:80").is_err());
        assert!(parse_publish("80/sctp").is_err());
        let pairs: Vec<(u16, u16)> =
            parse_publish("18094-18095:80-81").unwrap().iter().map(|p| (p.host_port, p.container_port)).collect();
        assert_eq!(pairs, [(18094, 80), (18095, 81)]);
        let picked = one("127.0.0.1:18094-18099:80");
        assert!((18094..=18099).contains(&picked.host_port) && picked.container_port == 80);
        let ephemeral = parse_publish("80-81").unwrap();
        assert_eq!(ephemeral.iter().map(|p| p.container_port).collect::<Vec<_>>(), [80, 81]);
        assert!(ephemeral.iter().all(|p| p.host_port != 0));
        assert!(parse_publish("8000-8002:80-81").unwrap_err().to_string().contains("Invalid ranges"));
        assert!(parse_publish("81-80").is_err());
    }
}
