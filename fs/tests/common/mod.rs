//! Test helpers: build small layer indexes and object directories directly
//! (no store), mount them, and always unmount again.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_fs::{Lower, MountHandle, MountOptions};
use strata_layers::index::{Entry, EntryKind, LayerIndex};
use strata_layers::Digest;

/// Builds one layer: entries in tar order, contents written as objects.
pub struct LayerBuilder {
    objects: PathBuf,
    entries: Vec<Entry>,
}

pub const T0: i64 = 1_600_000_000;

impl LayerBuilder {
    pub fn new(objects: &Path) -> Self {
        LayerBuilder { objects: objects.to_path_buf(), entries: Vec::new() }
    }

    fn push(mut self, path: &str, kind: EntryKind, mode: u32) -> Self {
        self.entries.push(Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: T0,
            mtime_nsec: 0,
            xattrs: vec![],
        });
        self
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.push(path, EntryKind::Dir, mode)
    }

    pub fn file(self, path: &str, content: &[u8], mode: u32) -> Self {
        let digest = Digest::of(content);
        let p = strata_layers::layout::object_path_in(&self.objects, &digest);
        if !p.exists() {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let mut f = std::fs::File::create(&p).unwrap();
            f.write_all(content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        }
        self.push(path, EntryKind::File { size: content.len() as u64, digest }, mode)
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.push(path, EntryKind::Symlink { target: target.as_bytes().to_vec() }, 0o777)
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.push(path, EntryKind::Hardlink { target: target.as_bytes().to_vec() }, 0o644)
    }

    pub fn chardev(self, path: &str, major: u32, minor: u32) -> Self {
        self.push(path, EntryKind::CharDevice { major, minor }, 0o666)
    }

    pub fn fifo(self, path: &str) -> Self {
        self.push(path, EntryKind::Fifo, 0o644)
    }

    pub fn whiteout(self, path: &str) -> Self {
        self.push(path, EntryKind::Whiteout, 0)
    }

    pub fn opaque(self, path: &str) -> Self {
        self.push(path, EntryKind::Opaque, 0o755)
    }

    /// Sets owner of the last entry.
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        let e = self.entries.last_mut().unwrap();
        e.uid = uid;
        e.gid = gid;
        self
    }

    pub fn mtime(mut self, sec: i64, nsec: u32) -> Self {
        let e = self.entries.last_mut().unwrap();
        e.mtime = sec;
        e.mtime_nsec = nsec;
        self
    }

    pub fn xattr(mut self, k: &str, v: &[u8]) -> Self {
        let e = self.entries.last_mut().unwrap();
        e.xattrs.push((k.as_bytes().to_vec(), v.to_vec()));
        e.xattrs.sort();
        self
    }

    pub fn build(self) -> Lower {
        Lower { index: Arc::new(LayerIndex::new(self.entries)), objects_dir: self.objects }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// Unmounts (lazily) on drop, also when a test panics.
pub struct MountGuard {
    pub handle: Option<MountHandle>,
    pub path: PathBuf,
}

impl MountGuard {
    pub fn new(lowers: Vec<Lower>, path: &Path, opts: MountOptions) -> MountGuard {
        std::fs::create_dir_all(path).unwrap();
        let handle = strata_fs::mount(lowers, path, opts).expect("mount");
        MountGuard { handle: Some(handle), path: path.to_path_buf() }
    }

    pub fn unmount(mut self) {
        if let Some(h) = self.handle.take() {
            h.unmount().expect("unmount");
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = strata_fs::unmount_path(&self.path);
            drop(self.handle.take());
        }
    }
}

/// A description of a tree for comparisons: path -> "type mode uid:gid size content-digest/target".
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("link->{}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!("file size={} sha={}", m.len(), Digest::of(&std::fs::read(&p).unwrap()).short())
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                "fifo".into()
            } else if ft.is_char_device() {
                format!("chr {}", m.rdev())
            } else if ft.is_block_device() {
                format!("blk {}", m.rdev())
            } else {
                "socket".into()
            }
        };
        out.insert(rel, format!("{what} mode={:o} owner={}:{}", m.mode() & 0o7777, m.uid(), m.gid()));
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

pub fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
