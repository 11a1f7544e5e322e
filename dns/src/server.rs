//! The shell: binds UDP and TCP on one address, runs until the shutdown token is cancelled,
//! and publishes snapshots through a [`Handle`].
//!
//! UDP is served by one socket per available CPU ([`Config::udp_sockets`]), all bound to the
//! address with SO_REUSEPORT so that the kernel spreads clients over them, each drained by a
//! thread of its own: a batch of datagrams arrives with one `recvmmsg` (`udp.rs`), each goes
//! to the snapshot's precomputed wire answers ([`Snapshot::answer_wire`]: a lookup keyed by
//! the question, with id and flags patched in), and the batch's answers leave with one
//! `sendmmsg`, all in buffers allocated once per thread. Only what that declines (EDNS options
//! beyond the buffer size, odd opcodes, names needing the upstream…) is parsed by hickory and
//! handed to our `Handler` on a task of the tokio runtime, which answers on the same socket.
//! TCP runs hickory's [`Server`] with the same `Handler` (RFC 7766 framing, pipelining, idle
//! timeouts).
//!
//! No DNS decisions here: zone semantics are in `zone.rs`, request conversion in `handler.rs`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
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
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::handler::Handler;
use crate::stats::{QueryStats, StatsSnapshot};
use crate::truncate;
use crate::udp::{self, Batch, Stop, Wakeup};
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
    let sockets = config
        .udp_sockets
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let (udp, tcp) = bind(config.listen, sockets).await?;
    let local_addr = tcp.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        transport: Transport::Tcp,
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
    let stop = Arc::new(Stop::new().map_err(|source| Error::Threads { source })?);
    // Stops the UDP threads when shutdown is cancelled, and also when the runtime drops this
    // task without it (a runtime shut down first): the threads must not outlive the server.
    let stop_guard = StopOnDrop(stop.clone());
    let runtime = tokio::runtime::Handle::current();
    for (i, socket) in udp.into_iter().enumerate() {
        let udp_loop = UdpLoop {
            socket: Arc::new(socket),
            current: current.clone(),
            handler: udp_handler.clone(),
            stats: stats.clone(),
            runtime: runtime.clone(),
            stop: stop.clone(),
        };
        std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || udp_loop.run())
            .map_err(|source| Error::Threads { source })?;
    }
    let mut server = Server::new(Handler::new(current, upstream, stats));
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    let stop_tcp = server.shutdown_token().clone();
    info!(
        addr = %local_addr,
        udp_sockets = sockets,
        zone = %config.zones.zone,
        clusterset_zone = ?config.zones.clusterset_zone,
        upstream = ?config.upstream,
        "DNS serving"
    );

    tokio::spawn(async move {
        tokio::spawn(async move {
            let _stop_udp = stop_guard;
            shutdown.cancelled().await;
            stop_tcp.cancel();
        });
        match server.block_until_done().await {
            Ok(()) => info!(addr = %local_addr, "DNS stopped"),
            // The sockets died under us: DNS is down for this cluster until restart.
            Err(error) => error!(addr = %local_addr, %error, "DNS server failed"),
        }
    });
    Ok(handle)
}

/// Stops the UDP threads when dropped.
struct StopOnDrop(Arc<Stop>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// One UDP socket's receive thread: batches in with `recvmmsg`, fast-path answers out with
/// one `sendmmsg` per batch; the rest are parsed by hickory and handled on a task of the
/// runtime (they may wait on the upstream), which answers on the same socket.
struct UdpLoop {
    socket: Arc<Socket>,
    current: Arc<ArcSwap<Snapshot>>,
    handler: Arc<Handler>,
    stats: Arc<QueryStats>,
    runtime: tokio::runtime::Handle,
    stop: Arc<Stop>,
}

impl UdpLoop {
    /// Serves until [`Stop::stop`]; the socket closes when the last in-flight hickory answer
    /// on it is sent.
    fn run(self) {
        let mut batch = Batch::new();
        while !self.stop.is_stopped() {
            match batch.recv(self.socket.as_fd()) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    match self.stop.wait_readable(self.socket.as_fd()) {
                        Ok(Wakeup::Readable) => continue,
                        Ok(Wakeup::Stopped) => return,
                        Err(error) => {
                            // poll(2) fails only for bad arguments or no memory: nothing to
                            // retry, and DNS over UDP on this socket is down.
                            error!(%error, "dns udp wait failed");
                            return;
                        }
                    }
                }
                Err(error) => {
                    // ICMP errors from earlier sends surface here on Linux; the socket lives on.
                    debug!(%error, "dns udp receive failed");
                    continue;
                }
            }
            let received = crate::clock::now();
            self.answer(&mut batch);
            let (skipped, error) = batch.send(self.socket.as_fd());
            if let Some(error) = error {
                debug!(%error, skipped, "dns udp send failed");
            }
            let took = received.elapsed();
            for (query, reply) in batch.answered() {
                self.stats.record_wire(query, reply, took);
            }
        }
    }

    /// Answers what the fast path can (and FORMERR for what hickory cannot parse) into the
    /// batch; hands the rest to hickory on the runtime.
    fn answer(&self, batch: &mut Batch) {
        let snapshot = self.current.load();
        let first = self
            .handler
            .next_rotations(u64::try_from(batch.len()).unwrap_or(u64::MAX));
        for i in 0..batch.len() {
            let rotation = first.wrapping_add(u64::try_from(i).unwrap_or(0));
            if batch.answer(i, |query, out| snapshot.answer_wire(query, rotation, out)) {
                continue;
            }
            let Some(src) = batch.source(i) else {
                continue;
            };
            let query = batch.query(i);
            match Request::from_bytes(query.to_vec(), src, Protocol::Udp) {
                Ok(request) => {
                    let handler = self.handler.clone();
                    let responder = UdpResponder {
                        socket: self.socket.clone(),
                        dst: src,
                    };
                    self.runtime.spawn(async move {
                        handler
                            .handle_request::<_, TokioTime>(&request, responder)
                            .await;
                    });
                }
                Err(error) => {
                    debug!(%error, %src, "malformed dns query");
                    batch.answer(i, |query, out| match format_error(query) {
                        Some(reply) => {
                            out.clear();
                            out.extend_from_slice(&reply);
                            true
                        }
                        None => false,
                    });
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
/// truncated to whole records with the OPT kept and TC set (`truncate.rs`).
/// Sends without blocking (the caller is a runtime task): with the socket's send buffer full
/// the answer is dropped, as the network might have, and the client asks again.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<Socket>,
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
        // Encoded whole, then cut at a record boundary with the OPT kept (`truncate.rs`):
        // hickory's own size limit leaves a half-written record behind the last counted one.
        let mut info = response.destructive_emit(&mut BinEncoder::new(&mut bytes))?;
        let limit = usize::from(max_size.max(512));
        if bytes.len() > limit {
            // Our own encoding fails to parse only through a bug: nothing is sent, and the
            // client asks again (over TCP if it insists).
            truncate::fit(&mut bytes, limit).map_err(|error| NetError::Msg(error.to_string()))?;
            info = ResponseInfo::from(Header::read(&mut BinDecoder::new(&bytes))?);
        }
        self.socket
            .send_to_with_flags(&bytes, &SockAddr::from(self.dst), libc::MSG_DONTWAIT)?;
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

/// Binds `sockets` UDP sockets and one TCP listener on the same address: the first UDP socket,
/// then TCP on its port, then the other UDP sockets on that port with SO_REUSEPORT (the kernel
/// spreads datagrams over them by flow hash). For port 0 the UDP port the OS picked may be
/// taken on TCP, so try again with a fresh one a few times.
async fn bind(listen: SocketAddr, sockets: usize) -> Result<(Vec<Socket>, TcpListener), Error> {
    let attempts = if listen.port() == 0 {
        EPHEMERAL_BIND_ATTEMPTS
    } else {
        1
    };
    let udp_error = |source| Error::Bind {
        addr: listen,
        transport: Transport::Udp,
        source,
    };
    let mut last_error = None;
    for _ in 0..attempts {
        let first = bind_udp(listen, Group::Start).map_err(udp_error)?;
        let udp_addr = first
            .local_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .ok_or_else(|| udp_error(io::Error::from(io::ErrorKind::AddrNotAvailable)))?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => {
                let mut udp = Vec::with_capacity(sockets);
                udp.push(first);
                for _ in 1..sockets {
                    udp.push(bind_udp(udp_addr, Group::Join).map_err(udp_error)?);
                }
                return Ok((udp, tcp));
            }
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

/// How a UDP socket enters its SO_REUSEPORT group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Bound first, then marked SO_REUSEPORT. Binding unmarked fails if anything already
    /// holds the port (another server's group included), and for port 0 makes the kernel
    /// pick a port nobody holds: a marked socket asking for port 0 may be handed a port
    /// another SO_REUSEPORT group of the same user is bound to. Linux lets sockets marked
    /// before their bind join a socket marked after its own.
    Start,
    /// Marked, then bound to the group's address.
    Join,
}

/// One blocking UDP socket on `addr`, marked SO_REUSEPORT as `group` says.
fn bind_udp(addr: SocketAddr, group: Group) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.cloexec(),
        Some(socket2::Protocol::UDP),
    )?;
    if group == Group::Join {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    if group == Group::Start {
        socket.set_reuse_port(true)?;
    }
    udp::size_receive_buffer(socket.as_fd());
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Reads whatever is waiting on `socket` within a short while: how many datagrams.
    fn drain(socket: &Socket) -> usize {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut count = 0;
        let mut buf = [std::mem::MaybeUninit::new(0u8); 64];
        while socket.recv_from(&mut buf).is_ok() {
            count += 1;
        }
        count
    }

    #[tokio::test]
    async fn a_port_0_group_shares_one_port_and_the_kernel_spreads_flows_over_it() {
        let (udp, tcp) = bind("127.0.0.1:0".parse().expect("literal"), 2)
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("addr");
        for socket in &udp {
            assert_eq!(
                socket.local_addr().expect("addr").as_socket(),
                Some(addr),
                "every socket on the TCP port"
            );
        }
        // 64 flows all hashing to one of two sockets: a 2^-63 chance.
        let clients: Vec<std::net::UdpSocket> = (0..64)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("client"))
            .collect();
        for client in &clients {
            client.send_to(b"x", addr).expect("send");
        }
        let counts: Vec<usize> = udp.iter().map(drain).collect();
        assert_eq!(counts.iter().sum::<usize>(), 64, "{counts:?}");
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[tokio::test]
    async fn a_port_held_by_another_reuseport_group_is_busy() {
        let other =
            bind_udp("127.0.0.1:0".parse().expect("literal"), Group::Start).expect("other group");
        let port = other.local_addr().expect("addr").as_socket().expect("inet");
        let ours = bind(port, 2).await;
        assert!(
            matches!(
                ours,
                Err(Error::Bind {
                    transport: Transport::Udp,
                    ..
                })
            ),
            "got {ours:?}"
        );
    }
}
