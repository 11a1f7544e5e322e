//! causeway-dns: the authoritative server for the `svc.global` zone and the MCS
//! `clusterset.local` zone, on hickory-server.
//!
//! The caller builds an immutable [`Snapshot`] of every service's addresses (already ranked
//! best-first, in preference groups) and [`Handle::publish`]es it; queries are answered from
//! whichever snapshot is current, swapped atomically. This crate knows nothing of causeway's
//! model: `app.rs` in the `causeway` package translates into [`ServiceRecords`].
//!
//! Module map:
//! - `clock`: the package's one clock read (public for the package's own tests and benches).
//! - `zone`: pure: the [`Snapshot`] (names → records, built in `zone/build.rs`) and
//!   query → [`Answer`] (RFC 1034/2308/2782/8482), rotating within preference groups.
//! - `handler`: the hickory `RequestHandler` adapter: converts types, forwards out-of-zone
//!   queries to the upstream when one is configured.
//! - `stats`: query counters by zone, type and rcode, and answer latency (plain atomics).
//! - `server`: the shell: binds UDP+TCP, runs until shutdown, hands out the [`Handle`].
//! - `truncate`: pure: cutting an encoded response to the asker's UDP payload at a record
//!   boundary, OPT kept, TC set (RFC 1035/2181/6891).
//! - `udp`: batched UDP (`recvmmsg`/`sendmmsg` into preallocated buffers) for the server's
//!   receive threads; the crate's only `unsafe`.

#[doc(hidden)]
pub mod clock;
mod handler;
mod server;
mod stats;
mod truncate;
mod udp;
mod zone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The hickory types [`Snapshot::answer`] speaks (names, record types, records).
pub use hickory_proto as proto;
pub use server::{Handle, Transport, serve};
pub use stats::{LATENCY_BUCKETS_SECONDS, OUTSIDE_ZONES, QueryCount, StatsSnapshot};
pub use zone::{
    Answer, ClusterRecords, HostRecord, MCS_DNS_VERSION, NameProblem, NamedPort, PortProtocol,
    ServiceKind, ServiceRecords, Snapshot, ZoneConfig,
};

/// The zone causeway serves unless configured otherwise.
pub const DEFAULT_ZONE: &str = "svc.global";
/// The MCS zone served beside it unless configured otherwise (KEP-1645 DNS specification).
pub const DEFAULT_CLUSTERSET_ZONE: &str = "clusterset.local";
/// Record TTL in seconds: short, because endpoints fail over and clients must follow quickly;
/// each second costs one re-query per client per name.
pub const DEFAULT_TTL: u32 = 5;
/// Addresses per answer (per family) unless configured otherwise: 8 A records make a 172-octet
/// answer for a typical name, well inside the 512 octets a client without EDNS accepts, and
/// more choices than a client tries before giving up on a name.
pub const DEFAULT_MAX_ADDRESSES: usize = 8;

/// Where and what to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// UDP and TCP listen address; port 0 picks a free port (see [`Handle::local_addr`]).
    pub listen: SocketAddr,
    /// The zones, TTL and answer cap; snapshots published later are built with their own
    /// [`ZoneConfig`], which should be this one.
    pub zones: ZoneConfig,
    /// Where queries outside the served zones are forwarded (UDP, falling back to TCP on
    /// truncation); `None` refuses them (REFUSED). Each forwarded query costs one upstream
    /// round trip; answers are not cached here.
    pub upstream: Option<SocketAddr>,
    /// UDP sockets (each with its own receive thread) bound to `listen` with SO_REUSEPORT;
    /// `None` is one per available CPU. Each costs a thread and about 170 KiB of buffers; fewer
    /// than the CPUs caps UDP throughput at that many cores.
    pub udp_sockets: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 53),
            zones: ZoneConfig::default(),
            upstream: None,
            udp_sockets: None,
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
    #[error("bad service name {namespace:?}/{name:?} for dns")]
    BadServiceName {
        namespace: String,
        name: String,
        #[source]
        reason: NameProblem,
    },
    /// A cluster id, hostname or port name of a service cannot be a label under the zone.
    #[error("bad {what} {value:?} of service {namespace:?}/{name:?} for dns")]
    BadRecordName {
        namespace: String,
        name: String,
        what: &'static str,
        value: String,
        #[source]
        reason: NameProblem,
    },
    /// The two zones overlap, so a name would belong to both.
    #[error("dns zones {zone:?} and {clusterset_zone:?} overlap")]
    OverlappingZones {
        zone: String,
        clusterset_zone: String,
    },
    /// Two services map to the same DNS name (names are case-insensitive).
    #[error("duplicate service {namespace:?}/{name:?} in dns snapshot")]
    DuplicateService { namespace: String, name: String },
    /// The upstream resolver could not be set up.
    #[error("setting up the dns upstream {upstream}: {reason}")]
    Upstream {
        upstream: SocketAddr,
        reason: String,
    },
    /// The UDP receive threads (or the eventfd that stops them) could not be started.
    #[error("starting the dns udp threads")]
    Threads {
        #[source]
        source: std::io::Error,
    },
    /// A listening socket could not be bound.
    #[error("binding dns ({transport}) on {addr}")]
    Bind {
        addr: SocketAddr,
        transport: Transport,
        #[source]
        source: std::io::Error,
    },
}
