//! [`StoreFingerprint`]: everything observable about a store directory —
//! every path with its type, permission bits, size and content hash (or link
//! target) — to prove that a refused operation left the store byte-identical.
//! Lock files (`lock`, `records.lock`) and the staging area `tmp/` are not
//! part of it: taking a lock or staging is not a change.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const IGNORED: &[&str] = &["lock", "records.lock", "tmp"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFingerprint {
    entries: BTreeMap<String, String>,
}

impl StoreFingerprint {
    /// Fingerprints `root` (an absent root is an empty fingerprint).
    pub fn of(root: &Path) -> StoreFingerprint {
        let mut entries = BTreeMap::new();
        if root.exists() {
            walk(root, "", &mut entries);
        }
        StoreFingerprint { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Panics listing what was added, removed or changed since `self`.
    pub fn assert_unchanged(&self, after: &StoreFingerprint, what: &str) {
        if self == after {
            return;
        }
        let mut msg = format!("{what}: the store changed\n");
        for (p, v) in &self.entries {
            match after.entries.get(p) {
                None => msg.push_str(&format!("removed: {p} ({v})\n")),
                Some(w) if w != v => msg.push_str(&format!("changed: {p} ({v} -> {w})\n")),
                _ => {}
            }
        }
        for (p, v) in &after.entries {
            if !self.entries.contains_key(p) {
                msg.push_str(&format!("added: {p} ({v})\n"));
            }
        }
        panic!("{msg}");
    }
}

fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = String::from_utf8_lossy(e.file_name().as_bytes()).into_owned();
        let path = e.path();
        let rel_path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        if rel.is_empty() && IGNORED.contains(&name.as_str()) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        let mode = meta.mode() & 0o7777;
        let desc = if meta.is_dir() {
            format!("dir {mode:o}")
        } else if meta.file_type().is_symlink() {
            format!("symlink -> {}", fs::read_link(&path).map(|t| t.display().to_string()).unwrap_or_default())
        } else if meta.is_file() {
            let hash = fs::read(&path).map(|d| crate::sha256_hex(&d)).unwrap_or_else(|e| format!("unreadable: {e}"));
            format!("file {mode:o} {} {hash}", meta.len())
        } else {
            format!("special {:o}", meta.mode())
        };
        out.insert(rel_path.clone(), desc);
        if meta.is_dir() {
            walk(&path, &rel_path, out);
        }
    }
}
