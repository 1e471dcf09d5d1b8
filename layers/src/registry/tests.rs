//! Client tests against small in-process HTTP/1.1 servers on 127.0.0.1:0,
//! each answering from a closure. Real-registry interop is in the e2e tests.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

#[derive(Debug, Clone)]
struct Req {
    method: String,
    /// Path and query.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Headers announcing `total` bytes, then `sent` of them, then silence.
    Stall {
        total: usize,
        sent: Vec<u8>,
    },
    /// Read the request, never answer.
    Hang,
}

fn reply(status: u16) -> Reply {
    Reply::Full { status, headers: vec![], body: vec![] }
}

impl Reply {
    fn header(mut self, k: &str, v: &str) -> Self {
        if let Reply::Full { headers, .. } = &mut self {
            headers.push((k.to_string(), v.to_string()));
        }
        self
    }
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        if let Reply::Full { body, .. } = &mut self {
            *body = b.into();
        }
        self
    }
}

type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

struct TestServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stop2) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (handler, reqs, stop) = (handler.clone(), reqs.clone(), stop2.clone());
                std::thread::spawn(move || serve(stream, &*handler, &reqs, &stop));
            }
        });
        TestServer { addr, requests, stop, thread: Some(thread) }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, handler: &Handler, reqs: &Mutex<Vec<Req>>, stop: &AtomicBool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = Req { method, target, headers, body: Vec::new() };
    if let Some(n) = req.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        req.body.resize(n, 0);
        let _ = reader.read_exact(&mut req.body);
    } else if req.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            let _ = reader.read_line(&mut size);
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            let _ = reader.read_exact(&mut chunk);
            if n == 0 {
                break;
            }
            req.body.extend_from_slice(&chunk[..n]);
        }
    }
    reqs.lock().unwrap().push(req.clone());
    let mut stream = stream;
    let wait = || {
        let start = Instant::now();
        while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    match handler(&req) {
        Reply::Full { status, headers, body } => {
            let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let _ = stream.write_all(out.as_bytes());
            if req.method != "HEAD" {
                let _ = stream.write_all(&body);
            }
        }
        Reply::Stall { total, sent } => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&sent);
            let _ = stream.flush();
            wait();
        }
        Reply::Hang => wait(),
    }
}

fn client(config: RegistryConfig) -> RegistryClient {
    RegistryClient::new(config)
}

fn fast_config() -> RegistryConfig {
    RegistryConfig {
        read_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn reference(host: &str, rest: &str) -> Reference {
    format!("{host}/{rest}").parse().unwrap()
}

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;

fn manifest_reply() -> Reply {
    reply(200).header("Content-Type", crate::manifest::OCI_MANIFEST).body(MANIFEST)
}

#[test]
fn bearer_challenge_token_and_retry() {
    let auth = TestServer::start(|req| {
        assert!(req.target.contains("service=test-registry"), "{}", req.target);
        assert!(req.target.contains("scope=repository%3Aapp%2Fx%3Apull"), "{}", req.target);
        assert_eq!(req.header("authorization"), None, "anonymous token request");
        reply(200).body(r#"{"access_token":"tok-123","expires_in":300}"#)
    });
    let realm = format!("{}/token", auth.url());
    let registry = TestServer::start(move |req| {
        if req.header("authorization") == Some("Bearer tok-123") {
            return manifest_reply();
        }
        reply(401)
            .header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}",service="test-registry""#))
            .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#)
    });
    let c = client(fast_config());
    let r = reference(&registry.host(), "app/x:1");
    let m = c.get_manifest(&r).unwrap();
    assert_eq!(m.bytes, MANIFEST.as_bytes());
    assert_eq!(m.digest, Digest::of(MANIFEST.as_bytes()));
    assert_eq!(m.media_type, crate::manifest::OCI_MANIFEST);
    let accept = registry.requests()[0].header("accept").unwrap_or("").to_string();
    for mt in ACCEPTED_MANIFEST_TYPES {
        assert!(accept.contains(mt), "{accept}");
    }
    // The token is cached: a second fetch goes straight through.
    c.get_manifest(&r).unwrap();
    assert_eq!(registry.requests().len(), 3);
    assert_eq!(auth.requests().len(), 1);
}

#[test]
fn identity_tokens_use_the_oauth2_refresh_grant() {
    let auth = TestServer::start(|req| {
        assert_eq!(req.method, "POST");
        let form = String::from_utf8_lossy(&req.body).into_owned();
        assert!(form.contains("grant_type=refresh_token") && form.contains("refresh_token=rt-1"), "{form}");
        assert!(form.contains("scope=repository%3Ax%3Apull") && form.contains("service=svc"), "{form}");
        reply(200).body(r#"{"access_token":"from-refresh"}"#)
    });
    let realm = format!("{}/oauth", auth.url());
    let registry = TestServer::start(move |req| match req.header("authorization") {
        Some("Bearer from-refresh") => manifest_reply(),
        _ => reply(401).header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}",service="svc""#)),
    });
    let c = client(fast_config());
    c.set_credentials(&registry.host(), Credential::IdentityToken("rt-1".into()));
    c.get_manifest(&reference(&registry.host(), "x:1")).unwrap();
    assert_eq!(auth.requests().len(), 1);
}

#[test]
fn forbidden_is_access_denied() {
    let registry = TestServer::start(|_| {
        reply(403).body(r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#)
    });
    let r = reference(&registry.host(), "team/app:1");
    let e = client(fast_config()).put_manifest(&r, b"{}", crate::manifest::OCI_MANIFEST).unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { action: "push", .. }), "{e}");
    assert!(e.to_string().starts_with(&format!("push access denied for {}/team/app", registry.host())), "{e}");
}

#[test]
fn basic_auth_from_docker_config() {
    let registry = TestServer::start(|req| match req.header("authorization") {
        Some("Basic dXNlcjpwYXNz") => manifest_reply(), // user:pass
        _ => reply(401).header("WWW-Authenticate", r#"Basic realm="test""#),
    });
    let dir = tempfile::tempdir().unwrap();
    let store = CredentialStore::new(dir.path());
    store.store(&registry.host(), "user", "pass").unwrap();
    let r = reference(&registry.host(), "x:1");
    client(fast_config()).with_credential_store(store).get_manifest(&r).unwrap();

    // wrong password: denied, with what to do
    let store = CredentialStore::new(dir.path());
    store.store(&registry.host(), "user", "wrong").unwrap();
    let e = client(fast_config()).with_credential_store(store).get_manifest(&r).unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("run `strata login {}`", registry.host())), "{msg}");
    assert!(msg.contains("requested access to the resource is denied"), "{msg}");
    // no credentials at all
    let e = client(fast_config()).get_manifest(&r).unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { action: "pull", .. }), "{e}");
}

fn mirror_config(registry: &TestServer, mirrors: Vec<String>) -> RegistryConfig {
    let mut c = fast_config();
    c.mirrors.insert(registry.host(), mirrors);
    c
}

#[test]
fn mirror_is_tried_first_and_falls_back() {
    let registry = TestServer::start(|_| manifest_reply());
    let missing = TestServer::start(|_| reply(404));
    let broken = TestServer::start(|_| reply(500));
    let dead_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let config = mirror_config(&registry, vec![format!("{}/", missing.url()), dead_port, broken.host()]);
    let r = reference(&registry.host(), "x:1");
    client(config).get_manifest(&r).unwrap();
    assert_eq!(missing.requests().len(), 1);
    assert_eq!(missing.requests()[0].path(), "/v2/x/manifests/1");
    assert_eq!(broken.requests().len(), 1);
    assert_eq!(registry.requests().len(), 1);

    // A working mirror serves and the registry is not asked.
    let good = TestServer::start(|_| manifest_reply());
    let registry2 = TestServer::start(|_| reply(500));
    let r2 = reference(&registry2.host(), "x:1");
    client(mirror_config(&registry2, vec![good.url()])).get_manifest(&r2).unwrap();
    assert_eq!(good.requests().len(), 1);
    assert!(registry2.requests().is_empty());
}

#[test]
fn docker_hub_mirror_paths() {
    let mirror = TestServer::start(|req| {
        assert_eq!(req.path(), "/v2/library/busybox/manifests/latest");
        manifest_reply()
    });
    let mut config = fast_config();
    config.mirrors.insert("docker.io".into(), vec![mirror.url()]);
    client(config).get_manifest(&"busybox".parse().unwrap()).unwrap();
    assert_eq!(mirror.requests().len(), 1);
}

#[test]
fn errors_carry_the_registry_message() {
    let registry = TestServer::start(|req| {
        if req.path().contains("/manifests/") {
            reply(500).body(r#"{"errors":[{"code":"UNKNOWN","message":"storage backend exploded"}]}"#)
        } else {
            reply(404).body(r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#)
        }
    });
    let c = client(fast_config());
    let r = reference(&registry.host(), "x:1");
    let e = c.get_manifest(&r).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::Http { status: 500, .. }), "{msg}");
    assert!(msg.contains("HTTP 500") && msg.contains("unknown: storage backend exploded"), "{msg}");
    let d = Digest::of(b"x");
    let e = c.get_blob(&r, &d).err().unwrap();
    assert!(e.is_not_found());
    assert_eq!(e.to_string(), format!("blob unknown: blob {d} of {0}/x not found in {0}", registry.host()));
}

#[test]
fn manifest_not_found_message() {
    let registry = TestServer::start(|_| reply(404));
    let r = reference(&registry.host(), "x:nope");
    let e = client(fast_config()).get_manifest(&r).unwrap_err();
    assert_eq!(e.to_string(), format!("manifest unknown: {0}/x:nope not found in {0}", registry.host()));
}

#[test]
fn idle_registry_times_out() {
    let hang = TestServer::start(|_| Reply::Hang);
    let mut config = fast_config();
    config.read_timeout = Duration::from_millis(300);
    let c = client(config);
    let start = Instant::now();
    let e = c.get_manifest(&reference(&hang.host(), "x:1")).unwrap_err();
    assert!(matches!(e, RegistryError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("timed out") && e.to_string().contains("STRATA_REGISTRY_TIMEOUT"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));

    // a blob that stops half-way: the reader errors instead of hanging
    let stall = TestServer::start(|_| Reply::Stall { total: 1000, sent: vec![7; 100] });
    let mut blob = c.get_blob(&reference(&stall.host(), "x:1"), &Digest::of(b"x")).ok().unwrap();
    let mut buf = Vec::new();
    let e = blob.read_to_end(&mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(buf.len(), 100);
}

#[test]
fn manifest_digests_are_verified() {
    let good = Digest::of(MANIFEST.as_bytes());
    let lying = TestServer::start(move |req| {
        if req.path().ends_with(&good.to_string()) {
            reply(200).body("{\"schemaVersion\":2}") // different bytes for the digest
        } else {
            manifest_reply().header("Docker-Content-Digest", &Digest::of(b"other").to_string())
        }
    });
    let c = client(fast_config());
    let by_digest = reference(&lying.host(), "x").with_digest(good);
    let e = c.get_manifest(&by_digest).unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { expected, .. } if expected == good), "{e}");
    let e = c.get_manifest(&reference(&lying.host(), "x:1")).unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");

    let honest = TestServer::start(move |_| manifest_reply().header("Docker-Content-Digest", &good.to_string()));
    let m = c.get_manifest(&reference(&honest.host(), "x").with_digest(good)).unwrap();
    assert_eq!(m.digest, good);
}

#[test]
fn oversized_manifest_is_refused() {
    let big = TestServer::start(|_| reply(200).body(vec![b' '; MAX_MANIFEST_SIZE as usize + 1]));
    let e = client(fast_config()).get_manifest(&reference(&big.host(), "x:1")).unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e}");
}

#[test]
fn blobs_follow_redirects_without_the_token() {
    let storage = TestServer::start(|req| {
        assert_eq!(req.header("authorization"), None, "token leaked to storage");
        if let Some(range) = req.header("range") {
            assert_eq!(range, "bytes=2-4");
            return reply(206).body("234");
        }
        reply(200).body("0123456789")
    });
    let auth = TestServer::start(|_| reply(200).body(r#"{"token":"t"}"#));
    let (storage_url, realm) = (storage.url(), format!("{}/token", auth.url()));
    let registry = TestServer::start(move |req| {
        if req.header("authorization") != Some("Bearer t") {
            return reply(401).header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}""#));
        }
        reply(307).header("Location", &format!("{storage_url}/bucket/blob?sig=1"))
    });
    let c = client(fast_config());
    let r = reference(&registry.host(), "x:1");
    let d = Digest::of(b"0123456789");
    let mut data = Vec::new();
    c.get_blob(&r, &d).ok().unwrap().read_to_end(&mut data).unwrap();
    assert_eq!(data, b"0123456789");
    assert_eq!(c.get_blob_range(&r, &d, 2, 3).unwrap(), b"234");
    assert_eq!(storage.requests().len(), 2);
}

#[test]
fn range_on_a_registry_that_ignores_ranges() {
    let registry = TestServer::start(|_| reply(200).body("0123456789"));
    let c = client(fast_config());
    let r = reference(&registry.host(), "x:1");
    let d = Digest::of(b"0123456789");
    assert_eq!(c.get_blob_range(&r, &d, 3, 4).unwrap(), b"3456");
    assert_eq!(c.get_blob_range(&r, &d, 8, 10).unwrap(), b"89");
    assert!(c.get_blob_range(&r, &d, 3, 0).unwrap().is_empty());
}

/// A minimal in-memory registry: blobs by digest, manifests by tag/digest, uploads.
fn fake_registry(required_auth: Option<&'static str>) -> TestServer {
    let blobs: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    TestServer::start(move |req| {
        if let Some(a) = required_auth {
            if req.header("authorization") != Some(a) {
                return reply(401).header("WWW-Authenticate", r#"Basic realm="fake""#);
            }
        }
        let mut blobs = blobs.lock().unwrap();
        let path = req.path().to_string();
        let query = req.target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
        match req.method.as_str() {
            "GET" if path == "/v2/" => reply(200).body("{}"),
            "POST" if path.ends_with("/blobs/uploads/") => {
                reply(202).header("Location", &format!("{path}session-1?_state=abc"))
            }
            "PUT" if path.contains("/blobs/uploads/session-1") => {
                assert!(query.contains("_state=abc"), "{query}");
                let digest = query.split('&').find_map(|kv| kv.strip_prefix("digest=")).unwrap().replace("%3A", ":");
                assert_eq!(Digest::of(&req.body).to_string(), digest);
                blobs.insert(digest.clone(), req.body.clone());
                reply(201).header("Docker-Content-Digest", &digest)
            }
            "PUT" if path.contains("/manifests/") => {
                let d = Digest::of(&req.body).to_string();
                let name = path.rsplit('/').next().unwrap().to_string();
                blobs.insert(format!("m:{name}"), req.body.clone());
                blobs.insert(format!("m:{d}"), req.body.clone());
                reply(201).header("Docker-Content-Digest", &d)
            }
            "GET" | "HEAD" => {
                let key = path.rsplit('/').next().unwrap().to_string();
                let key = if path.contains("/manifests/") { format!("m:{key}") } else { key };
                match blobs.get(&key) {
                    Some(b) => reply(200).body(b.clone()).header("Content-Type", crate::manifest::OCI_MANIFEST),
                    None => reply(404),
                }
            }
            _ => reply(405),
        }
    })
}

#[test]
fn push_then_pull() {
    let registry = fake_registry(None);
    let c = client(fast_config());
    let r = reference(&registry.host(), "team/app:v1");
    let data = b"layer bytes".to_vec();
    let d = Digest::of(&data);
    assert!(!c.blob_exists(&r, &d).unwrap());
    c.put_blob(&r, &d, data.len() as u64, &data[..]).unwrap();
    assert!(c.blob_exists(&r, &d).unwrap());
    let put = registry.requests().into_iter().find(|q| q.method == "PUT").unwrap();
    assert_eq!(put.header("content-length"), Some("11"));
    let mut back = Vec::new();
    c.get_blob(&r, &d).ok().unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, data);

    let md = c.put_manifest(&r, MANIFEST.as_bytes(), crate::manifest::OCI_MANIFEST).unwrap();
    assert_eq!(md, Digest::of(MANIFEST.as_bytes()));
    assert_eq!(c.get_manifest(&r).unwrap().digest, md);
    assert_eq!(c.get_manifest(&r.with_digest(md)).unwrap().bytes, MANIFEST.as_bytes());
    // a digest-only reference must match the bytes
    let e = c.put_manifest(&r.with_digest(Digest::of(b"x")), MANIFEST.as_bytes(), "x").unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
}

#[test]
fn push_never_uses_mirrors() {
    let registry = fake_registry(None);
    let mirror = TestServer::start(|_| reply(500));
    let c = client(mirror_config(&registry, vec![mirror.url()]));
    let r = reference(&registry.host(), "app:v1");
    let data = b"abc";
    c.put_blob(&r, &Digest::of(data), 3, &data[..]).unwrap();
    c.put_manifest(&r, MANIFEST.as_bytes(), crate::manifest::OCI_MANIFEST).unwrap();
    assert!(c.blob_exists(&r, &Digest::of(data)).unwrap());
    assert!(mirror.requests().is_empty());
}

#[test]
fn push_with_basic_auth_streams_after_the_challenge() {
    let registry = fake_registry(Some("Basic dTpw")); // u:p
    let c = client(fast_config());
    c.set_credentials(&registry.host(), Credential::Basic { username: "u".into(), password: "p".into() });
    let r = reference(&registry.host(), "app:v1");
    let data = vec![9u8; 100_000];
    c.put_blob(&r, &Digest::of(&data), data.len() as u64, &data[..]).unwrap();
    let reqs = registry.requests();
    // POST answered 401 once, then everything authenticated up front
    assert_eq!(reqs.iter().filter(|q| q.header("authorization").is_none()).count(), 1);
    assert_eq!(reqs.iter().filter(|q| q.method == "PUT").count(), 1);
}

#[test]
fn login_checks() {
    // token server that accepts u:p only
    let auth = TestServer::start(|req| match req.header("authorization") {
        Some("Basic dTpw") => reply(200).body(r#"{"token":"ok"}"#),
        _ => reply(401).body(r#"{"details":"incorrect username or password"}"#),
    });
    let realm = format!("{}/token", auth.url());
    let registry = TestServer::start(move |req| match req.header("authorization") {
        Some("Bearer ok") => reply(200).body("{}"),
        _ => reply(401).header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}",service="svc""#)),
    });
    let c = client(fast_config());
    c.check_login(&registry.host(), "u", "p").unwrap();
    let e = c.check_login(&registry.host(), "u", "bad").unwrap_err();
    assert_eq!(e.to_string(), format!("unauthorized: incorrect username or password for {}", registry.host()));
    assert!(auth.requests()[0].target.contains("account=u"));

    let basic = fake_registry(Some("Basic dTpw"));
    c.check_login(&basic.host(), "u", "p").unwrap();
    assert!(matches!(c.check_login(&basic.host(), "u", "x"), Err(RegistryError::BadCredentials { .. })));
    let open = TestServer::start(|_| reply(200).body("{}"));
    c.check_login(&open.host(), "any", "thing").unwrap();
}

#[test]
fn connection_errors_name_the_url() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let e = client(fast_config()).get_manifest(&reference(&dead, "x:1")).unwrap_err();
    assert!(matches!(e, RegistryError::Connection { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("http://{dead}/v2/x/manifests/1")), "{e}");
}

#[test]
fn helpers() {
    assert_eq!(encode_query("repository:a/b:pull,push"), "repository%3Aa%2Fb%3Apull%2Cpush");
    assert_eq!(resolve_location("http://h:1", "/v2/x/uploads/u?s=1"), "http://h:1/v2/x/uploads/u?s=1");
    assert_eq!(resolve_location("http://h:1/prefix", "v2/x"), "http://h:1/v2/x");
    assert_eq!(resolve_location("http://h:1", "https://other/u"), "https://other/u");
    assert_eq!(url_host("https://m.example:5000/path"), "m.example:5000");
}

/// Debian's `docker-registry` (distribution 2.8) on a loopback port, with
/// htpasswd basic auth when `auth` is given; killed on drop.
struct RealRegistry {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    host: String,
}

impl Drop for RealRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// None (test skipped) when docker-registry is not installed, except under CI.
fn real_registry(auth: Option<(&str, &str)>) -> Option<RealRegistry> {
    use std::process::{Command, Stdio};
    if Command::new("docker-registry").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "docker-registry is not installed (run scripts/setup.sh)");
        eprintln!("skipped: docker-registry is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut auth_yml = String::new();
    if let Some((u, p)) = auth {
        let out = Command::new("htpasswd").args(["-Bbn", u, p]).output().expect("htpasswd (apache2-utils)");
        assert!(out.status.success());
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, out.stdout).unwrap();
        auth_yml = format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", file.display());
    }
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("config.yml");
        let yml = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yml}",
            dir.path().join("data").display()
        );
        std::fs::write(&config, yml).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if child.try_wait().unwrap().is_some() {
                break; // port taken: try another
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(RealRegistry { child, _dir: dir, host: format!("127.0.0.1:{port}") });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("docker-registry did not start");
}

/// Pushes a one-layer image with our client, pulls it back, and lets skopeo
/// (another client) read it, against a real registry.
#[test]
fn real_registry_round_trip() {
    let Some(reg) = real_registry(None) else { return };
    let c = client(fast_config());
    let r = reference(&reg.host, "strata/round-trip:v1");

    let layer = {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    };
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    let (ld, cd) = (Digest::of(&layer), Digest::of(config));
    for (d, bytes) in [(ld, &layer[..]), (cd, &config[..])] {
        assert!(!c.blob_exists(&r, &d).unwrap());
        c.put_blob(&r, &d, bytes.len() as u64, bytes).unwrap();
        assert!(c.blob_exists(&r, &d).unwrap());
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{ld}","size":{}}}]}}"#,
        crate::manifest::OCI_MANIFEST,
        crate::manifest::OCI_CONFIG,
        config.len(),
        crate::manifest::OCI_LAYER_GZIP,
        layer.len()
    );
    let md = c.put_manifest(&r, manifest.as_bytes(), crate::manifest::OCI_MANIFEST).unwrap();

    let fetched = c.get_manifest(&r).unwrap();
    assert_eq!((fetched.digest, fetched.media_type.as_str()), (md, crate::manifest::OCI_MANIFEST));
    let crate::manifest::Manifest::Image(m) =
        crate::manifest::parse_manifest(&fetched.bytes, &fetched.media_type).unwrap()
    else {
        panic!("not an image manifest")
    };
    assert_eq!(m.layers[0].digest, ld);
    assert_eq!(c.get_manifest(&r.with_digest(md)).unwrap().bytes, manifest.as_bytes());
    let mut back = Vec::new();
    c.get_blob(&r, &ld).ok().unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, layer);
    assert_eq!(c.get_blob_range(&r, &ld, 1, 3).unwrap(), &layer[1..4]);
    let e = c.get_manifest(&r.with_tag("missing").unwrap()).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = c.get_blob(&r, &Digest::of(b"nope")).err().unwrap();
    assert!(e.is_not_found(), "{e}");

    // Another client agrees with what we pushed.
    if let Ok(out) = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{}/strata/round-trip:v1", reg.host)])
        .output()
    {
        assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(Digest::of(&out.stdout), md);
    }
}

#[test]
fn real_registry_with_htpasswd() {
    let Some(reg) = real_registry(Some(("alice", "s3cret"))) else { return };
    let r = reference(&reg.host, "private/app:v1");
    let anonymous = client(fast_config());
    let e = anonymous.get_manifest(&r).unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains(&format!("strata login {}", reg.host)), "{e}");
    assert!(matches!(anonymous.check_login(&reg.host, "alice", "wrong"), Err(RegistryError::BadCredentials { .. })));

    let dir = tempfile::tempdir().unwrap();
    let store = CredentialStore::new(dir.path());
    store.store(&reg.host, "alice", "s3cret").unwrap();
    let c = client(fast_config()).with_credential_store(store);
    c.check_login(&reg.host, "alice", "s3cret").unwrap();
    let data = b"private layer";
    c.put_blob(&r, &Digest::of(data), data.len() as u64, &data[..]).unwrap();
    let mut back = Vec::new();
    c.get_blob(&r, &Digest::of(data)).ok().unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn next_page_of_a_link_header() {
    use super::next_page;
    assert_eq!(
        next_page(r#"</v2/a/b/tags/list?last=x&n=2>; rel="next""#).as_deref(),
        Some("/v2/a/b/tags/list?last=x&n=2")
    );
    assert_eq!(
        next_page(r#"<https://r.example/first>; rel="prev", <https://r.example/v2/x/tags/list?last=9>;rel=next"#)
            .as_deref(),
        Some("https://r.example/v2/x/tags/list?last=9")
    );
    assert_eq!(next_page(r#"</v2/a/tags/list?last=x>; rel="prev""#), None);
    assert_eq!(next_page("garbage"), None);
}

#[test]
fn docker_hub_search_results_parse_with_nulls_and_unknown_fields() {
    let reply = r#"{"num_results":2,"query":"busybox","results":[
        {"name":"busybox","description":"Busybox base image.","star_count":3193,"is_official":true,
         "is_automated":false,"repo_owner":""},
        {"name":"someone/busybox","description":null,"star_count":null,"is_official":false}]}"#;
    #[derive(serde::Deserialize)]
    struct Reply {
        results: Vec<SearchResult>,
    }
    let r: Reply = serde_json::from_str(reply).unwrap();
    assert_eq!(
        r.results,
        [
            SearchResult {
                name: "busybox".into(),
                description: "Busybox base image.".into(),
                star_count: 3193,
                is_official: true,
                is_automated: false
            },
            SearchResult { name: "someone/busybox".into(), ..SearchResult::default() },
        ]
    );
}
