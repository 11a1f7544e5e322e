//! The DNS replica mode (`causeway dns --from http://GATEWAY-ADMIN:9990`): a process that
//! serves the same zones as a gateway, from the gateway's ranked records, so that DNS can run
//! as its own Deployment with several replicas while only the elected gateway leads.
//!
//! The gateway publishes every DNS table it builds as a [`proto::RecordsDoc`] (the `dns`
//! crate's inputs plus a generation) on its admin port, `GET /api/v1/dns/records`, a long
//! poll; the replica follows it and builds its own snapshot from the same inputs, so both
//! answer alike. What the replica does not own: ranking (the gateway's `select`), health,
//! the broker.
//!
//! Module map: `proto` (pure: the document, the long-poll rule and the follower's state
//! machine), `http` (the gateway-side handler and the replica's GET), `run` (the replica's
//! tokio shell: the follow loop, the DNS server and its small admin port).

pub mod http;
pub mod proto;
pub mod run;

pub use proto::{Follower, PollQuery, RecordsDoc, ReplicaError};
pub use run::run;

#[cfg(test)]
mod tests;
