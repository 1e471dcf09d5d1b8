//! Random steps for differential and stress tests: a seeded generator of
//! file operations over paths that mix the differential layers' own names
//! (lower, merged, opaque, whiteout-covered) with new ones. Most paths do
//! not exist, or not as the type an operation wants, so errors are
//! exercised as much as successes.

use std::path::Path;

use super::ops::*;

/// Which kinds of steps a run may take (each off where a reference or a
/// concurrent run cannot take it).
#[derive(Debug, Clone, Copy)]
pub struct Steps {
    /// Hard links (overlayfs without its inode index keeps an inode per
    /// name of an upper hard link).
    pub hard_links: bool,
    /// Device nodes, made and removed again within the step.
    pub devices: bool,
    /// Fifos (a concurrent step could block opening one that appeared).
    pub fifos: bool,
    /// Steps as an ordinary user (uid 1000, no capabilities).
    pub as_user: bool,
    /// renameat2(RENAME_WHITEOUT), which overlayfs and strata refuse and a
    /// plain filesystem takes.
    pub whiteout_renames: bool,
    /// Metadata changes also tell which times of their path they moved
    /// ([`times_moved`]: each waits a clock tick first).
    pub times: bool,
}

/// The seeds and the steps per seed of a random test: the test's defaults,
/// or `STRATA_FS_RANDOM_RUNS` seeds from the `STRATA_FS_RANDOM_FIRST`th
/// on, `STRATA_FS_RANDOM_STEPS` steps each, for a longer search.
pub fn settings(runs: u64, steps: u64) -> (std::ops::Range<u64>, u64) {
    let env = |k: &str, default: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (runs, steps, first) =
        (env("STRATA_FS_RANDOM_RUNS", runs), env("STRATA_FS_RANDOM_STEPS", steps), env("STRATA_FS_RANDOM_FIRST", 1));
    (first..first + runs, steps)
}

impl Steps {
    pub const ALL: Steps =
        Steps { hard_links: true, devices: true, fifos: true, as_user: true, whiteout_renames: true, times: true };
}

/// xorshift64*: the random scripts below are the same on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
}

/// Directories and names the random steps combine into paths: the layers'
/// own (lower, merged, opaque, whiteout-covered) and new ones. `dev` (a
/// device node and a fifo, which block or refuse I/O) is left out.
pub const RANDOM_DIRS: &[&str] = &[
    "",
    "etc",
    "data",
    "var/cache",
    "srv",
    "srv/sub",
    "opt/app",
    "opt/app/lib",
    "opt/app/share",
    "usr/lib",
    "n1",
    "n1/n2",
];
pub const RANDOM_NAMES: &[&str] = &[
    "a",
    "b",
    "d",
    "huge",
    "passwd",
    "hosts",
    "shadow",
    "big",
    "x.so",
    "y.so",
    "doc",
    "doc.link",
    "index.html",
    "link",
    "sub",
    "deep.txt",
    "new",
    "n1",
    "n2",
    "lib",
    "apt",
    "cache",
    "x",
    "bin",
    "f1",
    "f2",
];

/// Opens without blocking on a fifo (O_NONBLOCK changes nothing else here).
pub fn open_nb(m: &Path, p: &str, o: &mut std::fs::OpenOptions) -> Result<std::fs::File, i32> {
    use std::os::unix::fs::OpenOptionsExt;
    o.custom_flags(libc::O_NONBLOCK).open(m.join(p)).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

pub fn io_err(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// The content read through `f` from offset 0 (lossy UTF-8, long content
/// as its length and hash).
pub fn read_all(f: &mut std::fs::File) -> OpResult {
    use std::io::{Read, Seek};
    f.seek(std::io::SeekFrom::Start(0)).map_err(io_err)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).map_err(io_err)?;
    Ok(if v.len() > 64 {
        format!("{} bytes {}", v.len(), strata_layers::Digest::of(&v).short())
    } else {
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// `op`, reporting which times of `p` it moved where `steps` asks for it.
fn timed(steps: Steps, p: String, op: impl Fn(&Path) -> OpResult + 'static) -> Op {
    if steps.times {
        Box::new(move |m: &Path| times_moved(m, &p, &op))
    } else {
        Box::new(op)
    }
}

/// One random step: a description and the operation. Paths combine
/// `dirs` and `names` (for the differential layers [`RANDOM_DIRS`] and
/// [`RANDOM_NAMES`]); most do not exist, or not as the
/// type an operation wants, so errors are compared as much as successes.
pub fn random_step(
    rng: &mut Rng,
    dirs: &[&'static str],
    names: &[&'static str],
    steps: Steps,
) -> (String, [String; 2], Op) {
    use std::io::Write;
    let path = |rng: &mut Rng| {
        let (d, n) = (rng.pick(dirs), rng.pick(names));
        if d.is_empty() {
            n.to_string()
        } else {
            format!("{d}/{n}")
        }
    };
    let (p, q) = (path(rng), path(rng));
    let paths = [p.clone(), q.clone()];
    let data: Vec<u8> = match rng.below(8) {
        0 => Vec::new(),
        1 => vec![b'L'; 70_000],
        _ => format!("content {}\n", rng.next_u64() % 1000).into_bytes(),
    };
    // (No O_TMPFILE: the kernel sends FUSE_TMPFILE, which fuser lacks.)
    let k = rng.below(45);
    let mut what = format!("#{k} {p} {q}");
    let op: Op = match k {
        0 | 1 => Box::new(move |m: &Path| {
            let mut f = open_nb(m, &p, std::fs::OpenOptions::new().write(true).create(true).truncate(true))?;
            f.write_all(&data).map_err(io_err).map(|_| String::new())
        }),
        2 | 3 => Box::new(move |m: &Path| {
            let mut f = open_nb(m, &p, std::fs::OpenOptions::new().append(true))?;
            f.write_all(&data).map_err(io_err).map(|_| String::new())
        }),
        4 => {
            let len = [0, 3, 100_000][rng.below(3)];
            Box::new(move |m: &Path| {
                let f = open_nb(m, &p, std::fs::OpenOptions::new().write(true))?;
                f.set_len(len).map_err(io_err).map(|_| String::new())
            })
        }
        5 => Box::new(move |m: &Path| {
            open_nb(m, &p, std::fs::OpenOptions::new().write(true).truncate(true)).map(|_| String::new())
        }),
        6 => {
            let mode = [0o600, 0o644, 0o755, 0o4755, 0o2770, 0o1777, 0o700][rng.below(7)];
            timed(steps, p.clone(), move |m: &Path| chmod(m, &p, mode))
        }
        7 => {
            let (u, g) = ([0, 1000, 33][rng.below(3)], [0, 42, 1000][rng.below(3)]);
            timed(steps, p.clone(), move |m: &Path| chown(m, &p, u, g))
        }
        8 => {
            let (sec, follow) = (1_000_000_000 + rng.below(1000) as i64, rng.below(2) == 0);
            timed(steps, p.clone(), move |m: &Path| utimes(m, &p, sec, 7, follow))
        }
        9 => Box::new(move |m: &Path| unlink(m, &p)),
        10 => Box::new(move |m: &Path| rmdir(m, &p)),
        11 => Box::new(move |m: &Path| rm_rf(m, &p)),
        12 | 13 => Box::new(move |m: &Path| mkdir(m, &p)),
        14 => {
            // Relative targets without "..": a rename can take the link to
            // the root, where ".." would lead out of the mount (to a file
            // both mounts of a differential test share).
            let up = if p.contains('/') { ["etc/hosts", ".", "data"][rng.below(3)] } else { "data/a" };
            let target = [rng.pick(names), up, "etc"][rng.below(3)].to_string();
            Box::new(move |m: &Path| symlink(m, &target, &p))
        }
        15 if steps.hard_links => Box::new(move |m: &Path| link(m, &p, &q)),
        16 | 17 => Box::new(move |m: &Path| rename(m, &p, &q)),
        18 => Box::new(move |m: &Path| rename_flags(m, &p, &q, RenameFlags::NOREPLACE)),
        19 => Box::new(move |m: &Path| rename_flags(m, &p, &q, RenameFlags::EXCHANGE)),
        20 => {
            let (name, v) = (["user.r", "trusted.t"][rng.below(2)], format!("v{}", rng.below(100)));
            timed(steps, p.clone(), move |m: &Path| setxattr(m, &p, name, v.as_bytes()))
        }
        21 => {
            let name = ["user.origin", "user.r", "trusted.t"][rng.below(3)];
            timed(steps, p.clone(), move |m: &Path| removexattr(m, &p, name))
        }
        22 => {
            let name = ["user.origin", "user.r", "trusted.t"][rng.below(3)];
            Box::new(move |m: &Path| read_xattr(m, &p, name))
        }
        23 => Box::new(move |m: &Path| {
            let mut f = open_nb(m, &p, std::fs::OpenOptions::new().read(true))?;
            read_all(&mut f)
        }),
        24 => Box::new(move |m: &Path| shape(m, &p)),
        25 => Box::new(move |m: &Path| list(m, &p)),
        26 if steps.fifos => {
            let mode = [0o640, 0o755][rng.below(2)];
            Box::new(move |m: &Path| mkfifo(m, &p, mode))
        }
        27 => Box::new(move |m: &Path| {
            // A reader opened before another open writes: it reads the new
            // content (a copy-up in between included).
            let mut r = open_nb(m, &p, std::fs::OpenOptions::new().read(true))?;
            let mut w = open_nb(m, &p, std::fs::OpenOptions::new().append(true))?;
            w.write_all(&data).map_err(io_err)?;
            read_all(&mut r)
        }),
        28 => Box::new(move |m: &Path| {
            // Removed or replaced while open: the open file still reads.
            let mut r = open_nb(m, &p, std::fs::OpenOptions::new().read(true))?;
            match rename(m, &q, &p) {
                // Not run on strata then (see the test).
                Err(libc::EXDEV) => return Err(libc::EXDEV),
                Err(_) => drop(unlink(m, &p)?),
                Ok(_) => {}
            }
            read_all(&mut r)
        }),
        29 => Box::new(move |m: &Path| {
            let mut f = open_nb(m, &p, std::fs::OpenOptions::new().read(true).write(true))?;
            f.set_len(5).map_err(io_err)?;
            f.write_all(&data).map_err(io_err)?;
            read_all(&mut f)
        }),
        30 => Box::new(move |m: &Path| create_excl(m, &p)),
        34 => {
            use rustix::fs::FallocateFlags as F;
            let mode = [F::empty(), F::KEEP_SIZE, F::PUNCH_HOLE | F::KEEP_SIZE][rng.below(3)];
            let (off, len) = ([0u64, 2, 4096][rng.below(3)], [1u64, 5, 70_000][rng.below(3)]);
            what += &format!(" fallocate {mode:?} {off}+{len}");
            Box::new(move |m: &Path| {
                let mut f = open_nb(m, &p, std::fs::OpenOptions::new().read(true).write(true))?;
                rustix::fs::fallocate(&f, mode, off, len).map_err(|e| e.raw_os_error())?;
                read_all(&mut f)
            })
        }
        35 | 36 => Box::new(move |m: &Path| {
            let mut names = super::tree::xattr_names(&m.join(&p));
            names.retain(|n| !n.starts_with("security."));
            Ok(names.join(" "))
        }),
        37 if steps.devices => Box::new(move |m: &Path| {
            // Made, looked at and removed again: later steps would read it.
            rx(rustix::fs::mknodat(
                rustix::fs::CWD,
                m.join(&p),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o600),
                rustix::fs::makedev(1, 7),
            ))?;
            let st = shape(m, &p)?;
            unlink(m, &p)?;
            Ok(st)
        }),
        38 if steps.whiteout_renames => Box::new(move |m: &Path| rename_flags(m, &p, &q, RenameFlags::WHITEOUT)),
        39 => {
            // truncate(2) by path (through a symlink too).
            let len = [0i64, 7, 90_000][rng.below(3)];
            Box::new(move |m: &Path| {
                let c = std::ffi::CString::new(m.join(&p).into_os_string().into_encoded_bytes()).map_err(|_| -1)?;
                // SAFETY: a valid C string.
                match unsafe { libc::truncate(c.as_ptr(), len) } {
                    0 => Ok(String::new()),
                    _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)),
                }
            })
        }
        40 => Box::new(move |m: &Path| {
            // copy_file_range of p into q at an offset, q created if missing.
            let src = open_nb(m, &p, std::fs::OpenOptions::new().read(true))?;
            let mut dst = open_nb(m, &q, std::fs::OpenOptions::new().read(true).write(true).create(true))?;
            let mut off_out = 3u64;
            rustix::fs::copy_file_range(&src, Some(&mut 0), &dst, Some(&mut off_out), 100_000)
                .map_err(|e| e.raw_os_error())?;
            read_all(&mut dst)
        }),
        41 => {
            // utimensat leaving atime alone.
            let sec = 1_000_000_000 + rng.below(1000) as i64;
            Box::new(move |m: &Path| {
                let omit = rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT };
                let t = rustix::fs::Timespec { tv_sec: sec, tv_nsec: 0 };
                let times = rustix::fs::Timestamps { last_access: omit, last_modification: t };
                rx(rustix::fs::utimensat(rustix::fs::CWD, m.join(&p), &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW))
            })
        }
        42 => {
            // A directory stream opened before another step and read again
            // (rewound) after it: the read shows what the step changed.
            let read_first = rng.below(2) == 0;
            let (inner_what, inner_paths, inner) = loop {
                let s = random_step(rng, dirs, names, steps);
                if !s.0.starts_with("#42 ") {
                    break s;
                }
            };
            // The directory of one of the step's paths.
            let p = &inner_paths[rng.below(2)];
            let d = p.rsplit_once('/').map_or("", |(d, _)| d).to_string();
            if rng.below(3) == 0 {
                what = format!("#42 {d:?} read in part around {inner_what}, then by another stream");
                // Names the step may remove and make again, which may come twice.
                let touched: Vec<String> = inner_paths
                    .iter()
                    .map(|p| p.rsplit_once('/').unwrap_or(("", p)))
                    .filter(|(pd, _)| *pd == d)
                    .map(|(_, n)| n.to_string())
                    .collect();
                return (what, inner_paths, Box::new(move |m: &Path| streams_around(m, &d, &inner, &touched)));
            }
            what = format!("#42 {d:?} open{} around {inner_what}", if read_first { ", read" } else { "" });
            let op: Op = Box::new(move |m: &Path| {
                let mut dir = open_dir(m, &d)?;
                let before = if read_first { dir_names(&mut dir)? } else { String::new() };
                let r = inner(m);
                if r == Err(libc::EXDEV) {
                    return r; // not run on strata (see the differential tests)
                }
                dir.rewind();
                Ok(format!("{before} | {r:?} | {}", dir_names(&mut dir)?))
            });
            return (what, inner_paths, op);
        }
        44 => {
            // A file held open around another step on it, then used through
            // that descriptor: its attributes, its content, and (opened for
            // writing) a write or a chmod through it.
            let writable = rng.below(2) == 0;
            // (A write through a read-only descriptor fails with EBADF, which
            // the concurrent test takes for a broken mount.)
            let usage = [0, 1, 3, 2][rng.below(if writable { 4 } else { 3 })];
            let (inner_what, inner_paths, inner) = loop {
                let s = random_step(rng, dirs, names, steps);
                if !s.0.starts_with("#42 ") && !s.0.starts_with("#44 ") {
                    break s;
                }
            };
            let p = inner_paths[rng.below(2)].clone();
            let usage_what = ["fstat", "read", "write", "fchmod"][usage];
            what = format!("#44 {p} open{} around {inner_what}, then {usage_what}", if writable { " rw" } else { "" });
            let op: Op = Box::new(move |m: &Path| {
                use std::os::unix::fs::FileExt;
                let mut f = open_nb(m, &p, std::fs::OpenOptions::new().read(true).write(writable))?;
                let r = inner(m);
                if r == Err(libc::EXDEV) {
                    return r; // not run on strata (see the differential tests)
                }
                // Once its name is gone, a lower file open read-only is
                // where overlayfs goes its own way: fstat tells the lower
                // file's link count, and a fchmod (a copy-up with no name
                // left) fails with EEXIST; strata answers as ext4 does (0,
                // and done), as the plain-directory test checks. Those two
                // are left out here.
                let gone = std::fs::symlink_metadata(m.join(&p)).is_err();
                let used = match usage {
                    0 if gone => fd_shape(&f)
                        .map(|s| s.split(' ').filter(|w| !w.starts_with("nlink=")).collect::<Vec<_>>().join(" ")),
                    0 => fd_shape(&f),
                    1 => read_all(&mut f),
                    2 => f.write_all_at(b"w", 1).map_err(io_err).and_then(|_| read_all(&mut f)),
                    _ if gone && !writable => read_all(&mut f),
                    _ => rx(rustix::fs::fchmod(&f, rustix::fs::Mode::from_raw_mode(0o640))).and_then(|_| fd_shape(&f)),
                };
                Ok(format!("{r:?} | {used:?}"))
            });
            return (what, inner_paths, op);
        }
        43 => {
            // The kernel forgets every dentry and inode not in use: a FUSE
            // server gets them as FORGETs, and lookups start afresh. (Only
            // root of the initial namespace may; elsewhere both sides fail
            // alike.)
            what = "#43 drop the kernel's dentry and inode caches".into();
            Box::new(|_: &Path| r(std::fs::write("/proc/sys/vm/drop_caches", b"2")))
        }
        _ if steps.as_user => {
            // An ordinary user (uid and gid 1000, no capabilities): the
            // permission checks.
            let script = match rng.below(6) {
                // (A fifo would block the opens of printf and cat.)
                0 => format!("[ -p \"$M/{p}\" ] || printf u >>\"$M/{p}\""),
                1 => format!("rm \"$M/{p}\""),
                2 => format!("mkdir \"$M/{p}\""),
                3 => format!("mv -T \"$M/{p}\" \"$M/{q}\""),
                4 => format!("chmod 0777 \"$M/{p}\""),
                _ => format!("[ -p \"$M/{p}\" ] || cat \"$M/{p}\" >/dev/null && touch \"$M/{q}\""),
            };
            what = format!("#{k} as 1000: {script}");
            Box::new(move |m: &Path| as_user(m, 1000, &script))
        }
        _ => Box::new(move |m: &Path| shape(m, &p)),
    };
    (what, paths, op)
}

/// Directory `d` read in part by one stream, `step` taken, the directory
/// read whole by a second stream (which fills the kernel's cache of it
/// anew), then the rest read by the first: the first must have returned
/// every name there before and after the step, and each once but for the
/// names the step `touched` (which it may have removed and made again:
/// whether those come is unspecified). The result is those names, or what
/// went wrong.
fn streams_around(m: &Path, d: &str, step: &Op, touched: &[String]) -> OpResult {
    // (O_DIRECTORY: with other threads taking steps, a file may be there
    // by now.)
    let open = || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(m.join(d)).map_err(io_err)
    };
    let before = list(m, d)?;
    let first = open()?;
    let mut small = [0u8; 256];
    let mut seen = getdents_batch(&first, &mut small);
    let r = step(m);
    if r == Err(libc::EXDEV) {
        return r; // not run on strata (see the differential tests)
    }
    let second = open()?;
    let mut big = [0u8; 16384];
    while !getdents_batch(&second, &mut big).is_empty() {}
    loop {
        let batch = getdents_batch(&first, &mut small);
        if batch.is_empty() {
            break;
        }
        seen.extend(batch);
    }
    let after = list(m, d).unwrap_or_default();
    let stayed: Vec<&str> = before.split(' ').filter(|n| !n.is_empty() && after.split(' ').any(|a| a == *n)).collect();
    let missed: Vec<&&str> = stayed.iter().filter(|n| !seen.iter().any(|s| s == **n)).collect();
    let mut counted = seen.clone();
    counted.retain(|n| !touched.contains(n));
    let mut once = counted.clone();
    once.sort();
    once.dedup();
    if !missed.is_empty() || once.len() != counted.len() {
        return Ok(format!("{r:?}; missed {missed:?}, returned {} names for {} distinct", counted.len(), once.len()));
    }
    Ok(format!("{r:?}; all of {}", stayed.join(" ")))
}

/// [`shape`] of an open file.
pub fn fd_shape(f: &std::fs::File) -> OpResult {
    use std::os::unix::fs::MetadataExt;
    let st = f.metadata().map_err(io_err)?;
    let (size, nlink) = if st.is_dir() { (0, 0) } else { (st.len(), st.nlink()) };
    Ok(format!("{:o} {}:{} nlink={nlink} size={size}", st.mode(), st.uid(), st.gid()))
}

/// What lstat says of a path, to compare after every step (directories
/// without their size and link count, which are each filesystem's own).
pub fn shape(m: &Path, p: &str) -> OpResult {
    use std::os::unix::fs::MetadataExt;
    let st = std::fs::symlink_metadata(m.join(p)).map_err(io_err)?;
    let (size, nlink) = if st.is_dir() { (0, 0) } else { (st.len(), st.nlink()) };
    Ok(format!("{:o} {}:{} nlink={nlink} size={size}", st.mode(), st.uid(), st.gid()))
}
