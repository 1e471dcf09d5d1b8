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
