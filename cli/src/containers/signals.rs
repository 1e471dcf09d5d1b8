//! Signal names as Docker accepts them: `SIGTERM`, `TERM`, `term`, `15`.

use anyhow::{bail, Result};
use nix::sys::signal::Signal;
use std::str::FromStr;

pub fn parse(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return match Signal::try_from(n) {
            Ok(sig) => Ok(sig),
            Err(_) => bail!("Invalid signal: {s}"),
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    match Signal::from_str(&name) {
        Ok(sig) => Ok(sig),
        Err(_) => bail!("Invalid signal: {s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse("kill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse("9").unwrap(), Signal::SIGKILL);
        assert!(parse("SIGNOPE").is_err());
        assert!(parse("99").is_err());
    }
}
