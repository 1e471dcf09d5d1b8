//! `manifest inspect`: a manifest or manifest list as the registry serves
//! it, without pulling the image (Docker's `docker manifest inspect`). The
//! document is checked against its digest like any pull; `--verbose` adds
//! Docker's wrapper (the reference, the descriptor) and, for a list, each
//! platform's manifest.

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::{json, Value};
use strata_layers::reference::Reference;
use strata_layers::registry::RegistryClient;

#[derive(Args)]
pub struct ManifestInspectArgs {
    /// Output additional info including layers and platform
    #[arg(short, long)]
    verbose: bool,
    /// Allow communication with an insecure registry (strata speaks plain HTTP to loopback registries and to those configured so)
    #[arg(long)]
    insecure: bool,
    #[arg(value_name = "MANIFEST_LIST|MANIFEST")]
    reference: String,
}

pub fn inspect(a: ManifestInspectArgs) -> Result<i32> {
    let _ = a.insecure;
    let r: Reference = super::support::parse_reference(&a.reference)?;
    let client = RegistryClient::from_env()?;
    let fetched = client.get_manifest(&r).map_err(|e| {
        if e.is_not_found() {
            crate::exit::with_code(1, Some(format!("no such manifest: {}", r.familiar_string())))
        } else {
            anyhow::Error::from(e).context(format!("inspecting {}", r.familiar_string()))
        }
    })?;
    let doc: Value =
        serde_json::from_slice(&fetched.bytes).context("the registry served a manifest that is not JSON")?;
    if !a.verbose {
        // The document as served, keys in its own order, indented.
        println!("{}", indent(&String::from_utf8_lossy(&fetched.bytes)));
        return Ok(0);
    }
    // (Written as text: Docker's key order, and the manifests' own.)
    let out = if let Some(entries) = doc.get("manifests").and_then(Value::as_array) {
        let mut all = Vec::new();
        for entry in entries {
            let Some(digest) = entry.get("digest").and_then(Value::as_str) else { continue };
            let child = r.with_digest(digest.parse()?);
            let one = client.get_manifest(&child).with_context(|| format!("fetching {digest}"))?;
            all.push(verbose(&child, &one.media_type, &one.digest, &one.bytes, entry.get("platform"))?);
        }
        format!("[{}]", all.join(","))
    } else {
        verbose(&r, &fetched.media_type, &fetched.digest, &fetched.bytes, None)?
    };
    println!("{}", indent(&out));
    Ok(0)
}

/// Docker's verbose form of one manifest, as JSON text.
fn verbose(
    r: &Reference,
    media_type: &str,
    digest: &strata_layers::Digest,
    bytes: &[u8],
    platform: Option<&Value>,
) -> Result<String> {
    let text = std::str::from_utf8(bytes).context("the registry served a manifest that is not UTF-8")?;
    serde_json::from_str::<Value>(text).context("the registry served a manifest that is not JSON")?;
    let key = if media_type.contains("vnd.oci.") { "OCIManifest" } else { "SchemaV2Manifest" };
    let platform = platform.map(|p| format!(",\"platform\":{p}")).unwrap_or_default();
    let descriptor = format!(
        "{{\"mediaType\":{},\"digest\":{},\"size\":{}{platform}}}",
        json!(media_type),
        json!(digest.to_string()),
        bytes.len()
    );
    Ok(format!("{{\"Ref\":{},\"Descriptor\":{descriptor},\"{key}\":{text}}}", json!(r.to_string())))
}

/// Re-indents JSON text (valid JSON: checked by the caller) with three
/// spaces, keeping its keys in their order.
fn indent(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"   ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                if chars.peek().is_some_and(|n| *n == '}' || *n == ']') {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}
