//! Events: what happened to containers, images, networks and volumes, for
//! `strata events` (Docker's verb; Podman's way without a daemon).
//!
//! Each command that changes something appends one JSON line, in Docker's
//! event shape (`Type`, `Action`, `Actor.ID`, `Actor.Attributes`, `time`,
//! `timeNano`), to `ROOT/events.log`: one `write` of an O_APPEND file, so
//! concurrent commands never interleave their lines. Past
//! [`MAX_LOG`] the file moves to `events.log.1` (the one before is dropped).
//! Recording is best effort: an event that cannot be written never fails
//! the command that made it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use strata_layers::StoreLayout;

/// Size past which the event log is rotated.
pub const MAX_LOG: u64 = 4 << 20;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: String,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

pub fn log_path(layout: &StoreLayout) -> PathBuf {
    layout.root().join("events.log")
}

/// Records that `action` happened to the `kind` object `id`.
pub fn emit(layout: &StoreLayout, kind: &str, action: &str, id: &str, attributes: &[(&str, &str)]) {
    let now = chrono::Utc::now();
    let nanos = now.timestamp_nanos_opt().unwrap_or(0);
    let event = Event {
        kind: kind.into(),
        action: action.into(),
        actor: Actor {
            id: id.into(),
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        },
        scope: "local".into(),
        time: now.timestamp(),
        time_nano: nanos,
    };
    let Ok(mut line) = serde_json::to_vec(&event) else { return };
    line.push(b'\n');
    let path = log_path(layout);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_LOG) {
        let mut old = path.clone().into_os_string();
        old.push(".1");
        let _ = std::fs::rename(&path, old);
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
    if let Ok(mut f) = file {
        let _ = f.write_all(&line);
    }
}

/// Docker's one-line form: `TIME TYPE ACTION ID (k=v, ...)`.
pub fn text(e: &Event) -> String {
    let time = chrono::DateTime::from_timestamp_nanos(e.time_nano).format("%Y-%m-%dT%H:%M:%S%.9fZ");
    let attrs: Vec<String> = e.actor.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if attrs.is_empty() {
        format!("{time} {} {} {}", e.kind, e.action, e.actor.id)
    } else {
        format!("{time} {} {} {} ({})", e.kind, e.action, e.actor.id, attrs.join(", "))
    }
}
