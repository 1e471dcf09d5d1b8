//! `docker diff` for an upper directory: which paths were added, changed or
//! deleted relative to the lower layers.
//!
//! The rules are Docker's (moby `pkg/archive` `changes()`): walk the upper
//! directory in lexical order per directory; a whiteout is a deletion of the
//! name it hides; anything else is a change when some lower layer has that
//! path, else an addition; a directory present below with the same mode and
//! mtime is not reported by itself, but the parent of an added or deleted
//! path is reported as changed (once). Opaque markers and strata's internal
//! files are not changes by themselves. [`changes_hiding`] also leaves out
//! a container runtime's mount points (what Docker keeps in its "init"
//! layer) and the directories made only to hold them.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use strata_layers::index::EntryKind;

use crate::source::Lower;
use crate::upper::{Upper, WH_PREFIX};
use crate::walk::Visit;
use crate::{load, FsError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

impl ChangeKind {
    /// Docker's one-letter column: A, C or D.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    pub kind: ChangeKind,
    /// Absolute path in the container, like "/etc/x".
    pub path: String,
}

/// Per lower path: (is a directory, mode bits incl. type, mtime sec, mtime nsec), topmost layer first.
type LowerPaths = HashMap<Vec<u8>, (u32, i64, u32)>;

fn lower_paths(lowers: &[Lower]) -> LowerPaths {
    let mut m = LowerPaths::new();
    for l in lowers.iter().rev() {
        for e in &l.index.entries {
            if matches!(e.kind, EntryKind::Whiteout) {
                continue;
            }
            let p: Vec<u8> =
                e.path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").collect::<Vec<_>>().join(&b'/');
            m.entry(p).or_insert((e.type_bits() | (e.mode & 0o7777), e.mtime, e.mtime_nsec));
        }
    }
    m
}

pub fn changes(lowers: &[Lower], upper: &Path) -> Result<Vec<Change>, FsError> {
    changes_hiding(lowers, upper, &[])
}

/// [`changes`], leaving out the entries at `hidden` (paths relative to the
/// root, like `etc/hosts`) and what is below them, where the upper directory
/// added them: a container runtime's mount points, which Docker keeps in a
/// layer of their own under the container's ("init"), so that they are
/// neither changes nor make their directory one. So are directories the
/// upper directory added only to hold them (`/etc` of an image without
/// one, made for `/etc/hosts`).
pub fn changes_hiding(lowers: &[Lower], upper: &Path, hidden: &[&[u8]]) -> Result<Vec<Change>, FsError> {
    let io = |cause| FsError::Io { what: "reading upper directory", path: upper.to_path_buf(), cause };
    let up = Upper::open(upper).map_err(io)?;
    let lower = lower_paths(lowers);
    let mut out = Vec::new();
    // A running container may move a directory while it is walked; the
    // walk then starts again (what changes meanwhile is passed over).
    for attempt in 1.. {
        out.clear();
        let mut changed_dirs = HashSet::new();
        let root = up.dir_readable(b"").map_err(io)?;
        let walked = crate::walk::walk(
            root,
            Vec::new(),
            |fd, rel| changes_in(&up, &lower, hidden, fd, rel, &mut changed_dirs),
            |_, c| {
                out.push(c);
                Ok(())
            },
        );
        match walked {
            Err(e) if crate::walk::was_moved(&e) && attempt < WALK_ATTEMPTS => continue,
            r => r.map_err(io)?,
        }
        break;
    }
    let hidden: Vec<String> = hidden.iter().map(|h| show(h)).collect();
    drop_holders(&up, &lower, &hidden, &mut out).map_err(io)?;
    Ok(out)
}

/// How many times a walk is started when directories keep moving under it.
const WALK_ATTEMPTS: u32 = 10;

/// Whether `path` lies below directory `dir` (both as [`show`] gives them).
fn below(dir: &str, path: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Removes from `out` the added directories that hold nothing but hidden
/// entries, deepest first, and the report of their parent where that was
/// made only for holding an addition.
fn drop_holders(up: &Upper, lower: &LowerPaths, hidden: &[String], out: &mut Vec<Change>) -> std::io::Result<()> {
    loop {
        let holder = out.iter().position(|c| {
            c.kind == ChangeKind::Added
                && hidden.iter().any(|h| below(&c.path, h))
                && !out.iter().any(|o| below(&c.path, &o.path))
        });
        let Some(i) = holder else { return Ok(()) };
        let gone = out.remove(i);
        let parent = parent_of(&gone.path);
        let other_reason = out.iter().any(|c| c.kind != ChangeKind::Changed && parent_of(&c.path) == parent);
        if parent.is_empty() || other_reason || !unchanged_dir(up, lower, &parent[1..])? {
            continue;
        }
        out.retain(|c| c.path != parent);
    }
}

/// Whether the upper directory `rel` has the mode and time of the lower one
/// (so that only what happened in it would make it a change).
fn unchanged_dir(up: &Upper, lower: &LowerPaths, rel: &str) -> std::io::Result<bool> {
    let Some(&(mode, sec, nsec)) = lower.get(rel.as_bytes()) else { return Ok(false) };
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let found = up.dir(dir.as_bytes()).and_then(|d| up.stat(d.as_fd(), name.as_bytes()));
    let a = match found {
        Err(e) if crate::walk::vanished(&e) => return Ok(false),
        r => r?.attr(),
    };
    Ok(a.is_dir() && mode == a.mode && same_time((sec, nsec), (a.mtime.sec, a.mtime.nsec)))
}

fn show(p: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(p))
}

fn same_time(a: (i64, u32), b: (i64, u32)) -> bool {
    a == b || (a.0 == b.0 && (a.1 == 0 || b.1 == 0))
}

/// The changes in the upper directory `rel` (open as `fd`), in walk order,
/// with its subdirectories to walk where their changes go.
fn changes_in(
    up: &Upper,
    lower: &LowerPaths,
    hidden: &[&[u8]],
    fd: BorrowedFd,
    rel: Vec<u8>,
    changed_dirs: &mut HashSet<Vec<u8>>,
) -> std::io::Result<Vec<Visit<Change, Vec<u8>>>> {
    let mut todo = Vec::new();
    let (names, _opaque) = load::upper_names_sorted(up, fd)?;
    let join = |n: &[u8]| if rel.is_empty() { n.to_vec() } else { [&rel[..], b"/", n].concat() };
    for (key, n) in names {
        let (path, kind, is_dir) = if n.starts_with(WH_PREFIX) {
            (join(&key), ChangeKind::Deleted, false)
        } else {
            let path = join(&n);
            let h = match up.stat(fd, &n) {
                Err(e) if crate::walk::vanished(&e) => continue,
                r => r?,
            };
            let a = h.attr();
            let is_dir = a.is_dir();
            let kind = match lower.get(&path) {
                Some(&(mode, sec, nsec)) => {
                    if is_dir
                        && mode & libc::S_IFMT == libc::S_IFDIR
                        && mode == a.mode
                        && same_time((sec, nsec), (a.mtime.sec, a.mtime.nsec))
                    {
                        todo.push(Visit::Descend(n, path));
                        continue;
                    }
                    ChangeKind::Changed
                }
                None if hidden.contains(&&path[..]) => continue,
                None => ChangeKind::Added,
            };
            (path, kind, is_dir)
        };
        if is_dir {
            changed_dirs.insert(path.clone());
        }
        if kind != ChangeKind::Changed && !rel.is_empty() && !changed_dirs.contains(&rel) {
            todo.push(Visit::Emit(Change { kind: ChangeKind::Changed, path: show(&rel) }));
            changed_dirs.insert(rel.clone());
        }
        todo.push(Visit::Emit(Change { kind, path: show(&path) }));
        if is_dir {
            todo.push(Visit::Descend(n, path));
        }
    }
    Ok(todo)
}
