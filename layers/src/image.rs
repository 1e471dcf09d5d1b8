//! Image configs and image records.
//!
//! [`ImageConfig`] is a superset of the OCI image config and Docker's
//! `container_config` flavour of it: every field either tool writes has a
//! typed slot, and anything else lands in a `#[serde(flatten)]` map at the
//! level it appeared, so reading and re-serialising loses nothing. The raw
//! config bytes, as served, are still what the store keeps (as a blob): they
//! are the source of truth for the image ID, and this struct is only a view.
//! (`oci-spec`'s types drop Docker-only fields such as `Healthcheck`, `Shell`,
//! `OnBuild` and `ArgsEscaped`, hence our own.)
//!
//! [`ImageRecord`] is strata's own small JSON record of a stored image
//! (`images/HEX.json`, named by the config digest, which is Docker's IMAGE ID):
//! which manifest it came from, its layers with their sizes, the repo digests,
//! and the platform. Tags live elsewhere (`tags.json`, see the store).

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Unknown fields, kept verbatim.
pub type Extra = BTreeMap<String, Value>;

/// An OCI / Docker image configuration (`application/vnd.oci.image.config.v1+json`,
/// `application/vnd.docker.container.image.v1+json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<History>>,
    #[serde(flatten)]
    pub other: Extra,
}

/// The `config` object: how to run a container from the image. Field names
/// are Docker's (capitalised); `null` and absent are both `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    /// Docker-only fields (`Hostname`, `Tty`, `Image`, `StopTimeout`, ...) and
    /// anything newer.
    #[serde(flatten)]
    pub other: Extra,
}

/// Docker's `HEALTHCHECK`: durations are in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    #[serde(flatten)]
    pub other: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default = "layers_type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
    #[serde(flatten)]
    pub other: Extra,
}

fn layers_type() -> String {
    "layers".to_string()
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs { kind: layers_type(), diff_ids: Vec::new(), other: Extra::new() }
    }
}

/// One `history` entry; `empty_layer` entries (ENV, CMD, ...) have no layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub empty_layer: bool,
    #[serde(flatten)]
    pub other: Extra,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ImageConfig {
    /// Parses raw config bytes (as stored in the blob).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::InvalidImage(format!("image config is not valid JSON: {e}")))
    }

    /// Serialises the config. New configs (commit, build) are written with
    /// this; their digest is the digest of exactly these bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs and `Value` maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The container config, or an empty one when the image has none.
    pub fn container_config(&self) -> ContainerConfig {
        self.config.clone().unwrap_or_default()
    }
}

/// One layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// sha256 of the uncompressed tar: names `layers/HEX/`.
    pub diff_id: Digest,
    /// The (usually compressed) blob as the registry served it.
    pub blob_digest: Digest,
    pub blob_media_type: String,
    pub blob_size: u64,
    /// Sum of the regular-file sizes in the layer (what Docker reports as a
    /// layer's size).
    pub unpacked_size: u64,
    /// The TOC digest when the layer was pulled lazily (`lazy/HEX/`). It
    /// stays after a full pull has verified the layer, for the containers
    /// created from the lazy form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy_toc: Option<Digest>,
}

impl LayerRecord {
    /// What a container or mount made from this image now records for the
    /// layer (see [`crate::store::Store::open_layer`]): the diff_id once
    /// the layer is verified, else its lazy form.
    pub fn mount_key(&self, store: &crate::store::Store) -> String {
        match self.lazy_toc {
            Some(toc) if !store.has_layer(&self.diff_id) => format!("{LAZY_KEY_PREFIX}{toc}"),
            _ => self.diff_id.to_string(),
        }
    }

    /// True while the layer's content is only partly in the store.
    pub fn is_lazy(&self, store: &crate::store::Store) -> bool {
        self.lazy_toc.is_some() && !store.has_layer(&self.diff_id)
    }
}

/// Marks a lazily pulled layer in a [`LayerRecord::mount_key`].
pub const LAZY_KEY_PREFIX: &str = "lazy:";

/// strata's record of one stored image (`images/HEX.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest: Docker's IMAGE ID.
    pub id: Digest,
    /// The platform-specific image manifest (a blob in the store).
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    /// The image index the manifest was selected from, when there was one
    /// (also a blob in the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub layers: Vec<LayerRecord>,
    /// `docker.io/library/busybox@sha256:...` (full names; the digest is the
    /// top-level manifest's, as the registry names it).
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// The config's `created` time (RFC 3339), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Sum of the layers' unpacked sizes (Docker's SIZE column).
    pub size: u64,
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl ImageRecord {
    /// The image's parsed config, read from its blob (digest-verified).
    pub fn config(&self, store: &Store) -> Result<ImageConfig> {
        ImageConfig::from_bytes(&store.read_blob(&self.id)?)
    }

    /// The raw config bytes, exactly as stored.
    pub fn config_bytes(&self, store: &Store) -> Result<Vec<u8>> {
        store.read_blob(&self.id)
    }

    /// The layers' diff_ids, bottom first.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id).collect()
    }

    /// `os/architecture[/variant]`, as Docker prints platforms.
    pub fn platform_string(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// Docker's chain IDs: `chain[0] = diff_ids[0]`,
/// `chain[n] = sha256(chain[n-1] + " " + diff_ids[n])`. They name a layer
/// *with everything below it*, which is what `docker rmi` prints as deleted.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => *d,
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_CONFIG: &str = r#"{
        "architecture": "amd64",
        "config": {
            "Hostname": "", "Domainname": "", "User": "nobody", "AttachStdin": false, "Tty": false,
            "ExposedPorts": {"80/tcp": {}},
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"], "Entrypoint": null, "Image": "sha256:abc", "Volumes": {"/data": {}},
            "WorkingDir": "/srv", "Labels": {"a": "b"}, "StopSignal": "SIGQUIT", "ArgsEscaped": true,
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 30000000000, "Retries": 3},
            "Shell": ["/bin/ash", "-c"], "OnBuild": ["RUN true"], "StopTimeout": 5
        },
        "container": "0123", "container_config": {"Cmd": ["/bin/sh"]},
        "created": "2024-09-26T21:31:42Z", "docker_version": "23.0.11",
        "history": [
            {"created": "2024-09-26T21:31:42Z", "created_by": "ADD file:abc in / "},
            {"created": "2024-09-26T21:31:42Z", "created_by": "CMD [\"sh\"]", "empty_layer": true, "x-extra": 1}
        ],
        "os": "linux", "variant": "v8",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}
    }"#;

    #[test]
    fn docker_config_round_trips_without_loss() {
        let cfg = ImageConfig::from_bytes(DOCKER_CONFIG.as_bytes()).unwrap();
        let c = cfg.container_config();
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.shell.as_ref().map(|s| s.len()), Some(2));
        assert_eq!(c.on_build, Some(vec!["RUN true".to_string()]));
        assert_eq!(c.args_escaped, Some(true));
        assert_eq!(c.healthcheck.as_ref().and_then(|h| h.retries), Some(3));
        assert_eq!(c.other["StopTimeout"], 5);
        assert_eq!(cfg.other["docker_version"], "23.0.11");
        assert_eq!(cfg.rootfs.diff_ids.len(), 1);
        let h = cfg.history.as_ref().unwrap();
        assert!(h[1].empty_layer && !h[0].empty_layer);
        assert_eq!(h[1].other["x-extra"], 1);

        // Re-serialising keeps every field's value (key order and `null`s aside).
        let original: Value = serde_json::from_str(DOCKER_CONFIG).unwrap();
        let mut again: Value = serde_json::from_slice(&cfg.to_bytes()).unwrap();
        again["config"]["Entrypoint"] = Value::Null;
        assert_eq!(original, again);
    }

    #[test]
    fn minimal_oci_config() {
        let cfg = ImageConfig::from_bytes(
            br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert_eq!(cfg.architecture, "arm64");
        assert!(cfg.config.is_none());
        assert!(ImageConfig::from_bytes(b"[1,2]").is_err());
    }

    #[test]
    fn chain_ids_follow_docker() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chain = chain_ids(&[a, b]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of(format!("{a} {b}").as_bytes()));
    }
}
