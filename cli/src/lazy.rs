//! The layers that containers and mounts record, turned into what the union
//! filesystem mounts. A lazily pulled layer (recorded as `lazy:sha256:TOC`,
//! see `strata_layers::chunked`) gets a fetcher that brings a file's content
//! from the registry the first time the filesystem opens it.

use anyhow::{Context as _, Result};
use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use strata_layers::chunked::{fetch_object, LazyLayer};
use strata_layers::pull::{complete_lazy_layers, NoProgress};
use strata_layers::registry::RegistryClient;
use strata_layers::store::Store;
use strata_layers::{Digest, LayerIndex, StoreLayout};

/// The lowers for `keys` (bottom first), each index passed through `adjust`.
pub fn lowers_with(
    layout: &StoreLayout,
    keys: &[String],
    mut adjust: impl FnMut(LayerIndex) -> LayerIndex,
) -> Result<Vec<strata_fs::Lower>> {
    let store = Store::open(layout.clone()).context("opening the store")?;
    let client: Arc<OnceLock<Option<RegistryClient>>> = Arc::new(OnceLock::new());
    keys.iter()
        .map(|key| {
            let opened = store.open_layer(key).with_context(|| format!("reading the index of layer {key}"))?;
            let mut lower = strata_fs::Lower::new(Arc::new(adjust(opened.index)), layout.objects_dir());
            if let Some(layer) = opened.lazy {
                lower.fetch = Some(Arc::new(RegistryFetch {
                    layout: layout.clone(),
                    client: client.clone(),
                    layer,
                    in_flight: Default::default(),
                }));
            }
            Ok(lower)
        })
        .collect()
}

/// [`lowers_with`] with the indexes as stored.
pub fn lowers(layout: &StoreLayout, keys: &[String]) -> Result<Vec<strata_fs::Lower>> {
    lowers_with(layout, keys, |index| index)
}

/// Completes a container's lazy layers in the background (whole blobs,
/// verified like a pull: `strata_layers::pull::complete_lazy_layers`), so
/// that it stops depending on the registry soon after it starts. Files a
/// program opens meanwhile are still fetched at once, by the thread serving
/// the open. The threads end when done or with the process (a container's
/// supervisor lives as long as it); a failure is reported on stderr and
/// leaves the layer lazy. They start after [`COMPLETION_DELAY`]: a
/// container that is done by then (`run --rm IMAGE CMD`) has needed only
/// the files it read, and would leave a half-fetched blob behind.
pub fn complete_in_background(lowers: &[strata_fs::Lower]) {
    for fetch in lowers.iter().filter_map(|l| l.fetch.clone()) {
        let _ = std::thread::Builder::new().name("lazy-complete".into()).spawn(move || {
            std::thread::sleep(COMPLETION_DELAY);
            fetch.complete()
        });
    }
}

/// How long a container runs before its lazy layers are completed.
pub const COMPLETION_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// Fetches a lazy layer's files from its registry. The client is made on
/// first use (it reads the registry configuration and credentials) and
/// shared by the layers of one mount.
struct RegistryFetch {
    layout: StoreLayout,
    client: Arc<OnceLock<Option<RegistryClient>>>,
    layer: LazyLayer,
    /// Contents being fetched now, so that two threads that want one file
    /// (a reader and the background) fetch it once.
    in_flight: (Mutex<HashSet<Digest>>, Condvar),
}

impl std::fmt::Debug for RegistryFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryFetch({} from {})", self.layer.toc, self.layer.repository)
    }
}

impl strata_fs::FetchObject for RegistryFetch {
    fn covers(&self, digest: &Digest) -> bool {
        self.layer.covers(digest)
    }

    fn complete(&self) -> std::io::Result<()> {
        let client = self.client().ok_or_else(|| std::io::Error::from_raw_os_error(libc::EIO))?;
        let result = Store::open(self.layout.clone())
            .and_then(|store| complete_lazy_layers(&store, client, std::slice::from_ref(&self.layer), &NoProgress));
        result.map_err(|e| {
            eprintln!("strata: completing lazily pulled layer {} from {}: {e}", self.layer.toc, self.layer.repository);
            std::io::Error::from_raw_os_error(libc::EIO)
        })
    }

    /// The filesystem can only answer EIO; what went wrong goes to stderr
    /// (the container's supervisor log, or the mount's).
    fn fetch(&self, digest: &Digest) -> std::io::Result<()> {
        let (set, done) = &self.in_flight;
        let mut fetching = set.lock().unwrap_or_else(|e| e.into_inner());
        while fetching.contains(digest) {
            fetching = done.wait(fetching).unwrap_or_else(|e| e.into_inner());
        }
        if strata_layers::layout::object_path_in(&self.layout.objects_dir(), digest).exists() {
            return Ok(());
        }
        fetching.insert(*digest);
        drop(fetching);
        let result = self.fetch_now(digest);
        set.lock().unwrap_or_else(|e| e.into_inner()).remove(digest);
        done.notify_all();
        result
    }
}

impl RegistryFetch {
    fn client(&self) -> Option<&RegistryClient> {
        self.client
            .get_or_init(|| match RegistryClient::from_env() {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("strata: lazily pulled files cannot be fetched: {e}");
                    None
                }
            })
            .as_ref()
    }

    fn fetch_now(&self, digest: &Digest) -> std::io::Result<()> {
        let eio = || std::io::Error::from_raw_os_error(libc::EIO);
        let client = self.client().ok_or_else(eio)?;
        let result = Store::open(self.layout.clone()).and_then(|store| {
            // Shared with pulls: a gc never empties the staging area under a fetch.
            let _lock = store.lock_shared()?;
            fetch_object(&store, client, &self.layer, digest)
        });
        result.map_err(|e| {
            eprintln!("strata: fetching {digest} of a lazily pulled layer from {}: {e}", self.layer.repository);
            eio()
        })
    }
}
