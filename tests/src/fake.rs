//! [`FakeRegistry`]: an in-process registry (std `TcpListener` on a loopback
//! port, one thread per connection) that serves images it is given and
//! misbehaves on request — the cases a real registry will not produce on
//! demand: wrong or truncated blobs, error statuses, a server that never
//! answers, manifests that are not JSON or of unknown types, transfers that
//! stall half-way. Images built from handcrafted tar streams
//! ([`FakeImage::from_layers`]) deliver hostile layers.
//!
//! Every request is recorded, so tests can assert what was fetched and how
//! often. Responses always close the connection (`Connection: close`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What the fake registry does wrong (at most one at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Layer blobs are served with one byte changed (same length; for gzip
    /// blobs a header byte, so the stream still decompresses to the same tar).
    WrongDigestBlob,
    /// Layer blobs announce their full length, send half, then close.
    TruncatedBlob,
    /// Manifests answer 404 MANIFEST_UNKNOWN.
    ManifestNotFound,
    /// Everything below `/v2/NAME/` answers 404 (a mirror that has nothing).
    NotFound,
    /// Everything answers 401 with a Basic challenge, whatever credentials come.
    Unauthorized,
    /// Manifests and blobs answer 500.
    ServerError,
    /// Requests are read and never answered (until the fault is cleared or the registry dropped).
    Hang,
    /// The manifest body is not JSON.
    NonJsonManifest,
    /// The manifest has a media type nobody knows.
    UnknownManifestMediaType,
    /// Layer blobs send half their bytes, then stall until the fault is
    /// cleared (then the rest follows) or the registry is dropped.
    StallBlobs,
}

/// An image as a registry holds it: manifest bytes plus the blobs it names.
#[derive(Clone, Debug)]
pub struct FakeImage {
    pub manifest: Vec<u8>,
    pub manifest_media_type: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    /// digest -> bytes, for the config and every layer (and, for indexes, child manifests).
    pub blobs: HashMap<String, Vec<u8>>,
}

impl FakeImage {
    /// An image whose layers are the given uncompressed tar streams (gzipped
    /// here), with a minimal linux/amd64 config.
    pub fn from_layers(tars: &[Vec<u8>]) -> FakeImage {
        Self::from_layers_with_media_type(tars, OCI_LAYER_GZIP)
    }

    /// Like [`FakeImage::from_layers`] but announcing `layer_media_type` for every layer.
    pub fn from_layers_with_media_type(tars: &[Vec<u8>], layer_media_type: &str) -> FakeImage {
        let mut blobs = HashMap::new();
        let mut diff_ids = Vec::new();
        let mut layers = Vec::new();
        let mut layer_digests = Vec::new();
        for tar in tars {
            diff_ids.push(format!("sha256:{}", crate::sha256_hex(tar)));
            let gz = crate::tarball::gzip(tar);
            let d = format!("sha256:{}", crate::sha256_hex(&gz));
            layers.push(serde_json::json!({"mediaType": layer_media_type, "digest": d, "size": gz.len()}));
            layer_digests.push(d.clone());
            blobs.insert(d, gz);
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": tars.iter().map(|_| serde_json::json!({"created_by": "strata-e2e fake layer"})).collect::<Vec<_>>(),
        });
        let config = serde_json::to_vec(&config).unwrap_or_default();
        let config_digest = format!("sha256:{}", crate::sha256_hex(&config));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers,
        });
        blobs.insert(config_digest.clone(), config);
        FakeImage {
            manifest: serde_json::to_vec(&manifest).unwrap_or_default(),
            manifest_media_type: OCI_MANIFEST.to_string(),
            config_digest,
            layer_digests,
            blobs,
        }
    }

    /// The image tagged `tag` in an OCI layout, byte for byte.
    pub fn from_oci_layout(layout: &Path, tag: &str) -> FakeImage {
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        let blob = |d: &str| read(&layout.join("blobs/sha256").join(d.trim_start_matches("sha256:")));
        let index: serde_json::Value = serde_json::from_slice(&read(&layout.join("index.json")))
            .unwrap_or_else(|e| panic!("index.json of {}: {e}", layout.display()));
        let desc = index["manifests"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag))
            .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()));
        let digest = desc["digest"].as_str().unwrap_or_default();
        let manifest = blob(digest);
        let m: serde_json::Value =
            serde_json::from_slice(&manifest).unwrap_or_else(|e| panic!("manifest {digest}: {e}"));
        let config_digest = m["config"]["digest"].as_str().unwrap_or_default().to_string();
        let mut blobs = HashMap::new();
        blobs.insert(config_digest.clone(), blob(&config_digest));
        let mut layer_digests = Vec::new();
        for l in m["layers"].as_array().cloned().unwrap_or_default() {
            let d = l["digest"].as_str().unwrap_or_default().to_string();
            blobs.insert(d.clone(), blob(&d));
            layer_digests.push(d);
        }
        FakeImage {
            manifest,
            manifest_media_type: desc["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string(),
            config_digest,
            layer_digests,
            blobs,
        }
    }

    /// `sha256:...` of the manifest bytes.
    pub fn manifest_digest(&self) -> String {
        format!("sha256:{}", crate::sha256_hex(&self.manifest))
    }
}

/// One request as the fake registry saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    images: HashMap<String, FakeImage>,
    fault: Option<Fault>,
    requests: Vec<Request>,
    /// Number of blob transfers currently stalled by [`Fault::StallBlobs`].
    stalled: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fake registry; stops (and releases every hanging connection) when dropped.
pub struct FakeRegistry {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeRegistry {
    pub fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind fake registry: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("fake registry addr: {e}"));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || handle(&s, conn));
                }
            }
        });
        FakeRegistry { port, shared, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// `127.0.0.1:PORT/NAME_TAG`
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{}", self.host(), name_tag)
    }

    /// Serves `image` as `name:tag` (and by its manifest digest).
    pub fn serve(&self, name_tag: &str, image: FakeImage) {
        self.shared.lock().images.insert(name_tag.to_string(), image);
    }

    /// Sets (or with None clears) the fault; wakes stalled and hanging connections.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared.lock().fault = fault;
        self.shared.changed.notify_all();
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Number of requests with this method whose path contains `fragment`.
    pub fn count(&self, method: &str, fragment: &str) -> usize {
        self.shared.lock().requests.iter().filter(|r| r.method == method && r.path.contains(fragment)).count()
    }

    /// Blocks until at least one blob transfer is stalled ([`Fault::StallBlobs`]).
    pub fn wait_for_stall(&self, timeout: Duration) {
        let st = self.shared.lock();
        let (st, res) = self
            .shared
            .changed
            .wait_timeout_while(st, timeout, |st| st.stalled == 0)
            .unwrap_or_else(|p| p.into_inner());
        if res.timed_out() && st.stalled == 0 {
            panic!("no blob transfer stalled within {timeout:?}; requests: {:#?}", st.requests);
        }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply { status, headers: vec![("Content-Type".into(), content_type.into())], body }
    }
    fn error(status: u16, code: &str, message: &str) -> Reply {
        let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
        Reply::new(status, "application/json", serde_json::to_vec(&body).unwrap_or_default())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

fn handle(shared: &Shared, conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(write_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    let fault = {
        let mut st = shared.lock();
        st.requests.push(Request { method: method.clone(), path: path.clone(), authorization });
        st.fault
    };
    let mut out = write_half;
    if fault == Some(Fault::Hang) {
        // Hold the connection open without a byte of answer.
        let mut st = shared.lock();
        while !shared.stop.load(Ordering::SeqCst) && st.fault == Some(Fault::Hang) {
            st = shared
                .changed
                .wait_timeout(st, Duration::from_millis(500))
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        return;
    }
    let head = method == "HEAD";
    let reply = route(shared, fault, &path);
    match reply {
        Routed::Reply(r) => {
            let _ = write_reply(&mut out, &r, head);
        }
        Routed::Blob { body, digest } => serve_blob(shared, &mut out, fault, body, &digest, head),
    }
}

enum Routed {
    Reply(Reply),
    /// A layer or config blob, subject to the blob faults.
    Blob {
        body: Vec<u8>,
        digest: String,
    },
}

fn route(shared: &Shared, fault: Option<Fault>, path: &str) -> Routed {
    use Routed::Reply as R;
    if fault == Some(Fault::Unauthorized) {
        let mut r = Reply::error(401, "UNAUTHORIZED", "authentication required");
        r.headers.push(("WWW-Authenticate".into(), "Basic realm=\"strata-fake\"".into()));
        return R(r);
    }
    let path = path.split('?').next().unwrap_or_default();
    if path == "/v2/" || path == "/v2" {
        return R(Reply::new(200, "application/json", b"{}".to_vec()));
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return R(Reply::error(404, "NOT_FOUND", "not found"));
    };
    if fault == Some(Fault::NotFound) {
        return R(Reply::error(404, "NAME_UNKNOWN", "repository name not known to registry"));
    }
    if fault == Some(Fault::ServerError) {
        return R(Reply::error(500, "UNKNOWN", "injected server error"));
    }
    let st = shared.lock();
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        if fault == Some(Fault::ManifestNotFound) {
            return R(Reply::error(404, "MANIFEST_UNKNOWN", "manifest unknown"));
        }
        let image = st.images.get(&format!("{name}:{reference}")).or_else(|| {
            st.images
                .iter()
                .find(|(k, i)| k.starts_with(&format!("{name}:")) && i.manifest_digest() == reference)
                .map(|(_, i)| i)
        });
        let Some(image) = image else {
            // Child manifests of an index are stored as blobs.
            if let Some(b) = st.images.values().find_map(|i| i.blobs.get(reference)) {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(b) {
                    let mt = v["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string();
                    let mut r = Reply::new(200, &mt, b.clone());
                    r.headers.push(("Docker-Content-Digest".into(), reference.to_string()));
                    return R(r);
                }
            }
            return R(Reply::error(404, "MANIFEST_UNKNOWN", "manifest unknown"));
        };
        let (media_type, body) = match fault {
            Some(Fault::NonJsonManifest) => {
                (image.manifest_media_type.clone(), b"<html><body>this is not a manifest</body></html>".to_vec())
            }
            Some(Fault::UnknownManifestMediaType) => {
                let mt = "application/vnd.example.unknown.manifest.v1+json";
                let mut v: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap_or_default();
                v["mediaType"] = serde_json::Value::String(mt.into());
                (mt.to_string(), serde_json::to_vec(&v).unwrap_or_default())
            }
            _ => (image.manifest_media_type.clone(), image.manifest.clone()),
        };
        let digest = format!("sha256:{}", crate::sha256_hex(&body));
        let mut r = Reply::new(200, &media_type, body);
        r.headers.push(("Docker-Content-Digest".into(), digest));
        return R(r);
    }
    if let Some((_name, digest)) = rest.rsplit_once("/blobs/") {
        let found =
            st.images.values().find_map(|i| i.blobs.get(digest).map(|b| (b.clone(), i.config_digest == digest)));
        return match found {
            Some((body, true)) => {
                let mut r = Reply::new(200, "application/octet-stream", body);
                r.headers.push(("Docker-Content-Digest".into(), digest.to_string()));
                R(r)
            }
            Some((body, false)) => Routed::Blob { body, digest: digest.to_string() },
            None => R(Reply::error(404, "BLOB_UNKNOWN", "blob unknown to registry")),
        };
    }
    R(Reply::error(404, "NOT_FOUND", "not found"))
}

fn write_head(out: &mut TcpStream, status: u16, headers: &[(String, String)], len: usize) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(&format!(
        "Content-Length: {len}\r\nDocker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n\r\n"
    ));
    out.write_all(h.as_bytes())
}

fn write_reply(out: &mut TcpStream, r: &Reply, head: bool) -> std::io::Result<()> {
    write_head(out, r.status, &r.headers, r.body.len())?;
    if !head {
        out.write_all(&r.body)?;
    }
    out.flush()
}

fn serve_blob(shared: &Shared, out: &mut TcpStream, fault: Option<Fault>, mut body: Vec<u8>, digest: &str, head: bool) {
    let headers = vec![
        ("Content-Type".to_string(), "application/octet-stream".to_string()),
        ("Docker-Content-Digest".to_string(), digest.to_string()),
    ];
    if write_head(out, 200, &headers, body.len()).is_err() || head {
        return;
    }
    let half = body.len() / 2;
    match fault {
        Some(Fault::WrongDigestBlob) => {
            // For gzip, change the header's mtime: still a valid stream with
            // the same content, so only the digest check can catch it.
            let at = if body.starts_with(&[0x1f, 0x8b]) && body.len() > 8 { 4 } else { half };
            if let Some(b) = body.get_mut(at) {
                *b ^= 0xff;
            }
            let _ = out.write_all(&body);
        }
        Some(Fault::TruncatedBlob) => {
            let _ = out.write_all(&body[..half]);
            let _ = out.flush();
            let _ = out.shutdown(std::net::Shutdown::Both);
        }
        Some(Fault::StallBlobs) => {
            if out.write_all(&body[..half]).is_err() || out.flush().is_err() {
                return;
            }
            let mut st = shared.lock();
            st.stalled += 1;
            shared.changed.notify_all();
            while !shared.stop.load(Ordering::SeqCst) && st.fault == Some(Fault::StallBlobs) {
                st = shared
                    .changed
                    .wait_timeout(st, Duration::from_millis(500))
                    .map(|r| r.0)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            st.stalled -= 1;
            drop(st);
            if !shared.stop.load(Ordering::SeqCst) {
                let _ = out.write_all(&body[half..]);
            }
        }
        _ => {
            let _ = out.write_all(&body);
        }
    }
    let _ = out.flush();
}
