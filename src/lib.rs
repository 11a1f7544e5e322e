//! causeway: joins clusters into one network.
//!
//! Module map (dependencies point inward: `model` ← {sync, broker, select} ← {source, app}):
//! - `model`: ids, services, endpoints, cluster records — plain data, no I/O.
//! - `clock`: the one place that reads the clock (tokio's, so tests can pause it).
//! - `cli`: every subcommand and flag, parsed into validated types.
//! - `certs`: the clusterset CA and cluster/broker certificates (rcgen), and TLS configs.
//! - `sync`: the gateway↔broker protocol: wire messages, sans-IO sessions, the QUIC shell.
//! - `broker`: the broker's pure state, its persistent store and its QUIC server.
//! - `select`: pure endpoint ranking for DNS answers.
//! - `health`: active probes of this cluster's own endpoints (sans-IO prober, tokio driver).
//! - `conflict`: the MCS conflict rules: every cluster's export of a service → the merged import
//!   and the conflicts (pure).
//! - `source`: where a cluster's services come from (the file source; Kubernetes later).
//! - `app`: the gateway daemon's wiring: source → broker, broker → tunnels and DNS.
//! - `changes`: the gateway's state-change log lines about its answers (pure diffs).
//! - `admin`: the gateway's admin port: /metrics, /healthz, /readyz, the JSON API.
//! - `status`, `explain`, `diagnose`: what the operator commands compute and print (pure).
//! - `inspect`: the CLI shell of `status`, `explain`, `diagnose` (reads the admin port).
//! - `replica`: `causeway dns`, a DNS-only replica fed by a gateway's records long poll.
//! - `fuzzing`: entry points for `tests/fuzz/` (public with the `fuzzing` feature).

pub mod admin;
pub mod app;
pub mod broker;
pub mod certs;
pub mod changes;
pub mod cli;
pub mod clock;
pub mod conflict;
pub mod diagnose;
pub mod explain;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(all(test, not(feature = "fuzzing")))]
mod fuzzing;
pub mod health;
pub mod inspect;
pub mod model;
pub mod replica;
pub mod select;
pub mod source;
pub mod status;
pub mod sync;
