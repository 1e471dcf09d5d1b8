//! `strata build` (`image build`, `builder build`): a Dockerfile built into
//! an image by the builder crate's engine, with this binary's containers
//! running its RUN steps.
//!
//! Each RUN is a container of the image so far, created as `strata create`
//! would (`--entrypoint ""`, the step's ARGs as `-e`, the build's
//! `--network`), run attached (its output is the build's), then committed
//! the way `strata commit` reads a container's layer, and removed. Output
//! follows Podman's: `STEP n/N: INSTRUCTION` per step, then `COMMIT`, the
//! short id, `Successfully tagged` per name and the image's full id (only
//! the id with `--quiet`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser};
use strata_builder::{BuildHost, BuildOptions, RunFailure, RunMount};
use strata_layers::image::ImageRecord;
use strata_layers::reference::DEFAULT_TAG;
use strata_layers::store::Store;

use super::run::CreateArgs;
use super::support::parse_reference;
use crate::containers::{attach, images, record, supervisor};
use crate::context::Context;

#[derive(Args)]
pub struct BuildArgs {
    /// Name and optionally a tag in the "name:tag" format
    #[arg(short = 't', long = "tag", value_name = "list")]
    tags: Vec<String>,
    /// Name of the Dockerfile (default: "PATH/Dockerfile"; "-" reads standard input)
    #[arg(short = 'f', long = "file", value_name = "string")]
    file: Option<String>,
    /// Set build-time variables
    #[arg(long = "build-arg", value_name = "list")]
    build_args: Vec<String>,
    /// Set the target build stage to build
    #[arg(long, value_name = "string")]
    target: Option<String>,
    /// Set metadata for an image
    #[arg(long, value_name = "list")]
    label: Vec<String>,
    /// Suppress the build output and print image ID on success
    #[arg(short, long)]
    quiet: bool,
    /// Always attempt to pull a newer version of the image
    #[arg(long)]
    pull: bool,
    /// Do not use cache when building the image
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Secret to expose to the build (id=ID,src=FILE), for RUN --mount=type=secret
    #[arg(long, value_name = "stringArray")]
    secret: Vec<String>,
    /// Write the image ID to the file
    #[arg(long, value_name = "string")]
    iidfile: Option<PathBuf>,
    /// Set the networking mode for the RUN instructions during build
    #[arg(long, value_name = "string")]
    network: Option<String>,
    /// Also write the image's files out: type=local,dest=DIR (or DIR alone)
    /// or type=tar,dest=FILE (`-` alone: a tar on stdout, with --quiet)
    #[arg(short = 'o', long = "output", value_name = "stringArray")]
    output: Option<String>,
    /// Build context: a directory
    #[arg(value_name = "PATH")]
    context: String,
}

#[derive(Args)]
pub struct BuilderPruneArgs {
    /// Remove all build cache (strata keeps no other kind: the same as without)
    #[arg(short, long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

/// `builder prune`: forgets the build cache and frees the layers only it kept.
pub fn prune(ctx: &Context, a: BuilderPruneArgs) -> Result<i32> {
    let _ = a.all;
    if !a.force && !super::support::confirm("WARNING! This will remove all dangling build cache.")? {
        super::support::print_reclaimed(0);
        return Ok(0);
    }
    super::support::print_reclaimed(prune_build_cache(ctx)?);
    Ok(0)
}

/// Empties the build cache and frees what only it kept; returns the bytes.
pub fn prune_build_cache(ctx: &Context) -> Result<u64> {
    let store = Store::open(ctx.layout.clone())?;
    let lock = store.lock_exclusive()?;
    strata_builder::cache::clear(&store).context("removing the build cache")?;
    Ok(store.gc(&lock).context("freeing the layers only the build cache kept")?.bytes)
}

/// `create` flags for a RUN step's container, parsed as the CLI parses them.
#[derive(Parser)]
#[command(disable_help_flag = true)]
struct StepContainer {
    #[command(flatten)]
    create: CreateArgs,
}

struct Host<'a> {
    ctx: &'a Context,
    store: &'a Store,
    pull: bool,
    quiet: bool,
    network: Option<String>,
}

impl BuildHost for Host<'_> {
    fn base_image(&mut self, name: &str) -> Result<ImageRecord, String> {
        let policy = if self.pull { "always" } else { "missing" };
        // A pull's progress is not the image id either.
        let _stdout = self.quiet.then(StdoutToStderr::new).transpose().map_err(|e| format!("{e:#}"))?;
        let found = images::resolve(self.ctx, name, policy).map_err(|e| format!("{e:#}"))?;
        let record = self.store.resolve_image(&found.id).map_err(|e| e.to_string())?;
        // Build steps read base layers as stored layers, whole.
        super::support::complete_lazy(self.store, &record).map_err(|e| format!("{e:#}"))?;
        Ok(record)
    }

    fn run(
        &mut self,
        image: &ImageRecord,
        argv: &[String],
        env: &[String],
        mounts: &[RunMount],
    ) -> Result<File, RunFailure> {
        let other = |e: anyhow::Error| RunFailure::Other(format!("{e:#}"));
        let mut args: Vec<String> = vec!["strata-build-step".into(), "--entrypoint".into(), String::new()];
        args.extend(["--pull".into(), "never".into()]);
        if let Some(n) = &self.network {
            args.extend(["--network".into(), n.clone()]);
        }
        for e in env {
            args.extend(["-e".into(), e.clone()]);
        }
        for m in mounts {
            let spec = match m {
                RunMount::Bind { source, target, readonly } => {
                    format!(
                        "type=bind,source={},target={target}{}",
                        source.display(),
                        if *readonly { ",readonly" } else { "" }
                    )
                }
                RunMount::Cache { dir, target } => format!("type=bind,source={},target={target}", dir.display()),
                RunMount::Tmpfs { target } => format!("type=tmpfs,target={target}"),
            };
            args.extend(["--mount".into(), spec]);
        }
        args.push(image.id.to_string());
        args.extend(argv.iter().cloned());
        let step = StepContainer::try_parse_from(&args).map_err(|e| RunFailure::Other(e.to_string()))?;
        let c = super::run::create_container(self.ctx, step.create).map_err(other)?;
        // With --quiet, standard output carries the image id alone (as
        // `docker build -q` does, for `id=$(strata build -q .)`): what the
        // step prints goes to standard error.
        let code = {
            let _stdout = self.quiet.then(StdoutToStderr::new).transpose().map_err(other)?;
            run_attached(self.ctx, &c)
        };
        let result = code.and_then(|code| {
            if code != 0 {
                return Ok(Err(RunFailure::Exit(code)));
            }
            let c = record::find_fresh(&self.ctx.layout, &c.config.id)?;
            Ok(Ok(super::commit::layer_tar(self.ctx, self.store, &c, false)?))
        });
        let removed = super::container::remove_container(self.ctx, &c.config.id, true, true);
        match (result, removed) {
            (Err(e), _) => Err(other(e)),
            (Ok(r), Ok(())) => r,
            (Ok(_), Err(e)) => Err(other(e.context("removing the step's container"))),
        }
    }

    fn say(&mut self, line: &str) {
        if !self.quiet {
            println!("{line}");
        }
    }

    fn download(&mut self, url: &str) -> Result<strata_builder::build::Downloaded, String> {
        use std::io::Seek as _;
        self.say(&format!("--> Downloading {url}"));
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(std::time::Duration::from_secs(600))).build().into();
        let response = agent.get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
        let mtime = response
            .headers()
            .get("last-modified")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
            .map(|t| t.timestamp());
        let what = |e: std::io::Error| format!("ADD {url}: {e}");
        let mut tmp = self.store.temp_file("add-url-").map_err(|e| e.to_string())?;
        let size = std::io::copy(&mut response.into_body().into_reader(), tmp.as_file_mut()).map_err(what)?;
        // The open file outlives its name, which goes with `tmp`.
        let mut file = tmp.reopen().map_err(what)?;
        file.rewind().map_err(what)?;
        Ok(strata_builder::build::Downloaded { file, size, mtime })
    }
}

/// Standard output sent to standard error until this is dropped.
struct StdoutToStderr {
    saved: std::os::fd::OwnedFd,
}

impl StdoutToStderr {
    fn new() -> Result<Self> {
        use std::io::Write;
        std::io::stdout().flush()?;
        let saved = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdout(), 3)?;
        rustix::stdio::dup2_stdout(rustix::stdio::stderr())?;
        Ok(StdoutToStderr { saved })
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = rustix::stdio::dup2_stdout(&self.saved);
    }
}

/// Runs container `c` attached, without standard input; its exit status.
fn run_attached(ctx: &Context, c: &record::Container) -> Result<i32> {
    let mut session = supervisor::launch(ctx, c, true)?;
    let outcome = attach::run_client(
        session.take_stream()?,
        attach::ClientOptions {
            stdin: false,
            tty: false,
            detach_keys: Vec::new(),
            sig_proxy: false,
            kill_on_interrupt: true,
        },
    )?;
    // Interrupted (Ctrl-C, SIGTERM): the step was killed; the build ends
    // there, with nothing tagged, as a cancelled Docker build.
    if let Some(sig) = attach::interrupted_by() {
        let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("a signal");
        return Err(crate::exit::with_code(128 + sig, Some(format!("build interrupted by {name}"))));
    }
    match outcome {
        attach::Outcome::Exited(code) => Ok(code),
        attach::Outcome::StartFailed { message, .. } => bail!("{message}"),
        attach::Outcome::Detached | attach::Outcome::Lost => bail!("lost the connection to the step's container"),
    }
}

pub fn run(ctx: &Context, a: BuildArgs) -> Result<i32> {
    if a.context == "-" || a.context.contains("://") || a.context.starts_with("git@") {
        bail!("unable to prepare context: strata builds from a local directory only (got {:?})", a.context);
    }
    let context = PathBuf::from(&a.context);
    if !context.is_dir() {
        bail!("unable to prepare context: path {:?} not found", a.context);
    }
    let dockerfile = match a.file.as_deref() {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading the Dockerfile from standard input")?;
            s
        }
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading the Dockerfile {f}"))?,
        None => {
            let f = context.join("Dockerfile");
            std::fs::read_to_string(&f).with_context(|| format!("reading the Dockerfile {}", f.display()))?
        }
    };
    let tags = a
        .tags
        .iter()
        .map(|t| {
            let r = parse_reference(t)?;
            if r.digest.is_some() {
                bail!("invalid reference format: a build's tag cannot have a digest ({t})");
            }
            Ok(match r.tag {
                Some(_) => r,
                None => r.with_tag(DEFAULT_TAG)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let pairs = |list: &[String], what: &str| -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for kv in list {
            match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    out.insert(k.to_string(), v.to_string());
                }
                // `--build-arg NAME` takes the value from this environment, as
                // Docker does, and is dropped when it has none (the ARG's
                // default stands).
                None if what == "build-arg" && !kv.is_empty() => {
                    if let Ok(v) = std::env::var(kv) {
                        out.insert(kv.clone(), v);
                    }
                }
                _ => bail!("invalid --{what} {kv:?}: expected KEY=VALUE"),
            }
        }
        Ok(out)
    };
    let build_args = pairs(&a.build_args, "build-arg")?;
    let labels = pairs(&a.label, "label")?;
    let mut secrets = BTreeMap::new();
    for spec in &a.secret {
        let (mut id, mut src) = (None, None);
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
                Some(("type", "file")) => {}
                _ => bail!("invalid --secret {spec:?}: expected id=ID,src=FILE"),
            }
        }
        let (Some(id), Some(src)) = (id, src) else { bail!("invalid --secret {spec:?}: expected id=ID,src=FILE") };
        if !src.is_file() {
            bail!("secret {id}: {} is not a file", src.display());
        }
        secrets.insert(id, std::fs::canonicalize(&src)?);
    }
    let output = a.output.as_deref().map(Output::parse).transpose()?;
    if matches!(&output, Some(Output::Tar(None))) && !a.quiet {
        bail!("--output - writes the tar to stdout, where the build's own output goes: add --quiet");
    }
    let store = Store::open(ctx.layout.clone())?;
    let options = BuildOptions {
        dockerfile,
        context,
        build_args,
        target: a.target.clone(),
        labels,
        tags: tags.clone(),
        no_cache: a.no_cache,
        secrets,
    };
    let mut host = Host { ctx, store: &store, pull: a.pull, quiet: a.quiet, network: a.network.clone() };
    let image = strata_builder::build(&store, &options, &mut host)?;
    let hex = image.id.hex();
    if let Some(f) = &a.iidfile {
        std::fs::write(f, image.id.to_string()).with_context(|| format!("writing {}", f.display()))?;
    }
    if let Some(out) = &output {
        write_output(ctx, &store, &image, out)?;
        if matches!(out, Output::Tar(None)) {
            return Ok(0);
        }
    }
    if !a.quiet {
        if let Some(first) = tags.first() {
            println!("COMMIT {}", first.familiar_string());
        }
        println!("--> {}", &hex[..12]);
        for t in &tags {
            println!("Successfully tagged {}", t.familiar_string());
        }
    }
    println!("{hex}");
    Ok(0)
}

/// Where `build --output` writes the image's files.
enum Output {
    /// Into a directory (made if missing), as files owned by the caller.
    Local(PathBuf),
    /// As a tar archive: to a file, or stdout.
    Tar(Option<PathBuf>),
}

impl Output {
    /// BuildKit's and Podman's forms: `type=local,dest=DIR`, `type=tar,dest=FILE`
    /// (`dest=-`: stdout), a directory alone, or `-` alone.
    fn parse(spec: &str) -> Result<Output> {
        if spec == "-" {
            return Ok(Output::Tar(None));
        }
        if !spec.contains('=') {
            return Ok(Output::Local(PathBuf::from(spec)));
        }
        let (mut kind, mut dest) = (None, None);
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("type", v)) => kind = Some(v),
                Some(("dest", v)) => dest = Some(v),
                _ => bail!("invalid --output {spec:?}: expected type=local|tar,dest=PATH"),
            }
        }
        match (kind, dest) {
            (Some("local"), Some(d)) => Ok(Output::Local(PathBuf::from(d))),
            (Some("tar"), Some("-")) => Ok(Output::Tar(None)),
            (Some("tar"), Some(d)) => Ok(Output::Tar(Some(PathBuf::from(d)))),
            (Some(k @ ("local" | "tar")), None) => bail!("invalid --output {spec:?}: type={k} needs dest=PATH"),
            (Some(k), _) => bail!("invalid --output {spec:?}: strata writes type=local or type=tar, not {k}"),
            (None, _) => bail!("invalid --output {spec:?}: give type=local or type=tar"),
        }
    }
}

/// The built image's merged files as a tar stream into `out`, or extracted
/// into its directory (by the same extractor as `cp`: no symlink followed,
/// nothing written outside it).
fn write_output(ctx: &Context, store: &Store, image: &strata_layers::image::ImageRecord, out: &Output) -> Result<()> {
    use std::io::Write as _;
    let keys: Vec<String> = image.layers.iter().map(|l| l.mount_key(store)).collect();
    let lowers = crate::lazy::lowers(&ctx.layout, &keys)?;
    let empty = store.temp_dir("output-upper-")?;
    let entries = strata_fs::merged_entries(&lowers, empty.path())?;
    let tar_to = |w: &mut dyn std::io::Write| -> Result<()> {
        let mut w = std::io::BufWriter::new(w);
        strata_fs::write_layer_tar(empty.path(), &entries, &mut w)?;
        w.flush().context("writing the image's files")
    };
    match out {
        Output::Tar(None) => tar_to(&mut std::io::stdout().lock()),
        Output::Tar(Some(path)) => {
            let file = super::support::OutputFile::create(path)?;
            tar_to(&mut file.file())?;
            file.finish()
        }
        Output::Local(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let fd = rustix::fs::open(
                dir,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .with_context(|| format!("opening {}", dir.display()))?;
            let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            std::thread::scope(|scope| {
                let producer =
                    scope.spawn(|| super::support::with_sigpipe_blocked(|| tar_to(&mut std::fs::File::from(writer))));
                let extracted = super::cp::extract(
                    std::fs::File::from(reader),
                    std::os::fd::AsFd::as_fd(&fd),
                    &super::cp::Owners::Caller,
                );
                let produced =
                    producer.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the archiving thread panicked")));
                extracted.and(produced)
            })
            .with_context(|| format!("writing the image's files into {}", dir.display()))
        }
    }
}
