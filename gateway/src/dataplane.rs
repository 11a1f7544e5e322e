//! The data plane's decisions: which tunnel a packet or datagram belongs to, and what to count.
//!
//! [`DataPlane`] owns the [`PeerTable`] and one [`Tunnel`] per peer, and has no sockets: the
//! shell ([`crate::device`]) feeds it TUN packets, UDP datagrams and timer ticks, and it answers
//! through an [`Io`] (send this datagram to that address, write this packet to the TUN device).
//! Its unit tests wire two data planes together in memory.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use tracing::{debug, info, trace};

use crate::health::{PeerHealth, ProbeId};
use crate::nat::{Translator, Verdict};
use crate::peers::{self, PeerId, PeerTable, Rejected};
use crate::probe::{self, Kind as ProbeKind};
use crate::tunnel::{self, Received, Tunnel};
use crate::{DeviceStats, PeerSpec, PeerStats, mss};

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
    /// The TUN MTU: TCP SYNs in both directions are clamped to an MSS that fits it.
    mtu: u16,
    table: PeerTable,
    tunnels: HashMap<PeerId, Tunnel>,
    counters: DeviceStats,
    buf: Box<[u8]>,
    /// Checks handshakes' mac1 (a keyed hash over our public key) before the Diffie-Hellman
    /// that finds the sender, so garbage costs a hash rather than a scalar multiplication.
    /// Its limit is unreachable: per-peer rate limiting stays inside each `Tunn`.
    mac1: RateLimiter,
    /// Probes decrypted from the datagram being handled; drained before it returns.
    inbox: Vec<probe::Message>,
    /// Probe replies for the shell to pass to the prober.
    replies: VecDeque<([u8; 32], ProbeId)>,
    /// Our prefix translation (empty: none) and its counters.
    translation: Translation,
}

impl DataPlane {
    /// `mtu` is the TUN device's: it bounds the MSS of TCP connections through the tunnel.
    pub fn new(private_key: [u8; 32], persistent_keepalive: Option<u16>, mtu: u16) -> Self {
        let private = StaticSecret::from(private_key);
        let public = PublicKey::from(&private);
        Self {
            private,
            public,
            persistent_keepalive,
            mtu,
            table: PeerTable::new(),
            tunnels: HashMap::new(),
            counters: DeviceStats::default(),
            buf: vec![0; BUF_LEN].into_boxed_slice(),
            mac1: RateLimiter::new(&public, u64::MAX),
            inbox: Vec::new(),
            replies: VecDeque::new(),
            translation: Translation::default(),
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

    /// Replaces our prefix translation (see [`crate::nat`]); the empty translator turns it
    /// off. Counters carry on.
    pub fn set_translation(&mut self, translator: Translator) {
        self.translation.translator = translator;
    }

    /// An IP packet the kernel routed into the TUN device: encrypt it for the peer that owns
    /// its destination, or drop it if nobody does. A local source is translated to our global
    /// prefix first (the destination, which picks the peer, never changes on the way out), and
    /// TCP SYNs get their MSS clamped.
    pub fn handle_tun_packet(&mut self, packet: &mut [u8], io: &mut impl Io) {
        let Some(destination) = Tunn::dst_address(packet) else {
            self.counters.malformed_tun_packets += 1;
            trace!(len = packet.len(), "Dropping non-IP packet from TUN");
            return;
        };
        if !self.translation.egress(packet) {
            return;
        }
        // After translation, so that no mapping can turn a packet into a probe either.
        if probe::Message::is_probe_shaped(packet) {
            // Only the data plane may originate probes (see `probe`).
            self.counters.malformed_tun_packets += 1;
            return;
        }
        mss::clamp(packet, self.mtu);
        let Some(id) = self.table.lookup_by_destination(destination) else {
            self.counters.no_route_packets += 1;
            trace!(%destination, "No peer owns destination");
            return;
        };
        let (Some(tunnel), Some(endpoint)) = (self.tunnels.get_mut(&id), self.table.endpoint(id))
        else {
            return;
        };
        let mut out = PeerOutput::sending(io, endpoint);
        if let Some(e) = tunnel.encapsulate(packet, &mut self.buf, &mut out) {
            debug!(peer = id.tunnel_index(), error = ?e, "Encapsulate failed");
        }
    }

    /// The shell could not turn a TUN read into packets (see [`crate::gso`]).
    pub fn count_malformed_tun_packet(&mut self) {
        self.counters.malformed_tun_packets += 1;
    }

    /// Sends health probe `id` to `peer` through its tunnel (starting a handshake if there is
    /// no session). Unknown peers are ignored: the prober's targets may lag the peer set.
    pub fn send_probe(&mut self, peer: &[u8; 32], id: ProbeId, io: &mut impl Io) {
        let Some(peer_id) = self.table.lookup_by_key(peer) else {
            return;
        };
        let message = probe::Message {
            kind: ProbeKind::Request,
            id,
        };
        self.send_probe_message(peer_id, message, io);
    }

    /// The next probe reply received (authenticated) from a peer: its key and the probe id.
    pub fn poll_probe_reply(&mut self) -> Option<([u8; 32], ProbeId)> {
        self.replies.pop_front()
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
        let mut out = PeerOutput {
            io: &mut *io,
            endpoint: from,
            mtu: self.mtu,
            probes: Some(&mut self.inbox),
            translation: Some(&mut self.translation),
        };
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
        self.handle_probes(id, io);
    }

    /// Answers probe requests and queues replies for the prober. Only called with probes that
    /// were just decrypted from `id`'s session.
    fn handle_probes(&mut self, id: PeerId, io: &mut impl Io) {
        let mut inbox = std::mem::take(&mut self.inbox);
        for message in inbox.drain(..) {
            match message.kind {
                ProbeKind::Request => {
                    let reply = probe::Message {
                        kind: ProbeKind::Reply,
                        id: message.id,
                    };
                    self.send_probe_message(id, reply, io);
                }
                ProbeKind::Reply => {
                    if let Some(key) = self.table.public_key(id) {
                        self.replies.push_back((key, message.id));
                    }
                }
            }
        }
        self.inbox = inbox;
    }

    fn send_probe_message(&mut self, id: PeerId, message: probe::Message, io: &mut impl Io) {
        let (Some(tunnel), Some(endpoint)) = (self.tunnels.get_mut(&id), self.table.endpoint(id))
        else {
            return;
        };
        let mut out = PeerOutput::sending(io, endpoint);
        if let Some(e) = tunnel.encapsulate(&message.encode(), &mut self.buf, &mut out) {
            debug!(peer = id.tunnel_index(), error = ?e, "Encapsulating a probe failed");
        }
    }

    /// Runs every tunnel's timers. Call every 250 ms (as boringtun's own device does).
    pub fn handle_timers(&mut self, io: &mut impl Io) {
        for (id, tunnel) in &mut self.tunnels {
            let Some(endpoint) = self.table.endpoint(*id) else {
                continue;
            };
            let mut out = PeerOutput::sending(io, endpoint);
            match tunnel.update_timers(&mut self.buf, &mut out) {
                None | Some(WireGuardError::ConnectionExpired) => {}
                Some(e) => debug!(peer = id.tunnel_index(), error = ?e, "Timer error"),
            }
        }
    }

    /// Every peer's counters; `health` supplies what the prober knows (unknown otherwise).
    pub fn peer_stats(&self, health: &dyn Fn(&[u8; 32]) -> Option<PeerHealth>) -> Vec<PeerStats> {
        self.table
            .ids()
            .filter_map(|id| {
                let stats = self.tunnels.get(&id)?.stats();
                let public_key = self.table.public_key(id)?;
                Some(PeerStats {
                    public_key,
                    endpoint: self.table.endpoint(id)?,
                    last_handshake: stats.since_last_handshake,
                    rx_bytes: stats.rx_bytes,
                    tx_bytes: stats.tx_bytes,
                    rx_packets: stats.rx_packets,
                    tx_packets: stats.tx_packets,
                    health: health(&public_key).unwrap_or(PeerHealth::UNKNOWN),
                })
            })
            .collect()
    }

    /// The public keys of the current peers (the prober's targets).
    pub fn peer_keys(&self) -> Vec<[u8; 32]> {
        self.table
            .ids()
            .filter_map(|id| self.table.public_key(id))
            .collect()
    }

    pub fn counters(&self) -> DeviceStats {
        DeviceStats {
            translated_packets: self.translation.translated,
            untranslatable_packets: self.translation.untranslatable,
            ..self.counters
        }
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

/// Our prefix translation ([`crate::nat`]) and what it did: a packet that needs translating
/// but cannot be rewritten consistently is dropped, never sent half-translated.
#[derive(Debug, Default)]
struct Translation {
    translator: Translator,
    translated: u64,
    untranslatable: u64,
}

impl Translation {
    /// Translates a packet on its way out; false if it must be dropped.
    fn egress(&mut self, packet: &mut [u8]) -> bool {
        let verdict = self.translator.egress(packet);
        self.count(verdict, "out")
    }

    /// Translates a decrypted packet on its way in; false if it must be dropped.
    fn ingress(&mut self, packet: &mut [u8]) -> bool {
        let verdict = self.translator.ingress(packet);
        self.count(verdict, "in")
    }

    fn count(&mut self, verdict: Verdict, direction: &'static str) -> bool {
        match verdict {
            Verdict::Unchanged => true,
            Verdict::Translated => {
                self.translated += 1;
                true
            }
            Verdict::Malformed => {
                self.untranslatable += 1;
                trace!(direction, "Dropping packet that cannot be translated");
                false
            }
        }
    }
}

/// Binds an [`Io`] to one peer's endpoint for the tunnel's [`tunnel::Output`]; translates
/// decrypted packets' destinations, clamps the MSS of decrypted SYNs and collects decrypted
/// probes.
struct PeerOutput<'a, I: Io> {
    io: &'a mut I,
    endpoint: SocketAddr,
    mtu: u16,
    /// Where decrypted probes go; `None` where nothing is decrypted (encapsulation, timers).
    probes: Option<&'a mut Vec<probe::Message>>,
    /// Translates decrypted packets; `None` where nothing is decrypted.
    translation: Option<&'a mut Translation>,
}

impl<'a, I: Io> PeerOutput<'a, I> {
    /// For encapsulation and timers, which only ever produce datagrams.
    fn sending(io: &'a mut I, endpoint: SocketAddr) -> PeerOutput<'a, I> {
        PeerOutput {
            io,
            endpoint,
            mtu: u16::MAX,
            probes: None,
            translation: None,
        }
    }
}

impl<I: Io> tunnel::Output for PeerOutput<'_, I> {
    fn to_network(&mut self, datagram: &[u8]) {
        self.io.send(self.endpoint, datagram);
    }

    fn to_tun(&mut self, packet: &mut [u8]) {
        // Before the TUN write, where segments of one flow may be coalesced: the coalescer
        // then sees (and computes its partial checksum over) the translated addresses.
        if let Some(translation) = self.translation.as_mut()
            && !translation.ingress(packet)
        {
            return;
        }
        mss::clamp(packet, self.mtu);
        self.io.write_tun(packet);
    }

    fn probe(&mut self, message: probe::Message) {
        if let Some(probes) = self.probes.as_mut() {
            probes.push(message);
        }
    }
}

#[cfg(test)]
mod tests;
