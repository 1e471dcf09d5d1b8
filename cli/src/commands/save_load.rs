//! `save` and `load` (also `image save`, `image load`): images to one tar
//! archive and back, in the form Docker 25 writes (an OCI layout with
//! Docker's `manifest.json`; see `strata_layers::archive`).

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use strata_layers::image::ImageRecord;
use strata_layers::reference::Reference;

use super::support::{exit_code_for, open_store, parse_reference};
use crate::context::Context;

#[derive(Args)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short, long, value_name = "string")]
    output: Option<PathBuf>,
    /// Images to save (names keep their tags; an ID saves the image unnamed)
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

#[derive(Args)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short, long, value_name = "string")]
    input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short, long)]
    quiet: bool,
}

pub fn save(ctx: &Context, a: SaveArgs) -> Result<i32> {
    if a.output.is_none() && std::io::stdout().is_terminal() {
        bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect");
    }
    let store = open_store(ctx)?;
    let tags: Vec<(Reference, strata_layers::Digest)> = store.references()?;
    let mut images: Vec<(ImageRecord, Vec<Reference>)> = Vec::new();
    for name in &a.images {
        let record = store.resolve_image(name).map_err(exit_code_for)?;
        super::support::complete_lazy(&store, &record)?;
        // A name the store has as a tag is saved with it; an ID is not a name.
        let named = parse_reference(name).ok().map(|r| {
            if r.tag.is_none() && r.digest.is_none() {
                r.with_tag(strata_layers::reference::DEFAULT_TAG).unwrap_or(r)
            } else {
                r
            }
        });
        let name = named.filter(|r| r.digest.is_none() && tags.iter().any(|(t, id)| t == r && *id == record.id));
        match images.iter_mut().find(|(r, _)| r.id == record.id) {
            Some((_, names)) => names.extend(name),
            None => images.push((record, name.into_iter().collect())),
        }
    }
    match &a.output {
        Some(path) => {
            let output = super::support::OutputFile::create(path)?;
            let mut w = std::io::BufWriter::new(output.file());
            strata_layers::archive::save(&store, &images, &mut w)?;
            w.flush()?;
            drop(w);
            output.finish()?;
        }
        None => {
            let out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
            let mut w = std::io::BufWriter::new(out);
            strata_layers::archive::save(&store, &images, &mut w)?;
            w.flush()?;
        }
    }
    Ok(0)
}

pub fn load(ctx: &Context, a: LoadArgs) -> Result<i32> {
    let input: Box<dyn std::io::Read + Send> = match &a.input {
        Some(p) => Box::new(std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => {
            if std::io::stdin().is_terminal() {
                bail!("requested load from stdin, but stdin is empty");
            }
            Box::new(std::io::stdin())
        }
    };
    let store = open_store(ctx)?;
    let loaded = strata_layers::archive::load(&store, input).context("loading the archive")?;
    for l in &loaded {
        let name = l.names.first().map(|n| n.familiar_string()).unwrap_or_default();
        crate::events::emit(&ctx.layout, "image", "load", &l.record.id.to_string(), &[("name", &name)]);
    }
    if !a.quiet {
        for l in loaded {
            if l.names.is_empty() {
                println!("Loaded image ID: {}", l.record.id);
            }
            for n in &l.names {
                println!("Loaded image: {}", n.familiar_string());
            }
        }
    }
    Ok(0)
}
