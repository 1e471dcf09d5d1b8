//! The Dockerfile side of strata: reading a Dockerfile ([`dockerfile`]),
//! its word rules ([`words`]), the instructions that change only an
//! image's configuration ([`config_change`], which `strata commit
//! --change` takes too), COPY and ADD ([`copy`]) and the engine that runs
//! a build ([`build`]). The engine runs RUN steps through a host the CLI
//! provides (its containers over the union filesystem), so that this crate
//! sits between the CLI and the layers crate in the dependency order
//! (cli -> builder -> runner -> fs -> layers) without knowing containers'
//! records.

pub mod build;
pub mod cache;
pub mod config_change;
pub mod copy;
pub mod dockerfile;
pub mod words;

pub use build::{build, BuildError, BuildHost, BuildOptions, RunFailure, RunMount};
pub use config_change::{apply_changes, parse_change, ChangeError, ConfigChange};
