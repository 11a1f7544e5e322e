//! The broker: the clusterset's record of clusters and their exports.
//!
//! - `state`: pure `BrokerState` — ownership rules (a cluster writes only its own records),
//!   limits, leases (withhold, then remove, absent clusters), publish diffing, revisions and
//!   the resume log;
//! - `deny`: the revocation deny list (cluster ids, certificate serials), parsed and matched;
//! - `store`: the `Store` trait and its in-memory and redb implementations;
//! - `etcd`: the `Store` in an etcd cluster, shared by several broker replicas (`--store
//!   etcd://…`); `replica`: the pure rules by which replicas agree (ordering, leases);
//! - `server`: the QUIC shell, `run` / `Broker`.
//!
//! The wire messages are `crate::sync::wire`, shared with the gateway.

pub mod deny;
pub mod etcd;
pub mod replica;
pub mod server;
pub mod state;
pub mod store;

pub use server::{Broker, BrokerConfig, BrokerOptions, run};
pub use state::{BrokerState, StateConfig};
pub use store::{MemStore, Persisted, RedbStore, Store, StoreError, StoreEvent, StoreLocation};

/// Why the broker refused a write: the wire's `RejectReason`, sent back to the gateway as is.
pub type Rejected = crate::sync::wire::RejectReason;
