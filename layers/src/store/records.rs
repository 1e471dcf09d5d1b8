//! Image records (`images/HEX.json`) and names (`tags.json`), and the
//! operations on them that users see: `images`, `tag`, `rmi`, and resolving
//! whatever a user typed to one image.
//!
//! `tags.json` maps canonical references to image IDs: tags as
//! `docker.io/library/busybox:latest` and repo digests as
//! `docker.io/library/busybox@sha256:...` (Docker's repositories.json holds
//! the same two kinds). Reads need no lock (files are replaced atomically);
//! changes go through [`Store::update_records`], which holds the records lock
//! for the read-modify-write.

use super::{read_optional, ExclusiveLock, Store};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{chain_ids, ImageRecord};
use crate::reference::Reference;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;

/// Shortest ID prefix accepted for an image (Docker accepts shorter ones,
/// but 1-3 hex digits are too easily a typo).
const MIN_ID_PREFIX: usize = 4;

#[derive(Debug, Default, Serialize, Deserialize)]
struct TagsFile {
    /// Canonical reference -> image ID.
    #[serde(default)]
    references: BTreeMap<String, Digest>,
}

/// The records, loaded under the records lock (see [`Store::update_records`]).
pub struct Records<'s> {
    store: &'s Store,
    tags: TagsFile,
    dirty: bool,
}

/// One line of `rmi` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// A reference removed, in familiar form (`busybox:latest`).
    Untagged(String),
    /// An image ID or a layer chain ID whose content is no longer referenced.
    Deleted(Digest),
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Removed::Untagged(r) => write!(f, "Untagged: {r}"),
            Removed::Deleted(d) => write!(f, "Deleted: {d}"),
        }
    }
}

/// The key a reference is stored under: `name@digest` when it has a digest,
/// else `name:tag`.
fn reference_key(r: &Reference) -> String {
    match (&r.digest, &r.tag) {
        (Some(d), _) => format!("{}@{d}", r.full_name()),
        (None, t) => format!("{}:{}", r.full_name(), t.as_deref().unwrap_or(crate::reference::DEFAULT_TAG)),
    }
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A container that uses an image, as `rmi` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUse {
    /// The container's ID, short (12 hex digits) as Docker prints it.
    pub short_id: String,
    /// Whether its state says it runs (or is paused or restarting).
    pub running: bool,
}

/// A container using image `id`, if any (a running one first): images in use
/// by a container, running or not, are not deleted (Docker's rule; a
/// container's filesystem is built from its image's layers). Containers are
/// records of the CLI (`containers/ID/config.json` and `state.json`); this
/// reads only the fields it needs, so the layers crate does not depend on
/// the container code.
pub fn is_image_in_use(store: &Store, id: &Digest) -> Option<ContainerUse> {
    #[derive(serde::Deserialize)]
    struct ContainerRef {
        id: String,
        image_id: String,
    }
    #[derive(serde::Deserialize)]
    struct StateRef {
        status: String,
    }
    let wanted = id.to_string();
    let dir = std::fs::read_dir(store.layout().containers_dir()).ok()?;
    let users = dir.flatten().filter_map(|ent| {
        let data = std::fs::read(ent.path().join("config.json")).ok()?;
        let c: ContainerRef = serde_json::from_slice(&data).ok()?;
        if c.image_id != wanted {
            return None;
        }
        let state = std::fs::read(ent.path().join("state.json")).ok();
        let status = state.and_then(|d| serde_json::from_slice::<StateRef>(&d).ok()).map(|s| s.status);
        let running = matches!(status.as_deref(), Some("running" | "paused" | "restarting"));
        Some(ContainerUse { short_id: c.id.chars().take(12).collect(), running })
    });
    users.max_by_key(|u| u.running)
}

impl<'s> Records<'s> {
    pub(super) fn load(store: &'s Store) -> Result<Self> {
        Ok(Records { store, tags: store.load_tags()?, dirty: false })
    }

    pub(super) fn save(&mut self) -> Result<()> {
        if self.dirty {
            let data = serde_json::to_vec_pretty(&self.tags)
                .map_err(|e| Error::InvalidImage(format!("serialising tags: {e}")))?;
            self.store.write_atomic(&self.store.layout.tags_path(), &data, 0o600)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Writes an image record (replacing one with the same ID).
    pub fn put_image(&mut self, record: &ImageRecord) -> Result<()> {
        let data = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::InvalidImage(format!("serialising image record: {e}")))?;
        self.store.write_atomic(&self.store.layout.image_record_path(&record.id), &data, 0o600)
    }

    pub fn image(&self, id: &Digest) -> Result<Option<ImageRecord>> {
        self.store.image(id)
    }

    /// Points `reference` (`name:tag` or `name@digest`) at image `id`;
    /// returns the image it pointed at before, if another one.
    pub fn set_reference(&mut self, reference: &Reference, id: &Digest) -> Result<Option<Digest>> {
        if self.store.image(id)?.is_none() {
            return Err(Error::NoSuchImage(id.to_string()));
        }
        let previous = self.tags.references.insert(reference_key(reference), *id);
        if previous != Some(*id) {
            self.dirty = true;
        }
        Ok(previous.filter(|p| p != id))
    }

    /// Docker's `tag`: points `name:tag` at image `id`.
    pub fn tag(&mut self, id: &Digest, reference: &Reference) -> Result<Option<Digest>> {
        if reference.digest.is_some() {
            return Err(Error::InvalidImage("refusing to create a tag with a digest reference".to_string()));
        }
        self.set_reference(reference, id)
    }

    /// Removes a reference; returns the image it pointed at.
    pub fn untag(&mut self, reference: &Reference) -> Option<Digest> {
        let old = self.tags.references.remove(&reference_key(reference));
        if old.is_some() {
            self.dirty = true;
        }
        old
    }

    /// The references pointing at `id`, tags and repo digests, sorted.
    pub fn references_of(&self, id: &Digest) -> Vec<Reference> {
        references_of(&self.tags, id)
    }

    /// Deletes an image record and every reference to it.
    pub fn delete_image(&mut self, id: &Digest) -> Result<()> {
        let before = self.tags.references.len();
        self.tags.references.retain(|_, v| v != id);
        if self.tags.references.len() != before {
            self.dirty = true;
        }
        let path = self.store.layout.image_record_path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path.display().to_string(), e)),
            _ => super::sync_parent(&path),
        }
    }
}

fn references_of(tags: &TagsFile, id: &Digest) -> Vec<Reference> {
    tags.references.iter().filter(|(_, v)| *v == id).filter_map(|(k, _)| k.parse().ok()).collect()
}

/// Docker's isSingleReference: at most one tag, all in one repository.
fn is_single_reference(refs: &[Reference]) -> bool {
    let tags = refs.iter().filter(|r| r.digest.is_none()).count();
    let names: HashSet<String> = refs.iter().map(|r| r.full_name()).collect();
    tags <= 1 && names.len() <= 1
}

/// How a user named an image.
enum Named {
    /// By a reference present in tags.json (its key).
    Reference(Reference, Digest),
    /// By ID or ID prefix.
    Id(Digest),
}

impl Store {
    fn load_tags(&self) -> Result<TagsFile> {
        let path = self.layout.tags_path();
        match read_optional(&path)? {
            None => Ok(TagsFile::default()),
            Some(data) => serde_json::from_slice(&data)
                .map_err(|e| Error::CorruptRecord { path: path.display().to_string(), message: e.to_string() }),
        }
    }

    /// The record of image `id`, `None` when there is none.
    pub fn image(&self, id: &Digest) -> Result<Option<ImageRecord>> {
        let path = self.layout.image_record_path(id);
        match read_optional(&path)? {
            None => Ok(None),
            Some(data) => {
                let rec: ImageRecord = serde_json::from_slice(&data)
                    .map_err(|e| Error::CorruptRecord { path: path.display().to_string(), message: e.to_string() })?;
                Ok(Some(rec))
            }
        }
    }

    /// IDs of every stored image, sorted.
    pub fn image_ids(&self) -> Result<Vec<Digest>> {
        let dir = self.layout.images_dir();
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            if let Ok(id) = Digest::from_hex(hex) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every stored image's record, sorted by ID.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for id in self.image_ids()? {
            // A record deleted between listing and reading is simply gone.
            if let Some(rec) = self.image(&id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Writes an image record under the records lock.
    pub fn put_image(&self, record: &ImageRecord) -> Result<()> {
        self.update_records(|r| r.put_image(record))
    }

    /// Docker's `tag`: points `name:tag` at image `id`.
    pub fn tag(&self, id: &Digest, reference: &Reference) -> Result<()> {
        self.update_records(|r| r.tag(id, reference).map(|_| ()))
    }

    /// Removes a reference (no image is deleted); returns the image it named.
    pub fn untag(&self, reference: &Reference) -> Result<Option<Digest>> {
        self.update_records(|r| Ok(r.untag(reference)))
    }

    /// References (tags and repo digests) pointing at image `id`, sorted.
    pub fn tags_of(&self, id: &Digest) -> Result<Vec<Reference>> {
        Ok(references_of(&self.load_tags()?, id))
    }

    /// Every reference in the store with the image it names.
    pub fn references(&self) -> Result<Vec<(Reference, Digest)>> {
        Ok(self.load_tags()?.references.into_iter().filter_map(|(k, v)| Some((k.parse().ok()?, v))).collect())
    }

    /// The image a user means by `input`: a full or familiar `name[:tag]`
    /// (default `:latest`), `name@digest`, a full ID (`sha256:HEX` or `HEX`),
    /// or a unique ID prefix of at least 4 hex digits.
    pub fn resolve_image(&self, input: &str) -> Result<ImageRecord> {
        let tags = self.load_tags()?;
        let id = match self.name_image(&tags, input)? {
            Named::Reference(_, id) | Named::Id(id) => id,
        };
        self.image(&id)?.ok_or_else(|| Error::NoSuchImage(input.to_string()))
    }

    /// Resolution order as in Docker: a full ID, then a reference in the
    /// tags, then an ID prefix.
    fn name_image(&self, tags: &TagsFile, input: &str) -> Result<Named> {
        let missing = || Error::NoSuchImage(input.to_string());
        let hex = input.strip_prefix("sha256:").unwrap_or(input);
        if hex.len() == 64 {
            if let Ok(id) = Digest::from_hex(hex) {
                return match self.layout.image_record_path(&id).is_file() {
                    true => Ok(Named::Id(id)),
                    false => Err(missing()),
                };
            }
        }
        if !input.starts_with("sha256:") {
            if let Ok(r) = input.parse::<Reference>() {
                if let Some(id) = tags.references.get(&reference_key(&r)) {
                    return Ok(Named::Reference(r, *id));
                }
            }
        }
        if hex.len() >= MIN_ID_PREFIX && is_lower_hex(hex) {
            let matches: Vec<Digest> = self.image_ids()?.into_iter().filter(|id| id.hex().starts_with(hex)).collect();
            return match matches.as_slice() {
                [] => Err(missing()),
                [one] => Ok(Named::Id(*one)),
                _ => Err(Error::AmbiguousId(hex.to_string())),
            };
        }
        Err(missing())
    }

    /// Docker's `rmi` for one argument. Given a reference, untags it and
    /// deletes the image when no reference to it remains (digest references
    /// of the same repository go with its last tag). Given an ID, untags
    /// everything and deletes the image, refusing an image referenced from
    /// several repositories unless `force`. An image a container uses is
    /// never deleted ([`is_image_in_use`]).
    ///
    /// Only records change here; the content (blobs, layers, objects) the
    /// deleted images held is freed by [`Store::gc`], which callers run once
    /// after all removals. `Deleted:` lines name the image and the layer
    /// chain IDs no remaining image shares, as `docker rmi` prints them.
    pub fn remove_image(&self, lock: &ExclusiveLock, input: &str, force: bool) -> Result<Vec<Removed>> {
        self.remove_image_unless_held(lock, input, force, &|_| None)
    }

    /// [`Store::remove_image`], refusing to delete an image that `held`
    /// says something outside the store's records still serves (it returns
    /// where and what frees it, e.g. "mounted at DIR; run `strata umount
    /// DIR` first"):
    /// deleting it would pull its content from under that user. Untagging
    /// one of several references still works.
    pub fn remove_image_unless_held(
        &self,
        _lock: &ExclusiveLock,
        input: &str,
        force: bool,
        held: &dyn Fn(&Digest) -> Option<String>,
    ) -> Result<Vec<Removed>> {
        self.update_records(|recs| {
            let mut out = Vec::new();
            let id = match self.name_image(&recs.tags, input)? {
                Named::Reference(r, id) => {
                    if let Some(user) = is_image_in_use(self, &id).filter(|_| !force) {
                        // Its last tag (digest references of the same
                        // repository do not count): the image would dangle.
                        if is_single_reference(&recs.references_of(&id)) {
                            return Err(Error::Conflict(format!(
                                "conflict: unable to remove repository reference \"{input}\" (must force) - \
                                 container {} is using its referenced image {}",
                                user.short_id,
                                id.short()
                            )));
                        }
                    }
                    recs.untag(&r);
                    out.push(Removed::Untagged(r.familiar_string()));
                    let mut remaining = recs.references_of(&id);
                    if r.digest.is_none() {
                        let same_repo_tag = remaining.iter().any(|o| o.digest.is_none() && o.full_name() == r.full_name());
                        if !same_repo_tag {
                            for o in remaining.iter().filter(|o| o.digest.is_some() && o.full_name() == r.full_name()) {
                                recs.untag(o);
                                out.push(Removed::Untagged(o.familiar_string()));
                            }
                            remaining = recs.references_of(&id);
                        }
                    }
                    if !remaining.is_empty() {
                        return Ok(out);
                    }
                    id
                }
                Named::Id(id) => {
                    let refs = recs.references_of(&id);
                    if !is_single_reference(&refs) && !force {
                        return Err(Error::Conflict(format!(
                            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                            id.short()
                        )));
                    }
                    match is_image_in_use(self, &id) {
                        Some(user) if user.running => {
                            return Err(Error::Conflict(format!(
                                "conflict: unable to delete {} (cannot be forced) - image is being used by running \
                                 container {}",
                                id.short(),
                                user.short_id
                            )))
                        }
                        Some(user) if !force => {
                            return Err(Error::Conflict(format!(
                                "conflict: unable to delete {} (must be forced) - image is being used by stopped \
                                 container {}",
                                id.short(),
                                user.short_id
                            )))
                        }
                        // Forced, beside a stopped container: untagged below
                        // and kept, dangling, for the container.
                        _ => {}
                    }
                    for r in refs {
                        recs.untag(&r);
                        out.push(Removed::Untagged(r.familiar_string()));
                    }
                    id
                }
            };
            if is_image_in_use(self, &id).is_some() {
                // Forced untag of an image a container still uses: the image stays, dangling.
                return Ok(out);
            }
            if let Some(why) = held(&id) {
                return Err(Error::Conflict(format!(
                    "conflict: unable to delete {} (cannot be forced) - image is {why}",
                    id.short()
                )));
            }
            let Some(record) = recs.image(&id)? else {
                // A tag left pointing at a record that is gone (an earlier
                // removal that failed half way): untagging was all there was to do.
                return Ok(out);
            };
            // What other images share, read before anything is deleted.
            let mut shared = HashSet::new();
            for other in self.image_ids()?.into_iter().filter(|o| *o != id) {
                // An unreadable record only costs its lines in the output.
                if let Ok(Some(other)) = self.image(&other) {
                    shared.extend(chain_ids(&other.diff_ids()));
                }
            }
            recs.delete_image(&id)?;
            out.push(Removed::Deleted(id));
            for chain in chain_ids(&record.diff_ids()).into_iter().rev() {
                if !shared.contains(&chain) {
                    out.push(Removed::Deleted(chain));
                }
            }
            Ok(out)
        })
    }
}
