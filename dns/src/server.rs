//! The tokio shell: binds UDP and TCP on one address, runs hickory's [`Server`] with our
//! `Handler` until the shutdown token is cancelled, and publishes snapshots through a [`Handle`].
//!
//! No DNS decisions here: zone semantics are in `zone.rs`, request conversion in `handler.rs`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::handler::Handler;
use crate::zone::Snapshot;
use crate::{Config, Error};

/// A TCP client that sends nothing for this long is disconnected. RFC 7766 §6.2.3 recommends
/// idle timeouts "on the order of seconds"; hickory's own server binary uses 5 s.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection before the writer applies backpressure; our answers are
/// single small messages, so a short queue is plenty.
const TCP_RESPONSE_BUFFER: usize = 32;
/// How long one forwarded query may wait for the upstream; stub resolvers give up after 5 s
/// (glibc's default), so an answer later than that helps nobody.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times to look for a port free on both UDP and TCP when asked for port 0.
const EPHEMERAL_BIND_ATTEMPTS: usize = 16;

/// The transport a bind failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

/// Binds UDP and TCP on `config.listen`, starts answering from an empty zone, and returns once
/// both sockets are bound. The server runs on a spawned task until `shutdown` is cancelled.
///
/// With port 0 the OS picks one port that is free for both transports; read it back with
/// [`Handle::local_addr`]. Fails with [`Error::BadZone`] before binding anything if the zone is
/// invalid, and with [`Error::Bind`] if either socket cannot be bound.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<Handle, Error> {
    let mut initial = Snapshot::empty(&config.zones)?;
    // Serial 1 for the first zone we answer from, so every published snapshot is greater.
    initial.set_serial(1);
    let (udp, tcp) = bind(config.listen).await?;
    let local_addr = udp.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        transport: Transport::Udp,
        source,
    })?;

    let current = Arc::new(ArcSwap::from_pointee(initial));
    let handle = Handle {
        current: current.clone(),
        serial: Arc::new(Mutex::new(1)),
        local_addr,
    };

    let upstream = config.upstream.map(upstream_resolver).transpose()?;
    let mut server = Server::new(Handler::new(current, upstream));
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    let stop = server.shutdown_token().clone();
    info!(
        addr = %local_addr,
        zone = %config.zones.zone,
        clusterset_zone = ?config.zones.clusterset_zone,
        upstream = ?config.upstream,
        "DNS serving"
    );

    tokio::spawn(async move {
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.cancel();
        });
        match server.block_until_done().await {
            Ok(()) => info!(addr = %local_addr, "DNS stopped"),
            // The sockets died under us: DNS is down for this cluster until restart.
            Err(error) => error!(addr = %local_addr, %error, "DNS server failed"),
        }
    });
    Ok(handle)
}

/// Publishes snapshots to a running server and reports where it listens. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    current: Arc<ArcSwap<Snapshot>>,
    /// The last serial stamped; the lock also orders concurrent publishes so that serials
    /// increase in the order snapshots become visible.
    serial: Arc<Mutex<u32>>,
    local_addr: SocketAddr,
}

impl Handle {
    /// Makes `snapshot` the zone every query from now on is answered from, atomically: a query
    /// sees either the old or the new snapshot, never a mix.
    ///
    /// Stamps the SOA serial one higher than the previous snapshot's (RFC 1982 arithmetic, so
    /// the wrap from `u32::MAX` is still "greater"). The snapshot's own zones and ttl are
    /// served, so build it with the [`Config`]'s `zones`.
    pub fn publish(&self, mut snapshot: Snapshot) {
        // The critical section cannot panic, so a poisoned lock still holds a valid serial.
        let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        *serial = serial.wrapping_add(1);
        snapshot.set_serial(*serial);
        debug!(serial = *serial, "DNS snapshot published");
        self.current.store(Arc::new(snapshot));
    }

    /// The address the server is bound to (UDP and TCP share it), with the real port when the
    /// config asked for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// A resolver that asks only `upstream` (UDP, then TCP when the answer is truncated), with no
/// cache of its own: the clients cache, and a second cache would only stretch TTLs.
fn upstream_resolver(upstream: SocketAddr) -> Result<TokioResolver, Error> {
    let mut server = NameServerConfig::udp_and_tcp(upstream.ip());
    for connection in &mut server.connections {
        connection.port = upstream.port();
    }
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.timeout = UPSTREAM_TIMEOUT;
    // Clients already retry; one attempt keeps a dead upstream from holding queries long.
    options.attempts = 1;
    options.ndots = 0;
    Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(options)
    .build()
    .map_err(|source| Error::Upstream {
        upstream,
        reason: source.to_string(),
    })
}

/// Binds UDP then TCP on the same address. For port 0 the UDP port the OS picked may be taken
/// on TCP, so try again with a fresh one a few times.
async fn bind(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    let attempts = if listen.port() == 0 {
        EPHEMERAL_BIND_ATTEMPTS
    } else {
        1
    };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                transport: Transport::Udp,
                source,
            })?;
        let udp_addr = udp.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            transport: Transport::Udp,
            source,
        })?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) if source.kind() == io::ErrorKind::AddrInUse && attempts > 1 => {
                last_error = Some(source);
            }
            Err(source) => {
                return Err(Error::Bind {
                    addr: listen,
                    transport: Transport::Tcp,
                    source,
                });
            }
        }
    }
    Err(Error::Bind {
        addr: listen,
        transport: Transport::Tcp,
        source: last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)),
    })
}
