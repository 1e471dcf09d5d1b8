//! One module per area of commands; each has a clap subcommand enum and `run`.

pub mod image;
