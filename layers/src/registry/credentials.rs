//! Registry credentials in Docker's client config (`$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`), so that `docker login` and `strata login`
//! share one set of logins.
//!
//! Lookup order for a registry: its `credHelpers` entry, then an `auths` entry
//! with credentials (base64 `auth`, `username`/`password`, or `identitytoken`),
//! then the `credsStore` helper. Helpers are run as `docker-credential-NAME
//! get|store|erase`. Docker Hub's key is `https://index.docker.io/v1/`; `auths`
//! keys are matched with or without a scheme or path.
//!
//! We read and write the file ourselves rather than through the
//! `docker_credential` crate: it has no writing, does not normalise Docker
//! Hub's names for helpers, and hides helper failures' stderr.

use crate::reference::{normalize_registry, DOCKER_HUB};
use base64::Engine as _;
use serde_json::{Map, Value};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `auths` / helper key Docker uses for Docker Hub.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token realm.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot determine the Docker config directory: set DOCKER_CONFIG or HOME")]
    NoConfigDir,
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: std::io::Error },
    #[error("invalid {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("credential helper docker-credential-{helper} failed to {action} credentials for {registry}: {message}")]
    Helper { helper: String, action: &'static str, registry: String, message: String },
}

/// The Docker client config directory holding `config.json`.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    dir: PathBuf,
    /// Where to find `docker-credential-*` programs; `None` searches PATH.
    helper_dir: Option<PathBuf>,
}

/// The key Docker stores `registry`'s credentials under.
pub fn auth_key(registry: &str) -> String {
    let r = normalize_registry(registry);
    if r == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        r
    }
}

impl CredentialStore {
    /// `$DOCKER_CONFIG`, else `~/.docker`.
    pub fn from_env() -> Result<Self, CredentialError> {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".docker")))
            .ok_or(CredentialError::NoConfigDir)?;
        Ok(Self::new(dir))
    }

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CredentialStore { dir: dir.into(), helper_dir: None }
    }

    /// The Docker config directory this store reads.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs credential helpers from `dir` instead of PATH.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.helper_dir = Some(dir.into());
        self
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    fn read_config(&self) -> Result<Map<String, Value>, CredentialError> {
        let path = self.config_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(cause) => return Err(CredentialError::Read { path, cause }),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(CredentialError::Invalid { path, message: "expected a JSON object".into() }),
            Err(e) => Err(CredentialError::Invalid { path, message: e.to_string() }),
        }
    }

    /// The helper configured for `key`, if any: `credHelpers[key]`, else `credsStore`.
    fn helper_for(config: &Map<String, Value>, key: &str) -> (Option<String>, Option<String>) {
        let specific = config
            .get("credHelpers")
            .and_then(|h| h.get(key).or_else(|| h.get(normalize_registry(key))))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let store = config.get("credsStore").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        (specific, store)
    }

    /// Credentials for `registry`, or `None` when there are none.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        let config = self.read_config()?;
        let key = auth_key(registry);
        let (specific, store) = Self::helper_for(&config, &key);
        if let Some(helper) = specific {
            return self.helper_get(&helper, &key);
        }
        let wanted = normalize_registry(registry);
        if let Some(auths) = config.get("auths").and_then(Value::as_object) {
            // An exact key first, then any key naming the same registry.
            let entry =
                auths.get(&key).or_else(|| auths.iter().find(|(k, _)| normalize_registry(k) == wanted).map(|(_, v)| v));
            if let Some(cred) = entry.and_then(|e| self.parse_entry(e).transpose()) {
                return cred.map(Some);
            }
        }
        match store {
            Some(helper) => self.helper_get(&helper, &key),
            None => Ok(None),
        }
    }

    fn parse_entry(&self, entry: &Value) -> Result<Option<Credential>, CredentialError> {
        let field = |name: &str| entry.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
        if let Some(token) = field("identitytoken") {
            return Ok(Some(Credential::IdentityToken(token.to_string())));
        }
        if let Some(auth) = field("auth") {
            let invalid =
                |message: &str| CredentialError::Invalid { path: self.config_path(), message: message.into() };
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            let decoded = engine.decode(auth.trim()).map_err(|_| invalid("an \"auth\" value is not base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| invalid("an \"auth\" value is not UTF-8"))?;
            let (u, p) = decoded.split_once(':').ok_or_else(|| invalid("an \"auth\" value is not user:password"))?;
            return Ok(Some(Credential::Basic { username: u.to_string(), password: p.to_string() }));
        }
        if let (Some(u), Some(p)) = (field("username"), field("password")) {
            return Ok(Some(Credential::Basic { username: u.to_string(), password: p.to_string() }));
        }
        Ok(None)
    }

    /// Saves credentials for `registry` the way `docker login` does: in the
    /// configured helper if there is one (leaving an empty `auths` entry), else
    /// base64 in `auths`. Other keys of the file are kept.
    pub fn store(&self, registry: &str, username: &str, password: &str) -> Result<(), CredentialError> {
        let mut config = self.read_config()?;
        let key = auth_key(registry);
        let (specific, store) = Self::helper_for(&config, &key);
        let entry = match specific.or(store) {
            Some(helper) => {
                let input = serde_json::json!({"ServerURL": key, "Username": username, "Secret": password});
                self.run_helper(&helper, "store", &key, input.to_string().as_bytes())?;
                Value::Object(Map::new())
            }
            None => {
                let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
                serde_json::json!({ "auth": auth })
            }
        };
        let auths = config.entry("auths").or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        if let Value::Object(auths) = auths {
            let wanted = normalize_registry(registry);
            auths.retain(|k, _| normalize_registry(k) != wanted);
            auths.insert(key, entry);
        }
        self.write_config(&config)
    }

    /// Forgets `registry`'s credentials (file entries and the helper's).
    /// Returns false when there were none in the file.
    pub fn remove(&self, registry: &str) -> Result<bool, CredentialError> {
        let mut config = self.read_config()?;
        let key = auth_key(registry);
        let (specific, store) = Self::helper_for(&config, &key);
        if let Some(helper) = specific.or(store) {
            // Like docker logout: a helper that has nothing to erase is not an error.
            let _ = self.run_helper(&helper, "erase", &key, key.as_bytes());
        }
        let wanted = normalize_registry(registry);
        let mut removed = false;
        if let Some(Value::Object(auths)) = config.get_mut("auths") {
            let before = auths.len();
            auths.retain(|k, _| normalize_registry(k) != wanted);
            removed = auths.len() != before;
        }
        if removed {
            self.write_config(&config)?;
        }
        Ok(removed)
    }

    /// Atomically replaces config.json (temp file, fsync, rename, fsync dir),
    /// mode 0600 in a 0700 directory. A symlinked config.json is written through.
    fn write_config(&self, config: &Map<String, Value>) -> Result<(), CredentialError> {
        let mut path = self.config_path();
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| CredentialError::Write { path, cause }
        };
        if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            path = std::fs::canonicalize(&path).map_err(werr(&path))?;
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.dir.clone());
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(werr(&dir))?;
        let mut bytes = serde_json::to_vec_pretty(config)
            .map_err(|e| CredentialError::Invalid { path: path.clone(), message: e.to_string() })?;
        bytes.push(b'\n');
        // tempfile creates files with mode 0600.
        let mut tmp = tempfile::Builder::new().prefix(".config.json.").tempfile_in(&dir).map_err(werr(&dir))?;
        tmp.write_all(&bytes).map_err(werr(tmp.path()))?;
        tmp.as_file().sync_all().map_err(werr(tmp.path()))?;
        tmp.persist(&path).map_err(|e| CredentialError::Write { path: path.clone(), cause: e.error })?;
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(werr(&dir))?;
        Ok(())
    }

    fn helper_get(&self, helper: &str, key: &str) -> Result<Option<Credential>, CredentialError> {
        let out = match self.run_helper(helper, "get", key, key.as_bytes()) {
            Ok(out) => out,
            // The helper protocol's answer for "nothing stored".
            Err(CredentialError::Helper { message, .. }) if message.contains("credentials not found") => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            username: String,
            secret: String,
        }
        let reply: Reply = serde_json::from_slice(&out).map_err(|e| CredentialError::Helper {
            helper: helper.to_string(),
            action: "get",
            registry: key.to_string(),
            message: format!("unreadable reply: {e}"),
        })?;
        if reply.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(if reply.username == "<token>" {
            Credential::IdentityToken(reply.secret)
        } else {
            Credential::Basic { username: reply.username, password: reply.secret }
        }))
    }

    fn run_helper(
        &self,
        helper: &str,
        action: &'static str,
        key: &str,
        input: &[u8],
    ) -> Result<Vec<u8>, CredentialError> {
        let program = format!("docker-credential-{helper}");
        let program = match &self.helper_dir {
            Some(d) => d.join(&program),
            None => PathBuf::from(program),
        };
        let fail = |message: String| CredentialError::Helper {
            helper: helper.to_string(),
            action,
            registry: key.to_string(),
            message,
        };
        let mut child = Command::new(&program)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading its input is reported by its status below.
            let _ = stdin.write_all(input);
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(if out.stdout.is_empty() { &out.stderr } else { &out.stdout });
            return Err(fail(format!("{} ({})", text.trim(), out.status)));
        }
        Ok(out.stdout)
    }
}

/// `docker login`'s write: see [`CredentialStore::store`] (config from `$DOCKER_CONFIG` or `~/.docker`).
pub fn store_credentials(registry: &str, username: &str, password: &str) -> Result<(), CredentialError> {
    CredentialStore::from_env()?.store(registry, username, password)
}

/// `docker logout`'s removal: see [`CredentialStore::remove`].
pub fn remove_credentials(registry: &str) -> Result<bool, CredentialError> {
    CredentialStore::from_env()?.remove(registry)
}

/// Credentials for `registry` from `$DOCKER_CONFIG` or `~/.docker`.
pub fn lookup_credentials(registry: &str) -> Result<Option<Credential>, CredentialError> {
    CredentialStore::from_env()?.lookup(registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn basic(u: &str, p: &str) -> Option<Credential> {
        Some(Credential::Basic { username: u.into(), password: p.into() })
    }

    #[test]
    fn reads_auths_in_every_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let config = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:pw:with:colons")},
                "http://localhost:5000": {"auth": b64("loc:al").trim_end_matches('=')},
                "ghcr.io": {"username": "gh", "password": "tok"},
                "quay.io": {"identitytoken": "refresh"},
                "empty.io": {}
            },
            "psFormat": "table {{.ID}}"
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let s = CredentialStore::new(dir.path());
        assert_eq!(s.lookup("docker.io").unwrap(), basic("hub", "pw:with:colons"));
        assert_eq!(s.lookup("index.docker.io").unwrap(), basic("hub", "pw:with:colons"));
        assert_eq!(s.lookup("localhost:5000").unwrap(), basic("loc", "al"));
        assert_eq!(s.lookup("ghcr.io").unwrap(), basic("gh", "tok"));
        assert_eq!(s.lookup("quay.io").unwrap(), Some(Credential::IdentityToken("refresh".into())));
        assert_eq!(s.lookup("empty.io").unwrap(), None);
        assert_eq!(s.lookup("other.io").unwrap(), None);
        assert_eq!(CredentialStore::new(dir.path().join("missing")).lookup("x.io").unwrap(), None);
        assert!(!format!("{:?}", s.lookup("ghcr.io").unwrap()).contains("tok"));
    }

    #[test]
    fn store_and_remove_keep_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let docker_dir = dir.path().join("d");
        let s = CredentialStore::new(&docker_dir);
        s.store("localhost:5000", "u", "p").unwrap();
        assert_eq!(std::fs::metadata(&docker_dir).unwrap().permissions().mode() & 0o777, 0o700);
        let path = s.config_path();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(s.lookup("localhost:5000").unwrap(), basic("u", "p"));

        // keys written by others survive; a stale spelling is replaced
        let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["detachKeys"] = "ctrl-x".into();
        v["auths"]["http://localhost:5000/"] = serde_json::json!({"auth": "eDp5"});
        std::fs::write(&path, v.to_string()).unwrap();
        s.store("docker.io", "hub", "secret").unwrap();
        s.store("localhost:5000", "u2", "p2").unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["detachKeys"], "ctrl-x");
        assert_eq!(v["auths"].as_object().unwrap().len(), 2, "{v}");
        assert!(v["auths"][DOCKER_HUB_AUTH_KEY]["auth"].is_string());
        assert_eq!(s.lookup("localhost:5000").unwrap(), basic("u2", "p2"));

        assert!(s.remove("localhost:5000").unwrap());
        assert!(!s.remove("localhost:5000").unwrap());
        assert_eq!(s.lookup("localhost:5000").unwrap(), None);
        assert_eq!(s.lookup("docker.io").unwrap(), basic("hub", "secret"));
        let leftovers: Vec<_> = std::fs::read_dir(&docker_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn refuses_to_clobber_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{ broken").unwrap();
        let s = CredentialStore::new(dir.path());
        assert!(matches!(s.store("x.io", "u", "p"), Err(CredentialError::Invalid { .. })));
        assert_eq!(std::fs::read_to_string(dir.path().join("config.json")).unwrap(), "{ broken");
    }

    #[test]
    fn credential_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let log = dir.path().join("helper.log");
        // A helper that knows one registry and logs what it is asked.
        let script = format!(
            "#!/bin/sh\nread -r input\necho \"$1 $input\" >> {log}\ncase \"$1:$input\" in\n\
             get:registry.test) echo '{{\"ServerURL\":\"registry.test\",\"Username\":\"hu\",\"Secret\":\"hs\"}}' ;;\n\
             get:*) echo 'credentials not found in native keychain'; exit 1 ;;\n\
             esac\n",
            log = log.display()
        );
        let helper = bin.join("docker-credential-fake");
        std::fs::write(&helper, script).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"credsStore":"fake","credHelpers":{"broken.test":"missing"},"auths":{"file.test":{"auth":"YTpi"}}}"#,
        )
        .unwrap();
        let s = CredentialStore::new(dir.path()).with_helper_dir(&bin);
        assert_eq!(s.lookup("registry.test").unwrap(), basic("hu", "hs"));
        assert_eq!(s.lookup("docker.io").unwrap(), None);
        assert_eq!(s.lookup("file.test").unwrap(), basic("a", "b"));
        let e = s.lookup("broken.test").unwrap_err().to_string();
        assert!(e.contains("docker-credential-missing"), "{e}");

        s.store("registry.test", "nu", "ns").unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(s.config_path()).unwrap()).unwrap();
        assert_eq!(v["auths"]["registry.test"], serde_json::json!({}));
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(log.contains("get https://index.docker.io/v1/"), "{log}");
        assert!(log.contains("store {") && log.contains(r#""ServerURL":"registry.test""#), "{log}");
    }
}
