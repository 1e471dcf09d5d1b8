//! Where things are: the cargo target directory, the built `strata` binary,
//! and a world-readable copy of it for runs as the unprivileged test user.
//!
//! `CARGO_BIN_EXE_strata` is only set for tests of the crate that defines the
//! binary, so the binary is found next to the test executable instead
//! (`target/debug/deps/TEST` -> `target/debug/strata`). scripts/test.sh builds
//! it before running the tests.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `target/debug` (the profile directory the test executable was built into).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("cannot find the test executable: {e}"));
    // target/debug/deps/NAME-HASH -> target/debug
    exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| panic!("odd test path {exe:?}"))
}

/// The cargo target directory (for caches that outlive one test run).
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile.parent().map(Path::to_path_buf).unwrap_or(profile)
}

/// The repository's `tests/` directory (this crate's manifest directory).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the built `strata` binary (`STRATA_BIN` overrides).
pub fn strata_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let bin = profile_dir().join("strata");
    if !bin.is_file() {
        panic!("{} does not exist: build it first (`cargo build -p strata-cli`; scripts/test.sh does)", bin.display());
    }
    bin
}

/// A copy of the binary every user can execute, in `/tmp/strata-e2e-bin/HASH/`
/// (the repository may sit under a directory the test user cannot enter).
/// Made once per test process; named by content so parallel test binaries
/// share it and a rebuilt binary gets a new copy.
pub fn world_readable_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = strata_bin();
        let data = fs::read(&src).unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()));
        let hash = crate::sha256_hex(&data);
        let dir = world_readable_dir("strata-e2e-bin").join(&hash[..16]);
        let dest = dir.join("strata");
        if dest.is_file() {
            // Refresh the directory's mtime so other runs see it in use.
            let touch = dir.join(format!(".touch-{}", std::process::id()));
            if fs::write(&touch, b"").is_ok() {
                let _ = fs::remove_file(&touch);
            }
            return dest;
        }
        mkdir_world(&dir);
        remove_stale_copies(dir.parent().unwrap_or(&dir), &dir);
        let tmp = dir.join(format!(".strata.{}", std::process::id()));
        fs::write(&tmp, &data).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.display()));
        fs::rename(&tmp, &dest).unwrap_or_else(|e| panic!("rename to {}: {e}", dest.display()));
        dest
    })
    .clone()
}

/// `/tmp/NAME`, a root-owned 0755 directory (created if needed). Refuses a
/// symlink or a directory someone else owns, since it holds binaries we run.
pub fn world_readable_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(name);
    mkdir_world(&dir);
    dir
}

fn mkdir_world(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("cannot create {}: {e}", dir.display()),
    }
    let meta = fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("stat {}: {e}", dir.display()));
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        panic!("{} is not a directory owned by us; remove it", dir.display());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
}

/// Removes copies of older builds (untouched for an hour) so /tmp does not fill
/// up with one binary per build; recent ones may still be in use by another run.
fn remove_stale_copies(parent: &Path, keep: &Path) {
    let Ok(rd) = fs::read_dir(parent) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if p != keep && old {
            let _ = fs::remove_dir_all(&p);
        }
    }
}
