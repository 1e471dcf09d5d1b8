//! `strata commit` (`container commit`): a new image from a container's
//! changes, as Docker makes it.
//!
//! The container's upper directory is read back as a layer by the union
//! filesystem's crate (`strata_fs::upper_entries_hiding`, leaving out the
//! runtime's mount points as `diff` does) and written as a tar into the
//! store's temporary directory; as an ordinary user that happens inside
//! the containers' user namespace, where the files the container made as
//! other users can be read. The layers crate then ingests it and stores the
//! image (`strata_layers::commit`). The new image's configuration is the
//! container's (its command, environment, working directory, user, labels,
//! exposed ports) with `--change` instructions applied, and its history
//! gains one entry, as with Docker.
//!
//! A running container is frozen meanwhile (`--pause`, the default) as
//! `strata pause` freezes it (cgroup v2's or v1's freezer). Without a cgroup
//! of its own (an ordinary user's container without limits) it keeps
//! running: a file it writes meanwhile may be caught half written (the tar
//! stays well formed).

use std::io::{BufReader, BufWriter, Seek, Write};

use anyhow::{bail, Context as _, Result};
use clap::{ArgAction, Args};
use strata_layers::image::{History, ImageConfig};
use strata_layers::reference::Reference;
use strata_layers::store::Store;

use crate::containers::record::{self, Container};
use crate::context::Context;

#[derive(Args)]
pub struct CommitArgs {
    /// Author (e.g., "John Hannibal Smith <hannibal@a-team.com>")
    #[arg(short, long)]
    author: Option<String>,
    /// Apply Dockerfile instruction to the created image
    #[arg(short, long, value_name = "list")]
    change: Vec<String>,
    /// Commit message
    #[arg(short, long)]
    message: Option<String>,
    /// Pause container during commit
    #[arg(short, long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pause: bool,
    container: String,
    /// The new image's name, `REPOSITORY[:TAG]` (untagged without it)
    #[arg(value_name = "REPOSITORY[:TAG]")]
    repository: Option<String>,
}

pub fn commit(ctx: &Context, a: CommitArgs) -> Result<i32> {
    let c = record::find_fresh(&ctx.layout, &a.container)?;
    let tag = a.repository.as_deref().map(target_reference).transpose()?;
    let changes =
        a.change.iter().map(|l| strata_builder::parse_change(l)).collect::<std::result::Result<Vec<_>, _>>()?;
    let store = Store::open(ctx.layout.clone())?;
    let image_id: strata_layers::Digest = c.config.image_id.parse().context("the container's image id")?;
    let base = store.image(&image_id)?.with_context(|| {
        format!("the image of container {} ({}) is no longer in the store", c.config.name, c.config.image)
    })?;
    let mut config = new_config(&c, base.config(&store)?, a.author, a.message)?;
    let mut run_config = config.config.take().unwrap_or_default();
    strata_builder::apply_changes(&mut run_config, &changes)?;
    config.config = Some(run_config);

    let tar = layer_tar(ctx, &store, &c, a.pause)?;
    let record = strata_layers::commit::commit_layer(&store, &base, BufReader::new(tar), config, tag.as_ref())?;
    crate::containers::supervisor::container_event(ctx, &c, "commit", &[]);
    println!("{}", record.id);
    Ok(0)
}

/// `name[:tag]` as the new image's tag (`latest` when none is given).
fn target_reference(s: &str) -> Result<Reference> {
    let r = crate::commands::support::parse_reference(s)?;
    if r.digest.is_some() {
        bail!("refusing to create a tag with a digest reference");
    }
    Ok(match r.tag {
        Some(_) => r,
        None => r.with_tag(strata_layers::reference::DEFAULT_TAG)?,
    })
}

/// The base image's configuration with the container's settings, a new
/// creation time and one more history entry.
fn new_config(
    c: &Container,
    mut config: ImageConfig,
    author: Option<String>,
    message: Option<String>,
) -> Result<ImageConfig> {
    let created = record::now();
    let mut run = config.config.take().unwrap_or_default();
    let cc = &c.config;
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    run.entrypoint = non_empty(&cc.entrypoint);
    run.cmd = non_empty(&cc.cmd);
    run.env = non_empty(&cc.env);
    if !(cc.working_dir == "/" && run.working_dir.as_deref().unwrap_or("").is_empty()) {
        run.working_dir = Some(cc.working_dir.clone());
    }
    run.user = (!cc.user.is_empty()).then(|| cc.user.clone());
    if !cc.labels.is_empty() {
        run.labels = Some(cc.labels.clone());
    }
    if cc.stop_signal != run.stop_signal.as_deref().unwrap_or("SIGTERM") {
        run.stop_signal = Some(cc.stop_signal.clone());
    }
    if !cc.exposed_ports.is_empty() {
        let ports = run.exposed_ports.get_or_insert_with(Default::default);
        for p in &cc.exposed_ports {
            ports.insert(p.clone(), serde_json::json!({}));
        }
    }
    config.config = Some(run);
    config.created = Some(created.clone());
    config.author = author.clone();
    // Docker keeps the message in the image's own `comment` too (`inspect`'s `.Comment`).
    match &message {
        Some(m) => {
            config.other.insert("comment".into(), serde_json::Value::String(m.clone()));
        }
        None => {
            config.other.remove("comment");
        }
    }
    let created_by =
        std::iter::once(cc.path.as_str()).chain(cc.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
    config.history.get_or_insert_with(Vec::new).push(History {
        created: Some(created),
        created_by: Some(created_by),
        author,
        comment: message,
        empty_layer: false,
        other: Default::default(),
    });
    Ok(config)
}

/// The container's changes as a layer tar in the store's temporary
/// directory, rewound for reading.
pub fn layer_tar(ctx: &Context, store: &Store, c: &Container, pause: bool) -> Result<std::fs::File> {
    let lowers = c.lowers(store)?;
    let tmp = store.temp_file("commit-")?;
    let mut file = tmp.reopen().context("opening the new layer's temporary file")?;
    let writer = tmp.as_file().try_clone().context("opening the new layer's temporary file")?;
    let upper = c.upper();
    let hidden = crate::commands::container::runtime_paths(c);
    let _frozen = if pause && c.running() { Frozen::freeze(c)? } else { None };
    crate::containers::spec::in_user_namespace(ctx, move || {
        let hidden: Vec<&[u8]> = hidden.iter().map(Vec::as_slice).collect();
        let entries = strata_fs::upper_entries_hiding(&lowers, &upper, &hidden)?;
        let mut out = BufWriter::new(writer);
        strata_fs::write_layer_tar(&upper, &entries, &mut out)?;
        out.flush().context("writing the new layer")?;
        Ok(())
    })?;
    file.rewind().context("reading the new layer")?;
    Ok(file)
}

/// A running container frozen (as `pause` does) until this is dropped.
struct Frozen(strata_runner::Cgroup);

impl Frozen {
    /// Freezes the container's own cgroup, if it has one and it is not
    /// paused already (then it stays as it is). Without one (an ordinary
    /// user's container without limits) nothing is frozen.
    fn freeze(c: &Container) -> Result<Option<Frozen>> {
        let Ok(cgroup) = crate::commands::container::container_cgroup(c) else { return Ok(None) };
        if cgroup.is_frozen() {
            return Ok(None);
        }
        cgroup.set_frozen(true).context("pausing the container; commit it with --pause=false")?;
        Ok(Some(Frozen(cgroup)))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.0.set_frozen(false);
    }
}
