//! Image manifests and indexes (OCI image-spec v1 and Docker schema 2), their
//! media types, layer compression, and choosing a platform from an index.
//!
//! The types here are our own small serde structs rather than `oci-spec`'s:
//! - descriptors carry our [`Digest`] (validated sha256, the name of every
//!   blob in the store) instead of a second digest type to convert at every use;
//! - media types stay plain strings, so Docker's and OCI's are handled alike and
//!   an unknown one can be reported by name rather than failing inside serde;
//! - plain structs with public fields are simpler to build (commit, push) than
//!   oci-spec's builders.
//!
//! A manifest's bytes are what its digest covers, so callers keep and push the
//! bytes as served; these structs are only read from them (or serialised once,
//! when strata writes a new manifest).

use crate::digest::Digest;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Non-distributable ("foreign") OCI layers: deprecated in image-spec 1.1 but still served.
pub const OCI_LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDIST_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NONDIST_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Uncompressed and zstd Docker layer types, as containerd and BuildKit write them.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
pub const DOCKER_LAYER_FOREIGN_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const DOCKER_SCHEMA1_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Every manifest type the client can use, for the `Accept` header.
pub const ACCEPTED_MANIFEST_TYPES: [&str; 4] = [OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error(
        "image manifest schema 1 (Docker's format from before 2017) is not supported; \
         re-push the image with a current tool (docker push, skopeo copy, buildah push) to get a schema 2 or OCI manifest"
    )]
    Schema1,
    #[error(
        "unsupported manifest media type {0:?}: expected an OCI image manifest or index, \
         or a Docker schema 2 manifest or manifest list"
    )]
    UnknownMediaType(String),
    #[error(
        "layer {digest} has media type {media_type:?}, which is not a container image layer \
         (tar, tar+gzip or tar+zstd); this artifact is not a container image"
    )]
    UnknownLayerMediaType { media_type: String, digest: String },
    #[error("config media type {0:?} is not a container image config; this artifact is not a container image")]
    UnknownConfigMediaType(String),
    #[error("malformed {kind}: {message}")]
    Invalid { kind: &'static str, message: String },
    #[error("no matching manifest for {wanted} in the manifest list entries (available: {})", available.join(", "))]
    NoMatchingPlatform { wanted: String, available: Vec<String> },
    #[error("invalid platform {0:?}: expected os/arch[/variant], for example linux/amd64 or linux/arm64/v8")]
    InvalidPlatform(String),
}

/// A reference to a blob or manifest: what it is, its digest and size.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Where foreign layers may be fetched from (Windows base layers).
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
            urls: Vec::new(),
            artifact_type: None,
        }
    }

    /// True for non-distributable layers, which registries may refuse to serve.
    pub fn is_foreign(&self) -> bool {
        is_foreign_layer(&self.media_type)
    }
}

/// A single-platform image: config plus layers, bottom first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(deserialize_with = "null_as_default")]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A multi-platform image: an OCI index or a Docker manifest list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest of either kind.
// Not boxed: one per pull, and plain variants keep matching on it simple.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

impl Manifest {
    /// The media type the manifest was parsed as.
    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image(m) => m.media_type.as_deref().unwrap_or(OCI_MANIFEST),
            Manifest::Index(i) => i.media_type.as_deref().unwrap_or(OCI_INDEX),
        }
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Strips parameters and whitespace from a Content-Type value.
fn bare_media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

pub fn is_manifest_media_type(mt: &str) -> bool {
    matches!(mt, OCI_MANIFEST | DOCKER_MANIFEST)
}

pub fn is_index_media_type(mt: &str) -> bool {
    matches!(mt, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

pub fn is_foreign_layer(mt: &str) -> bool {
    matches!(mt, OCI_LAYER_NONDIST_TAR | OCI_LAYER_NONDIST_GZIP | OCI_LAYER_NONDIST_ZSTD | DOCKER_LAYER_FOREIGN_GZIP)
}

/// Parses manifest bytes as served by a registry (or read from a layout).
///
/// The media type is taken from the document's `mediaType` field, else from
/// `content_type` (a Content-Type header, parameters allowed, may be empty),
/// else guessed from the document's shape as the OCI spec allows. Schema 1,
/// unknown manifest types, and manifests whose config or layers are not a
/// container image's are refused with an error saying which.
pub fn parse_manifest(bytes: &[u8], content_type: &str) -> Result<Manifest, ManifestError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
    let Some(obj) = value.as_object() else {
        return Err(ManifestError::NotJson("expected a JSON object".to_string()));
    };
    let content_type = bare_media_type(content_type);
    if obj.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1)
        || matches!(content_type, DOCKER_SCHEMA1_MANIFEST | DOCKER_SCHEMA1_SIGNED_MANIFEST)
    {
        return Err(ManifestError::Schema1);
    }
    let declared = obj.get("mediaType").and_then(|v| v.as_str());
    let media_type = match declared {
        Some(mt) => mt.to_string(),
        None if is_manifest_media_type(content_type) || is_index_media_type(content_type) => content_type.to_string(),
        // OCI allows omitting mediaType; tell the kinds apart by their fields.
        None if obj.contains_key("manifests") => OCI_INDEX.to_string(),
        None if obj.contains_key("config") && obj.contains_key("layers") => OCI_MANIFEST.to_string(),
        None => content_type.to_string(),
    };
    if matches!(media_type.as_str(), DOCKER_SCHEMA1_MANIFEST | DOCKER_SCHEMA1_SIGNED_MANIFEST) {
        return Err(ManifestError::Schema1);
    }
    let invalid = |kind: &'static str, e: serde_json::Error| ManifestError::Invalid { kind, message: e.to_string() };
    if is_manifest_media_type(&media_type) {
        let mut m: ImageManifest = serde_json::from_value(value).map_err(|e| invalid("image manifest", e))?;
        check_schema_version(m.schema_version, "image manifest")?;
        if !matches!(m.config.media_type.as_str(), OCI_CONFIG | DOCKER_CONFIG) {
            return Err(ManifestError::UnknownConfigMediaType(m.config.media_type.clone()));
        }
        for layer in &m.layers {
            LayerCompression::from_media_type(&layer.media_type).map_err(|_| ManifestError::UnknownLayerMediaType {
                media_type: layer.media_type.clone(),
                digest: layer.digest.to_string(),
            })?;
        }
        m.media_type = Some(media_type);
        Ok(Manifest::Image(m))
    } else if is_index_media_type(&media_type) {
        let mut i: ImageIndex = serde_json::from_value(value).map_err(|e| invalid("image index", e))?;
        check_schema_version(i.schema_version, "image index")?;
        i.media_type = Some(media_type);
        Ok(Manifest::Index(i))
    } else {
        Err(ManifestError::UnknownMediaType(media_type))
    }
}

fn check_schema_version(v: u32, kind: &'static str) -> Result<(), ManifestError> {
    if v == 2 {
        Ok(())
    } else {
        Err(ManifestError::Invalid { kind, message: format!("schemaVersion is {v}, expected 2") })
    }
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    /// The compression a layer media type declares; an error for anything
    /// that is not a tar layer.
    pub fn from_media_type(mt: &str) -> Result<Self, ManifestError> {
        match bare_media_type(mt) {
            OCI_LAYER_TAR | OCI_LAYER_NONDIST_TAR | DOCKER_LAYER_TAR => Ok(LayerCompression::None),
            OCI_LAYER_GZIP | OCI_LAYER_NONDIST_GZIP | DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN_GZIP => {
                Ok(LayerCompression::Gzip)
            }
            OCI_LAYER_ZSTD | OCI_LAYER_NONDIST_ZSTD | DOCKER_LAYER_ZSTD => Ok(LayerCompression::Zstd),
            other => Err(ManifestError::UnknownLayerMediaType { media_type: other.to_string(), digest: String::new() }),
        }
    }

    /// Recognises the compression from a blob's first bytes (gzip and zstd
    /// magic numbers); anything else is taken as a plain tar.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            LayerCompression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            LayerCompression::Zstd
        } else {
            LayerCompression::None
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            LayerCompression::None => OCI_LAYER_TAR,
            LayerCompression::Gzip => OCI_LAYER_GZIP,
            LayerCompression::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// An image platform. Field names follow the OCI descriptor's `platform`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub os_features: Vec<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
            ..Default::default()
        }
    }

    /// The platform strata runs on: linux plus Go's name for this CPU.
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform::new("linux", arch, variant)
    }

    /// (os, architecture, variant) with aliases resolved and default variants
    /// made explicit, as containerd normalises them: x86_64 = amd64,
    /// aarch64 = arm64 = arm64/v8, arm = arm/v7, armhf = arm/v7, armel = arm/v6.
    pub fn normalized(&self) -> (String, String, String) {
        let os = match self.os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_string(),
            o => o.to_string(),
        };
        let variant = self.variant.as_deref().unwrap_or("").to_ascii_lowercase();
        let (arch, variant) = match self.architecture.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" => ("amd64", if variant == "v1" { String::new() } else { variant }),
            "i386" | "386" => ("386", String::new()),
            "aarch64" | "arm64" => {
                ("arm64", if matches!(variant.as_str(), "" | "8" | "v8") { "v8".into() } else { variant })
            }
            "armhf" => ("arm", "v7".into()),
            "armel" => ("arm", "v6".into()),
            "arm" => (
                "arm",
                match variant.as_str() {
                    "" | "7" => "v7".into(),
                    "5" | "6" | "8" => format!("v{variant}"),
                    _ => variant,
                },
            ),
            a => return (os, a.to_string(), variant),
        };
        (os, arch.to_string(), variant)
    }

    /// True when an image built for `other` runs on `self` unchanged.
    pub fn matches(&self, other: &Platform) -> bool {
        self.normalized() == other.normalized()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = ManifestError;

    /// `os/arch[/variant]`, as given to `--platform`.
    fn from_str(s: &str) -> Result<Self, ManifestError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(ManifestError::InvalidPlatform(s.to_string()));
        }
        Ok(Platform::new(&parts[0].to_ascii_lowercase(), &parts[1].to_ascii_lowercase(), parts.get(2).copied()))
    }
}

/// Picks the entry of `index` for `wanted`. An exact (normalised) match wins;
/// for 32-bit arm an older variant is accepted when no exact one exists
/// (v7 runs v6 and v5 images), best first.
pub fn select_platform<'a>(index: &'a ImageIndex, wanted: &Platform) -> Result<&'a Descriptor, ManifestError> {
    let (w_os, w_arch, w_variant) = wanted.normalized();
    let mut fallbacks: Vec<&str> = vec![&w_variant];
    if w_arch == "arm" {
        let order = ["v8", "v7", "v6", "v5"];
        if let Some(pos) = order.iter().position(|v| *v == w_variant) {
            fallbacks.extend(&order[pos + 1..]);
        }
    }
    for variant in fallbacks {
        let found = index.manifests.iter().find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                let (os, arch, v) = p.normalized();
                os == w_os && arch == w_arch && v == variant
            })
        });
        if let Some(d) = found {
            return Ok(d);
        }
    }
    let mut available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        // BuildKit's attestation manifests are tagged unknown/unknown
        .filter(|p| p.os != "unknown" && p.architecture != "unknown")
        .map(|p| p.to_string())
        .collect();
    available.dedup();
    Err(ManifestError::NoMatchingPlatform { wanted: wanted.to_string(), available })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn docker_manifest(layer_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
              "config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{}","size":7}},
              "layers":[{{"mediaType":"{layer_type}","digest":"{}","size":100}}]}}"#,
            d(1),
            d(2)
        )
    }

    fn index_with(platforms: &[(&str, &str, Option<&str>)]) -> ImageIndex {
        let entries: Vec<String> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, v))| {
                let variant = v.map(|v| format!(r#","variant":"{v}""#)).unwrap_or_default();
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,
                       "platform":{{"os":"{os}","architecture":"{arch}"{variant}}}}}"#,
                    d(i as u8)
                )
            })
            .collect();
        let json = format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, entries.join(","));
        match parse_manifest(json.as_bytes(), "").unwrap() {
            Manifest::Index(i) => i,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_docker_and_oci_manifests() {
        let m = parse_manifest(docker_manifest(DOCKER_LAYER_GZIP).as_bytes(), "").unwrap();
        let Manifest::Image(m) = m else { panic!() };
        assert_eq!(m.media_type.as_deref(), Some(DOCKER_MANIFEST));
        assert_eq!(m.config.digest.to_string(), d(1));
        assert_eq!(m.layers[0].size, 100);
        assert_eq!(LayerCompression::from_media_type(&m.layers[0].media_type).unwrap(), LayerCompression::Gzip);

        // OCI without mediaType: taken from the Content-Type (with parameters)
        let oci = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":2}},
               "layers":[{{"mediaType":"{OCI_LAYER_ZSTD}","digest":"{}","size":3,"annotations":null}}],
               "annotations":{{"a":"b"}}}}"#,
            d(3),
            d(4)
        );
        let m = parse_manifest(oci.as_bytes(), &format!("{OCI_MANIFEST}; charset=utf-8")).unwrap();
        assert_eq!(m.media_type(), OCI_MANIFEST);
        // ... and guessed from the fields without a Content-Type
        let Manifest::Image(m) = parse_manifest(oci.as_bytes(), "application/json").unwrap() else { panic!() };
        assert_eq!(m.annotations.get("a").map(String::as_str), Some("b"));

        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
               {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":5,
                 "platform":{{"architecture":"arm64","os":"linux","variant":"v8","os.features":["x"]}}}}]}}"#,
            d(5)
        );
        let Manifest::Index(i) = parse_manifest(list.as_bytes(), "").unwrap() else { panic!() };
        assert_eq!(i.manifests[0].platform.as_ref().unwrap().os_features, vec!["x".to_string()]);
        // round trip keeps the Docker field names
        let back = serde_json::to_string(&i).unwrap();
        assert!(back.contains(r#""os.features":["x"]"#), "{back}");
        assert!(back.contains(r#""mediaType""#), "{back}");
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        let e = parse_manifest(b"<html>", "text/html").unwrap_err();
        assert!(matches!(e, ManifestError::NotJson(_)), "{e}");
        let e = parse_manifest(br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#, "").unwrap_err();
        assert!(e.to_string().contains("schema 1") && e.to_string().contains("re-push"), "{e}");
        let e = parse_manifest(b"{}", DOCKER_SCHEMA1_SIGNED_MANIFEST).unwrap_err();
        assert!(matches!(e, ManifestError::Schema1));
        let e = parse_manifest(br#"{"schemaVersion":2,"mediaType":"application/x-foo"}"#, "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported manifest media type \"application/x-foo\": expected an OCI image manifest or index, \
             or a Docker schema 2 manifest or manifest list"
        );
        let e = parse_manifest(docker_manifest("application/vnd.cncf.helm.chart.content.v1.tar+gzip").as_bytes(), "")
            .unwrap_err();
        assert!(matches!(e, ManifestError::UnknownLayerMediaType { .. }), "{e}");
        assert!(e.to_string().contains(&d(2)), "{e}");
        let helm =
            docker_manifest(DOCKER_LAYER_GZIP).replace(DOCKER_CONFIG, "application/vnd.cncf.helm.config.v1+json");
        assert!(matches!(parse_manifest(helm.as_bytes(), ""), Err(ManifestError::UnknownConfigMediaType(_))));
        let e = parse_manifest(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#, "")
            .unwrap_err();
        assert!(matches!(e, ManifestError::Invalid { .. }), "{e}");
        let bad_digest = docker_manifest(DOCKER_LAYER_GZIP).replace(&d(2), "sha256:123");
        assert!(matches!(parse_manifest(bad_digest.as_bytes(), ""), Err(ManifestError::Invalid { .. })));
    }

    #[test]
    fn layer_compression() {
        use LayerCompression::*;
        for (mt, c) in [
            (OCI_LAYER_TAR, None),
            (OCI_LAYER_GZIP, Gzip),
            (OCI_LAYER_ZSTD, Zstd),
            (OCI_LAYER_NONDIST_GZIP, Gzip),
            (DOCKER_LAYER_GZIP, Gzip),
            (DOCKER_LAYER_FOREIGN_GZIP, Gzip),
            (DOCKER_LAYER_TAR, None),
            (DOCKER_LAYER_ZSTD, Zstd),
        ] {
            assert_eq!(LayerCompression::from_media_type(mt).unwrap(), c, "{mt}");
            assert_eq!(LayerCompression::from_media_type(c.oci_media_type()).unwrap(), c);
        }
        assert!(LayerCompression::from_media_type("application/octet-stream").is_err());
        assert!(is_foreign_layer(DOCKER_LAYER_FOREIGN_GZIP) && !is_foreign_layer(OCI_LAYER_GZIP));
        assert_eq!(LayerCompression::sniff(&[0x1f, 0x8b, 8]), Gzip);
        assert_eq!(LayerCompression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Zstd);
        assert_eq!(LayerCompression::sniff(b"etc/"), None);
    }

    #[test]
    fn platform_parsing_and_host() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()), ("linux", "arm64", Some("v8")));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!("linux/amd64".parse::<Platform>().unwrap().to_string(), "linux/amd64");
        for bad in ["", "linux", "linux/", "/amd64", "linux/amd64/v1/x", "linux amd64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h.architecture, "amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(h.architecture, "arm64");
        }
        assert!(Platform::new("linux", "aarch64", None).matches(&Platform::new("linux", "arm64", Some("v8"))));
        assert!(Platform::new("linux", "x86_64", None).matches(&Platform::new("linux", "amd64", None)));
        assert!(!Platform::new("linux", "arm", Some("v6")).matches(&Platform::new("linux", "arm", None)));
    }

    #[test]
    fn selects_platforms() {
        let idx = index_with(&[
            ("linux", "amd64", None),
            ("linux", "arm64", Some("v8")),
            ("linux", "arm", Some("v6")),
            ("unknown", "unknown", None),
        ]);
        let pick = |s: &str| select_platform(&idx, &s.parse().unwrap()).map(|d| d.digest.to_string());
        assert_eq!(pick("linux/amd64").unwrap(), d(0));
        assert_eq!(pick("linux/arm64").unwrap(), d(1));
        assert_eq!(pick("linux/arm64/v8").unwrap(), d(1));
        // v7 host runs the v6 image when there is no v7 one
        assert_eq!(pick("linux/arm/v7").unwrap(), d(2));
        let e = pick("linux/arm/v5").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no matching manifest for linux/arm/v5 in the manifest list entries \
             (available: linux/amd64, linux/arm64/v8, linux/arm/v6)"
        );
        assert!(pick("linux/s390x").is_err());
        assert!(pick("windows/amd64").is_err());

        let exact = index_with(&[("linux", "arm", Some("v6")), ("linux", "arm", Some("v7"))]);
        let got = select_platform(&exact, &Platform::new("linux", "arm", None)).unwrap();
        assert_eq!(got.digest.to_string(), d(1));
    }
}
