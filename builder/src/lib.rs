//! The Dockerfile side of strata: the word rules of Dockerfile instructions
//! ([`words`]) and the instructions that change only an image's
//! configuration ([`config_change`]), which `strata commit --change` takes.
//! The build engine (each step run in a container over the union
//! filesystem, its upper layer committed) is to come on these; the crate
//! sits between the CLI and the runner in the dependency order
//! (cli -> builder -> runner -> fs -> layers).

pub mod config_change;
pub mod words;

pub use config_change::{apply_changes, parse_change, ChangeError, ConfigChange};
