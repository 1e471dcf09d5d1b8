//! Registry settings: mirrors, registries reached over plain HTTP, timeouts.
//!
//! Read from one JSON file: `$STRATA_REGISTRIES_CONFIG` when set, else
//! `/etc/strata/registries.json` for root and `$XDG_CONFIG_HOME/strata/registries.json`
//! (or `~/.config/strata/registries.json`) for everyone else. A missing file
//! means no mirrors. The file may be (a copy of) Docker's `daemon.json`:
//!
//! ```json
//! { "registry-mirrors": ["https://mirror.example"],   // mirrors of docker.io
//!   "insecure-registries": ["registry.lan:5000"],
//!   "mirrors": { "ghcr.io": ["http://127.0.0.1:5001", "cache.lan:5000"] },
//!   "timeout": 30 }
//! ```
//!
//! Unknown keys are ignored so that a whole daemon.json can be used.

use crate::reference::normalize_registry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "STRATA_REGISTRIES_CONFIG";
/// Environment variable overriding the idle read timeout, in seconds.
pub const TIMEOUT_ENV: &str = "STRATA_REGISTRY_TIMEOUT";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest read timeout accepted (a day): the HTTP client adds it to the
/// current instant, which a larger value could overflow.
pub const MAX_READ_TIMEOUT_SECS: f64 = 86_400.0;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read registry configuration {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("invalid registry configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "invalid {TIMEOUT_ENV} value {0:?}: expected a number of seconds greater than 0 and at most {MAX_READ_TIMEOUT_SECS}"
    )]
    Timeout(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registry (normalised, `docker.io` for Docker Hub) -> mirrors to try
    /// first for pulls, in order. An entry is a URL (`https://m.example`,
    /// `http://127.0.0.1:5001`) or a bare `host[:port]`.
    pub mirrors: HashMap<String, Vec<String>>,
    /// Registries reached over plain HTTP (`host` or `host:port`), in addition
    /// to loopback ones, which always are.
    pub insecure: Vec<String>,
    /// Longest wait to establish a connection.
    pub connect_timeout: Duration,
    /// Longest wait for any single read (idle time), headers or body.
    pub read_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            mirrors: HashMap::new(),
            insecure: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

#[derive(serde::Deserialize, Default)]
struct FileFormat {
    #[serde(default, rename = "registry-mirrors")]
    registry_mirrors: Vec<String>,
    #[serde(default, rename = "insecure-registries")]
    insecure_registries: Vec<String>,
    #[serde(default)]
    mirrors: HashMap<String, Vec<String>>,
    #[serde(default)]
    timeout: Option<f64>,
}

impl RegistryConfig {
    /// Where [`RegistryConfig::load`] reads from.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        if rustix::process::geteuid().is_root() {
            return Some(PathBuf::from("/etc/strata/registries.json"));
        }
        let config_dir = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".config")))?;
        Some(config_dir.join("strata/registries.json"))
    }

    /// Loads the configuration from [`RegistryConfig::default_path`] (defaults
    /// when the file does not exist), then applies `STRATA_REGISTRY_TIMEOUT`.
    pub fn load() -> Result<Self, ConfigError> {
        let mut config = match Self::default_path() {
            Some(path) if path.exists() || std::env::var_os(CONFIG_ENV).is_some_and(|p| !p.is_empty()) => {
                Self::from_file(&path)?
            }
            _ => RegistryConfig::default(),
        };
        if let Some(v) = std::env::var_os(TIMEOUT_ENV) {
            let v = v.to_string_lossy().into_owned();
            config.read_timeout = parse_seconds(&v).ok_or(ConfigError::Timeout(v))?;
        }
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|cause| ConfigError::Read { path: path.to_path_buf(), cause })?;
        Self::from_json(&bytes).map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })
    }

    fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let file: FileFormat = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut config = RegistryConfig::default();
        for (registry, list) in file.mirrors {
            config.mirrors.entry(normalize_registry(&registry)).or_default().extend(list);
        }
        if !file.registry_mirrors.is_empty() {
            config.mirrors.entry("docker.io".to_string()).or_default().extend(file.registry_mirrors);
        }
        config.insecure = file.insecure_registries;
        if let Some(t) = file.timeout {
            config.read_timeout = timeout_from_secs(t).ok_or_else(|| {
                format!(
                    "\"timeout\" must be a number of seconds greater than 0 and at most {MAX_READ_TIMEOUT_SECS}, not {t}"
                )
            })?;
        }
        Ok(config)
    }

    /// Mirrors configured for `registry` (normalised name).
    pub fn mirrors_for(&self, registry: &str) -> &[String] {
        self.mirrors.get(registry).map(Vec::as_slice).unwrap_or(&[])
    }

    /// True when `host` (`host[:port]`) is spoken to over plain HTTP: loopback
    /// addresses and registries listed as insecure (with or without the port).
    pub fn is_plain_http(&self, host: &str) -> bool {
        if is_loopback(host) {
            return true;
        }
        let bare = host_without_port(host);
        self.insecure.iter().any(|i| {
            let i = i.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
            i == host || i == bare
        })
    }

    /// `scheme://host` for a registry host.
    pub fn base_url(&self, host: &str) -> String {
        let scheme = if self.is_plain_http(host) { "http" } else { "https" };
        format!("{scheme}://{host}")
    }

    /// `scheme://host[:port][/path]` for a mirror entry: a URL is kept (minus a
    /// trailing '/'), a bare host gets the scheme [`Self::base_url`] would give it.
    pub fn mirror_url(&self, entry: &str) -> String {
        let entry = entry.trim().trim_end_matches('/');
        if entry.starts_with("http://") || entry.starts_with("https://") {
            entry.to_string()
        } else {
            self.base_url(entry)
        }
    }
}

pub fn parse_seconds(v: &str) -> Option<Duration> {
    timeout_from_secs(v.trim().parse().ok()?)
}

/// A read timeout of `secs` seconds, if that is in (0, [`MAX_READ_TIMEOUT_SECS`]].
fn timeout_from_secs(secs: f64) -> Option<Duration> {
    if !(secs > 0.0 && secs <= MAX_READ_TIMEOUT_SECS) {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// `host` without `:port` (brackets of an IPv6 literal kept).
pub(crate) fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// localhost, 127.0.0.0/8 and ::1, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let h = host_without_port(host);
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_daemon_json_and_our_keys() {
        let json = br#"{
            "registry-mirrors": ["https://mirror.example/"],
            "insecure-registries": ["registry.lan:5000", "plain.lan"],
            "mirrors": {"ghcr.io": ["http://127.0.0.1:5001", "cache.lan:5000"], "index.docker.io": ["m2:1"]},
            "log-level": "debug",
            "timeout": 2.5
        }"#;
        let c = RegistryConfig::from_json(json).unwrap();
        assert_eq!(c.mirrors_for("docker.io"), ["m2:1".to_string(), "https://mirror.example/".to_string()]);
        assert_eq!(c.mirrors_for("ghcr.io").len(), 2);
        assert!(c.mirrors_for("quay.io").is_empty());
        assert_eq!(c.read_timeout, Duration::from_millis(2500));
        assert!(c.is_plain_http("registry.lan:5000"));
        assert!(c.is_plain_http("plain.lan:8080"));
        assert!(!c.is_plain_http("registry.lan:5001"));
        assert!(!c.is_plain_http("ghcr.io"));
        assert_eq!(c.mirror_url("https://mirror.example/"), "https://mirror.example");
        assert_eq!(c.mirror_url("127.0.0.1:5001"), "http://127.0.0.1:5001");
        assert_eq!(c.mirror_url("cache.lan:5000"), "https://cache.lan:5000");
        assert_eq!(c.base_url("localhost:5000"), "http://localhost:5000");
        assert!(RegistryConfig::from_json(b"{\"timeout\": 0}").is_err());
        assert!(RegistryConfig::from_json(b"[1]").is_err());
        assert_eq!(RegistryConfig::from_json(b"{}").unwrap(), RegistryConfig::default());
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "localhost:5000", "127.0.0.1", "127.1.2.3:80", "[::1]", "[::1]:5000", "LOCALHOST"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1:5000", "example.com", "[fe80::1]:5000", "128.0.0.1", "localhost.example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn loads_from_env_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, br#"{"registry-mirrors":["http://127.0.0.1:1"]}"#).unwrap();
        let c = RegistryConfig::from_file(&path).unwrap();
        assert_eq!(c.mirrors_for("docker.io"), ["http://127.0.0.1:1".to_string()]);
        std::fs::write(&path, b"{").unwrap();
        let e = RegistryConfig::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("invalid registry configuration") && e.contains("r.json"), "{e}");
        assert!(parse_seconds("0").is_none() && parse_seconds("x").is_none());
        assert_eq!(parse_seconds("1.5"), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn huge_timeouts_are_refused() {
        for v in ["1e20", "1e300", "18446744073709551616", "86401", "inf", "NaN", "-1"] {
            assert_eq!(parse_seconds(v), None, "{v}");
        }
        assert_eq!(parse_seconds("86400"), Some(Duration::from_secs(86_400)));
        let e = ConfigError::Timeout("1e20".into()).to_string();
        assert!(e.contains(TIMEOUT_ENV) && e.contains("at most 86400"), "{e}");

        for json in [&br#"{"timeout": 1e300}"#[..], br#"{"timeout": 1e20}"#, br#"{"timeout": 100000}"#] {
            let e = RegistryConfig::from_json(json).unwrap_err();
            assert!(e.contains("\"timeout\"") && e.contains("at most 86400"), "{e}");
        }
        let c = RegistryConfig::from_json(br#"{"timeout": 86400}"#).unwrap();
        assert_eq!(c.read_timeout, Duration::from_secs(86_400));
    }
}
