//! `pull`: download an image into the store, with Docker's output.

use super::image::PullArgs;
use super::support::{open_store, parse_reference};
use crate::context::Context;
use crate::progress::PullDisplay;
use anyhow::bail;
use strata_layers::manifest::Platform;
use strata_layers::pull::PullMode;
use strata_layers::registry::RegistryClient;

pub fn run(ctx: &Context, a: PullArgs) -> anyhow::Result<i32> {
    if a.all_tags {
        bail!("--all-tags is not supported by strata; pull each tag by name");
    }
    let reference = parse_reference(&a.reference)?;
    let platform = match a.platform.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => Some(p.parse::<Platform>()?),
        None => None,
    };
    if !a.quiet && reference.tag.is_none() && reference.digest.is_none() {
        println!("Using default tag: {}", strata_layers::reference::DEFAULT_TAG);
    }
    // `busybox` means `busybox:latest` from here on (the record and the output name the tag).
    let reference = match (&reference.tag, &reference.digest) {
        (None, None) => reference.with_tag(strata_layers::reference::DEFAULT_TAG)?,
        _ => reference,
    };
    let store = open_store(ctx)?;
    let client = RegistryClient::from_env()?;
    let display = PullDisplay::new(a.quiet);
    let mode = if a.lazy { PullMode::Lazy } else { PullMode::Full };
    match strata_layers::pull::pull_with(&store, &client, &reference, platform, &display, mode) {
        Ok(outcome) => {
            display.finish(&outcome);
            let shown = reference.familiar_string();
            crate::events::emit(&ctx.layout, "image", "pull", &shown, &[("name", &reference.repository)]);
            Ok(0)
        }
        Err(e) => {
            display.abandon();
            Err(e.into())
        }
    }
}
