//! The image side of creating a container: find the image in the store
//! (pulling it first when `--pull` says so, through the same code path as
//! `strata pull`) and extract the parts of its config a container uses.

use crate::context::Context;
use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use strata_layers::store::Store;

/// An image resolved for a new container.
pub struct ResolvedImage {
    /// `sha256:...` (the config digest).
    pub id: String,
    /// Layer diff_ids, bottom first (`sha256:...`).
    pub layers: Vec<String>,
    pub config: ImageSettings,
}

/// The run-related part of an image config, with absent fields as empty.
#[derive(Clone, Debug, Default)]
pub struct ImageSettings {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    /// Paths of the image's anonymous volumes (`VOLUME`).
    pub volumes: Vec<String>,
    /// `80/tcp`, ...
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub healthcheck: Option<strata_layers::image::Healthcheck>,
}

/// Finds `name` in the store, pulling it according to `pull`
/// (`missing`, `always`, `never`).
pub fn resolve(ctx: &Context, name: &str, pull: &str) -> Result<ResolvedImage> {
    resolve_for(ctx, name, pull, None, false)
}

/// [`resolve`] for `platform` (`os/arch[/variant]`, `--platform`): a stored
/// image of another platform is pulled again for this one (unless `pull`
/// is `never`, which refuses it), as Docker does. `quiet`: a pull prints
/// nothing (`run -q`).
pub fn resolve_for(
    ctx: &Context,
    name: &str,
    pull: &str,
    platform: Option<&str>,
    quiet: bool,
) -> Result<ResolvedImage> {
    let store = Store::open(ctx.layout.clone()).context("opening the store")?;
    let wanted = platform.filter(|p| !p.is_empty()).map(str::parse::<strata_layers::manifest::Platform>).transpose()?;
    let platform = wanted.as_ref().map(|p| p.to_string());
    if pull == "always" {
        pull_image(ctx, name, platform.as_deref(), quiet)?;
    }
    let mut record = match store.resolve_image(name) {
        Ok(r) => r,
        Err(strata_layers::store::Error::NoSuchImage(_)) if pull == "missing" => {
            if !quiet {
                eprintln!("Unable to find image '{name}' locally");
            }
            pull_image(ctx, name, platform.as_deref(), quiet)?;
            store.resolve_image(name)?
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(w) = &wanted {
        let got = strata_layers::manifest::Platform::new(&record.os, &record.architecture, record.variant.as_deref());
        if !got.matches(w) {
            if pull == "never" {
                anyhow::bail!(
                    "image with reference {name} was found but does not match the specified platform: \
                     wanted {w}, actual: {got}"
                );
            }
            pull_image(ctx, name, platform.as_deref(), quiet)?;
            record = store.resolve_image(name)?;
        }
    }
    let config = record.config(&store)?.container_config();
    let opt_vec = |v: Option<Vec<String>>| v.unwrap_or_default();
    let settings = ImageSettings {
        entrypoint: opt_vec(config.entrypoint),
        cmd: opt_vec(config.cmd),
        env: opt_vec(config.env),
        working_dir: config.working_dir.filter(|w| !w.is_empty()),
        user: config.user.filter(|u| !u.is_empty()),
        stop_signal: config.stop_signal.filter(|s| !s.is_empty()),
        volumes: config.volumes.map(|v| v.into_keys().collect()).unwrap_or_default(),
        exposed_ports: config.exposed_ports.map(|v| v.into_keys().collect()).unwrap_or_default(),
        labels: config.labels.unwrap_or_default(),
        healthcheck: config.healthcheck,
    };
    Ok(ResolvedImage {
        id: record.id.to_string(),
        layers: record.layers.iter().map(|l| l.mount_key(&store)).collect(),
        config: settings,
    })
}

/// Pulls through the same code path as `strata pull NAME`. Docker's `run`
/// shows pull progress on stderr, keeping stdout for the container (and
/// `run -d`'s id), so stdout points at stderr meanwhile.
fn pull_image(ctx: &Context, name: &str, platform: Option<&str>, quiet: bool) -> Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let args = crate::commands::image::PullArgs {
        platform: platform
            .map(String::from)
            .or_else(|| std::env::var("DOCKER_DEFAULT_PLATFORM").ok().filter(|p| !p.is_empty())),
        quiet,
        all_tags: false,
        lazy: std::env::var("STRATA_LAZY_PULL").is_ok_and(|v| matches!(v.as_str(), "1" | "true")),
        disable_content_trust: true,
        reference: name.to_string(),
    };
    let _ = std::io::stdout().flush();
    // Close-on-exec: credential helpers started by the pull must not inherit
    // the real stdout (one that lingers keeps a pipe reading it open). A
    // closed stdout has nothing to keep clean: the pull just runs.
    let saved = dup_cloexec(1).ok();
    // Quiet, the pull's one line (the reference) goes nowhere, as with `docker run -q`.
    let sink = if quiet { std::fs::OpenOptions::new().write(true).open("/dev/null").ok() } else { None };
    if saved.is_some() {
        let target = sink.as_ref().map_or(2, |f| f.as_raw_fd());
        // SAFETY: plain fd juggling on fds 1 and 2 (or /dev/null); stdout is restored below.
        if unsafe { libc::dup2(target, 1) } < 0 {
            return Err(std::io::Error::last_os_error()).context("pointing stdout at stderr");
        }
    }
    let result = crate::commands::pull::run(ctx, args);
    let _ = std::io::stdout().flush();
    let mut restore_error = None;
    if let Some(saved) = saved {
        // SAFETY: as above; `saved` stays open until after this call.
        if unsafe { libc::dup2(saved.as_raw_fd(), 1) } < 0 {
            restore_error = Some(std::io::Error::last_os_error());
        }
    }
    match (result?, restore_error) {
        (_, Some(e)) => Err(e).context("restoring stdout"),
        (0, None) => Ok(()),
        (code, None) => Err(crate::exit::with_code(code, None)),
    }
}

/// A close-on-exec duplicate of `fd` (`fcntl(F_DUPFD_CLOEXEC)`).
fn dup_cloexec(fd: std::os::fd::RawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl does not touch memory; a non-negative result is a new fd we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_stdout_is_close_on_exec() {
        use std::os::fd::AsRawFd;
        let saved = dup_cloexec(1).expect("dup of stdout");
        // SAFETY: F_GETFD on an fd we own.
        let flags = unsafe { libc::fcntl(saved.as_raw_fd(), libc::F_GETFD) };
        assert!(flags >= 0, "{}", std::io::Error::last_os_error());
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "the saved stdout would leak into child processes");
        assert!(dup_cloexec(-1).is_err());
    }
}
