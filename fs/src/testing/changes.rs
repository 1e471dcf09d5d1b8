//! `docker diff` of an overlayfs upper directory, to hold against
//! [`crate::changes`] of strata's upper directory after the same script.
//!
//! The rules are the ones `crate::changes` documents (moby's): a whiteout
//! (character device 0/0) is a deletion; anything else is a change when a
//! lower layer has the path, else an addition; a directory present below
//! with the same mode and mtime is not reported by itself; the parent of an
//! added or deleted path is reported as changed, once. What the lower
//! layers have comes from the lower directories themselves.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::ok;
use crate::Lower;

/// Per path below the root: (st_mode, mtime sec, mtime nsec) of the topmost
/// lower layer that has something other than a whiteout there.
pub type LowerView = HashMap<Vec<u8>, (u32, i64, u32)>;

/// The [`LowerView`] of overlayfs lower directories, bottom layer first.
pub fn lower_view(layers: &[PathBuf]) -> LowerView {
    let mut view = LowerView::new();
    for l in layers.iter().rev() {
        collect(l, b"", &mut view);
    }
    view
}

fn collect(root: &Path, rel: &[u8], view: &mut LowerView) {
    let dir = root.join(OsStr::from_bytes(rel));
    let rd = ok(std::fs::read_dir(&dir), || format!("read_dir {}", dir.display()));
    for e in rd {
        let e = ok(e, || format!("read_dir {}", dir.display()));
        let name = e.file_name();
        let path = if rel.is_empty() { name.as_bytes().to_vec() } else { [rel, b"/", name.as_bytes()].concat() };
        let m = ok(std::fs::symlink_metadata(e.path()), || format!("lstat {}", e.path().display()));
        if is_whiteout(&m) {
            continue;
        }
        view.entry(path.clone()).or_insert((m.mode(), m.mtime(), m.mtime_nsec() as u32));
        if m.is_dir() {
            collect(root, &path, view);
        }
    }
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.mode() & libc::S_IFMT == libc::S_IFCHR && m.rdev() == 0
}

/// The change list ("A /path", "C /path", "D /path") of an overlayfs upper
/// directory over `lower`.
pub fn overlay_changes(lower: &LowerView, upper: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut changed = HashSet::new();
    walk(upper, b"", lower, &mut out, &mut changed);
    out
}

fn walk(upper: &Path, rel: &[u8], lower: &LowerView, out: &mut Vec<String>, changed: &mut HashSet<Vec<u8>>) {
    let dir = upper.join(OsStr::from_bytes(rel));
    let rd = ok(std::fs::read_dir(&dir), || format!("read_dir {}", dir.display()));
    let mut names: Vec<Vec<u8>> =
        rd.map(|e| ok(e, || format!("read_dir {}", dir.display())).file_name().as_bytes().to_vec()).collect();
    names.sort();
    for n in names {
        let path = if rel.is_empty() { n.clone() } else { [rel, b"/", &n].concat() };
        let p = dir.join(OsStr::from_bytes(&n));
        let m = ok(std::fs::symlink_metadata(&p), || format!("lstat {}", p.display()));
        let is_dir = m.is_dir();
        let kind = if is_whiteout(&m) {
            'D'
        } else {
            match lower.get(&path) {
                Some(&(mode, sec, nsec)) => {
                    let same_time = (sec, nsec) == (m.mtime(), m.mtime_nsec() as u32)
                        || (sec == m.mtime() && (nsec == 0 || m.mtime_nsec() == 0));
                    if is_dir && mode & libc::S_IFMT == libc::S_IFDIR && mode == m.mode() && same_time {
                        walk(upper, &path, lower, out, changed);
                        continue;
                    }
                    'C'
                }
                None => 'A',
            }
        };
        if is_dir {
            changed.insert(path.clone());
        }
        if kind != 'C' && !rel.is_empty() && !changed.contains(rel) {
            out.push(format!("C /{}", String::from_utf8_lossy(rel)));
            changed.insert(rel.to_vec());
        }
        out.push(format!("{kind} /{}", String::from_utf8_lossy(&path)));
        if is_dir {
            walk(upper, &path, lower, out, changed);
        }
    }
}

/// strata's change list of `upper` over `lowers`, in the same form.
pub fn strata_changes(lowers: &[Lower], upper: &Path) -> Vec<String> {
    ok(crate::changes(lowers, upper), || format!("changes of {}", upper.display()))
        .into_iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path))
        .collect()
}

/// Panics showing what only one side lists unless both lists are equal.
#[track_caller]
pub fn assert_same_changes(what: &str, overlayfs: &[String], strata: &[String]) {
    if overlayfs == strata {
        return;
    }
    let o: HashSet<_> = overlayfs.iter().collect();
    let s: HashSet<_> = strata.iter().collect();
    let only_strata: Vec<_> = strata.iter().filter(|x| !o.contains(x)).take(30).collect();
    let only_overlayfs: Vec<_> = overlayfs.iter().filter(|x| !s.contains(x)).take(30).collect();
    panic!(
        "{what}: change lists differ\nonly strata: {only_strata:?}\nonly overlayfs: {only_overlayfs:?}\n\
         (lengths {} vs {}; same entries in another order if both are empty)",
        strata.len(),
        overlayfs.len()
    );
}
