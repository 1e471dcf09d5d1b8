//! The build engine: a Dockerfile's stages, one instruction after another,
//! each either a change of the image's configuration or a new layer.
//!
//! - RUN: the image so far is stored (untagged), the command runs in a
//!   container of it through the [`BuildHost`] (the CLI's own container
//!   machinery: the union filesystem, the runner, rootless or not), and the
//!   container's changes come back as a layer tarball, as `commit` makes
//!   it. The untagged image is removed again.
//! - COPY and ADD: the layer is written directly from the build context or
//!   another stage (see [`crate::copy`]); no container is involved. ADD's
//!   URLs are fetched by the [`BuildHost`].
//! - WORKDIR: a layer holding the directory when the image lacks it.
//! - Everything else changes the configuration only (see
//!   [`crate::config_change`]), and records a history entry without a layer.
//!
//! ARG values reach RUN commands as environment variables and the
//! instructions' `$VAR` substitution, not the image's configuration; ENV
//! wins over an ARG of the same name. Stages build in order up to the
//! target (`--target`, else the last); `FROM` and `COPY --from` name an
//! earlier stage by name or number, or an image. ONBUILD triggers of a base
//! image run right after its FROM.
//!
//! The cache: every state carries a key, the digest of its base image (or
//! stage) and of each step since with what the step depended on (its text,
//! the ARG values, and for a step that made a layer, that layer's
//! diff_id). A RUN whose key the cache knows (`ROOT/buildcache/KEY`, a
//! small record of the layer it made) does not run again while that layer
//! is still stored; `--no-cache` runs it anyway. COPY and ADD are not
//! looked up: their layer is written from the context (or the URL) every
//! time (that reading is the check), and the same content makes the same diff_id, so
//! the RUN steps after them hit the cache again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::PathBuf;

use strata_layers::image::{History, ImageConfig, ImageRecord, LayerRecord};
use strata_layers::merge::MergedTree;
use strata_layers::reference::Reference;
use strata_layers::store::Store;
use strata_layers::Digest;

use crate::config_change::{Applier, ChangeError, ConfigChange};
use crate::copy::{self, BuildContext, CopyOptions, Item, ItemKind, LayerWriter, Origin};
use crate::dockerfile::{self, Instruction, ParseError};
use crate::words::{env_map, expand_word, split_words};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Store(#[from] strata_layers::error::Error),
    /// A step that cannot be carried out, and why.
    #[error("{step}: {message}")]
    Step { step: String, message: String },
    /// A RUN whose command failed.
    #[error("process \"{command}\" did not complete successfully: exit code: {code}")]
    Run { command: String, code: i32 },
}

/// What to build.
pub struct BuildOptions {
    pub dockerfile: String,
    pub context: PathBuf,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// Labels set on the final image (`--label`).
    pub labels: BTreeMap<String, String>,
    /// Names for the final image; the first is given as it is stored.
    pub tags: Vec<Reference>,
    /// Run every RUN step, even one the cache has.
    pub no_cache: bool,
    /// Secrets RUN steps may mount (`--secret id=ID,src=FILE`): id -> file.
    pub secrets: BTreeMap<String, PathBuf>,
}

/// A `RUN --mount=...`, resolved to what the step's container mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMount {
    /// A directory or file of the build context (read-only unless `rw`).
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
    },
    /// A directory kept in the store between builds (`type=cache`).
    Cache {
        dir: PathBuf,
        target: String,
    },
    Tmpfs {
        target: String,
    },
}

/// Why a RUN step's container failed.
pub enum RunFailure {
    /// The command ran and exited with this status.
    Exit(i32),
    /// The container could not run it.
    Other(String),
}

/// What the engine needs from the program around it.
pub trait BuildHost {
    /// The stored image `name` means, pulled when missing.
    fn base_image(&mut self, name: &str) -> Result<ImageRecord, String>;
    /// Runs `argv` in a container of `image` (as its configuration says:
    /// user, working directory, environment plus `env`); returns the
    /// container's changes as a layer tarball, rewound.
    fn run(
        &mut self,
        image: &ImageRecord,
        argv: &[String],
        env: &[String],
        mounts: &[RunMount],
    ) -> Result<File, RunFailure>;
    /// A line of progress (`STEP 2/5: RUN make`).
    fn say(&mut self, line: &str);
    /// Fetches `url` for `ADD URL` (HTTP or HTTPS GET, status 200).
    fn download(&mut self, url: &str) -> Result<Downloaded, String>;
}

/// A file fetched for `ADD URL`: its content (rewound) and size, and the
/// time its server gave it (`Last-Modified`), which becomes its mtime.
pub struct Downloaded {
    pub file: File,
    pub size: u64,
    pub mtime: Option<i64>,
}

/// A source of ADD that is fetched rather than read from the context.
fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The name a downloaded file gets in a destination directory: the last
/// segment of the URL's path (Docker's rule), or `index.html` for none.
fn url_file_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    let path = path.split_once('/').map_or("", |(_, p)| p);
    match path.rsplit('/').next().filter(|n| !n.is_empty() && *n != "." && *n != "..") {
        Some(n) => n.to_string(),
        None => "index.html".to_string(),
    }
}

/// An image being built: its layers and configuration, and the cache key
/// of how it came to be (its base and every step since, with what each
/// step's result depended on).
#[derive(Clone)]
struct State {
    layers: Vec<LayerRecord>,
    config: ImageConfig,
    key: Digest,
}

impl State {
    /// Moves the key on past a step that depended on `parts`.
    fn advance(&mut self, parts: &[&str]) {
        let mut text = self.key.to_string();
        for p in parts {
            text.push('\n');
            text.push_str(p);
        }
        self.key = Digest::of(text.as_bytes());
    }
}

struct Stage<'a> {
    name: Option<String>,
    from: &'a Instruction,
    body: &'a [Instruction],
}

struct Engine<'a> {
    store: &'a Store,
    host: &'a mut dyn BuildHost,
    context: BuildContext,
    build_args: &'a BTreeMap<String, String>,
    used_args: std::collections::BTreeSet<String>,
    step: usize,
    total: usize,
    no_cache: bool,
    secrets: &'a BTreeMap<String, PathBuf>,
    /// What the RUN step being prepared shows its command and must keep
    /// until it ends (files of `--mount=type=bind,from=`).
    scratch: Vec<tempfile::TempDir>,
}

fn step_err(ins: &Instruction, message: impl std::fmt::Display) -> BuildError {
    BuildError::Step { step: format!("line {}: {}", ins.line, ins.keyword), message: message.to_string() }
}

/// Builds `opts` and returns the final image (stored and tagged).
pub fn build(store: &Store, opts: &BuildOptions, host: &mut dyn BuildHost) -> Result<ImageRecord, BuildError> {
    let instructions = dockerfile::parse(&opts.dockerfile)?;
    let Some(first_from) = instructions.iter().position(|i| i.keyword == "FROM") else {
        return Err(BuildError::Step {
            step: "Dockerfile".into(),
            message: "no FROM instruction: a build starts from an image (FROM IMAGE, or FROM scratch)".into(),
        });
    };
    let context = BuildContext::open(&opts.context)
        .map_err(|e| BuildError::Step { step: "build context".into(), message: e.to_string() })?;
    let mut engine = Engine {
        store,
        host,
        context,
        build_args: &opts.build_args,
        used_args: Default::default(),
        step: 0,
        total: 0,
        no_cache: opts.no_cache,
        secrets: &opts.secrets,
        scratch: Vec::new(),
    };
    // Held for the whole build: the layers made so far are named by no
    // image until the end, and a prune must not take them meanwhile.
    let _lock = store.lock_shared()?;
    // ARGs before the first FROM are global: FROM lines may use them, and
    // stages may declare them again to use them.
    let mut global = BTreeMap::new();
    for ins in &instructions[..first_from] {
        if ins.keyword != "ARG" {
            return Err(step_err(ins, "only ARG instructions may come before the first FROM"));
        }
        engine.declare_args(ins, &mut global, &BTreeMap::new())?;
    }
    let mut stages = Vec::new();
    let mut rest = &instructions[first_from..];
    while let Some((from, after)) = rest.split_first() {
        let end = after.iter().position(|i| i.keyword == "FROM").unwrap_or(after.len());
        let words = split_words(&from.args, &global).map_err(|e| step_err(from, e))?;
        let name = match words.as_slice() {
            [_] => None,
            [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some(name.to_ascii_lowercase()),
            _ => return Err(step_err(from, "expected FROM IMAGE [AS NAME]")),
        };
        stages.push(Stage { name, from, body: &after[..end] });
        rest = &after[end..];
    }
    let target = match &opts.target {
        None => stages.len() - 1,
        Some(t) => stages.iter().position(|s| s.name.as_deref() == Some(&t.to_ascii_lowercase())).ok_or_else(|| {
            BuildError::Step { step: "--target".into(), message: format!("target stage \"{t}\" could not be found") }
        })?,
    };
    engine.total = stages[..=target].iter().map(|s| 1 + s.body.len()).sum();

    let mut built: Vec<(Option<String>, State)> = Vec::new();
    for stage in &stages[..=target] {
        let state = engine.stage(stage, &global, &built)?;
        built.push((stage.name.clone(), state));
    }
    let Some((_, mut state)) = built.pop() else { unreachable!("at least one stage was built") };
    if !opts.labels.is_empty() {
        let run = state.config.config.get_or_insert_with(Default::default);
        run.labels.get_or_insert_with(Default::default).extend(opts.labels.clone());
    }
    state.config.created = Some(now());
    let record = strata_layers::commit::store_image(store, state.layers, state.config, opts.tags.first())?;
    for tag in opts.tags.iter().skip(1) {
        store.tag(&record.id, tag)?;
    }
    let unused: Vec<&String> = opts.build_args.keys().filter(|k| !engine.used_args.contains(*k)).collect();
    if !unused.is_empty() {
        let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
        engine.host.say(&format!("[Warning] One or more build-args [{}] were not consumed", names.join(" ")));
    }
    Ok(record)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl Engine<'_> {
    fn announce(&mut self, ins: &Instruction) {
        self.step += 1;
        let line = format!("STEP {}/{}: {ins}", self.step, self.total);
        self.host.say(&line);
    }

    /// `ARG NAME[=default] ...` into `scope`; a name without a default takes
    /// the build argument, or the global value.
    fn declare_args(
        &mut self,
        ins: &Instruction,
        scope: &mut BTreeMap<String, String>,
        global: &BTreeMap<String, String>,
    ) -> Result<(), BuildError> {
        let mut env = global.clone();
        env.extend(scope.clone());
        for w in split_words(&ins.args, &env).map_err(|e| step_err(ins, e))? {
            let (name, default) = match w.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (w.clone(), None),
            };
            if name.is_empty() {
                return Err(step_err(ins, "ARG names can not be blank"));
            }
            let value = match self.build_args.get(&name) {
                Some(v) => {
                    self.used_args.insert(name.clone());
                    Some(v.clone())
                }
                None => default.or_else(|| global.get(&name).cloned()),
            };
            if let Some(v) = value {
                scope.insert(name, v);
            }
        }
        Ok(())
    }

    fn stage(
        &mut self,
        stage: &Stage,
        global: &BTreeMap<String, String>,
        built: &[(Option<String>, State)],
    ) -> Result<State, BuildError> {
        self.announce(stage.from);
        let words = split_words(&stage.from.args, global).map_err(|e| step_err(stage.from, e))?;
        let base = words.first().cloned().unwrap_or_default();
        let mut triggers = Vec::new();
        let mut state = if let Some(s) = self.earlier(&base, built) {
            s.clone()
        } else if base == "scratch" {
            let host = strata_layers::manifest::Platform::host();
            State {
                layers: Vec::new(),
                config: ImageConfig {
                    architecture: host.architecture,
                    os: host.os,
                    variant: host.variant,
                    config: Some(Default::default()),
                    ..Default::default()
                },
                key: Digest::of(b"FROM scratch"),
            }
        } else {
            let record = self.host.base_image(&base).map_err(|m| step_err(stage.from, m))?;
            let mut config = record.config(self.store)?;
            triggers = config.config.as_mut().and_then(|c| c.on_build.take()).unwrap_or_default();
            State { layers: record.layers.clone(), config, key: Digest::of(format!("FROM {}", record.id).as_bytes()) }
        };
        let mut args = BTreeMap::new();
        let mut applier = Applier::default();
        for t in &triggers {
            let parsed = dockerfile::parse(t)?;
            for ins in &parsed {
                self.host.say(&format!("(ONBUILD) {ins}"));
                self.instruction(ins, &mut state, &mut args, global, built, &mut applier)?;
            }
        }
        for ins in stage.body {
            self.announce(ins);
            self.instruction(ins, &mut state, &mut args, global, built, &mut applier)?;
        }
        Ok(state)
    }

    /// An earlier stage named `name` (or numbered).
    fn earlier<'b>(&self, name: &str, built: &'b [(Option<String>, State)]) -> Option<&'b State> {
        let lower = name.to_ascii_lowercase();
        built
            .iter()
            .find(|(n, _)| n.as_deref() == Some(lower.as_str()))
            .or_else(|| name.parse::<usize>().ok().and_then(|i| built.get(i)))
            .map(|(_, s)| s)
    }

    fn instruction(
        &mut self,
        ins: &Instruction,
        state: &mut State,
        args: &mut BTreeMap<String, String>,
        global: &BTreeMap<String, String>,
        built: &[(Option<String>, State)],
        applier: &mut Applier,
    ) -> Result<(), BuildError> {
        let created_by = ins.to_string();
        let args_json = serde_json::to_string(&*args).unwrap_or_default();
        state.advance(&[&created_by, &args_json]);
        match ins.keyword.as_str() {
            "ARG" => return self.declare_args(ins, args, global),
            "FROM" => unreachable!("stages are split at FROM"),
            "RUN" => {
                let ran = self.run(ins, state, args, built);
                self.scratch.clear();
                ran?
            }
            "COPY" | "ADD" => self.copy(ins, state, args, built)?,
            "SHELL" => {
                let shell = ins.json_args().filter(|s| !s.is_empty()).ok_or_else(|| {
                    step_err(ins, "SHELL requires the arguments to be in JSON form, like SHELL [\"/bin/bash\", \"-c\"]")
                })?;
                state.config.config.get_or_insert_with(Default::default).shell = Some(shell);
                history(state, &created_by, true);
            }
            "MAINTAINER" => {
                state.config.author = Some(ins.args.clone());
                history(state, &created_by, true);
            }
            keyword => {
                // The parser took flags (HEALTHCHECK --interval=...) off the
                // arguments; the configuration change reads them there.
                let flags: String = ins.flags.iter().map(|(n, v)| format!("--{n}={v} ")).collect();
                let change = ConfigChange { instruction: keyword.to_string(), args: flags + &ins.args };
                let run = state.config.config.get_or_insert_with(Default::default);
                applier.apply(run, &change, args).map_err(|e| step_err(ins, e))?;
                let workdir = (keyword == "WORKDIR").then(|| run.working_dir.clone()).flatten();
                let made = match workdir {
                    Some(dir) => self.make_dir(state, &dir, ins)?,
                    None => false,
                };
                history(state, &created_by, !made);
            }
        }
        Ok(())
    }

    fn merged(&self, layers: &[LayerRecord]) -> Result<MergedTree, BuildError> {
        let indexes = layers.iter().map(|l| self.store.layer_index(&l.diff_id)).collect::<Result<Vec<_>, _>>()?;
        MergedTree::from_layers(&indexes)
            .map_err(|e| BuildError::Step { step: "reading the image".into(), message: e.to_string() })
    }

    /// Adds a layer holding directory `dir` (and its parents) if the image
    /// lacks it; true when it did.
    fn make_dir(&mut self, state: &mut State, dir: &str, ins: &Instruction) -> Result<bool, BuildError> {
        let tree = self.merged(&state.layers)?;
        let landed = copy::land_in_tree(&tree, dir.as_bytes());
        if landed.is_empty() || tree.entries.contains_key(&landed) {
            return Ok(false);
        }
        add_layer(self.store, state, ins, |w| w.dir_if_missing(&tree, &landed))?;
        Ok(true)
    }

    fn run(
        &mut self,
        ins: &Instruction,
        state: &mut State,
        args: &BTreeMap<String, String>,
        built: &[(Option<String>, State)],
    ) -> Result<(), BuildError> {
        let mut mounts = Vec::new();
        for (flag, value) in &ins.flags {
            match flag.as_str() {
                "mount" => mounts.extend(self.run_mount(ins, value, state, built)?),
                "network" if matches!(value.as_str(), "default" | "none" | "host") => {}
                _ => return Err(step_err(ins, format!("RUN --{flag} is not supported by strata yet"))),
            }
        }
        let run = state.config.config.clone().unwrap_or_default();
        // `RUN <<EOF` whose document starts with `#!`: the document is the
        // program (BuildKit's rule), shown read-only and run by its own
        // interpreter; the file stays for the step and is in no layer.
        let mut _script_file = None;
        let script_doc = match ins.heredocs.as_slice() {
            [only] if ins.json_args().is_none() && ins.args.trim() == only.word && only.body.starts_with("#!") => {
                Some(only)
            }
            _ => None,
        };
        let argv = match ins.json_args() {
            Some(a) if !a.is_empty() => a,
            Some(_) => return Err(step_err(ins, "RUN needs a command")),
            None if script_doc.is_some() => {
                let doc = script_doc.map(|d| (d.name.clone(), d.body.clone())).unwrap_or_default();
                let io_err = |e: io::Error| step_err(ins, e);
                let mut file = self.store.temp_file("run-script-")?;
                file.write_all(doc.1.as_bytes()).map_err(io_err)?;
                // Closed before it runs: a file open for writing cannot be executed (ETXTBSY).
                let path = file.into_temp_path();
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(io_err)?;
                let target = format!("/run/strata-scripts/{}", doc.0);
                mounts.push(RunMount::Bind { source: path.to_path_buf(), target: target.clone(), readonly: true });
                _script_file = Some(path);
                vec![target]
            }
            None => {
                let mut shell = run.shell.clone().unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
                shell.push(run_script(ins));
                shell
            }
        };
        // ARGs reach the command as environment variables; ENV wins over them.
        let env_names = env_map(run.env.as_deref().unwrap_or_default());
        let env: Vec<String> =
            args.iter().filter(|(k, _)| !env_names.contains_key(*k)).map(|(k, v)| format!("{k}={v}")).collect();
        let key = state.key;
        if !self.no_cache {
            if let Some(layer) = crate::cache::lookup(self.store, &key) {
                self.host.say(&format!("--> Using cache {}", &layer.diff_id.hex()[..12]));
                state.advance(&[&layer.diff_id.to_string()]);
                state.layers.push(layer);
                history(state, &format!("RUN {}", argv.join(" ")), false);
                return Ok(());
            }
        }
        let (image, is_new) =
            strata_layers::commit::store_image_telling(self.store, state.layers.clone(), state.config.clone(), None)?;
        let outcome = self.host.run(&image, &argv, &env, &mounts);
        if is_new {
            self.store.update_records(|r| r.delete_image(&image.id))?;
        }
        let file = match outcome {
            Ok(f) => f,
            Err(RunFailure::Exit(code)) => return Err(BuildError::Run { command: argv.join(" "), code }),
            Err(RunFailure::Other(m)) => return Err(step_err(ins, m)),
        };
        let layer = strata_layers::commit::add_layer(self.store, BufReader::new(file))?;
        crate::cache::remember(self.store, &key, &layer)?;
        state.advance(&[&layer.diff_id.to_string()]);
        state.layers.push(layer);
        history(state, &format!("RUN {}", argv.join(" ")), false);
        Ok(())
    }

    /// One `--mount=type=...,target=...` of a RUN. A bind mount's content
    /// moves the cache key on (as the layer of a COPY would), so that a
    /// changed file under it runs the step again.
    fn run_mount(
        &mut self,
        ins: &Instruction,
        spec: &str,
        state: &mut State,
        built: &[(Option<String>, State)],
    ) -> Result<Option<RunMount>, BuildError> {
        let mut kind = "bind";
        let (mut target, mut source, mut id, mut from) = (None, None, None, None);
        let mut readonly = true;
        let mut required = false;
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "type" => kind = if v.is_empty() { "bind" } else { v },
                "target" | "dst" | "destination" => target = Some(v.to_string()),
                "source" | "src" => source = Some(v.to_string()),
                "id" => id = Some(v.to_string()),
                "rw" | "readwrite" => readonly = v == "false",
                "ro" | "readonly" => readonly = v != "false",
                // Sharing modes, owners and modes of a cache: one build at a time, kept as made.
                "sharing" | "mode" | "uid" | "gid" => {}
                "required" => required = v != "false",
                "from" => from = Some(v.to_string()),
                other => return Err(step_err(ins, format!("unknown --mount option {other:?}"))),
            }
        }
        if kind == "ssh" {
            return Err(step_err(ins, "RUN --mount=type=ssh is not supported by strata yet"));
        }
        if from.is_some() && kind != "bind" {
            return Err(step_err(ins, format!("RUN --mount=type={kind},from= is not supported by strata yet")));
        }
        if kind == "secret" {
            // A secret given with `--secret`, read-only at /run/secrets/ID (or
            // the target); one not given is left out unless required. Its
            // content is not part of the cache key (as with BuildKit).
            let id = id.or_else(|| target.as_deref().and_then(|t| t.rsplit('/').next()).map(String::from));
            let id = id.filter(|i| !i.is_empty()).ok_or_else(|| step_err(ins, "a secret mount needs id=ID"))?;
            let target = target.unwrap_or_else(|| format!("/run/secrets/{id}"));
            return match self.secrets.get(&id) {
                Some(file) => Ok(Some(RunMount::Bind { source: file.clone(), target, readonly: true })),
                None if required => {
                    Err(step_err(ins, format!("secret {id} is required: give it with --secret id={id},src=FILE")))
                }
                None => Ok(None),
            };
        }
        let target = target.filter(|t| !t.is_empty()).ok_or_else(|| step_err(ins, "--mount needs target=PATH"))?;
        let workdir = state.config.config.as_ref().and_then(|c| c.working_dir.clone()).unwrap_or_else(|| "/".into());
        let target =
            if target.starts_with('/') { target } else { format!("{}/{target}", workdir.trim_end_matches('/')) };
        match kind {
            "tmpfs" => Ok(Some(RunMount::Tmpfs { target })),
            "cache" => {
                let key = id.unwrap_or_else(|| target.clone());
                let dir = self.store.layout().build_cache_dir().join("mounts").join(Digest::of(key.as_bytes()).hex());
                std::fs::create_dir_all(&dir)
                    .map_err(|e| step_err(ins, format!("cache mount {}: {e}", dir.display())))?;
                Ok(Some(RunMount::Cache { dir, target }))
            }
            "bind" if !readonly => Err(step_err(
                ins,
                "RUN --mount=type=bind,rw is not supported by strata yet: its writes would reach the build context",
            )),
            "bind" if from.is_some() => {
                let name = from.unwrap_or_default();
                let layers = match self.earlier(&name, built) {
                    Some(s) => s.layers.clone(),
                    None => self.host.base_image(&name).map_err(|m| step_err(ins, m))?.layers,
                };
                let tree = self.merged(&layers)?;
                let objects = self.store.layout().objects_dir();
                let origin = Origin::Image { tree: &tree, objects: &objects };
                let src = source.unwrap_or_else(|| ".".into());
                let (item, all) = bind_items(ins, &origin, &src, state)?;
                // A read-only copy of the stage's files, for this step only.
                let dir = self.store.temp_dir("run-mount-from-")?;
                let root = dir.path().join("m");
                copy::materialize(&origin, &item, &all, &root).map_err(|e| step_err(ins, e))?;
                let source = root.clone();
                self.scratch.push(dir);
                Ok(Some(RunMount::Bind { source, target, readonly }))
            }
            "bind" => {
                let src = source.unwrap_or_else(|| ".".into());
                let origin = Origin::Context(&self.context);
                let (item, _) = bind_items(ins, &origin, &src, state)?;
                let source = self.context.dir().join(String::from_utf8_lossy(&item.path).as_ref());
                Ok(Some(RunMount::Bind { source, target, readonly }))
            }
            other => Err(step_err(ins, format!("unknown mount type {other:?}"))),
        }
    }

    fn copy(
        &mut self,
        ins: &Instruction,
        state: &mut State,
        args: &BTreeMap<String, String>,
        built: &[(Option<String>, State)],
    ) -> Result<(), BuildError> {
        let add = ins.keyword == "ADD";
        for (flag, _) in &ins.flags {
            let known = matches!(flag.as_str(), "from" | "chown" | "chmod" | "link") || (add && flag == "checksum");
            if !known || (add && flag == "from") {
                return Err(step_err(ins, format!("{} --{flag} is not supported", ins.keyword)));
            }
        }
        let run = state.config.config.clone().unwrap_or_default();
        let mut env = args.clone();
        env.extend(env_map(run.env.as_deref().unwrap_or_default()));
        let words = match ins.json_args() {
            Some(w) => w.iter().map(|w| expand_word(w, &env)).collect::<Result<Vec<_>, _>>(),
            None => split_words(&ins.args, &env),
        }
        .map_err(|e| step_err(ins, e))?;
        let Some((dest, sources)) = words.split_last().filter(|(_, s)| !s.is_empty()) else {
            return Err(step_err(ins, format!("{} requires at least two arguments: SOURCE... DEST", ins.keyword)));
        };
        if add && sources.iter().any(|s| s.starts_with("git@") || (is_url(s) && s.ends_with(".git"))) {
            return Err(step_err(ins, "ADD of a git repository is not supported by strata yet: clone it and COPY it"));
        }
        // ADD URL: fetched now (every build, as BuildKit checks it), checked
        // against --checksum when given.
        let mut downloads: Vec<(String, Downloaded)> = Vec::new();
        if add {
            let checksum = match ins.flag("checksum") {
                Some(c) => Some(
                    c.parse::<Digest>()
                        .map_err(|_| step_err(ins, format!("invalid --checksum={c}: expected sha256:HEX")))?,
                ),
                None => None,
            };
            for url in sources.iter().filter(|s| is_url(s)) {
                let mut got = self.host.download(url).map_err(|m| step_err(ins, m))?;
                if let Some(want) = checksum {
                    let mut hashed = strata_layers::digest::HashingWriter::default();
                    io::copy(&mut got.file, &mut hashed).map_err(|e| step_err(ins, e))?;
                    got.file.rewind().map_err(|e| step_err(ins, e))?;
                    let actual = hashed.finish();
                    if actual != want {
                        return Err(step_err(
                            ins,
                            format!("{url}: the content's digest is {actual}, not the {want} of --checksum"),
                        ));
                    }
                }
                downloads.push((url_file_name(url), got));
            }
        } else if ins.flag("checksum").is_some() {
            return Err(step_err(ins, "COPY --checksum is not supported"));
        }
        let sources: Vec<&String> = sources.iter().filter(|s| !(add && is_url(s))).collect();
        let existing = self.merged(&state.layers)?;
        let workdir = run.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
        let absolute = if dest.starts_with('/') { dest.clone() } else { format!("{workdir}/{dest}") };
        let dest_dir = dest.ends_with('/') || dest.ends_with("/.") || sources.len() > 1;

        // The origin: the context, an earlier stage or an image.
        let from_tree;
        let objects = self.store.layout().objects_dir();
        let origin = match ins.flag("from") {
            None => Origin::Context(&self.context),
            Some(name) => {
                let layers = match self.earlier(name, built) {
                    Some(s) => s.layers.clone(),
                    None => self.host.base_image(name).map_err(|m| step_err(ins, m))?.layers,
                };
                from_tree = self.merged(&layers)?;
                Origin::Image { tree: &from_tree, objects: &objects }
            }
        };
        let mut items: Vec<Item> = Vec::new();
        // Here-documents as sources: files of their name and text.
        let mut inline: Vec<&dockerfile::Heredoc> = Vec::new();
        let mut globbed = false;
        for s in sources {
            let doc = s.strip_prefix("<<").map(|n| n.strip_prefix('-').unwrap_or(n));
            if let Some(h) = doc.and_then(|n| ins.heredocs.iter().find(|h| h.name == n)) {
                inline.push(h);
                continue;
            }
            globbed |= s.contains(['*', '?', '[']);
            items.extend(origin.sources(s).map_err(|e| step_err(ins, e))?);
        }
        let landed = copy::land_in_tree(&existing, absolute.as_bytes());
        let is_dir_there = matches!(
            existing.entries.get(&landed).map(|e| &e.kind),
            Some(strata_layers::EntryKind::Dir | strata_layers::EntryKind::Opaque)
        );
        let into_dir = dest_dir || globbed || items.len() + inline.len() + downloads.len() > 1 || is_dir_there;
        let owner = match ins.flag("chown") {
            Some(spec) => Some(copy::owner_ids(spec, &existing, &objects).map_err(|m| step_err(ins, m))?),
            None => None,
        };
        let chmod =
            match ins.flag("chmod") {
                Some(m) => Some(u32::from_str_radix(m, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
                    step_err(ins, format!("invalid --chmod={m}: an octal mode such as 755 is expected"))
                })?),
                None => None,
            };
        let opts = CopyOptions { owner, chmod };
        let join = |a: &[u8], b: &[u8]| -> Vec<u8> {
            match (a.is_empty(), b.is_empty()) {
                (true, _) => b.to_vec(),
                (_, true) => a.to_vec(),
                _ => [a, b"/", b].concat(),
            }
        };
        add_layer(self.store, state, ins, |w| {
            for h in &inline {
                let target = if into_dir { join(&landed, h.name.as_bytes()) } else { landed.clone() };
                w.parents(&existing, &target)?;
                w.inline(&target, h.body.as_bytes(), &opts)?;
            }
            for (name, got) in &mut downloads {
                let target = if into_dir { join(&landed, name.as_bytes()) } else { landed.clone() };
                w.parents(&existing, &target)?;
                w.downloaded(&target, &mut got.file, got.size, got.mtime, &opts)?;
            }
            for item in &items {
                if item.kind == ItemKind::Dir {
                    w.dir_if_missing(&existing, &landed)?;
                    for child in origin.below(item)? {
                        let rel = child.path.get(item.path.len()..).unwrap_or_default();
                        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
                        w.item(&origin, &child, &join(&landed, rel), &opts)?;
                    }
                    continue;
                }
                let name = item.path.rsplit(|&b| b == b'/').next().unwrap_or_default();
                let target = if into_dir { join(&landed, name) } else { landed.clone() };
                if add && item.kind == ItemKind::File {
                    if let Some(archive) = archive_reader(origin.open(item)?)? {
                        w.dir_if_missing(&existing, &landed)?;
                        unpack_into(w, archive, &landed)?;
                        continue;
                    }
                }
                w.parents(&existing, &target)?;
                w.item(&origin, item, &target, &opts)?;
            }
            Ok(())
        })?;
        history(state, &ins.to_string(), false);
        Ok(())
    }
}

/// The one path a bind mount's `source` names in `origin`, and everything
/// at and below it; what they hold, as a COPY of them would write it,
/// moves the step's cache key on.
fn bind_items(
    ins: &Instruction,
    origin: &Origin,
    source: &str,
    state: &mut State,
) -> Result<(Item, Vec<Item>), BuildError> {
    let items = origin.sources(source).map_err(|e| step_err(ins, e))?;
    let [item] = items.as_slice() else {
        return Err(step_err(ins, "a bind mount's source names one path"));
    };
    let mut hashed = strata_layers::digest::HashingWriter::default();
    let mut w = LayerWriter::new(&mut hashed);
    let all =
        if item.kind == ItemKind::Dir { origin.below(item).map_err(|e| step_err(ins, e))? } else { vec![item.clone()] };
    for i in &all {
        w.item(origin, i, &i.path, &CopyOptions::default()).map_err(|e| step_err(ins, e))?;
    }
    w.finish().map_err(|e| step_err(ins, e))?;
    state.advance(&[&hashed.finish().to_string()]);
    Ok((item.clone(), all))
}

/// Writes a layer with `fill` and adds it to `state`; a failure names `ins`.
fn add_layer(
    store: &Store,
    state: &mut State,
    ins: &Instruction,
    fill: impl FnOnce(&mut LayerWriter<BufWriter<File>>) -> io::Result<()>,
) -> Result<(), BuildError> {
    let io_err = |e: io::Error| step_err(ins, e);
    let tmp = store.temp_file("build-layer-")?;
    let mut file = tmp.reopen().map_err(io_err)?;
    let mut w = LayerWriter::new(BufWriter::new(tmp.as_file().try_clone().map_err(io_err)?));
    fill(&mut w).map_err(io_err)?;
    w.finish().and_then(|mut b| b.flush()).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    let layer = strata_layers::commit::add_layer(store, BufReader::new(file))?;
    state.advance(&[&layer.diff_id.to_string()]);
    state.layers.push(layer);
    Ok(())
}

/// The shell-form command of a RUN: `RUN <<EOF` alone runs the document as
/// the script; otherwise the documents follow the line, for the shell to
/// read as its own here-documents (`RUN python3 <<EOF`).
fn run_script(ins: &Instruction) -> String {
    match ins.heredocs.as_slice() {
        [] => ins.args.clone(),
        [only] if ins.args.trim() == only.word => only.body.clone(),
        docs => {
            let mut script = ins.args.clone();
            for h in docs {
                script.push('\n');
                script.push_str(&h.body);
                script.push_str(&h.name);
            }
            script
        }
    }
}

/// A history entry for the step (`empty` when it made no layer).
fn history(state: &mut State, created_by: &str, empty: bool) {
    state.config.history.get_or_insert_with(Vec::new).push(History {
        created: Some(now()),
        created_by: Some(created_by.to_string()),
        author: None,
        comment: Some("buildkit.dockerfile.v0".into()),
        empty_layer: empty,
        other: Default::default(),
    });
}

/// The file as a tar stream when it is a tar archive, plain or gzipped
/// (ADD unpacks those; anything else is copied as it is).
fn archive_reader(mut file: File) -> io::Result<Option<Box<dyn Read>>> {
    let mut head = [0u8; 2];
    let n = file.read(&mut head)?;
    file.rewind()?;
    let gzipped = n == 2 && head == [0x1f, 0x8b];
    let mut probe: Box<dyn Read> =
        if gzipped { Box::new(flate2::read::GzDecoder::new(&mut file)) } else { Box::new(&mut file) };
    let mut block = [0u8; 512];
    let mut got = 0;
    while got < block.len() {
        match probe.read(&mut block[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(_) => return Ok(None),
        }
    }
    drop(probe);
    if got < 512 || &block[257..262] != b"ustar" {
        return Ok(None);
    }
    file.rewind()?;
    Ok(Some(if gzipped { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) }))
}

/// ADD's unpacking of an archive into `dest`: each entry re-rooted there
/// (a path that climbs out is refused), owners and modes as archived.
fn unpack_into<W: Write>(w: &mut LayerWriter<W>, archive: Box<dyn Read>, dest: &[u8]) -> io::Result<()> {
    let mut ar = tar::Archive::new(archive);
    for entry in ar.entries()? {
        let mut e = entry?;
        let raw = e.path_bytes().into_owned();
        let rel = copy::clean_relative(&raw).ok_or_else(|| {
            io::Error::other(format!("archive entry {:?} climbs out of the destination", String::from_utf8_lossy(&raw)))
        })?;
        if rel.is_empty() {
            continue;
        }
        let path = if dest.is_empty() { rel } else { [dest, b"/", &rel[..]].concat() };
        let mut h = e.header().clone();
        let link = match e.header().entry_type() {
            tar::EntryType::Symlink => e.link_name_bytes().map(|l| l.into_owned()),
            tar::EntryType::Link => {
                let target = e.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
                let target =
                    copy::clean_relative(&target).ok_or_else(|| io::Error::other("hard link out of the archive"))?;
                Some(if dest.is_empty() { target } else { [dest, b"/", &target[..]].concat() })
            }
            _ => None,
        };
        w.raw(&mut h, &path, link.as_deref(), &mut e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_told_from_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "a/b", &b"hi"[..]).unwrap();
        let tar_bytes = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_bytes).unwrap();
        let gz_bytes = gz.finish().unwrap();
        let mut gz_text = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz_text.write_all(&[b'x'; 600]).unwrap();
        let gz_text = gz_text.finish().unwrap();
        for (name, bytes, is_archive) in [
            ("t.tar", tar_bytes, true),
            ("t.tgz", gz_bytes, true),
            ("x.gz", gz_text, false),
            ("plain", b"hello".to_vec(), false),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, &bytes).unwrap();
            let r = archive_reader(File::open(&p).unwrap()).unwrap();
            assert_eq!(r.is_some(), is_archive, "{name}");
            if let Some(r) = r {
                let mut out = LayerWriter::new(Vec::new());
                unpack_into(&mut out, r, b"dst").unwrap();
                let tar = out.finish().unwrap();
                let mut ar = tar::Archive::new(&tar[..]);
                let paths: Vec<String> =
                    ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
                assert_eq!(paths, ["dst/a/b"], "{name}");
            }
        }
    }

    #[test]
    fn archive_entries_cannot_climb_out() {
        let mut raw = tar::Header::new_gnu();
        raw.set_size(0);
        raw.set_mode(0o644);
        // The tar crate refuses `..` in paths it writes: write the name by hand.
        raw.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../../escape");
        raw.set_cksum();
        let mut bytes = raw.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        let mut out = LayerWriter::new(Vec::new());
        let err = unpack_into(&mut out, Box::new(std::io::Cursor::new(bytes)), b"dst").unwrap_err();
        assert!(err.to_string().contains("climbs out"), "{err}");
    }
}
