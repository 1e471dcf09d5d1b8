//! The Debian test image (tests/fixtures/make-debian.sh): a debootstrap'ed
//! bookworm minbase tree as a one-layer OCI image, for tests that need a real
//! distribution (apt, dpkg, dynamically linked programs, system users).
//!
//! Both steps are cached under `target/fixtures-cache/debian/`, behind an
//! flock on `.lock` there so that test binaries running in parallel build
//! them once:
//! - `bookworm-minbase.tar`: the debootstrap result (~1.5 minutes to make;
//!   kept across edits of the script, since the recipe is fixed here);
//! - `oci-KEY/oci`: the OCI layout, KEY hashing the script and the tarball's
//!   name, rebuilt when either changes.
//!
//! Everything is made in a temp path and renamed into place, so a half-built
//! cache is never seen.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What debootstrap builds (the tarball's cache name includes both).
const SUITE: &str = "bookworm";
const VARIANT: &str = "minbase";

/// The Debian image as an OCI layout.
#[derive(Debug)]
pub struct Debian {
    /// OCI layout (gzip layer) holding [`Debian::TAG`].
    pub oci: PathBuf,
}

impl Debian {
    pub const TAG: &'static str = "debian";
}

/// The Debian image, built on first use in this process (or taken from the cache).
pub fn debian() -> &'static Debian {
    static D: OnceLock<Debian> = OnceLock::new();
    D.get_or_init(build_or_reuse)
}

fn script() -> PathBuf {
    crate::paths::crate_dir().join("fixtures/make-debian.sh")
}

fn build_or_reuse() -> Debian {
    let cache = crate::paths::target_dir().join("fixtures-cache/debian");
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("mkdir {}: {e}", cache.display()));
    let tar_name = format!("{SUITE}-{VARIANT}.tar");
    let script_text = fs::read(script()).unwrap_or_else(|e| panic!("read {}: {e}", script().display()));
    let mut keyed = script_text;
    keyed.extend_from_slice(tar_name.as_bytes());
    let dir = cache.join(format!("oci-{}", &crate::sha256_hex(&keyed)[..16]));
    let debian = Debian { oci: dir.join("oci") };
    if dir.join("done").exists() {
        return debian;
    }
    let _lock = lock(&cache.join(".lock"));
    if dir.join("done").exists() {
        return debian;
    }
    let tar = cache.join(&tar_name);
    if !tar.is_file() {
        // The script writes TAR.tmp and renames it.
        run_script(&["rootfs", SUITE, VARIANT], &[&tar]);
    }
    let tmp = cache.join(format!(".build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    run_script(&["oci"], &[&tar, &tmp]);
    fs::write(tmp.join("done"), b"").unwrap_or_else(|e| panic!("write done marker: {e}"));
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), dir.display()));
    // Layouts of older script versions are dead weight.
    if let Ok(rd) = fs::read_dir(&cache) {
        for e in rd.flatten() {
            let p = e.path();
            if p != dir && e.file_name().to_string_lossy().starts_with("oci-") {
                let _ = fs::remove_dir_all(&p);
            }
        }
    }
    debian
}

/// An exclusive flock on `path`, released when the file is dropped.
fn lock(path: &Path) -> fs::File {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        panic!("flock {}: {}", path.display(), std::io::Error::last_os_error());
    }
    f
}

fn run_script(args: &[&str], paths: &[&Path]) {
    crate::run_tool(Command::new("bash").arg(script()).args(args).args(paths));
}
