//! The layers that containers and mounts record, turned into what the union
//! filesystem mounts. A lazily pulled layer (recorded as `lazy:sha256:TOC`,
//! see `strata_layers::chunked`) gets a fetcher that brings a file's content
//! from the registry the first time the filesystem opens it.

use anyhow::{Context as _, Result};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use strata_layers::chunked::{fetch_object, LazyLayer, PartialFile};
use strata_layers::pull::{complete_lazy_layers, NoProgress};
use strata_layers::registry::RegistryClient;
use strata_layers::store::Store;
use strata_layers::{Digest, LayerIndex, StoreLayout};

/// Where the registry configuration and credentials are, for a process
/// that cannot look at the user's environment: a container's supervisor
/// runs with a cut-down one (see `containers::supervisor`), so its
/// launcher writes these paths next to the container
/// (`registry-settings.json`) when the container has lazy layers.
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub struct RegistrySettings {
    pub registries_config: Option<std::path::PathBuf>,
    pub docker_config: Option<std::path::PathBuf>,
    pub timeout: Option<String>,
}

/// The file [`RegistrySettings`] are kept in, in a container's directory.
pub const SETTINGS_FILE: &str = "registry-settings.json";

impl RegistrySettings {
    /// As this process's environment gives them.
    pub fn from_env() -> RegistrySettings {
        let docker_config =
            strata_layers::registry::CredentialStore::from_env().ok().map(|store| store.dir().to_path_buf());
        RegistrySettings {
            registries_config: strata_layers::registry::RegistryConfig::default_path(),
            docker_config,
            timeout: std::env::var("STRATA_REGISTRY_TIMEOUT").ok(),
        }
    }

    /// Writes them for the supervisor of the container in `dir`, when it
    /// has lazy layers (`keys`); removes a stale file otherwise.
    pub fn save_for(dir: &std::path::Path, keys: &[String]) -> Result<()> {
        let path = dir.join(SETTINGS_FILE);
        if !keys.iter().any(|k| k.starts_with(strata_layers::image::LAZY_KEY_PREFIX)) {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        crate::containers::record::write_json(&path, &RegistrySettings::from_env())
    }

    /// A registry client as these settings say.
    fn client(&self) -> Result<RegistryClient> {
        let mut config = match &self.registries_config {
            Some(p) if p.exists() => strata_layers::registry::RegistryConfig::from_file(p)?,
            _ => strata_layers::registry::RegistryConfig::default(),
        };
        if let Some(t) = &self.timeout {
            config.read_timeout = strata_layers::registry::config::parse_seconds(t)
                .ok_or_else(|| anyhow::anyhow!("STRATA_REGISTRY_TIMEOUT={t:?} is not a number of seconds"))?;
        }
        let client = RegistryClient::new(config);
        Ok(match &self.docker_config {
            Some(d) => client.with_credential_store(strata_layers::registry::credentials::CredentialStore::new(d)),
            None => client,
        })
    }
}

/// The lowers for `keys` (bottom first), each index passed through `adjust`.
pub fn lowers_with(
    layout: &StoreLayout,
    keys: &[String],
    settings: Option<RegistrySettings>,
    mut adjust: impl FnMut(LayerIndex) -> LayerIndex,
) -> Result<Vec<strata_fs::Lower>> {
    let settings = settings.map(Arc::new);
    let store = Store::open(layout.clone()).context("opening the store")?;
    let client: Arc<OnceLock<Option<RegistryClient>>> = Arc::new(OnceLock::new());
    keys.iter()
        .map(|key| {
            let opened = store.open_layer(key).with_context(|| format!("reading the index of layer {key}"))?;
            let mut lower = strata_fs::Lower::new(Arc::new(adjust(opened.index)), layout.objects_dir());
            if let Some(layer) = opened.lazy {
                lower.fetch = Some(Arc::new(RegistryFetch(Arc::new(FetchShared {
                    layout: layout.clone(),
                    settings: settings.clone(),
                    client: client.clone(),
                    layer,
                    in_flight: Default::default(),
                    partials: Default::default(),
                }))));
            }
            Ok(lower)
        })
        .collect()
}

/// [`lowers_with`] with the indexes as stored and the registry settings of
/// this process's environment.
pub fn lowers(layout: &StoreLayout, keys: &[String]) -> Result<Vec<strata_fs::Lower>> {
    lowers_with(layout, keys, None, |index| index)
}

/// The lowers of a container for its supervisor: registry settings from
/// the file its launcher wrote ([`RegistrySettings::save_for`]).
pub fn container_lowers(layout: &StoreLayout, dir: &std::path::Path, keys: &[String]) -> Result<Vec<strata_fs::Lower>> {
    let settings =
        std::fs::read(dir.join(SETTINGS_FILE)).ok().and_then(|b| serde_json::from_slice::<RegistrySettings>(&b).ok());
    lowers_with(layout, keys, settings, |index| index)
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

/// Fetches a lazy layer's files from its registry: small ones whole on
/// first open, large chunked ones in parts as they are read
/// (`strata_layers::chunked::PartialFile`). The client is made on first use
/// (it reads the registry configuration and credentials) and shared by the
/// layers of one mount.
struct RegistryFetch(Arc<FetchShared>);

struct FetchShared {
    layout: StoreLayout,
    /// Where the registry settings are when the environment does not say
    /// (a container's supervisor); None: from the environment.
    settings: Option<Arc<RegistrySettings>>,
    client: Arc<OnceLock<Option<RegistryClient>>>,
    layer: LazyLayer,
    /// Contents being fetched now, so that two threads that want one file
    /// (a reader and the background) fetch it once.
    in_flight: (Mutex<HashSet<Digest>>, Condvar),
    /// Files being fetched in parts, shared by their opens in this process
    /// until they are whole.
    partials: Mutex<HashMap<Digest, Arc<PartialFile>>>,
}

impl std::fmt::Debug for RegistryFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryFetch({} from {})", self.0.layer.toc, self.0.layer.repository)
    }
}

impl std::ops::Deref for RegistryFetch {
    type Target = FetchShared;
    fn deref(&self) -> &FetchShared {
        &self.0
    }
}

impl strata_fs::FetchObject for RegistryFetch {
    fn covers(&self, digest: &Digest) -> bool {
        self.layer.covers(digest)
    }

    fn open_partial(&self, digest: &Digest) -> std::io::Result<Option<strata_fs::PartialContent>> {
        let mut partials = self.partials.lock().unwrap_or_else(|e| e.into_inner());
        partials.retain(|_, p| !p.is_complete());
        let partial = match partials.get(digest) {
            Some(p) => p.clone(),
            None => {
                let made =
                    Store::open(self.layout.clone()).and_then(|store| PartialFile::open(&store, &self.layer, digest));
                match made {
                    Ok(Some(p)) => partials.entry(*digest).or_insert(Arc::new(p)).clone(),
                    Ok(None) => return Ok(None),
                    Err(e) => {
                        eprintln!("strata: staging {digest} of a lazily pulled layer: {e}");
                        return Err(std::io::Error::from_raw_os_error(libc::EIO));
                    }
                }
            }
        };
        let file = partial.reader()?;
        Ok(Some(strata_fs::PartialContent { file, fill: Arc::new(PartialFill { shared: self.0.clone(), partial }) }))
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

/// Fills ranges of one file being fetched in parts.
struct PartialFill {
    shared: Arc<FetchShared>,
    partial: Arc<PartialFile>,
}

impl strata_fs::FillRange for PartialFill {
    fn fill(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if self.partial.has(offset, len) {
            return Ok(());
        }
        let shared = &self.shared;
        let eio = || std::io::Error::from_raw_os_error(libc::EIO);
        let client = shared.client().ok_or_else(eio)?;
        let result = Store::open(shared.layout.clone()).and_then(|store| {
            // Shared with pulls: a gc waits for the fetch.
            let _lock = store.lock_shared()?;
            self.partial.fill(&store, client, &shared.layer, offset, len)
        });
        result.map_err(|e| {
            eprintln!(
                "strata: fetching part of {:?} of a lazily pulled layer from {}: {e}",
                self.partial, shared.layer.repository
            );
            eio()
        })
    }
}

impl FetchShared {
    fn client(&self) -> Option<&RegistryClient> {
        self.client
            .get_or_init(|| {
                match self.settings.as_ref().map_or_else(|| Ok(RegistryClient::from_env()?), |s| s.client()) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        eprintln!("strata: lazily pulled files cannot be fetched: {e}");
                        None
                    }
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
