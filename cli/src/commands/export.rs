//! `export` (`container export`): a container's whole filesystem, its
//! image's layers and its own changes merged, as one tar (Docker's verb).
//! `import` (`image import`): a tar (plain, gzip or zstd) as a one-layer
//! image, with `--change` and `--message` as Docker takes them.
//!
//! Export reads the container's upper directory inside the containers' user
//! namespace as an ordinary user (where the files it made as other users
//! can be read), like `diff` and `commit`; the archive holds the owners
//! the container sees. Import goes through the same layer ingestion as a
//! pull: hostile entries (`..`, absolute paths, links out of the archive)
//! are refused and the store is left as it was.

use std::io::{BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use strata_layers::image::{ContainerConfig, History, ImageConfig};
use strata_layers::manifest::{LayerCompression, Platform};
use strata_layers::reference::DEFAULT_TAG;
use strata_layers::store::Store;

use super::support::parse_reference;
use crate::containers::record;
use crate::context::Context;

#[derive(Args)]
pub struct ExportArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short, long, value_name = "string")]
    output: Option<PathBuf>,
    container: String,
}

#[derive(Args)]
pub struct ImportArgs {
    /// Apply Dockerfile instruction to the created image
    #[arg(short, long, value_name = "list")]
    change: Vec<String>,
    /// Set commit message for imported image
    #[arg(short, long, value_name = "string")]
    message: Option<String>,
    /// Set platform if server is multi-platform capable (only this machine's is supported)
    #[arg(long, value_name = "string")]
    platform: Option<String>,
    /// A tar archive (plain, gzip or zstd), or - for standard input
    #[arg(value_name = "file|-")]
    source: String,
    /// The new image's name
    #[arg(value_name = "REPOSITORY[:TAG]")]
    repository: Option<String>,
}

pub fn export(ctx: &Context, a: ExportArgs) -> Result<i32> {
    let c = record::find_fresh(&ctx.layout, &a.container)?;
    if a.output.is_none() && std::io::stdout().is_terminal() {
        bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect");
    }
    let store = Store::open(ctx.layout.clone())?;
    // Every file of the image is read: a lazily pulled one is fetched whole
    // first (one stream per layer rather than a request per file). Its
    // objects then serve the container's lazy layers too.
    if c.config.layers.iter().any(|k| k.starts_with(strata_layers::image::LAZY_KEY_PREFIX)) {
        let id: strata_layers::Digest = c.config.image_id.parse()?;
        if let Some(image) = store.image(&id)? {
            super::support::complete_lazy(&store, &image)?;
        }
    }
    let lowers = c.lowers(&store)?;
    let output = a.output.as_deref().map(super::support::OutputFile::create).transpose()?;
    let out = match &output {
        Some(o) => o.file().try_clone()?,
        None => std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?),
    };
    let upper = c.upper();
    crate::containers::spec::in_user_namespace(ctx, move || {
        let entries = strata_fs::merged_entries(&lowers, &upper)?;
        let mut w = BufWriter::new(out);
        strata_fs::write_layer_tar(&upper, &entries, &mut w)?;
        w.flush().context("writing the archive")?;
        Ok(())
    })?;
    if let Some(o) = output {
        o.finish()?;
    }
    Ok(0)
}

pub fn import(ctx: &Context, a: ImportArgs) -> Result<i32> {
    let host = Platform::host();
    if let Some(p) = a.platform.as_deref().filter(|p| !p.is_empty()) {
        if !p.parse::<Platform>()?.matches(&host) {
            bail!("--platform {p}: strata imports for this machine's platform only ({host})");
        }
    }
    if a.source.contains("://") {
        bail!("importing from a URL is not supported by strata: download the archive and import the file");
    }
    let tag = match a.repository.as_deref() {
        Some(r) => {
            let r = parse_reference(r)?;
            if r.digest.is_some() {
                bail!("refusing to create a tag with a digest reference");
            }
            Some(if r.tag.is_some() { r } else { r.with_tag(DEFAULT_TAG)? })
        }
        None => None,
    };
    let changes =
        a.change.iter().map(|l| strata_builder::parse_change(l)).collect::<std::result::Result<Vec<_>, _>>()?;
    let mut input: Box<dyn Read + Send> = if a.source == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&a.source).with_context(|| format!("opening {}", a.source))?)
    };
    // The compression, from the first bytes.
    let mut head = [0u8; 6];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if matches!(&head[..got], [b'B', b'Z', b'h', ..] | [0xfd, b'7', b'z', b'X', b'Z', 0]) {
        bail!("bzip2 and xz archives are not supported: decompress it first (or recompress with gzip or zstd)")
    }
    let compression = LayerCompression::sniff(&head[..got]);
    let whole = std::io::Cursor::new(head[..got].to_vec()).chain(input);
    let tar = strata_layers::ingest::decompress(whole, compression);

    let created = record::now();
    let mut run = ContainerConfig::default();
    strata_builder::apply_changes(&mut run, &changes)?;
    let config = ImageConfig {
        created: Some(created.clone()),
        architecture: host.architecture.clone(),
        os: host.os.clone(),
        variant: host.variant.clone(),
        config: Some(run),
        history: Some(vec![History {
            created: Some(created),
            created_by: None,
            author: None,
            comment: Some(a.message.clone().unwrap_or_else(|| format!("Imported from {}", a.source))),
            empty_layer: false,
            other: Default::default(),
        }]),
        ..Default::default()
    };
    let store = Store::open(ctx.layout.clone())?;
    let image = {
        let _lock = store.lock_shared()?;
        let layer = strata_layers::commit::add_layer(&store, BufReader::new(tar))
            .with_context(|| format!("importing {}", a.source))?;
        strata_layers::commit::store_image(&store, vec![layer], config, tag.as_ref())?
    };
    crate::events::emit(&ctx.layout, "image", "import", &image.id.to_string(), &[]);
    println!("{}", image.id);
    Ok(0)
}
