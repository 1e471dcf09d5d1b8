//! `cp`: files and directories between a container and the host, as
//! `docker cp` copies them (the same path rules, `-` for a tar stream on
//! the host side, `-a` and `-L`).
//!
//! The container side is a directory fd of its root: `/proc/PID/root` of a
//! running container's init (as an ordinary user after joining its user
//! namespace, where its FUSE mount lives), or a `strata mount` of a stopped
//! one made for the copy, whose volumes and directory binds are reached
//! through their own directories (as Docker mounts them for the copy; one
//! mounted read-only is not written). Every path in the container is
//! resolved against that fd with RESOLVE_IN_ROOT, so its symlinks (`/etc ->
//! /`, `x -> ../..`) stay inside it; below the starting point, trees are
//! walked and written
//! one component at a time with O_NOFOLLOW: no symlink of either side is
//! ever followed, except the source itself with `-L`.
//!
//! As Docker does, the copy is a tar stream from the source to an extractor
//! at the destination: a source directory `SRC` lands as `DEST/SRC` when
//! DEST is a directory, as `DEST` when DEST does not exist, and `SRC/.`
//! copies its contents. Files written into a container belong to its root
//! user unless `-a` keeps the source's owners; files written on the host
//! belong to the user running strata.

use crate::commands::mount::{mount_target, MountArgs};
use crate::containers::record::{self, Container};
use crate::context::Context;
use crate::exit;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct CpArgs {
    /// Archive mode (copy all uid/gid information)
    #[arg(short = 'a', long)]
    archive: bool,
    /// Always follow symbol link in SRC_PATH
    #[arg(short = 'L', long = "follow-link")]
    follow_link: bool,
    /// Suppress progress output during copy
    #[arg(short, long)]
    quiet: bool,
    /// CONTAINER:SRC_PATH, or a host path (`-`: a tar archive on stdin)
    #[arg(value_name = "SRC_PATH")]
    src: String,
    /// CONTAINER:DEST_PATH, or a host path (`-`: a tar archive on stdout)
    #[arg(value_name = "DEST_PATH")]
    dest: String,
}

/// One side of the copy as typed.
enum Side {
    Host(String),
    Container { key: String, path: String },
}

/// Docker's rule: an argument is `CONTAINER:PATH` unless it starts like a
/// local path (`/`, `.`) or has no `:` with a name before it.
fn parse_side(arg: &str) -> Side {
    if arg.starts_with('/') || arg.starts_with('.') {
        return Side::Host(arg.to_string());
    }
    match arg.split_once(':') {
        Some((key, path)) if !key.is_empty() => Side::Container { key: key.to_string(), path: path.to_string() },
        _ => Side::Host(arg.to_string()),
    }
}

/// Errors are Docker's: `Error response from daemon: ...`, exit status 1.
pub fn cp(ctx: &Context, a: CpArgs) -> Result<i32> {
    copy_between(ctx, a).map_err(|e| {
        if e.downcast_ref::<exit::ExitStatus>().is_some() {
            return e;
        }
        eprintln!("Error response from daemon: {e:#}");
        exit::with_code(1, None)
    })
}

fn copy_between(ctx: &Context, a: CpArgs) -> Result<i32> {
    let fail = |msg: String| -> anyhow::Error { exit::with_code(1, Some(msg)) };
    match (parse_side(&a.src), parse_side(&a.dest)) {
        (Side::Container { .. }, Side::Container { .. }) => {
            Err(fail("copying between containers is not supported".into()))
        }
        (Side::Host(_), Side::Host(_)) => Err(fail("must specify at least one container source".into())),
        (Side::Container { key, path }, Side::Host(dest)) => {
            let root = ContainerRoot::open(ctx, &key)?;
            let src = root.place(&path, &key);
            let copied = if dest == "-" {
                let top = base_name(&src.typed);
                let mut out = Counted { inner: io::stdout().lock(), bytes: 0 };
                archive(&src, top.as_deref(), a.follow_link, &mut out)?;
                out.bytes
            } else {
                copy(&src, &Place::host(&dest), &a, false)?
            };
            done(&a, copied, &dest);
            Ok(0)
        }
        (Side::Host(src), Side::Container { key, path }) => {
            let root = ContainerRoot::open(ctx, &key)?;
            let dest = root.place(&path, &key);
            if dest.read_only {
                return Err(fail("Error response from daemon: mounted volume is marked read-only".into()));
            }
            let copied = if src == "-" {
                let dir = dest.open_dir()?;
                let mut input = Counted { inner: io::stdin().lock(), bytes: 0 };
                extract(&mut input, dir.as_fd(), &owners(&a, !root.creates_as_root))?;
                input.bytes
            } else {
                let host = Place::host(&src);
                copy(&host, &dest, &a, !root.creates_as_root)?
            };
            done(&a, copied, &format!("{key}:{path}"));
            Ok(0)
        }
    }
}

/// Docker's closing line: the size of the tar stream that was copied.
fn done(a: &CpArgs, bytes: u64, dest: &str) {
    if !a.quiet && dest != "-" {
        eprintln!("Successfully copied {} to {dest}", crate::format::human_size(bytes));
    }
}

/// Counts what passes through (the size `done` reports).
struct Counted<T> {
    inner: T,
    bytes: u64,
}

impl<T: Read> Read for Counted<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<T: Write> Write for Counted<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `PATH` in a container, made relative to its root.
fn container_path(p: &str) -> PathBuf {
    let rel = p.trim_start_matches('/');
    PathBuf::from(if rel.is_empty() { "." } else { rel })
}

/// The name a source is copied under: its last component (None for `.`,
/// `/` or `DIR/.`, whose contents are copied).
fn base_name(p: &Path) -> Option<PathBuf> {
    let s = p.as_os_str().as_bytes();
    if s.ends_with(b"/.") || s == b"." || s.iter().all(|&b| b == b'/') {
        return None;
    }
    p.file_name().map(PathBuf::from)
}

/// A running container's root as its init sees it, or a stopped one's
/// filesystem mounted for the copy (unmounted when this is dropped).
struct ContainerRoot<'c> {
    fd: OwnedFd,
    ctx: &'c Context,
    made: Option<crate::mounts::MountRecord>,
    /// What this process creates there belongs to the container's root
    /// already: an ordinary user's mount of a stopped container shows the
    /// user as that root (and the user may not chown).
    creates_as_root: bool,
    /// A stopped container's volumes and directory binds (a running one's
    /// are in its root already): where they are mounted (relative to the
    /// root), their directory and whether they are mounted read-only.
    volumes: Vec<(PathBuf, OwnedFd, bool)>,
}

impl<'c> ContainerRoot<'c> {
    fn open(ctx: &'c Context, key: &str) -> Result<ContainerRoot<'c>> {
        let c: Container = record::find_fresh(&ctx.layout, key)
            .map_err(|e| exit::with_code(1, Some(format!("Error response from daemon: {e:#}"))))?;
        let open_dir = |p: &Path| {
            rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .with_context(|| format!("opening the container's filesystem at {}", p.display()))
        };
        if let Some(init) = c.state.init.filter(|p| c.running() && p.alive()) {
            if ctx.rootless {
                // Its FUSE mount belongs to its user namespace (as for exec;
                // this process is still single-threaded).
                let ns = File::open(format!("/proc/{}/ns/user", init.pid))
                    .context("opening the container's user namespace")?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWUSER)
                    .context("joining the container's user namespace")?;
            }
            let fd = open_dir(Path::new(&format!("/proc/{}/root", init.pid)))?;
            return Ok(ContainerRoot { fd, ctx, made: None, creates_as_root: false, volumes: Vec::new() });
        }
        // As Docker mounts them for the copy. (A file bind is not looked
        // into: the path stays in the container's own tree.)
        let mut volumes = Vec::new();
        for m in c.config.mounts.iter().filter(|m| m.kind == "volume" || m.kind == "bind") {
            let dir = rustix::fs::open(
                &m.source,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            if let Ok(fd) = dir {
                volumes.push((PathBuf::from(m.destination.trim_start_matches('/')), fd, !m.rw));
            }
        }
        let args = MountArgs {
            rw: false,
            upper: None,
            layer: None,
            upto: None,
            format: None,
            quiet: false,
            target: Some(c.config.id.clone()),
            dir: None,
        };
        let mounted = mount_target(ctx, &args).context("mounting the stopped container for the copy")?;
        let fd = open_dir(&mounted.dir)?;
        Ok(ContainerRoot { fd, ctx, made: mounted.made, creates_as_root: ctx.rootless, volumes })
    }

    /// `typed` (a path in the container as the user gave it) as a place to
    /// open: below the volume mounted deepest on its way, if any, else
    /// below the root. The volume is found from the path as written, with
    /// `.` and `..` taken lexically; a symlink of the container's own tree
    /// that leads into a volume is not followed there.
    fn place<'r>(&'r self, typed: &str, key: &'r str) -> Place<'r> {
        let typed_rel = container_path(typed);
        let mut parts: Vec<&OsStr> = Vec::new();
        for c in Path::new(typed).components() {
            match c {
                std::path::Component::Normal(n) => parts.push(n),
                std::path::Component::ParentDir => {
                    parts.pop();
                }
                _ => {}
            }
        }
        let normal: PathBuf = parts.iter().collect();
        let volume = self
            .volumes
            .iter()
            .filter(|(dest, _, _)| normal.starts_with(dest))
            .max_by_key(|(d, _, _)| d.components().count());
        let Some((dest, fd, read_only)) = volume else {
            return Place {
                root: Some(self.fd.as_fd()),
                path: typed_rel.clone(),
                typed: typed_rel,
                container: Some(key),
                read_only: false,
            };
        };
        let mut rest = normal.strip_prefix(dest).unwrap_or(Path::new("")).as_os_str().as_bytes().to_vec();
        if rest.is_empty() {
            rest.push(b'.');
        }
        // Docker's rules read the trailing `/.` and `/` of the path as typed.
        if typed.ends_with("/.") {
            rest.extend_from_slice(b"/.");
        } else if typed.ends_with('/') {
            rest.push(b'/');
        }
        let path = PathBuf::from(OsStr::from_bytes(&rest));
        Place { root: Some(fd.as_fd()), path, typed: typed_rel, container: Some(key), read_only: *read_only }
    }
}

impl Drop for ContainerRoot<'_> {
    fn drop(&mut self) {
        if let Some(rec) = self.made.take() {
            // The mount is released first: an open fd would keep it busy.
            let placeholder = rustix::fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty());
            if let Ok(p) = placeholder {
                drop(std::mem::replace(&mut self.fd, p));
            }
            if let Err(e) = crate::mounts::server::stop(self.ctx, &rec) {
                eprintln!("strata: unmounting {} after the copy: {e:#}", rec.mountpoint.display());
            }
        }
    }
}

/// A path on one side: relative to a container's root fd (or to a volume
/// of a stopped container), or on the host.
struct Place<'r> {
    root: Option<BorrowedFd<'r>>,
    /// What is opened, below `root`.
    path: PathBuf,
    /// The path as typed (relative to the container's root): what names
    /// are taken from, and what messages show.
    typed: PathBuf,
    /// The container as the user named it (for messages).
    container: Option<&'r str>,
    /// In a volume or bind mounted read-only.
    read_only: bool,
}

impl Place<'_> {
    fn host(path: &str) -> Place<'static> {
        Place { root: None, path: PathBuf::from(path), typed: PathBuf::from(path), container: None, read_only: false }
    }

    /// Opens the path (O_PATH, or with `flags`), following a final symlink
    /// only when `follow`. In a container, symlinks resolve inside it.
    fn open(&self, flags: OFlags, follow: bool) -> io::Result<OwnedFd> {
        let nofollow = if follow { OFlags::empty() } else { OFlags::NOFOLLOW };
        let flags = flags | nofollow | OFlags::CLOEXEC;
        match self.root {
            Some(root) => {
                rustix::fs::openat2(root, &self.path, flags, Mode::empty(), ResolveFlags::IN_ROOT).map_err(Into::into)
            }
            None => rustix::fs::open(&self.path, flags, Mode::empty()).map_err(Into::into),
        }
    }

    fn stat(&self, follow: bool) -> io::Result<rustix::fs::Stat> {
        let fd = self.open(OFlags::PATH, follow)?;
        rustix::fs::fstat(&fd).map_err(Into::into)
    }

    fn open_dir(&self) -> Result<OwnedFd> {
        self.open(OFlags::RDONLY | OFlags::DIRECTORY, true)
            .with_context(|| format!("{}: not an existing directory", self.shown()))
    }

    fn parent(&self) -> Place<'_> {
        let parent = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let typed = self.typed.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Place {
            root: self.root,
            path: parent.to_path_buf(),
            typed: typed.to_path_buf(),
            container: self.container,
            read_only: self.read_only,
        }
    }

    fn shown(&self) -> String {
        match self.root {
            Some(_) => format!("/{}", self.typed.display()).replace("/./", "/").replace("//", "/"),
            None => self.typed.display().to_string(),
        }
    }
}

/// Who owns what is extracted: the archive's owners (`-a`), the
/// container's root (into a container), or whoever runs strata.
pub(crate) enum Owners {
    FromArchive,
    Root,
    Caller,
}

/// `chown_to_root`: the copy goes into a container, whose root must own it.
fn owners(a: &CpArgs, chown_to_root: bool) -> Owners {
    match (a.archive, chown_to_root) {
        (true, _) => Owners::FromArchive,
        (false, true) => Owners::Root,
        (false, false) => Owners::Caller,
    }
}

/// Copies `src` to `dest` with Docker's rules; returns the size of the tar
/// stream.
fn copy(src: &Place, dest: &Place, a: &CpArgs, chown_to_root: bool) -> Result<u64> {
    let st = src.stat(a.follow_link).map_err(|e| match src.container {
        Some(c) => anyhow::anyhow!("Could not find the file {} in container {c}", src.shown()),
        None => {
            let why = e.raw_os_error().map_or(e.to_string(), |n| nix::errno::Errno::from_raw(n).desc().to_string());
            anyhow::anyhow!("lstat {}: {}", src.shown(), why.to_lowercase())
        }
    })?;
    let src_is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    let trailing_slash = src.typed.as_os_str().as_bytes().ends_with(b"/");
    if trailing_slash && !src_is_dir {
        bail!("{} is not a directory", src.shown());
    }
    let dest_slash = dest.typed.as_os_str().as_bytes().ends_with(b"/");
    let (dir, top) = match dest.stat(true) {
        Ok(d) if FileType::from_raw_mode(d.st_mode) == FileType::Directory => (dest.open_dir()?, base_name(&src.typed)),
        Ok(_) if src_is_dir => bail!("cannot copy a directory to a file: {}", dest.shown()),
        Ok(_) => (dest.parent().open_dir()?, dest.typed.file_name().map(PathBuf::from)),
        Err(_) if dest_slash && !src_is_dir => {
            bail!("{}: no such directory", dest.shown())
        }
        Err(_) => {
            let parent = dest.parent();
            let dir =
                parent.open_dir().map_err(|_| anyhow::anyhow!("{}: no such file or directory", parent.shown()))?;
            (dir, dest.typed.file_name().map(PathBuf::from))
        }
    };
    // The archive is made by one thread and extracted by this one.
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let owners = owners(a, chown_to_root);
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            super::support::with_sigpipe_blocked(|| archive(src, top.as_deref(), a.follow_link, File::from(writer)))
        });
        let mut input = Counted { inner: File::from(reader), bytes: 0 };
        let extracted = extract(&mut input, dir.as_fd(), &owners);
        drop(input.inner);
        let archived = producer.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the archiving thread panicked")));
        archived.and(extracted).map(|_| input.bytes)
    })
}

/// Writes `src` to `out` as a tar archive: under the name `top`, or its
/// contents at the archive's root when `top` is None.
fn archive(src: &Place, top: Option<&Path>, follow: bool, out: impl Write) -> Result<()> {
    let fd = src.open(OFlags::PATH, follow).with_context(|| format!("opening {}", src.shown()))?;
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let name = top.map(|t| t.as_os_str().as_bytes().to_vec()).unwrap_or_default();
    add_tree(&mut tar, &fd, None, &name).with_context(|| format!("archiving {}", src.shown()))?;
    tar.into_inner().context("finishing the archive")?.flush().context("writing the archive")?;
    Ok(())
}

/// Adds `fd` (an O_PATH fd of the entry; `dir` and `name` are where it is,
/// for reading a symlink) as `path`, and a directory's entries below it.
fn add_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    fd: &OwnedFd,
    at: Option<(BorrowedFd, &OsStr)>,
    path: &[u8],
) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    let kind = FileType::from_raw_mode(st.st_mode);
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    let named = |p: &[u8], dir: bool| {
        let mut n = p.to_vec();
        if dir && !n.is_empty() {
            n.push(b'/');
        }
        PathBuf::from(OsStr::from_bytes(&n))
    };
    match kind {
        FileType::Directory => {
            if !path.is_empty() {
                h.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut h, named(path, true), io::empty())?;
            }
            let dir = rustix::fs::openat(fd, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
            let mut names: Vec<Vec<u8>> = rustix::fs::Dir::read_from(&dir)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_bytes().to_vec())
                .filter(|n| n != b"." && n != b"..")
                .collect();
            names.sort();
            for n in names {
                let child = rustix::fs::openat(
                    &dir,
                    OsStr::from_bytes(&n),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let child_path = if path.is_empty() { n.clone() } else { [path, b"/", &n].concat() };
                add_tree(tar, &child, Some((dir.as_fd(), OsStr::from_bytes(&n))), &child_path)?;
            }
        }
        FileType::RegularFile => {
            let file = File::from(reopen(fd)?);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(st.st_size as u64);
            // A file that changes size meanwhile: exactly the size announced.
            let mut content = file.take(st.st_size as u64).chain(io::repeat(0)).take(st.st_size as u64);
            tar.append_data(&mut h, named(path, false), &mut content)?;
        }
        FileType::Symlink => {
            let target = match at {
                Some((dir, name)) => rustix::fs::readlinkat(dir, name, Vec::new())?,
                None => rustix::fs::readlinkat(fd, "", Vec::new())?,
            };
            h.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut h, named(path, false), OsStr::from_bytes(target.as_bytes()))?;
        }
        FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {
            h.set_entry_type(match kind {
                FileType::Fifo => tar::EntryType::Fifo,
                FileType::CharacterDevice => tar::EntryType::Char,
                _ => tar::EntryType::Block,
            });
            h.set_device_major(rustix::fs::major(st.st_rdev))?;
            h.set_device_minor(rustix::fs::minor(st.st_rdev))?;
            tar.append_data(&mut h, named(path, false), io::empty())?;
        }
        // Sockets cannot be archived (Docker skips them too).
        _ => {}
    }
    Ok(())
}

/// An O_PATH fd of a regular file reopened for reading, through
/// /proc/self/fd: the same inode, whatever its name is by now.
fn reopen(fd: &OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    rustix::fs::open(format!("/proc/self/fd/{}", fd.as_raw_fd()), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(Into::into)
}

/// Extracts the tar `input` below the directory `dest` without following
/// any symlink (each component is opened with O_NOFOLLOW), refusing names
/// that leave it.
pub(crate) fn extract(input: impl Read, dest: BorrowedFd, owners: &Owners) -> Result<()> {
    let mut tar = tar::Archive::new(input);
    // Directory times are set last: writing into a directory changes them.
    let mut dir_times: Vec<(Vec<u8>, u64)> = Vec::new();
    for entry in tar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let raw = entry.path_bytes().into_owned();
        let path = strata_layers::ingest::normalize(&raw).map_err(|e| anyhow::anyhow!("{e}"))?;
        if path.is_empty() {
            continue;
        }
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], &path[..]),
        };
        let dir = walk_to(dest, parent).with_context(|| format!("extracting {}", String::from_utf8_lossy(&path)))?;
        let name = OsStr::from_bytes(name);
        let header = entry.header().clone();
        let mode = Mode::from_raw_mode(header.mode().unwrap_or(0o644) & 0o7777);
        let existing = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).ok();
        let existing_dir = existing.is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
        let shown = || String::from_utf8_lossy(&path).into_owned();
        let etype = header.entry_type();
        if etype.is_dir() {
            if existing.is_some() && !existing_dir {
                bail!("cannot overwrite non-directory {} with directory", shown());
            }
            if !existing_dir {
                rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))?;
            }
            dir_times.push((path.clone(), header.mtime().unwrap_or(0)));
        } else {
            if existing_dir {
                bail!("cannot overwrite directory {} with non-directory", shown());
            }
            if existing.is_some() {
                rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
            }
            match etype {
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                    let fd = rustix::fs::openat(
                        &dir,
                        name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )?;
                    io::copy(&mut entry, &mut File::from(fd))?;
                }
                tar::EntryType::Symlink => {
                    let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                    rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, name)?;
                }
                tar::EntryType::Link => {
                    let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                    let target = strata_layers::ingest::normalize(&target).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let (tparent, tname) = match target.iter().rposition(|&b| b == b'/') {
                        Some(i) => (&target[..i], &target[i + 1..]),
                        None => (&target[..0], &target[..]),
                    };
                    let tdir = walk_to(dest, tparent)?;
                    rustix::fs::linkat(&tdir, OsStr::from_bytes(tname), &dir, name, AtFlags::empty())?;
                    continue;
                }
                tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                    let (kind, dev) = match etype {
                        tar::EntryType::Fifo => (FileType::Fifo, 0),
                        t => (
                            if t == tar::EntryType::Char { FileType::CharacterDevice } else { FileType::BlockDevice },
                            rustix::fs::makedev(
                                header.device_major()?.unwrap_or(0),
                                header.device_minor()?.unwrap_or(0),
                            ),
                        ),
                    };
                    rustix::fs::mknodat(&dir, name, kind, Mode::from_raw_mode(0o600), dev)
                        .with_context(|| format!("creating the device or fifo {}", shown()))?;
                }
                other => bail!("{}: unsupported archive entry type {other:?}", shown()),
            }
        }
        let is_link = etype == tar::EntryType::Symlink;
        let owner = match owners {
            Owners::FromArchive => Some((header.uid()? as u32, header.gid()? as u32)),
            Owners::Root => Some((0, 0)),
            Owners::Caller => None,
        };
        // Only when it differs: an ordinary user's mount of a stopped
        // container already shows what it creates as the container's root,
        // and may not chown at all.
        let current = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if let Some((uid, gid)) = owner.filter(|&(u, g)| (u, g) != (current.st_uid, current.st_gid)) {
            rustix::fs::chownat(
                &dir,
                name,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .with_context(|| format!("setting the owner of {} to {uid}:{gid}", shown()))?;
        }
        if !is_link {
            rustix::fs::chmodat(&dir, name, mode, AtFlags::empty())?;
            if !etype.is_dir() {
                set_mtime(&dir, name, header.mtime().unwrap_or(0))?;
            }
        }
    }
    for (path, mtime) in dir_times.iter().rev() {
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], &path[..]),
        };
        set_mtime(&walk_to(dest, parent)?, OsStr::from_bytes(name), *mtime)?;
    }
    Ok(())
}

fn set_mtime(dir: &OwnedFd, name: &OsStr, mtime: u64) -> io::Result<()> {
    let t = rustix::fs::Timespec { tv_sec: mtime as i64, tv_nsec: 0 };
    rustix::fs::utimensat(dir, name, &Timestamps { last_access: t, last_modification: t }, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(Into::into)
}

/// Opens the directory `rel` below `base`, one component at a time, never
/// following a symlink.
fn walk_to(base: BorrowedFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let mut fd = rustix::fs::openat(base, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for comp in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        fd = rustix::fs::openat(
            &fd,
            OsStr::from_bytes(comp),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
    }
    Ok(fd)
}
