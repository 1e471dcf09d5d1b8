//! [`Strata`]: one private strata installation for one test — its own store
//! root, home, Docker config and registries config under a temp directory —
//! and the ways to run the binary in it, as root or as the unprivileged test
//! user.
//!
//! Every command gets a clean environment (only PATH and a few diagnostics
//! variables pass through), stdin from /dev/null and a generous timeout after
//! which it is killed and the test fails with its output: a hung strata must
//! fail the test, not the CI run.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Variables passed from the test's environment to strata.
const PASS_ENV: &[&str] = &["PATH", "RUST_BACKTRACE", "RUST_LOG", "STRATA_LOG", "CI", "LANG", "LC_ALL"];

/// How long one strata command may take before the harness kills it
/// (`STRATA_E2E_TIMEOUT` seconds overrides).
fn command_timeout() -> Duration {
    let secs = std::env::var("STRATA_E2E_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    Duration::from_secs(secs)
}

#[derive(Clone, Copy, Debug)]
struct User {
    uid: u32,
    gid: u32,
}

/// A private strata store and environment. Removed (after unmounting
/// anything left mounted below it) when dropped.
pub struct Strata {
    base: tempfile::TempDir,
    user: Option<User>,
    env: Vec<(OsString, OsString)>,
    bin: PathBuf,
}

impl Strata {
    /// A store used by the current user (root in CI).
    pub fn new() -> Strata {
        let base = tempfile::Builder::new()
            .prefix("strata-e2e-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let s = Strata { base, user: None, env: Vec::new(), bin: crate::paths::strata_bin() };
        s.populate();
        s
    }

    /// A store used by the unprivileged user `strata-test`: every command runs
    /// as that user, its store and home live in a temp dir it owns, and the
    /// binary is a world-readable copy under /tmp.
    pub fn new_unprivileged() -> Strata {
        let u = nix::unistd::User::from_name(crate::TEST_USER)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("user {} does not exist: run scripts/setup.sh as root", crate::TEST_USER));
        let user = User { uid: u.uid.as_raw(), gid: u.gid.as_raw() };
        let base = tempfile::Builder::new()
            .prefix("strata-e2e-u-")
            .tempdir_in(crate::paths::world_readable_dir("strata-e2e-users"))
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let s = Strata { base, user: Some(user), env: Vec::new(), bin: crate::paths::world_readable_bin() };
        s.populate();
        s
    }

    /// Creates store/, home/ and friends, owned by the user strata runs as.
    fn populate(&self) {
        for d in ["", "home", "home/.docker", "home/.config", "home/.local/share", "config", "run"] {
            let p = self.base.path().join(d);
            fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        }
        fs::write(self.registries_config_path(), "{}\n").unwrap_or_else(|e| panic!("write registries.json: {e}"));
        if let Some(u) = self.user {
            chown_tree(self.base.path(), u);
        }
    }

    /// The temp directory holding everything of this instance.
    pub fn base(&self) -> &Path {
        self.base.path()
    }
    /// The store root (`STRATA_ROOT`). Created by strata on first use.
    pub fn root(&self) -> PathBuf {
        self.base.path().join("store")
    }
    pub fn home(&self) -> PathBuf {
        self.base.path().join("home")
    }
    /// `DOCKER_CONFIG`: where `strata login` keeps credentials (config.json).
    pub fn docker_config_dir(&self) -> PathBuf {
        self.home().join(".docker")
    }
    /// `STRATA_REGISTRIES_CONFIG`: mirrors and registry settings (`{}` initially).
    pub fn registries_config_path(&self) -> PathBuf {
        self.base.path().join("config/registries.json")
    }
    /// The binary this instance runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }
    /// True for instances made by [`Strata::new_unprivileged`].
    /// The uid strata runs as.
    pub fn uid(&self) -> u32 {
        self.user.as_ref().map_or(0, |u| u.uid)
    }
    pub fn is_unprivileged(&self) -> bool {
        self.user.is_some()
    }

    /// Replaces the registries config (e.g. mirrors) with `json`.
    pub fn set_registries_config(&self, json: &str) {
        let p = self.registries_config_path();
        fs::write(&p, json).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        if let Some(u) = self.user {
            chown_tree(&p, u);
        }
    }

    /// Sets an environment variable for every later command of this instance.
    pub fn set_env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
    }

    /// The command that runs `strata ARGS` in this instance (stdin null,
    /// stdout/stderr piped), as the instance's user.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = match self.user {
            None => Command::new(&self.bin),
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", u.uid))
                    .arg(format!("--regid={}", u.gid))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(&self.bin);
                c
            }
        };
        cmd.args(args).env_clear();
        for k in PASS_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        let home = self.home();
        cmd.env("HOME", &home)
            .env("USER", if self.user.is_some() { crate::TEST_USER } else { "root" })
            .env("STRATA_ROOT", self.root())
            .env("STRATA_REGISTRIES_CONFIG", self.registries_config_path())
            .env("DOCKER_CONFIG", self.docker_config_dir())
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_RUNTIME_DIR", self.base.path().join("run"))
            .current_dir(self.base.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts `strata ARGS` without waiting (for concurrency and kill tests).
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Child {
        self.command(args).spawn().unwrap_or_else(|e| panic!("cannot start strata: {e}"))
    }

    /// Runs `strata ARGS` to completion (killed after the harness timeout).
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let child = self.spawn(args);
        wait_output(child, command_timeout(), &describe(args))
    }

    /// Runs `strata ARGS`, panics unless it exits 0; returns stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            panic!("`{}` failed:\n{}", describe(args), show_output(&out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `strata ARGS`, panics if it exits 0; returns (exit code, stderr).
    /// A death by signal counts as code -1.
    pub fn fails<S: AsRef<OsStr>>(&self, args: &[S]) -> (i32, String) {
        let out = self.run(args);
        if out.status.success() {
            panic!("`{}` succeeded but should have failed:\n{}", describe(args), show_output(&out));
        }
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `strata pull REF`, panicking on failure; returns stdout.
    pub fn pull(&self, reference: &str) -> String {
        self.ok(&["pull", reference])
    }

    /// `strata rm -f` of every container, for a test's cleanup (errors ignored).
    pub fn remove_all_containers(&self) {
        let out = self.run(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self.run(&["rm", "-f", id]);
        }
    }

    /// `strata debug tree IMAGE`: the merged image in the canonical listing format.
    pub fn tree(&self, image: &str) -> String {
        self.ok(&["debug", "tree", image])
    }
}

impl Default for Strata {
    fn default() -> Self {
        Strata::new()
    }
}

impl Drop for Strata {
    fn drop(&mut self) {
        unmount_below(self.base.path());
    }
}

/// `strata a b c` for messages.
pub fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut s = String::from("strata");
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Exit status, stdout and stderr of `out`, for failure messages.
pub fn show_output(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Collects `child`'s output; kills it with SIGKILL and panics once `timeout` passes.
pub fn wait_output(mut child: Child, timeout: Duration, what: &str) -> Output {
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let reader = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = reader(stdout.map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err_t = reader(stderr.map(|s| Box::new(s) as Box<dyn Read + Send>));
    let (tx, rx) = mpsc::channel::<std::io::Result<ExitStatus>>();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(s) => s.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            let status = rx.recv().ok().and_then(Result::ok);
            let out = Output {
                status: status.unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(9)),
                stdout: out_t.join().unwrap_or_default(),
                stderr: err_t.join().unwrap_or_default(),
            };
            panic!("`{what}` did not finish within {timeout:?}; killed it.\n{}", show_output(&out));
        }
    };
    Output { status, stdout: out_t.join().unwrap_or_default(), stderr: err_t.join().unwrap_or_default() }
}

fn chown_tree(path: &Path, u: User) {
    let owner = Some(nix::unistd::Uid::from_raw(u.uid));
    let group = Some(nix::unistd::Gid::from_raw(u.gid));
    nix::unistd::fchownat(nix::fcntl::AT_FDCWD, path, owner, group, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if let Ok(rd) = fs::read_dir(path) {
        if fs::symlink_metadata(path).map(|m| m.is_dir()).unwrap_or(false) {
            for e in rd.flatten() {
                chown_tree(&e.path(), u);
            }
        }
    }
}

/// Lazily unmounts every mount point at or below `dir` (deepest first), so a
/// test that failed half-way cannot leave a FUSE mount that blocks removal.
pub fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}
