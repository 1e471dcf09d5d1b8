//! `strata mount`, `strata umount` (alias `unmount`): an image, the image as
//! it stood after layer N, one layer alone, or a stopped container's
//! filesystem, mounted as a browsable tree; and the list of those mounts.
//! Clap definitions, argument checks and output live here; records, views
//! and the serving process live in `crate::mounts`.

use crate::containers::record::{self, NoSuchContainer};
use crate::context::Context;
use crate::exit;
use crate::format;
use crate::mounts::{self, server, view::View, Kind, MountRecord};
use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use strata_layers::store::Store;

#[derive(Subcommand)]
pub enum MountCommand {
    /// Mount an image, one of its layers, or a container's filesystem; list mounts
    Mount(MountArgs),
    /// Unmount what `strata mount` mounted
    #[command(visible_alias = "unmount")]
    Umount(UmountArgs),
    /// Internal: serve one `strata mount` (started by `strata mount`)
    #[command(hide = true)]
    InternalMountServe { request: String },
}

const MOUNT_HELP: &str = "\
Without arguments, lists strata's mounts (CONTAINER/IMAGE, MOUNTPOINT, MODE).

With IMAGE, mounts the image's merged file tree read-only on DIR and prints DIR.
Without DIR, strata mounts it under its store and prints where; asked
again (read-only, same view), it prints the same mount, as `podman image
mount` does.

The mount is served by a background strata process that lives until
`strata umount DIR`. As an ordinary user the mount is made through
fusermount3 and only that user can see into it (not even root can).
Owners and modes are shown as the image records them and access is checked
against them, so an ordinary user can change in a writable mount only what
the image lets anyone change (such as /tmp).

--rw makes the mount writable; changes go to a throwaway upper directory
kept under the store and removed by `strata umount`. --upper DIR keeps them
in DIR instead (created if missing), in OCI layer form: `.wh.NAME` whiteout
files and `.wh..wh..opq` opaque markers. --upper implies --rw.

Layers are numbered from 1 = the bottom (oldest, base) layer up to K = the
top layer, in the order `strata image inspect` lists them under
RootFS.Layers (`--format '{{json .RootFS.Layers}}'`). `strata history` lists
newest first and also shows the steps that changed only the configuration
(ENV, CMD, ...; 0B and no layer), so layer 1 is the last of its lines that
made a layer. --upto N shows the image as it stood after layer N. --layer N
shows layer N alone, deletions included, the way kernel overlayfs stores
them: a deleted NAME is a character device 0/0 with mode 0000, and a
directory whose lower contents the layer hides (opaque) carries the xattr
trusted.overlay.opaque=y (user.overlay.opaque=y when strata runs as an
ordinary user, who cannot read trusted.* attributes).

A CONTAINER mount shows its image with the container's changes and is
writable, like `podman mount`: what is written goes into the container, and
the container cannot be started or removed while it is mounted. Of a
running container (as root), `strata mount CONTAINER` prints where its own
process serves its filesystem, which stays mounted while it runs.";

#[derive(Args)]
#[command(after_long_help = MOUNT_HELP)]
pub struct MountArgs {
    /// Mount writable, with a throwaway upper directory (see --upper)
    #[arg(long)]
    pub rw: bool,
    /// Keep the writable layer in DIR (implies --rw)
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// Mount only layer N (1 = bottom layer), whiteouts shown as 0/0 devices
    #[arg(long, value_name = "N", conflicts_with_all = ["upto", "rw", "upper"])]
    pub layer: Option<usize>,
    /// Mount the image as it stood after layer N (1 = bottom layer)
    #[arg(long, value_name = "N")]
    pub upto: Option<usize>,
    /// Listing: format output using a template ('table', 'table TEMPLATE', 'json', 'TEMPLATE')
    #[arg(long)]
    pub format: Option<String>,
    /// Listing: only print mount points
    #[arg(short, long)]
    pub quiet: bool,
    /// Image or container to mount
    #[arg(value_name = "IMAGE|CONTAINER")]
    pub target: Option<String>,
    /// Where to mount it (an existing directory)
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct UmountArgs {
    /// Unmount every strata mount
    #[arg(short, long)]
    pub all: bool,
    /// Mount points (or the image/container names they were mounted by)
    #[arg(value_name = "DIR", required_unless_present = "all")]
    pub targets: Vec<String>,
}

pub fn run(ctx: &Context, cmd: MountCommand) -> Result<i32> {
    match cmd {
        MountCommand::Mount(a) if a.target.is_none() => list(ctx, &a),
        MountCommand::Mount(a) => mount(ctx, a),
        MountCommand::Umount(a) => umount(ctx, a),
        MountCommand::InternalMountServe { request } => server::serve_main(ctx, &request),
    }
}

fn list(ctx: &Context, a: &MountArgs) -> Result<i32> {
    if a.rw || a.upper.is_some() || a.layer.is_some() || a.upto.is_some() || a.dir.is_some() {
        bail!("\"strata mount\" requires an IMAGE or CONTAINER to mount (without one it lists mounts)");
    }
    let live = mounts::list_live(&ctx.layout)?;
    if a.quiet && a.format.is_none() {
        for r in &live {
            println!("{}", r.mountpoint.display());
        }
        return Ok(0);
    }
    let out = format::Output::new(a.format.as_deref(), "table {{.Name}}\t{{.Mountpoint}}\t{{.Mode}}")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows: Vec<Value> = live
        .iter()
        .map(|r| {
            format::row([
                ("ID", r.id.clone()),
                ("Name", r.name.clone()),
                ("Type", if r.kind == Kind::Image { "image" } else { "container" }.to_string()),
                ("Mountpoint", r.mountpoint.display().to_string()),
                ("Mode", r.mode()),
                ("ImageID", r.image_id.clone()),
                ("Container", r.container_id.clone().unwrap_or_default()),
                ("Upper", r.upper.as_ref().map(|u| u.display().to_string()).unwrap_or_default()),
                ("Pid", r.server.map(|p| p.pid.to_string()).unwrap_or_default()),
                ("CreatedAt", r.created.clone()),
            ])
        })
        .collect();
    let headers = [
        ("ID", "MOUNT ID"),
        ("Name", "CONTAINER/IMAGE"),
        ("Type", "TYPE"),
        ("Mountpoint", "MOUNTPOINT"),
        ("Mode", "MODE"),
        ("ImageID", "IMAGE ID"),
        ("Container", "CONTAINER ID"),
        ("Upper", "UPPER"),
        ("Pid", "PID"),
        ("CreatedAt", "CREATED"),
    ];
    print!("{}", out.render(&rows, &headers).map_err(|e| anyhow::anyhow!("{e}"))?);
    Ok(0)
}

/// What the target names: an image or a container, with its layers.
struct Source {
    kind: Kind,
    image_id: String,
    layers: Vec<String>,
    container: Option<record::Container>,
}

fn resolve(ctx: &Context, store: &Store, target: &str) -> Result<Source> {
    match record::find(&ctx.layout, target) {
        Ok(c) => {
            return Ok(Source {
                kind: Kind::Container,
                image_id: c.config.image_id.clone(),
                layers: c.config.layers.clone(),
                container: Some(c),
            })
        }
        Err(e) if e.downcast_ref::<NoSuchContainer>().is_some() => {}
        Err(e) => return Err(e),
    }
    // "No such image: X" as Docker prints it: no context added.
    let img = store.resolve_image(target)?;
    Ok(Source {
        kind: Kind::Image,
        image_id: img.id.to_string(),
        layers: img.layers.iter().map(|l| l.mount_key(store)).collect(),
        container: None,
    })
}

fn mount(ctx: &Context, a: MountArgs) -> Result<i32> {
    let made = mount_target(ctx, &a)?;
    println!("{}", made.dir.display());
    Ok(0)
}

/// Where [`mount_target`] mounted (or found) the target.
pub struct MountedAt {
    pub dir: PathBuf,
    /// The record of the mount made for this call; None when the target
    /// was mounted already (a running container's own mount, or an earlier
    /// `strata mount`), which stays as it is.
    pub made: Option<MountRecord>,
}

/// `strata mount` without the printing, for other commands (`cp` into a
/// stopped container).
pub fn mount_target(ctx: &Context, a: &MountArgs) -> Result<MountedAt> {
    let target = a.target.clone().unwrap_or_default();
    let view = match (a.layer, a.upto) {
        (Some(n), _) => View::Layer(n),
        (None, Some(n)) => View::Upto(n),
        (None, None) => View::All,
    };
    // rmi and image prune refuse an image that a live mount record names;
    // until the server has written that record (server::start returns once
    // it has), hold the content lock they take exclusively, so that the
    // image cannot go between being resolved here and being mounted.
    let store = Store::open(ctx.layout.clone())?;
    let _content = store.lock_shared()?;
    let src = resolve(ctx, &store, &target)?;
    view.layers(src.layers.len()).map_err(anyhow::Error::msg)?;
    let _lock = mounts::lock(&ctx.layout)?;
    let live = mounts::list_live(&ctx.layout)?;
    // For a container, the records lock: held until this mount's record is
    // written (see `check_container`).
    let _records = match &src.container {
        Some(c) => match check_container(ctx, c, &live, a, &target)? {
            ContainerCheck::MountedAt(dir) => return Ok(MountedAt { dir, made: None }),
            ContainerCheck::Free(lock) => Some(lock),
        },
        None => None,
    };

    let id = mounts::new_id();
    // Canonical, like user-given mount points, so that it matches /proc/self/mountinfo.
    let mounts_dir = ctx.layout.mounts_dir();
    let mounts_dir = mounts_dir.canonicalize().unwrap_or(mounts_dir);
    // `strata mount IMAGE` again names the read-only mount it made before,
    // as `podman image mount` does (scripts ask for the path that way), so
    // that asking twice does not leave two mounts behind.
    if src.container.is_none() && a.dir.is_none() && !a.rw && a.upper.is_none() {
        let same = |r: &&MountRecord| {
            r.kind == Kind::Image
                && r.image_id == src.image_id
                && r.view == view
                && r.upper.is_none()
                && !r.detached
                && r.mountpoint.parent().and_then(Path::parent) == Some(mounts_dir.as_path())
        };
        if let Some(r) = live.iter().find(same) {
            return Ok(MountedAt { dir: r.mountpoint.clone(), made: None });
        }
    }
    let private = mounts_dir.join(&id);
    let mountpoint = match &a.dir {
        Some(d) => checked_mountpoint(d)?,
        None => private.join("merged"),
    };
    if let Some(r) = live.iter().find(|r| r.mountpoint == mountpoint && !r.detached) {
        bail!(
            "{} is already a strata mount of {}; run `strata umount {}` first",
            mountpoint.display(),
            r.name,
            mountpoint.display()
        );
    }
    let (upper, throwaway) = if let Some(c) = &src.container {
        (Some(std::path::absolute(c.upper()).context("resolving the container's upper directory")?), false)
    } else if let Some(u) = &a.upper {
        (Some(user_upper(ctx, u)?), false)
    } else if a.rw {
        (Some(private.join("upper")), true)
    } else {
        (None, false)
    };
    if let Some(u) = &upper {
        // Two servers must never write one upper directory, nor one write
        // below another's (nested uppers would show each other's records).
        if let Some(r) = live.iter().find(|r| r.upper.as_deref().is_some_and(|o| overlaps(u, o))) {
            let theirs = r.upper.as_deref().unwrap_or(u);
            bail!(
                "upper directory {} {} the upper directory of a strata mount, {}; {}",
                u.display(),
                if theirs == u.as_path() { "is" } else { relation(u, theirs) },
                r.place(),
                r.release_hint()
            );
        }
    }

    if a.dir.is_some() {
        refuse_covering(ctx, &mountpoint, upper.as_deref())?;
    }
    if let (None, Some(_), Some(u)) = (&src.container, &a.upper, &upper) {
        make_user_upper(u)?;
    }

    let rec = MountRecord {
        id: id.clone(),
        mountpoint: mountpoint.clone(),
        name: match &src.container {
            Some(c) => c.config.name.clone(),
            None => target.clone(),
        },
        kind: src.kind,
        image_id: src.image_id,
        container_id: src.container.as_ref().map(|c| c.config.id.clone()),
        layers: src.layers,
        view,
        upper: upper.clone(),
        throwaway_upper: throwaway,
        server: None,
        detached: false,
        unmount_error: None,
        unmount_failures: 0,
        created: record::now(),
    };
    let result = (|| {
        if a.dir.is_none() || throwaway {
            let mut b = fs::DirBuilder::new();
            b.recursive(true).mode(0o700);
            b.create(&private).with_context(|| format!("creating {}", private.display()))?;
            for sub in [(a.dir.is_none(), "merged"), (throwaway, "upper")] {
                if sub.0 {
                    b.create(private.join(sub.1)).with_context(|| format!("creating {}", private.display()))?;
                }
            }
        }
        server::start(ctx, &rec)
    })();
    if let Err(e) = result {
        mounts::remove_private(&ctx.layout, &id);
        return Err(e);
    }
    Ok(MountedAt { dir: mountpoint, made: Some(rec) })
}

/// What [`check_container`] found.
enum ContainerCheck {
    /// Already mounted, without a DIR asked for: `strata mount` names it again.
    MountedAt(PathBuf),
    /// Free to mount; the records lock is held.
    Free(record::RecordsLock),
}

/// Whether container `c` may be mounted now. start and rm decide under the
/// records lock, looking at the mount records, so the lock is taken here
/// and held until the mount's record is written: neither can slip in
/// between these checks and the mount.
fn check_container(
    ctx: &Context,
    c: &record::Container,
    live: &[MountRecord],
    a: &MountArgs,
    target: &str,
) -> Result<ContainerCheck> {
    if a.layer.is_some() || a.upto.is_some() || a.upper.is_some() {
        bail!(
            "--layer, --upto and --upper apply to images; mount the container's image ({}) for those",
            c.config.image
        );
    }
    if let Some(r) = live.iter().find(|r| r.container_id.as_deref() == Some(c.config.id.as_str())) {
        if r.detached {
            bail!("container {} is {}; {} before mounting it again", c.config.name, r.place(), r.release_hint());
        }
        if a.dir.is_none() {
            return Ok(ContainerCheck::MountedAt(r.mountpoint.clone()));
        }
        bail!("container {} is already mounted on {}", c.config.name, r.mountpoint.display());
    }
    // A record left "running" by a dead supervisor is repaired first (that
    // takes the records lock itself).
    record::refresh(&ctx.layout, c.clone())?;
    let lock = record::lock(&ctx.layout)?;
    // As it is now: an rm may have removed it, or be removing it.
    let c = match record::read_dir_record(&c.dir) {
        Some(c) if c.state.status != record::Status::Removing => c,
        _ => bail!(NoSuchContainer(target.to_string())),
    };
    if c.running() || c.state.supervisor.is_some_and(|p| p.alive()) {
        // As root its own mount is in this mount namespace: name it, as
        // `podman mount` names a running container's (it stays while the
        // container runs; `strata umount` is not for it).
        let rootfs = c.rootfs();
        let own = format!("strata:{}", &c.config.id[..12.min(c.config.id.len())]);
        let visible =
            !ctx.rootless && c.running() && strata_fs::mountinfo::top_mount(&rootfs).is_some_and(|m| m.source == own);
        if visible && a.dir.is_none() {
            return Ok(ContainerCheck::MountedAt(rootfs));
        }
        let (at, hint) = match visible {
            true => (format!(" at {}", rootfs.display()), " elsewhere, or use that path"),
            false => (String::new(), ""),
        };
        bail!(
            "container {} is running: its filesystem is served by its own process{at}; stop it before mounting it{hint}",
            c.config.name
        );
    }
    Ok(ContainerCheck::Free(lock))
}

/// Refuses a user-given mount point that would cover the store or the
/// upper directory, or lie inside them: the mount would hide them from
/// strata itself (and from the server, which opens layer contents and
/// writes the upper directory below it).
fn refuse_covering(ctx: &Context, mountpoint: &Path, upper: Option<&Path>) -> Result<()> {
    let store = canonical_store(ctx);
    if overlaps(mountpoint, &store) {
        bail!(
            "cannot mount at {}: it {} strata's store ({}); choose a directory outside it",
            mountpoint.display(),
            relation(mountpoint, &store),
            store.display()
        );
    }
    if let Some(u) = upper.filter(|u| overlaps(mountpoint, u)) {
        bail!(
            "cannot mount at {}: it {} the upper directory {}; choose a directory outside it",
            mountpoint.display(),
            relation(mountpoint, u),
            u.display()
        );
    }
    Ok(())
}

/// Refuses an `--upper` directory inside the store (a container's upper
/// directory, served by its own process, or the store's content) or one
/// that holds the store (the mount would show and write the store itself).
fn refuse_upper_in_store(ctx: &Context, upper: &Path) -> Result<()> {
    let store = canonical_store(ctx);
    if overlaps(upper, &store) {
        bail!(
            "cannot use {} as the upper directory: it {} strata's store ({}); choose a directory outside it",
            upper.display(),
            relation(upper, &store),
            store.display()
        );
    }
    Ok(())
}

/// `path` absolute and resolved component by component as the kernel would
/// (symlinks of the part that exists resolved), also where it does not exist
/// yet (that part, which would be created, taken lexically).
fn resolve_missing(path: &Path) -> PathBuf {
    use std::path::Component;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut resolved = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                resolved.push(name);
                if let Ok(real) = resolved.canonicalize() {
                    resolved = real;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    resolved
}

fn canonical_store(ctx: &Context) -> PathBuf {
    let root = ctx.layout.root();
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// Whether one of two canonical paths is the other or lies below it.
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// How `a` stands to `b` (when they overlap), for messages.
fn relation(a: &Path, b: &Path) -> &'static str {
    match () {
        _ if a == b => "is",
        _ if a.starts_with(b) => "is inside",
        _ => "holds",
    }
}

/// The canonical path of a user-given mount point, which must exist.
fn checked_mountpoint(d: &Path) -> Result<PathBuf> {
    match fs::metadata(d) {
        Ok(m) if m.is_dir() => d.canonicalize().with_context(|| format!("resolving {}", d.display())),
        Ok(_) => bail!("mount point {} is not a directory", d.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("mount point {} does not exist", d.display()),
        Err(e) => Err(e).with_context(|| format!("mount point {}", d.display())),
    }
}

/// `--upper DIR`, resolved as it will be once made (nothing is created
/// yet: [`make_user_upper`] does that once every check has passed).
fn user_upper(ctx: &Context, u: &Path) -> Result<PathBuf> {
    let resolved = resolve_missing(u);
    refuse_upper_in_store(ctx, &resolved)?;
    match fs::metadata(u) {
        Ok(m) if m.is_dir() => u.canonicalize().with_context(|| format!("resolving {}", u.display())),
        Ok(_) => bail!("upper directory {} is not a directory", u.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(resolved),
        Err(e) => Err(e).with_context(|| format!("upper directory {}", u.display())),
    }
}

/// Creates a missing `--upper` directory (checked by [`user_upper`]).
fn make_user_upper(u: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(u)
        .with_context(|| format!("creating upper directory {}", u.display()))
}

fn umount(ctx: &Context, a: UmountArgs) -> Result<i32> {
    // A detached mount is no longer at its mount point (another may be
    // there now): it ends with the last process that uses it.
    let records: Vec<MountRecord> = mounts::read_all(&ctx.layout)?.into_iter().filter(|r| !r.detached).collect();
    let chosen: Vec<Result<MountRecord>> = if a.all {
        records.into_iter().map(Ok).collect()
    } else {
        a.targets.iter().map(|t| find(ctx, &records, t)).collect()
    };
    let mut failed = false;
    for r in chosen {
        match r.and_then(|rec| server::stop(ctx, &rec).map(|how| (rec, how))) {
            Ok((rec, how)) => {
                println!("{}", rec.mountpoint.display());
                if how == server::Stopped::Detached {
                    eprintln!(
                        "note: {} was in use: it is detached, and serves the processes still in it until they leave",
                        rec.mountpoint.display()
                    );
                }
            }
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { exit::STRATA_ERROR } else { 0 })
}

/// What is at a path `umount` found no record for, for its message: a mount
/// of another store (served for another `--root`, which alone holds its
/// record), some other filesystem, or nothing.
fn not_ours_because(candidates: &[PathBuf]) -> String {
    let Some(top) = candidates.iter().find_map(|p| strata_fs::mountinfo::top_mount(p)) else {
        return String::new();
    };
    if top.source.starts_with(mounts::FSNAME_PREFIX) {
        " of this store: it was mounted with another --root (or STRATA_ROOT); run `strata --root DIR umount` with that store's DIR"
            .to_string()
    } else {
        format!(" (a {} mount is there)", top.fstype)
    }
}

/// The record a `umount` argument names: its mount point (the directory
/// itself is never stat'ed: a dead mount answers ENOTCONN), else the name the
/// image or container was mounted by, when that names exactly one mount.
fn find(ctx: &Context, records: &[MountRecord], target: &str) -> Result<MountRecord> {
    let p = Path::new(target);
    let mut candidates = vec![strata_fs::mountinfo::as_listed(p)];
    if let Ok(c) = p.canonicalize() {
        candidates.push(c);
    }
    if let Some(r) = records.iter().find(|r| candidates.contains(&r.mountpoint)) {
        return Ok(r.clone());
    }
    // The name it was mounted by; else any name of the same container (id,
    // id prefix, name) or image (id, tag, digest), as `podman umount` takes.
    let mut by_name: Vec<&MountRecord> = records.iter().filter(|r| r.name == target).collect();
    if by_name.is_empty() {
        if let Ok(c) = record::find(&ctx.layout, target) {
            by_name = records.iter().filter(|r| r.container_id.as_deref() == Some(c.config.id.as_str())).collect();
            if by_name.is_empty() && c.running() {
                bail!("container {} is running: its filesystem stays mounted while it runs", c.config.name);
            }
        } else if let Ok(img) = Store::open(ctx.layout.clone()).and_then(|s| s.resolve_image(target)) {
            let id = img.id.to_string();
            by_name = records.iter().filter(|r| r.kind == Kind::Image && r.image_id == id).collect();
        }
    }
    match by_name.as_slice() {
        [r] => Ok((*r).clone()),
        [] => bail!("{target} is not a strata mount{}", not_ours_because(&candidates)),
        _ => bail!("{target} is mounted more than once; name the mount point"),
    }
}
