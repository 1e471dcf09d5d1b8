//! `inspect`, `image inspect` and `history`: what Docker shows of an image's
//! record and config, in Docker's JSON shape and column layout.

use super::image::{HistoryArgs, ImageInspectArgs, InspectArgs};
use super::support::{docker_json_indent, exit_code_for, open_store, unix_time};
use crate::context::Context;
use crate::exit;
use crate::format::{self, Output};
use anyhow::bail;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use strata_layers::error::Error as StoreError;
use strata_layers::image::{ImageConfig, ImageRecord};
use strata_layers::store::Store;

/// `docker image inspect`'s object, fields in Docker's order.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub parent: String,
    pub comment: String,
    pub created: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub docker_version: String,
    pub author: String,
    pub config: InspectConfig,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub size: u64,
    pub graph_driver: GraphDriver,
    #[serde(rename = "RootFS")]
    pub root_fs: InspectRootFs,
    pub metadata: Metadata,
}

/// The image's run config as Docker shows it (the OCI fields plus Docker's
/// extras when the image has them).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectConfig {
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    pub env: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    pub working_dir: String,
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GraphDriver {
    pub data: BTreeMap<String, String>,
    pub name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectRootFs {
    #[serde(rename = "Type")]
    pub kind: String,
    pub layers: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Metadata {
    pub last_tag_time: String,
}

/// Builds the inspect object of a stored image.
pub fn image_inspect_object(store: &Store, rec: &ImageRecord) -> anyhow::Result<ImageInspect> {
    let cfg: ImageConfig = rec.config(store)?;
    let refs = store.tags_of(&rec.id)?;
    let c = cfg.container_config();
    let other_str = |k: &str| cfg.other.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(ImageInspect {
        id: rec.id.to_string(),
        repo_tags: refs.iter().filter(|r| r.digest.is_none()).map(|r| r.familiar_string()).collect(),
        repo_digests: refs.iter().filter(|r| r.digest.is_some()).map(|r| r.familiar_string()).collect(),
        parent: String::new(),
        comment: other_str("comment"),
        created: cfg.created.clone().unwrap_or_default(),
        docker_version: other_str("docker_version"),
        author: cfg.author.clone().unwrap_or_default(),
        config: InspectConfig {
            user: c.user.clone().unwrap_or_default(),
            exposed_ports: c.exposed_ports.clone(),
            env: c.env.clone(),
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            volumes: c.volumes.clone(),
            working_dir: c.working_dir.clone().unwrap_or_default(),
            labels: c.labels.clone(),
            stop_signal: c.stop_signal.clone(),
            args_escaped: c.args_escaped,
            healthcheck: c.healthcheck.as_ref().and_then(|h| serde_json::to_value(h).ok()),
            on_build: c.on_build.clone(),
            shell: c.shell.clone(),
        },
        architecture: cfg.architecture.clone(),
        variant: cfg.variant.clone(),
        os: cfg.os.clone(),
        os_version: cfg.os_version.clone(),
        size: rec.size,
        graph_driver: GraphDriver { data: BTreeMap::new(), name: "strata".to_string() },
        root_fs: InspectRootFs {
            kind: cfg.rootfs.kind.clone(),
            layers: cfg.rootfs.diff_ids.iter().map(|d| d.to_string()).collect(),
        },
        metadata: Metadata { last_tag_time: "0001-01-01T00:00:00Z".to_string() },
    })
}

/// One inspected object: its value for templates and its JSON text in the
/// field order Docker prints (a `Value` map would sort the keys).
pub struct Inspected {
    pub value: Value,
    pub json: String,
}

impl Inspected {
    pub fn new<T: Serialize>(object: &T) -> anyhow::Result<Self> {
        Ok(Inspected { value: serde_json::to_value(object)?, json: docker_json_indent(object)? })
    }
}

/// Prints found objects as Docker does: a JSON array by default (also for
/// `--format json`), else the template once per object.
fn print_objects(objects: &[Inspected], format: Option<&str>) -> anyhow::Result<()> {
    match format {
        None | Some("") | Some("json") => {
            if objects.is_empty() {
                println!("[]");
                return Ok(());
            }
            let mut out = String::from("[\n");
            for (i, o) in objects.iter().enumerate() {
                for line in o.json.lines() {
                    out.push_str("    ");
                    out.push_str(line);
                    out.push('\n');
                }
                if i + 1 < objects.len() {
                    out.pop();
                    out.push_str(",\n");
                }
            }
            out.push(']');
            println!("{out}");
        }
        Some(f) => {
            for o in objects {
                println!("{}", format::render_loose(f, &o.value)?);
            }
        }
    }
    Ok(())
}

/// `strata image inspect IMAGE...`.
pub fn image_inspect(ctx: &Context, a: ImageInspectArgs) -> anyhow::Result<i32> {
    let store = open_store(ctx)?;
    let mut objects = Vec::new();
    let mut missing = Vec::new();
    for name in &a.images {
        match store.resolve_image(name) {
            Ok(rec) => objects.push(Inspected::new(&image_inspect_object(&store, &rec)?)?),
            Err(StoreError::NoSuchImage(_)) => missing.push(format!("No such image: {name}")),
            Err(e) => return Err(exit_code_for(e)),
        }
    }
    finish(objects, missing, a.format.as_deref())
}

fn finish(objects: Vec<Inspected>, missing: Vec<String>, format: Option<&str>) -> anyhow::Result<i32> {
    if objects.is_empty() && format.is_some_and(|f| f != "json") {
        // Docker prints nothing for a template when nothing was found.
    } else {
        print_objects(&objects, format)?;
    }
    if missing.is_empty() {
        return Ok(0);
    }
    Err(exit::with_code(1, Some(missing.join("\n"))))
}

/// `strata inspect NAME...`: containers first, then images (Docker's order).
pub fn inspect(ctx: &Context, a: InspectArgs) -> anyhow::Result<i32> {
    let store = open_store(ctx)?;
    let kind = a.kind.as_deref().unwrap_or("");
    if !matches!(kind, "" | "image" | "container") {
        bail!("\"{kind}\" is not a valid value for --type");
    }
    let mut objects = Vec::new();
    let mut missing = Vec::new();
    for name in &a.names {
        // Containers come first in Docker's lookup order.
        if kind != "image" {
            if let Some(value) = crate::commands::container::inspect_container(ctx, name)? {
                objects.push(Inspected::new(&value)?);
                continue;
            }
        }
        if kind == "container" {
            missing.push(format!("No such container: {name}"));
            continue;
        }
        match store.resolve_image(name) {
            Ok(rec) => objects.push(Inspected::new(&image_inspect_object(&store, &rec)?)?),
            Err(StoreError::NoSuchImage(_)) => missing.push(match kind {
                "image" => format!("No such image: {name}"),
                _ => format!("No such object: {name}"),
            }),
            Err(e) => return Err(exit_code_for(e)),
        }
    }
    finish(objects, missing, a.format.as_deref())
}

const HISTORY_TABLE: &str = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}";
const HISTORY_TABLE_RAW: &str = "table {{.ID}}\t{{.CreatedAt}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}";
const HISTORY_HEADERS: &[(&str, &str)] = &[
    ("ID", "IMAGE"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("CreatedBy", "CREATED BY"),
    ("Size", "SIZE"),
    ("Comment", "COMMENT"),
];

/// One history line before formatting.
struct HistoryItem {
    id: String,
    created: Option<i64>,
    created_by: String,
    size: u64,
    comment: String,
}

/// History entries newest first: the config's history, each non-empty entry
/// paired with its layer's size; the newest entry carries the image ID and
/// the others `<missing>` (they have no image of their own, as for any
/// pulled image in Docker). Configs without history get one entry per layer.
fn history_items(rec: &ImageRecord, cfg: &ImageConfig) -> Vec<HistoryItem> {
    let mut items = Vec::new();
    let mut layer = 0usize;
    match cfg.history.as_deref() {
        Some(h) if !h.is_empty() => {
            for e in h {
                let size = if e.empty_layer {
                    0
                } else {
                    let s = rec.layers.get(layer).map(|l| l.unpacked_size).unwrap_or(0);
                    layer += 1;
                    s
                };
                items.push(HistoryItem {
                    id: "<missing>".to_string(),
                    created: e.created.as_deref().map(unix_time),
                    created_by: e.created_by.clone().unwrap_or_default(),
                    size,
                    comment: e.comment.clone().unwrap_or_default(),
                });
            }
        }
        _ => {
            for l in &rec.layers {
                items.push(HistoryItem {
                    id: "<missing>".to_string(),
                    created: cfg.created.as_deref().map(unix_time),
                    created_by: String::new(),
                    size: l.unpacked_size,
                    comment: String::new(),
                });
            }
        }
    }
    items.reverse();
    if let Some(top) = items.first_mut() {
        top.id = rec.id.to_string();
    }
    items
}

pub fn history(ctx: &Context, a: HistoryArgs) -> anyhow::Result<i32> {
    let store = open_store(ctx)?;
    let default = if a.quiet {
        "{{.ID}}"
    } else if a.human {
        HISTORY_TABLE
    } else {
        HISTORY_TABLE_RAW
    };
    // As in Docker, -q only changes the default format; an explicit one wins.
    let output = Output::new(a.format.as_deref().filter(|f| !f.is_empty() && *f != "table"), default)?;
    let rec = store.resolve_image(&a.image).map_err(exit_code_for)?;
    let cfg = rec.config(&store)?;
    let trunc = !a.no_trunc;
    let rows: Vec<Value> = history_items(&rec, &cfg)
        .into_iter()
        .map(|h| {
            let id = if trunc && h.id.starts_with("sha256:") { h.id[7..19].to_string() } else { h.id };
            let created_at = h
                .created
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default();
            let since = match (a.human, h.created) {
                (true, Some(t)) => format::human_since(t),
                (true, None) => "N/A".to_string(),
                (false, _) => created_at.clone(),
            };
            let created_by = h.created_by.replace('\t', " ");
            let created_by = if trunc { format::ellipsis(&created_by, 45) } else { created_by };
            let size = if a.human { format::human_size3(h.size) } else { h.size.to_string() };
            format::row([
                ("Comment", h.comment),
                ("CreatedAt", created_at),
                ("CreatedBy", created_by),
                ("CreatedSince", since),
                ("ID", id),
                ("Size", size),
            ])
        })
        .collect();
    print!("{}", output.render(&rows, HISTORY_HEADERS)?);
    Ok(0)
}
