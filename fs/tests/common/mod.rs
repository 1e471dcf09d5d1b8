//! Test helpers: build small layer indexes and object directories directly
//! (no store), mount them, and always unmount again.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
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

    /// A hard link entry with its target's metadata, as a tar writer puts
    /// it in the link's header (both names are one inode).
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        let of_target = self.entries.iter().rev().find(|e| e.path == target.as_bytes()).cloned();
        let mut b = self.push(path, EntryKind::Hardlink { target: target.as_bytes().to_vec() }, 0o644);
        if let (Some(t), Some(e)) = (of_target, b.entries.last_mut()) {
            (e.mode, e.uid, e.gid, e.mtime, e.mtime_nsec, e.xattrs) =
                (t.mode, t.uid, t.gid, t.mtime, t.mtime_nsec, t.xattrs);
        }
        b
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
        Lower::new(Arc::new(LayerIndex::new(self.entries)), self.objects)
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

/// A description of a tree for comparisons (path -> "type mode owner size
/// content-digest/target"), and one xattr of a path: shared with the
/// differential tests (`strata_fs::testing`).
#[allow(unused_imports)]
pub use strata_fs::testing::tree::{getxattr, snapshot};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Aborts the FUSE connection of the mount whose device is `dev` (through
/// fusectl, mounted here first when it is not), so that a test whose
/// requests hang can end and report it.
#[allow(dead_code)]
pub fn abort_connection(dev: u64) {
    let conns = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(conns).map(|mut d| d.next().is_none()).unwrap_or(true) {
        let _ = rustix::mount::mount("fusectl", conns, "fusectl", rustix::mount::MountFlags::empty(), None);
    }
    let _ = std::fs::write(conns.join(rustix::fs::minor(dev).to_string()).join("abort"), b"1");
}
