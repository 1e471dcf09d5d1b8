//! The layers that containers and mounts record, turned into what the union
//! filesystem mounts. A lazily pulled layer (recorded as `lazy:sha256:TOC`,
//! see `strata_layers::chunked`) gets a fetcher that brings a file's content
//! from the registry the first time the filesystem opens it.

use anyhow::{Context as _, Result};
use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use strata_layers::chunked::{fetch_object, fetch_order, LazyLayer};
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
                let order = fetch_order(&lower.index, &layer);
                lower.fetch = Some(Arc::new(RegistryFetch {
                    layout: layout.clone(),
                    client: client.clone(),
                    layer,
                    order,
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

/// Threads that fetch a container's lazy layers in the background, so that
/// it stops depending on the registry soon after it starts. Files a
/// program opens are still fetched at once, by the thread serving the
/// open; these only fill in the rest (containerd's stargz snapshotter does
/// the same).
const BACKGROUND_FETCHERS: usize = 2;

/// Starts fetching, in the background, whatever the lazy layers among
/// `lowers` do not have yet. The threads end when everything is stored or
/// with the process (a container's supervisor lives as long as it).
pub fn fill_in_background(lowers: &[strata_fs::Lower]) {
    let queue: Vec<(Arc<dyn strata_fs::FetchObject>, strata_layers::Digest)> = lowers
        .iter()
        .filter_map(|l| l.fetch.clone())
        .flat_map(|f| f.pending().into_iter().map(move |d| (f.clone(), d)))
        .collect();
    if queue.is_empty() {
        return;
    }
    let queue = Arc::new(Mutex::new(queue.into_iter()));
    for _ in 0..BACKGROUND_FETCHERS {
        let queue = queue.clone();
        let _ = std::thread::Builder::new().name("lazy-fill".into()).spawn(move || loop {
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some((fetch, digest)) = next else { break };
            // A failure was reported by fetch; the file is fetched again when opened.
            let _ = fetch.fetch(&digest);
        });
    }
}

/// Fetches a lazy layer's files from its registry. The client is made on
/// first use (it reads the registry configuration and credentials) and
/// shared by the layers of one mount.
struct RegistryFetch {
    layout: StoreLayout,
    client: Arc<OnceLock<Option<RegistryClient>>>,
    layer: LazyLayer,
    /// Every content of the layer, in background order.
    order: Vec<Digest>,
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

    fn pending(&self) -> Vec<Digest> {
        let objects = self.layout.objects_dir();
        let present = |d: &Digest| strata_layers::layout::object_path_in(&objects, d).exists();
        self.order.iter().filter(|d| !present(d)).copied().collect()
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
    fn fetch_now(&self, digest: &Digest) -> std::io::Result<()> {
        let eio = || std::io::Error::from_raw_os_error(libc::EIO);
        let client = self.client.get_or_init(|| match RegistryClient::from_env() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("strata: lazily pulled files cannot be fetched: {e}");
                None
            }
        });
        let client = client.as_ref().ok_or_else(eio)?;
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
