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
//! So while requests arrive, the request reader does not sleep: the device
//! fd is switched to non-blocking and fuser's read loop retries EAGAIN at
//! once (it does, by design). A governor thread switches the fd back to
//! blocking once no request came for `window`, so an idle mount costs
//! nothing; the first request after that pays the one wake-up.
//! The price is one busy CPU during, and up to `window` after, a burst of
//! requests; it is not taken on a machine with a single CPU, where the
//! spinning reader would take the CPU from the very caller it waits for.
//!
//! Measured and not taken: pinning the reader to the CPU its latest caller
//! ran on (read from /proc/PID/stat every `window`), with a sleeping
//! reader, so that both take turns on one CPU (2.4-2.9 s above when both
//! are pinned from outside). Unpinned callers do not stay: the scheduler
//! wakes the caller on the idle CPU because the reader is still running
//! when it answers, `tar` hopped between CPUs every few hundred
//! milliseconds with the reader following, and extraction took 7-8.5 s.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::fs::OFlags;

/// Switches the request channel between spinning and sleeping.
pub(crate) struct Poller {
    /// A duplicate of the session's device fd (the file description, and so
    /// its O_NONBLOCK flag, is shared with fuser's reader).
    fd: OnceLock<OwnedFd>,
    window: Duration,
    epoch: Instant,
    /// Nanoseconds since `epoch` of the latest request.
    last: AtomicU64,
    spinning: AtomicBool,
    /// Wakes the governor when spinning starts; `true` asks it to end.
    wake: (Mutex<bool>, Condvar),
}

impl Poller {
    /// A poller that spins for up to `window` after each request; `None` when
    /// spinning is off (zero window, or a single CPU).
    pub(crate) fn new(window: Duration) -> Option<Arc<Poller>> {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if window.is_zero() || cpus < 2 {
            return None;
        }
        Some(Arc::new(Poller {
            fd: OnceLock::new(),
            window,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
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

    /// Called at the start of every request, on the reading thread.
    #[inline]
    pub(crate) fn on_request(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
        if !self.spinning.load(Ordering::Relaxed) && self.set_nonblocking(true) {
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

    /// Sleeps while the reader sleeps; while it spins, checks every `window`
    /// whether a request came since, and puts the reader back to sleep when
    /// none did.
    fn govern(&self) {
        let (lock, cv) = &self.wake;
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
            std::thread::sleep(self.window);
            let idle = self.now().saturating_sub(self.last.load(Ordering::Relaxed));
            if idle >= self.window.as_nanos() as u64 {
                // In this order: a request racing with the switch either
                // still sees `spinning` (and its reader sleeps once more
                // than it needed) or sees it cleared and switches back.
                self.set_nonblocking(false);
                self.spinning.store(false, Ordering::Relaxed);
            }
        }
    }
}
