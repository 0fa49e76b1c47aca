//! authgate: a forward HTTP proxy that lets traffic out only with valid proxy
//! credentials.
//!
//! Module map (roughly in the order a request meets them):
//!
//! - [`config`]: TOML files → one validated, immutable [`config::Snapshot`]
//! - [`auth`]: `Proxy-Authorization` parsing, users, verified cache, argon2 pool
//! - [`policy`]: access rules (who may reach what) and the egress IP policy
//! - [`target`]: strict parsing of request targets
//! - [`proxy`]: per-request flow, CONNECT tunnels, forwarding, upstream dialing
//! - [`respond`]: every response authgate makes itself
//! - [`body`]: response/request bodies with byte counting and the access log
//! - [`cli`]: `explain`, `users` and other subcommands (no ports bound)
//! - [`server`]: listeners, connections, graceful shutdown
//! - [`telemetry`]: logging and metrics
//! - [`error`]: the one error type, grouped by who is at fault
//! - [`blocking`]: work off the runtime's threads, surviving a refused thread

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod blocking;
pub mod body;
mod calendar;
pub mod cli;
pub mod config;
pub mod error;
pub mod policy;
pub mod proxy;
pub mod respond;
pub mod server;
pub mod target;
pub mod telemetry;
pub mod watched_io;

pub use config::Snapshot;
pub use proxy::State;
pub use server::run;
