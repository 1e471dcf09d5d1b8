//! `strata`: Docker's verbs over strata's own store, union filesystem and runner.
//!
//! Each area of commands lives in its own module under `commands/` with its
//! own clap subcommand enum, flattened into [`Command`] here, so areas can grow
//! without touching each other.

mod commands;
mod containers;
mod context;
mod events;
mod exit;
mod format;
mod inherited_fds;
mod lazy;
mod lockfile;
mod mounts;
mod progress;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "strata", version, about = "Daemonless, rootless-capable containers on a FUSE union filesystem")]
pub struct Cli {
    /// Store root (default /var/lib/strata as root, $XDG_DATA_HOME/strata otherwise)
    #[arg(long, global = true, env = "STRATA_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Image(commands::image::ImageCommand),
    #[command(flatten)]
    Container(Box<commands::container::ContainerCommand>),
    #[command(flatten)]
    Mount(commands::mount::MountCommand),
}

fn main() {
    // Rust ignores SIGPIPE; a CLI whose output goes to `head` should just end.
    // The internal servers (supervisor, mount server) keep ignoring it: a
    // client going away must not kill them.
    if !std::env::args().any(|a| a.starts_with("internal-")) {
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let usage_error = !matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            let _ = e.print();
            // Docker exits 125 when strata itself is used wrongly.
            std::process::exit(if usage_error { exit::STRATA_ERROR } else { 0 });
        }
    };
    let ctx = context::Context::new(cli.root);
    let result = match cli.command {
        Command::Image(c) => commands::image::run(&ctx, c),
        Command::Container(c) => commands::container::run(&ctx, *c),
        Command::Mount(c) => commands::mount::run(&ctx, c),
    };
    std::process::exit(exit::report(result));
}
