//! Image commands: the verbs (`pull`, `images`, `tag`, `rmi`, `inspect`,
//! `history`, `info`, `search`, `login`, `logout`), the `image` and `system` groups
//! that repeat them under Docker's management-command names, and
//! `debug tree`. This module holds the clap definitions and dispatch; each
//! command's work lives in its own module next to this one.

use crate::commands::{debug, images, inspect, login, pull, sysinfo};
use crate::context::Context;
use crate::exit;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(super::push::PushArgs),
    /// Build an image from a Dockerfile
    Build(super::build::BuildArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(super::export::ImportArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(super::save_load::SaveArgs),
    /// Load an image from a tar archive or STDIN
    Load(super::save_load::LoadArgs),
    /// List images
    Images(ImagesArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
    /// Remove one or more images
    Rmi(RmiArgs),
    /// Return low-level information on images and containers
    Inspect(InspectArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Display system-wide information
    Info(InfoArgs),
    /// Show the strata version information
    Version(InfoArgs),
    /// Search a registry for images
    Search(super::search::SearchArgs),
    /// Log in to a registry
    Login(LoginArgs),
    /// Log out from a registry
    Logout(LogoutArgs),
    /// Manage images
    #[command(subcommand)]
    Image(ImageGroup),
    /// Inspect image manifests in a registry
    #[command(subcommand)]
    Manifest(ManifestGroup),
    /// Get real time events from strata
    Events(super::events::EventsArgs),
    /// Manage strata
    #[command(subcommand)]
    System(SystemGroup),
    /// Manage builds
    #[command(subcommand)]
    Builder(BuilderGroup),
    /// Look inside strata's store (for tests and troubleshooting)
    #[command(subcommand)]
    Debug(DebugGroup),
}

/// `strata builder ...`: Docker's management command for builds.
#[derive(Subcommand)]
pub enum BuilderGroup {
    /// Build an image from a Dockerfile
    Build(Box<super::build::BuildArgs>),
    /// Remove build cache
    Prune(super::build::BuilderPruneArgs),
}

/// `strata image ...`: Docker's management command for images.
#[derive(Subcommand)]
pub enum ImageGroup {
    /// List images
    #[command(visible_alias = "list", alias = "images")]
    Ls(ImagesArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(super::push::PushArgs),
    /// Build an image from a Dockerfile
    Build(super::build::BuildArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(super::export::ImportArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(super::save_load::SaveArgs),
    /// Load an image from a tar archive or STDIN
    Load(super::save_load::LoadArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
    /// Remove one or more images
    #[command(visible_alias = "remove", alias = "rmi")]
    Rm(RmiArgs),
    /// Remove unused images
    Prune(PruneArgs),
    /// Display detailed information on one or more images
    Inspect(ImageInspectArgs),
    /// Show the history of an image
    History(HistoryArgs),
}

/// `strata manifest ...`: a registry's manifests, without pulling.
#[derive(Subcommand)]
pub enum ManifestGroup {
    /// Display an image manifest, or manifest list
    Inspect(super::manifest::ManifestInspectArgs),
}

/// `strata system ...`.
#[derive(Subcommand)]
pub enum SystemGroup {
    /// Show strata disk usage
    Df(DfArgs),
    /// Display system-wide information
    Info(InfoArgs),
    /// Remove unused data
    Prune(SystemPruneArgs),
    /// Get real time events from strata
    Events(super::events::EventsArgs),
}

#[derive(Args)]
pub struct SystemPruneArgs {
    /// Remove all unused images not just dangling ones
    #[arg(short, long)]
    pub all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    pub force: bool,
    /// Prune anonymous volumes
    #[arg(long)]
    pub volumes: bool,
    /// Provide filter values (only label= is supported, for containers)
    #[arg(long = "filter", value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// `strata debug ...`.
#[derive(Subcommand)]
pub enum DebugGroup {
    /// Print the merged file tree of an image, one canonical line per path
    Tree {
        /// Image (name, ID or digest reference)
        image: String,
    },
}

#[derive(Args)]
pub struct PullArgs {
    /// Set platform if the image is multi-platform (os/arch[/variant])
    #[arg(long, value_name = "PLATFORM", env = "DOCKER_DEFAULT_PLATFORM")]
    pub platform: Option<String>,
    /// Suppress verbose output
    #[arg(short, long)]
    pub quiet: bool,
    /// Download all tagged images in the repository
    #[arg(short = 'a', long = "all-tags")]
    pub all_tags: bool,
    /// Fetch zstd:chunked layers lazily: only their table of contents now,
    /// each file when a container or mount first opens it
    #[arg(long, env = "STRATA_LAZY_PULL")]
    pub lazy: bool,
    /// Skip image verification (accepted for compatibility; strata always verifies digests)
    #[arg(long = "disable-content-trust", default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, hide = true)]
    pub disable_content_trust: bool,
    /// Image reference (NAME[:TAG|@DIGEST])
    pub reference: String,
}

#[derive(Args)]
pub struct ImagesArgs {
    /// Show all images (default hides intermediate images)
    #[arg(short, long)]
    pub all: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Filter output based on conditions provided (dangling=, label=, before=, since=, reference=)
    #[arg(short, long = "filter", value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Format output using a custom template ('table', 'table TEMPLATE', 'json', 'TEMPLATE')
    #[arg(long)]
    pub format: Option<String>,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Only list images matching REPOSITORY[:TAG]
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub reference: Option<String>,
}

#[derive(Args)]
pub struct TagArgs {
    /// SOURCE_IMAGE[:TAG]
    pub source: String,
    /// TARGET_IMAGE[:TAG]
    pub target: String,
}

#[derive(Args)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short, long)]
    pub force: bool,
    /// Do not delete untagged parents (accepted; strata images have no parents)
    #[arg(long = "no-prune")]
    pub no_prune: bool,
    /// Images to remove
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Remove all unused images, not just dangling ones
    #[arg(short, long)]
    pub all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    pub force: bool,
    /// Provide filter values (until=, label=, label!=)
    #[arg(long = "filter", value_name = "FILTER")]
    pub filter: Vec<String>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Format output using a custom template ('json' or a Go template)
    #[arg(short, long)]
    pub format: Option<String>,
    /// Display total file sizes if the type is container
    #[arg(short, long)]
    pub size: bool,
    /// Return JSON for specified type (image, container)
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Names or IDs
    #[arg(required = true, value_name = "NAME|ID")]
    pub names: Vec<String>,
}

#[derive(Args)]
pub struct ImageInspectArgs {
    /// Format output using a custom template ('json' or a Go template)
    #[arg(short, long)]
    pub format: Option<String>,
    /// Images
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Args)]
pub struct HistoryArgs {
    /// Print sizes and dates in human readable format
    #[arg(short = 'H', long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub human: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output using a custom template
    #[arg(long)]
    pub format: Option<String>,
    /// Image
    pub image: String,
}

#[derive(Args)]
pub struct DfArgs {
    /// Show detailed information on space usage
    #[arg(short, long)]
    pub verbose: bool,
    /// Format output using a custom template
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Args)]
pub struct InfoArgs {
    /// Format output using a custom template
    #[arg(short, long)]
    pub format: Option<String>,
}

#[derive(Args)]
pub struct LoginArgs {
    /// Username
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password
    #[arg(short, long)]
    pub password: Option<String>,
    /// Take the password from stdin
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    /// Registry server (default: Docker Hub)
    pub server: Option<String>,
}

#[derive(Args)]
pub struct LogoutArgs {
    /// Registry server (default: Docker Hub)
    pub server: Option<String>,
}

/// Runs an image command. The Docker CLI exits 1 when any of these fails
/// (125 is for `run`, `create`, `start` and usage errors), so errors that
/// carry no status of their own get 1 here, not in the commands: `run` pulls
/// through [`pull::run`] and keeps its 125.
pub fn run(ctx: &Context, cmd: ImageCommand) -> anyhow::Result<i32> {
    dispatch(ctx, cmd).map_err(|e| exit::or_code(e, exit::COMMAND_FAILED))
}

fn dispatch(ctx: &Context, cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Pull(a) | ImageCommand::Image(ImageGroup::Pull(a)) => pull::run(ctx, a),
        ImageCommand::Push(a) | ImageCommand::Image(ImageGroup::Push(a)) => super::push::run(ctx, a),
        ImageCommand::Build(a) | ImageCommand::Image(ImageGroup::Build(a)) => super::build::run(ctx, a),
        ImageCommand::Import(a) | ImageCommand::Image(ImageGroup::Import(a)) => super::export::import(ctx, a),
        ImageCommand::Save(a) | ImageCommand::Image(ImageGroup::Save(a)) => super::save_load::save(ctx, a),
        ImageCommand::Load(a) | ImageCommand::Image(ImageGroup::Load(a)) => super::save_load::load(ctx, a),
        ImageCommand::Images(a) | ImageCommand::Image(ImageGroup::Ls(a)) => images::list(ctx, a),
        ImageCommand::Tag(a) | ImageCommand::Image(ImageGroup::Tag(a)) => images::tag(ctx, a),
        ImageCommand::Rmi(a) | ImageCommand::Image(ImageGroup::Rm(a)) => images::remove(ctx, a),
        ImageCommand::Image(ImageGroup::Prune(a)) => images::prune(ctx, a),
        ImageCommand::Inspect(a) => inspect::inspect(ctx, a),
        ImageCommand::Image(ImageGroup::Inspect(a)) => inspect::image_inspect(ctx, a),
        ImageCommand::History(a) | ImageCommand::Image(ImageGroup::History(a)) => inspect::history(ctx, a),
        ImageCommand::Info(a) | ImageCommand::System(SystemGroup::Info(a)) => sysinfo::info(ctx, a),
        ImageCommand::Version(a) => sysinfo::version(ctx, a),
        ImageCommand::System(SystemGroup::Df(a)) => sysinfo::df(ctx, a),
        ImageCommand::System(SystemGroup::Prune(a)) => sysinfo::system_prune(ctx, a),
        ImageCommand::Manifest(ManifestGroup::Inspect(a)) => super::manifest::inspect(a),
        ImageCommand::Events(a) | ImageCommand::System(SystemGroup::Events(a)) => super::events::run(ctx, a),
        ImageCommand::Search(a) => super::search::run(a),
        ImageCommand::Login(a) => login::login(ctx, a),
        ImageCommand::Logout(a) => login::logout(ctx, a),
        ImageCommand::Builder(BuilderGroup::Build(a)) => super::build::run(ctx, *a),
        ImageCommand::Builder(BuilderGroup::Prune(a)) => super::build::prune(ctx, a),
        ImageCommand::Debug(DebugGroup::Tree { image }) => debug::tree(ctx, &image),
    }
}
