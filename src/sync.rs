//! The gateway↔broker sync protocol.
//!
//! - `wire`: the messages and their length-prefixed postcard framing (shared with the broker);
//! - `proto`: the gateway's sans-IO `ClusterSession` (applies snapshots and deltas, detects gaps)
//!   and the reconnect `Backoff`;
//! - `quic`: the gateway's tokio/quinn shell, `spawn_client`.
//!
//! The broker's side lives in `crate::broker`; QUIC appears only in `sync/quic.rs` and
//! `broker/server.rs`.

pub mod proto;
pub mod quic;
pub mod wire;

pub use proto::SyncState;
pub use proto::{ClusterSession, ClusterSetView};
pub use quic::{SyncConfig, spawn_client};

use crate::certs::CertError;

/// Why the sync client could not start or a session ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no broker address configured")]
    NoBrokers,
    #[error("loading the gateway's TLS files")]
    Tls(#[from] CertError),
    #[error("binding the QUIC client socket on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("bad frame from the peer")]
    Codec(#[from] wire::CodecError),
    #[error("connecting to broker {addr}")]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("broker {addr} did not complete the handshake within {after:?}")]
    ConnectTimeout {
        addr: std::net::SocketAddr,
        after: std::time::Duration,
    },
    #[error("QUIC connection lost")]
    Connection(#[from] quinn::ConnectionError),
    #[error("writing to the QUIC stream")]
    Write(#[from] quinn::WriteError),
    #[error("reading from the QUIC stream")]
    Read(#[from] quinn::ReadError),
    #[error("the peer closed the stream")]
    StreamClosed,
}
