//! A read-only mount keeps the files of recently read lower objects open
//! (for passthrough, see `ops::FsInner`), but never so many that the files
//! in use run out of descriptors. Alone in its test binary: it lowers the
//! process's RLIMIT_NOFILE.

mod common;

use common::*;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use strata_fs::MountOptions;

#[test]
fn kept_object_files_stay_within_the_fd_limit() {
    if !is_root() {
        eprintln!("skipped: passthrough (what keeps object files open) needs root");
        return;
    }
    let old = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(256), maximum: old.maximum }).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let mnt = tmp.path().join("mnt");
    let mut b = LayerBuilder::new(&objects).dir("", 0o755);
    for i in 0..600 {
        b = b.file(&format!("f{i}"), format!("content {i}").as_bytes(), 0o644);
    }
    let g = MountGuard::new(vec![b.build()], &mnt, MountOptions::default());
    for i in 0..600 {
        let got = std::fs::read(mnt.join(format!("f{i}"))).unwrap_or_else(|e| panic!("reading f{i}: {e}"));
        assert_eq!(got, format!("content {i}").as_bytes());
    }
    g.unmount();
    setrlimit(Resource::Nofile, old).unwrap();
}
