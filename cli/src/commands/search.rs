//! `search TERM`: the repositories of a registry whose names contain TERM.
//!
//! `busybox` searches Docker Hub through its search API (description, stars,
//! official), in Docker's columns. `HOST/TERM` (a registry as a reference
//! would name it) searches that registry's catalog, which gives names only,
//! in Podman's columns; `HOST/` lists the whole catalog. Podman's
//! `--list-tags REGISTRY/REPOSITORY` lists one repository's tags instead.

use crate::exit;
use crate::format;
use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::Value;
use strata_layers::reference::{normalize_registry, split_registry, Reference, DOCKER_HUB};
use strata_layers::registry::{RegistryClient, SearchResult};

#[derive(Args)]
pub struct SearchArgs {
    /// Filter output based on conditions provided (stars=N, is-official=BOOL, is-automated=BOOL)
    #[arg(short, long = "filter")]
    filter: Vec<String>,
    /// Pretty-print search using a Go template
    #[arg(long)]
    format: Option<String>,
    /// Max number of search results (default 25)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    limit: i64,
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// List the tags of the repository TERM names instead
    #[arg(long)]
    list_tags: bool,
    /// Require HTTPS (strata speaks plain HTTP only to loopback registries and those configured insecure)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    tls_verify: Option<bool>,
    /// What to look for: NAME (Docker Hub), REGISTRY/NAME, or REGISTRY/ for a whole catalog
    term: String,
}

/// Docker's default number of results.
const DEFAULT_LIMIT: usize = 25;
/// Docker Hub's search API answers at most this many.
const DOCKER_HUB_MAX: i64 = 100;

/// What `--filter` keeps (Docker's search filters).
#[derive(Default)]
struct Filters {
    min_stars: u64,
    official: Option<bool>,
    automated: Option<bool>,
}

impl Filters {
    fn parse(given: &[String]) -> Result<Filters> {
        let mut f = Filters::default();
        for given in given {
            let (key, value) = given
                .split_once('=')
                .with_context(|| format!("bad format of filter (expected name=value): {given}"))?;
            let invalid = || anyhow::anyhow!("invalid filter '{given}'");
            let boolean = || match value {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(invalid()),
            };
            match key {
                "stars" => f.min_stars = value.parse().map_err(|_| invalid())?,
                "is-official" => f.official = Some(boolean()?),
                "is-automated" => f.automated = Some(boolean()?),
                _ => return Err(anyhow::anyhow!("invalid filter '{key}'")),
            }
        }
        Ok(f)
    }

    fn keeps(&self, r: &SearchResult) -> bool {
        r.star_count >= self.min_stars
            && self.official.is_none_or(|o| o == r.is_official)
            && self.automated.is_none_or(|a| a == r.is_automated)
    }
}

pub fn run(a: SearchArgs) -> Result<i32> {
    let _ = a.tls_verify;
    if a.limit < 0 {
        return Err(exit::with_code(125, Some(format!("limit {} is outside the range of [1, 100]", a.limit))));
    }
    let client = RegistryClient::from_env()?;
    if a.list_tags {
        return list_tags(&client, &a);
    }
    let filters = Filters::parse(&a.filter)?;
    let (registry, term) = match split_registry(&a.term) {
        (Some(host), rest) => (normalize_registry(host), rest),
        (None, name) => (DOCKER_HUB.to_string(), name),
    };
    let hub = registry == DOCKER_HUB;
    if hub && a.limit > DOCKER_HUB_MAX {
        anyhow::bail!("limit {} is outside the range of [1, {DOCKER_HUB_MAX}]", a.limit);
    }
    let limit = if a.limit == 0 { DEFAULT_LIMIT } else { a.limit as usize };
    let results =
        client.search(&registry, term, limit).with_context(|| format!("couldn't search registry \"{registry}\""))?;
    let ok = |b: bool| if b { "[OK]" } else { "" }.to_string();
    let rows: Vec<Value> = results
        .iter()
        .filter(|r| filters.keeps(r))
        .map(|r| {
            // Docker Hub's names are shown as Docker shows them; a catalog's
            // with their registry, as Podman does, so that they can be pulled.
            let name = if hub { r.name.clone() } else { format!("{registry}/{}", r.name) };
            let description = if a.no_trunc { r.description.clone() } else { format::ellipsis(&r.description, 45) };
            format::row([
                ("Name", name),
                ("Description", description),
                ("StarCount", r.star_count.to_string()),
                ("IsOfficial", ok(r.is_official)),
                ("IsAutomated", ok(r.is_automated)),
                // Podman's names for the same fields.
                ("Index", registry.clone()),
                ("Stars", r.star_count.to_string()),
                ("Official", ok(r.is_official)),
                ("Automated", ok(r.is_automated)),
                ("Tag", String::new()),
            ])
        })
        .collect();
    let default_table = if hub {
        "table {{.Name}}\t{{.Description}}\t{{.StarCount}}\t{{.IsOfficial}}"
    } else {
        "table {{.Name}}\t{{.Description}}"
    };
    print_rows(a.format.as_deref(), default_table, &rows)
}

/// `--list-tags REGISTRY/REPOSITORY`: one row per tag, in the registry's order.
fn list_tags(client: &RegistryClient, a: &SearchArgs) -> Result<i32> {
    if !a.filter.is_empty() {
        anyhow::bail!("filters are not applicable to list tags result");
    }
    let r = Reference::parse_bare(&a.term).map_err(|e| anyhow::anyhow!("{e}"))?;
    if r.tag.is_some() || r.digest.is_some() {
        anyhow::bail!(
            "--list-tags takes a repository, not {}: leave the tag or digest out ({})",
            a.term,
            r.familiar_name()
        );
    }
    let mut tags = client
        .list_tags(&r)
        .with_context(|| format!("getting the tags of {} from {}", r.familiar_name(), r.registry))?;
    tags.truncate(if a.limit == 0 { usize::MAX } else { a.limit as usize });
    let name = format!("{}/{}", r.registry, r.repository);
    let rows: Vec<Value> = tags
        .into_iter()
        .map(|tag| {
            format::row([
                ("Name", name.clone()),
                ("Tag", tag),
                ("Index", r.registry.clone()),
                ("Description", String::new()),
            ])
        })
        .collect();
    print_rows(a.format.as_deref(), "table {{.Name}}\t{{.Tag}}", &rows)
}

fn print_rows(format: Option<&str>, default_table: &str, rows: &[Value]) -> Result<i32> {
    let out = format::Output::new(format, default_table).map_err(|e| anyhow::anyhow!("{e}"))?;
    let headers = [
        ("Name", "NAME"),
        ("Description", "DESCRIPTION"),
        ("StarCount", "STARS"),
        ("IsOfficial", "OFFICIAL"),
        ("IsAutomated", "AUTOMATED"),
        ("Index", "INDEX"),
        ("Stars", "STARS"),
        ("Official", "OFFICIAL"),
        ("Automated", "AUTOMATED"),
        ("Tag", "TAG"),
    ];
    print!("{}", out.render(rows, &headers).map_err(|e| anyhow::anyhow!("{e}"))?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(stars: u64, official: bool, automated: bool) -> SearchResult {
        SearchResult {
            name: "x".into(),
            star_count: stars,
            is_official: official,
            is_automated: automated,
            ..SearchResult::default()
        }
    }

    #[test]
    fn filters_are_dockers() {
        let f = Filters::parse(&["stars=3".into(), "is-official=true".into()]).unwrap();
        assert!(f.keeps(&hit(3, true, false)));
        assert!(!f.keeps(&hit(2, true, false)));
        assert!(!f.keeps(&hit(9, false, false)));
        let f = Filters::parse(&["is-automated=false".into()]).unwrap();
        assert!(f.keeps(&hit(0, false, false)));
        assert!(!f.keeps(&hit(0, false, true)));
        for bad in ["stars=x", "is-official=maybe", "color=red", "stars"] {
            assert!(Filters::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert_eq!(Filters::parse(&["color=red".into()]).err().unwrap().to_string(), "invalid filter 'color'");
    }
}
