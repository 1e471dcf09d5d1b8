//! What the CPUs were used for: how many of them work other than a
//! mount's own keeps busy.
//!
//! The polling governor ([`crate::poll`]) stops spinning when threads wait
//! for a CPU beside other work. Waiting alone (the kernel's pressure stall
//! information) cannot tell other work from the work the mount serves:
//! `tar cf - | cat` makes threads wait by itself, and so do a mount's own
//! read-ahead threads. So this module estimates other work from CPU times:
//! the busy time of all CPUs (`/proc/stat`), less the run time of this
//! process's serving threads and of the thread that made the latest
//! request (their `schedstat`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// How far back [`CpuUse`] looks at least: CPU idle time comes from
/// `/proc/stat` in clock ticks (10 ms), so over one 50 ms period on 2 CPUs
/// its rounding alone could make 0.4 CPUs out of nothing.
const OTHERS_WINDOW: Duration = Duration::from_millis(200);

/// Samples older than this are no base for an estimate: the load then is
/// not the load now.
const OTHERS_MAX_AGE: Duration = Duration::from_millis(800);

/// CPU times at one moment (ns; `at` since the poller's epoch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CpuSample {
    pub(crate) at: u64,
    /// Idle time of all CPUs together.
    pub(crate) idle: u64,
    /// Run time of this process's own threads (see [`count_this_thread`]).
    pub(crate) ours: u64,
    /// The latest caller's thread id and run time, when readable.
    pub(crate) caller: Option<(u32, u64)>,
}

/// How many CPUs other work keeps busy: all CPU time used less this
/// process's serving threads and the thread that made the latest request
/// (see the module doc). A caller this process cannot see (pid 0, another
/// pid namespace) counts as other work, and so does any thread of a
/// caller but the latest; as before, its waiting then stops the spinning.
///
/// Measured on 2 CPUs against the governor before it (waiting alone):
/// - `tar cf - | cat` through a writable mount, cold: 0.38-0.45 s against
///   0.68-0.71 s; warm: 0.08-0.09 s against 0.17-0.30 s;
/// - the same beside one CPU hog: 0.49 s against 0.52-0.58 s cold, 0.13-0.14
///   s against 0.12-0.13 s warm;
/// - an extract beside one hog 2.3-2.5 s either way; beside two and two
///   extracts at once, the spread of either (2.5-7 s, 2.5-3.0 s).
pub(crate) struct CpuUse {
    /// `/proc/stat`, kept open and read again from its start at each sample.
    stat: Option<std::fs::File>,
    /// CPUs counted in `/proc/stat`; 0 when unreadable (nothing is judged).
    pub(crate) cpus: u32,
    /// Nanoseconds per clock tick of `/proc/stat`.
    ns_per_tick: u64,
    history: VecDeque<CpuSample>,
}

impl CpuUse {
    pub(crate) fn new() -> CpuUse {
        let cpus = std::fs::read_to_string("/proc/stat").map_or(0, |t| cpus_in_proc_stat(&t));
        let ticks = rustix::param::clock_ticks_per_second().max(1);
        let stat = std::fs::File::open("/proc/stat").ok();
        CpuUse { stat, cpus, ns_per_tick: 1_000_000_000 / ticks, history: VecDeque::new() }
    }

    /// The CPU times now (`at`), with `caller`'s (0: none).
    pub(crate) fn sample(&self, at: u64, caller: u32) -> Option<CpuSample> {
        use std::os::unix::fs::FileExt;
        if self.cpus == 0 {
            return None;
        }
        let mut buf = [0u8; 256];
        let n = self.stat.as_ref()?.read_at(&mut buf, 0).ok()?;
        let idle = idle_ticks_in_proc_stat(&buf[..n])? * self.ns_per_tick;
        let caller = match caller {
            0 => None,
            tid => task_run_ns(&format!("/proc/{tid}/schedstat")).map(|ns| (tid, ns)),
        };
        Some(CpuSample { at, idle, ours: our_threads_run_ns(), caller })
    }

    /// Keeps `now` and returns how many CPUs other work kept busy since
    /// the newest sample at least `OTHERS_WINDOW` (and at most
    /// `OTHERS_MAX_AGE`) older; `None` when there is none.
    pub(crate) fn others_since_a_window(&mut self, now: CpuSample) -> Option<f64> {
        let (window, max_age) = (OTHERS_WINDOW.as_nanos() as u64, OTHERS_MAX_AGE.as_nanos() as u64);
        // The newest sample old enough to be the base; older ones go.
        while self.history.len() > 1 && self.history[1].at + window <= now.at {
            self.history.pop_front();
        }
        let base = self.history.front().copied().filter(|b| b.at + window <= now.at && b.at + max_age >= now.at);
        self.history.push_back(now);
        Some(others_between(&base?, &now, self.cpus))
    }
}

/// CPUs other work kept busy between two samples.
fn others_between(a: &CpuSample, b: &CpuSample, cpus: u32) -> f64 {
    let wall = b.at.saturating_sub(a.at).max(1);
    let busy = (cpus as u64 * wall).saturating_sub(b.idle.saturating_sub(a.idle));
    let caller = match (a.caller, b.caller) {
        (Some((t0, c0)), Some((t1, c1))) if t0 == t1 => c1.saturating_sub(c0),
        _ => 0, // another caller, or none: its time counts as other work
    };
    busy.saturating_sub(b.ours.saturating_sub(a.ours)).saturating_sub(caller) as f64 / wall as f64
}

/// Whether other work keeping `others` CPUs busy competes with spinning:
/// it needs more than what the spinning reader and its caller leave (a
/// CPU each), give or take half a CPU.
pub(crate) fn others_compete(others: f64, cpus: u32) -> bool {
    others > cpus as f64 - 1.5
}

/// The number of `cpuN` lines of `/proc/stat`.
fn cpus_in_proc_stat(text: &str) -> u32 {
    text.lines().filter(|l| l.strip_prefix("cpu").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))).count()
        as u32
}

/// Idle and I/O wait ticks of all CPUs, from the first line of `/proc/stat`.
fn idle_ticks_in_proc_stat(text: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(text).ok()?.lines().next()?;
    let mut f = line.strip_prefix("cpu ")?.split_ascii_whitespace().map(|v| v.parse::<u64>().ok());
    let (idle, iowait) = (f.nth(3)??, f.next()??);
    Some(idle + iowait)
}

/// The run time (ns) in a `schedstat` file.
fn task_run_ns(path: &str) -> Option<u64> {
    let text = std::fs::read(path).ok()?;
    std::str::from_utf8(&text).ok()?.split_ascii_whitespace().next()?.parse().ok()
}

/// This process's threads that serve mounts: request readers (and
/// workers) from their first request, read-ahead threads and governors
/// from their start. Their CPU time is not other work.
static OUR_THREADS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

/// Counts the calling thread among this process's serving threads (see
/// [`CpuUse`]).
pub(crate) fn count_this_thread() {
    COUNTED.with(|c| {
        if !c.get() {
            c.set(true);
            let tid = rustix::thread::gettid().as_raw_nonzero().get();
            OUR_THREADS.lock().unwrap_or_else(|p| p.into_inner()).push(tid);
        }
    });
}

/// The run time (ns) of the serving threads still alive (those that ended
/// are dropped from the list).
fn our_threads_run_ns() -> u64 {
    let mut threads = OUR_THREADS.lock().unwrap_or_else(|p| p.into_inner());
    let mut total = 0;
    threads.retain(|tid| match task_run_ns(&format!("/proc/self/task/{tid}/schedstat")) {
        Some(ns) => {
            total += ns;
            true
        }
        None => false,
    });
    total
}

#[cfg(test)]
impl CpuUse {
    /// No samples yet, on a machine of `cpus` CPUs (0: unknown), for tests.
    pub(crate) fn with_cpus(cpus: u32) -> CpuUse {
        CpuUse { stat: None, cpus, ns_per_tick: 10_000_000, history: VecDeque::new() }
    }
}

#[cfg(test)]
impl CpuSample {
    /// A sample in milliseconds, for tests.
    pub(crate) fn ms(at: u64, idle: u64, ours: u64, caller: Option<(u32, u64)>) -> CpuSample {
        let ms = 1_000_000;
        CpuSample { at: at * ms, idle: idle * ms, ours: ours * ms, caller: caller.map(|(t, c)| (t, c * ms)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_work_is_what_the_cpus_did_besides_us_and_the_caller() {
        // 2 CPUs for 200 ms: 100 ms idle, 150 ms ours, 100 ms the caller's:
        // 400 - 100 - 150 - 100 = 50 ms of other work, a quarter of a CPU.
        let a = CpuSample::ms(0, 0, 0, Some((7, 0)));
        let b = CpuSample::ms(200, 100, 150, Some((7, 100)));
        assert!((others_between(&a, &b, 2) - 0.25).abs() < 1e-9);
        // Another caller at the end: the time is not known to be its.
        let c = CpuSample::ms(200, 100, 150, Some((8, 100)));
        assert!((others_between(&a, &c, 2) - 0.75).abs() < 1e-9);
        assert!(!others_compete(0.25, 2) && others_compete(0.75, 2) && !others_compete(2.4, 4));
    }

    #[test]
    fn other_work_is_judged_over_a_window() {
        let mut cpu = CpuUse::with_cpus(2);
        assert_eq!(cpu.others_since_a_window(CpuSample::ms(0, 0, 0, None)), None);
        assert_eq!(cpu.others_since_a_window(CpuSample::ms(100, 100, 0, None)), None, "no sample 200 ms old yet");
        // From the sample at 0: 2 x 250 - 250 idle = 250 ms busy, 1 CPU.
        let o = cpu.others_since_a_window(CpuSample::ms(250, 250, 0, None)).unwrap();
        assert!((o - 1.0).abs() < 1e-9);
        // From the one at 100 now (the newest at least 200 ms old).
        let o = cpu.others_since_a_window(CpuSample::ms(300, 300, 50, None)).unwrap();
        assert!((o - 0.75).abs() < 1e-9, "{o}");
        assert_eq!(cpu.history.front().map(|s| s.at), Some(100_000_000));
        // After a pause longer than OTHERS_MAX_AGE the old samples say nothing.
        assert_eq!(cpu.others_since_a_window(CpuSample::ms(2000, 3700, 50, None)), None);
    }

    #[test]
    fn serving_threads_are_counted_once_and_dropped_when_gone() {
        let t = std::thread::spawn(|| {
            count_this_thread();
            count_this_thread();
            rustix::thread::gettid().as_raw_nonzero().get()
        });
        let tid = t.join().unwrap();
        let listed = OUR_THREADS.lock().unwrap().iter().filter(|&&t| t == tid).count();
        assert!(listed <= 1, "listed {listed} times");
        // A joined thread's /proc entry can outlive the join for a moment
        // (and another test's thread may get its id): dropped soon after.
        let dropped = (0..200).any(|_| {
            let _ = our_threads_run_ns();
            let gone = !OUR_THREADS.lock().unwrap().contains(&tid);
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            gone
        });
        assert!(dropped, "an ended thread is still counted");
        assert!(task_run_ns("/proc/thread-self/schedstat").is_some());
    }

    #[test]
    fn samples_read_the_kept_proc_stat_afresh() {
        let cpu = CpuUse::new();
        if cpu.cpus == 0 {
            return; // no /proc/stat: nothing is sampled
        }
        // A read of a freshly opened /proc/stat between two samples lies
        // between them: the kept file is not read once and for all.
        let a = cpu.sample(0, 0).expect("a sample");
        std::thread::sleep(std::time::Duration::from_millis(60));
        let text = std::fs::read("/proc/stat").unwrap();
        let fresh = idle_ticks_in_proc_stat(&text).unwrap() * cpu.ns_per_tick;
        let b = cpu.sample(60_000_000, 0).expect("a second sample");
        assert!(a.idle <= fresh && fresh <= b.idle, "{} <= {fresh} <= {}", a.idle, b.idle);
    }

    #[test]
    fn proc_stat_lines() {
        let text = "cpu  10 0 20 300 5 0 1 0 0 0\ncpu0 5 0 10 150 2 0 0 0 0 0\ncpu1 5 0 10 150 3 0 1 0 0 0\nintr 1 2\n";
        assert_eq!(cpus_in_proc_stat(text), 2);
        assert_eq!(idle_ticks_in_proc_stat(text.as_bytes()), Some(305));
        assert_eq!(idle_ticks_in_proc_stat(b"cpu0 1 2 3 4 5\n"), None);
        assert_eq!(idle_ticks_in_proc_stat(b"cpu  1 2 3\n"), None);
    }
}
