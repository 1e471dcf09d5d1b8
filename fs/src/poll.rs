//! Adaptive busy-polling of the FUSE device while requests keep coming.
//!
//! A FUSE request is a round trip between two threads: the caller sleeps
//! until the server answers, the server sleeps until the next request.
//! Every sleep means a wake-up, and waking a thread on another CPU costs an
//! inter-processor interrupt. On the virtual machines measured here (idle
//! vCPUs halt at once, no halt polling) that is ~25 µs per wake-up: a
//! ping-pong between two CPUs took 57 µs per round trip, between two
//! threads on one CPU 7 µs, and 6 µs when the answering side spins on a
//! non-blocking read instead of sleeping. Extracting 20,000 files through
//! the mount (~10 requests per file) took 9.4 s with a sleeping reader and
//! 2.4 s with `tar` and the server pinned to one CPU.
//!
//! So while requests arrive densely, the request reader does not sleep: the
//! device fd is switched to non-blocking and fuser's read loop retries
//! EAGAIN at once (it does, by design). Spinning starts when `DENSE`
//! requests in a row each followed the one before within a fifth of
//! `window` (one system call alone, such as an open that is a LOOKUP and
//! an OPEN, does not start it), and a governor thread
//! switches the fd back to blocking as soon as a `window` saw fewer than
//! `DENSE` requests, so an idle mount costs nothing and neither does a
//! trickle of requests (a program that stats a file every few hundred
//! microseconds would otherwise keep a CPU spinning for as long as it
//! runs): the wake-ups matter only where requests follow each other
//! closely. The price is one busy CPU during, and up to `window` after, a
//! burst; it is not taken on a machine with a single CPU, where the spinning
//! reader would take the CPU from the very caller it waits for.
//!
//! The caller's side of the same round trip: a caller waiting for its
//! answer leaves its CPU idle, and an idle vCPU halts, so the answer's
//! wake-up costs the interrupt again. While the reader spins, a mount
//! running as root also holds a CPU wake-up latency request of 0 µs (PM
//! QoS through /dev/cpu_dma_latency, the interface `tuned` and DPDK use):
//! idle CPUs then poll instead of halting and the kernel wakes a polling
//! CPU without an interrupt. The request is dropped with the spinning (and
//! by the kernel when the process ends). Extracting the 20,000 files: 4.0 s
//! without it, 1.7-2.1 s with it (kernel overlayfs 0.5 s). Ordinary users
//! may not open the device and go without.
//!
//! Spinning pays only where CPUs would otherwise sit idle. On a machine
//! whose CPUs other work keeps busy, the spinning reader takes CPU time from
//! the callers it waits for (and from everyone else), while the wake-ups it
//! saves are cheap there (busy CPUs do not halt). Measured on the 2 CPUs
//! with CPU hogs (`yes`) running: extracting the 20,000 files took 5.5 s
//! (one hog) and 6.6-7.7 s (two) spinning, against 2.2-2.5 s and 2.3-3.4 s
//! sleeping; `ls -l` of 100,000 entries in a writable mount 4.3 s and
//! 4.5-6.0 s against 1.5 s and 1.5-2.8 s. So the governor also looks, at
//! most every `LOAD_PERIOD`, at how long threads waited for a CPU (the
//! kernel's pressure stall information, `/proc/pressure/cpu`): when that
//! was too much in two periods running, the reader sleeps and no spinning
//! starts before the next look. With it: one hog 2.2-2.6 s and 1.5-1.7 s,
//! and no change without hogs. Two mounts busy at once (two extracts side
//! by side, each server spinning): 3.6-3.9 s before, 2.2 s now.
//!
//! "Too much" depends on how much of the period the reader spun, because
//! a spinning reader is itself a thread that wants a CPU: from
//! `MAX_STALL_SLEEPING` (a tenth of the time) when it slept throughout, to
//! `MAX_STALL_SPINNING` when it spun throughout. `tar cf - | cat` of a
//! warm tree (an OPEN and a RELEASE per file, no other work) makes three
//! busy threads on 2 CPUs, and its 50 ms periods showed up to 25% of
//! waiting while spinning, against 35-50% for an extract beside one hog
//! and 35-72% for two extracts at once. With one limit of a tenth, that
//! `tar` often stopped spinning: 88-224 ms in 9 runs side by side (median
//! 1.58x the kernel's), against 88-136 ms (1.43x) now; `git add` of cold
//! files 1.45x against 1.30x. One limit of 30% for both would not do: the
//! sleeping reader then starts again beside a hog, whose waiting while
//! it sleeps is about 20%, and the extract beside one hog took 3.3-3.5 s
//! against 2.3-2.5 s (as before) now.
//!
//! Waiting alone still could not tell a hog from the work the mount
//! serves. Once spinning had stopped, the waiting that `tar | cat` makes
//! by itself while the reader sleeps (13-27% of each period) looked just
//! like a hog's (about 20%). And a cold `tar` through a writable mount,
//! whose first read in each directory sets 8 read-ahead threads going,
//! made threads wait 14-52% of each period with nothing else running: it
//! stopped spinning and took 0.68-0.90 s, against 0.43-0.45 s spinning.
//! So waiting now counts only beside other work ([`crate::cpu_use`]): the CPUs'
//! busy time over the last 200 ms or more, less this server's threads and
//! the thread of the latest request, when that is more than what the
//! reader and its caller leave (all CPUs but 1.5). Measured over whole
//! runs on 2 CPUs, other work kept 0.21-0.23 CPUs busy beside `tar | cat`
//! and beside an extract (`cat`, the kernel's threads), and 0.94-1.11
//! beside one CPU hog. See [`CpuUse`] for what that changed.
//!
//! Judged and not taken: the CPU time others used (`/proc/stat` less ours,
//! but with the caller's) cannot tell a hog from the caller itself (`git
//! add` of cold files lost 15%), nor the number of runnable threads
//! (`/proc/loadavg`, too noisy at 1 ms). Nor a trial of sleeping (50 ms,
//! when the CPUs looked busy) that compared request rates: it helped the
//! `tar` above somewhat, but beside a busy thread on every CPU it went back
//! to spinning for 100 ms in every 650 ms. Nor taking the waiting of our
//! read-ahead threads off the stall: it hid a hog, whose waiting falls in
//! the same moments (cold `tar` beside a hog 0.70-1.06 s against 0.48-0.68
//! s). `tar | gzip`, where gzip is the bottleneck, takes the same
//! 0.42-0.60 s spinning or not.
//!
//! Measured and not taken: pinning the reader to the CPU its latest caller
//! ran on (read from /proc/PID/stat every `window`), with a sleeping
//! reader, so that both take turns on one CPU (2.4-2.9 s above when both
//! are pinned from outside). Unpinned callers do not stay: the scheduler
//! wakes the caller on the idle CPU because the reader is still running
//! when it answers, `tar` hopped between CPUs every few hundred
//! milliseconds with the reader following, and extraction took 7-8.5 s.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::fs::OFlags;

use crate::cpu_use::{count_this_thread, others_compete, CpuSample, CpuUse};

/// Requests per `window` that keep the reader spinning, and requests in a
/// row, each within `window / DENSE` of the one before, that start it.
const DENSE: u64 = 5;

/// How often at most the governor looks at how busy the CPUs are.
const LOAD_PERIOD: Duration = Duration::from_millis(50);

/// The share of the time that threads may have waited for a CPU while the
/// reader slept, for spinning to start again.
const MAX_STALL_SLEEPING: f64 = 0.1;

/// The share of the time that threads may have waited for a CPU while the
/// reader spun (and so was one of the threads wanting a CPU), for spinning
/// to go on.
const MAX_STALL_SPINNING: f64 = 0.3;

/// Switches the request channel between spinning and sleeping.
pub(crate) struct Poller {
    /// A duplicate of the session's device fd (the file description, and so
    /// its O_NONBLOCK flag, is shared with fuser's reader).
    fd: OnceLock<OwnedFd>,
    window: Duration,
    epoch: Instant,
    /// Nanoseconds since `epoch` of the latest request.
    last: AtomicU64,
    /// Requests since the governor last looked.
    seen: AtomicU64,
    /// The thread that made the latest request.
    caller: AtomicU32,
    /// Requests in a row that came within `window / DENSE` of the previous.
    streak: AtomicU64,
    spinning: AtomicBool,
    /// The CPU latency request held while spinning, when permitted.
    cpu_latency: Option<CpuLatency>,
    /// Nanoseconds since `epoch` before which no spinning starts: the CPUs
    /// were found busy, and are not looked at again before then.
    calm_after: AtomicU64,
    /// Wakes the governor when spinning starts; `true` asks it to end.
    wake: (Mutex<bool>, Condvar),
}

impl Poller {
    /// A poller that spins while requests come densely (see the module
    /// doc), holding idle CPUs polling meanwhile when `hold_cpus` and
    /// permitted; `None` when spinning is off (zero window, or one CPU).
    pub(crate) fn new(window: Duration, hold_cpus: bool) -> Option<Arc<Poller>> {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if window.is_zero() || cpus < 2 {
            return None;
        }
        Some(Arc::new(Poller {
            fd: OnceLock::new(),
            window,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            caller: AtomicU32::new(0),
            streak: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            cpu_latency: if hold_cpus { CpuLatency::open() } else { None },
            calm_after: AtomicU64::new(0),
            wake: (Mutex::new(false), Condvar::new()),
        }))
    }

    /// Hands over the session's device fd and starts the governor.
    pub(crate) fn attach(self: &Arc<Self>, dev: impl AsFd) -> std::io::Result<()> {
        let fd = rustix::io::fcntl_dupfd_cloexec(dev, 3)?;
        let _ = self.fd.set(fd);
        let me = self.clone();
        std::thread::Builder::new().name("strata-poll".into()).spawn(move || me.govern())?;
        Ok(())
    }

    /// Called at the start of every request, on the thread serving it;
    /// `caller`: the thread that made it.
    #[inline]
    pub(crate) fn on_request(&self, caller: u32) {
        // A thread-local check; the thread is listed on its first request.
        count_this_thread();
        // The kernel's own requests (FORGET, writeback) come from pid 0:
        // they name no caller, and the latest one that did still counts.
        if caller != 0 {
            self.caller.store(caller, Ordering::Relaxed);
        }
        let now = self.now();
        let gap = now.saturating_sub(self.last.swap(now, Ordering::Relaxed));
        self.seen.fetch_add(1, Ordering::Relaxed);
        // Requests in a row, each close after the one before.
        let streak = if gap < self.window.as_nanos() as u64 / DENSE {
            self.streak.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.streak.store(0, Ordering::Relaxed);
            0
        };
        if streak >= DENSE
            && !self.spinning.load(Ordering::Relaxed)
            && now >= self.calm_after.load(Ordering::Relaxed)
            && self.set_nonblocking(true)
        {
            self.seen.store(0, Ordering::Relaxed);
            self.spinning.store(true, Ordering::Relaxed);
            let (lock, cv) = &self.wake;
            drop(lock.lock().unwrap_or_else(|p| p.into_inner()));
            cv.notify_one();
        }
    }

    /// Ends the governor (the mount is going away).
    pub(crate) fn stop(&self) {
        let (lock, cv) = &self.wake;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_one();
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn set_nonblocking(&self, on: bool) -> bool {
        let Some(fd) = self.fd.get() else { return false };
        let Ok(flags) = rustix::fs::fcntl_getfl(fd) else { return false };
        let flags = if on { flags | OFlags::NONBLOCK } else { flags - OFlags::NONBLOCK };
        rustix::fs::fcntl_setfl(fd, flags).is_ok()
    }

    /// Sleeps while the reader sleeps; while it spins, keeps idle CPUs
    /// polling and counts the requests of every `window`, and puts the
    /// reader (and the CPUs) back to sleep when fewer than `DENSE` came or
    /// the CPUs are wanted elsewhere.
    fn govern(&self) {
        count_this_thread();
        let (lock, cv) = &self.wake;
        let mut load = MachineLoad::new();
        loop {
            {
                let mut stop = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !*stop && !self.spinning.load(Ordering::Relaxed) {
                    stop = cv.wait(stop).unwrap_or_else(|p| p.into_inner());
                }
                if *stop {
                    self.set_nonblocking(false);
                    return;
                }
            }
            load.spin_started(self.now());
            if self.cpus_busy(&mut load) {
                self.stop_spinning(&mut load);
                continue;
            }
            if let Some(c) = &self.cpu_latency {
                c.request(0);
            }
            loop {
                std::thread::sleep(self.window);
                if self.cpus_busy(&mut load) || self.seen.swap(0, Ordering::Relaxed) < DENSE {
                    self.stop_spinning(&mut load);
                    break;
                }
            }
            if let Some(c) = &self.cpu_latency {
                c.release();
            }
        }
    }
}

impl Poller {
    fn stop_spinning(&self, load: &mut MachineLoad) {
        load.spin_stopped(self.now());
        // In this order: a request racing with the switch either still sees
        // `spinning` (and its reader sleeps once more than it needed) or
        // sees it cleared and switches back.
        self.set_nonblocking(false);
        self.spinning.store(false, Ordering::Relaxed);
    }

    /// Whether other work keeps the CPUs too busy for spinning, judged
    /// afresh once `LOAD_PERIOD` has passed since the last look; when so,
    /// no spinning starts before the next look is due.
    fn cpus_busy(&self, load: &mut MachineLoad) -> bool {
        let now = self.now();
        if !load.due(now) {
            return false;
        }
        let busy = load.look(now, self.caller.load(Ordering::Relaxed));
        if busy {
            self.calm_after.store(now + LOAD_PERIOD.as_nanos() as u64, Ordering::Relaxed);
        }
        busy
    }
}

/// How long threads waited for a CPU since the last look, from the kernel's
/// CPU pressure stall information (`/proc/pressure/cpu`).
struct MachineLoad {
    pressure: Option<std::fs::File>,
    /// At the last look: when (ns since the poller's epoch), and the
    /// stall counter then (µs).
    last: Option<(u64, u64)>,
    /// Whether the last look found too much stall.
    was_busy: bool,
    /// How long the reader spun since the last look (ns), not counting a
    /// spin going on, which started at `spinning_since` (or at the last
    /// look, if that was later).
    spun: u64,
    spinning_since: Option<u64>,
    /// What the CPUs were used for (see [`CpuUse`]).
    cpu: CpuUse,
}

impl MachineLoad {
    fn new() -> MachineLoad {
        MachineLoad {
            pressure: std::fs::File::open("/proc/pressure/cpu").ok(),
            last: None,
            was_busy: false,
            spun: 0,
            spinning_since: None,
            cpu: CpuUse::new(),
        }
    }

    fn due(&self, now: u64) -> bool {
        self.pressure.is_some() && self.last.is_none_or(|(at, _)| now >= at + LOAD_PERIOD.as_nanos() as u64)
    }

    fn spin_started(&mut self, now: u64) {
        self.spinning_since = Some(now);
    }

    fn spin_stopped(&mut self, now: u64) {
        if let Some(since) = self.spinning_since.take() {
            self.spun += now.saturating_sub(since);
        }
    }

    /// Takes a look at `now`; true when, since the previous one and in the
    /// period before, threads waited for a CPU more than they may (see
    /// [`max_stall`]). (Once is not enough: this mount's own threads reading ahead
    /// after a cold start make a burst of it, and `git add` of cold files
    /// lost a tenth to that.) The first look only starts the count.
    fn look(&mut self, now: u64, caller: u32) -> bool {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 256];
        let read = self.pressure.as_ref().and_then(|f| f.read_at(&mut buf, 0).ok());
        let Some(stall) = read.and_then(|n| some_total_us(&buf[..n])) else {
            self.pressure = None; // unreadable (pressure stall information off): unjudged
            return false;
        };
        let cpu = self.cpu.sample(now, caller);
        self.judge(now, stall, cpu)
    }

    /// [`look`](Self::look) with the counters read at `now`: the stall
    /// counter (µs) and, when readable, the CPU times.
    fn judge(&mut self, now: u64, stall: u64, cpu: Option<CpuSample>) -> bool {
        let others = cpu.and_then(|c| self.cpu.others_since_a_window(c));
        let spun = std::mem::take(&mut self.spun) + self.spinning_since.map_or(0, |s| now.saturating_sub(s));
        self.spinning_since = self.spinning_since.map(|_| now);
        let Some((at, stall0)) = self.last.replace((now, stall)) else { return false };
        let wall = now.saturating_sub(at);
        let limit = max_stall(spun as f64 / wall.max(1) as f64);
        // Waiting counts only beside other work (or when that is unknown).
        let busy = too_busy(stall.saturating_sub(stall0) * 1000, wall, limit)
            && others.is_none_or(|o| others_compete(o, self.cpu.cpus));
        std::mem::replace(&mut self.was_busy, busy) && busy
    }
}

/// How much of the time threads may wait for a CPU, when the reader spun
/// for `spun_share` of it: from `MAX_STALL_SLEEPING` to `MAX_STALL_SPINNING`.
fn max_stall(spun_share: f64) -> f64 {
    MAX_STALL_SLEEPING + (MAX_STALL_SPINNING - MAX_STALL_SLEEPING) * spun_share.clamp(0.0, 1.0)
}

/// Whether `stalled` ns of waiting for a CPU during `wall` ns is more than
/// `max_stall` of it.
fn too_busy(stalled: u64, wall: u64, max_stall: f64) -> bool {
    wall > 0 && stalled as f64 > max_stall * wall as f64
}

/// The `total=` (µs) of the `some` line of a `/proc/pressure/*` file: how
/// long at least one thread was stalled.
fn some_total_us(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_ascii_whitespace().find_map(|f| f.strip_prefix("total="))?.parse().ok()
}

/// A PM QoS CPU latency request: an open /dev/cpu_dma_latency whose
/// written value bounds how long any CPU may take to wake up (the kernel
/// keeps the smallest of all requests and drops ours when the fd closes).
struct CpuLatency(std::fs::File);

impl CpuLatency {
    /// Opens a request that asks nothing yet; `None` when not permitted
    /// (the device is root's) or absent.
    fn open() -> Option<CpuLatency> {
        // std opens with O_CLOEXEC: no container inherits the request.
        std::fs::OpenOptions::new().write(true).open("/dev/cpu_dma_latency").ok().map(CpuLatency)
    }

    /// Asks for wake-ups within `us` microseconds (0: idle CPUs poll).
    fn request(&self, us: i32) {
        use std::io::Write;
        let _ = (&self.0).write(&us.to_ne_bytes());
    }

    /// Back to the system's default (PM_QOS_DEFAULT_VALUE).
    fn release(&self) {
        self.request(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_files() {
        let text = b"some avg10=24.01 avg60=36.55 avg300=29.53 total=471408496\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_total_us(text), Some(471408496));
        assert_eq!(some_total_us(b"full avg10=0.00 total=5\n"), None);
        assert_eq!(some_total_us(b"some avg10=0.00 total=x\n"), None);
    }

    #[test]
    fn too_busy_is_much_waiting_for_a_cpu() {
        let ms = 1_000_000;
        assert!(!too_busy(2 * ms, 50 * ms, MAX_STALL_SLEEPING));
        assert!(too_busy(10 * ms, 50 * ms, MAX_STALL_SLEEPING));
        assert!(!too_busy(10 * ms, 50 * ms, MAX_STALL_SPINNING));
        assert!(too_busy(20 * ms, 50 * ms, MAX_STALL_SPINNING));
        assert!(!too_busy(0, 0, MAX_STALL_SLEEPING));
        assert_eq!(max_stall(0.0), MAX_STALL_SLEEPING);
        assert_eq!(max_stall(1.0), MAX_STALL_SPINNING);
        assert_eq!(max_stall(7.0), MAX_STALL_SPINNING);
        assert!((max_stall(0.5) - 0.2).abs() < 1e-9);
    }

    /// A look at a load whose stall counter the test sets.
    fn load_without_file() -> MachineLoad {
        MachineLoad {
            pressure: None,
            last: None,
            was_busy: false,
            spun: 0,
            spinning_since: None,
            cpu: CpuUse::with_cpus(0),
        }
    }

    #[test]
    fn waiting_while_spinning_is_judged_against_the_spinning_limit() {
        let ms = 1_000_000u64;
        // `tar cf - | cat` of a warm tree: the reader spins throughout and
        // threads wait up to a quarter of each period. Spinning goes on.
        let mut load = load_without_file();
        load.spin_started(0);
        assert!(!load.judge(0, 0, None));
        let mut stall_us = 0;
        for i in 1..=10 {
            stall_us += 12_500; // 25% of 50 ms
            assert!(!load.judge(i * 50 * ms, stall_us, None), "period {i}: a quarter of waiting while spinning");
        }
        // Beside a hog: 40% of waiting while spinning, twice running.
        stall_us += 20_000;
        assert!(!load.judge(550 * ms, stall_us, None), "once is not enough");
        stall_us += 20_000;
        assert!(load.judge(600 * ms, stall_us, None));
        load.spin_stopped(600 * ms);
        // The reader sleeps now, and others still make threads wait a
        // fifth of the time: spinning stays off.
        stall_us += 10_000;
        assert!(load.judge(650 * ms, stall_us, None));
        // Half spinning, half sleeping: the limit lies between the two.
        load.spin_started(675 * ms);
        stall_us += 12_000; // 24%, over 20%
        assert!(load.judge(700 * ms, stall_us, None));
        stall_us += 8_000; // 16% while spinning throughout
        assert!(!load.judge(750 * ms, stall_us, None));
    }

    #[test]
    fn waiting_beside_no_other_work_keeps_spinning() {
        let ms = 1_000_000u64;
        let mut load = load_without_file();
        load.cpu.cpus = 2;
        // The reader sleeps, threads wait 40% of the time, and the CPUs
        // are used by us and the caller alone (0.2 CPUs idle). Until a
        // window has passed, that is not known, and the waiting counts.
        let quiet = |i: u64| Some(CpuSample::ms(i * 50, i * 10, i * 50, Some((7, i * 40))));
        for i in 0..=3 {
            load.judge(i * 50 * ms, i * 20_000, quiet(i));
        }
        for i in 4..=8 {
            assert!(!load.judge(i * 50 * ms, i * 20_000, quiet(i)), "look {i}");
        }
        // A hog: the caller now gets 10 ms in each 50, the rest is another's.
        let hog = |i: u64| Some(CpuSample::ms(i * 50, 80, 400 + (i - 8) * 10, Some((7, 320 + (i - 8) * 10))));
        let busy: Vec<bool> = (9..=14).map(|i| load.judge(i * 50 * ms, i * 20_000, hog(i))).collect();
        assert!(busy.iter().any(|&b| b), "a hog beside waiting threads went unnoticed: {busy:?}");
    }

    #[test]
    fn machine_load_looks_once_a_period() {
        let mut load = MachineLoad::new();
        if load.pressure.is_none() {
            return; // a kernel without pressure stall information: never due
        }
        assert!(load.due(0));
        assert!(!load.look(0, 0), "the first look only starts the count");
        assert!(!load.due(LOAD_PERIOD.as_nanos() as u64 - 1));
        assert!(load.due(LOAD_PERIOD.as_nanos() as u64));
    }
}
