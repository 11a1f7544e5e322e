//! causeway-dns: the authoritative server for the `svc.global` zone, on hickory-server.
//!
//! The caller builds an immutable [`Snapshot`] of every service's addresses (already ranked
//! best-first) and [`Handle::publish`]es it; queries are answered from whichever snapshot is
//! current, swapped atomically. This crate knows nothing of causeway's model: `app.rs` in the
//! `causeway` package translates into [`ServiceRecords`].
//!
//! Module map:
//! - `zone`: pure: the [`Snapshot`] (names → records) and query → [`Answer`] (RFC 1034/2308).
//! - `handler`: the hickory `RequestHandler` adapter; converts types only.
//! - `server`: the tokio shell: binds UDP+TCP, runs until shutdown, hands out the [`Handle`].

mod handler;
mod server;
mod zone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub use server::{Handle, Transport, serve};
pub use zone::{Answer, NameProblem, ServiceRecords, Snapshot};

/// The zone causeway serves unless configured otherwise.
pub const DEFAULT_ZONE: &str = "svc.global";
/// Record TTL in seconds: short, because endpoints fail over and clients must follow quickly;
/// each second costs one re-query per client per name.
pub const DEFAULT_TTL: u32 = 5;

/// Where and what to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// UDP and TCP listen address; port 0 picks a free port (see [`Handle::local_addr`]).
    pub listen: SocketAddr,
    /// The zone apex, e.g. `svc.global` (a trailing dot is accepted).
    pub zone: String,
    /// TTL of every record, and the SOA MINIMUM (negative-caching TTL), in seconds.
    pub ttl: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 53),
            zone: DEFAULT_ZONE.to_owned(),
            ttl: DEFAULT_TTL,
        }
    }
}

/// Everything that can go wrong building a zone or starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured zone is not a usable domain name.
    #[error("bad dns zone {zone:?}")]
    BadZone {
        zone: String,
        #[source]
        reason: NameProblem,
    },
    /// A service's namespace or name cannot be a label under the zone.
    #[error("bad service name {namespace}/{name} for dns")]
    BadServiceName {
        namespace: String,
        name: String,
        #[source]
        reason: NameProblem,
    },
    /// Two services map to the same DNS name (names are case-insensitive).
    #[error("duplicate service {namespace}/{name} in dns snapshot")]
    DuplicateService { namespace: String, name: String },
    /// A listening socket could not be bound.
    #[error("binding dns ({transport}) on {addr}")]
    Bind {
        addr: SocketAddr,
        transport: Transport,
        #[source]
        source: std::io::Error,
    },
}
