//! Restart policies (`run --restart`), applied by the container's
//! supervisor: when the container's command exits, the supervisor starts
//! it again after a back-off (100 ms, doubling up to a minute, back to
//! 100 ms after a run of 10 s or more), as Docker's daemon does.
//!
//! A container stopped by `stop`, `kill` or `rm -f` is not restarted (the
//! command marks it `stop_requested` before it signals). There is no daemon
//! that outlives the supervisor, so nothing restarts containers after the
//! host reboots; `always` and `unless-stopped` therefore behave alike.

use anyhow::{bail, Result};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    No,
    Always,
    UnlessStopped,
    /// At most this many restarts (0: no limit).
    OnFailure(u32),
}

impl Policy {
    /// Docker's `--restart` values.
    pub fn parse(value: Option<&str>) -> Result<Policy> {
        Ok(match value.unwrap_or("no") {
            "" | "no" => Policy::No,
            "always" => Policy::Always,
            "unless-stopped" => Policy::UnlessStopped,
            "on-failure" => Policy::OnFailure(0),
            other => match other.strip_prefix("on-failure:") {
                Some(n) => match n.parse::<u32>() {
                    Ok(n) => Policy::OnFailure(n),
                    Err(_) => bail!("invalid restart policy: maximum retry count must be a number: {n:?}"),
                },
                None => bail!("invalid restart policy {other:?}: use no, always, unless-stopped or on-failure[:N]"),
            },
        })
    }

    /// `HostConfig.RestartPolicy` of inspect: name and maximum retry count.
    pub fn docker_name(self) -> (&'static str, u32) {
        match self {
            Policy::No => ("no", 0),
            Policy::Always => ("always", 0),
            Policy::UnlessStopped => ("unless-stopped", 0),
            Policy::OnFailure(n) => ("on-failure", n),
        }
    }

    /// Whether a container that exited with `code`, restarted `restarts`
    /// times so far, starts again.
    pub fn restarts(self, code: i32, restarts: u32, stop_requested: bool) -> bool {
        if stop_requested {
            return false;
        }
        match self {
            Policy::No => false,
            Policy::Always | Policy::UnlessStopped => true,
            Policy::OnFailure(max) => code != 0 && (max == 0 || restarts < max),
        }
    }
}

/// The back-off before the next start, given the last one and how long
/// the container ran.
pub fn next_delay(last: Option<Duration>, ran: Duration) -> Duration {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(60);
    match last {
        Some(d) if ran < Duration::from_secs(10) => (d * 2).min(MAX),
        _ => FIRST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_decide() {
        assert_eq!(Policy::parse(None).unwrap(), Policy::No);
        assert_eq!(Policy::parse(Some("on-failure:3")).unwrap(), Policy::OnFailure(3));
        assert!(Policy::parse(Some("sometimes")).is_err());
        assert!(Policy::parse(Some("on-failure:x")).is_err());
        assert!(Policy::OnFailure(2).restarts(1, 1, false));
        assert!(!Policy::OnFailure(2).restarts(1, 2, false));
        assert!(!Policy::OnFailure(0).restarts(0, 0, false));
        assert!(Policy::Always.restarts(0, 100, false));
        assert!(!Policy::Always.restarts(0, 0, true));
        assert_eq!(next_delay(None, Duration::ZERO), Duration::from_millis(100));
        assert_eq!(next_delay(Some(Duration::from_millis(100)), Duration::ZERO), Duration::from_millis(200));
        assert_eq!(next_delay(Some(Duration::from_secs(50)), Duration::ZERO), Duration::from_secs(60));
        assert_eq!(next_delay(Some(Duration::from_secs(50)), Duration::from_secs(11)), Duration::from_millis(100));
    }
}
