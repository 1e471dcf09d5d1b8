//! [`Registry`]: a real registry (Debian's `docker-registry`, distribution
//! 2.8) on a free loopback port with storage in a temp dir, optionally behind
//! htpasswd basic auth, seeded from OCI layouts with `skopeo copy`.
//!
//! Also holds [`http_get`], the minimal HTTP/1.1 client the harness uses to
//! probe registries (readiness, manifest digests, layer magic bytes).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `docker-registry`; killed when dropped.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    creds: Option<(String, String)>,
}

impl Registry {
    /// A registry without authentication.
    pub fn start() -> Registry {
        Self::start_inner(None, "")
    }

    /// A registry that requires HTTP basic auth as `user`/`password`
    /// (htpasswd file made with `htpasswd -Bbn`).
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::start_inner(Some((user.to_string(), password.to_string())), "")
    }

    /// A registry that serves its catalog (`/v2/_catalog`) in pages of
    /// `entries` repositories (distribution's `catalog.maxentries`).
    pub fn start_with_catalog_pages(entries: usize) -> Registry {
        Self::start_inner(None, &format!("catalog:\n  maxentries: {entries}\n"))
    }

    fn start_inner(creds: Option<(String, String)>, extra_config: &str) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("strata-e2e-registry-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let mut auth = String::new();
        if let Some((u, p)) = &creds {
            let line = crate::run_tool(Command::new("htpasswd").args(["-Bbn", u, p]));
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, line.trim_end().to_string() + "\n")
                .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
            auth = format!("auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n", file.display());
        }
        // The port is found by binding :0 and released before the registry
        // binds it; someone may take it in between, so retry a few times.
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            let yml = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth}{extra_config}",
                dir.path().join("data").display()
            );
            std::fs::write(&config, yml).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
            let log_path = dir.path().join("registry.log");
            match spawn_ready(&config, &log_path, port) {
                Some(child) => return Registry { child, dir, port, creds },
                None => last_log = std::fs::read_to_string(&log_path).unwrap_or_default(),
            }
        }
        panic!("docker-registry did not start:\n{last_log}");
    }

    /// Stops the registry process; its data, configuration and port stay
    /// for [`Registry::resume`].
    pub fn pause(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the registry again, on the same port with the same data.
    pub fn resume(&mut self) {
        let (config, log) = (self.dir.path().join("config.yml"), self.dir.path().join("registry.log"));
        self.child = spawn_ready(&config, &log, self.port)
            .unwrap_or_else(|| panic!("docker-registry did not restart:\n{}", self.log()));
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
    /// The registry's own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    fn skopeo_copy(&self, extra: &[&str], src: String, dest: &str) -> String {
        let reference = self.reference(dest);
        let mut cmd = Command::new("skopeo");
        cmd.arg("--policy").arg(crate::paths::crate_dir().join("fixtures/policy.json"));
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.args(extra).arg(src).arg(format!("docker://{reference}"));
        crate::run_tool(&mut cmd);
        reference
    }

    /// Pushes tag `tag` of the OCI layout `layout` as `dest` (`name:tag`),
    /// unchanged (OCI media types, the layout's blobs). Returns the full reference.
    pub fn push_oci_layout(&self, layout: &Path, tag: &str, dest: &str) -> String {
        self.skopeo_copy(&["--preserve-digests"], format!("oci:{}:{tag}", layout.display()), dest)
    }

    /// Pushes as a Docker schema 2 image (Docker media types).
    pub fn push_docker_v2s2(&self, layout: &Path, tag: &str, dest: &str) -> String {
        self.skopeo_copy(&["--format", "v2s2"], format!("oci:{}:{tag}", layout.display()), dest)
    }

    /// Pushes an image index and every image it lists.
    pub fn push_index(&self, layout: &Path, tag: &str, dest: &str) -> String {
        self.skopeo_copy(&["--all", "--preserve-digests"], format!("oci:{}:{tag}", layout.display()), dest)
    }

    /// Pushes a layout whose layers are zstd (see fixtures: skopeo recompresses
    /// only into a layout, so the zstd layout is made there) keeping its digests,
    /// then checks that the registry really serves zstd layers.
    pub fn push_zstd(&self, zstd_layout: &Path, tag: &str, dest: &str) -> String {
        let reference = self.push_oci_layout(zstd_layout, tag, dest);
        let (name, reftag) = dest.rsplit_once(':').unwrap_or((dest, "latest"));
        let manifest = self.manifest(name, reftag);
        let v: serde_json::Value =
            serde_json::from_slice(&manifest.body).unwrap_or_else(|e| panic!("manifest of {dest} is not JSON: {e}"));
        let layers = v["layers"].as_array().cloned().unwrap_or_default();
        assert!(!layers.is_empty(), "manifest of {dest} has no layers");
        for l in layers {
            let digest = l["digest"].as_str().unwrap_or_default();
            let r = http_get(self.port, &format!("/v2/{name}/blobs/{digest}"), &[], self.auth_header().as_deref(), 4);
            assert_eq!(r.status, 200, "GET blob {digest}");
            assert_eq!(r.body, [0x28, 0xb5, 0x2f, 0xfd], "layer {digest} of {dest} is not zstd");
        }
        reference
    }

    /// GET the manifest `name:reference`, accepting every manifest type.
    pub fn manifest(&self, name: &str, reference: &str) -> HttpResponse {
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json";
        let r = http_get(
            self.port,
            &format!("/v2/{name}/manifests/{reference}"),
            &[("Accept", accept)],
            self.auth_header().as_deref(),
            usize::MAX,
        );
        assert_eq!(r.status, 200, "GET manifest {name}:{reference}: {}", String::from_utf8_lossy(&r.body));
        r
    }

    /// `sha256:...` of the manifest `name:tag` as the registry serves it.
    pub fn manifest_digest(&self, name: &str, tag: &str) -> String {
        format!("sha256:{}", crate::sha256_hex(&self.manifest(name, tag).body))
    }

    fn auth_header(&self) -> Option<String> {
        self.creds.as_ref().map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the registry and waits until `GET /v2/` answers (200 or 401).
/// Returns None (after reaping it) if it exits first, e.g. port taken.
fn spawn_ready(config: &Path, log_path: &Path, port: u16) -> Option<Child> {
    let log = std::fs::File::create(log_path).unwrap_or_else(|e| panic!("create registry log: {e}"));
    let log2 = log.try_clone().unwrap_or_else(|e| panic!("dup registry log: {e}"));
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start docker-registry: {e} (run scripts/setup.sh)"));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if let Some(r) = try_http_get(port, "/v2/", &[], None, 0) {
            if r.status == 200 || r.status == 401 {
                return Some(child);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}

/// Standard base64 with padding (for basic auth headers).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Status, headers (names lowercased) and (a prefix of) the body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// `GET path` on 127.0.0.1:port, reading at most `max_body` body bytes.
/// Panics when the server cannot be reached.
pub fn http_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    authorization: Option<&str>,
    max_body: usize,
) -> HttpResponse {
    try_http_get(port, path, headers, authorization, max_body)
        .unwrap_or_else(|| panic!("GET http://127.0.0.1:{port}{path} failed"))
}

/// Like [`http_get`] but None on any connection or protocol error.
pub fn try_http_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    authorization: Option<&str>,
    max_body: usize,
) -> Option<HttpResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(a) = authorization {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut hdrs = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        hdrs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut resp = HttpResponse { status, headers: hdrs, body: Vec::new() };
    let chunked = resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let len: Option<usize> = resp.header("content-length").and_then(|v| v.parse().ok());
    if chunked {
        let mut body = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line).ok()?;
            let n = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            if n == 0 || body.len() >= max_body {
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk);
            line.clear();
            r.read_line(&mut line).ok()?;
        }
        body.truncate(max_body);
        resp.body = body;
    } else {
        let want = len.unwrap_or(usize::MAX).min(max_body);
        let mut body = Vec::new();
        r.take(want as u64).read_to_end(&mut body).ok()?;
        resp.body = body;
    }
    Some(resp)
}
