//! One WireGuard tunnel to one peer: a thin wrapper over boringtun's `Tunn`.
//!
//! It owns the Noise state machine and turns boringtun's `TunnResult`s into calls on an
//! [`Output`], in one place ([`Tunnel::deliver`]), including the "repeat `decapsulate` with an
//! empty datagram until `Done`" rule that flushes packets queued during a handshake. It knows
//! nothing about other peers or addresses: the inner-source check is a predicate passed in by
//! [`crate::dataplane`]; so is the recognition of in-tunnel health probes ([`crate::probe`]),
//! which are handed to [`Output::probe`] instead of the TUN device. Note that boringtun 0.7 reads the clock itself (for timers and
//! handshake timestamps), so this is not a pure core; it is tested through the data plane.

use std::net::IpAddr;
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::probe;

/// Where a tunnel's products go. Implemented by the data plane, which knows the endpoint.
pub trait Output {
    /// An encrypted datagram for this tunnel's peer.
    fn to_network(&mut self, datagram: &[u8]);
    /// A decrypted IP packet whose inner source passed the caller's check. Mutable so the
    /// data plane can clamp the MSS of TCP SYNs in place.
    fn to_tun(&mut self, packet: &mut [u8]);
    /// A decrypted health probe (request or reply) from this peer; never written to the TUN.
    fn probe(&mut self, message: probe::Message);
}

/// What became of one datagram handed to [`Tunnel::decapsulate`].
#[derive(Debug)]
pub enum Received {
    /// It was authenticated with this peer's keys (handshake or data): the sender is the peer.
    Authenticated {
        /// Decrypted packets dropped because their inner source is not the peer's.
        spoofed: u32,
    },
    /// We are under load and answered with a cookie; nothing is known about the sender.
    CookieSent,
    /// boringtun rejected it (bad MAC, replay, wrong index, ...).
    Rejected(WireGuardError),
}

/// Per-tunnel counters, from boringtun.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TunnelStats {
    pub since_last_handshake: Option<Duration>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Data messages sent (each carries one encrypted packet; keepalives not counted) and
    /// packets decrypted.
    pub tx_packets: u64,
    pub rx_packets: u64,
}

/// WireGuard's transport data message type (whitepaper §5.4.6).
const DATA_TYPE: u8 = 4;
/// A data message carrying no packet: its 16-byte header and 16-byte tag.
const KEEPALIVE_LEN: usize = 32;

/// A cookie reply is 64 bytes of message type 3 (WireGuard paper §5.4.7).
const COOKIE_REPLY_TYPE: u8 = 3;
const COOKIE_REPLY_LEN: usize = 64;

/// One peer's tunnel. See the module docs.
pub struct Tunnel {
    tunn: Tunn,
    tx_packets: u64,
    rx_packets: u64,
}

impl Tunnel {
    /// A tunnel from `private` to the peer with public key `peer_public`. `index` comes from
    /// [`crate::peers::PeerId::tunnel_index`] so receiver indices map back to the peer.
    pub fn new(
        private: StaticSecret,
        peer_public: [u8; 32],
        persistent_keepalive: Option<u16>,
        index: u32,
    ) -> Self {
        Self {
            tunn: Tunn::new(
                private,
                PublicKey::from(peer_public),
                None,
                persistent_keepalive,
                index,
                None,
            ),
            tx_packets: 0,
            rx_packets: 0,
        }
    }

    /// Counts the packets a boringtun result carries.
    fn count(&mut self, result: &TunnResult<'_>) {
        match result {
            // A keepalive is a data message with nothing inside: header and tag only.
            TunnResult::WriteToNetwork(d)
                if d.first() == Some(&DATA_TYPE) && d.len() > KEEPALIVE_LEN =>
            {
                self.tx_packets += 1
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                self.rx_packets += 1
            }
            _ => {}
        }
    }

    /// Encrypts an IP packet read from the TUN device. Without a session the packet is queued
    /// inside boringtun and a handshake initiation is sent instead. `buf` must hold at least
    /// `packet.len() + 32` and 148 bytes.
    pub fn encapsulate(
        &mut self,
        packet: &[u8],
        buf: &mut [u8],
        out: &mut impl Output,
    ) -> Option<WireGuardError> {
        let result = self.tunn.encapsulate(packet, buf);
        self.count(&result);
        Self::deliver(result, &|_| false, out).err()
    }

    /// Handles a datagram that the data plane routed to this peer. `accepts_source` says
    /// whether a decrypted packet's inner source may come from this peer.
    pub fn decapsulate(
        &mut self,
        from: IpAddr,
        datagram: &[u8],
        buf: &mut [u8],
        accepts_source: &dyn Fn(IpAddr) -> bool,
        out: &mut impl Output,
    ) -> Received {
        let mut spoofed = 0;
        let mut result = self.tunn.decapsulate(Some(from), datagram, buf);
        if let TunnResult::WriteToNetwork(p) = &result
            && p.len() == COOKIE_REPLY_LEN
            && p[0] == COOKIE_REPLY_TYPE
        {
            out.to_network(p);
            return Received::CookieSent;
        }
        loop {
            self.count(&result);
            match Self::deliver(result, accepts_source, out) {
                Ok(Delivered::ToNetwork) => {
                    // boringtun: after WriteToNetwork, repeat with an empty datagram until Done
                    // to flush packets queued while the handshake was in flight.
                    result = self.tunn.decapsulate(None, &[], buf);
                }
                Ok(Delivered::Spoofed) => {
                    spoofed += 1;
                    break;
                }
                Ok(Delivered::ToTun | Delivered::Nothing) => break,
                Err(e) => return Received::Rejected(e),
            }
        }
        Received::Authenticated { spoofed }
    }

    /// Drives boringtun's timers: handshake retries, rekeys, keepalives. Call every 250 ms.
    /// Returns the error boringtun reported, if any (`ConnectionExpired` is routine).
    pub fn update_timers(
        &mut self,
        buf: &mut [u8],
        out: &mut impl Output,
    ) -> Option<WireGuardError> {
        let result = self.tunn.update_timers(buf);
        Self::deliver(result, &|_| false, out).err()
    }

    pub fn stats(&self) -> TunnelStats {
        let (since_last_handshake, tx, rx, _loss, _rtt) = self.tunn.stats();
        TunnelStats {
            since_last_handshake,
            tx_bytes: tx as u64,
            rx_bytes: rx as u64,
            tx_packets: self.tx_packets,
            rx_packets: self.rx_packets,
        }
    }

    /// The one place a `TunnResult` is turned into output.
    fn deliver(
        result: TunnResult<'_>,
        accepts_source: &dyn Fn(IpAddr) -> bool,
        out: &mut impl Output,
    ) -> Result<Delivered, WireGuardError> {
        match result {
            TunnResult::Done => Ok(Delivered::Nothing),
            TunnResult::Err(e) => Err(e),
            TunnResult::WriteToNetwork(datagram) => {
                out.to_network(datagram);
                Ok(Delivered::ToNetwork)
            }
            TunnResult::WriteToTunnelV4(packet, source) => {
                Ok(Self::to_tun(packet, source.into(), accepts_source, out))
            }
            TunnResult::WriteToTunnelV6(packet, source) => {
                Ok(Self::to_tun(packet, source.into(), accepts_source, out))
            }
        }
    }

    fn to_tun(
        packet: &mut [u8],
        source: IpAddr,
        accepts_source: &dyn Fn(IpAddr) -> bool,
        out: &mut impl Output,
    ) -> Delivered {
        // Probes come from 0.0.0.0, which is nobody's allowed IP: recognise them first.
        if let Some(message) = probe::Message::parse(packet) {
            out.probe(message);
            Delivered::ToTun
        } else if accepts_source(source) {
            out.to_tun(packet);
            Delivered::ToTun
        } else {
            Delivered::Spoofed
        }
    }
}

enum Delivered {
    Nothing,
    ToNetwork,
    ToTun,
    Spoofed,
}
