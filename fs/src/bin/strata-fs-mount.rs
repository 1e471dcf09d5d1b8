//! A small driver for tests and debugging: mounts layer index files, runs a
//! command with the mount in place, unmounts, and exits with the command's
//! status.
//!
//! ```text
//! strata-fs-mount [--upper DIR] [--no-passthrough] (--layer INDEX OBJECTS_DIR)... MOUNTPOINT -- CMD [ARG...]
//! ```
//! Without a command it serves until the mount is unmounted from outside.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

fn usage() -> ExitCode {
    eprintln!("usage: strata-fs-mount [--upper DIR] [--no-passthrough] (--layer INDEX OBJECTS_DIR)... MOUNTPOINT [-- CMD [ARG...]]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut lowers = Vec::new();
    let mut opts = strata_fs::MountOptions::default();
    let mut mountpoint = None;
    let mut cmd: Vec<std::ffi::OsString> = Vec::new();
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--upper") => opts.upper = args.next().map(PathBuf::from),
            Some("--no-passthrough") => opts.passthrough = false,
            Some("--layer") => {
                let (Some(index), Some(objects)) = (args.next(), args.next()) else { return usage() };
                match strata_layers::LayerIndex::read_from_file(std::path::Path::new(&index)) {
                    Ok(ix) => lowers.push(strata_fs::Lower::new(Arc::new(ix), objects.into())),
                    Err(e) => {
                        eprintln!("strata-fs-mount: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            Some("--") => {
                cmd = args.by_ref().collect();
            }
            _ if mountpoint.is_none() => mountpoint = Some(PathBuf::from(a)),
            _ => return usage(),
        }
    }
    let Some(mountpoint) = mountpoint else { return usage() };
    let handle = match strata_fs::mount(lowers, &mountpoint, opts) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("strata-fs-mount: {e}");
            return ExitCode::from(1);
        }
    };
    if cmd.is_empty() {
        handle.join();
        return ExitCode::SUCCESS;
    }
    let status = std::process::Command::new(&cmd[0]).args(&cmd[1..]).status();
    if let Err(e) = handle.unmount() {
        eprintln!("strata-fs-mount: {e}");
    }
    match status {
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("strata-fs-mount: running {:?}: {e}", cmd[0]);
            ExitCode::from(1)
        }
    }
}
