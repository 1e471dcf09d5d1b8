//! `push`: upload a stored image to a registry, with Docker's output.
//!
//! `push NAME[:TAG]` pushes the image that tag names (`:latest` when none
//! is given, as Docker does); `--all-tags` pushes every tag of the
//! repository that the store holds. Each layer gets one line when it is
//! done (`Pushed`, `Layer already exists`, `Mounted from REPO`), then the
//! tag's line with the manifest's digest and size.
//!
//! `--compression-format gzip|zstd|zstd:chunked` (Podman's flag) sends
//! layers in that format, recompressing those in another; zstd:chunked is
//! what `pull --lazy` reads before the layers are all there.

use std::io::Write;
use std::sync::Mutex;

use anyhow::bail;
use clap::Args;
use strata_layers::push::{BlobOutcome, Compression, PushOptions, PushProgress};
use strata_layers::reference::{Reference, DEFAULT_TAG};
use strata_layers::registry::RegistryClient;
use strata_layers::Digest;

use super::support::open_store;
use crate::context::Context;
use crate::exit;

#[derive(Args)]
pub struct PushArgs {
    /// Push all tags of an image to the repository
    #[arg(short = 'a', long = "all-tags")]
    pub all_tags: bool,
    /// Suppress verbose output
    #[arg(short, long)]
    pub quiet: bool,
    /// Compression format of the layers pushed: gzip, zstd or zstd:chunked
    /// (lazily pullable); layers in another format are recompressed
    #[arg(long = "compression-format", value_name = "FORMAT", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<Compression>()))]
    pub compression_format: Option<Compression>,
    /// Compression level of recompressed layers (gzip 0-9, default 6; zstd 1-22, default 3)
    #[arg(long = "compression-level", value_name = "LEVEL", requires = "compression_format")]
    pub compression_level: Option<i32>,
    /// Skip image signing (accepted for compatibility; strata does not sign)
    #[arg(long = "disable-content-trust", default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, hide = true)]
    pub disable_content_trust: bool,
    /// Image to push (NAME[:TAG])
    pub name: String,
}

/// One line per finished layer, as Docker prints them.
struct Lines {
    quiet: bool,
    out: Mutex<std::io::Stdout>,
}

impl PushProgress for Lines {
    fn blob_done(&self, digest: &Digest, outcome: &BlobOutcome) {
        if self.quiet {
            return;
        }
        let status = match outcome {
            BlobOutcome::Pushed => "Pushed".to_string(),
            BlobOutcome::Exists => "Layer already exists".to_string(),
            BlobOutcome::Mounted(from) => format!("Mounted from {from}"),
            BlobOutcome::SkippedForeign => "Skipped foreign layer".to_string(),
        };
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{}: {status}", &digest.hex()[..12]);
    }
}

pub fn run(ctx: &Context, a: PushArgs) -> anyhow::Result<i32> {
    // Without the default tag, to tell `NAME` (all tags with -a, else
    // `NAME:latest`, which is said) from `NAME:latest`.
    let reference = Reference::parse_bare(&a.name)?;
    if reference.digest.is_some() {
        bail!("cannot push a digest reference");
    }
    if let (Some(format), Some(level)) = (a.compression_format, a.compression_level) {
        format.check_level(level).map_err(|e| exit::with_code(125, Some(e)))?;
    }
    let options = PushOptions { compression: a.compression_format, level: a.compression_level };
    let store = open_store(ctx)?;
    let targets: Vec<(Reference, Digest)> = if a.all_tags {
        if reference.tag.is_some() {
            bail!("tag can't be used with --all-tags/-a");
        }
        let mut all: Vec<_> = store
            .references()?
            .into_iter()
            .filter(|(r, _)| r.tag.is_some() && r.full_name() == reference.full_name())
            .collect();
        all.sort_by(|a, b| a.0.tag.cmp(&b.0.tag));
        all
    } else {
        if reference.tag.is_none() && !a.quiet {
            println!("Using default tag: {DEFAULT_TAG}");
        }
        let target = reference.with_tag(reference.tag_or_default())?;
        store.references()?.into_iter().filter(|(r, _)| *r == target).collect()
    };
    if targets.is_empty() {
        let shown = if a.all_tags { reference.familiar_name() } else { reference.familiar_string() };
        return Err(exit::with_code(1, Some(format!("An image does not exist locally with the tag: {shown}"))));
    }
    let client = RegistryClient::from_env()?;
    let lines = Lines { quiet: a.quiet, out: Mutex::new(std::io::stdout()) };
    if !a.quiet {
        println!("The push refers to repository [{}]", reference.full_name());
    }
    for (target, id) in targets {
        let image =
            store.image(&id)?.ok_or_else(|| anyhow::anyhow!("image {id} of {target} is missing from the store"))?;
        super::support::complete_lazy(&store, &image)?;
        let pushed = strata_layers::push::push(&store, &client, &image, &target, &lines, options)?;
        let shown = target.familiar_string();
        crate::events::emit(&ctx.layout, "image", "push", &shown, &[("name", &target.repository)]);
        if a.quiet {
            println!("{}", target.familiar_string());
        } else {
            println!("{}: digest: {} size: {}", target.tag_or_default(), pushed.digest, pushed.size);
        }
    }
    Ok(0)
}
