//! A synchronous OCI distribution client: manifests, blobs (streamed, ranged),
//! uploads, login checks, with bearer/basic auth and pull-through mirrors.
//!
//! Built on `ureq` 3 rather than an async client: pulls stream each layer on
//! its own thread straight into the store, and the lazy-pull filesystem needs
//! blocking Range reads from FUSE handler threads. `oci-client` is async-only
//! and buffers whole layers.
//!
//! Behaviour worth knowing:
//! - plain HTTP for loopback registries and those configured insecure, HTTPS
//!   otherwise ([`RegistryConfig`]); `HTTP(S)_PROXY`/`NO_PROXY` apply, except
//!   that loopback registries are always reached directly;
//! - pulls (manifests, blobs, ranges) try the registry's mirrors first, in
//!   order, and fall back to the next mirror and finally the registry itself on
//!   any mirror error; pushes, existence checks and logins never use mirrors;
//! - every manifest's digest is computed, and checked against the reference's
//!   digest and the `Docker-Content-Digest` header; blobs are streamed as
//!   served and the caller verifies them while consuming (see `ingest`);
//! - connecting is bounded by the connect timeout and every read (headers and
//!   body) by the idle read timeout, so a registry that stops answering fails
//!   with [`RegistryError::Timeout`] (or an `io::ErrorKind::TimedOut` from a
//!   blob reader) instead of hanging;
//! - redirects are followed (registries send blobs from object storage) and the
//!   `Authorization` header is not forwarded to the redirect target.

pub mod auth;
pub mod config;
pub mod credentials;
#[cfg(test)]
mod tests;

pub use config::RegistryConfig;
pub use credentials::{remove_credentials, store_credentials, Credential, CredentialError, CredentialStore};

use crate::digest::Digest;
use crate::manifest::ACCEPTED_MANIFEST_TYPES;
use crate::reference::{api_host, normalize_registry, Reference};
use auth::{AuthCache, Challenge, TokenReply, TokenRequest};
use config::ConfigError;
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Mutex;
use std::time::Duration;
use ureq::http::{self, Method, Response};
use ureq::Body;

/// Largest manifest or index accepted (the same limit as containerd's).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Pages of a tag list or catalog followed at most (a registry pages by 100 or more).
const MAX_PAGES: usize = 10_000;
/// Where Docker Hub answers searches (its v1 index).
const DOCKER_HUB_SEARCH_HOST: &str = "index.docker.io";
/// Largest error or token response read.
const MAX_SMALL_BODY: u64 = 1 << 20;

/// A manifest as the registry served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    /// The document's `mediaType`, else the response's Content-Type (without parameters).
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `code` is "manifest unknown" or "blob unknown".
    #[error("{code}: {subject} not found in {registry}")]
    NotFound { code: &'static str, subject: String, registry: String },
    #[error(
        "{action} access denied for {repository}, repository does not exist or may require authorization: \
         requested access to the resource is denied{}; run `strata login {registry}` if it needs credentials",
        detail_suffix(detail)
    )]
    Unauthorized { action: &'static str, repository: String, registry: String, detail: String },
    #[error("unauthorized: incorrect username or password for {registry}")]
    BadCredentials { registry: String },
    #[error("{method} {url}: registry returned HTTP {status}{}", detail_suffix(&http_detail(code, message)))]
    Http { method: String, url: String, status: u16, code: String, message: String },
    #[error("timed out after {after:?} waiting for {url}; the registry is not answering (set STRATA_REGISTRY_TIMEOUT to a number of seconds to wait longer)")]
    Timeout { url: String, after: Duration },
    #[error("cannot connect to {url}: {reason}")]
    Connection { url: String, reason: String },
    #[error("{what} from {url} is larger than the {limit}-byte limit")]
    TooLarge { what: &'static str, url: String, limit: u64 },
    #[error("digest mismatch for {what}: expected {expected}, the registry served {actual}")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("invalid response from {url}: {message}")]
    Protocol { url: String, message: String },
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl RegistryError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

fn http_detail(code: &str, message: &str) -> String {
    match (code.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => code.to_string(),
        (true, false) => message.to_string(),
        (false, false) => format!("{}: {message}", code.to_ascii_lowercase().replace('_', " ")),
    }
}

/// Where requests go: a registry's API host or one of its mirrors.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `scheme://host[:port][/path]`, no trailing slash.
    base: String,
    /// Name credentials are looked up under (`docker.io`, `mirror.lan:5000`).
    cred_name: String,
}

/// Body of one request; a stream can be sent once only.
enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
    Stream(Option<&'a mut dyn Read>, u64),
}

/// What a request is authorised for (a token scope of the distribution
/// spec: `repository:NAME:pull,push`, `registry:catalog:*`).
struct Scope<'a> {
    /// `repository` or `registry`.
    kind: &'static str,
    /// The repository, or `catalog`.
    name: &'a str,
    /// `pull`, `pull,push` or `*`.
    actions: &'static str,
    /// Familiar repository name and registry, for error messages.
    display: String,
    registry: &'a str,
}

impl Scope<'_> {
    fn value(&self) -> String {
        format!("{}:{}:{}", self.kind, self.name, self.actions)
    }
    fn action(&self) -> &'static str {
        match self.actions {
            "*" => "search",
            a if a.contains("push") => "push",
            _ => "pull",
        }
    }
}

/// One hit of [`RegistryClient::search`]. A registry's catalog gives names
/// only; Docker Hub's search adds the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct SearchResult {
    /// As the registry names it (`busybox`, `edge/busybox`), without the registry.
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub star_count: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_official: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_automated: bool,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// The registry client. Cheap to share between threads (`&self` everywhere).
pub struct RegistryClient {
    /// Uses HTTP(S)_PROXY / NO_PROXY from the environment.
    agent: ureq::Agent,
    /// No proxy: for loopback registries, which a proxy cannot reach.
    direct: ureq::Agent,
    config: RegistryConfig,
    store: Option<CredentialStore>,
    /// Credentials given explicitly or already looked up, per credential name.
    credentials: Mutex<HashMap<String, Option<Credential>>>,
    auth: AuthCache,
}

impl RegistryClient {
    /// A client that uses no stored credentials (anonymous unless
    /// [`Self::set_credentials`] is called).
    pub fn new(config: RegistryConfig) -> Self {
        let builder = || {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_resolve(Some(config.connect_timeout))
                .timeout_connect(Some(config.connect_timeout))
                .timeout_per_read(Some(config.read_timeout))
                .timeout_per_write(Some(config.read_timeout))
                .user_agent(format!("strata/{}", env!("CARGO_PKG_VERSION")))
                // Blobs must arrive byte-exact for their digests: ask for no transfer encoding.
                .accept_encoding("")
                .max_redirects(10)
        };
        RegistryClient {
            agent: ureq::Agent::new_with_config(builder().build()),
            direct: ureq::Agent::new_with_config(builder().proxy(None).build()),
            config,
            store: None,
            credentials: Mutex::new(HashMap::new()),
            auth: AuthCache::default(),
        }
    }

    /// Looks credentials up in Docker's config (`$DOCKER_CONFIG` or
    /// `~/.docker`) when a registry asks for them.
    pub fn with_docker_credentials(mut self) -> Self {
        self.store = CredentialStore::from_env().ok();
        self
    }

    /// Looks credentials up in `store` when a registry asks for them.
    pub fn with_credential_store(mut self, store: CredentialStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The configuration from [`RegistryConfig::load`] plus Docker's credentials.
    pub fn from_env() -> Result<Self, RegistryError> {
        Ok(Self::new(RegistryConfig::load()?).with_docker_credentials())
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Uses `credential` for `registry` (overrides stored ones).
    pub fn set_credentials(&self, registry: &str, credential: Credential) {
        let mut creds = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        creds.insert(normalize_registry(registry), Some(credential));
    }

    // ----- pulls -------------------------------------------------------------------------------

    /// Fetches the manifest (or index) `r` names, by digest when it has one.
    pub fn get_manifest(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        self.with_pull_endpoints(r, |ep| self.get_manifest_from(ep, r))
    }

    /// The tags of `r`'s repository (`GET /v2/NAME/tags/list`), following
    /// the registry's `Link: <...>; rel="next"` pages; in the registry's order.
    pub fn list_tags(&self, r: &Reference) -> Result<Vec<String>, RegistryError> {
        self.with_pull_endpoints(r, |ep| self.list_tags_from(ep, r))
    }

    fn list_tags_from(&self, ep: &Endpoint, r: &Reference) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let not_found = || RegistryError::NotFound {
            code: "repository unknown",
            subject: r.familiar_name(),
            registry: r.registry.clone(),
        };
        let url = format!("{}/v2/{}/tags/list", ep.base, r.repository);
        let mut tags = Vec::new();
        self.walk_pages(ep, &pull_scope(r), url, "tag list", not_found, |page: Page| {
            tags.extend(page.tags.unwrap_or_default());
            true
        })?;
        Ok(tags)
    }

    /// GETs `url`, then each page its `Link: <...>; rel="next"` header
    /// names, handing every page's JSON to `take` until it returns false or
    /// no page follows. A 404 is `not_found()`.
    fn walk_pages<P: serde::de::DeserializeOwned>(
        &self,
        ep: &Endpoint,
        scope: &Scope,
        mut url: String,
        what: &'static str,
        not_found: impl Fn() -> RegistryError,
        mut take: impl FnMut(P) -> bool,
    ) -> Result<(), RegistryError> {
        // A registry that links a page to itself must not loop forever.
        for _ in 0..MAX_PAGES {
            let resp = self.execute(ep, Some(scope), Method::GET, &url, &[], Payload::Empty)?;
            match resp.status().as_u16() {
                200 => {}
                404 => return Err(not_found()),
                _ => return Err(self.http_error("GET", &url, resp)),
            }
            let next = header(&resp, "link").and_then(|l| next_page(&l)).map(|next| resolve_location(&ep.base, &next));
            let page: P = self.json_body(resp, &url, what)?;
            let more = take(page);
            match next {
                Some(n) if more => url = n,
                _ => return Ok(()),
            }
        }
        Err(RegistryError::Protocol { url, message: format!("the {what} has over {MAX_PAGES} pages") })
    }

    // ----- search ------------------------------------------------------------------------------

    /// Up to `limit` repositories of `registry` whose names contain `term`,
    /// an exact match first. Docker Hub has no catalog: it is asked through
    /// its search API (`GET /v1/search`, what `docker search` uses). Other
    /// registries are asked for their catalog (`GET /v2/_catalog`, in the
    /// registry's pages, scope `registry:catalog:*`), filtered here, as Podman does; a
    /// registry that keeps its catalog closed answers 401, 403 or 404.
    /// Mirrors are not asked: they mirror content, not listings.
    pub fn search(&self, registry: &str, term: &str, limit: usize) -> Result<Vec<SearchResult>, RegistryError> {
        let registry = normalize_registry(registry);
        if registry == crate::reference::DOCKER_HUB {
            return self.search_docker_hub(term, limit);
        }
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let ep = self.registry_endpoint(&registry);
        let scope = Scope {
            kind: "registry",
            name: "catalog",
            actions: "*",
            display: format!("the catalog of {registry}"),
            registry: &registry,
        };
        let not_found = || RegistryError::NotFound {
            code: "catalog unknown",
            subject: "a catalog".to_string(),
            registry: registry.clone(),
        };
        let mut hits = Vec::new();
        // No `n`: distribution refuses one over its configured page size,
        // and without one it pages at that size.
        let url = format!("{}/v2/_catalog", ep.base);
        self.walk_pages(&ep, &scope, url, "catalog", not_found, |page: Page| {
            for name in page.repositories.unwrap_or_default() {
                if hits.len() < limit && name.contains(term) {
                    hits.push(SearchResult { name, ..SearchResult::default() });
                }
            }
            hits.len() < limit
        })?;
        if let Some(i) = hits.iter().position(|h| h.name == term) {
            let exact = hits.remove(i);
            hits.insert(0, exact);
        }
        Ok(hits)
    }

    fn search_docker_hub(&self, term: &str, limit: usize) -> Result<Vec<SearchResult>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Reply {
            #[serde(default)]
            results: Option<Vec<SearchResult>>,
        }
        let base = self.config.base_url(DOCKER_HUB_SEARCH_HOST);
        let url = format!("{base}/v1/search?q={}&n={limit}", encode_query(term));
        let resp = self.send(Method::GET, &url, &[], &mut Payload::Empty)?;
        if resp.status().as_u16() != 200 {
            return Err(self.http_error("GET", &url, resp));
        }
        let reply: Reply = self.json_body(resp, &url, "search results")?;
        let mut results = reply.results.unwrap_or_default();
        results.truncate(limit);
        Ok(results)
    }

    /// A response's body (at most [`MAX_MANIFEST_SIZE`]) read as JSON; `what` names it in errors.
    fn json_body<T: serde::de::DeserializeOwned>(
        &self,
        resp: Response<Body>,
        url: &str,
        what: &'static str,
    ) -> Result<T, RegistryError> {
        let bytes = resp
            .into_body()
            .into_with_config()
            .limit(MAX_MANIFEST_SIZE)
            .read_to_vec()
            .map_err(|e| self.map_err(e, url, what))?;
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
            url: url.to_string(),
            message: format!("the {what} is not valid JSON: {e}"),
        })
    }

    fn get_manifest_from(&self, ep: &Endpoint, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        let scope = pull_scope(r);
        let url = format!("{}/v2/{}/manifests/{}", ep.base, r.repository, r.manifest_ref());
        let accept = ACCEPTED_MANIFEST_TYPES.join(", ");
        let resp = self.execute(ep, Some(&scope), Method::GET, &url, &[("Accept", &accept)], Payload::Empty)?;
        match resp.status().as_u16() {
            200 => {}
            404 => {
                return Err(RegistryError::NotFound {
                    code: "manifest unknown",
                    subject: r.familiar_string(),
                    registry: r.registry.clone(),
                })
            }
            _ => return Err(self.http_error("GET", &url, resp)),
        }
        let content_type = header(&resp, "content-type").unwrap_or_default();
        let header_digest = header(&resp, "docker-content-digest");
        if content_length(&resp).is_some_and(|n| n > MAX_MANIFEST_SIZE) {
            return Err(RegistryError::TooLarge { what: "manifest", url, limit: MAX_MANIFEST_SIZE });
        }
        let bytes = resp
            .into_body()
            .into_with_config()
            .limit(MAX_MANIFEST_SIZE)
            .read_to_vec()
            .map_err(|e| self.map_err(e, &url, "manifest"))?;
        let digest = Digest::of(&bytes);
        let expected = match (&r.digest, header_digest.and_then(|h| h.parse::<Digest>().ok())) {
            (Some(d), _) => Some(*d),
            (None, h) => h,
        };
        if let Some(expected) = expected.filter(|e| *e != digest) {
            return Err(RegistryError::DigestMismatch { what: format!("manifest {url}"), expected, actual: digest });
        }
        let declared = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string));
        let media_type = declared.unwrap_or_else(|| content_type.split(';').next().unwrap_or("").trim().to_string());
        Ok(FetchedManifest { bytes, media_type, digest })
    }

    /// Streams blob `d` of `r`'s repository as served (compressed). The caller
    /// must verify the digest of what it reads. Reads fail with
    /// `io::ErrorKind::TimedOut` when the registry goes quiet.
    pub fn get_blob(&self, r: &Reference, d: &Digest) -> Result<Box<dyn Read + Send>, RegistryError> {
        self.with_pull_endpoints(r, |ep| {
            let url = blob_url(ep, r, d);
            let resp = self.execute(ep, Some(&pull_scope(r)), Method::GET, &url, &[], Payload::Empty)?;
            match resp.status().as_u16() {
                200 => Ok(Box::new(BlobReader {
                    inner: resp.into_body().into_reader(),
                    url,
                    timeout: self.config.read_timeout,
                }) as Box<dyn Read + Send>),
                404 => Err(blob_not_found(r, d)),
                _ => Err(self.http_error("GET", &url, resp)),
            }
        })
    }

    /// `len` bytes of blob `d` from `offset` (an HTTP Range request; a
    /// registry that ignores ranges is handled by skipping). Fewer bytes are
    /// returned only when the blob ends first.
    pub fn get_blob_range(&self, r: &Reference, d: &Digest, offset: u64, len: u64) -> Result<Vec<u8>, RegistryError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = offset.checked_add(len - 1).ok_or_else(|| RegistryError::Protocol {
            url: r.to_string(),
            message: format!("range {offset}+{len} overflows"),
        })?;
        let range = format!("bytes={offset}-{end}");
        self.with_pull_endpoints(r, |ep| {
            let url = blob_url(ep, r, d);
            let resp =
                self.execute(ep, Some(&pull_scope(r)), Method::GET, &url, &[("Range", &range)], Payload::Empty)?;
            let skip = match resp.status().as_u16() {
                206 => 0,
                200 => offset,
                404 => return Err(blob_not_found(r, d)),
                _ => return Err(self.http_error("GET", &url, resp)),
            };
            let mut reader = resp.into_body().into_reader();
            let mut out = Vec::with_capacity(len.min(64 << 20) as usize);
            let io_err = |e: io::Error| self.map_io_err(e, &url);
            io::copy(&mut (&mut reader).take(skip), &mut io::sink()).map_err(io_err)?;
            reader.take(len).read_to_end(&mut out).map_err(io_err)?;
            Ok(out)
        })
    }

    /// Runs `op` against each mirror of `r`'s registry, then the registry.
    /// A mirror's error moves on to the next endpoint; the registry's is returned.
    fn with_pull_endpoints<T>(
        &self,
        r: &Reference,
        mut op: impl FnMut(&Endpoint) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        for mirror in self.config.mirrors_for(&r.registry) {
            let base = self.config.mirror_url(mirror);
            let cred_name = url_host(&base).to_string();
            if let Ok(v) = op(&Endpoint { base, cred_name }) {
                return Ok(v);
            }
        }
        op(&self.registry_endpoint(&r.registry))
    }

    fn registry_endpoint(&self, registry: &str) -> Endpoint {
        Endpoint { base: self.config.base_url(api_host(registry)), cred_name: registry.to_string() }
    }

    // ----- pushes ------------------------------------------------------------------------------

    /// True when the registry (never a mirror) has blob `d` in `r`'s repository.
    /// Asks with push scope: it is the check before an upload.
    pub fn blob_exists(&self, r: &Reference, d: &Digest) -> Result<bool, RegistryError> {
        let ep = self.registry_endpoint(&r.registry);
        let url = blob_url(&ep, r, d);
        let resp = self.execute(&ep, Some(&push_scope(r)), Method::HEAD, &url, &[], Payload::Empty)?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.http_error("HEAD", &url, resp)),
        }
    }

    /// Asks the registry to link blob `d` from repository `from` (same
    /// registry) into `r`'s repository without uploading. False when the
    /// registry declined (the blob must then be uploaded).
    pub fn mount_blob(&self, r: &Reference, d: &Digest, from: &str) -> Result<bool, RegistryError> {
        let ep = self.registry_endpoint(&r.registry);
        let url = format!(
            "{}/v2/{}/blobs/uploads/?mount={}&from={}",
            ep.base,
            r.repository,
            encode_query(&d.to_string()),
            encode_query(from)
        );
        let resp = self.execute(&ep, Some(&push_scope(r)), Method::POST, &url, &[], Payload::Empty)?;
        match resp.status().as_u16() {
            201 => Ok(true),
            202 => Ok(false),
            _ => Err(self.http_error("POST", &url, resp)),
        }
    }

    /// Uploads blob `d` (`size` bytes read from `reader`) to `r`'s repository
    /// in one request (POST an upload session, then PUT with the digest).
    pub fn put_blob(&self, r: &Reference, d: &Digest, size: u64, mut reader: impl Read) -> Result<(), RegistryError> {
        let ep = self.registry_endpoint(&r.registry);
        let scope = push_scope(r);
        let start = format!("{}/v2/{}/blobs/uploads/", ep.base, r.repository);
        let resp = self.execute(&ep, Some(&scope), Method::POST, &start, &[], Payload::Empty)?;
        if resp.status().as_u16() != 202 {
            return Err(self.http_error("POST", &start, resp));
        }
        let location = header(&resp, "location").ok_or_else(|| RegistryError::Protocol {
            url: start.clone(),
            message: "upload session response has no Location header".into(),
        })?;
        let mut url = resolve_location(&ep.base, &location);
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(&encode_query(&d.to_string()));
        let headers = [("Content-Type", "application/octet-stream")];
        let resp =
            self.execute(&ep, Some(&scope), Method::PUT, &url, &headers, Payload::Stream(Some(&mut reader), size))?;
        if !matches!(resp.status().as_u16(), 201 | 204) {
            return Err(self.http_error("PUT", &url, resp));
        }
        if let Some(got) = header(&resp, "docker-content-digest").and_then(|h| h.parse::<Digest>().ok()) {
            if got != *d {
                return Err(RegistryError::DigestMismatch {
                    what: format!("uploaded blob {url}"),
                    expected: *d,
                    actual: got,
                });
            }
        }
        Ok(())
    }

    /// Uploads a manifest under `r`'s tag (or digest) and returns its digest.
    pub fn put_manifest(&self, r: &Reference, bytes: &[u8], media_type: &str) -> Result<Digest, RegistryError> {
        let digest = Digest::of(bytes);
        if let (None, Some(want)) = (&r.tag, &r.digest) {
            if *want != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest for {r}"),
                    expected: *want,
                    actual: digest,
                });
            }
        }
        let ep = self.registry_endpoint(&r.registry);
        let target = r.tag.clone().unwrap_or_else(|| digest.to_string());
        let url = format!("{}/v2/{}/manifests/{}", ep.base, r.repository, target);
        let headers = [("Content-Type", media_type)];
        let resp = self.execute(&ep, Some(&push_scope(r)), Method::PUT, &url, &headers, Payload::Bytes(bytes))?;
        if !matches!(resp.status().as_u16(), 200 | 201 | 202 | 204) {
            return Err(self.http_error("PUT", &url, resp));
        }
        if let Some(got) = header(&resp, "docker-content-digest").and_then(|h| h.parse::<Digest>().ok()) {
            if got != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("pushed manifest {url}"),
                    expected: digest,
                    actual: got,
                });
            }
        }
        Ok(digest)
    }

    // ----- login -------------------------------------------------------------------------------

    /// Checks `username`/`password` against `registry` (never a mirror), as
    /// `docker login` does; on success the client uses them from then on.
    /// A registry that needs no authentication accepts any login.
    pub fn check_login(&self, registry: &str, username: &str, password: &str) -> Result<(), RegistryError> {
        let registry = normalize_registry(registry);
        let ep = self.registry_endpoint(&registry);
        let url = format!("{}/v2/", ep.base);
        let bad = || RegistryError::BadCredentials { registry: registry.clone() };
        let resp = self.execute(&ep, None, Method::GET, &url, &[], Payload::Empty)?;
        let basic = auth::basic_header(username, password);
        let authorization = match resp.status().as_u16() {
            200 => None,
            401 => match pick_challenge(&resp) {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    let cred = Credential::Basic { username: username.into(), password: password.into() };
                    let (token, _) = self
                        .fetch_token(&realm, service.as_deref(), &[], Some(&cred), &ep.cred_name, None)
                        .map_err(|e| match e {
                            RegistryError::Unauthorized { .. } => bad(),
                            e => e,
                        })?;
                    Some(format!("Bearer {token}"))
                }
                Some(Challenge::Basic { .. }) => Some(basic),
                None => return Err(self.http_error("GET", &url, resp)),
            },
            _ => return Err(self.http_error("GET", &url, resp)),
        };
        if let Some(authorization) = authorization {
            let resp = self.send(Method::GET, &url, &[("Authorization", &authorization)], &mut Payload::Empty)?;
            match resp.status().as_u16() {
                200 => {}
                401 | 403 => return Err(bad()),
                _ => return Err(self.http_error("GET", &url, resp)),
            }
        }
        self.set_credentials(&registry, Credential::Basic { username: username.into(), password: password.into() });
        Ok(())
    }

    // ----- requests and authentication ---------------------------------------------------------

    /// Sends one request with whatever authorisation is known for (endpoint,
    /// scope); on 401, learns the challenge, authenticates and retries once
    /// (a streamed body cannot be replayed: its 401 is final).
    fn execute(
        &self,
        ep: &Endpoint,
        scope: Option<&Scope>,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        mut payload: Payload,
    ) -> Result<Response<Body>, RegistryError> {
        // Never hand a registry token to another host (e.g. an upload Location elsewhere).
        let same_host = url.starts_with(&ep.base);
        let authorization = match scope {
            Some(s) if same_host => self.authorization(ep, s)?,
            _ => None,
        };
        fn with_auth<'h>(headers: &[(&'h str, &'h str)], a: &'h Option<String>) -> Vec<(&'h str, &'h str)> {
            let mut h = headers.to_vec();
            if let Some(a) = a {
                h.push(("Authorization", a.as_str()));
            }
            h
        }
        let resp = self.send(method.clone(), url, &with_auth(headers, &authorization), &mut payload)?;
        let status = resp.status().as_u16();
        let Some(scope) = scope.filter(|_| same_host && matches!(status, 401 | 403)) else {
            return Ok(resp);
        };
        let denied = |detail: String| RegistryError::Unauthorized {
            action: scope.action(),
            repository: scope.display.clone(),
            registry: scope.registry.to_string(),
            detail,
        };
        if status == 403 {
            // Authenticated but not allowed: another token will not help.
            return Err(denied(error_detail(resp)));
        }
        let Some(challenge) = pick_challenge(&resp) else {
            return Err(denied(error_detail(resp)));
        };
        let scope_value = scope.value();
        self.auth.forget_token(&ep.base, &scope_value);
        let retry_possible = !matches!(payload, Payload::Stream(None, _));
        let had_basic = authorization.as_deref().is_some_and(|a| a.starts_with("Basic "));
        self.auth.set_challenge(&ep.base, challenge.clone());
        // A scope the registry names in its challenge is asked for as well.
        let extra = match &challenge {
            Challenge::Bearer { scope: Some(s), .. } if *s != scope_value => Some(s.clone()),
            _ => None,
        };
        if !retry_possible || (had_basic && matches!(challenge, Challenge::Basic { .. })) {
            return Err(denied(error_detail(resp)));
        }
        let detail = error_detail(resp);
        let authorization = match self.authorization_with(ep, scope, &challenge, extra.as_deref())? {
            Some(a) => Some(a),
            None => return Err(denied(detail)),
        };
        let resp = self.send(method, url, &with_auth(headers, &authorization), &mut payload)?;
        if matches!(resp.status().as_u16(), 401 | 403) {
            self.auth.forget_token(&ep.base, &scope_value);
            return Err(denied(error_detail(resp)));
        }
        Ok(resp)
    }

    /// The `Authorization` value to send up front, if the endpoint's challenge is known.
    fn authorization(&self, ep: &Endpoint, scope: &Scope) -> Result<Option<String>, RegistryError> {
        if let Some(t) = self.auth.token(&ep.base, &scope.value()) {
            return Ok(Some(t));
        }
        match self.auth.challenge(&ep.base) {
            Some(c) => self.authorization_with(ep, scope, &c, None),
            None => Ok(None),
        }
    }

    fn authorization_with(
        &self,
        ep: &Endpoint,
        scope: &Scope,
        challenge: &Challenge,
        extra_scope: Option<&str>,
    ) -> Result<Option<String>, RegistryError> {
        let cred = self.credential(&ep.cred_name)?;
        match challenge {
            Challenge::Basic { .. } => Ok(match cred {
                Some(Credential::Basic { username, password }) => Some(auth::basic_header(&username, &password)),
                _ => None,
            }),
            Challenge::Bearer { realm, service, .. } => {
                let scope_value = scope.value();
                let mut scopes = vec![scope_value.as_str()];
                scopes.extend(extra_scope);
                let (token, ttl) =
                    self.fetch_token(realm, service.as_deref(), &scopes, cred.as_ref(), &ep.cred_name, Some(scope))?;
                let value = format!("Bearer {token}");
                self.auth.set_token(&ep.base, &scope_value, value.clone(), ttl);
                Ok(Some(value))
            }
        }
    }

    /// Credentials for `name`: explicit ones, else the credential store's (looked up once).
    fn credential(&self, name: &str) -> Result<Option<Credential>, RegistryError> {
        let name = normalize_registry(name);
        if let Some(c) = self.credentials.lock().unwrap_or_else(|e| e.into_inner()).get(&name) {
            return Ok(c.clone());
        }
        let found = match &self.store {
            Some(store) => store.lookup(&name)?,
            None => None,
        };
        self.credentials.lock().unwrap_or_else(|e| e.into_inner()).insert(name, found.clone());
        Ok(found)
    }

    /// Asks a token realm for a bearer token. `scope` (when the token is for
    /// an operation) shapes the error a refusal becomes.
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[&str],
        cred: Option<&Credential>,
        registry: &str,
        scope: Option<&Scope>,
    ) -> Result<(String, Duration), RegistryError> {
        let mut url = realm.to_string();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        let mut add = |k: &str, v: &str| {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(&encode_query(v));
            sep = '&';
        };
        let resp = match TokenRequest::for_credential(cred) {
            TokenRequest::Get { basic } => {
                if let Some(s) = service {
                    add("service", s);
                }
                for s in scopes {
                    add("scope", s);
                }
                if let Some((user, _)) = basic {
                    add("account", user);
                }
                let authorization = basic.map(|(u, p)| auth::basic_header(u, p));
                let mut headers = vec![];
                if let Some(a) = &authorization {
                    headers.push(("Authorization", a.as_str()));
                }
                self.send(Method::GET, &url, &headers, &mut Payload::Empty)?
            }
            TokenRequest::Refresh { refresh_token } => {
                let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
                form.push(("client_id", "strata"));
                if let Some(s) = service {
                    form.push(("service", s));
                }
                let joined = scopes.join(" ");
                if !scopes.is_empty() {
                    form.push(("scope", &joined));
                }
                let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", encode_query(v))).collect();
                let body = body.join("&");
                let headers = [("Content-Type", "application/x-www-form-urlencoded")];
                self.send(Method::POST, &url, &headers, &mut Payload::Bytes(body.as_bytes()))?
            }
        };
        match resp.status().as_u16() {
            200 => {}
            401 | 403 if cred.is_some() => {
                return Err(RegistryError::BadCredentials { registry: registry.to_string() })
            }
            401 | 403 => {
                return Err(RegistryError::Unauthorized {
                    action: scope.map(Scope::action).unwrap_or("login"),
                    repository: scope.map(|s| s.display.clone()).unwrap_or_default(),
                    registry: registry.to_string(),
                    detail: error_detail(resp),
                })
            }
            _ => return Err(self.http_error("GET", realm, resp)),
        }
        let bytes = resp
            .into_body()
            .into_with_config()
            .limit(MAX_SMALL_BODY)
            .read_to_vec()
            .map_err(|e| self.map_err(e, realm, "token response"))?;
        let reply: TokenReply = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Protocol { url: realm.to_string(), message: format!("token response: {e}") })?;
        reply.into_token().ok_or_else(|| RegistryError::Protocol {
            url: realm.to_string(),
            message: "token response has neither \"token\" nor \"access_token\"".into(),
        })
    }

    /// One HTTP exchange, no authentication logic.
    fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        payload: &mut Payload,
    ) -> Result<Response<Body>, RegistryError> {
        let mut builder = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let invalid = |e: http::Error| RegistryError::Protocol {
            url: url.to_string(),
            message: format!("cannot build request: {e}"),
        };
        let agent = if config::is_loopback(url_host(url)) { &self.direct } else { &self.agent };
        let result = match payload {
            Payload::Empty => agent.run(builder.body(()).map_err(invalid)?),
            Payload::Bytes(b) => agent.run(builder.body(*b).map_err(invalid)?),
            Payload::Stream(reader, len) => {
                let Some(reader) = reader.take() else {
                    return Err(RegistryError::Protocol { url: url.to_string(), message: "body already sent".into() });
                };
                let builder = builder.header("Content-Length", len.to_string());
                agent.run(builder.body(ureq::SendBody::from_reader(reader)).map_err(invalid)?)
            }
        };
        result.map_err(|e| self.map_err(e, url, "response"))
    }

    fn map_err(&self, e: ureq::Error, url: &str, what: &'static str) -> RegistryError {
        let url = url.to_string();
        match e {
            ureq::Error::Timeout(t) => {
                let after = match t {
                    ureq::Timeout::Connect | ureq::Timeout::Resolve => self.config.connect_timeout,
                    _ => self.config.read_timeout,
                };
                RegistryError::Timeout { url, after }
            }
            ureq::Error::Io(io) => self.io_to_registry(io, url),
            ureq::Error::HostNotFound => RegistryError::Connection { url, reason: "host not found".into() },
            ureq::Error::ConnectionFailed => RegistryError::Connection { url, reason: "connection failed".into() },
            ureq::Error::BodyExceedsLimit(limit) => RegistryError::TooLarge { what, url, limit },
            e @ (ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_)) => RegistryError::Connection {
                url,
                reason: format!(
                    "TLS error: {e} (a registry that speaks plain HTTP must be listed in insecure-registries)"
                ),
            },
            e => RegistryError::Protocol { url, message: e.to_string() },
        }
    }

    fn io_to_registry(&self, io: io::Error, url: String) -> RegistryError {
        match io.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                RegistryError::Timeout { url, after: self.config.read_timeout }
            }
            _ => match io.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
                Some(_) => match io.into_inner().and_then(|b| b.downcast::<ureq::Error>().ok()) {
                    Some(e) => self.map_err(*e, &url, "response"),
                    None => RegistryError::Connection { url, reason: "I/O error".into() },
                },
                None => RegistryError::Connection { url, reason: io.to_string() },
            },
        }
    }

    fn map_io_err(&self, e: io::Error, url: &str) -> RegistryError {
        self.io_to_registry(e, url.to_string())
    }

    /// An unexpected status, with the registry's error code and message.
    fn http_error(&self, method: &str, url: &str, resp: Response<Body>) -> RegistryError {
        let status = resp.status().as_u16();
        let (code, message) = error_body(resp);
        RegistryError::Http { method: method.to_string(), url: url.to_string(), status, code, message }
    }
}

/// Picks the challenge to answer: Bearer over Basic.
fn pick_challenge(resp: &Response<Body>) -> Option<Challenge> {
    let values = resp.headers().get_all("www-authenticate").iter().filter_map(|v| v.to_str().ok());
    let mut all = auth::parse_challenges(values);
    all.sort_by_key(|c| !matches!(c, Challenge::Bearer { .. }));
    all.into_iter().next()
}

/// The `errors` array of a distribution error body: (first code, messages).
fn error_body(resp: Response<Body>) -> (String, String) {
    let Ok(bytes) = resp.into_body().into_with_config().limit(MAX_SMALL_BODY).read_to_vec() else {
        return (String::new(), String::new());
    };
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    match serde_json::from_slice::<Errors>(&bytes) {
        Ok(e) if !e.errors.is_empty() => {
            let code = e.errors[0].code.clone();
            let messages: Vec<&str> = e.errors.iter().map(|i| i.message.as_str()).filter(|m| !m.is_empty()).collect();
            (code, messages.join("; "))
        }
        _ => {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.trim().chars().take(200).collect();
            (String::new(), text)
        }
    }
}

fn error_detail(resp: Response<Body>) -> String {
    let (code, message) = error_body(resp);
    http_detail(&code, &message)
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn content_length(resp: &Response<Body>) -> Option<u64> {
    header(resp, "content-length").and_then(|v| v.trim().parse().ok())
}

fn pull_scope(r: &Reference) -> Scope<'_> {
    Scope {
        kind: "repository",
        name: &r.repository,
        actions: "pull",
        display: r.familiar_name(),
        registry: &r.registry,
    }
}

fn push_scope(r: &Reference) -> Scope<'_> {
    Scope {
        kind: "repository",
        name: &r.repository,
        actions: "pull,push",
        display: r.familiar_name(),
        registry: &r.registry,
    }
}

fn blob_url(ep: &Endpoint, r: &Reference, d: &Digest) -> String {
    format!("{}/v2/{}/blobs/{}", ep.base, r.repository, d)
}

fn blob_not_found(r: &Reference, d: &Digest) -> RegistryError {
    RegistryError::NotFound {
        code: "blob unknown",
        subject: format!("blob {d} of {}", r.familiar_name()),
        registry: r.registry.clone(),
    }
}

/// The target of a `Link` header's `rel="next"` entry (RFC 8288), as
/// registries page tag lists: `</v2/NAME/tags/list?last=x&n=100>; rel="next"`.
fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| matches!(p.trim().split_once('='), Some((k, v)) if k.trim() == "rel" && v.trim().trim_matches('"') == "next"))
            .then(|| target.to_string())
    })
}

/// The `host[:port]` of `scheme://host[:port][/path]`.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// An upload `Location`: absolute, or a path on the registry.
fn resolve_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        let origin = match base.split_once("://") {
            Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest)),
            None => base.to_string(),
        };
        format!("{origin}/{}", location.trim_start_matches('/'))
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A blob body whose errors name the URL and say when the registry went quiet.
struct BlobReader {
    inner: ureq::BodyReader<'static>,
    url: String,
    timeout: Duration,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let timed_out = matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
                || e.get_ref()
                    .and_then(|i| i.downcast_ref::<ureq::Error>())
                    .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
            if timed_out {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "timed out after {:?} waiting for data from {}; the registry stopped sending \
                         (set STRATA_REGISTRY_TIMEOUT to a number of seconds to wait longer)",
                        self.timeout, self.url
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("reading {}: {e}", self.url))
            }
        })
    }
}
