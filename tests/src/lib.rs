//! End-to-end test harness: drives the real `strata` binary against real
//! registries and compares what it stored with what reference tools produce.
//!
//! - [`paths`]: where the built binary and the cache live; a world-readable
//!   copy of the binary for unprivileged runs.
//! - [`strata`]: [`Strata`], a private store + environment, running commands as
//!   root or as the unprivileged user `strata-test`.
//! - [`registry`]: [`Registry`], a real `docker-registry` on a loopback port,
//!   seeded with `skopeo copy`.
//! - [`fake`]: [`FakeRegistry`], an in-process registry that serves a given
//!   image and injects faults (bad digests, truncation, errors, hangs, hostile
//!   layers), recording every request.
//! - [`tarball`]: handcrafted tar streams (hostile ones included).
//! - [`debian`]: the Debian bookworm minbase image (debootstrap), cached like
//!   the fixtures.
//! - [`fixtures`]: the fixture images, built once per fixture-script version
//!   and cached under `target/fixtures-cache`.
//! - [`listing`]: the canonical tree listing (the contract with
//!   `strata debug tree`, see below) and the reference listing from `umoci unpack`.
//! - [`store`]: a fingerprint of a store directory, to prove a refused pull
//!   left it untouched.
//!
//! Nothing here knows strata's commands beyond running them: a command that
//! does not exist yet makes its tests fail with strata's own usage message.
//!
//! # The canonical listing (contract with `strata debug tree IMAGE`)
//!
//! `strata debug tree IMAGE` prints the merged image — every layer applied in
//! order, whiteouts and opaque directories honoured, whiteout entries
//! themselves never shown — one line per path, in exactly this format:
//!
//! ```text
//! PATH TYPE MODE UID GID SIZE TARGET[ RDEV][ XATTR...]
//! ```
//!
//! - fields are separated by one space; lines end with `\n`; lines are sorted
//!   byte-wise; the root directory itself is not listed;
//! - `PATH`: absolute path inside the image (`/etc/passwd`), escaped: bytes
//!   0x21..=0x7e other than `\` as themselves, every other byte as `\xHH`
//!   (two lowercase hex digits);
//! - `TYPE`: `f` regular file, `d` directory, `l` symlink, `p` fifo,
//!   `c` character device, `b` block device, `s` socket;
//! - `MODE`: permission bits including setuid/setgid/sticky (`mode & 0o7777`)
//!   as exactly four octal digits (`0644`, `4755`, `1777`);
//! - `UID`, `GID`: decimal, as recorded in the image (never mapped to the
//!   caller's ids, also in rootless mode);
//! - `SIZE`: byte size for regular files, `0` for every other type;
//! - `TARGET`: regular file: sha256 of the content in lowercase hex; symlink:
//!   the link target escaped like PATH; other types: `-`;
//! - `RDEV`: only for `c` and `b`: `MAJOR,MINOR` in decimal;
//! - `XATTR`: one token per extended attribute (except `security.selinux`),
//!   sorted by name, as `NAME=HEX` with NAME escaped like PATH and HEX the value
//!   in lowercase hex (`user.x=79`).
//!
//! Hardlinked files are listed once per path, each as a regular file.

pub mod debian;
pub mod fake;
pub mod fixtures;
pub mod listing;
pub mod paths;
pub mod registry;
pub mod store;
pub mod strata;
pub mod tarball;

pub use debian::{debian, Debian};
pub use fake::{FakeImage, FakeRegistry, Fault};
pub use fixtures::{fixtures, Fixtures};
pub use listing::{assert_same_listing, canonical_listing, unpack_reference};
pub use paths::strata_bin;
pub use registry::Registry;
pub use store::StoreFingerprint;
pub use strata::Strata;

/// A registry holding fixture image `name` (tag `name` of the fixtures'
/// OCI layout) as `e2e/NAME:1`, and a fresh store, root's or the test
/// user's, that pulled it. Returns the registry (keep it alive), the store
/// and the image's reference.
pub fn store_with_fixture(name: &str, unprivileged: bool) -> (Registry, Strata, String) {
    let reg = Registry::start();
    let reference = reg.push_oci_layout(&fixtures().oci, name, &format!("e2e/{name}:1"));
    let s = if unprivileged { Strata::new_unprivileged() } else { Strata::new() };
    s.pull(&reference);
    (reg, s, reference)
}

/// The unprivileged user the rootless tests run as (created by scripts/setup.sh).
pub const TEST_USER: &str = "strata-test";

/// `prog` to be run as the test user, with only PATH in its environment
/// (for looking into a rootless mount, which only its owner can enter).
pub fn as_test_user(prog: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid", TEST_USER, "--regid", TEST_USER, "--init-groups", "--", prog])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir("/");
    cmd
}

/// Runs `cmd` with stdin closed and returns its output, panicking with a clear
/// message when it cannot be started or exits non-zero. For setup steps
/// (skopeo, umoci, htpasswd), not for strata itself.
pub fn run_tool(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e} (did scripts/setup.sh run?)", cmd.get_program()));
    if !out.status.success() {
        panic!(
            "{:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes an executable script at `path` (mode 0755) from a child process.
/// A file this multi-threaded test process held open for writing could be
/// inherited by another test's fork for a moment, and running it then would
/// fail with ETXTBSY.
pub fn write_script(path: &std::path::Path, text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 0755 \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sh to write a script");
    child.stdin.take().expect("piped stdin").write_all(text.as_bytes()).expect("write the script");
    assert!(child.wait().expect("wait for sh").success(), "writing {}", path.display());
}

/// sha256 of `data` in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// Polls `cond` every 20 ms until it holds, panicking with `what` after
/// `timeout`. Only for readiness checks of things we cannot be notified about
/// (a port opening, a request arriving); never to wait for "enough time".
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Splits a Docker-style table (columns separated by two or more spaces)
/// into rows of cells; the header is row 0. Blank lines are skipped.
pub fn parse_table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim_end().split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect())
        .collect()
}

/// The short (12 hex digit) form of `sha256:HEX`, as Docker shows image and layer ids.
pub fn short_id(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex[..12.min(hex.len())].to_string()
}

/// Asserts that `text` (lowercased) contains at least one of `needles`.
#[track_caller]
pub fn assert_mentions(text: &str, needles: &[&str], what: &str) {
    let lower = text.to_lowercase();
    assert!(
        needles.iter().any(|n| lower.contains(&n.to_lowercase())),
        "{what}: expected the message to mention one of {needles:?}, got:\n{text}"
    );
}

/// A pipe whose write end a spawned strata inherits (as descriptor 9, not
/// close-on-exec in that child only, so that processes other test threads
/// start do not get it), for checking that the long-lived helpers strata
/// starts (mount servers, container supervisors) keep none of their
/// caller's descriptors.
pub struct InheritedPipe {
    read: std::os::fd::OwnedFd,
    write: Option<std::os::fd::OwnedFd>,
}

impl InheritedPipe {
    pub fn new() -> InheritedPipe {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .unwrap_or_else(|e| panic!("pipe: {e}"));
        InheritedPipe { read, write: Some(write) }
    }

    /// Makes `cmd`'s process inherit the write end as descriptor 9.
    pub fn pass_to(&self, cmd: &mut std::process::Command) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = self.write.as_ref().expect("the write end is still ours").as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; it clears close-on-exec on 9.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 9) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Closes our write end, then tells whether a process still holds one
    /// 5 s later (the read neither sees data nor the end of the pipe).
    ///
    /// Not at once: a process that another test thread is starting right
    /// then holds a copy of every descriptor of this one, ours too, from
    /// its fork to its exec (which closes it, being close-on-exec). That
    /// made a check at once fail now and then.
    pub fn still_held_elsewhere(&mut self) -> bool {
        self.write = None;
        let mut buf = [0u8; 16];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match nix::unistd::read(&self.read, &mut buf) {
                Ok(_) => return false,
                Err(nix::errno::Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(e) => panic!("reading the pipe: {e}"),
            }
        }
    }
}

impl Default for InheritedPipe {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes `cmd`'s process start with a soft RLIMIT_NOFILE of `soft` (the
/// common default of 1024, say), its hard limit unchanged.
pub fn with_soft_fd_limit(cmd: &mut std::process::Command, soft: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getrlimit and setrlimit are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            l.rlim_cur = soft.min(l.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
