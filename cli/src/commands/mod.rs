//! One module per area of commands; each has a clap subcommand enum and `run`.

pub mod build;
pub mod commit;
pub mod container;
pub mod cp;
pub mod debug;
pub mod events;
pub mod exec;
pub mod export;
pub mod image;
pub mod images;
pub mod inspect;
pub mod login;
pub mod manifest;
pub mod mount;
pub mod network;
pub mod pull;
pub mod push;
pub mod run;
pub mod save_load;
pub mod search;
pub mod stats;
pub mod support;
pub mod sysinfo;
pub mod volume;
