//! The peer table: which peers exist, where they are, and which addresses they own.
//!
//! Pure (no sockets, no clock, no boringtun): it answers the data plane's routing questions —
//! "which peer owns this destination?" (cryptokey routing, longest prefix match over allowed
//! IPs), "which peer is this data packet for?" (receiver index), "which peer is this handshake
//! from?" (public key) — and computes what a new desired peer set changes, including the kernel
//! routes to add and remove. The tunnels themselves live in [`crate::tunnel`]; the shell that
//! applies the changes is [`crate::device`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::PeerSpec;

/// Identifies one peer for as long as its public key stays the same.
///
/// It is also the peer's boringtun tunnel index: boringtun puts it in the top 24 bits of every
/// session index it hands out, so a data packet's receiver index shifted right by 8 names the
/// peer (as boringtun's own device does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(u32);

impl PeerId {
    /// The index to pass to `boringtun::noise::Tunn::new`.
    pub fn tunnel_index(self) -> u32 {
        self.0
    }
}

/// boringtun shifts the tunnel index left by 8 bits, so only 24 bits are usable.
const MAX_INDEX: u32 = (1 << 24) - 1;

/// What a call to [`PeerTable::set_peers`] changed. The caller creates a tunnel for every
/// added peer and drops the tunnels of removed peers. Routes follow from [`PeerTable::routes`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<(PeerId, [u8; 32])>,
    pub removed: Vec<PeerId>,
}

/// A desired peer set that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("public key {} appears twice in the peer set", hex(.0))]
    DuplicateKey([u8; 32]),
    #[error("no free tunnel index left")]
    IndexSpaceExhausted,
}

#[derive(Debug, Clone)]
struct Peer {
    public_key: [u8; 32],
    /// The endpoint the last `set_peers` asked for.
    configured: SocketAddr,
    /// Where datagrams go now: `configured`, or where the peer roamed to since.
    endpoint: SocketAddr,
    allowed_ips: Vec<IpNet>,
}

/// The table of peers. See the module docs.
#[derive(Debug)]
pub struct PeerTable {
    peers: BTreeMap<PeerId, Peer>,
    by_key: HashMap<[u8; 32], PeerId>,
    next_index: u32,
}

impl Default for PeerTable {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerTable {
    pub fn new() -> Self {
        Self {
            peers: BTreeMap::new(),
            by_key: HashMap::new(),
            next_index: 1,
        }
    }

    /// Replaces the peer set with `desired`. Peers whose key is unchanged keep their id (and so
    /// their tunnel and sessions); their endpoint and allowed IPs are updated in place. A peer
    /// whose key is new is added; a key no longer present is removed. A peer's endpoint is
    /// only reset when its configured endpoint changed, so repeating the same set does not undo
    /// roaming. On error nothing changes.
    pub fn set_peers(&mut self, desired: Vec<PeerSpec>) -> Result<Changes, Rejected> {
        let mut seen = BTreeSet::new();
        for spec in &desired {
            if !seen.insert(spec.public_key) {
                return Err(Rejected::DuplicateKey(spec.public_key));
            }
        }
        let new_count = desired
            .iter()
            .filter(|s| !self.by_key.contains_key(&s.public_key))
            .count();
        if self.peers.len() + new_count > MAX_INDEX as usize {
            return Err(Rejected::IndexSpaceExhausted);
        }

        let mut changes = Changes::default();

        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !seen.contains(&p.public_key))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(peer) = self.peers.remove(&id) {
                self.by_key.remove(&peer.public_key);
            }
            changes.removed.push(id);
        }

        for spec in desired {
            let allowed_ips: Vec<IpNet> = spec.allowed_ips.iter().map(IpNet::trunc).collect();
            match self.by_key.get(&spec.public_key) {
                Some(id) => {
                    let peer = self.peers.get_mut(id).expect("by_key and peers agree");
                    if peer.configured != spec.endpoint {
                        peer.configured = spec.endpoint;
                        peer.endpoint = spec.endpoint;
                    }
                    peer.allowed_ips = allowed_ips;
                }
                None => {
                    let id = self.allocate_id();
                    self.by_key.insert(spec.public_key, id);
                    self.peers.insert(
                        id,
                        Peer {
                            public_key: spec.public_key,
                            configured: spec.endpoint,
                            endpoint: spec.endpoint,
                            allowed_ips,
                        },
                    );
                    changes.added.push((id, spec.public_key));
                }
            }
        }

        Ok(changes)
    }

    /// The peer that owns `destination`: the one whose allowed IPs hold the longest prefix
    /// containing it (WireGuard's cryptokey routing).
    pub fn lookup_by_destination(&self, destination: IpAddr) -> Option<PeerId> {
        self.peers
            .iter()
            .flat_map(|(id, p)| p.allowed_ips.iter().map(move |net| (id, net)))
            .filter(|(_, net)| net.contains(&destination))
            .max_by_key(|(_, net)| net.prefix_len())
            .map(|(id, _)| *id)
    }

    /// Whether a packet that came out of `peer`'s tunnel may carry inner source `source`:
    /// only if `peer` is the one a reply to `source` would be routed to.
    pub fn accepts_source(&self, peer: PeerId, source: IpAddr) -> bool {
        self.lookup_by_destination(source) == Some(peer)
    }

    /// The peer a handshake response, cookie reply or data packet with this receiver index is
    /// meant for.
    pub fn lookup_by_receiver_index(&self, receiver_index: u32) -> Option<PeerId> {
        let id = PeerId(receiver_index >> 8);
        self.peers.contains_key(&id).then_some(id)
    }

    /// The peer with this static public key (from a handshake initiation).
    pub fn lookup_by_key(&self, public_key: &[u8; 32]) -> Option<PeerId> {
        self.by_key.get(public_key).copied()
    }

    /// Where to send `peer`'s datagrams.
    pub fn endpoint(&self, peer: PeerId) -> Option<SocketAddr> {
        self.peers.get(&peer).map(|p| p.endpoint)
    }

    /// `peer`'s static public key.
    pub fn public_key(&self, peer: PeerId) -> Option<[u8; 32]> {
        self.peers.get(&peer).map(|p| p.public_key)
    }

    /// Records that an authenticated packet from `peer` arrived from `from`: the peer has
    /// roamed there, and replies go there from now on. Returns whether the endpoint changed.
    pub fn handle_authenticated(&mut self, peer: PeerId, from: SocketAddr) -> bool {
        match self.peers.get_mut(&peer) {
            Some(p) if p.endpoint != from => {
                p.endpoint = from;
                true
            }
            _ => false,
        }
    }

    /// All peer ids, in index order.
    pub fn ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    /// The routes the kernel should send into the TUN device: the union of all allowed IPs,
    /// normalised to their network address.
    pub fn routes(&self) -> BTreeSet<IpNet> {
        self.peers
            .values()
            .flat_map(|p| p.allowed_ips.iter().copied())
            .collect()
    }

    fn allocate_id(&mut self) -> PeerId {
        // The caller checked that a free index exists, so this terminates.
        loop {
            let id = PeerId(self.next_index);
            self.next_index = if self.next_index >= MAX_INDEX {
                1
            } else {
                self.next_index + 1
            };
            if !self.peers.contains_key(&id) {
                return id;
            }
        }
    }
}

/// Lowercase hex, for keys in messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: u8, endpoint: &str, allowed: &[&str]) -> PeerSpec {
        PeerSpec {
            public_key: [key; 32],
            endpoint: endpoint.parse().unwrap(),
            allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn destination_lookup_picks_longest_prefix() {
        let mut table = PeerTable::new();
        table
            .set_peers(vec![
                spec(1, "10.0.0.1:51820", &["10.0.0.0/8"]),
                spec(2, "10.0.0.2:51820", &["10.1.0.0/16"]),
                spec(3, "10.0.0.3:51820", &["10.1.2.3/32", "fd00::/64"]),
            ])
            .unwrap();
        let [a, b, c] = [1, 2, 3].map(|k| table.lookup_by_key(&[k; 32]).unwrap());
        assert_eq!(table.lookup_by_destination(ip("10.9.9.9")), Some(a));
        assert_eq!(table.lookup_by_destination(ip("10.1.9.9")), Some(b));
        assert_eq!(table.lookup_by_destination(ip("10.1.2.3")), Some(c));
        assert_eq!(table.lookup_by_destination(ip("fd00::1")), Some(c));
        assert_eq!(table.lookup_by_destination(ip("192.168.0.1")), None);
        assert_eq!(table.lookup_by_destination(ip("fd01::1")), None);
    }

    #[test]
    fn inner_source_is_accepted_only_from_the_owning_peer() {
        let mut table = PeerTable::new();
        table
            .set_peers(vec![
                spec(1, "10.0.0.1:51820", &["10.101.0.0/16"]),
                spec(2, "10.0.0.2:51820", &["10.102.0.0/16", "10.101.7.0/24"]),
            ])
            .unwrap();
        let [a, b] = [1, 2].map(|k| table.lookup_by_key(&[k; 32]).unwrap());
        assert!(table.accepts_source(a, ip("10.101.0.10")));
        assert!(!table.accepts_source(b, ip("10.101.0.10")));
        assert!(
            !table.accepts_source(a, ip("10.101.7.1")),
            "more specific wins"
        );
        assert!(table.accepts_source(b, ip("10.101.7.1")));
        assert!(!table.accepts_source(a, ip("8.8.8.8")));
    }

    #[test]
    fn receiver_index_names_the_peer_in_its_top_24_bits() {
        let mut table = PeerTable::new();
        table
            .set_peers(vec![spec(1, "10.0.0.1:51820", &["10.1.0.0/16"])])
            .unwrap();
        let a = table.lookup_by_key(&[1; 32]).unwrap();
        let session_index = (a.tunnel_index() << 8) | 0x2a;
        assert_eq!(table.lookup_by_receiver_index(session_index), Some(a));
        assert_eq!(table.lookup_by_receiver_index(0xdead_beef), None);
    }

    #[test]
    fn set_peers_diff_touches_only_changed_peers() {
        let mut table = PeerTable::new();
        let first = table
            .set_peers(vec![
                spec(1, "10.0.0.1:51820", &["10.101.0.0/16"]),
                spec(2, "10.0.0.2:51820", &["10.102.0.0/16"]),
                spec(3, "10.0.0.3:51820", &["10.103.0.0/16"]),
            ])
            .unwrap();
        assert_eq!(first.added.len(), 3);
        assert_eq!(table.routes().len(), 3);
        let [a, b, c] = [1, 2, 3].map(|k| table.lookup_by_key(&[k; 32]).unwrap());

        // Peer 1 unchanged; peer 2 moves endpoint and gains a CIDR; peer 3 is re-keyed to 4.
        let second = table
            .set_peers(vec![
                spec(1, "10.0.0.1:51820", &["10.101.0.0/16"]),
                spec(2, "10.0.0.22:51820", &["10.102.0.0/16", "10.112.0.0/16"]),
                spec(4, "10.0.0.3:51820", &["10.103.0.0/16"]),
            ])
            .unwrap();
        let d = table.lookup_by_key(&[4; 32]).unwrap();
        assert_eq!(second.added, vec![(d, [4; 32])]);
        assert_eq!(second.removed, vec![c]);
        let routes: Vec<IpNet> = table.routes().into_iter().collect();
        assert_eq!(
            routes,
            [
                "10.101.0.0/16",
                "10.102.0.0/16",
                "10.103.0.0/16",
                "10.112.0.0/16"
            ]
            .map(net),
            "10.103/16 still routed via the re-keyed peer"
        );
        assert_eq!(table.lookup_by_key(&[1; 32]), Some(a));
        assert_eq!(table.lookup_by_key(&[2; 32]), Some(b));
        assert_eq!(table.endpoint(b), Some("10.0.0.22:51820".parse().unwrap()));
        assert_ne!(c, d, "a re-keyed peer gets a fresh index");

        let third = table.set_peers(vec![]).unwrap();
        assert_eq!(third.removed, vec![a, b, d]);
        assert!(table.routes().is_empty());
        assert_eq!(table.ids().count(), 0);
    }

    #[test]
    fn allowed_ips_are_normalised_to_their_network() {
        let mut table = PeerTable::new();
        table
            .set_peers(vec![spec(1, "10.0.0.1:51820", &["10.101.3.4/16"])])
            .unwrap();
        assert_eq!(
            table.routes().into_iter().collect::<Vec<_>>(),
            vec![net("10.101.0.0/16")]
        );
        assert!(table.lookup_by_destination(ip("10.101.200.1")).is_some());
    }

    #[test]
    fn duplicate_keys_are_rejected_without_changing_the_table() {
        let mut table = PeerTable::new();
        table
            .set_peers(vec![spec(1, "10.0.0.1:51820", &["10.101.0.0/16"])])
            .unwrap();
        let err = table
            .set_peers(vec![
                spec(2, "10.0.0.2:51820", &[]),
                spec(2, "10.0.0.3:51820", &[]),
            ])
            .unwrap_err();
        assert_eq!(err, Rejected::DuplicateKey([2; 32]));
        assert!(table.lookup_by_key(&[1; 32]).is_some());
        assert!(table.lookup_by_key(&[2; 32]).is_none());
    }

    #[test]
    fn authenticated_packet_from_new_address_roams_the_endpoint() {
        let mut table = PeerTable::new();
        table
            .set_peers(vec![spec(1, "10.0.0.1:51820", &["10.101.0.0/16"])])
            .unwrap();
        let a = table.lookup_by_key(&[1; 32]).unwrap();
        let same = "10.0.0.1:51820".parse().unwrap();
        let moved = "10.0.0.9:40000".parse().unwrap();
        assert!(!table.handle_authenticated(a, same));
        assert!(table.handle_authenticated(a, moved));
        assert_eq!(table.endpoint(a), Some(moved));
        // Repeating the same configuration keeps the roamed endpoint...
        table
            .set_peers(vec![spec(1, "10.0.0.1:51820", &["10.101.0.0/16"])])
            .unwrap();
        assert_eq!(table.endpoint(a), Some(moved));
        // ...while a newly configured endpoint overrides it.
        let configured = "10.0.0.5:51820".parse().unwrap();
        table
            .set_peers(vec![spec(1, "10.0.0.5:51820", &["10.101.0.0/16"])])
            .unwrap();
        assert_eq!(table.endpoint(a), Some(configured));
    }
}
