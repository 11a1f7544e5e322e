//! The data plane's decisions: which tunnel a packet or datagram belongs to, and what to count.
//!
//! [`DataPlane`] owns the [`PeerTable`] and one [`Tunnel`] per peer, and has no sockets: the
//! shell ([`crate::device`]) feeds it TUN packets, UDP datagrams and timer ticks, and it answers
//! through an [`Io`] (send this datagram to that address, write this packet to the TUN device).
//! Its unit tests wire two data planes together in memory.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use tracing::{debug, info, trace};

use crate::peers::{self, PeerId, PeerTable, Rejected};
use crate::tunnel::{self, Received, Tunnel};
use crate::{DeviceStats, PeerSpec, PeerStats};

/// Room for the largest IP packet plus WireGuard's 32 bytes of overhead.
pub const BUF_LEN: usize = 65536 + 64;

/// The shell's side of the data plane.
pub trait Io {
    /// Sends a WireGuard datagram. Failures are the shell's to count (UDP may drop).
    fn send(&mut self, to: SocketAddr, datagram: &[u8]);
    /// Writes a decrypted IP packet to the TUN device.
    fn write_tun(&mut self, packet: &[u8]);
}

/// Kernel routes to add and remove to get from what is installed to what is desired.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteChanges {
    pub add: Vec<IpNet>,
    pub remove: Vec<IpNet>,
}

impl RouteChanges {
    /// The shell keeps the set it managed to install; diffing against it (rather than against
    /// the previous desired set) retries whatever failed last time.
    pub fn between(installed: &BTreeSet<IpNet>, desired: &BTreeSet<IpNet>) -> Self {
        Self {
            add: desired.difference(installed).copied().collect(),
            remove: installed.difference(desired).copied().collect(),
        }
    }
}

/// See the module docs.
pub struct DataPlane {
    private: StaticSecret,
    public: PublicKey,
    persistent_keepalive: Option<u16>,
    table: PeerTable,
    tunnels: HashMap<PeerId, Tunnel>,
    counters: DeviceStats,
    buf: Box<[u8]>,
    /// Checks handshakes' mac1 (a keyed hash over our public key) before the Diffie-Hellman
    /// that finds the sender, so garbage costs a hash rather than a scalar multiplication.
    /// Its limit is unreachable: per-peer rate limiting stays inside each `Tunn`.
    mac1: RateLimiter,
}

impl DataPlane {
    pub fn new(private_key: [u8; 32], persistent_keepalive: Option<u16>) -> Self {
        let private = StaticSecret::from(private_key);
        let public = PublicKey::from(&private);
        Self {
            private,
            public,
            persistent_keepalive,
            table: PeerTable::new(),
            tunnels: HashMap::new(),
            counters: DeviceStats::default(),
            buf: vec![0; BUF_LEN].into_boxed_slice(),
            mac1: RateLimiter::new(&public, u64::MAX),
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// Applies a full desired peer set (see [`PeerTable::set_peers`]): tunnels are created for
    /// new keys and dropped for removed ones; everyone else keeps their sessions. Our own key is
    /// ignored. Returns the kernel routes that should now point into the TUN device.
    pub fn set_peers(&mut self, peers: Vec<PeerSpec>) -> Result<BTreeSet<IpNet>, Rejected> {
        let own = self.public_key();
        let peers = peers.into_iter().filter(|p| p.public_key != own).collect();
        let changes = self.table.set_peers(peers)?;
        for id in changes.removed {
            self.tunnels.remove(&id);
            info!(peer = id.tunnel_index(), "Peer removed");
        }
        for (id, key) in changes.added {
            let tunnel = Tunnel::new(
                self.private.clone(),
                key,
                self.persistent_keepalive,
                id.tunnel_index(),
            );
            self.tunnels.insert(id, tunnel);
            info!(peer = id.tunnel_index(), key = %peers::hex(&key), "Peer added");
        }
        Ok(self.table.routes())
    }

    /// An IP packet the kernel routed into the TUN device: encrypt it for the peer that owns
    /// its destination, or drop it if nobody does.
    pub fn handle_tun_packet(&mut self, packet: &[u8], io: &mut impl Io) {
        let Some(destination) = Tunn::dst_address(packet) else {
            self.counters.malformed_tun_packets += 1;
            trace!(len = packet.len(), "Dropping non-IP packet from TUN");
            return;
        };
        let Some(id) = self.table.lookup_by_destination(destination) else {
            self.counters.no_route_packets += 1;
            trace!(%destination, "No peer owns destination");
            return;
        };
        let (Some(tunnel), Some(endpoint)) = (self.tunnels.get_mut(&id), self.table.endpoint(id))
        else {
            return;
        };
        let mut out = PeerOutput { io, endpoint };
        if let Some(e) = tunnel.encapsulate(packet, &mut self.buf, &mut out) {
            debug!(peer = id.tunnel_index(), error = ?e, "Encapsulate failed");
        }
    }

    /// A UDP datagram from `from`. Anything that is not a WireGuard message for one of our
    /// peers is dropped and counted; an authenticated one from a new address roams the peer.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], io: &mut impl Io) {
        let Some((id, kind)) = self.route_datagram(datagram) else {
            return;
        };
        let Some(tunnel) = self.tunnels.get_mut(&id) else {
            return;
        };
        // Replies (handshake responses, flushed queue) go to where this datagram came from;
        // only an authenticated datagram moves the peer's endpoint there for good.
        let mut out = PeerOutput { io, endpoint: from };
        let table = &self.table;
        let accepts = |source: IpAddr| table.accepts_source(id, source);
        match tunnel.decapsulate(from.ip(), datagram, &mut self.buf, &accepts, &mut out) {
            Received::Authenticated { spoofed } => {
                self.counters.spoofed_source_packets += u64::from(spoofed);
                if spoofed > 0 {
                    debug!(
                        peer = id.tunnel_index(),
                        "Dropped packet with foreign inner source"
                    );
                }
                // A cookie reply proves nothing about its sender (its key derives from the
                // peer's public key), so only handshakes and data roam (WireGuard paper §2.1).
                if kind != Kind::CookieReply && self.table.handle_authenticated(id, from) {
                    self.counters.endpoint_roams += 1;
                    info!(peer = id.tunnel_index(), endpoint = %from, "Peer roamed");
                }
            }
            Received::CookieSent => {}
            Received::Rejected(e) => {
                self.counters.rejected_datagrams += 1;
                debug!(peer = id.tunnel_index(), %from, error = ?e, "Datagram rejected");
            }
        }
    }

    /// Runs every tunnel's timers. Call every 250 ms (as boringtun's own device does).
    pub fn handle_timers(&mut self, io: &mut impl Io) {
        for (id, tunnel) in &mut self.tunnels {
            let Some(endpoint) = self.table.endpoint(*id) else {
                continue;
            };
            let mut out = PeerOutput { io, endpoint };
            match tunnel.update_timers(&mut self.buf, &mut out) {
                None | Some(WireGuardError::ConnectionExpired) => {}
                Some(e) => debug!(peer = id.tunnel_index(), error = ?e, "Timer error"),
            }
        }
    }

    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.table
            .ids()
            .filter_map(|id| {
                let stats = self.tunnels.get(&id)?.stats();
                Some(PeerStats {
                    public_key: self.table.public_key(id)?,
                    endpoint: self.table.endpoint(id)?,
                    last_handshake: stats.since_last_handshake,
                    rx_bytes: stats.rx_bytes,
                    tx_bytes: stats.tx_bytes,
                })
            })
            .collect()
    }

    pub fn counters(&self) -> DeviceStats {
        self.counters
    }

    /// Which peer a datagram is for: by the sender's static key for handshake initiations
    /// (which costs a Diffie-Hellman, so mac1 is checked first), by receiver index for
    /// everything else.
    fn route_datagram(&mut self, datagram: &[u8]) -> Option<(PeerId, Kind)> {
        let mut unused_cookie = [0u8; 64];
        let packet = match self.mac1.verify_packet(None, datagram, &mut unused_cookie) {
            Ok(p) => p,
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => {
                self.counters.rejected_datagrams += 1;
                debug!(len = datagram.len(), "Handshake with bad mac1");
                return None;
            }
            Err(e) => {
                self.counters.malformed_datagrams += 1;
                debug!(len = datagram.len(), error = ?e, "Malformed datagram");
                return None;
            }
        };
        let (id, kind) = match &packet {
            Packet::HandshakeInit(init) => (
                parse_handshake_anon(&self.private, &self.public, init)
                    .ok()
                    .and_then(|half| self.table.lookup_by_key(&half.peer_static_public)),
                Kind::Handshake,
            ),
            Packet::HandshakeResponse(p) => (
                self.table.lookup_by_receiver_index(p.receiver_idx),
                Kind::Handshake,
            ),
            Packet::PacketCookieReply(p) => (
                self.table.lookup_by_receiver_index(p.receiver_idx),
                Kind::CookieReply,
            ),
            Packet::PacketData(p) => (
                self.table.lookup_by_receiver_index(p.receiver_idx),
                Kind::Data,
            ),
        };
        if id.is_none() {
            self.counters.unknown_peer_datagrams += 1;
            debug!(len = datagram.len(), "Datagram for no known peer");
        }
        id.map(|id| (id, kind))
    }
}

/// The WireGuard message types, as far as routing and roaming care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Handshake,
    CookieReply,
    Data,
}

/// Binds an [`Io`] to one peer's endpoint for the tunnel's [`tunnel::Output`].
struct PeerOutput<'a, I: Io> {
    io: &'a mut I,
    endpoint: SocketAddr,
}

impl<I: Io> tunnel::Output for PeerOutput<'_, I> {
    fn to_network(&mut self, datagram: &[u8]) {
        self.io.send(self.endpoint, datagram);
    }

    fn to_tun(&mut self, packet: &[u8]) {
        self.io.write_tun(packet);
    }
}

#[cfg(test)]
mod tests;
