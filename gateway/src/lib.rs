//! causeway-gateway: the WireGuard data plane between cluster gateways.
//!
//! boringtun's Noise state machines, driven by our own packet loop over a Linux TUN device and
//! a UDP socket, with the kernel routes for every peer's allowed IPs kept in sync over netlink.
//! It knows nothing about clusters or services: the caller translates its model into
//! [`PeerSpec`]s.
//!
//! Module map:
//! - `peers`: pure peer table (longest-prefix cryptokey routing, receiver index, public key,
//!   roaming) and the diff of a new desired peer set.
//! - `tunnel`: one boringtun `Tunn` per peer; turns its results into output in one place.
//! - `dataplane`: the decisions (which tunnel, what to drop and count), no sockets.
//! - `health`: pure peer-health state machine ([`Prober`]): probes, RTT, loss, up/down.
//! - `probe`: the in-tunnel probe packet the data planes exchange and answer themselves.
//! - `gso`: TUN offloads: the virtio_net_hdr and splitting TCP super-packets (pure).
//! - `mss`: TCP MSS clamping of SYNs crossing the tunnel (pure byte surgery).
//! - `nat`: stateless 1:1 prefix translation between our local CIDRs and our global prefixes
//!   ([`Translator`]; pure byte surgery, checksums patched incrementally).
//! - `fuzzing`: entry points for `tests/fuzz/` (public with the `fuzzing` feature).
//! - `device`: the tokio shell — TUN device, UDP socket, netlink, 250 ms timer tick, prober
//!   timer.
//! - `clock`: the package's one clock read (public for the package's own tests).
//! - this file: the public API ([`start`], [`Handle`]) and its types.

#[doc(hidden)]
pub mod clock;
mod dataplane;
mod device;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(all(test, not(feature = "fuzzing")))]
mod fuzzing;
mod gso;
mod health;
mod mss;
mod nat;
mod peers;
mod probe;
mod tunnel;

pub use health::{HealthConfig, HealthEvent, HealthState, PeerHealth, Probe, ProbeId, Prober};
pub use nat::{InvalidMapping, Mapping, Translator, Verdict};
pub use peers::Rejected;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How to bring up the data plane.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our static X25519 private key (see [`generate_private_key`]).
    pub private_key: [u8; 32],
    /// UDP address WireGuard listens on; port 0 picks one (see [`Handle::local_addr`]).
    pub listen: SocketAddr,
    /// Name of the TUN device to create, e.g. "cw0" (at most 15 bytes).
    pub tun_name: String,
    /// MTU of the TUN device; 1420 leaves room for WireGuard over IPv6 on a 1500 link (see
    /// [`tunnel_mtu`] for other links). TCP SYNs through the tunnel get their MSS clamped to
    /// fit it.
    pub mtu: u16,
    /// Send a keepalive after this many idle seconds, to hold NAT mappings open.
    pub persistent_keepalive: Option<u16>,
    /// Preferred source address (`src`) for routes into the TUN device, so locally originated
    /// traffic leaves with an address the far side routes back to us.
    pub route_source: Option<IpAddr>,
    /// How peers are probed through their tunnels (see [`Handle::health`]).
    pub health: HealthConfig,
}

/// The default TUN MTU: 1500 minus WireGuard-over-IPv6 overhead (40 + 8 + 32).
pub const DEFAULT_MTU: u16 = 1420;

/// WireGuard's worst-case overhead per packet: an IPv6 header (40), UDP (8), and the data
/// message header and tag (16 + 16). Padding never adds to it: the protocol pads only up to
/// the MTU (and boringtun not at all).
pub const OVERHEAD: u16 = 40 + 8 + 32;

/// The TUN MTU for an underlying link of `link_mtu` bytes: the link minus [`OVERHEAD`]
/// (1500 → 1420, 1280 → 1200), but at least the IPv4 minimum of 576.
pub fn tunnel_mtu(link_mtu: u16) -> u16 {
    link_mtu.saturating_sub(OVERHEAD).max(576)
}

/// One peer of the desired peer set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub public_key: [u8; 32],
    /// Where to send datagrams until the peer is heard from elsewhere (roaming).
    pub endpoint: SocketAddr,
    /// Addresses the peer may send from and that we route to it; also installed as kernel
    /// routes into the TUN device.
    pub allowed_ips: Vec<IpNet>,
}

/// A snapshot of one peer, from [`Handle::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub public_key: [u8; 32],
    /// Where datagrams go now (the configured endpoint, or where the peer roamed to).
    pub endpoint: SocketAddr,
    /// Time since the last completed handshake; `None` before the first.
    pub last_handshake: Option<Duration>,
    /// Decrypted payload bytes received and plaintext bytes sent, as boringtun counts them.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Packets decrypted from the peer (in-tunnel probes included) and data messages sent to
    /// it (keepalives not counted).
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// What the in-tunnel probes say about the peer.
    pub health: PeerHealth,
}

/// Device-wide drop counters, from [`Handle::device_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// UDP datagrams that are not WireGuard messages.
    pub malformed_datagrams: u64,
    /// WireGuard messages for no peer we know (unknown index or key).
    pub unknown_peer_datagrams: u64,
    /// Datagrams boringtun rejected (bad MAC, replay, stale session, ...).
    pub rejected_datagrams: u64,
    /// Decrypted packets whose inner source is not in the sending peer's allowed IPs.
    pub spoofed_source_packets: u64,
    /// TUN packets whose destination no peer owns.
    pub no_route_packets: u64,
    /// TUN reads that are not IPv4/IPv6 packets.
    pub malformed_tun_packets: u64,
    /// Datagrams or packets dropped because the socket or TUN queue was full.
    pub send_drops: u64,
    /// Times a peer's endpoint moved because it was heard, authenticated, from a new address.
    pub endpoint_roams: u64,
    /// Peer health state changes (see [`Handle::health`]).
    pub health_transitions: u64,
    /// Datagrams that arrived coalesced with others in one UDP GRO receive (a sending peer's
    /// GSO run kept whole by the kernel); split again before decryption.
    pub gro_datagrams: u64,
    /// Packets whose addresses the prefix translation rewrote (see
    /// [`Handle::set_translation`]), both directions: TUN packets leaving with a local source,
    /// decrypted packets arriving for a global destination, and ICMP errors quoting either.
    pub translated_packets: u64,
    /// Packets dropped because they needed translating but their headers could not be
    /// rewritten consistently ([`Verdict::Malformed`]: lengths past the end, a cut-off
    /// extension header, a first fragment without its transport checksum).
    pub untranslatable_packets: u64,
}

/// Errors from [`start`] and [`Handle`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid TUN device name {name:?} (1 to 15 bytes, no NUL)")]
    TunName { name: String },
    #[error("opening TUN device {name}")]
    OpenTun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("binding WireGuard UDP socket on {addr}")]
    BindUdp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("opening netlink socket")]
    Netlink(#[source] std::io::Error),
    #[error("configuring link {name}")]
    Link {
        name: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("{action} route {cidr} dev {dev}")]
    Route {
        action: &'static str,
        cidr: IpNet,
        dev: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("invalid peer set")]
    InvalidPeers(#[from] peers::Rejected),
    #[error("invalid address translation")]
    InvalidTranslation(#[from] nat::InvalidMapping),
    #[error("the gateway has shut down")]
    Closed,
}

/// A new random private key from the OS RNG.
///
/// # Panics
/// If the OS RNG fails, which on Linux only happens before the entropy pool is initialised.
pub fn generate_private_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("OS RNG available");
    // X25519 clamping (RFC 7748 §5), as `wg genkey` does; boringtun clamps again anyway.
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    key
}

/// The X25519 public key for `private`.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    let secret = boringtun::x25519::StaticSecret::from(*private);
    boringtun::x25519::PublicKey::from(&secret).to_bytes()
}

/// Creates the TUN device (MTU set, link up), binds the UDP socket and spawns the task that
/// owns the peer table and all tunnels. Starts with no peers; call [`Handle::set_peers`].
///
/// The TUN device, UDP socket and netlink socket are created in the calling thread's network
/// namespace. The task stops when `shutdown` is cancelled; the TUN device (and with it every
/// route into it) disappears then.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Handle, Error> {
    let (commands, rx) = mpsc::channel(16);
    let (health_tx, health) = watch::channel(BTreeMap::new());
    let public_key = public_key(&config.private_key);
    let local_addr = device::spawn(config, rx, health_tx, shutdown).await?;
    Ok(Handle {
        commands,
        public_key,
        local_addr,
        health,
    })
}

/// Talks to the gateway task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    public_key: [u8; 32],
    local_addr: SocketAddr,
    health: watch::Receiver<BTreeMap<[u8; 32], PeerHealth>>,
}

/// Requests from a [`Handle`] to the device task.
#[derive(Debug)]
enum Command {
    SetPeers(Vec<PeerSpec>, oneshot::Sender<Result<(), Error>>),
    SetTranslation(Translator, oneshot::Sender<()>),
    Stats(oneshot::Sender<Vec<PeerStats>>),
    DeviceStats(oneshot::Sender<DeviceStats>),
}

impl Handle {
    /// Replaces the peer set with `peers` (the full desired set). Unchanged peers keep their
    /// sessions; new keys get a tunnel; missing keys are dropped; a changed endpoint is used
    /// from now on. Kernel routes `<allowed ip> dev <tun> [src <route_source>]` are added for
    /// every allowed IP and removed when no peer has it any more. On a route error the peer
    /// set is still applied and the remaining routes attempted; the first error is returned.
    pub async fn set_peers(&self, peers: Vec<PeerSpec>) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::SetPeers(peers, tx)).await?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Replaces our own cluster's address translation with `mappings` (the full list: each
    /// of our local CIDRs and the global prefix of the same length that stands for it). From
    /// the moment this returns, packets leaving through the tunnel with a local source leave
    /// with the global one, and packets arriving for a global destination are delivered to
    /// the local one (ICMP errors quoting them included; see [`Translator`]). The peers'
    /// allowed IPs (and so the routes into the TUN device) are then their global prefixes.
    /// An empty list turns translation off (the default). An invalid list is refused before
    /// anything changes.
    pub async fn set_translation(&self, mappings: Vec<Mapping>) -> Result<(), Error> {
        let translator = Translator::new(mappings)?;
        let (tx, rx) = oneshot::channel();
        self.send(Command::SetTranslation(translator, tx)).await?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Our public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Every peer's health, keyed by public key, as the in-tunnel probes see it.
    ///
    /// The map changes when a peer is added (as [`HealthState::Unknown`]) or removed, and on
    /// every state transition (`Unknown`/`Up`/`Degraded`/`Down`); the RTT and loss figures in
    /// it are those of the moment of the last change (current ones are in
    /// [`PeerStats::health`]). With the default [`HealthConfig`] a peer whose link is cut is
    /// `Down` within 1 s and `Up` again within 1 s of the link returning. Only causeway
    /// gateways answer probes: a standard WireGuard peer goes `Down` and stays there. After
    /// shutdown the receiver keeps the last map and `changed()` fails.
    pub fn health(&self) -> watch::Receiver<BTreeMap<[u8; 32], PeerHealth>> {
        self.health.clone()
    }

    /// The UDP address WireGuard is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// One entry per peer, in no particular order. Empty once the gateway has shut down.
    pub async fn stats(&self) -> Vec<PeerStats> {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Stats(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Device-wide drop counters. Zeroes once the gateway has shut down.
    pub async fn device_stats(&self) -> DeviceStats {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::DeviceStats(tx)).await.is_err() {
            return DeviceStats::default();
        }
        rx.await.unwrap_or_default()
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).await.map_err(|_| Error::Closed)
    }
}
