//! Small helpers the image commands share: opening the store, mapping
//! store errors to Docker's exit statuses, references, times, Docker-style
//! JSON.

use crate::context::Context;
use crate::exit;
use anyhow::Context as _;
use serde::Serialize;
use strata_layers::error::Error as StoreError;
use strata_layers::reference::Reference;
use strata_layers::store::Store;

/// Opens (creating if needed) the store the context names.
pub fn open_store(ctx: &Context) -> anyhow::Result<Store> {
    Store::open(ctx.layout.clone()).with_context(|| format!("opening the store at {}", ctx.layout.root().display()))
}

/// A missing image, an ambiguous ID or a removal conflict, with the status
/// 1 Docker gives them.
/// Fetches the rest of an image pulled with `--lazy` (see
/// `strata_layers::pull::complete_lazy`) before something that needs all
/// of it; says so on stderr, which keeps stdout for the command's output.
pub fn complete_lazy(store: &Store, record: &strata_layers::image::ImageRecord) -> anyhow::Result<()> {
    let partial = |l: &strata_layers::image::LayerRecord| {
        l.lazy_toc.is_some() && !(store.has_layer(&l.diff_id) && store.has_blob(&l.blob_digest))
    };
    if !record.layers.iter().any(partial) {
        return Ok(());
    }
    eprintln!("Fetching the rest of lazily pulled image {}", &record.id.hex()[..12]);
    let client = strata_layers::registry::RegistryClient::from_env()?;
    strata_layers::pull::complete_lazy(store, &client, record, &strata_layers::pull::NoProgress)
        .with_context(|| format!("fetching the rest of lazily pulled image {}", &record.id.hex()[..12]))?;
    Ok(())
}

pub fn exit_code_for(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::NoSuchImage(_) | StoreError::AmbiguousId(_) | StoreError::Conflict(_) => {
            exit::with_code(1, Some(e.to_string()))
        }
        other => anyhow::Error::from(other),
    }
}

/// Parses an image reference; a malformed one is Docker's
/// `invalid reference format: ...`. The status is the caller's: 1 from the
/// image commands, 125 from a `run` that pulls.
pub fn parse_reference(s: &str) -> anyhow::Result<Reference> {
    s.parse::<Reference>().map_err(anyhow::Error::from)
}

/// Unix seconds of an RFC 3339 time (0 when it does not parse).
pub fn unix_time(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).map(|t| t.timestamp()).unwrap_or(0)
}

/// JSON as Docker prints it: 4-space indentation and Go's HTML-safe
/// escaping of `<`, `>`, `&` (so output matches `docker inspect` byte for byte).
pub fn docker_json_indent<T: Serialize>(v: &T) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    v.serialize(&mut ser).context("serialising JSON")?;
    let s = String::from_utf8(buf).context("serialising JSON")?;
    Ok(go_html_escape(&s))
}

/// Go's json.Marshal escapes `<`, `>`, `&`, U+2028 and U+2029 inside strings;
/// these characters can only occur inside strings in JSON text.
pub fn go_html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// A file for `-o PATH` output: written beside `PATH` under a temporary
/// name and renamed over it by [`OutputFile::finish`], so that a failure
/// leaves no half-written file under the name.
pub struct OutputFile {
    tmp: tempfile::NamedTempFile,
    path: std::path::PathBuf,
}

impl OutputFile {
    pub fn create(path: &std::path::Path) -> anyhow::Result<OutputFile> {
        use anyhow::Context as _;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".strata-output-")
            .tempfile_in(dir)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(OutputFile { tmp, path: path.to_path_buf() })
    }

    pub fn file(&self) -> &std::fs::File {
        self.tmp.as_file()
    }

    /// Flushes the file to disk and puts it in place.
    pub fn finish(self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(&self.path).with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

/// Docker's confirmation prompt: the question on stdout, one line from
/// stdin; `y` or `yes` agrees (end of input declines).
pub fn confirm(warning: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead as _, Write as _};
    print!("{warning}\nAre you sure you want to continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the answer from stdin")?;
    if line.is_empty() {
        println!();
    }
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// What one kind of prune removed, printed as Docker prints it.
pub struct Pruned {
    /// `Deleted Containers`, `Deleted Images`, ...
    pub heading: &'static str,
    pub items: Vec<String>,
    pub bytes: u64,
}

impl Pruned {
    pub fn print_items(&self) {
        if !self.items.is_empty() {
            println!("{}:", self.heading);
            for i in &self.items {
                println!("{i}");
            }
            println!();
        }
    }

    /// The items, then the total line.
    pub fn print(&self) {
        self.print_items();
        print_reclaimed(self.bytes);
    }
}

pub fn print_reclaimed(bytes: u64) {
    println!("Total reclaimed space: {}", crate::format::human_size(bytes));
}

/// Runs `f` (on a thread of its own) with SIGPIPE blocked in this thread:
/// a writer into a pipe whose reader gave up gets EPIPE, which it reports,
/// instead of the signal, which would end the whole process (the CLI has
/// SIGPIPE's default action, for `| head`).
pub fn with_sigpipe_blocked<T>(f: impl FnOnce() -> T) -> T {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGPIPE);
    // A thread-directed SIGPIPE left pending is dropped when the thread ends.
    let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None);
    f()
}
