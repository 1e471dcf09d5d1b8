//! Registry authentication: `WWW-Authenticate` challenges and bearer tokens
//! (the Docker token protocol used by Docker Hub, GHCR, Harbor, distribution
//! with `auth: token`), plus HTTP Basic for registries that ask for it.
//!
//! The flow: a request answered 401 carries a challenge; for Bearer we ask the
//! challenge's realm for a token scoped to `repository:NAME:pull[,push]`
//! (sending the user's credentials, if any, as Basic), then retry. The client
//! keeps tokens per (endpoint, scope) and remembers each endpoint's challenge,
//! so later requests authenticate up front without another 401.

use super::credentials::Credential;
use base64::Engine as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
    Basic { realm: Option<String> },
}

/// Parses every challenge in `WWW-Authenticate` values (one header may hold
/// several: `Basic realm="r", Bearer realm="https://a/token",service="s"`).
/// Unknown schemes and a Bearer challenge without a realm are skipped.
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for value in values {
        for (scheme, params) in split_challenges(value) {
            let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
            if scheme.eq_ignore_ascii_case("bearer") {
                if let Some(realm) = get("realm").filter(|r| !r.is_empty()) {
                    out.push(Challenge::Bearer { realm, service: get("service"), scope: get("scope") });
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                out.push(Challenge::Basic { realm: get("realm") });
            }
        }
    }
    out
}

type Params = Vec<(String, String)>;

/// RFC 7235 challenge list: `scheme [param=value *(, param=value)] *(, challenge)`.
fn split_challenges(s: &str) -> Vec<(String, Params)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out: Vec<(String, Params)> = Vec::new();
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c);
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        s[start..*i].to_string()
    };
    loop {
        while i < b.len() && (b[i] == b',' || b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let scheme = token(&mut i);
        if scheme.is_empty() {
            break; // garbage: stop rather than loop
        }
        let mut params = Vec::new();
        loop {
            skip_ws(&mut i);
            let start = i;
            let name = token(&mut i);
            skip_ws(&mut i);
            if name.is_empty() || i >= b.len() || b[i] != b'=' {
                i = start; // not a parameter: the next challenge's scheme
                break;
            }
            i += 1;
            skip_ws(&mut i);
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    v.push(b[i]);
                    i += 1;
                }
                i += 1; // closing quote
                String::from_utf8_lossy(&v).into_owned()
            } else {
                token(&mut i)
            };
            params.push((name, value));
            skip_ws(&mut i);
            if i < b.len() && b[i] == b',' {
                i += 1;
            } else {
                break;
            }
        }
        out.push((scheme, params));
    }
    out
}

/// `Basic base64(user:password)`.
pub fn basic_header(username: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")))
}

/// Bounds for a token's `expires_in`, in seconds.
const MIN_TOKEN_SECS: u64 = 10;
const MAX_TOKEN_SECS: u64 = 86_400;

/// The token endpoint's answer (`token` in the Docker protocol, `access_token` in OAuth2).
#[derive(serde::Deserialize)]
pub(crate) struct TokenReply {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenReply {
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.filter(|t| !t.is_empty()).or(self.access_token.filter(|t| !t.is_empty()))?;
        // The protocol's default lifetime is 60 s; renew a little early. The
        // registry's value is clamped: a day is plenty, and a huge one must
        // not overflow the expiry instant.
        let secs = self.expires_in.unwrap_or(60).clamp(MIN_TOKEN_SECS, MAX_TOKEN_SECS);
        Some((token, Duration::from_secs(secs - 5)))
    }
}

/// What the token request sends to the realm.
pub(crate) enum TokenRequest<'a> {
    /// GET realm?service=..&scope=.. with optional Basic credentials.
    Get { basic: Option<(&'a str, &'a str)> },
    /// POST realm (OAuth2 refresh-token grant) for identity tokens.
    Refresh { refresh_token: &'a str },
}

impl<'a> TokenRequest<'a> {
    pub fn for_credential(cred: Option<&'a Credential>) -> Self {
        match cred {
            Some(Credential::IdentityToken(t)) => TokenRequest::Refresh { refresh_token: t },
            Some(Credential::Basic { username, password }) => TokenRequest::Get { basic: Some((username, password)) },
            None => TokenRequest::Get { basic: None },
        }
    }
}

/// Per-client authentication memory: each endpoint's challenge and the
/// tokens obtained for it, keyed by (endpoint base URL, scope).
#[derive(Default)]
pub(crate) struct AuthCache {
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl AuthCache {
    pub fn challenge(&self, endpoint: &str) -> Option<Challenge> {
        self.challenges.lock().ok()?.get(endpoint).cloned()
    }

    pub fn set_challenge(&self, endpoint: &str, c: Challenge) {
        if let Ok(mut m) = self.challenges.lock() {
            m.insert(endpoint.to_string(), c);
        }
    }

    /// A still-valid `Authorization` value for (endpoint, scope).
    pub fn token(&self, endpoint: &str, scope: &str) -> Option<String> {
        let m = self.tokens.lock().ok()?;
        let (value, expires) = m.get(&(endpoint.to_string(), scope.to_string()))?;
        (Instant::now() < *expires).then(|| value.clone())
    }

    /// Remembers a token for `ttl`. One whose expiry is not representable is
    /// not cached (and replaces any older one): the next request asks anew.
    pub fn set_token(&self, endpoint: &str, scope: &str, header: String, ttl: Duration) {
        if let Ok(mut m) = self.tokens.lock() {
            let key = (endpoint.to_string(), scope.to_string());
            match Instant::now().checked_add(ttl) {
                Some(expires) => m.insert(key, (header, expires)),
                None => m.remove(&key),
            };
        }
    }

    pub fn forget_token(&self, endpoint: &str, scope: &str) {
        if let Ok(mut m) = self.tokens.lock() {
            m.remove(&(endpoint.to_string(), scope.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        ]);
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            }]
        );
        assert_eq!(
            parse_challenges([r#"Basic realm="Registry Realm""#]),
            vec![Challenge::Basic { realm: Some("Registry Realm".into()) }]
        );
        assert_eq!(parse_challenges(["basic"]), vec![Challenge::Basic { realm: None }]);
        // several challenges in one value, odd spacing, unquoted values, escapes
        let c = parse_challenges([r#"Basic realm="a\"b" , BEARER  realm = http://127.0.0.1:1/t , service=s"#]);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0], Challenge::Basic { realm: Some("a\"b".into()) });
        assert_eq!(
            c[1],
            Challenge::Bearer { realm: "http://127.0.0.1:1/t".into(), service: Some("s".into()), scope: None }
        );
        // skipped: unknown scheme, bearer without realm, garbage
        assert!(parse_challenges(["Negotiate abc", "Bearer service=x", "", "=,="]).is_empty());
    }

    #[test]
    fn token_replies() {
        let r: TokenReply = serde_json::from_str(r#"{"token":"t1","access_token":"t2","expires_in":300}"#).unwrap();
        assert_eq!(r.into_token(), Some(("t1".into(), Duration::from_secs(295))));
        let r: TokenReply = serde_json::from_str(r#"{"access_token":"t2"}"#).unwrap();
        assert_eq!(r.into_token().unwrap().0, "t2");
        let r: TokenReply = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert!(r.into_token().is_none());
        assert_eq!(basic_header("u", "p"), "Basic dTpw");
    }

    #[test]
    fn huge_or_tiny_token_lifetimes_are_clamped() {
        let reply = |json: &str| serde_json::from_str::<TokenReply>(json).unwrap().into_token().unwrap().1;
        assert_eq!(reply(r#"{"token":"t","expires_in":18446744073709551615}"#), Duration::from_secs(86_395));
        assert_eq!(reply(r#"{"token":"t","expires_in":0}"#), Duration::from_secs(5));
        // Caching with an expiry past what an Instant holds must not panic,
        // nor leave an older token in place.
        let c = AuthCache::default();
        c.set_token("http://a", "s", "Bearer old".into(), Duration::from_secs(60));
        c.set_token("http://a", "s", "Bearer x".into(), Duration::MAX);
        assert_eq!(c.token("http://a", "s"), None);
        c.set_token("http://a", "t", "Bearer y".into(), reply(r#"{"token":"t","expires_in":18446744073709551615}"#));
        assert_eq!(c.token("http://a", "t").as_deref(), Some("Bearer y"));
    }

    #[test]
    fn cache_expires() {
        let c = AuthCache::default();
        c.set_token("http://a", "s", "Bearer x".into(), Duration::from_secs(60));
        c.set_token("http://a", "old", "Bearer y".into(), Duration::ZERO);
        assert_eq!(c.token("http://a", "s").as_deref(), Some("Bearer x"));
        assert_eq!(c.token("http://a", "old"), None);
        assert_eq!(c.token("http://b", "s"), None);
        c.forget_token("http://a", "s");
        assert_eq!(c.token("http://a", "s"), None);
    }
}
