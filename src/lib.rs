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
//! - `conflict`: the MCS conflict rules: every cluster's export of a service → the merged import
//!   and the conflicts (pure).
//! - `source`: where a cluster's services come from (the file source; Kubernetes later).
//! - `app`: the gateway daemon's wiring: source → broker, broker → tunnels and DNS.

pub mod app;
pub mod broker;
pub mod certs;
pub mod cli;
pub mod clock;
pub mod conflict;
pub mod model;
pub mod select;
pub mod source;
pub mod sync;
