//! Keeping a caller's descriptors out of the long-lived helpers strata
//! starts (mount servers, container supervisors).
//!
//! Rust opens everything close-on-exec, but descriptors that strata itself
//! inherited (a pipe a script reads to its end, a lock another tool holds,
//! a jobserver) would pass through `exec` into a helper that outlives the
//! command, holding them open for as long as the mount or the container
//! lives: the script's read never ends, the lock is never released.

use std::os::fd::RawFd;

/// Marks every descriptor from `first` up close-on-exec (with
/// close_range(2), Linux 5.11; one fcntl per possible descriptor before).
/// For `pre_exec`: async-signal-safe, allocates nothing. Descriptors that
/// the helper is meant to get must be placed below `first` before.
pub fn cloexec_from(first: RawFd) {
    // SAFETY: plain syscalls on descriptor numbers; a number that is not
    // open fails with EBADF, which is what we want to ignore.
    unsafe {
        let done =
            libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC)
                == 0;
        if !done {
            let max = match libc::sysconf(libc::_SC_OPEN_MAX) {
                n if n > 0 => n.min(1 << 20) as RawFd,
                _ => 1024,
            };
            for fd in first..max {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}
