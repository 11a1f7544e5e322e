//! The tokio shell: TUN device, UDP socket, netlink, and the one task that drives the
//! [`DataPlane`].
//!
//! It only moves data: TUN reads and UDP datagrams go into the data plane, its output goes
//! out through [`ShellIo`], a 250 ms tick runs boringtun's timers, and `set_peers` commands
//! apply the data plane's route changes over netlink. The same task owns the [`Prober`]: it
//! wakes it when it asks, sends its probes through the data plane, feeds it the probe replies
//! the data plane decrypted, and publishes its transitions on the health watch channel.
//! `set_translation` commands hand the data plane a new (already validated) translator. Every
//! decision is in [`crate::dataplane`] and [`crate::health`].

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use ipnet::IpNet;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::dataplane::{BUF_LEN, DataPlane, Io, RouteChanges};
use crate::device::udp::{Queued, RecvBatch, SendQueue};
use crate::gso::{self, Coalescer, VNET_HDR_LEN, VnetHdr};
use crate::health::{PeerHealth, Prober};
use crate::{Command, Config, DeviceStats, Error, peers};

mod udp;

/// boringtun's device ticks its timers every 250 ms; its timer constants assume that.
const TIMER_TICK: Duration = Duration::from_millis(250);

/// At most this many packets per readiness event before the loop looks at its other inputs.
const BATCH: usize = 64;

/// Creates the TUN device and sockets in the caller's network namespace and spawns the driver.
/// Returns the bound UDP address.
pub(crate) async fn spawn(
    config: Config,
    commands: mpsc::Receiver<Command>,
    health: watch::Sender<BTreeMap<[u8; 32], PeerHealth>>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, Error> {
    let tun = Tun::open(&config.tun_name)?;
    let (connection, netlink, _) = rtnetlink::new_connection().map_err(Error::Netlink)?;
    let netlink_task = tokio::spawn(connection);
    let routes = Routes {
        netlink,
        index: tun.index,
        dev: tun.name.clone(),
        source: config.route_source,
        installed: BTreeSet::new(),
        conflicts: BTreeSet::new(),
    };
    let link = LinkUnspec::new_with_index(tun.index)
        .mtu(u32::from(config.mtu))
        .up()
        .build();
    let configured = routes.netlink.link().set(link).execute().await;
    if let Err(source) = configured {
        netlink_task.abort();
        return Err(Error::Link {
            name: tun.name,
            source: Box::new(source),
        });
    }
    let udp = match UdpSocket::bind(config.listen).await {
        Ok(udp) => udp,
        Err(source) => {
            netlink_task.abort();
            return Err(Error::BindUdp {
                addr: config.listen,
                source,
            });
        }
    };
    udp::size_buffers(udp.as_raw_fd());
    if !udp::enable_gro(udp.as_raw_fd()) {
        debug!(error = %io::Error::last_os_error(), "UDP GRO refused; datagrams arrive singly");
    }
    let local_addr = udp.local_addr().map_err(|source| Error::BindUdp {
        addr: config.listen,
        source,
    })?;
    info!(tun = %tun.name, %local_addr, mtu = config.mtu, "WireGuard device up");
    let span = info_span!("gateway", tun = %tun.name);
    let mut seed = [0u8; 8];
    // Probe ids only need to differ from a previous run's; a failed RNG read leaves them at 0.
    let _ = getrandom::fill(&mut seed);
    let driver = Driver {
        plane: DataPlane::new(config.private_key, config.persistent_keepalive, config.mtu),
        prober: Prober::new(config.health, u64::from_le_bytes(seed)),
        health,
        health_transitions: 0,
        tun: tun.fd,
        udp,
        routes,
        send_drops: 0,
        gro_datagrams: 0,
        tun_buf: vec![0; VNET_HDR_LEN + BUF_LEN].into_boxed_slice(),
        segment_buf: vec![0; BUF_LEN].into_boxed_slice(),
        coalescer: Coalescer::new(),
        recv: RecvBatch::new(),
        // Encapsulated TUN packets are at most the MTU plus WireGuard's 32 bytes.
        send: SendQueue::new(usize::from(config.mtu) + 32),
    };
    tokio::spawn(
        async move {
            driver.run(commands, shutdown).await;
            netlink_task.abort();
        }
        .instrument(span),
    );
    Ok(local_addr)
}

/// The task that owns the data plane. See the module docs.
struct Driver {
    plane: DataPlane,
    prober: Prober,
    health: watch::Sender<BTreeMap<[u8; 32], PeerHealth>>,
    health_transitions: u64,
    tun: AsyncFd<OwnedFd>,
    udp: UdpSocket,
    routes: Routes,
    send_drops: u64,
    /// Datagrams that arrived inside a UDP GRO run.
    gro_datagrams: u64,
    tun_buf: Box<[u8]>,
    /// Where TCP super-packets from the TUN are cut into segments.
    segment_buf: Box<[u8]>,
    /// Where decrypted segments of one flow gather for one TUN write.
    coalescer: Coalescer,
    recv: RecvBatch,
    send: SendQueue,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TIMER_TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            self.drain_health();
            let wake = self.prober.poll_timeout().map(|(at, _why)| at);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sleep_until(wake) => self.prober.handle_timeout(crate::clock::now()),
                Some(command) = commands.recv() => self.handle_command(command).await,
                ready = self.tun.readable() => {
                    let mut guard = match ready {
                        Ok(guard) => guard,
                        Err(e) => {
                            error!(error = %e, "TUN device failed; stopping");
                            break;
                        }
                    };
                    let mut io = ShellIo { udp: &self.udp, tun: guard.get_ref(), drops: &mut self.send_drops, queue: &mut self.send, coalescer: &mut self.coalescer };
                    for _ in 0..BATCH {
                        let n = match guard.try_io(|fd| read(fd.as_raw_fd(), &mut self.tun_buf)) {
                            Ok(Ok(n)) => n,
                            Ok(Err(e)) => {
                                // Wait for the next readiness edge rather than spin on it.
                                debug!(error = %e, "TUN read failed");
                                guard.clear_ready();
                                break;
                            }
                            Err(_would_block) => break,
                        };
                        let (header, packet) = self.tun_buf[..n].split_at_mut(VNET_HDR_LEN.min(n));
                        let plane = &mut self.plane;
                        let split = VnetHdr::parse(header).and_then(|hdr| {
                            gso::split(hdr, packet, &mut self.segment_buf, |segment| {
                                plane.handle_tun_packet(segment, &mut io)
                            })
                        });
                        if let Err(e) = split {
                            self.plane.count_malformed_tun_packet();
                            debug!(error = %e, "Dropping TUN read");
                        }
                    }
                }
                ready = self.udp.readable() => {
                    if let Err(e) = ready {
                        error!(error = %e, "UDP socket failed; stopping");
                        break;
                    }
                    let mut io = ShellIo { udp: &self.udp, tun: &self.tun, drops: &mut self.send_drops, queue: &mut self.send, coalescer: &mut self.coalescer };
                    for _ in 0..BATCH / udp::BATCH {
                        let fd = self.udp.as_raw_fd();
                        match self.udp.try_io(Interest::READABLE, || self.recv.recv(fd)) {
                            Ok(n) => {
                                for i in 0..n {
                                    let Some((from, buf, segment)) = self.recv.get(i) else {
                                        continue;
                                    };
                                    for datagram in udp::segments(buf, segment) {
                                        self.plane.handle_datagram(from, datagram, &mut io);
                                        self.gro_datagrams += u64::from(segment.is_some());
                                    }
                                }
                                if n < udp::BATCH {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                debug!(error = %e, "UDP receive failed");
                                break;
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    let mut io = ShellIo { udp: &self.udp, tun: &self.tun, drops: &mut self.send_drops, queue: &mut self.send, coalescer: &mut self.coalescer };
                    self.plane.handle_timers(&mut io);
                }
            }
        }
        info!("WireGuard device stopping");
    }

    /// Moves health traffic between the prober and the data plane, and publishes transitions.
    fn drain_health(&mut self) {
        let mut io = ShellIo {
            udp: &self.udp,
            tun: &self.tun,
            drops: &mut self.send_drops,
            queue: &mut self.send,
            coalescer: &mut self.coalescer,
        };
        while let Some((peer, id)) = self.plane.poll_probe_reply() {
            self.prober.handle_reply(peer, id, crate::clock::now());
        }
        while let Some(probe) = self.prober.poll_probe() {
            self.plane.send_probe(&probe.peer, probe.id, &mut io);
        }
        let mut changed = false;
        while let Some(event) = self.prober.poll_event() {
            changed = true;
            self.health_transitions += 1;
            let rtt_ms = event.health.rtt.map(|r| r.as_secs_f64() * 1000.0);
            info!(
                peer = %peers::hex(&event.peer),
                from = ?event.previous,
                to = ?event.health.state,
                rtt_ms,
                lost = event.health.lost,
                window = event.health.window,
                "Peer health changed"
            );
        }
        if changed || self.prober.rtt_moved_since(&self.health.borrow()) {
            self.health.send_replace(self.prober.health());
        }
    }

    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::SetPeers(peers, reply) => {
                let result = match self.plane.set_peers(peers) {
                    Ok(desired) => self.routes.apply(&desired).await,
                    Err(rejected) => Err(rejected.into()),
                };
                self.prober
                    .set_targets(self.plane.peer_keys(), crate::clock::now());
                let health = self.prober.health();
                self.health.send_if_modified(|current| {
                    let membership_changed = !current.keys().eq(health.keys());
                    if membership_changed {
                        *current = health;
                    }
                    membership_changed
                });
                let _ = reply.send(result);
            }
            Command::SetTranslation(translator, reply) => {
                info!(
                    mappings = translator.mappings().len(),
                    "Address translation set"
                );
                self.plane.set_translation(translator);
                let _ = reply.send(());
            }
            Command::Stats(reply) => {
                let prober = &self.prober;
                let _ = reply.send(self.plane.peer_stats(&|key| prober.peer_health(key)));
            }
            Command::DeviceStats(reply) => {
                let _ = reply.send(DeviceStats {
                    send_drops: self.send_drops,
                    gro_datagrams: self.gro_datagrams,
                    health_transitions: self.health_transitions,
                    ..self.plane.counters()
                });
            }
        }
    }
}

/// Sleeps until `at`, or forever without a deadline.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The data plane's output: datagrams queue for one `sendmmsg` (flushed when the queue is
/// full and when this is dropped, at the end of each batch of input); TUN packets are written
/// straight to the non-blocking fd. A full socket or TUN queue drops the packet (as a router
/// would) and counts it.
struct ShellIo<'a> {
    udp: &'a UdpSocket,
    tun: &'a AsyncFd<OwnedFd>,
    drops: &'a mut u64,
    queue: &'a mut SendQueue,
    coalescer: &'a mut Coalescer,
}

impl Io for ShellIo<'_> {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        if self.queue.is_full() {
            self.flush();
        }
        if let Queued::TooLarge = self.queue.push(to, datagram)
            && let Err(e) = self.udp.try_send_to(datagram, to)
        {
            *self.drops += 1;
            debug!(%to, error = %e, "UDP send dropped");
        }
    }

    fn write_tun(&mut self, packet: &[u8]) {
        if self.coalescer.push(packet) {
            return;
        }
        self.flush_tun();
        if self.coalescer.push(packet) {
            return;
        }
        if let Err(e) = write_with_vnet_hdr(self.tun.as_raw_fd(), packet) {
            *self.drops += 1;
            debug!(error = %e, "TUN write dropped");
        }
    }
}

impl ShellIo<'_> {
    /// Writes the coalesced packet, if any (virtio_net_hdr included).
    fn flush_tun(&mut self) {
        if let Some(buf) = self.coalescer.take()
            && let Err(e) = write(self.tun.as_raw_fd(), buf)
        {
            *self.drops += 1;
            debug!(error = %e, "TUN write dropped");
        }
    }

    fn flush(&mut self) {
        let dropped = self.queue.flush(self.udp.as_raw_fd());
        if dropped > 0 {
            *self.drops += dropped as u64;
            debug!(dropped, "UDP sends dropped");
        }
    }
}

impl Drop for ShellIo<'_> {
    fn drop(&mut self) {
        self.flush_tun();
        self.flush();
    }
}

/// Kernel routes into the TUN device, over netlink.
struct Routes {
    netlink: rtnetlink::Handle,
    index: u32,
    dev: String,
    source: Option<IpAddr>,
    /// Routes this process installed and has not removed.
    installed: BTreeSet<IpNet>,
    /// Desired routes not installed because a route that is not ours holds the prefix: warned
    /// about once, tried again on every apply.
    conflicts: BTreeSet<IpNet>,
}

/// The routing protocol number our routes carry (`ip route show proto 202`), so that they can
/// be told apart from everybody else's: the gateway adds, changes and removes only routes with
/// this number on its own TUN device, and never replaces a route it did not install.
pub const ROUTE_PROTOCOL: u8 = 202;

impl Routes {
    /// Brings the installed routes to `desired`: removes, then adds. A removal names our
    /// device and [`ROUTE_PROTOCOL`], so it can only remove a route of ours. An add never
    /// replaces: when a route that is not ours already holds the prefix (same prefix and
    /// metric), ours is left out and the prefix is not tunnelled: what was there stays
    /// (`conflicts`). Since nothing is ever replaced, removing our routes, or the TUN device
    /// going away when the gateway stops, restores exactly the routes there were before. Keeps
    /// going past errors and returns the first; what failed is retried on the next call.
    async fn apply(&mut self, desired: &BTreeSet<IpNet>) -> Result<(), Error> {
        let changes = RouteChanges::between(&self.installed, desired);
        let mut first_error = None;
        for cidr in changes.remove {
            let result = self.netlink.route().del(self.message(cidr)).execute().await;
            match result {
                Ok(()) => {
                    self.installed.remove(&cidr);
                    debug!(%cidr, "Route removed");
                }
                // Already gone (removed by hand): the goal holds.
                Err(e) if is_no_such_route(&e) => {
                    self.installed.remove(&cidr);
                }
                Err(source) => {
                    first_error.get_or_insert(self.error("removing", cidr, source));
                }
            }
        }
        for cidr in changes.add {
            let result = self.netlink.route().add(self.message(cidr)).execute().await;
            match result {
                Ok(()) => {
                    self.installed.insert(cidr);
                    if self.conflicts.remove(&cidr) {
                        info!(%cidr, "Route added: the route that held the prefix is gone");
                    } else {
                        debug!(%cidr, "Route added");
                    }
                }
                Err(e) if is_exists(&e) => {
                    if self.conflicts.insert(cidr) {
                        warn!(%cidr, dev = %self.dev, "Route not added: a route that is not ours holds the prefix, and is left as it is");
                    }
                }
                Err(source) => {
                    first_error.get_or_insert(self.error("adding", cidr, source));
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// `<cidr> dev <tun> [src <source>]`; the source only if it is of the same family.
    fn message(&self, cidr: IpNet) -> rtnetlink::packet_route::route::RouteMessage {
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(cidr.addr(), cidr.prefix_len())
            .expect("an IpNet's prefix length fits its family")
            .output_interface(self.index)
            .protocol(rtnetlink::packet_route::route::RouteProtocol::Other(
                ROUTE_PROTOCOL,
            ));
        let source = self.source.filter(|s| s.is_ipv4() == cidr.addr().is_ipv4());
        match source {
            Some(src) => builder
                .pref_source(src)
                .expect("source family matches the destination's"),
            None => builder,
        }
        .build()
    }

    fn error(&self, action: &'static str, cidr: IpNet, source: rtnetlink::Error) -> Error {
        Error::Route {
            action,
            cidr,
            dev: self.dev.clone(),
            source: Box::new(source),
        }
    }
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

fn is_no_such_route(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ESRCH)
}

/// A TUN device (`IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`: IP packets behind a `virtio_net_hdr`),
/// non-blocking, registered with tokio. TSO and checksum offload are asked for, so reads may
/// be TCP super-packets of up to 64 KiB with partial checksums ([`crate::gso`] splits them);
/// if the kernel refuses, reads are plain packets behind an empty header.
/// It exists as long as the fd is open.
struct Tun {
    fd: AsyncFd<OwnedFd>,
    name: String,
    index: u32,
}

impl Tun {
    fn open(name: &str) -> Result<Self, Error> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(Error::TunName {
                name: name.to_owned(),
            });
        }
        let err = |source| Error::OpenTun {
            name: name.to_owned(),
            source,
        };
        // SAFETY: a plain open(2) of a constant NUL-terminated path.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let header_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes its flags by value.
        if unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                offloads as libc::c_ulong,
            )
        } < 0
        {
            // Still correct without: reads are then single packets.
            debug!(error = %io::Error::last_os_error(), "TUN offloads refused");
        }
        // SAFETY: ifr_name is NUL-terminated: we wrote < IFNAMSIZ bytes into zeroes, and the
        // kernel writes back a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(req.ifr_name.as_ptr()) };
        if index == 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is an open fd that the AsyncFd takes ownership of; nothing else closes
        // or replaces it while registered.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| err(e.into_parts().1))?;
        Ok(Self {
            fd,
            name: name.to_owned(),
            index,
        })
    }
}

fn read(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn write(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Writes `packet` behind an all-zero `virtio_net_hdr` (no offload: checksums are complete).
fn write_with_vnet_hdr(fd: i32, packet: &[u8]) -> io::Result<usize> {
    let header = [0u8; VNET_HDR_LEN];
    let iov = [
        libc::iovec {
            iov_base: header.as_ptr().cast_mut().cast(),
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: packet.as_ptr().cast_mut().cast(),
            iov_len: packet.len(),
        },
    ];
    // SAFETY: both iovecs point at live buffers of the stated lengths, only read by writev.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
