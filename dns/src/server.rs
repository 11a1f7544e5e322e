//! The tokio shell: binds UDP and TCP on one address, runs until the shutdown token is
//! cancelled, and publishes snapshots through a [`Handle`].
//!
//! UDP runs our own receive loops (one per available CPU, sharing the socket): each datagram
//! goes to the snapshot's precomputed wire answers first ([`Snapshot::answer_wire`]), and only
//! when that declines is it parsed by hickory and handed to our `Handler` on a task of its own.
//! TCP runs hickory's [`Server`] with the same `Handler` (RFC 7766 framing, pipelining, idle
//! timeouts).
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
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::handler::Handler;
use crate::stats::{QueryStats, StatsSnapshot};
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
/// Largest UDP datagram read: queries are small, but a hostile one may not be, and it must be
/// read whole to be judged (anything longer is cut and then fails to parse).
const UDP_RECEIVE_BUFFER: usize = 4096;
/// Largest fast-path answer: the EDNS payload we offer.
const MAX_FAST_ANSWER: u16 = 1232;
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
    let stats = Arc::new(QueryStats::new(
        &config.zones.zone,
        config.zones.clusterset_zone.as_deref(),
    ));
    let handle = Handle {
        current: current.clone(),
        serial: Arc::new(Mutex::new(1)),
        local_addr,
        stats: stats.clone(),
    };

    let upstream = config.upstream.map(upstream_resolver).transpose()?;
    let udp_handler = Arc::new(Handler::new(
        current.clone(),
        upstream.clone(),
        stats.clone(),
    ));
    let udp = Arc::new(udp);
    let loops = std::thread::available_parallelism().map_or(1, usize::from);
    for _ in 0..loops {
        tokio::spawn(serve_udp(
            udp.clone(),
            current.clone(),
            udp_handler.clone(),
            stats.clone(),
            shutdown.clone(),
        ));
    }
    let mut server = Server::new(Handler::new(current, upstream, stats));
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

/// One UDP receive loop. Datagrams the fast path answers are answered in line; the rest are
/// parsed by hickory and handled on their own task (they may wait on the upstream).
async fn serve_udp(
    socket: Arc<UdpSocket>,
    current: Arc<ArcSwap<Snapshot>>,
    handler: Arc<Handler>,
    stats: Arc<QueryStats>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; UDP_RECEIVE_BUFFER];
    let mut out = Vec::with_capacity(usize::from(MAX_FAST_ANSWER));
    loop {
        let (len, src) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(error) => {
                    // ICMP errors from earlier sends surface here on Linux; the socket lives on.
                    debug!(%error, "dns udp receive failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let query = &buf[..len];
        let started = tokio::time::Instant::now();
        let rotation = handler.next_rotation();
        if current.load().answer_wire(query, rotation, &mut out) {
            if let Err(error) = socket.send_to(&out, src).await {
                debug!(%error, %src, "dns udp send failed");
            }
            stats.record_wire(query, &out, started.elapsed());
            continue;
        }
        match Request::from_bytes(query.to_vec(), src, Protocol::Udp) {
            Ok(request) => {
                let handler = handler.clone();
                let responder = UdpResponder {
                    socket: socket.clone(),
                    dst: src,
                };
                tokio::spawn(async move {
                    handler
                        .handle_request::<_, TokioTime>(&request, responder)
                        .await;
                });
            }
            Err(error) => {
                debug!(%error, %src, "malformed dns query");
                if let Some(reply) = format_error(query) {
                    if let Err(error) = socket.send_to(&reply, src).await {
                        debug!(%error, %src, "dns udp send failed");
                    }
                    stats.record_wire(query, &reply, started.elapsed());
                }
            }
        }
    }
}

/// FORMERR for a query whose header is readable (RFC 1035 §4.1.1), echoing its id, opcode and
/// RD; nothing for a runt or for a message that is itself a response (answering responses
/// invites reflection loops).
fn format_error(query: &[u8]) -> Option<[u8; 12]> {
    let header = query.get(..12)?;
    if header[2] & 0x80 != 0 {
        return None;
    }
    let mut reply = [0u8; 12];
    reply[..2].copy_from_slice(&header[..2]);
    reply[2] = 0x80 | (header[2] & 0x79);
    reply[3] = ResponseCode::FormErr.low();
    Some(reply)
}

/// Sends a hickory response to one UDP client, within the size its EDNS allows (512 without),
/// truncating with TC set as hickory's own UDP path does.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let max_size = response.edns().map_or(512, |edns| edns.max_payload());
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max_size);
        let info = response.destructive_emit(&mut encoder)?;
        self.socket.send_to(&bytes, self.dst).await?;
        Ok(info)
    }
}

/// Publishes snapshots to a running server and reports where it listens. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    current: Arc<ArcSwap<Snapshot>>,
    /// The last serial stamped; the lock also orders concurrent publishes so that serials
    /// increase in the order snapshots become visible.
    serial: Arc<Mutex<u32>>,
    local_addr: SocketAddr,
    stats: Arc<QueryStats>,
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

    /// The snapshot queries are answered from now: the base for the next
    /// [`Snapshot::update`].
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The address the server is bound to (UDP and TCP share it), with the real port when the
    /// config asked for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The query counters so far (every transport, both the fast and the hickory path).
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
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
