//! Several threads creating, renaming and deleting in one directory at once
//! (some names over lower files), then a remount: the view must be exactly
//! what the threads left.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use strata_fs::MountOptions;

const THREADS: usize = 6;
const ROUNDS: usize = 150;

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
}

#[test]
fn threads_create_rename_delete_in_one_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let upper = tmp.path().join("upper");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&upper).unwrap();
    let mut b = LayerBuilder::new(&objects).dir("", 0o755).dir("shared", 0o777);
    for t in 0..THREADS {
        for i in 0..ROUNDS {
            b = b.file(&format!("shared/lower-{t}-{i}"), b"lower", 0o644);
        }
    }
    let lowers = vec![b.build()];
    let opts = MountOptions { upper: Some(upper.clone()), threads: 4, ..MountOptions::default() };
    let g = MountGuard::new(lowers.clone(), &mnt, opts.clone());
    let dir = mnt.join("shared");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let dir = dir.clone();
            s.spawn(move || {
                for i in 0..ROUNDS {
                    let a = dir.join(format!("tmp-{t}-{i}"));
                    std::fs::write(&a, format!("{t}:{i}")).unwrap();
                    match i % 3 {
                        // rename onto a fresh name
                        0 => std::fs::rename(&a, dir.join(format!("done-{t}-{i}"))).unwrap(),
                        // rename over a lower file
                        1 => std::fs::rename(&a, dir.join(format!("lower-{t}-{i}"))).unwrap(),
                        // delete again, and delete a lower file
                        _ => {
                            std::fs::remove_file(&a).unwrap();
                            std::fs::remove_file(dir.join(format!("lower-{t}-{i}"))).unwrap();
                        }
                    }
                    // Listing while others change the directory must not fail.
                    if i % 25 == 0 {
                        let _ = listing(&dir);
                    }
                }
            });
        }
    });
    let mut want = BTreeSet::new();
    for t in 0..THREADS {
        for i in 0..ROUNDS {
            match i % 3 {
                0 => {
                    want.insert(format!("done-{t}-{i}"));
                    want.insert(format!("lower-{t}-{i}"));
                }
                1 => {
                    want.insert(format!("lower-{t}-{i}"));
                }
                _ => {}
            }
        }
    }
    assert_eq!(listing(&dir), want);
    for t in 0..THREADS {
        for i in (0..ROUNDS).filter(|i| i % 3 == 1) {
            assert_eq!(std::fs::read_to_string(dir.join(format!("lower-{t}-{i}"))).unwrap(), format!("{t}:{i}"));
        }
    }
    let before = snapshot(&mnt);
    g.unmount();
    let g = MountGuard::new(lowers, &mnt, opts);
    assert_eq!(snapshot(&mnt), before);
    g.unmount();
}

/// Deleted files give their inode slots back once the kernel forgets them,
/// so a long-running container that churns files does not grow the tree; the
/// files that stay keep their inode numbers and contents.
#[test]
fn inode_slots_of_deleted_files_are_reused() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let upper = tmp.path().join("upper");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&upper).unwrap();
    let lowers = vec![LayerBuilder::new(&objects).dir("", 0o755).file("keep", b"kept", 0o644).build()];
    let opts = MountOptions { upper: Some(upper), ..MountOptions::default() };
    let g = MountGuard::new(lowers, &mnt, opts);
    std::fs::write(mnt.join("stay"), b"stays").unwrap();
    let stay_ino = std::fs::metadata(mnt.join("stay")).unwrap().ino();
    let keep_ino = std::fs::metadata(mnt.join("keep")).unwrap().ino();
    let mut inos = BTreeSet::new();
    for i in 0..2000 {
        let p = mnt.join(format!("churn{i}"));
        std::fs::write(&p, i.to_string()).unwrap();
        inos.insert(std::fs::metadata(&p).unwrap().ino());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), i.to_string());
        std::fs::remove_file(&p).unwrap();
    }
    assert!(inos.len() < 2000, "no inode slot was reused ({} distinct)", inos.len());
    assert!(!inos.contains(&stay_ino) && !inos.contains(&keep_ino));
    assert_eq!(std::fs::metadata(mnt.join("stay")).unwrap().ino(), stay_ino);
    assert_eq!(std::fs::read(mnt.join("stay")).unwrap(), b"stays");
    assert_eq!(std::fs::read(mnt.join("keep")).unwrap(), b"kept");
    assert_eq!(listing(&mnt), ["keep", "stay"].iter().map(|s| s.to_string()).collect());
    g.unmount();
}

/// Threads copying lower files up by opening them for writing, writing,
/// reading back, fsyncing and truncating at once: the requests that go to
/// the I/O workers (OPEN for writing, READ, FSYNC, truncating SETATTR) run
/// concurrently with each other and with the rest; every file must end up
/// exactly as its thread left it, in the mount and in the upper directory.
#[test]
fn threads_copy_up_write_read_truncate() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let upper = tmp.path().join("upper");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&upper).unwrap();
    const FILES: usize = 40;
    let big = vec![b'x'; 3 << 20]; // above the size copied up outside the tree lock
    let mut b = LayerBuilder::new(&objects).dir("", 0o755).dir("d", 0o755);
    for t in 0..THREADS {
        for i in 0..FILES {
            let content: &[u8] = if i == 0 { &big } else { b"lower\n" };
            b = b.file(&format!("d/f-{t}-{i}"), content, 0o644);
        }
    }
    // Cached I/O, so that reads and writes reach the server.
    let opts = MountOptions { upper: Some(upper.clone()), passthrough: false, threads: 3, ..MountOptions::default() };
    let g = MountGuard::new(vec![b.build()], &mnt, opts);
    let dir = mnt.join("d");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let dir = dir.clone();
            s.spawn(move || {
                for i in 0..FILES {
                    let p = dir.join(format!("f-{t}-{i}"));
                    let mut f = std::fs::OpenOptions::new().read(true).append(true).open(&p).unwrap();
                    f.write_all(format!("{t}:{i}\n").as_bytes()).unwrap();
                    f.sync_all().unwrap();
                    let mut head = [0u8; 6];
                    f.seek(SeekFrom::Start(0)).unwrap();
                    f.read_exact(&mut head).unwrap();
                    assert!(&head == b"lower\n" || &head == b"xxxxxx");
                    if i % 2 == 1 {
                        f.set_len(3).unwrap();
                    }
                }
            });
        }
    });
    for t in 0..THREADS {
        for i in 0..FILES {
            let name = format!("d/f-{t}-{i}");
            let want: Vec<u8> = match i {
                0 => [&big[..], format!("{t}:{i}\n").as_bytes()].concat(),
                _ if i % 2 == 1 => b"low".to_vec(),
                _ => format!("lower\n{t}:{i}\n").into_bytes(),
            };
            assert_eq!(std::fs::read(mnt.join(&name)).unwrap(), want, "{name} in the mount");
            assert_eq!(std::fs::read(upper.join(&name)).unwrap(), want, "{name} in the upper directory");
        }
    }
    g.unmount();
}
