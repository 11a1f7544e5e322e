//! causeway: joins clusters into one network.
//!
//! Module map, innermost first. Each module may import only the top-level modules listed
//! after it (test code excepted), so dependencies point inward and no two modules import
//! each other; `module_deps` checks this list against the code.
//! - `model` (may import: nothing): ids, services, endpoints, cluster records — plain data.
//! - `clock` (may import: nothing): the one place that reads the clock (tokio's, so tests
//!   can pause it).
//! - `select` (may import: model): pure endpoint ranking for DNS answers.
//! - `conflict` (may import: model): the MCS conflict rules (KEP-1645): every cluster's export
//!   of a service → the merged import and the conflicts (pure).
//! - `health` (may import: model, clock): active probes of this cluster's own endpoints
//!   (sans-IO prober, tokio driver).
//! - `http` (may import: nothing): plain HTTP/1.1 for the admin ports: serve a router, one GET.
//! - `certs` (may import: model, clock): the clusterset CA and cluster/broker certificates
//!   (rcgen), and the TLS/QUIC configs built from them.
//! - `sync` (may import: model, clock, certs): the gateway↔broker protocol: wire messages,
//!   sans-IO sessions and `SyncState`, the QUIC shell.
//! - `broker` (may import: model, clock, certs, sync): the broker's pure state, its
//!   persistent store and its QUIC server.
//! - `answers` (may import: model, select, conflict, sync): what the gateway answers, pure:
//!   DNS records (one MCS rule with the ServiceImport) and tunnel peers, from the model.
//! - `changes` (may import: model, select, answers, sync): the gateway's state-change log
//!   lines about its answers (pure diffs).
//! - `replica` (may import: model, clock, http): `causeway dns`, a DNS-only replica fed by a
//!   gateway's records long poll, and that long poll's protocol.
//! - `status` (may import: model, select, answers, sync): what `causeway status` computes
//!   (pure), the gateway view it reads, and the admin API's JSON documents.
//! - `explain` (may import: model, select, answers, status): what `causeway explain`
//!   computes (pure).
//! - `source` (may import: model, clock, conflict, health, sync): where a cluster's services
//!   come from: the file source, and Kubernetes (`source::k8s`, the sole kube user).
//! - `admin` (may import: model, clock, select, health, http, sync, changes, replica, status,
//!   explain): the gateway's admin port: /metrics, /healthz, /readyz, the JSON API.
//! - `cli` (may import: model, certs, broker, replica, source, admin): every subcommand and
//!   flag (clap), parsed into validated types and each daemon's config.
//! - `diagnose` (may import: model, admin, status): what `causeway diagnose` checks (pure).
//! - `inspect` (may import: model, http, cli, admin, status, explain, diagnose): the CLI shell
//!   of `status`, `explain`, `diagnose` (reads the admin port).
//! - `app` (may import: model, clock, select, health, sync, answers, changes, replica, status,
//!   source, admin, cli): the gateway daemon's wiring: source → broker, broker → tunnels and
//!   DNS.
//!
//! Test-only modules, which may import anything:
//! - `testing`: shared test support (deadline polling, PKI, sync clients).
//! - `sim`: the deterministic simulation of a clusterset (seeded; invariants every step).
//! - `module_deps`: checks the map above against the code.

pub mod admin;
pub mod answers;
pub mod app;
pub mod broker;
pub mod certs;
pub mod changes;
pub mod cli;
pub mod clock;
pub mod conflict;
pub mod diagnose;
pub mod explain;
pub mod health;
pub mod http;
pub mod inspect;
pub mod model;
#[cfg(test)]
mod module_deps;
pub mod replica;
pub mod select;
#[cfg(test)]
mod sim;
pub mod source;
pub mod status;
pub mod sync;
#[cfg(test)]
pub(crate) mod testing;
