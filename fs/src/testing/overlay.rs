//! Layers as kernel overlayfs lower directories, and overlay mounts.
//!
//! overlayfs marks a deleted name with a whiteout, a character device 0/0,
//! and a directory that hides everything below it with the xattr
//! `overlay.opaque = "y"`, in the `trusted.` namespace normally and in the
//! `user.` namespace when mounted with `userxattr` (the only choice inside a
//! user namespace). OCI layers say the same with `.wh.NAME` and
//! `.wh..wh..opq` files. [`materialize`] writes a layer's index entries in
//! overlayfs form; [`extract_oci_layer`] extracts a layer tar with GNU tar
//! and converts its OCI markers ([`convert_oci_whiteouts`]), without strata
//! in the loop.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_layers::index::{Entry, EntryKind};

use super::ok;

/// Which xattr namespace overlayfs keeps its markers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    /// `trusted.overlay.*`: overlayfs mounted by real root.
    Trusted,
    /// `user.overlay.*`: overlayfs mounted with `userxattr` (in a user namespace).
    User,
}

impl XattrNs {
    /// The name of the opaque-directory xattr.
    pub fn opaque(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.opaque",
            XattrNs::User => "user.overlay.opaque",
        }
    }
}

/// An id mapping like `/proc/PID/uid_map`: (inside, outside, count) ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap(pub Vec<(u32, u32, u32)>);

impl IdMap {
    /// Every id maps to itself.
    pub fn identity() -> IdMap {
        IdMap(vec![(0, 0, u32::MAX)])
    }

    /// Parses the text of a `uid_map` / `gid_map` file.
    pub fn parse(text: &str) -> Option<IdMap> {
        let mut ranges = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<u32> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
            let [inside, outside, count] = f[..] else { return None };
            ranges.push((inside, outside, count));
        }
        (!ranges.is_empty()).then_some(IdMap(ranges))
    }

    /// The outside id of inside id `id`; panics when it is not mapped.
    pub fn outside(&self, id: u32) -> u32 {
        self.0
            .iter()
            .find(|&&(i, _, n)| id >= i && id - i < n)
            .map(|&(i, o, _)| o + (id - i))
            .unwrap_or_else(|| panic!("id {id} is not mapped by {:?}", self.0))
    }
}

/// How to write lower directories: the marker namespace, and the host ids
/// for the ids the layers record (a user namespace sees host id
/// `uids.outside(uid)` as `uid`).
#[derive(Debug, Clone)]
pub struct LowerFormat {
    pub ns: XattrNs,
    pub uids: IdMap,
    pub gids: IdMap,
}

impl LowerFormat {
    /// For overlayfs mounted by real root.
    pub fn root() -> LowerFormat {
        LowerFormat { ns: XattrNs::Trusted, uids: IdMap::identity(), gids: IdMap::identity() }
    }

    /// For overlayfs mounted in a user namespace with these id maps.
    pub fn user_namespace(uids: IdMap, gids: IdMap) -> LowerFormat {
        LowerFormat { ns: XattrNs::User, uids, gids }
    }

    fn chown(&self, p: &Path, uid: u32, gid: u32) {
        let (u, g) = (self.uids.outside(uid), self.gids.outside(gid));
        ok(
            rustix::fs::chownat(
                rustix::fs::CWD,
                p,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            ),
            || format!("chown {} to {u}:{g}", p.display()),
        );
    }
}

/// A whiteout at `p`: a character device 0/0 with no permission bits.
pub fn make_whiteout(p: &Path) {
    ok(
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        ),
        || format!("mknod whiteout {}", p.display()),
    );
}

/// Marks directory `p` opaque.
pub fn mark_opaque(p: &Path, ns: XattrNs) {
    ok(rustix::fs::setxattr(p, ns.opaque(), b"y", rustix::fs::XattrFlags::empty()), || {
        format!("setxattr {} on {}", ns.opaque(), p.display())
    });
}

fn mknod(p: &Path, kind: rustix::fs::FileType, mode: u32, major: u32, minor: u32) {
    ok(
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            kind,
            rustix::fs::Mode::from_raw_mode(mode),
            rustix::fs::makedev(major, minor),
        ),
        || format!("mknod {}", p.display()),
    );
}

/// Writes one layer's index entries (file contents from `objects`) as an
/// overlayfs lower directory `dir`: owners, modes, xattrs and times as
/// recorded, whiteouts and opaque markers in overlayfs form.
pub fn materialize(entries: &[Entry], objects: &Path, dir: &Path, how: &LowerFormat) {
    let mkdirs = |p: &Path| ok(std::fs::create_dir_all(p), || format!("mkdir -p {}", p.display()));
    mkdirs(dir);
    for e in entries {
        let p = dir.join(OsStr::from_bytes(&e.path));
        if let Some(parent) = p.parent().filter(|_| !e.path.is_empty()) {
            mkdirs(parent);
        }
        match &e.kind {
            EntryKind::Dir => mkdirs(&p),
            EntryKind::File { digest, .. } => {
                let src = strata_layers::layout::object_path_in(objects, digest);
                ok(std::fs::copy(&src, &p), || format!("copy {} to {}", src.display(), p.display()));
            }
            EntryKind::Symlink { target } => {
                ok(std::os::unix::fs::symlink(OsStr::from_bytes(target), &p), || format!("symlink {}", p.display()));
            }
            EntryKind::Hardlink { target } => {
                let t = dir.join(OsStr::from_bytes(target));
                ok(std::fs::hard_link(&t, &p), || format!("link {} to {}", p.display(), t.display()));
            }
            EntryKind::CharDevice { major, minor } => {
                mknod(&p, rustix::fs::FileType::CharacterDevice, 0o600, *major, *minor)
            }
            EntryKind::BlockDevice { major, minor } => {
                mknod(&p, rustix::fs::FileType::BlockDevice, 0o600, *major, *minor)
            }
            EntryKind::Fifo => mknod(&p, rustix::fs::FileType::Fifo, 0o600, 0, 0),
            EntryKind::Whiteout => {
                make_whiteout(&p);
                how.chown(&p, 0, 0);
                continue;
            }
            EntryKind::Opaque => {
                mkdirs(&p);
                mark_opaque(&p, how.ns);
                continue;
            }
        }
        how.chown(&p, e.uid, e.gid);
        if !matches!(e.kind, EntryKind::Symlink { .. }) {
            ok(std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)), || {
                format!("chmod {}", p.display())
            });
        }
        for (k, v) in &e.xattrs {
            ok(rustix::fs::lsetxattr(&p, OsStr::from_bytes(k), v, rustix::fs::XattrFlags::empty()), || {
                format!("setxattr {} on {}", String::from_utf8_lossy(k), p.display())
            });
        }
    }
    // Times last, children before parents.
    for e in entries.iter().rev() {
        if matches!(e.kind, EntryKind::Whiteout | EntryKind::Opaque) {
            continue;
        }
        let p = dir.join(OsStr::from_bytes(&e.path));
        set_times(&p, (e.mtime, e.mtime_nsec as i64), (e.mtime, e.mtime_nsec as i64));
    }
}

fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = |(s, ns): (i64, i64)| rustix::fs::Timespec { tv_sec: s, tv_nsec: ns as _ };
    ok(
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &rustix::fs::Timestamps { last_access: ts(atime), last_modification: ts(mtime) },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        ),
        || format!("utimensat {}", p.display()),
    );
}

/// Extracts the (possibly compressed) OCI layer tar `blob` into `dir` with
/// GNU tar as root — owners, permission bits, xattrs, devices, hard links and
/// times as the tar says — then converts its whiteouts for overlayfs.
/// `below` are the lower directories of the layers under this one, bottom
/// first.
///
/// A tar need not list the parent directories of its entries (umoci leaves
/// out unchanged ones). GNU tar creates them with default attributes; like
/// containerd's applier, such a directory takes owner, mode, times and
/// xattrs from the topmost layer below that has it, so that the layer does
/// not change what it does not mention.
///
/// A whiteout below a name the same layer makes a non-directory cannot be
/// extracted (umoci writes such entries when a directory became a file); it
/// hides nothing the non-directory does not already hide, so it is left out.
pub fn extract_oci_layer(blob: &Path, dir: &Path, below: &[PathBuf], ns: XattrNs) {
    ok(std::fs::create_dir_all(dir), || format!("mkdir -p {}", dir.display()));
    let listing = tar_output(Command::new("tar").arg("-tf").arg(blob).arg("--quoting-style=escape"));
    let names: Vec<Vec<u8>> = listing.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(unescape).collect();
    let non_dirs: std::collections::HashSet<&[u8]> =
        names.iter().filter(|n| !n.ends_with(b"/")).map(|n| n.as_slice()).collect();
    let mut cmd = Command::new("tar");
    cmd.arg("-xf")
        .arg(blob)
        .arg("-C")
        .arg(dir)
        .args(["--numeric-owner", "--same-owner", "--same-permissions", "--xattrs", "--xattrs-include=*"])
        .args(["--no-wildcards", "--anchored"]);
    for n in &names {
        let base = n.rsplit(|&b| b == b'/').next().unwrap_or(n);
        let under_non_dir = (1..n.len()).any(|i| n[i] == b'/' && non_dirs.contains(&n[..i]));
        if base.starts_with(b".wh.") && under_non_dir {
            let mut arg = b"--exclude=".to_vec();
            arg.extend_from_slice(n);
            cmd.arg(OsStr::from_bytes(&arg));
        }
    }
    tar_output(&mut cmd);
    let listed: std::collections::HashSet<&[u8]> = names.iter().map(|n| normalize(n)).collect();
    inherit_implicit_dirs(dir, b"", &listed, below);
    convert_oci_whiteouts(dir, ns);
}

/// A tar member name as a path relative to the layer root ("" for the root).
fn normalize(name: &[u8]) -> &[u8] {
    let mut n = name;
    while let Some(rest) = n.strip_prefix(b"./") {
        n = rest;
    }
    while let Some(rest) = n.strip_suffix(b"/") {
        n = rest;
    }
    if n == b"." {
        b""
    } else {
        n
    }
}

/// Gives every directory below `dir/rel` that the tar did not list the
/// attributes of the same directory in the topmost layer of `below` that has
/// something at that path (when that is a directory).
fn inherit_implicit_dirs(dir: &Path, rel: &[u8], listed: &std::collections::HashSet<&[u8]>, below: &[PathBuf]) {
    let here = dir.join(OsStr::from_bytes(rel));
    let rd = ok(std::fs::read_dir(&here), || format!("read_dir {}", here.display()));
    for e in rd {
        let e = ok(e, || format!("read_dir {}", here.display()));
        if !ok(e.file_type(), || format!("lstat {}", e.path().display())).is_dir() {
            continue;
        }
        let name = e.file_name();
        let path = if rel.is_empty() { name.as_bytes().to_vec() } else { [rel, b"/", name.as_bytes()].concat() };
        if !listed.contains(path.as_slice()) {
            let found = below
                .iter()
                .rev()
                .find_map(|l| std::fs::symlink_metadata(l.join(OsStr::from_bytes(&path))).ok().map(|m| (l, m)));
            if let Some((l, m)) = found.filter(|(_, m)| m.is_dir()) {
                copy_dir_attributes(&l.join(OsStr::from_bytes(&path)), &m, &e.path());
            }
        }
        inherit_implicit_dirs(dir, &path, listed, below);
    }
}

/// Owner, mode, xattrs (except overlayfs's own) and times of `from` onto `to`.
fn copy_dir_attributes(from: &Path, m: &std::fs::Metadata, to: &Path) {
    LowerFormat::root().chown(to, m.uid(), m.gid());
    ok(std::fs::set_permissions(to, std::fs::Permissions::from_mode(m.mode() & 0o7777)), || {
        format!("chmod {}", to.display())
    });
    for name in super::tree::xattr_names(from) {
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            continue;
        }
        if let Some(v) = super::tree::getxattr(from, &name) {
            ok(rustix::fs::lsetxattr(to, name.as_str(), &v, rustix::fs::XattrFlags::empty()), || {
                format!("setxattr {name} on {}", to.display())
            });
        }
    }
    set_times(to, (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
}

fn tar_output(cmd: &mut Command) -> Vec<u8> {
    let out = ok(cmd.stdin(std::process::Stdio::null()).output(), || format!("running {cmd:?}"));
    if !out.status.success() {
        panic!("{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    out.stdout
}

/// Undoes GNU tar's `--quoting-style=escape` (C escapes, octal `\ooo`).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' || i + 1 == s.len() {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let c = s[i + 1];
        let octal = s.len() >= i + 4 && s[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b));
        if octal {
            out.push(s[i + 1..i + 4].iter().fold(0u8, |v, b| v.wrapping_mul(8) + (b - b'0')));
            i += 4;
            continue;
        }
        out.push(match c {
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            b'f' => 0x0c,
            b'v' => 0x0b,
            b'a' => 0x07,
            b'b' => 0x08,
            other => other,
        });
        i += 2;
    }
    out
}

/// Turns OCI markers below `dir` into overlayfs ones: `.wh..wh..opq` into
/// the opaque xattr on its directory, `.wh.NAME` into a whiteout NAME. The
/// times of the directories are kept.
pub fn convert_oci_whiteouts(dir: &Path, ns: XattrNs) {
    let meta = ok(std::fs::symlink_metadata(dir), || format!("lstat {}", dir.display()));
    let rd = ok(std::fs::read_dir(dir), || format!("read_dir {}", dir.display()));
    let mut names: Vec<_> = rd.map(|e| ok(e, || format!("read_dir {}", dir.display())).file_name()).collect();
    names.sort();
    let mut touched = false;
    for n in names {
        let p = dir.join(&n);
        let b = n.as_bytes();
        if b == b".wh..wh..opq" {
            ok(std::fs::remove_file(&p), || format!("rm {}", p.display()));
            mark_opaque(dir, ns);
            touched = true;
        } else if let Some(hidden) = b.strip_prefix(b".wh.") {
            ok(std::fs::remove_file(&p), || format!("rm {}", p.display()));
            let target = dir.join(OsStr::from_bytes(hidden));
            if std::fs::symlink_metadata(&target).is_ok() {
                panic!("{} is both whited out and present in the same layer", target.display());
            }
            make_whiteout(&target);
            touched = true;
        } else if ok(std::fs::symlink_metadata(&p), || format!("lstat {}", p.display())).is_dir() {
            convert_oci_whiteouts(&p, ns);
        }
    }
    if touched {
        set_times(dir, (meta.atime(), meta.atime_nsec()), (meta.mtime(), meta.mtime_nsec()));
    }
}

/// Gives everything below `dir` (and `dir` itself) the host ids that a user
/// namespace with these maps sees as its present ids, keeping the
/// permission bits (chown clears set-id bits).
pub fn shift_ids(dir: &Path, uids: &IdMap, gids: &IdMap) {
    let how = LowerFormat::user_namespace(uids.clone(), gids.clone());
    let mut stack = vec![dir.to_path_buf()];
    let mut done = std::collections::HashSet::new();
    while let Some(p) = stack.pop() {
        let m = ok(std::fs::symlink_metadata(&p), || format!("lstat {}", p.display()));
        if !done.insert((m.dev(), m.ino())) {
            continue; // another name of a hard-linked file
        }
        how.chown(&p, m.uid(), m.gid());
        if !m.file_type().is_symlink() {
            ok(std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m.mode() & 0o7777)), || {
                format!("chmod {}", p.display())
            });
        }
        if m.is_dir() {
            let rd = ok(std::fs::read_dir(&p), || format!("read_dir {}", p.display()));
            stack.extend(rd.map(|e| ok(e, || format!("read_dir {}", p.display())).path()));
        }
    }
}

/// An overlayfs mount, detached when dropped.
pub struct OverlayMount {
    path: PathBuf,
}

impl OverlayMount {
    /// Mounts `lowers` (bottom layer first, like strata's lowers) with a
    /// writable `upper` and its `work` directory at `mnt`.
    ///
    /// Redirects, metacopy and xino are off, so directory renames fail with
    /// EXDEV and copy-up copies whole files (in a user namespace `userxattr`
    /// implies the same for redirects and metacopy). `index` turns on the
    /// inode index, without which overlayfs breaks the hard links of lower
    /// files at copy-up (writing through one name leaves the others as they
    /// were); strata keeps them, as overlayfs does with the index.
    pub fn mount(lowers: &[PathBuf], upper: &Path, work: &Path, mnt: &Path, ns: XattrNs, index: bool) -> OverlayMount {
        let lowerdir: Vec<String> = lowers.iter().rev().map(|p| p.display().to_string()).collect();
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={},index={},xino=off",
            lowerdir.join(":"),
            upper.display(),
            work.display(),
            if index { "on" } else { "off" }
        );
        opts.push_str(match ns {
            XattrNs::Trusted => ",redirect_dir=off,metacopy=off",
            XattrNs::User => ",userxattr",
        });
        let data = ok(std::ffi::CString::new(opts.clone()), || format!("mount options {opts}"));
        ok(
            rustix::mount::mount("overlay", mnt, "overlay", rustix::mount::MountFlags::empty(), Some(data.as_c_str())),
            || format!("mount -t overlay -o {opts} overlay {}", mnt.display()),
        );
        OverlayMount { path: mnt.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
    }
}
