//! Subcommands other than `run`: they read config, never bind ports.

pub mod explain;
pub mod users;
