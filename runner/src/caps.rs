//! Linux capabilities: names, Docker's default set, and applying a set to the current process
//! (bounding set via prctl, permitted/effective via capset, inheritable and ambient cleared).
//!
//! Written against the raw syscalls rather than the `caps` crate because it runs in the forked
//! container process right before execve, where we want a handful of syscalls and nothing else.

use std::io;

use serde::{Deserialize, Serialize};

use crate::sys::cvt;

macro_rules! caps {
    ($($name:ident = $num:expr),* $(,)?) => {
        /// A capability (numbering as in `<linux/capability.h>`).
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[repr(u8)]
        pub enum Cap { $($name = $num),* }

        impl Cap {
            const ALL: &'static [Cap] = &[$(Cap::$name),*];

            /// Name without the `CAP_` prefix, as Docker prints it in `--cap-add`.
            pub fn name(self) -> &'static str {
                match self { $(Cap::$name => stringify!($name)),* }
            }
        }
    };
}

caps! {
    CHOWN = 0, DAC_OVERRIDE = 1, DAC_READ_SEARCH = 2, FOWNER = 3, FSETID = 4, KILL = 5, SETGID = 6,
    SETUID = 7, SETPCAP = 8, LINUX_IMMUTABLE = 9, NET_BIND_SERVICE = 10, NET_BROADCAST = 11,
    NET_ADMIN = 12, NET_RAW = 13, IPC_LOCK = 14, IPC_OWNER = 15, SYS_MODULE = 16, SYS_RAWIO = 17,
    SYS_CHROOT = 18, SYS_PTRACE = 19, SYS_PACCT = 20, SYS_ADMIN = 21, SYS_BOOT = 22, SYS_NICE = 23,
    SYS_RESOURCE = 24, SYS_TIME = 25, SYS_TTY_CONFIG = 26, MKNOD = 27, LEASE = 28, AUDIT_WRITE = 29,
    AUDIT_CONTROL = 30, SETFCAP = 31, MAC_OVERRIDE = 32, MAC_ADMIN = 33, SYSLOG = 34, WAKE_ALARM = 35,
    BLOCK_SUSPEND = 36, AUDIT_READ = 37, PERFMON = 38, BPF = 39, CHECKPOINT_RESTORE = 40,
}

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[Cap] = &[
    Cap::CHOWN,
    Cap::DAC_OVERRIDE,
    Cap::FSETID,
    Cap::FOWNER,
    Cap::MKNOD,
    Cap::NET_RAW,
    Cap::SETGID,
    Cap::SETUID,
    Cap::SETFCAP,
    Cap::SETPCAP,
    Cap::NET_BIND_SERVICE,
    Cap::SYS_CHROOT,
    Cap::KILL,
    Cap::AUDIT_WRITE,
];

impl Cap {
    /// Docker's `--cap-add` / `--cap-drop` applied to `base` (`ALL` is accepted in both): with
    /// `--cap-add ALL`, every capability but the ones dropped by name; with `--cap-drop ALL`,
    /// only the ones added by name; otherwise `base` less the drops plus the adds.
    pub fn adjusted(base: &[Cap], add: &[Cap], drop: &[Cap], add_all: bool, drop_all: bool) -> Vec<Cap> {
        let mut caps = if add_all {
            Cap::all()
        } else if drop_all {
            Vec::new()
        } else {
            base.to_vec()
        };
        caps.retain(|c| !drop.contains(c));
        for c in add {
            if !caps.contains(c) {
                caps.push(*c);
            }
        }
        caps
    }

    /// Every capability this crate knows.
    pub fn all() -> Vec<Cap> {
        Cap::ALL.to_vec()
    }

    /// Parse `NET_ADMIN`, `net_admin` or `CAP_NET_ADMIN`.
    pub fn parse(s: &str) -> Option<Cap> {
        let upper = s.to_ascii_uppercase();
        let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
        Cap::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Bit mask of a set.
    pub fn mask(caps: &[Cap]) -> u64 {
        caps.iter().fold(0, |m, c| m | 1 << (*c as u8))
    }
}

/// The highest capability number the running kernel knows (read before pivot_root).
pub(crate) fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(Cap::CHECKPOINT_RESTORE as u32)
}

/// Drop every capability not in `keep` from the bounding set. Needs CAP_SETPCAP, so call it while
/// still root.
pub(crate) fn drop_bounding(keep: u64, last_cap: u32) -> io::Result<()> {
    for cap in 0..=last_cap {
        if keep & (1 << cap) == 0 {
            // SAFETY: plain prctl.
            let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if ret == -1 {
                let e = io::Error::last_os_error();
                // EINVAL: the kernel does not know this capability.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Set permitted and effective to `set` (intersected with what we have), inheritable to empty,
/// and clear the ambient set.
pub(crate) fn set_process_caps(set: u64) -> io::Result<()> {
    const VERSION_3: u32 = 0x20080522;
    let mut header = CapHeader { version: VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: valid header and 2-element data array as capability version 3 requires.
    cvt(unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) })?;
    let have = data[0].permitted as u64 | (data[1].permitted as u64) << 32;
    let set = set & have;
    for (i, d) in data.iter_mut().enumerate() {
        let part = (set >> (32 * i)) as u32;
        *d = CapData { effective: part, permitted: part, inheritable: 0 };
    }
    cvt(unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) })?;
    // SAFETY: plain prctl.
    cvt(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_mask() {
        assert_eq!(Cap::parse("cap_net_admin"), Some(Cap::NET_ADMIN));
        assert_eq!(Cap::parse("CHOWN"), Some(Cap::CHOWN));
        assert_eq!(Cap::parse("nonsense"), None);
        // Docker's default set is 0xa80425fb.
        assert_eq!(Cap::mask(DEFAULT_CAPS), 0xa80425fb);
        assert_eq!(Cap::all().len(), 41);
    }

    #[test]
    fn adjusted_like_docker() {
        let base = DEFAULT_CAPS;
        // --cap-add ALL --cap-drop NET_RAW: everything but NET_RAW.
        let c = Cap::adjusted(base, &[], &[Cap::NET_RAW], true, false);
        assert_eq!(c.len(), Cap::all().len() - 1);
        assert!(!c.contains(&Cap::NET_RAW));
        // --cap-drop ALL --cap-add CHOWN: CHOWN alone.
        assert_eq!(Cap::adjusted(base, &[Cap::CHOWN], &[], false, true), vec![Cap::CHOWN]);
        // Both ALL: everything.
        assert_eq!(Cap::adjusted(base, &[], &[], true, true).len(), Cap::all().len());
        // By name: the default set less the drops plus the adds.
        let c = Cap::adjusted(base, &[Cap::SYS_ADMIN], &[Cap::CHOWN], false, false);
        assert!(c.contains(&Cap::SYS_ADMIN) && !c.contains(&Cap::CHOWN));
        assert_eq!(c.len(), base.len());
    }
}
