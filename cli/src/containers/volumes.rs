//! Volumes: named and anonymous volumes in the store, and the translation of
//! `-v`, `--mount`, `--tmpfs` and the image's `VOLUME`s into mount records.
//!
//! ```text
//! ROOT/volumes/NAME/volume.json   {Name, Driver, Mountpoint, CreatedAt, Labels, Options, Scope, Anonymous}
//! ROOT/volumes/NAME/_data/        the content, bind-mounted into containers
//! ROOT/volumes/NAME/seed.lock      held while a container seeds the volume
//! ```
//!
//! A volume that is empty when a container first mounts it is seeded with
//! what the image has at the mount path (Docker's copy-up of volume
//! content); the supervisor does that once the union filesystem is mounted
//! (`seed_volumes`).

use crate::commands::run::CreateArgs;
use crate::containers::record::{self, Container, MountRecord};
use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub created_at: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub mountpoint: String,
    pub name: String,
    pub options: BTreeMap<String, String>,
    pub scope: String,
    #[serde(default)]
    pub anonymous: bool,
}

/// Absolute, since containers record volume paths (`--root` may be relative).
fn volume_dir(ctx: &Context, name: &str) -> PathBuf {
    let dir = ctx.layout.volumes_dir().join(name);
    std::path::absolute(&dir).unwrap_or(dir)
}

pub fn data_dir(ctx: &Context, name: &str) -> PathBuf {
    volume_dir(ctx, name).join("_data")
}

/// Docker's rule for volume names.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub fn read(ctx: &Context, name: &str) -> Option<Volume> {
    let data = std::fs::read(volume_dir(ctx, name).join("volume.json")).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Checks `volume create -o` options. strata's local driver takes what
/// Docker's takes for a volume backed by a host directory (`type=none`,
/// `o=bind`, `device=/abs/path`, Compose's usual form); a volume without
/// options keeps its content in the store.
pub fn check_options(options: &BTreeMap<String, String>) -> Result<()> {
    for key in options.keys() {
        if !matches!(key.as_str(), "type" | "device" | "o") {
            bail!("invalid option key: {key:?}");
        }
    }
    if options.is_empty() {
        return Ok(());
    }
    let kind = options.get("type").map(String::as_str).unwrap_or("");
    let flags: Vec<&str> = options.get("o").map(|o| o.split(',').collect()).unwrap_or_default();
    let device = options.get("device").map(String::as_str).unwrap_or("");
    if kind != "none" || !flags.iter().any(|f| matches!(*f, "bind" | "rbind")) {
        bail!(
            "strata's local volumes take one kind of options: type=none, o=bind and device=/host/path (a volume \
             kept in a host directory); for a tmpfs use --tmpfs or --mount type=tmpfs"
        );
    }
    if let Some(bad) = flags.iter().find(|f| !matches!(**f, "bind" | "rbind" | "ro" | "rw")) {
        bail!("unsupported option {bad:?} in o={}: bind, rbind, ro and rw are", flags.join(","));
    }
    if !device.starts_with('/') {
        bail!("device={device:?}: a bind volume's device is an absolute host path");
    }
    Ok(())
}

/// The host directory a container binds for volume `name`: the `device`
/// of a bind volume (which must exist by then, as Docker's mount needs it),
/// else the volume's data directory in the store. `read_only`: the volume
/// was created with `o=ro`.
pub fn source_of(ctx: &Context, name: &str) -> Result<(PathBuf, bool)> {
    let data = data_dir(ctx, name);
    let Some(device) = read(ctx, name).and_then(|v| v.options.get("device").cloned()) else {
        return Ok((data, false));
    };
    let read_only =
        read(ctx, name).and_then(|v| v.options.get("o").map(|o| o.split(',').any(|f| f == "ro"))).unwrap_or(false);
    let path = std::fs::canonicalize(&device).map_err(|e| {
        anyhow::anyhow!(
            "error while mounting volume '{}': failed to mount local volume: mount {device}:{}, flags: 0x1000: {}",
            data.display(),
            data.display(),
            nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)).desc().to_lowercase()
        )
    })?;
    Ok((path, read_only))
}

/// Creates a volume if it does not exist; returns it either way.
pub fn create(
    ctx: &Context,
    name: &str,
    labels: BTreeMap<String, String>,
    options: BTreeMap<String, String>,
    anonymous: bool,
) -> Result<Volume> {
    check_options(&options)?;
    if !valid_name(name) {
        bail!("create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path");
    }
    let _lock = record::lock(&ctx.layout)?;
    if let Some(v) = read(ctx, name) {
        return Ok(v);
    }
    let dir = volume_dir(ctx, name);
    std::fs::create_dir_all(dir.join("_data")).with_context(|| format!("creating {}", dir.display()))?;
    let v = Volume {
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        driver: "local".into(),
        labels,
        mountpoint: dir.join("_data").to_string_lossy().into_owned(),
        name: name.to_string(),
        options,
        scope: "local".into(),
        anonymous,
    };
    record::write_json(&dir.join("volume.json"), &v)?;
    crate::events::emit(&ctx.layout, "volume", "create", name, &[("driver", "local")]);
    Ok(v)
}

pub fn list(ctx: &Context) -> Result<Vec<Volume>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(ctx.layout.volumes_dir()) else { return Ok(out) };
    for e in entries.flatten() {
        if let Some(v) = e.file_name().to_str().and_then(|n| read(ctx, n)) {
            out.push(v);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Containers (ids) that mount volume `name`.
pub fn users(ctx: &Context, name: &str) -> Result<Vec<String>> {
    Ok(record::list(&ctx.layout)?
        .into_iter()
        .filter(|c| c.config.mounts.iter().any(|m| m.kind == "volume" && m.name == name))
        .map(|c| c.config.id)
        .collect())
}

/// Removes a volume; refuses one in use unless `force`... Docker refuses
/// even with force when a container uses it, and so do we.
pub fn remove(ctx: &Context, name: &str, _force: bool) -> Result<()> {
    if read(ctx, name).is_none() {
        bail!("get {name}: no such volume");
    }
    let users = users(ctx, name)?;
    if !users.is_empty() {
        bail!("remove {name}: volume is in use - [{}]", users.join(", "));
    }
    let dir = volume_dir(ctx, name);
    crate::containers::spec::in_user_namespace(ctx, move || crate::commands::run::remove_tree(&dir))?;
    crate::events::emit(&ctx.layout, "volume", "destroy", name, &[("driver", "local")]);
    Ok(())
}

/// Makes sure every volume the container mounts exists.
pub fn ensure_volumes(ctx: &Context, c: &Container) -> Result<()> {
    for m in c.config.mounts.iter().filter(|m| m.kind == "volume") {
        create(ctx, &m.name, BTreeMap::new(), BTreeMap::new(), m.anonymous)?;
    }
    Ok(())
}

fn random_volume_name() -> String {
    record::new_id()
}

fn clean_target(t: &str) -> Result<String> {
    if !t.starts_with('/') {
        bail!("invalid mount config: mount path must be absolute: {t}");
    }
    let mut out = String::new();
    for part in t.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            bail!("invalid mount path {t:?}: \"..\" is not allowed");
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        bail!("invalid mount config: destination can't be '/'");
    }
    Ok(out)
}

/// Translates `-v`, `--mount`, `--tmpfs` and image VOLUMEs into mount
/// records (later flags win over earlier ones for the same target; image
/// volumes only fill targets nobody else mounts).
pub fn resolve_mounts(ctx: &Context, args: &CreateArgs, image_volumes: &[String]) -> Result<Vec<MountRecord>> {
    let mut out: Vec<MountRecord> = Vec::new();
    let push = |m: MountRecord, out: &mut Vec<MountRecord>| -> Result<()> {
        if out.iter().any(|o| o.destination == m.destination) {
            bail!("Duplicate mount point: {}", m.destination);
        }
        out.push(m);
        Ok(())
    };
    for spec in &args.volumes {
        push(parse_volume_flag(ctx, spec)?, &mut out)?;
    }
    for spec in &args.mounts {
        push(parse_mount_flag(ctx, spec)?, &mut out)?;
    }
    for spec in &args.tmpfs {
        let (target, opts) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
        let m = MountRecord {
            kind: "tmpfs".into(),
            name: String::new(),
            source: String::new(),
            destination: clean_target(target)?,
            rw: true,
            options: opts.to_string(),
            anonymous: false,
        };
        push(m, &mut out)?;
    }
    // --volumes-from: the other container's volumes and binds where nothing
    // above mounts, in its mode unless `:ro`/`:rw` says. They stay its
    // own: `rm -v` of this container removes none of them.
    for spec in &args.volumes_from {
        let (name, mode) = match spec.rsplit_once(':') {
            Some((name, mode @ ("ro" | "rw"))) => (name, Some(mode == "rw")),
            Some((_, mode)) => bail!("invalid mode: {mode} (in --volumes-from {spec}: use ro or rw)"),
            None => (spec.as_str(), None),
        };
        let donor = crate::containers::record::find(&ctx.layout, name)?;
        for m in donor.config.mounts.iter().filter(|m| m.kind != "tmpfs") {
            if out.iter().any(|o| o.destination == m.destination) {
                continue;
            }
            out.push(MountRecord { rw: mode.unwrap_or(m.rw), anonymous: false, ..m.clone() });
        }
    }
    for v in image_volumes {
        let dest = clean_target(v)?;
        if out.iter().any(|m| m.destination == dest) {
            continue;
        }
        let name = random_volume_name();
        out.push(MountRecord {
            kind: "volume".into(),
            source: data_dir(ctx, &name).to_string_lossy().into_owned(),
            name,
            destination: dest,
            rw: true,
            options: String::new(),
            anonymous: true,
        });
    }
    Ok(out)
}

fn parse_volume_flag(ctx: &Context, spec: &str) -> Result<MountRecord> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => ("", *t, ""),
        [s, t] => (*s, *t, ""),
        [s, t, m] => (*s, *t, *m),
        _ => bail!("invalid volume specification: '{spec}'"),
    };
    let mut rw = true;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => rw = false,
            "rw" => rw = true,
            "z" | "Z" | "rprivate" | "private" | "rshared" | "shared" | "rslave" | "slave" | "nocopy" | "copy" => {}
            _ => bail!("invalid mode: {opt}"),
        }
    }
    let destination = clean_target(target).map_err(|_| anyhow::anyhow!("invalid volume specification: '{spec}'"))?;
    if source.is_empty() {
        let name = random_volume_name();
        return Ok(MountRecord {
            kind: "volume".into(),
            source: data_dir(ctx, &name).to_string_lossy().into_owned(),
            name,
            destination,
            rw,
            options: String::new(),
            anonymous: true,
        });
    }
    if source.starts_with('/') {
        // Like Docker's -v: a missing host directory is created.
        let p = Path::new(source);
        if std::fs::symlink_metadata(p).is_err() {
            std::fs::create_dir_all(p).with_context(|| format!("creating the host directory {source}"))?;
        }
        let abs = std::fs::canonicalize(p).with_context(|| format!("bind source path {source}"))?;
        return Ok(MountRecord {
            kind: "bind".into(),
            name: String::new(),
            source: abs.to_string_lossy().into_owned(),
            destination,
            rw,
            options: String::new(),
            anonymous: false,
        });
    }
    if !valid_name(source) {
        bail!("create {source}: \"{source}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path");
    }
    let (host_dir, read_only) = source_of(ctx, source)?;
    Ok(MountRecord {
        kind: "volume".into(),
        name: source.to_string(),
        source: host_dir.to_string_lossy().into_owned(),
        destination,
        rw: rw && !read_only,
        options: String::new(),
        anonymous: false,
    })
}

fn parse_mount_flag(ctx: &Context, spec: &str) -> Result<MountRecord> {
    let mut kind = "volume".to_string();
    let mut source = String::new();
    let mut target = String::new();
    let mut rw = true;
    let mut tmpfs_opts = Vec::new();
    for field in spec.split(',') {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        match k.to_ascii_lowercase().as_str() {
            "type" => kind = v.to_string(),
            "source" | "src" => source = v.to_string(),
            "target" | "destination" | "dst" => target = v.to_string(),
            "readonly" | "ro" => {
                rw = match v {
                    "" | "true" | "1" => false,
                    "false" | "0" => true,
                    _ => bail!("invalid value for {k}: {v}"),
                }
            }
            "tmpfs-size" => tmpfs_opts.push(format!("size={v}")),
            "tmpfs-mode" => tmpfs_opts.push(format!("mode={v}")),
            "bind-propagation" | "volume-nocopy" | "consistency" => {}
            _ => bail!("invalid field '{k}' must be a key=value pair"),
        }
    }
    if target.is_empty() {
        bail!("invalid argument \"{spec}\" for \"--mount\" flag: target is required");
    }
    let destination = clean_target(&target)?;
    match kind.as_str() {
        "bind" => {
            if source.is_empty() {
                bail!("invalid mount config for type \"bind\": field Source must not be empty");
            }
            let abs = std::fs::canonicalize(&source).map_err(|_| {
                anyhow::anyhow!("invalid mount config for type \"bind\": bind source path does not exist: {source}")
            })?;
            Ok(MountRecord {
                kind,
                name: String::new(),
                source: abs.to_string_lossy().into_owned(),
                destination,
                rw,
                options: String::new(),
                anonymous: false,
            })
        }
        "volume" => {
            let anonymous = source.is_empty();
            let name = if anonymous { random_volume_name() } else { source };
            if !valid_name(&name) {
                bail!("invalid volume name {name:?}");
            }
            let (host_dir, read_only) = source_of(ctx, &name)?;
            Ok(MountRecord {
                kind,
                source: host_dir.to_string_lossy().into_owned(),
                name,
                destination,
                rw: rw && !read_only,
                options: String::new(),
                anonymous,
            })
        }
        "tmpfs" => Ok(MountRecord {
            kind,
            name: String::new(),
            source: String::new(),
            destination,
            rw,
            options: tmpfs_opts.join(","),
            anonymous: false,
        }),
        other => bail!("invalid mount type {other:?}: must be bind, volume or tmpfs"),
    }
}

/// Copies what the image has at each volume's mount path into volumes that
/// are still empty. `rootfs` is the mounted union filesystem; paths are
/// resolved inside it (symlinks in the image cannot point the copy outside).
pub fn seed_volumes(ctx: &Context, c: &Container, rootfs: &Path) -> Result<()> {
    for m in c.config.mounts.iter().filter(|m| m.kind == "volume") {
        // (A bind volume's directory on the host, else the store's.)
        let data = PathBuf::from(&m.source);
        // Containers that share the volume and start at once seed it once:
        // the check and the copy happen under the volume's lock.
        let _seeding = crate::lockfile::lock_exclusive(&volume_dir(ctx, &m.name).join("seed.lock"))?;
        let empty = std::fs::read_dir(&data).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty {
            continue;
        }
        let Ok(src) = open_in_root(rootfs, &m.destination) else { continue };
        if !src.metadata().map(|md| md.is_dir()).unwrap_or(false) {
            continue;
        }
        use std::os::fd::AsRawFd;
        // cp -a copies modes, owners, times, links and xattrs without
        // following symlinks inside the tree; the source is our open fd.
        let from = format!("/proc/{}/fd/{}/.", std::process::id(), src.as_raw_fd());
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg("--")
            .arg(&from)
            .arg(&data)
            .stdin(std::process::Stdio::null())
            .status()
            .context("running cp to seed a volume")?;
        if !status.success() {
            bail!("copying the image's {} into volume {} failed", m.destination, m.name);
        }
    }
    Ok(())
}

/// Opens `path` (absolute, inside the container) beneath `root`, resolving
/// symlinks as if `root` were `/`.
pub fn open_in_root(root: &Path, path: &str) -> std::io::Result<std::fs::File> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    let root_fd = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let fd = openat2(
        &root_fd,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    Ok(std::fs::File::from(fd))
}
