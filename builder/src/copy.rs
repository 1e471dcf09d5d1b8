//! COPY and ADD: what is copied (from the build context or from another
//! stage's image), where it lands in the image being built, and the layer
//! tarball that holds it. No container is needed: the layer is written
//! directly, the way the union filesystem would have recorded the copy.
//!
//! Reading the build context never leaves it: source paths are opened with
//! `openat2(RESOLVE_IN_ROOT)` (a symlink in the context resolves inside
//! the context, as BuildKit scopes it), the walk below a copied directory
//! opens every entry relative to its directory with `O_NOFOLLOW`, and
//! symlinks are copied as symlinks. `.dockerignore` rules (with `!`
//! exceptions and `**`) leave paths out of the context.
//!
//! Destinations follow Docker's rules: a relative destination is below the
//! WORKDIR; a destination ending in `/`, or any destination of several
//! sources, is a directory; a copied directory's contents (not the
//! directory itself) go into the destination; missing parent directories
//! are made `0755 root:root`; owners are `0:0` unless `--chown` says
//! otherwise; symlinks of the image on the way to the destination are
//! followed inside the image (a `COPY x /bin/` in an image whose `/bin`
//! links to `usr/bin` lands in `/usr/bin`).

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use strata_layers::index::{Entry, EntryKind};
use strata_layers::merge::MergedTree;

/// Where copied files come from.
pub enum Origin<'a> {
    Context(&'a BuildContext),
    /// Another stage's (or image's) merged tree, contents in the store's objects.
    Image {
        tree: &'a MergedTree,
        objects: &'a Path,
    },
}

/// One thing to copy: its path relative to the origin's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub path: Vec<u8>,
    pub kind: ItemKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub mtime: i64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemKind {
    Dir,
    File,
    Symlink(Vec<u8>),
}

/// Writes `item` and everything below it (`all`: what [`Origin::below`]
/// lists, or the item itself for a file) as a plain tree at `root`, which
/// must not exist: directories, files copied out of the origin, symlinks,
/// with their permission bits (owners are the caller's). For
/// `RUN --mount=type=bind,from=STAGE`, which shows another stage's files.
pub fn materialize(origin: &Origin, item: &Item, all: &[Item], root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = Vec::new();
    if item.kind == ItemKind::Dir {
        std::fs::create_dir(root)?;
        dirs.push((root.to_path_buf(), item.mode));
    }
    for i in all.iter().filter(|i| i.path != item.path || item.kind != ItemKind::Dir) {
        let rel = i.path.get(item.path.len()..).unwrap_or_default();
        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
        let path = if rel.is_empty() { root.to_path_buf() } else { root.join(OsStr::from_bytes(rel)) };
        match &i.kind {
            ItemKind::Dir => {
                std::fs::create_dir(&path)?;
                dirs.push((path, i.mode));
            }
            ItemKind::File => {
                let mut out = std::fs::File::create_new(&path)?;
                io::copy(&mut origin.open(i)?, &mut out)?;
                out.set_permissions(std::fs::Permissions::from_mode(i.mode))?;
            }
            ItemKind::Symlink(target) => std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)?,
        }
    }
    // Modes of directories last, deepest first: a read-only one is filled first.
    for (path, mode) in dirs.iter().rev() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
    }
    Ok(())
}

/// The build context directory, opened once.
pub struct BuildContext {
    root: OwnedFd,
    dir: PathBuf,
    ignore: Vec<(bool, Vec<String>)>,
}

fn io_at<'a>(what: &'a str, path: &'a [u8]) -> impl FnOnce(io::Error) -> io::Error + 'a {
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", String::from_utf8_lossy(path)))
}

impl BuildContext {
    /// Opens `dir` and reads its `.dockerignore`.
    pub fn open(dir: &Path) -> io::Result<BuildContext> {
        let root = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("build context {}: {e}", dir.display())))?;
        let mut ctx = BuildContext { root, dir: dir.to_path_buf(), ignore: Vec::new() };
        match ctx.open_file(b".dockerignore") {
            Ok(mut f) => {
                let mut text = String::new();
                f.read_to_string(&mut text)?;
                ctx.ignore = parse_ignore(&text);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(ctx)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `.dockerignore` leaves `path` (relative) out.
    pub fn ignored(&self, path: &[u8]) -> bool {
        let path = String::from_utf8_lossy(path);
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let mut out = false;
        for (negated, pattern) in &self.ignore {
            // A rule for a directory covers what is below it.
            if (1..=comps.len()).any(|n| match_components(pattern, &comps[..n])) {
                out = !negated;
            }
        }
        out
    }

    /// Whether an exception (`!pattern`) could take back something below the
    /// ignored directory `path`: then the walk goes into it, as Docker's
    /// does (`*` then `!dir/sub/file` keeps `dir/sub/file`). Conservative:
    /// a `**` in the pattern's leading components always could.
    fn exception_below(&self, path: &[u8]) -> bool {
        let path = String::from_utf8_lossy(path);
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        self.ignore.iter().filter(|(negated, _)| *negated).any(|(_, pattern)| {
            let lead = &pattern[..pattern.len().min(comps.len())];
            lead.iter().any(|c| c == "**")
                || (pattern.len() > comps.len() && match_components(&pattern[..comps.len()], &comps))
        })
    }

    /// Opens `path` (relative) beneath the context, symlinks resolved inside it.
    fn resolve(&self, path: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        let p = if path.is_empty() { &b"."[..] } else { path };
        rustix::fs::openat2(
            self.root.as_fd(),
            OsStr::from_bytes(p),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(io::Error::from)
    }

    fn open_file(&self, path: &[u8]) -> io::Result<File> {
        Ok(File::from(self.resolve(path, OFlags::RDONLY | OFlags::NOFOLLOW)?))
    }
}

/// `.dockerignore` lines: (is an exception, pattern components).
fn parse_ignore(text: &str) -> Vec<(bool, Vec<String>)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (neg, p) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let comps = p.split('/').filter(|c| !c.is_empty() && *c != ".").map(String::from).collect();
            (neg, comps)
        })
        .filter(|(_, c): &(bool, Vec<String>)| !c.is_empty())
        .collect()
}

/// Whether pattern components (with `**` for any number of components)
/// match path components exactly.
fn match_components(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|skip| match_components(rest, &path[skip..])),
        Some((p, rest)) => match path.split_first() {
            Some((c, more)) => glob_match(p.as_bytes(), c.as_bytes()) && match_components(rest, more),
            None => false,
        },
    }
}

/// Go's `filepath.Match` for one component: `*`, `?`, `[...]` (with `^`
/// or `!` negation and ranges), `\` escapes.
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let (mut star_p, mut star_n) = (None, 0);
    while n < name.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star_p = Some(p);
                    star_n = n;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, len)) = class(&pattern[p..], name[n]) {
                        if matched {
                            p += len;
                            n += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == name[n] => {
                    p += 2;
                    n += 1;
                    continue;
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star_p {
            Some(sp) => {
                p = sp + 1;
                star_n += 1;
                n = star_n;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A `[...]` class at the start of `pattern`: whether `c` is in it, and its length.
fn class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = matches!(pattern.get(i), Some(b'^' | b'!'));
    if negated {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    while i < pattern.len() && (first || pattern[i] != b']') {
        first = false;
        let lo = pattern[i];
        if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            found |= (lo..=pattern[i + 2]).contains(&c);
            i += 3;
        } else {
            found |= lo == c;
            i += 1;
        }
    }
    (i < pattern.len()).then_some((found != negated, i + 1))
}

fn has_glob(s: &[u8]) -> bool {
    s.iter().any(|c| matches!(c, b'*' | b'?' | b'['))
}

/// `a/./b/../c/` -> `a/c` (no leading slash); `None` when it climbs out.
pub fn clean_relative(path: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join(&b'/'))
}

impl Origin<'_> {
    /// The items a COPY source names: one path, or every path a wildcard
    /// pattern matches (sorted). An error when nothing matches.
    pub fn sources(&self, source: &str) -> io::Result<Vec<Item>> {
        let not_found = || io::Error::new(io::ErrorKind::NotFound, format!("\"{source}\": not found"));
        // Sources are relative to the origin's root even when written absolute;
        // `..` cannot climb out of it.
        let cleaned = clean_relative(source.trim_start_matches('/').as_bytes()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("forbidden path outside the build context: {source}"),
            )
        })?;
        let mut found = Vec::new();
        if has_glob(&cleaned) {
            let comps: Vec<&[u8]> = cleaned.split(|&b| b == b'/').collect();
            self.glob(Vec::new(), &comps, &mut found)?;
        } else if let Some(item) = self.item(&cleaned)? {
            found.push(item);
        }
        if let Origin::Context(ctx) = self {
            found.retain(|i| i.path.is_empty() || !ctx.ignored(&i.path));
        }
        if found.is_empty() {
            return Err(not_found());
        }
        Ok(found)
    }

    fn glob(&self, prefix: Vec<u8>, comps: &[&[u8]], out: &mut Vec<Item>) -> io::Result<()> {
        let Some((first, rest)) = comps.split_first() else {
            if let Some(i) = self.item(&prefix)? {
                out.push(i);
            }
            return Ok(());
        };
        let join = |n: &[u8]| if prefix.is_empty() { n.to_vec() } else { [&prefix[..], b"/", n].concat() };
        if !has_glob(first) {
            return self.glob(join(first), rest, out);
        }
        for name in self.names(&prefix)? {
            if glob_match(first, &name) {
                self.glob(join(&name), rest, out)?;
            }
        }
        Ok(())
    }

    /// Names in directory `dir` (sorted; empty when it is no directory).
    fn names(&self, dir: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        match self {
            Origin::Context(ctx) => {
                let fd = match ctx.resolve(dir, OFlags::RDONLY | OFlags::DIRECTORY) {
                    Ok(fd) => fd,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ENOENT)) => return Ok(vec![]),
                    Err(e) => return Err(e),
                };
                read_dir_names(fd.as_fd())
            }
            Origin::Image { tree, .. } => {
                let prefix = if dir.is_empty() { Vec::new() } else { [dir, b"/"].concat() };
                Ok(tree
                    .entries
                    .range(prefix.clone()..)
                    .take_while(|(p, _)| p.starts_with(&prefix))
                    .map(|(p, _)| &p[prefix.len()..])
                    .filter(|rest| !rest.is_empty() && !rest.contains(&b'/'))
                    .map(<[u8]>::to_vec)
                    .collect())
            }
        }
    }

    /// The item at `path`, following symlinks on the way (inside the origin).
    fn item(&self, path: &[u8]) -> io::Result<Option<Item>> {
        match self {
            Origin::Context(ctx) => {
                let fd = match ctx.resolve(path, OFlags::PATH) {
                    Ok(fd) => fd,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => return Ok(None),
                    Err(e) => return Err(io_at("build context", path)(e)),
                };
                let st = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
                Ok(item_of_stat(path.to_vec(), &st, None))
            }
            Origin::Image { tree, .. } => {
                let Some(resolved) = resolve_in_tree(tree, path) else { return Ok(None) };
                Ok(tree.entries.get(&resolved).and_then(|e| item_of_entry(path.to_vec(), e)))
            }
        }
    }

    /// Everything below directory item `dir`, parents first, paths relative
    /// to the origin's root; ignored context paths are left out.
    pub fn below(&self, dir: &Item) -> io::Result<Vec<Item>> {
        let mut out = Vec::new();
        match self {
            Origin::Context(ctx) => {
                let fd = ctx
                    .resolve(&dir.path, OFlags::RDONLY | OFlags::DIRECTORY)
                    .map_err(io_at("build context", &dir.path))?;
                walk_context(ctx, fd, &dir.path, &mut out)?;
            }
            Origin::Image { tree, .. } => {
                let base = resolve_in_tree(tree, &dir.path).unwrap_or_default();
                let prefix = if base.is_empty() { Vec::new() } else { [&base[..], b"/"].concat() };
                for (p, e) in tree.entries.range(prefix.clone()..).take_while(|(p, _)| p.starts_with(&prefix)) {
                    if p.len() == prefix.len() {
                        continue;
                    }
                    let rel =
                        [&dir.path[..], if dir.path.is_empty() { b"" } else { b"/" }, &p[prefix.len()..]].concat();
                    out.extend(item_of_entry(rel, e));
                }
            }
        }
        Ok(out)
    }

    /// A regular file item's content.
    pub fn open(&self, item: &Item) -> io::Result<File> {
        match self {
            Origin::Context(ctx) => ctx.open_file(&item.path).map_err(io_at("build context", &item.path)),
            Origin::Image { tree, objects } => {
                let resolved = resolve_in_tree(tree, &item.path).unwrap_or_default();
                match tree.entries.get(&resolved).map(|e| &e.kind) {
                    Some(EntryKind::File { digest, .. }) => {
                        File::open(strata_layers::layout::object_path_in(objects, digest))
                    }
                    _ => Err(io::Error::new(io::ErrorKind::NotFound, "not a regular file")),
                }
            }
        }
    }
}

fn read_dir_names(fd: BorrowedFd) -> io::Result<Vec<Vec<u8>>> {
    let dup = rustix::fs::openat(fd, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(&dup)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

fn walk_context(ctx: &BuildContext, dir: OwnedFd, rel: &[u8], out: &mut Vec<Item>) -> io::Result<()> {
    for name in read_dir_names(dir.as_fd())? {
        let path = if rel.is_empty() { name.clone() } else { [rel, b"/", &name[..]].concat() };
        let ignored = ctx.ignored(&path);
        if ignored && !ctx.exception_below(&path) {
            continue;
        }
        let os = OsStr::from_bytes(&name);
        let st = rustix::fs::statat(dir.as_fd(), os, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)?;
        let target = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            Some(rustix::fs::readlinkat(dir.as_fd(), os, Vec::new())?.into_bytes())
        } else {
            None
        };
        let Some(item) = item_of_stat(path.clone(), &st, target) else { continue };
        let is_dir = item.kind == ItemKind::Dir;
        if !is_dir {
            if !ignored {
                out.push(item);
            }
            continue;
        }
        let sub = rustix::fs::openat(
            dir.as_fd(),
            os,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // An ignored directory is there only for what an exception keeps below it.
        let mut below = Vec::new();
        walk_context(ctx, sub, &path, &mut below)?;
        if !ignored || !below.is_empty() {
            out.push(item);
            out.append(&mut below);
        }
    }
    Ok(())
}

fn item_of_stat(path: Vec<u8>, st: &rustix::fs::Stat, target: Option<Vec<u8>>) -> Option<Item> {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => ItemKind::Dir,
        libc::S_IFREG => ItemKind::File,
        libc::S_IFLNK => ItemKind::Symlink(target?),
        // Sockets, fifos and devices of a build context are not copied.
        _ => return None,
    };
    let size = if kind == ItemKind::File { st.st_size as u64 } else { 0 };
    Some(Item { path, kind, mode: st.st_mode & 0o7777, mtime: st.st_mtime, size })
}

fn item_of_entry(path: Vec<u8>, e: &Entry) -> Option<Item> {
    let (kind, size) = match &e.kind {
        EntryKind::Dir | EntryKind::Opaque => (ItemKind::Dir, 0),
        EntryKind::File { size, .. } => (ItemKind::File, *size),
        EntryKind::Symlink { target } => (ItemKind::Symlink(target.clone()), 0),
        _ => return None,
    };
    Some(Item { path, kind, mode: e.mode, mtime: e.mtime, size })
}

/// `path` in `tree` with the symlinks on the way followed (inside the
/// tree, as in a chroot; at most 40 of them); the last component's own
/// symlink is followed too. `None` when a component is missing or a loop.
pub fn resolve_in_tree(tree: &MergedTree, path: &[u8]) -> Option<Vec<u8>> {
    resolve_parent_in_tree(tree, path, true)
}

/// Like [`resolve_in_tree`], with the last component's symlink followed only when `follow_last`.
fn resolve_parent_in_tree(tree: &MergedTree, path: &[u8], follow_last: bool) -> Option<Vec<u8>> {
    let mut todo: Vec<Vec<u8>> =
        path.split(|&b| b == b'/').rev().filter(|c| !c.is_empty()).map(<[u8]>::to_vec).collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match &c[..] {
            b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let candidate =
            [done.join(&b'/'), c.clone()].iter().filter(|p| !p.is_empty()).cloned().collect::<Vec<_>>().join(&b'/');
        let last = todo.is_empty();
        match tree.entries.get(&candidate).map(|e| &e.kind) {
            Some(EntryKind::Symlink { target }) if !last || follow_last => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                if target.starts_with(b"/") {
                    done.clear();
                }
                todo.extend(target.split(|&b| b == b'/').rev().filter(|c| !c.is_empty()).map(<[u8]>::to_vec));
            }
            Some(_) => done.push(c),
            None if last => done.push(c),
            None => return None,
        }
    }
    Some(done.join(&b'/'))
}

/// Where a destination path lands in `tree`: its directories' symlinks
/// followed (the last component's too when it is a directory link),
/// relative, no leading slash. Missing components stay as they are.
pub fn land_in_tree(tree: &MergedTree, dest: &[u8]) -> Vec<u8> {
    let mut done: Vec<u8> = Vec::new();
    for c in dest.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
        let candidate = if done.is_empty() { c.to_vec() } else { [&done[..], b"/", c].concat() };
        done = match resolve_parent_in_tree(tree, &candidate, true) {
            Some(r) if matches!(tree.entries.get(&r).map(|e| &e.kind), Some(EntryKind::Dir | EntryKind::Opaque)) => r,
            _ => candidate,
        };
    }
    done
}

/// Owners and mode the copied entries get.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    pub owner: Option<(u32, u32)>,
    pub chmod: Option<u32>,
}

/// Writes copies of `items` (sources from `origin`) to `dest` (relative,
/// already resolved in `existing`, the image being built) as layer entries.
pub struct LayerWriter<W: io::Write> {
    tar: tar::Builder<W>,
    made: HashSet<Vec<u8>>,
    /// The time of the directories the writer makes (not copied ones).
    made_time: i64,
}

impl<W: io::Write> LayerWriter<W> {
    pub fn new(out: W) -> Self {
        // Made directories get a fixed time (`SOURCE_DATE_EPOCH`, else 0),
        // so that the same copy makes the same layer, and the build cache
        // keyed on layers stays valid from one build to the next.
        let made_time = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|t| t.parse().ok()).unwrap_or(0);
        LayerWriter { tar: tar::Builder::new(out), made: HashSet::new(), made_time }
    }

    pub fn finish(self) -> io::Result<W> {
        self.tar.into_inner()
    }

    /// `path`'s missing parents (missing in `existing` and not yet written), `0755 root:root`.
    pub fn parents(&mut self, existing: &MergedTree, path: &[u8]) -> io::Result<()> {
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        for n in 1..comps.len() {
            self.dir_if_missing(existing, &comps[..n].join(&b'/'))?;
        }
        Ok(())
    }

    /// Directory `path` itself when it is missing, `0755 root:root` (WORKDIR, a COPY's destination).
    pub fn dir_if_missing(&mut self, existing: &MergedTree, path: &[u8]) -> io::Result<()> {
        if path.is_empty() || existing.entries.contains_key(path) || self.made.contains(path) {
            return Ok(());
        }
        self.parents(existing, path)?;
        let mut h = header(0o755, 0, 0, self.made_time);
        h.set_entry_type(tar::EntryType::Directory);
        self.made.insert(path.to_vec());
        self.tar.append_data(&mut h, bytes_path(path), io::empty())
    }

    /// One copied item at `path`.
    pub fn item(&mut self, origin: &Origin, item: &Item, path: &[u8], opts: &CopyOptions) -> io::Result<()> {
        if path.is_empty() {
            return Ok(());
        }
        let (uid, gid) = opts.owner.unwrap_or((0, 0));
        let mode = opts.chmod.unwrap_or(item.mode);
        let mut h = header(mode, uid, gid, item.mtime);
        self.made.insert(path.to_vec());
        match &item.kind {
            ItemKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                self.tar.append_data(&mut h, bytes_path(path), io::empty())
            }
            ItemKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                self.tar.append_link(&mut h, bytes_path(path), bytes_path(target))
            }
            ItemKind::File => {
                let file = origin.open(item)?;
                let size = file.metadata()?.len();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(size);
                let data = file.take(size).chain(io::repeat(0)).take(size);
                self.tar.append_data(&mut h, bytes_path(path), data)
            }
        }
    }

    /// A file of `data` at `path` (a here-document of COPY): `0644` unless
    /// `--chmod` says otherwise, the time of made directories.
    pub fn inline(&mut self, path: &[u8], data: &[u8], opts: &CopyOptions) -> io::Result<()> {
        let (uid, gid) = opts.owner.unwrap_or((0, 0));
        let mut h = header(opts.chmod.unwrap_or(0o644), uid, gid, self.made_time);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        self.made.insert(path.to_vec());
        self.tar.append_data(&mut h, bytes_path(path), data)
    }

    /// A file fetched by `ADD URL` at `path`: `0600` unless `--chmod` says
    /// otherwise (Docker's rule), its server's time or the epoch.
    pub fn downloaded(
        &mut self,
        path: &[u8],
        file: &mut File,
        size: u64,
        mtime: Option<i64>,
        opts: &CopyOptions,
    ) -> io::Result<()> {
        let (uid, gid) = opts.owner.unwrap_or((0, 0));
        let mut h = header(opts.chmod.unwrap_or(0o600), uid, gid, mtime.unwrap_or(0));
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        self.made.insert(path.to_vec());
        let data = file.take(size).chain(io::repeat(0)).take(size);
        self.tar.append_data(&mut h, bytes_path(path), data)
    }

    /// An entry of an archive that ADD unpacks, re-rooted at `path`.
    pub fn raw<R: Read>(&mut self, h: &mut tar::Header, path: &[u8], link: Option<&[u8]>, data: R) -> io::Result<()> {
        self.made.insert(path.to_vec());
        match link {
            Some(target) => self.tar.append_link(h, bytes_path(path), bytes_path(target)),
            None => self.tar.append_data(h, bytes_path(path), data),
        }
    }
}

fn header(mode: u32, uid: u32, gid: u32, mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(0);
    h
}

fn bytes_path(p: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(p))
}

/// `USER[:GROUP]` of `--chown` as ids: numbers as they are, names looked up
/// in the image's `/etc/passwd` and `/etc/group`; a user alone takes its
/// primary group (or the same number).
pub fn owner_ids(spec: &str, tree: &MergedTree, objects: &Path) -> Result<(u32, u32), String> {
    let read = |path: &[u8]| -> String {
        let origin = Origin::Image { tree, objects };
        origin
            .item(path)
            .ok()
            .flatten()
            .filter(|i| i.kind == ItemKind::File)
            .and_then(|i| origin.open(&i).ok())
            .and_then(|mut f| {
                let mut s = String::new();
                f.read_to_string(&mut s).ok().map(|_| s)
            })
            .unwrap_or_default()
    };
    let table = |text: String| -> BTreeMap<String, (u32, u32)> {
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((
                    f.first()?.to_string(),
                    (f.get(2)?.parse().ok()?, f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0)),
                ))
            })
            .collect()
    };
    let (user, group) = spec.split_once(':').map_or((spec, None), |(u, g)| (u, Some(g)));
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (n, table(read(b"etc/passwd")).values().find(|(u, _)| *u == n).map_or(n, |(_, g)| *g)),
        Err(_) => *table(read(b"etc/passwd"))
            .get(user)
            .ok_or_else(|| format!("unable to find user {user}: no matching entries in passwd file"))?,
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => table(read(b"etc/group"))
                .get(g)
                .map(|(gid, _)| *gid)
                .ok_or_else(|| format!("unable to find group {g}: no matching entries in group file"))?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"*.txt", b"a.txt"));
        assert!(!glob_match(b"*.txt", b"a.txt.gz"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[!a-c]x", b"bx"));
        assert!(glob_match(b"\\*", b"*"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*b*c", b"aXXbYYc"));
    }

    #[test]
    fn dockerignore_rules() {
        let ctx = |text: &str| parse_ignore(text);
        let rules = ctx("# c\n*.log\n!keep.log\nbuild/\n**/tmp\n");
        let ignored = |p: &str| {
            let comps: Vec<&str> = p.split('/').collect();
            let mut out = false;
            for (neg, pat) in &rules {
                if (1..=comps.len()).any(|n| match_components(pat, &comps[..n])) {
                    out = !neg;
                }
            }
            out
        };
        assert!(ignored("a.log"));
        assert!(!ignored("keep.log"));
        assert!(ignored("build/x/y"));
        assert!(ignored("src/deep/tmp/file"));
        assert!(!ignored("src/main.rs"));
        assert!(!ignored("sub/a.log"), "a pattern without ** matches at the top only");
    }

    fn tree(entries: &[(&str, EntryKind)]) -> MergedTree {
        let mut t = MergedTree::new();
        for (p, k) in entries {
            t.entries.insert(
                p.as_bytes().to_vec(),
                Entry {
                    path: p.as_bytes().to_vec(),
                    kind: k.clone(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    mtime_nsec: 0,
                    xattrs: vec![],
                },
            );
        }
        t
    }

    #[test]
    fn destinations_follow_the_images_directory_links() {
        let t = tree(&[
            ("usr", EntryKind::Dir),
            ("usr/bin", EntryKind::Dir),
            ("bin", EntryKind::Symlink { target: b"usr/bin".to_vec() }),
            ("abs", EntryKind::Symlink { target: b"/usr".to_vec() }),
            ("loop", EntryKind::Symlink { target: b"loop".to_vec() }),
        ]);
        assert_eq!(land_in_tree(&t, b"bin/tool"), b"usr/bin/tool");
        assert_eq!(land_in_tree(&t, b"abs/bin"), b"usr/bin");
        assert_eq!(land_in_tree(&t, b"new/dir"), b"new/dir");
        assert_eq!(land_in_tree(&t, b"loop/x"), b"loop/x");
        assert_eq!(resolve_in_tree(&t, b"bin/../bin"), Some(b"usr/bin".to_vec()));
    }

    #[test]
    fn relative_paths_never_climb_out() {
        assert_eq!(clean_relative(b"a/./b/../c/"), Some(b"a/c".to_vec()));
        assert_eq!(clean_relative(b"../etc/passwd"), None);
    }
}
