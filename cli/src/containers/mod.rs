//! Containers: records in the store, names, volumes, the attach protocol,
//! the per-container supervisor, and the translation of a container record
//! into the runner's spec. The commands that use them live in
//! `commands/run.rs`, `commands/container.rs`, `commands/exec.rs` and
//! `commands/volume.rs` and `commands/network.rs`.

pub mod attach;
pub mod dns;
pub mod health;
pub mod images;
pub mod logs;
pub mod names;
pub mod networks;
pub mod record;
pub mod resources;
pub mod restart;
pub mod signals;
pub mod spec;
pub mod supervisor;
pub mod volumes;
