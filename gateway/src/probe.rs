//! The health probe's wire format: a tiny IPv4 packet that travels inside a WireGuard session
//! and that the peer's data plane answers itself.
//!
//! Pure encoding and parsing. A probe is an IPv4 packet from 0.0.0.0 to 0.0.0.0 with protocol
//! 253 (reserved for experimentation, RFC 3692), TTL 1, and a 17-byte payload: the magic
//! `cwprobe1`, a kind byte (request or reply) and the probe id. Because it only ever enters
//! the data plane decrypted from a peer's session, it is authenticated by WireGuard: nobody
//! outside the tunnel can forge a reply, and it needs no routed address on either side. The
//! data plane drops probe-shaped packets read from the TUN device, so local processes cannot
//! inject them either. The state machine that sends them is [`crate::health`]; the data plane
//! ([`crate::dataplane`]) recognises and answers them.
//!
//! Standard WireGuard peers (wireguard-go, the kernel) drop these packets, since 0.0.0.0 is not
//! among our allowed IPs: such peers never answer and stay down as far as health goes.

use crate::health::ProbeId;

const MAGIC: &[u8; 8] = b"cwprobe1";
const PROTOCOL: u8 = 253;
const HEADER_LEN: usize = 20;
/// Total length of a probe packet.
pub const LEN: usize = HEADER_LEN + MAGIC.len() + 1 + 8;

/// Which way a probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Reply,
}

/// A parsed probe packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub id: ProbeId,
}

impl Message {
    /// The packet for this message.
    pub fn encode(self) -> [u8; LEN] {
        let mut p = [0u8; LEN];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
        p[8] = 1; // TTL: never forwarded
        p[9] = PROTOCOL;
        // Addresses stay 0.0.0.0.
        let checksum = ipv4_header_checksum(&p[..HEADER_LEN]);
        p[10..12].copy_from_slice(&checksum.to_be_bytes());
        p[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(MAGIC);
        p[HEADER_LEN + 8] = match self.kind {
            Kind::Request => 1,
            Kind::Reply => 2,
        };
        p[HEADER_LEN + 9..].copy_from_slice(&self.id.0.to_be_bytes());
        p
    }

    /// The probe in `packet`, or `None` if it is not exactly a probe packet.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        if packet.len() != LEN
            || packet[0] != 0x45
            || packet[9] != PROTOCOL
            || packet[12..20] != [0; 8]
            || &packet[HEADER_LEN..HEADER_LEN + 8] != MAGIC
        {
            return None;
        }
        let kind = match packet[HEADER_LEN + 8] {
            1 => Kind::Request,
            2 => Kind::Reply,
            _ => return None,
        };
        let id = u64::from_be_bytes(packet[HEADER_LEN + 9..].try_into().ok()?);
        Some(Self {
            kind,
            id: ProbeId(id),
        })
    }

    /// Whether `packet` looks like a probe at all (any kind byte), so that the data plane can
    /// refuse to carry such packets from the TUN device.
    pub fn is_probe_shaped(packet: &[u8]) -> bool {
        packet.len() >= HEADER_LEN + 8
            && packet[0] >> 4 == 4
            && packet[9] == PROTOCOL
            && packet[12..20] == [0; 8]
    }
}

/// RFC 791 header checksum (RFC 1071 one's complement sum) over a header whose checksum field
/// is zero.
fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in header.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trips_and_carries_a_valid_ipv4_header() {
        for kind in [Kind::Request, Kind::Reply] {
            let m = Message {
                kind,
                id: ProbeId(0x0102_0304_0506_0708),
            };
            let p = m.encode();
            assert_eq!(Message::parse(&p), Some(m));
            assert!(Message::is_probe_shaped(&p));
            assert_eq!(
                ipv4_header_checksum(&p[..HEADER_LEN]),
                0,
                "checksum verifies"
            );
        }
    }

    #[test]
    fn anything_else_is_not_a_probe() {
        let good = Message {
            kind: Kind::Request,
            id: ProbeId(1),
        }
        .encode();
        let mut cases: Vec<Vec<u8>> =
            vec![vec![], good[..LEN - 1].to_vec(), [&good[..], &[0]].concat()];
        for (i, value) in [(9, 6u8), (12, 10), (19, 1), (20, b'x'), (28, 3), (0, 0x46)] {
            let mut p = good.to_vec();
            p[i] = value;
            cases.push(p);
        }
        for case in cases {
            assert_eq!(Message::parse(&case), None, "{case:?}");
        }
    }
}
