//! While requests come densely, a mount run by root asks idle CPUs to poll
//! (a 0 µs PM QoS CPU latency request), and gives the request up once the
//! requests stop; a trickle of requests asks nothing, and neither do dense
//! requests while other threads keep every CPU busy. Alone in its test binary: other mounts of the same process
//! would hold requests of their own.

mod common;

use std::time::{Duration, Instant};

use common::*;
use strata_fs::MountOptions;

/// The latency all CPUs are held to now (the smallest of all requests).
fn cpu_latency_target() -> i32 {
    let v = std::fs::read("/dev/cpu_dma_latency").expect("reading /dev/cpu_dma_latency");
    i32::from_ne_bytes(v[..4].try_into().expect("a 4-byte value"))
}

/// Looks up names in the mount for `how_long`, `pause` apart, and reports
/// the lowest latency target seen meanwhile.
fn lowest_target_during_requests(mnt: &std::path::Path, how_long: Duration, pause: Duration) -> i32 {
    let start = Instant::now();
    let mut lowest = i32::MAX;
    let mut n = 0u64;
    while start.elapsed() < how_long {
        // A name that is not there: every lookup reaches the server.
        let _ = std::fs::symlink_metadata(mnt.join(format!("absent-{n}")));
        n += 1;
        if pause > Duration::ZERO {
            std::thread::sleep(pause);
        }
        if pause > Duration::ZERO || n.is_multiple_of(64) {
            lowest = lowest.min(cpu_latency_target());
        }
    }
    lowest
}

#[test]
fn idle_cpus_poll_only_while_requests_come() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let mnt = tmp.path().join("mnt");
    let lower = LayerBuilder::new(&objects).dir("", 0o755).file("f", b"x", 0o644).build();
    let polls = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) > 1;

    if !is_root() {
        // The device is root's: an ordinary user can neither ask nor look.
        eprintln!("skipped: /dev/cpu_dma_latency is only root's");
        return;
    }
    let before = cpu_latency_target();
    assert!(before > 0, "something else holds the CPUs at {before} µs; this test cannot see strata's request");

    let opts = MountOptions { poll: Duration::from_millis(5), ..MountOptions::default() };
    let g = MountGuard::new(vec![lower], &mnt, opts);
    // The mount's own first requests come as a burst: let it pass.
    std::thread::sleep(Duration::from_millis(50));
    // A trickle of requests (further apart than a fifth of the window) is
    // answered by a sleeping reader and leaves the CPUs alone.
    let trickle = lowest_target_during_requests(&mnt, Duration::from_millis(300), Duration::from_millis(3));
    assert_eq!(trickle, before, "requests 3 ms apart held the CPUs polling");
    let during = lowest_target_during_requests(&mnt, Duration::from_millis(300), Duration::ZERO);
    std::thread::sleep(Duration::from_millis(100));
    let after = cpu_latency_target();

    if polls {
        assert_eq!(during, 0, "no 0 µs CPU latency request while requests came");
    } else {
        assert_eq!(during, before, "a single CPU, where nothing polls, changed the CPU latency");
    }
    assert_eq!(after, before, "the CPU latency request outlived the requests");

    // Turned off, nothing is asked.
    g.unmount();
    let opts = MountOptions { poll: Duration::from_millis(5), hold_cpus: false, ..MountOptions::default() };
    let g = MountGuard::new(vec![LayerBuilder::new(&objects).dir("", 0o755).build()], &mnt, opts);
    assert_eq!(lowest_target_during_requests(&mnt, Duration::from_millis(200), Duration::ZERO), before);
    g.unmount();

    // With every CPU kept busy by other threads, the reader stops spinning
    // (and asks nothing of the CPUs) once it sees threads wait for a CPU.
    if !polls || std::fs::read_to_string("/proc/pressure/cpu").is_err() {
        eprintln!("skipped the busy-CPU part: one CPU, or no CPU pressure stall information");
        return;
    }
    let opts = MountOptions { poll: Duration::from_millis(5), ..MountOptions::default() };
    let g = MountGuard::new(vec![LayerBuilder::new(&objects).dir("", 0o755).build()], &mnt, opts);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let hogs: Vec<_> = (0..cpus)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    // Two looks of 50 ms find the stall; after them, spinning stays off.
    let _ = lowest_target_during_requests(&mnt, Duration::from_millis(400), Duration::ZERO);
    let busy = lowest_target_during_requests(&mnt, Duration::from_millis(300), Duration::ZERO);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    g.unmount();
    assert_eq!(busy, before, "the reader kept spinning beside {cpus} busy threads");
}
