//! Image references (`busybox`, `ghcr.io/o/app:1.2`, `localhost:5000/x@sha256:...`),
//! parsed and normalised exactly as Docker does (the `distribution/reference`
//! grammar plus `ParseNormalizedNamed`), so that a name typed for `docker pull`
//! means the same image here.
//!
//! Normalisation rules:
//! - the first path component is a registry only when it contains `.` or `:`,
//!   is `localhost`, or has an uppercase letter (Docker's rule: such a name
//!   cannot be a repository component); otherwise the registry is `docker.io`;
//! - `index.docker.io` is spelled `docker.io`;
//! - a one-component Docker Hub name lives under `library/`;
//! - with neither tag nor digest the tag is `latest`.
//!
//! Only sha256 digests are accepted, like [`Digest`].

use crate::digest::Digest;
use std::fmt;
use std::str::FromStr;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag used when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest allowed full name (`registry/repository`), as in Docker.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;

const LEGACY_DOCKER_HUB: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";

/// A parsed, normalised image reference.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `localhost:5000`, `[::1]:5000`.
    pub registry: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format: reference is empty")]
    Empty,
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    #[error(
        "invalid reference format: {0:?}: repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
    )]
    TooLong(String),
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexName(String),
    #[error("invalid reference format: {reference:?}: {problem}")]
    Format { reference: String, problem: String },
    #[error(
        "invalid reference format: tag {tag:?} in {reference:?} is not valid \
         (up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-')"
    )]
    Tag { reference: String, tag: String },
    #[error("invalid reference format: digest {digest:?} in {reference:?} is not valid (expected sha256: and 64 lowercase hex digits)")]
    Digest { reference: String, digest: String },
}

impl Reference {
    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Docker's short display name: `busybox`, `user/app`, `localhost:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.registry == DOCKER_HUB {
            match self.repository.strip_prefix(OFFICIAL_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            self.full_name()
        }
    }

    /// The tag, or `latest` when the reference has none (digest-only references).
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// The familiar form with tag and/or digest: `busybox:latest`, `localhost:5000/app@sha256:...`.
    pub fn familiar_string(&self) -> String {
        let mut s = self.familiar_name();
        self.push_suffix(&mut s);
        s
    }

    /// The same repository with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::Tag { reference: format!("{}:{tag}", self.full_name()), tag: tag.to_string() });
        }
        Ok(Reference { tag: Some(tag.to_string()), digest: None, ..self.clone() })
    }

    /// The same repository pinned to `digest` (and no tag).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference { tag: None, digest: Some(digest), ..self.clone() }
    }

    /// The host (and port) to send registry API requests to:
    /// `registry-1.docker.io` for Docker Hub, the registry itself otherwise.
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, t) => t.clone().unwrap_or_else(|| DEFAULT_TAG.to_string()),
        }
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
    }
}

/// The API host for a (normalised) registry name; see [`Reference::api_host`].
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB || registry == LEGACY_DOCKER_HUB {
        DOCKER_HUB_API_HOST
    } else {
        registry
    }
}

/// Normalises a registry name as typed by a user (`index.docker.io`,
/// `https://index.docker.io/v1/`, `registry-1.docker.io`, `localhost:5000/`)
/// to the form references use (`docker.io`, `localhost:5000`).
pub fn normalize_registry(name: &str) -> String {
    let s = name.trim();
    let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "" | DOCKER_HUB | LEGACY_DOCKER_HUB | DOCKER_HUB_API_HOST => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

impl fmt::Display for Reference {
    /// The canonical full reference: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.full_name();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    /// Parses and normalises; `latest` is filled in when there is neither
    /// tag nor digest (see [`Reference::parse_bare`] to tell that case apart).
    fn from_str(input: &str) -> Result<Self, ReferenceError> {
        let mut r = Reference::parse_bare(input)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.to_string());
        }
        Ok(r)
    }
}

impl Reference {
    /// Like [`str::parse`] but without the default tag: `busybox` gives
    /// `tag: None`, so a caller can say "Using default tag: latest" as Docker does.
    pub fn parse_bare(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let format =
            |problem: &str| ReferenceError::Format { reference: input.to_string(), problem: problem.to_string() };
        if input.len() == 64 && input.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ReferenceError::HexName(input.to_string()));
        }

        // name[:tag][@digest]; the tag's ':' is the last one after the last '/'.
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|_| ReferenceError::Digest { reference: input.to_string(), digest: d.to_string() })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(ReferenceError::Tag { reference: input.to_string(), tag: t.to_string() });
            }
        }
        if name.is_empty() {
            return Err(format("repository name must have at least one component"));
        }

        let (registry, path) = split_registry(name);
        if let Some(reg) = registry {
            if !valid_domain(reg) {
                return Err(format(&format!("registry host {reg:?} is not a valid host[:port]")));
            }
        }
        let registry = match registry {
            None | Some(LEGACY_DOCKER_HUB) => DOCKER_HUB,
            Some(r) => r,
        };
        if path.to_lowercase() != path {
            return Err(ReferenceError::Uppercase(path.to_string()));
        }
        if path.is_empty() {
            return Err(format("repository name must have at least one component"));
        }
        for component in path.split('/') {
            if !valid_path_component(component) {
                let problem = if component.is_empty() {
                    "repository name has an empty path component".to_string()
                } else {
                    format!(
                        "repository path component {component:?} must be lowercase letters and digits, \
                         separated by '.', '_', '__' or '-'"
                    )
                };
                return Err(format(&problem));
            }
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::TooLong(input.to_string()));
        }
        let tag = tag.map(str::to_string);
        Ok(Reference { registry: registry.to_string(), repository, tag, digest })
    }
}

/// Docker's splitDockerDomain: the first component is a registry when it
/// contains '.' or ':', is "localhost", or is not all lowercase.
pub fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes[1..].iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false; // empty alphanumeric run: at start, end, or between separators
        }
        if i == bytes.len() {
            return true;
        }
        // separator: '.', '_', '__', or one or more '-'
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `host[:port]` where host is a DNS name (components `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`
/// joined by '.') or a bracketed IPv6 address (hex groups only, as in Docker:
/// no zone, no embedded IPv4).
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else { return false };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if d.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn p(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_normalisation() {
        let r = p("busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest, None);
        assert_eq!(r.full_name(), "docker.io/library/busybox");
        assert_eq!(r.familiar_name(), "busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar_string(), "busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");

        for same in
            ["library/busybox", "docker.io/busybox", "docker.io/library/busybox:latest", "index.docker.io/busybox"]
        {
            assert_eq!(p(same), r, "{same}");
        }
        let u = p("user/app:1.0");
        assert_eq!(u.full_name(), "docker.io/user/app");
        assert_eq!(u.familiar_name(), "user/app");
        assert_eq!(u.familiar_string(), "user/app:1.0");
        // library/ with more components is not an official image
        assert_eq!(p("library/a/b").familiar_name(), "library/a/b");
    }

    #[test]
    fn other_registries() {
        let r = p("localhost:5000/app");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("localhost:5000", "app"));
        assert_eq!(r.familiar_name(), "localhost:5000/app");
        assert_eq!(r.api_host(), "localhost:5000");
        assert_eq!(p("localhost/app").registry, "localhost");
        assert_eq!(p("ghcr.io/o/r/x:v1").repository, "o/r/x");
        assert_eq!(p("127.0.0.1:5000/a/b:t").to_string(), "127.0.0.1:5000/a/b:t");
        assert_eq!(p("[::1]:5000/app").registry, "[::1]:5000");
        assert_eq!(p("[fe80::1]/app").registry, "[fe80::1]");
        // uppercase first component is a registry (Docker's rule)
        assert_eq!(p("Registry/app").registry, "Registry");
        // a first component without '.', ':' is a namespace
        assert_eq!(p("myhost/app").registry, "docker.io");
    }

    #[test]
    fn tags_and_digests() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        let r = p(&format!("busybox@sha256:{HEX}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, Some(d));
        assert_eq!(r.tag_or_default(), "latest");
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@sha256:{HEX}"));
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        let both = p(&format!("localhost:5000/x:1.2@sha256:{HEX}"));
        assert_eq!(both.tag.as_deref(), Some("1.2"));
        assert_eq!(both.familiar_string(), format!("localhost:5000/x:1.2@sha256:{HEX}"));
        assert_eq!(p("a:_x.Y-1").tag.as_deref(), Some("_x.Y-1"));
        assert_eq!(p(&format!("a:{}", "t".repeat(128))).tag.unwrap().len(), 128);

        let t = r.with_tag("edge").unwrap();
        assert_eq!(t.to_string(), "docker.io/library/busybox:edge");
        assert!(r.with_tag(".bad").is_err());
        assert_eq!(t.with_digest(d).to_string(), format!("docker.io/library/busybox@sha256:{HEX}"));
        assert_eq!(p("busybox:1").manifest_ref(), "1");
        let bare = Reference::parse_bare("busybox").unwrap();
        assert_eq!(bare.tag_or_default(), "latest");
        assert_eq!(bare.tag, None);
        assert_eq!(Reference::parse_bare("busybox:1").unwrap().tag.as_deref(), Some("1"));
    }

    /// Docker's own normalisation cases (distribution/reference).
    #[test]
    fn docker_compatibility_vectors() {
        for ok in [
            "docker/docker",
            "192.168.0.1",
            "192.168.0.1:80",
            "192.168.0.1:8/debian",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "[fc00::1]:5000/docker/docker",
            "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
            "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "DOCKER/docker",
            "docker---rules/docker",
            "d/docker",
            "dock__er/docker",
            "xn--n3h.com:18080/foo",
        ] {
            p(ok);
        }
        for bad in [
            "https://github.com/docker/docker",
            "docker/Docker",
            "-docker",
            "-docker/docker",
            "-docker.io/docker/docker",
            "docker///docker",
            "docker.io/docker/Docker",
            "[fc00::1]",
            "[fc00::1]:5000",
            "fc00::1:5000/debian",
            "[fe80::1%eth0]:5000/debian",
            "[2001:db8:3:4::192.0.2.33]:5000/debian",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "docker-/docker",
            "____/____",
            "_docker/_docker",
            "dock..er/docker",
            "dock_.er/docker",
            "dock-.er/docker",
            "docker/",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "accepted {bad:?}");
        }
        for (input, registry, path, familiar) in [
            ("test_com/foo", "docker.io", "test_com/foo", "test_com/foo"),
            ("test-com:8080/foo", "test-com:8080", "foo", "test-com:8080/foo"),
            ("docker.io/library/foo/bar", "docker.io", "library/foo/bar", "library/foo/bar"),
            ("index.docker.io/fooo/bar", "docker.io", "fooo/bar", "fooo/bar"),
            ("127.0.0.1:8000/privatebase", "127.0.0.1:8000", "privatebase", "127.0.0.1:8000/privatebase"),
            ("FOO/bar", "FOO", "bar", "FOO/bar"),
        ] {
            let r = p(input);
            assert_eq!((r.registry.as_str(), r.repository.as_str()), (registry, path), "{input}");
            assert_eq!(r.familiar_name(), familiar, "{input}");
        }
    }

    #[test]
    fn separators() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a1/b2/c3", "a.b-c_d__e", "0"] {
            p(ok);
        }
    }

    #[test]
    fn refuses_malformed() {
        let cases = [
            "",
            ":",
            "@",
            "/",
            "a/",
            "/a",
            "a//b",
            "a:",
            "a@",
            "a:-tag",
            "a:.tag",
            "a:t@g",
            "a:b:c",
            "a@sha256:abc",
            "a@md5:d41d8cd98f00b204e9800998ecf8427e",
            "_a",
            "a_",
            "a___b",
            "a..b",
            "a.-b",
            "-a",
            "a-",
            "a b",
            "a/b c",
            "ÄÖ",
            "example.com:/a",
            "example.com:port/a",
            "-example.com/a",
            "exa_mple.com/a",
            "[::1/a",
        ];
        for bad in cases {
            assert!(bad.parse::<Reference>().is_err(), "accepted {bad:?}");
        }
        let long = format!("a:{}", "t".repeat(129));
        assert!(matches!(long.parse::<Reference>(), Err(ReferenceError::Tag { .. })));
        // docker.io/ (10 chars) + name must fit in 255
        let name = format!("x/{}", "a".repeat(243));
        p(&name);
        let name = format!("x/{}", "a".repeat(244));
        assert!(matches!(name.parse::<Reference>(), Err(ReferenceError::TooLong(_))));
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = "Busybox".parse::<Reference>().unwrap_err().to_string();
        assert_eq!(e, "invalid reference format: repository name (Busybox) must be lowercase");
        let e = "example.com/Org/app".parse::<Reference>().unwrap_err().to_string();
        assert!(e.contains("must be lowercase"), "{e}");
        let e = "busybox:-x".parse::<Reference>().unwrap_err().to_string();
        assert!(e.starts_with("invalid reference format: tag \"-x\""), "{e}");
        let e = "busybox@sha256:12".parse::<Reference>().unwrap_err().to_string();
        assert!(e.contains("digest \"sha256:12\""), "{e}");
        let e = HEX.parse::<Reference>().unwrap_err().to_string();
        assert!(e.contains("64-byte hexadecimal"), "{e}");
        // like Docker, "localhost:5000" alone is docker.io/library/localhost, tag 5000
        assert_eq!(p("localhost:5000").to_string(), "docker.io/library/localhost:5000");
        let e = "a//b".parse::<Reference>().unwrap_err().to_string();
        assert!(e.contains("empty path component"), "{e}");
    }

    #[test]
    fn registry_names() {
        for (i, o) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("docker.io", "docker.io"),
            ("localhost:5000", "localhost:5000"),
            ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
        ] {
            assert_eq!(normalize_registry(i), o, "{i}");
        }
    }
}
