//! `images` / `image ls`, `tag`, `rmi` / `image rm`, `image prune`: the
//! commands that list and rename images and remove them from the store.
//!
//! Rows, filters and messages follow Docker (`docker images` rows per
//! repository and tag, `<none>` for untagged images, newest first; rmi's
//! `Untagged:`/`Deleted:` lines; prune's `Deleted Images:` report).

use super::image::{ImagesArgs, PruneArgs, RmiArgs, TagArgs};
use super::support::confirm;
use super::support::{exit_code_for, open_store, parse_reference, unix_time};
use crate::context::Context;
use crate::format::{self, Output};
use crate::mounts;
use anyhow::{bail, Context as _};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use strata_layers::image::ImageRecord;
use strata_layers::reference::Reference;
use strata_layers::store::{is_image_in_use, Removed, Store};
use strata_layers::Digest;

const DEFAULT_TABLE: &str =
    "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{if .CreatedSince }}{{.CreatedSince}}{{else}}N/A{{end}}\t{{.Size}}";
const DEFAULT_TABLE_DIGESTS: &str = "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{if .CreatedSince }}{{.CreatedSince}}{{else}}N/A{{end}}\t{{.Size}}";

/// Column titles of the image listing (Docker's).
pub const HEADERS: &[(&str, &str)] = &[
    ("ID", "IMAGE ID"),
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
    ("Digest", "DIGEST"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("Size", "SIZE"),
    ("Containers", "CONTAINERS"),
    ("VirtualSize", "SIZE"),
    ("SharedSize", "SHARED SIZE"),
    ("UniqueSize", "UNIQUE SIZE"),
];

/// An image with the references naming it.
pub struct Listed {
    pub record: ImageRecord,
    pub tags: Vec<Reference>,
    pub digests: Vec<Reference>,
    /// Creation time (Unix seconds), 0 when the config has none.
    pub created: i64,
}

/// Every image with its references, newest first (Docker's order).
pub fn list_images(store: &Store) -> anyhow::Result<Vec<Listed>> {
    let mut by_id: BTreeMap<Digest, (Vec<Reference>, Vec<Reference>)> = BTreeMap::new();
    for (r, id) in store.references()? {
        let e = by_id.entry(id).or_default();
        if r.digest.is_some() {
            e.1.push(r);
        } else {
            e.0.push(r);
        }
    }
    let mut out: Vec<Listed> = store
        .images()?
        .into_iter()
        .map(|record| {
            let (tags, digests) = by_id.remove(&record.id).unwrap_or_default();
            let created = record.created.as_deref().map(unix_time).unwrap_or(0);
            Listed { record, tags, digests, created }
        })
        .collect();
    out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.record.id.cmp(&b.record.id)));
    Ok(out)
}

/// The parsed `--filter` flags of `images`.
#[derive(Default)]
struct Filters {
    dangling: Option<bool>,
    labels: Vec<(String, Option<String>)>,
    before: Option<i64>,
    since: Option<i64>,
    references: Vec<String>,
}

fn parse_filters(store: &Store, specs: &[String]) -> anyhow::Result<Filters> {
    let mut f = Filters::default();
    for spec in specs {
        let Some((key, value)) = spec.split_once('=') else {
            bail!("bad format of filter (expected name=value)");
        };
        match key {
            "dangling" => match value.to_ascii_lowercase().as_str() {
                "true" | "1" => f.dangling = Some(true),
                "false" | "0" => f.dangling = Some(false),
                _ => bail!("invalid filter 'dangling={value}'"),
            },
            "label" => f.labels.push(match value.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (value.to_string(), None),
            }),
            "before" | "since" => {
                let img = store.resolve_image(value).map_err(anyhow::Error::from)?;
                let t = img.created.as_deref().map(unix_time).unwrap_or(0);
                if key == "before" {
                    f.before = Some(t);
                } else {
                    f.since = Some(t);
                }
            }
            "reference" => f.references.push(value.to_string()),
            _ => bail!("invalid filter '{key}'"),
        }
    }
    Ok(f)
}

/// Go's `path.Match` (`*`, `?`, `[...]` classes, `\` escapes; `*` and `?`
/// do not match `/`).
pub fn path_match(pattern: &str, name: &str) -> bool {
    fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, length consumed including ']').
        let mut i = 0;
        let negate = p.first() == Some(&'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        loop {
            let ch = *p.get(i)?;
            if ch == ']' && !first {
                i += 1;
                break;
            }
            first = false;
            let lo = if ch == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                ch
            };
            i += 1;
            let mut hi = lo;
            if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
                hi = if p[i + 1] == '\\' { *p.get(i + 2)? } else { p[i + 1] };
                i += if p[i + 1] == '\\' { 3 } else { 2 };
            }
            if lo <= c && c <= hi {
                matched = true;
            }
        }
        Some((matched != negate, i))
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => {
                let rest = &p[1..];
                for k in 0..=n.len() {
                    if go(rest, &n[k..]) {
                        return true;
                    }
                    if k < n.len() && n[k] == '/' {
                        break;
                    }
                }
                false
            }
            Some('?') => !n.is_empty() && n[0] != '/' && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(&c) = n.first() else { return false };
                if c == '/' {
                    return false;
                }
                match class_match(&p[1..], c) {
                    Some((true, used)) => go(&p[1 + used..], &n[1..]),
                    _ => false,
                }
            }
            Some('\\') if p.len() > 1 => !n.is_empty() && n[0] == p[1] && go(&p[2..], &n[1..]),
            Some(&c) => !n.is_empty() && n[0] == c && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// Docker's `FamiliarMatch`: the pattern against `name:tag` (or
/// `name@digest`), then against the bare familiar name.
fn reference_matches(pattern: &str, r: &Reference) -> bool {
    path_match(pattern, &r.familiar_string()) || path_match(pattern, &r.familiar_name())
}

pub fn list(ctx: &Context, a: ImagesArgs) -> anyhow::Result<i32> {
    let store = open_store(ctx)?;
    let mut filter_specs = a.filter.clone();
    if let Some(r) = &a.reference {
        filter_specs.push(format!("reference={r}"));
    }
    let filters = parse_filters(&store, &filter_specs)?;
    let default = if a.quiet {
        "{{.ID}}"
    } else if a.digests {
        DEFAULT_TABLE_DIGESTS
    } else {
        DEFAULT_TABLE
    };
    // As in Docker, -q only changes the default format; an explicit one wins.
    let fmt_flag = a.format.as_deref().filter(|f| !f.is_empty() && *f != "table");
    let mut format_src = fmt_flag.map(str::to_string);
    // Docker appends the digest column to custom tables when --digests is given.
    if let Some(f) = &format_src {
        if f.starts_with("table") && a.digests && !f.contains("{{.Digest}}") {
            format_src = Some(format!("{f}\\t{{{{.Digest}}}}"));
        }
    }
    let output = Output::new(format_src.as_deref(), default)?;
    let need_digest = a.digests || format_src.as_deref().is_some_and(|f| f.contains("{{.Digest}}"));

    let mut rows = Vec::new();
    for mut img in list_images(&store)? {
        if !filters.references.is_empty() {
            let keep = |r: &Reference| filters.references.iter().any(|p| reference_matches(p, r));
            img.tags.retain(keep);
            img.digests.retain(keep);
            if img.tags.is_empty() && img.digests.is_empty() {
                continue;
            }
        }
        if let Some(d) = filters.dangling {
            if d != img.tags.is_empty() {
                continue;
            }
        }
        if filters.before.is_some_and(|t| img.created >= t) || filters.since.is_some_and(|t| img.created <= t) {
            continue;
        }
        if !filters.labels.is_empty() {
            let labels = image_labels(&store, &img)?;
            if !filters.labels.iter().all(|(k, v)| has_label(&labels, k, v.as_deref())) {
                continue;
            }
        }
        for (repo, tag, digest) in expand_rows(&img, need_digest, a.digests) {
            rows.push(image_row(&img, &repo, &tag, &digest, !a.no_trunc));
        }
    }
    print!("{}", output.render(&rows, HEADERS)?);
    Ok(0)
}

/// Docker's imageFormatTaggedAndDigest: one row per repository and tag
/// (times each digest of that repository when digests are shown), then rows
/// for repositories named only by digest.
fn expand_rows(img: &Listed, need_digest: bool, show_digests: bool) -> Vec<(String, String, String)> {
    if img.tags.is_empty() && img.digests.is_empty() {
        return vec![("<none>".into(), "<none>".into(), "<none>".into())];
    }
    let mut repo_tags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut repo_digests: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &img.tags {
        repo_tags.entry(r.familiar_name()).or_default().push(r.tag_or_default().to_string());
    }
    for r in &img.digests {
        if let Some(d) = &r.digest {
            repo_digests.entry(r.familiar_name()).or_default().push(d.to_string());
        }
    }
    let mut rows = Vec::new();
    for (repo, tags) in &repo_tags {
        let digests = repo_digests.remove(repo).filter(|_| need_digest).unwrap_or_default();
        for tag in tags {
            if digests.is_empty() {
                rows.push((repo.clone(), tag.clone(), "<none>".to_string()));
            }
            for d in &digests {
                rows.push((repo.clone(), tag.clone(), d.clone()));
            }
        }
    }
    for (repo, digests) in repo_digests {
        if show_digests {
            for d in digests {
                rows.push((repo.clone(), "<none>".into(), d));
            }
        } else {
            rows.push((repo, "<none>".into(), String::new()));
        }
    }
    rows
}

fn image_row(img: &Listed, repo: &str, tag: &str, digest: &str, trunc: bool) -> Value {
    let id = if trunc { img.record.id.short() } else { img.record.id.to_string() };
    let (since, at) = if img.created > 0 {
        (format::human_since(img.created), go_time_string(img.created))
    } else {
        (String::new(), go_time_string(0))
    };
    format::row([
        ("Containers", "N/A".to_string()),
        ("CreatedAt", at),
        ("CreatedSince", since),
        ("Digest", digest.to_string()),
        ("ID", id),
        ("Repository", repo.to_string()),
        ("SharedSize", "N/A".to_string()),
        ("Size", format::human_size3(img.record.size)),
        ("Tag", tag.to_string()),
        ("UniqueSize", "N/A".to_string()),
        ("VirtualSize", format::human_size(img.record.size)),
    ])
}

/// Go's `time.Time.String()` in UTC: `2024-01-02 03:04:05 +0000 UTC`.
pub fn go_time_string(unix: i64) -> String {
    match chrono::DateTime::from_timestamp(unix, 0) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string(),
        None => String::new(),
    }
}

pub fn tag(ctx: &Context, a: TagArgs) -> anyhow::Result<i32> {
    let store = open_store(ctx)?;
    let target = parse_reference(&a.target)?;
    if target.digest.is_some() {
        bail!("refusing to create a tag with a digest reference");
    }
    let target = match target.tag {
        Some(_) => target,
        None => target.with_tag(strata_layers::reference::DEFAULT_TAG).map_err(anyhow::Error::from)?,
    };
    let img = store.resolve_image(&a.source).map_err(exit_code_for)?;
    store.tag(&img.id, &target).map_err(exit_code_for)?;
    crate::events::emit(&ctx.layout, "image", "tag", &img.id.to_string(), &[("name", &target.familiar_string())]);
    Ok(0)
}

pub fn remove(ctx: &Context, a: RmiArgs) -> anyhow::Result<i32> {
    let store = open_store(ctx)?;
    let lock = store.lock_exclusive()?;
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for name in &a.images {
        let held = |id: &Digest| {
            let m = mounts::image_mounts(&ctx.layout, &id.to_string());
            m.first().map(|m| format!("{}; {} first", m.place(), m.release_hint()))
        };
        match store.remove_image_unless_held(&lock, name, a.force, &held) {
            Ok(lines) => {
                for l in lines {
                    writeln!(out, "{l}")?;
                    match &l {
                        Removed::Untagged(n) => {
                            crate::events::emit(&ctx.layout, "image", "untag", name, &[("name", n)])
                        }
                        Removed::Deleted(id) => {
                            crate::events::emit(&ctx.layout, "image", "delete", &id.to_string(), &[("name", name)])
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("Error: {e}");
                failed = true;
            }
        }
    }
    out.flush()?;
    // Free the content the removed images held (shared content stays).
    store.gc(&lock).context("freeing the removed images' content")?;
    Ok(if failed { 1 } else { 0 })
}

pub fn prune(ctx: &Context, a: PruneArgs) -> anyhow::Result<i32> {
    let only = PruneFilter::parse(&a.filter)?;
    if !a.force {
        let warning = if a.all {
            "WARNING! This will remove all images without at least one container associated to them."
        } else {
            "WARNING! This will remove all dangling images."
        };
        if !confirm(warning)? {
            super::support::print_reclaimed(0);
            return Ok(0);
        }
    }
    prune_images_where(ctx, a.all, &only)?.print();
    Ok(0)
}

/// `image prune --filter`: `until=` (images created before a time or that
/// long ago), `label=K[=V]` and `label!=K[=V]`, as Docker takes them.
#[derive(Default)]
pub struct PruneFilter {
    until: Option<i64>,
    labels: Vec<(String, Option<String>, bool)>,
}

impl PruneFilter {
    fn parse(specs: &[String]) -> anyhow::Result<PruneFilter> {
        let mut f = PruneFilter::default();
        for spec in specs {
            let (key, value) =
                spec.split_once('=').ok_or_else(|| anyhow::anyhow!("bad format of filter (expected name=value)"))?;
            let (key, negate) = match key.strip_suffix('!') {
                Some(k) => (k, true),
                None => (key, false),
            };
            match (key, negate) {
                ("until", false) => f.until = Some(super::container::log_time_bound(value)?.timestamp()),
                ("label", _) => f.labels.push(match value.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string()), negate),
                    None => (value.to_string(), None, negate),
                }),
                _ => bail!("invalid filter '{key}': image prune takes until=, label= and label!="),
            }
        }
        Ok(f)
    }

    fn keeps(&self, store: &Store, img: &Listed) -> anyhow::Result<bool> {
        if self.until.is_some_and(|u| img.created >= u) {
            return Ok(true);
        }
        if self.labels.is_empty() {
            return Ok(false);
        }
        let labels = image_labels(store, img)?;
        Ok(!self.labels.iter().all(|(k, v, negate)| has_label(&labels, k, v.as_deref()) != *negate))
    }
}

/// The labels of an image's configuration.
fn image_labels(store: &Store, img: &Listed) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(store
        .image(&img.record.id)?
        .map(|r| r.config(store))
        .transpose()?
        .and_then(|c| c.config.and_then(|c| c.labels))
        .unwrap_or_default()
        .into_iter()
        .collect())
}

/// Docker's label filter: `key` is there (with `value`, when one is given).
fn has_label(labels: &BTreeMap<String, String>, key: &str, value: Option<&str>) -> bool {
    labels.get(key).is_some_and(|have| value.is_none_or(|want| have == want))
}

/// Removes the dangling images (every unused one with `all`) that no
/// container or mount uses, and frees their content.
pub fn prune_images(ctx: &Context, all: bool) -> anyhow::Result<super::support::Pruned> {
    prune_images_where(ctx, all, &PruneFilter::default())
}

/// [`prune_images`] of the images `only` does not keep.
pub fn prune_images_where(ctx: &Context, all: bool, only: &PruneFilter) -> anyhow::Result<super::support::Pruned> {
    let store = open_store(ctx)?;
    let lock = store.lock_exclusive()?;
    let mut items = Vec::new();
    for img in list_images(&store)? {
        let dangling = img.tags.is_empty();
        let mounted = || !mounts::image_mounts(&ctx.layout, &img.record.id.to_string()).is_empty();
        if !(dangling || all) || is_image_in_use(&store, &img.record.id).is_some() || mounted() {
            continue;
        }
        if only.keeps(&store, &img)? {
            continue;
        }
        match store.remove_image(&lock, &img.record.id.to_string(), true) {
            Ok(lines) => items.extend(lines.iter().map(|r| match r {
                Removed::Untagged(s) => format!("untagged: {s}"),
                Removed::Deleted(d) => format!("deleted: {d}"),
            })),
            Err(e) => eprintln!("Error: {e}"),
        }
    }
    let stats = store.gc(&lock).context("freeing the removed images' content")?;
    Ok(super::support::Pruned { heading: "Deleted Images", items, bytes: stats.bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_match_like_go() {
        assert!(path_match("busybox", "busybox"));
        assert!(path_match("busy*", "busybox"));
        assert!(path_match("busybox:*", "busybox:latest"));
        assert!(!path_match("*", "library/busybox"));
        assert!(path_match("*/*", "library/busybox"));
        assert!(path_match("b?sybox", "busybox"));
        assert!(path_match("[a-c]usybox", "busybox"));
        assert!(!path_match("[^a-c]usybox", "busybox"));
        assert!(path_match("localhost:5000/*", "localhost:5000/app"));
        assert!(!path_match("busy", "busybox"));
    }

    fn listed(tags: &[&str], digests: &[&str]) -> Listed {
        let d = Digest::of(b"config");
        Listed {
            record: ImageRecord {
                id: d,
                manifest_digest: d,
                manifest_media_type: String::new(),
                index_digest: None,
                layers: vec![],
                repo_digests: vec![],
                created: None,
                size: 0,
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            },
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
            digests: digests.iter().map(|t| t.parse().unwrap()).collect(),
            created: 0,
        }
    }

    #[test]
    fn rows_per_repository_and_tag_like_docker() {
        let dg = format!("sha256:{}", "a".repeat(64));
        let row = |r: &str, t: &str, d: &str| (r.to_string(), t.to_string(), d.to_string());
        assert_eq!(expand_rows(&listed(&[], &[]), false, false), [row("<none>", "<none>", "<none>")]);
        let img = listed(&["busybox:1", "busybox:latest", "x/y:2"], &[&format!("busybox@{dg}"), &format!("z@{dg}")]);
        assert_eq!(
            expand_rows(&img, false, false),
            [
                row("busybox", "1", "<none>"),
                row("busybox", "latest", "<none>"),
                row("x/y", "2", "<none>"),
                row("z", "<none>", "")
            ]
        );
        assert_eq!(
            expand_rows(&img, true, true),
            [
                row("busybox", "1", &dg),
                row("busybox", "latest", &dg),
                row("x/y", "2", "<none>"),
                row("z", "<none>", &dg)
            ]
        );
    }

    #[test]
    fn go_time_strings() {
        assert_eq!(go_time_string(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time_string(1_700_000_000), "2023-11-14 22:13:20 +0000 UTC");
    }
}
