//! File operations whose results compare across filesystems, and running a
//! script of them on two mounts.
//!
//! An operation takes the mount's root and returns [`OpResult`]: `Ok` with
//! what it read (empty for operations that only change something), or the
//! errno it failed with. Paths are relative to the mount.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

pub use rustix::fs::RenameFlags;

/// What an operation read, or the errno it failed with.
pub type OpResult = Result<String, i32>;

/// One operation, run once on each mount.
pub type Op = Box<dyn Fn(&Path) -> OpResult>;

/// Named operations, in order.
pub type Script = Vec<(&'static str, Op)>;

/// The errno of an `io::Result` (-1 for errors without one), the value dropped.
pub fn r<T>(x: std::io::Result<T>) -> OpResult {
    x.map(|_| String::new()).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Like [`r`] for rustix calls.
pub fn rx<T>(x: rustix::io::Result<T>) -> OpResult {
    x.map(|_| String::new()).map_err(|e| e.raw_os_error())
}

/// Replaces the file's content (creating it if needed).
pub fn write(m: &Path, p: &str, data: &[u8]) -> OpResult {
    r(std::fs::write(m.join(p), data))
}

/// Appends to an existing file.
pub fn append(m: &Path, p: &str, data: &[u8]) -> OpResult {
    r(std::fs::OpenOptions::new().append(true).open(m.join(p)).and_then(|mut f| f.write_all(data)))
}

/// The file's content (lossy UTF-8).
pub fn read(m: &Path, p: &str) -> OpResult {
    let mut v = Vec::new();
    r(std::fs::File::open(m.join(p)).and_then(|mut f| f.read_to_end(&mut v)))?;
    Ok(String::from_utf8_lossy(&v).into_owned())
}

/// ftruncate to `len` through a write-only open.
pub fn truncate(m: &Path, p: &str, len: u64) -> OpResult {
    r(std::fs::OpenOptions::new().write(true).open(m.join(p)).and_then(|f| f.set_len(len)))
}

/// open(O_WRONLY|O_TRUNC).
pub fn open_trunc(m: &Path, p: &str) -> OpResult {
    r(std::fs::OpenOptions::new().write(true).truncate(true).open(m.join(p)))
}

/// open(O_WRONLY|O_CREAT|O_EXCL).
pub fn create_excl(m: &Path, p: &str) -> OpResult {
    r(std::fs::OpenOptions::new().write(true).create_new(true).open(m.join(p)))
}

pub fn chmod(m: &Path, p: &str, mode: u32) -> OpResult {
    r(std::fs::set_permissions(m.join(p), std::fs::Permissions::from_mode(mode)))
}

/// lchown (a symlink itself, not its target).
pub fn chown(m: &Path, p: &str, uid: u32, gid: u32) -> OpResult {
    r(std::os::unix::fs::lchown(m.join(p), Some(uid), Some(gid)))
}

/// Sets atime and mtime to `sec.nsec`; `follow` false changes a symlink itself.
pub fn utimes(m: &Path, p: &str, sec: i64, nsec: i64, follow: bool) -> OpResult {
    let t = rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    let flags = if follow { rustix::fs::AtFlags::empty() } else { rustix::fs::AtFlags::SYMLINK_NOFOLLOW };
    rx(rustix::fs::utimensat(
        rustix::fs::CWD,
        m.join(p),
        &rustix::fs::Timestamps { last_access: t, last_modification: t },
        flags,
    ))
}

pub fn unlink(m: &Path, p: &str) -> OpResult {
    r(std::fs::remove_file(m.join(p)))
}

pub fn rmdir(m: &Path, p: &str) -> OpResult {
    r(std::fs::remove_dir(m.join(p)))
}

/// `rm -rf`, failing on a missing path.
pub fn rm_rf(m: &Path, p: &str) -> OpResult {
    r(std::fs::remove_dir_all(m.join(p)))
}

pub fn mkdir(m: &Path, p: &str) -> OpResult {
    r(std::fs::create_dir(m.join(p)))
}

pub fn symlink(m: &Path, target: &str, p: &str) -> OpResult {
    r(std::os::unix::fs::symlink(target, m.join(p)))
}

/// A hard link `p` to `existing`.
pub fn link(m: &Path, existing: &str, p: &str) -> OpResult {
    r(std::fs::hard_link(m.join(existing), m.join(p)))
}

pub fn mkfifo(m: &Path, p: &str, mode: u32) -> OpResult {
    rx(rustix::fs::mknodat(
        rustix::fs::CWD,
        m.join(p),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(mode),
        0,
    ))
}

/// rename(2).
pub fn rename(m: &Path, a: &str, b: &str) -> OpResult {
    r(std::fs::rename(m.join(a), m.join(b)))
}

/// renameat2(2) with `flags`.
pub fn rename_flags(m: &Path, a: &str, b: &str, flags: RenameFlags) -> OpResult {
    rx(rustix::fs::renameat_with(rustix::fs::CWD, m.join(a), rustix::fs::CWD, m.join(b), flags))
}

/// `mv`: rename, and on EXDEV copy with `cp -a` and delete the source (what
/// mv does for lower directories of kernel overlayfs without redirect_dir).
pub fn mv(m: &Path, a: &str, b: &str) -> OpResult {
    match std::fs::rename(m.join(a), m.join(b)) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let st =
                super::ok(std::process::Command::new("cp").arg("-a").arg(m.join(a)).arg(m.join(b)).status(), || {
                    "running cp -a".to_string()
                });
            if !st.success() {
                // Reported like an errno nothing else returns.
                return Err(-2);
            }
            r(std::fs::remove_dir_all(m.join(a)))
        }
        x => r(x),
    }
}

/// setxattr(2) (following a symlink).
pub fn setxattr(m: &Path, p: &str, name: &str, value: &[u8]) -> OpResult {
    rx(rustix::fs::setxattr(m.join(p), name, value, rustix::fs::XattrFlags::empty()))
}

/// removexattr(2) (following a symlink).
pub fn removexattr(m: &Path, p: &str, name: &str) -> OpResult {
    rx(rustix::fs::removexattr(m.join(p), name))
}

/// getxattr(2) (following a symlink): the value, lossy UTF-8.
pub fn read_xattr(m: &Path, p: &str, name: &str) -> OpResult {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::getxattr(m.join(p), name, &mut buf[..]).map_err(|e| e.raw_os_error())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The directory's entries, sorted, space-separated.
pub fn list(m: &Path, p: &str) -> OpResult {
    let rd = std::fs::read_dir(m.join(p)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names.join(" "))
}

/// Opens directory `p` as a directory stream.
pub fn open_dir(m: &Path, p: &str) -> Result<rustix::fs::Dir, i32> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(m.join(p), flags, Mode::empty()).map_err(|e| e.raw_os_error())?;
    rustix::fs::Dir::new(fd).map_err(|e| e.raw_os_error())
}

/// The names a directory stream reads from where it stands, sorted,
/// without `.` and `..`.
pub fn dir_names(d: &mut rustix::fs::Dir) -> OpResult {
    let mut names = Vec::new();
    for e in d.by_ref() {
        let e = e.map_err(|e| e.raw_os_error())?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.join(" "))
}

/// One getdents64 call on `dir` into `buf`: the names it returned (none at
/// the end of the directory). A small buffer reads a directory in parts.
pub fn getdents_batch(dir: &impl std::os::fd::AsRawFd, buf: &mut [u8]) -> Vec<String> {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, dir.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
    assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
    let (mut names, mut at) = (Vec::new(), 0usize);
    while at < n as usize {
        // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name.
        let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
        let name = &buf[at + 19..at + reclen];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        names.push(String::from_utf8_lossy(&name[..end]).into_owned());
        at += reclen;
    }
    names
}

/// `TYPE MODE UID:GID NLINK SIZE` of the path (lstat).
pub fn stat(m: &Path, p: &str) -> OpResult {
    use std::os::unix::fs::MetadataExt;
    let st = std::fs::symlink_metadata(m.join(p)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    Ok(format!("{:o} {}:{} nlink={} size={}", st.mode(), st.uid(), st.gid(), st.nlink(), st.len()))
}

/// The mode of the path as statx(2) gives it when asked for the mode alone:
/// what the kernel has cached, unless it knows its cached mode is stale
/// (asked for the size too, it asks again whenever a write went by).
pub fn mode_only(m: &Path, p: &str) -> OpResult {
    let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    match rustix::fs::statx(rustix::fs::CWD, m.join(p), flags, rustix::fs::StatxFlags::MODE) {
        Ok(s) => Ok(format!("{:o}", s.stx_mode)),
        Err(e) => Err(e.raw_os_error()),
    }
}

/// A POSIX ACL in the kernel's xattr form (`system.posix_acl_*`): entries of
/// (tag, permission bits, id), the id `u32::MAX` for entries without one.
pub fn posix_acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    acl
}

/// A `security.capability` value (VFS_CAP_REVISION_2) with capability
/// number `cap` permitted.
pub fn file_capability(cap: u32) -> Vec<u8> {
    let mut v = vec![0u8; 20];
    v[..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
    v[4..8].copy_from_slice(&(1u32 << cap).to_le_bytes());
    v
}

/// Runs `op`, then tells after its result which of `p`'s modification and
/// change times it moved (`m`, `c`, or `.` for neither). Kernel overlayfs
/// hands every change to a real inode, whose times the kernel moves, a
/// chmod or chown that changes nothing included; a union filesystem must
/// move the same ones. (Access times are left out: when reads and
/// followed symlinks move them depends on mount options and caches.)
pub fn times_moved(m: &Path, p: &str, op: impl Fn(&Path) -> OpResult) -> OpResult {
    use std::os::unix::fs::MetadataExt;
    let times = || -> Result<[(i64, i64); 2], i32> {
        let s = std::fs::symlink_metadata(m.join(p)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        Ok([(s.mtime(), s.mtime_nsec()), (s.ctime(), s.ctime_nsec())])
    };
    let before = times()?;
    // The kernel stamps times from a clock that ticks in jiffies.
    std::thread::sleep(std::time::Duration::from_millis(15));
    let out = op(m)?;
    let after = times()?;
    let moved: String =
        "mc".chars().zip(before.iter().zip(&after)).filter(|(_, (b, a))| b != a).map(|(c, _)| c).collect();
    Ok(format!("{out} moved:{}", if moved.is_empty() { "." } else { &moved }))
}

/// Runs `sh -c SCRIPT` in the mount (`$M`) as `uid`:`uid` without
/// capabilities (so without CAP_FSETID: what an ordinary user's write,
/// truncation or O_TRUNC open does to set-id bits); the result is its
/// stdout, or its exit status as the error.
pub fn as_user(m: &Path, uid: u32, script: &str) -> OpResult {
    let id = uid.to_string();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", &id, "--regid", &id, "--clear-groups", "--inh-caps=-all", "--", "sh", "-c", script])
        .env("M", m)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        code => Err(code.unwrap_or(-1)),
    }
}

/// Runs every step of `script` on `overlayfs`, then on `strata`; returns a
/// message per step whose results differ (and logs each step's times).
pub fn run_script(script: &Script, overlayfs: &Path, strata: &Path) -> Vec<String> {
    let mut mismatches = Vec::new();
    for (name, op) in script {
        let t0 = Instant::now();
        let a = op(overlayfs);
        let t1 = Instant::now();
        let b = op(strata);
        eprintln!("{name}: overlayfs {:?} {}, strata {:?} {}", t1 - t0, brief(&a), t1.elapsed(), brief(&b));
        if a != b {
            mismatches.push(format!("{name}: overlayfs {a:?}, strata {b:?}"));
        }
    }
    mismatches
}

fn brief(x: &OpResult) -> String {
    match x {
        Ok(s) if s.len() > 60 => format!("Ok({:?}...)", s.chars().take(60).collect::<String>()),
        Ok(s) => format!("Ok({s:?})"),
        Err(e) => format!("Err({})", std::io::Error::from_raw_os_error(*e)),
    }
}
