//! The fixture images (tests/fixtures/make-fixtures.sh), built once and
//! cached in `target/fixtures-cache/KEY`, where KEY hashes the fixture
//! scripts: editing a script rebuilds them. An flock on
//! `target/fixtures-cache/.lock` keeps test binaries running in parallel from
//! building them twice; the build goes to a temp dir renamed into place, so
//! a half-built cache is never seen.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the fixture layouts are (see make-fixtures.sh for the tags).
#[derive(Debug)]
pub struct Fixtures {
    pub dir: PathBuf,
    /// OCI layout, gzip layers: tags busybox, full, amd64, arm64, multi (index).
    pub oci: PathBuf,
    /// OCI layout, zstd layers: tag full (same diff_ids as oci:full).
    pub zstd: PathBuf,
    /// OCI layout, zstd:chunked layers: tag full (same diff_ids as oci:full).
    pub chunked: PathBuf,
}

/// The fixtures, built on first use in this process (or taken from the cache).
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(build_or_reuse)
}

fn script_dir() -> PathBuf {
    crate::paths::crate_dir().join("fixtures")
}

fn cache_key() -> String {
    let mut all = Vec::new();
    for name in ["make-fixtures.sh", "gen.py", "policy.json"] {
        let p = script_dir().join(name);
        all.extend(fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())));
        all.push(0);
    }
    crate::sha256_hex(&all)[..16].to_string()
}

fn build_or_reuse() -> Fixtures {
    let cache = crate::paths::target_dir().join("fixtures-cache");
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("mkdir {}: {e}", cache.display()));
    let dir = cache.join(cache_key());
    let fixtures =
        Fixtures { oci: dir.join("oci"), zstd: dir.join("zstd"), chunked: dir.join("chunked"), dir: dir.clone() };
    if dir.join("done").exists() {
        return fixtures;
    }
    let lock_path = cache.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
    // SAFETY: flock on a file descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        panic!("flock {}: {}", lock_path.display(), std::io::Error::last_os_error());
    }
    if dir.join("done").exists() {
        return fixtures;
    }
    let tmp = cache.join(format!(".build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&dir);
    build(&tmp);
    fs::write(tmp.join("done"), b"").unwrap_or_else(|e| panic!("write done marker: {e}"));
    fs::rename(&tmp, &dir).unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), dir.display()));
    // Fixtures of older script versions are dead weight (~100 MB each).
    // Only key-named directories: others (debian/) are other caches.
    if let Ok(rd) = fs::read_dir(&cache) {
        for e in rd.flatten() {
            let p = e.path();
            let is_key =
                e.file_name().to_str().is_some_and(|n| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit()));
            if p != dir && is_key && p.is_dir() {
                let _ = fs::remove_dir_all(&p);
            }
        }
    }
    drop(lock);
    fixtures
}

fn build(out: &Path) {
    let script = script_dir().join("make-fixtures.sh");
    crate::run_tool(Command::new("bash").arg(&script).arg(out));
}
