//! Image commands: pull, images, tag, rmi, inspect, history, system df, info,
//! login, logout.

use crate::context::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Download an image from a registry
    Pull {
        /// Image reference (NAME[:TAG|@DIGEST])
        reference: String,
    },
}

pub fn run(_ctx: &Context, cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Pull { reference } => anyhow::bail!("pull {reference}: not implemented yet"),
    }
}
