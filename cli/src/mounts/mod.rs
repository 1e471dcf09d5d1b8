//! `strata mount`: images, single layers and stopped containers mounted as
//! browsable trees, each served by its own detached server process.
//!
//! Every mount has a random id and a record `ROOT/mounts/ID.json` (written
//! atomically by the server once the mount is live, removed by it when it
//! ends), plus a private directory `ROOT/mounts/ID/` for what the mount owns:
//! the throwaway `upper/` of a `--rw` mount and the `merged/` mount point used
//! when the user names none. The record names the server by pid and start
//! time, so a record whose server is gone (SIGKILL, crash, reboot) is
//! recognised as stale and cleared — mount detached, private directory and
//! record removed — by the next `strata mount` or `strata umount`.
//!
//! `strata umount` of a mount that processes still use (a shell's working
//! directory, an open file) detaches it, as `podman umount` does: they keep
//! working, and its server ends once the last of them leaves; until then its
//! record, marked detached, keeps holding the image and any upper directory.
//!
//! Modules: `view` (which layers, whiteouts of a single layer), `server` (the
//! detached FUSE server and how the command line starts and stops it).

pub mod server;
pub mod view;

use crate::containers::record::{is_mountpoint, write_json, Proc};
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::PathBuf;
use strata_layers::StoreLayout;
use view::View;

/// How the source of every `strata mount` starts in mountinfo (the FUSE
/// fsname, [`MountRecord::fsname`]): it tells them from other mounts even
/// without their record (that of another store's mount, say).
pub const FSNAME_PREFIX: &str = "strata-mount:";

/// What was mounted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    Container,
}

/// One mount, as recorded in `ROOT/mounts/ID.json`. Also the request the
/// command line hands the server (then without `server`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MountRecord {
    /// 24 hex digits; names the record and the private directory.
    pub id: String,
    /// Canonical absolute path of the mount point.
    pub mountpoint: PathBuf,
    /// The image or container as the user named it.
    pub name: String,
    pub kind: Kind,
    /// `sha256:...` of the image config.
    pub image_id: String,
    /// The container's full id, for container mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Every layer of the image, bottom first (diff_ids).
    pub layers: Vec<String>,
    #[serde(default)]
    pub view: View,
    /// The writable upper directory; `None` for read-only mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<PathBuf>,
    /// The upper directory is strata's own (`ROOT/mounts/ID/upper`) and goes
    /// away at unmount.
    #[serde(default)]
    pub throwaway_upper: bool,
    /// The server process, once it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Proc>,
    /// Unmounted from `mountpoint` while processes still used it: the mount
    /// was detached, as `podman umount` detaches, and its server goes on
    /// serving those processes until the last of them leaves it. Until then
    /// the record holds the image (and the container's upper directory),
    /// but no longer the mount point.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
    /// The server's last failure to unmount or detach on a signal, and how
    /// many there were: it serves on, and the `umount` waiting for it
    /// reports this instead of killing it (which would leave a dead mount
    /// that cannot be removed either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmount_error: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unmount_failures: u32,
    /// RFC 3339, UTC.
    pub created: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl MountRecord {
    /// `ro` / `rw`, qualified by the view (`ro,layer=2`).
    pub fn mode(&self) -> String {
        let mut mode = if self.upper.is_some() { "rw" } else { "ro" }.to_string();
        if let Some(v) = self.view.describe() {
            mode = format!("{mode},{v}");
        }
        if self.detached {
            mode.push_str(",detached");
        }
        mode
    }

    /// The FUSE fsname its server mounts with (the mount's source in
    /// mountinfo), which tells its mount from any other at the same place.
    pub fn fsname(&self) -> String {
        format!("{FSNAME_PREFIX}{}", &self.id[..self.id.len().min(12)])
    }

    /// Whether this mount is the one on top at its mount point (a user's
    /// directory may itself be a mount point, and a mount may be stacked on
    /// it after ours).
    pub fn on_top(&self) -> bool {
        strata_fs::mountinfo::top_mount(&self.mountpoint).is_some_and(|m| m.source == self.fsname())
    }

    /// The mount on top of this one at its mount point, when another mount
    /// covers it (a user's, or another store's strata mount). A covered
    /// mount cannot be unmounted: unmounting by path (even through a
    /// descriptor of its root) takes the one on top.
    pub fn covered_by(&self) -> Option<strata_fs::mountinfo::MountEntry> {
        if self.detached {
            return None;
        }
        let at = strata_fs::mountinfo::mounts_at(&self.mountpoint);
        let ours = at.iter().any(|m| m.source == self.fsname());
        let top = strata_fs::mountinfo::top_mount(&self.mountpoint)?;
        (ours && top.source != self.fsname()).then_some(top)
    }

    /// Sets the mount point to where the mount is now. Renaming a parent
    /// directory of a mount point moves the mount with it: it is listed,
    /// unmounted and cleared where it is now, not where it was made.
    /// `mountinfo`: this process's, as [`strata_fs::mountinfo::read`] gives it.
    pub fn follow_moves(&mut self, mountinfo: &str) {
        if !self.detached {
            if let Some(now) = strata_fs::mountinfo::mount_point_of_source(mountinfo, &self.fsname(), &self.mountpoint)
            {
                self.mountpoint = now;
            }
        }
    }

    /// Where the mount is, for messages: its mount point, or where it was
    /// until it was detached.
    pub fn place(&self) -> String {
        match self.detached {
            false => format!("mounted at {}", self.mountpoint.display()),
            true => format!("still in use by processes that were in its mount at {}", self.mountpoint.display()),
        }
    }

    /// What lets go of it, for messages.
    pub fn release_hint(&self) -> String {
        match self.detached {
            false => format!("run `strata umount {}`", self.mountpoint.display()),
            true => "wait until those processes leave it".to_string(),
        }
    }

    /// The server is still running (same pid, same start time).
    pub fn live(&self) -> bool {
        self.server.is_some_and(|p| p.alive())
    }
}

/// `ROOT/mounts/ID.json`.
pub fn record_path(layout: &StoreLayout, id: &str) -> PathBuf {
    layout.mounts_dir().join(format!("{id}.json"))
}

/// `ROOT/mounts/ID/`: what a mount owns.
pub fn private_dir(layout: &StoreLayout, id: &str) -> PathBuf {
    layout.mounts_dir().join(id)
}

/// A new random mount id.
pub fn new_id() -> String {
    use rand::Rng;
    let bytes: [u8; 12] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Held while a mount is checked for conflicts and started, so that two
/// `strata mount` runs cannot both take the same mount point or upper
/// directory. (`ROOT/mounts/lock`; a name no record can have.)
pub type MountLock = crate::lockfile::LockGuard;

pub fn lock(layout: &StoreLayout) -> Result<MountLock> {
    crate::lockfile::lock_exclusive(&layout.mounts_dir().join("lock"))
}

/// Writes `rec` atomically.
pub fn save(layout: &StoreLayout, rec: &MountRecord) -> Result<()> {
    write_json(&record_path(layout, &rec.id), rec)
}

/// The record `id` as stored, if it is there and readable.
pub fn read(layout: &StoreLayout, id: &str) -> Option<MountRecord> {
    serde_json::from_slice(&fs::read(record_path(layout, id)).ok()?).ok()
}

/// Every record as stored, live or not. Unreadable records are skipped.
pub fn read_all(layout: &StoreLayout) -> Result<Vec<MountRecord>> {
    let dir = layout.mounts_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    let mountinfo = strata_fs::mountinfo::read();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
        if !is_id(id) {
            continue;
        }
        let Ok(data) = fs::read(entry.path()) else { continue };
        if let Ok(mut rec) = serde_json::from_slice::<MountRecord>(&data) {
            rec.follow_moves(&mountinfo);
            out.push(rec);
        }
    }
    out.sort_by(|a, b| a.created.cmp(&b.created));
    Ok(out)
}

/// The live mounts, oldest first; stale records are cleared on the way.
pub fn list_live(layout: &StoreLayout) -> Result<Vec<MountRecord>> {
    let mut live = Vec::new();
    for rec in read_all(layout)? {
        if rec.live() {
            live.push(rec);
        } else {
            clear(layout, &rec);
        }
    }
    Ok(live)
}

/// Removes what is left of a mount whose server is gone: detaches the mount
/// (a FUSE mount without its server answers ENOTCONN), removes the private
/// directory (throwaway upper included) and the record. Best effort: what
/// cannot be removed now is retried by the next listing.
pub fn clear(layout: &StoreLayout, rec: &MountRecord) {
    // A dead mount that another covers stays recorded, to be detached once
    // it is on top again (until then it harms nothing: it is out of reach).
    if rec.covered_by().is_some() {
        return;
    }
    // Only while its own mount is on top there: a detached one is gone from
    // there, and what is mounted there now (or underneath) is someone else's.
    if !rec.detached && rec.on_top() {
        if let Err(e) = strata_fs::unmount_path(&rec.mountpoint) {
            eprintln!("warning: {e}");
        }
    }
    remove_private(layout, &rec.id);
    let _ = fs::remove_file(record_path(layout, &rec.id));
}

/// Removes `ROOT/mounts/ID/` unless something is still mounted in it.
pub fn remove_private(layout: &StoreLayout, id: &str) {
    let dir = private_dir(layout, id);
    if !dir.exists() || is_mountpoint(&dir.join("merged")) {
        return;
    }
    if let Err(e) = crate::commands::run::remove_tree(&dir) {
        eprintln!("warning: {e:#}");
    }
}

/// The live mount of a container, if it has one: a container must not be
/// started while `strata mount` serves its upper directory (two servers
/// would each keep their own view of it).
pub fn container_mount(layout: &StoreLayout, container_id: &str) -> Option<MountRecord> {
    let recs = read_all(layout).ok()?;
    recs.into_iter().find(|r| r.container_id.as_deref() == Some(container_id) && r.live())
}

/// The live mounts of an image (by `sha256:...` id): its content must stay
/// in the store while they serve it (`rmi` and `image prune` leave it).
pub fn image_mounts(layout: &StoreLayout, image_id: &str) -> Vec<MountRecord> {
    read_all(layout).unwrap_or_default().into_iter().filter(|r| r.image_id == image_id && r.live()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_the_view() {
        let mut r = MountRecord {
            id: new_id(),
            mountpoint: "/m".into(),
            name: "img".into(),
            kind: Kind::Image,
            image_id: String::new(),
            container_id: None,
            layers: vec![],
            view: View::Layer(2),
            upper: None,
            throwaway_upper: false,
            server: None,
            detached: false,
            unmount_error: None,
            unmount_failures: 0,
            created: String::new(),
        };
        assert!(is_id(&r.id));
        assert_eq!(r.mode(), "ro,layer=2");
        r.view = View::Upto(3);
        r.upper = Some("/u".into());
        assert_eq!(r.mode(), "rw,upto=3");
        assert!(!r.live());
        let back: MountRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.view, View::Upto(3));
        assert!(!serde_json::to_string(&r).unwrap().contains("detached"), "written only when set");
        r.detached = true;
        assert_eq!(r.mode(), "rw,upto=3,detached");
        let back: MountRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert!(back.detached);
    }
}
