//! `pull`: download an image into the store, with Docker's output.

use super::image::PullArgs;
use super::support::open_store;
use crate::context::Context;
use crate::progress::PullDisplay;
use anyhow::bail;
use strata_layers::manifest::Platform;
use strata_layers::pull::PullMode;
use strata_layers::reference::Reference;
use strata_layers::registry::RegistryClient;

pub fn run(ctx: &Context, a: PullArgs) -> anyhow::Result<i32> {
    // Without the default tag, to tell `NAME` from `NAME:latest`.
    let reference = Reference::parse_bare(&a.reference)?;
    let platform = match a.platform.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => Some(p.parse::<Platform>()?),
        None => None,
    };
    let client = RegistryClient::from_env()?;
    let references = if a.all_tags {
        if reference.tag.is_some() || reference.digest.is_some() {
            bail!("tag can't be used with --all-tags/-a");
        }
        let mut tags = client.list_tags(&reference)?;
        tags.sort();
        tags.dedup();
        if tags.is_empty() {
            bail!("the repository {} has no tags", reference.familiar_name());
        }
        tags.iter().map(|t| reference.with_tag(t)).collect::<Result<Vec<_>, _>>()?
    } else {
        if !a.quiet && reference.tag.is_none() && reference.digest.is_none() {
            println!("Using default tag: {}", strata_layers::reference::DEFAULT_TAG);
        }
        // `busybox` means `busybox:latest` from here on (the record and the output name the tag).
        vec![match (&reference.tag, &reference.digest) {
            (None, None) => reference.with_tag(strata_layers::reference::DEFAULT_TAG)?,
            _ => reference,
        }]
    };
    let store = open_store(ctx)?;
    let mode = if a.lazy { PullMode::Lazy } else { PullMode::Full };
    for reference in references {
        let display = PullDisplay::new(a.quiet);
        match strata_layers::pull::pull_with(&store, &client, &reference, platform.clone(), &display, mode) {
            Ok(outcome) => {
                display.finish(&outcome);
                let shown = reference.familiar_string();
                crate::events::emit(&ctx.layout, "image", "pull", &shown, &[("name", &reference.repository)]);
            }
            Err(e) => {
                display.abandon();
                return Err(e.into());
            }
        }
    }
    Ok(0)
}
