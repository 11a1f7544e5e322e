//! Stateless 1:1 prefix translation between this cluster's local CIDRs and the clusterset-unique
//! global prefixes the broker gave it (issue 12, "address plan"), so that clusters with
//! identical pod and service CIDRs can reach each other.
//!
//! Owns: validating our own mapping list ([`Translator::new`]) and the byte surgery on one
//! packet in each direction.
//! - [`Translator::egress`], on a packet read from the TUN device before encryption: a source
//!   inside one of our local CIDRs becomes the same offset in its global prefix.
//! - [`Translator::ingress`], on a decrypted packet after the allowed-IPs check and before the
//!   TUN write: a destination inside one of our global prefixes becomes the local address.
//! - ICMP and ICMPv6 errors (destination unreachable with frag-needed, packet too big, time
//!   exceeded, parameter problem, source quench) also carry the packet they are about: its
//!   destination is rewritten local → global on egress and its source global → local on
//!   ingress, so the original sender (and its kernel's PMTU logic) recognises its own packet.
//!
//! Every checksum the rewrite touches is patched incrementally (RFC 1624): the IPv4 header, the
//! TCP, UDP, UDP-Lite, DCCP and ICMPv6 checksums (they cover a pseudo-header with the
//! addresses), the ICMPv4 checksum (which covers only the message, so it changes only with the
//! quoted packet), and inside the quoted packet its IPv4 header checksum and, where the
//! quote reaches it (RFC 792 guarantees only 8 bytes), its transport checksum. A UDP/IPv4
//! checksum of 0 (none) stays 0, a patched UDP checksum is never written as 0. IPv4 and
//! IPv6 fragments all get their addresses rewritten; only the first (offset 0) holds the
//! transport header, so only it gets a transport checksum patch. Only addresses change: every
//! length and offset stays where it was.
//!
//! A pure function of the packet and the static mapping list: no flow state, no clock, no
//! allocation per packet. It does not own routes or allowed IPs (the caller gives peers their
//! global prefixes), nor what happens to a [`Verdict::Malformed`] packet: the data plane
//! ([`crate::dataplane`]) drops and counts those. Its shell is [`crate::device`], through the
//! data plane.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// One of our local CIDRs and the global prefix of the same length that stands for it
/// outside the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub local: IpNet,
    pub global: IpNet,
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} <-> {}", self.local, self.global)
    }
}

/// Why a mapping list was refused by [`Translator::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMapping {
    #[error("mapping {0} mixes IPv4 and IPv6")]
    Family(Mapping),
    #[error("mapping {0} changes the prefix length")]
    PrefixLength(Mapping),
    #[error("local CIDRs {first} and {second} overlap")]
    OverlappingLocals { first: IpNet, second: IpNet },
    #[error("global prefixes {first} and {second} overlap")]
    OverlappingGlobals { first: IpNet, second: IpNet },
}

/// What [`Translator::egress`] or [`Translator::ingress`] did to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to translate (no address in our prefixes, or not an IP packet at all): the
    /// packet is as it was.
    Unchanged,
    /// Addresses were rewritten and every checksum that covers them patched.
    Translated,
    /// It needs translating but its headers are inconsistent or truncated (a length past the
    /// end, an extension header cut off, a first fragment too short to hold its transport
    /// checksum, an IPv6 routing header still in transit), so it cannot be rewritten
    /// consistently. The packet is as it was; the caller drops it.
    Malformed,
}

/// Our own cluster's mapping list, ready for per-packet use. [`Default`] is the empty list,
/// which translates nothing at the cost of one branch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translator {
    mappings: Vec<Mapping>,
    v4: Vec<Rule>,
    v6: Vec<Rule>,
}

impl Translator {
    /// Checks the list: each mapping's two sides of one family and one prefix length, no two
    /// local CIDRs overlapping, no two global prefixes overlapping (so both directions are
    /// functions). Host bits are ignored (`10.244.0.5/16` means `10.244.0.0/16`).
    pub fn new(mappings: Vec<Mapping>) -> Result<Self, InvalidMapping> {
        let mappings: Vec<Mapping> = mappings
            .into_iter()
            .map(|m| Mapping {
                local: m.local.trunc(),
                global: m.global.trunc(),
            })
            .collect();
        for (i, m) in mappings.iter().enumerate() {
            if m.local.addr().is_ipv4() != m.global.addr().is_ipv4() {
                return Err(InvalidMapping::Family(*m));
            }
            if m.local.prefix_len() != m.global.prefix_len() {
                return Err(InvalidMapping::PrefixLength(*m));
            }
            for earlier in &mappings[..i] {
                if overlap(&earlier.local, &m.local) {
                    return Err(InvalidMapping::OverlappingLocals {
                        first: earlier.local,
                        second: m.local,
                    });
                }
                if overlap(&earlier.global, &m.global) {
                    return Err(InvalidMapping::OverlappingGlobals {
                        first: earlier.global,
                        second: m.global,
                    });
                }
            }
        }
        let rules = |v4: bool| {
            mappings
                .iter()
                .filter(|m| m.local.addr().is_ipv4() == v4)
                .map(Rule::new)
                .collect()
        };
        Ok(Self {
            v4: rules(true),
            v6: rules(false),
            mappings,
        })
    }

    /// The validated list (host bits cleared), in the order given.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// Whether there is nothing to translate.
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }

    /// A packet leaving the cluster (read from the TUN device, not yet encrypted): source
    /// local → global; in an ICMP error, the quoted packet's destination local → global.
    pub fn egress(&self, packet: &mut [u8]) -> Verdict {
        self.translate(packet, Direction::Egress)
    }

    /// A packet entering the cluster (decrypted, its source already checked against the
    /// peer's allowed IPs): destination global → local; in an ICMP error, the quoted packet's
    /// source global → local.
    pub fn ingress(&self, packet: &mut [u8]) -> Verdict {
        self.translate(packet, Direction::Ingress)
    }

    fn translate(&self, packet: &mut [u8], direction: Direction) -> Verdict {
        if self.is_empty() {
            return Verdict::Unchanged;
        }
        let Some(family) = packet.first().and_then(|b| Family::of(*b)) else {
            return Verdict::Unchanged;
        };
        let outer_at = family.address_at(direction.outer_field());
        let outer = packet
            .get(outer_at..outer_at + family.address_len())
            .and_then(|a| self.lookup(family, a, direction));
        let Some(headers) = Headers::parse(packet, family) else {
            return malformed_if(outer.is_some());
        };
        // The transport checksum that covers the addresses (or, for ICMPv4, only the message).
        let mut transport = None;
        let mut quote = None;
        if headers.first_fragment {
            if let Some(offset) = checksum_offset(headers.protocol, family) {
                let at = headers.transport + offset;
                if at + 2 > headers.end {
                    // A first fragment cut short inside its own transport header.
                    return malformed_if(outer.is_some());
                }
                transport = Some(Checksum {
                    at,
                    udp: headers.protocol == UDP,
                    pseudo: true,
                });
            } else if headers.protocol == ICMP && family == Family::V4 {
                let at = headers.transport + 2;
                if at + 2 <= headers.end {
                    transport = Some(Checksum {
                        at,
                        udp: false,
                        pseudo: false,
                    });
                }
            }
            if transport.is_some() && is_icmp_error(packet, &headers, family) {
                quote = self.plan_quote(
                    packet,
                    headers.transport + 8,
                    headers.end,
                    family,
                    direction,
                );
            }
        }
        if outer.is_none() && quote.is_none() {
            return Verdict::Unchanged;
        }

        // Everything is checked: from here on the packet is rewritten whole.
        let len = family.address_len();
        let mut in_message = 0xffff_u16; // -0: nothing changed inside the transport message yet
        if let Some(q) = quote {
            let delta = write_address(packet, q.address_at, len, q.address);
            in_message = add(in_message, delta);
            if let Some(at) = q.header_checksum {
                in_message = add(in_message, patch(packet, at, delta, false));
            }
            if let Some(c) = q.transport {
                in_message = add(in_message, patch(packet, c.at, delta, c.udp));
            }
        }
        let mut pseudo = 0xffff_u16;
        if let Some(address) = outer {
            pseudo = write_address(packet, outer_at, len, address);
            if family == Family::V4 {
                patch(packet, 10, pseudo, false);
            }
        }
        if let Some(c) = transport {
            let delta = if c.pseudo {
                add(pseudo, in_message)
            } else {
                in_message
            };
            patch(packet, c.at, delta, c.udp);
        }
        Verdict::Translated
    }

    /// Where and how to rewrite the packet quoted in an ICMP error (from `start` to `end`),
    /// if it is of our family and its address is ours. Tolerates truncation: the quote may end
    /// anywhere after its addresses, and its transport checksum is patched only if present.
    fn plan_quote(
        &self,
        packet: &[u8],
        start: usize,
        end: usize,
        family: Family,
        direction: Direction,
    ) -> Option<Quote> {
        let quoted = packet.get(start..end)?;
        if Family::of(*quoted.first()?) != Some(family) {
            return None;
        }
        let len = family.address_len();
        let at = family.address_at(direction.quoted_field());
        let address = self.lookup(family, quoted.get(at..at + len)?, direction)?;
        let (header_checksum, first_fragment, protocol, transport) = match family {
            Family::V4 => {
                let ihl = usize::from(quoted[0] & 0x0f) * 4;
                if ihl < 20 {
                    return None;
                }
                let offset = u16::from_be_bytes([quoted[6], quoted[7]]) & 0x1fff;
                (Some(start + 10), offset == 0, quoted[9], ihl)
            }
            Family::V6 => match walk_ipv6(quoted, quoted.len()) {
                Some((protocol, transport, first)) => (None, first, protocol, transport),
                // Cut off inside its extension headers: the addresses are still there.
                None => (None, false, 0, 0),
            },
        };
        let transport = checksum_offset(protocol, family)
            .filter(|_| first_fragment)
            .map(|offset| transport + offset)
            .filter(|at| at + 2 <= quoted.len())
            .map(|at| Checksum {
                at: start + at,
                udp: protocol == UDP,
                pseudo: true,
            });
        Some(Quote {
            address_at: start + at,
            address,
            header_checksum,
            transport,
        })
    }

    /// The translated address, if `address` is inside one of our prefixes on the side this
    /// direction translates from.
    fn lookup(&self, family: Family, address: &[u8], direction: Direction) -> Option<u128> {
        let value = read_address(address);
        let rules = match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        };
        rules.iter().find_map(|r| r.map(value, direction))
    }
}

/// Which way a packet goes through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Egress,
    Ingress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Source,
    Destination,
}

impl Direction {
    /// The outer address this direction rewrites.
    fn outer_field(self) -> Field {
        match self {
            Self::Egress => Field::Source,
            Self::Ingress => Field::Destination,
        }
    }

    /// The quoted packet's address it rewrites: it travelled the other way.
    fn quoted_field(self) -> Field {
        match self {
            Self::Egress => Field::Destination,
            Self::Ingress => Field::Source,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(first_byte: u8) -> Option<Self> {
        match first_byte >> 4 {
            4 => Some(Self::V4),
            6 => Some(Self::V6),
            _ => None,
        }
    }

    fn address_len(self) -> usize {
        match self {
            Self::V4 => 4,
            Self::V6 => 16,
        }
    }

    fn address_at(self, field: Field) -> usize {
        match (self, field) {
            (Self::V4, Field::Source) => 12,
            (Self::V4, Field::Destination) => 16,
            (Self::V6, Field::Source) => 8,
            (Self::V6, Field::Destination) => 24,
        }
    }
}

/// One mapping as masks over the address read as a number (IPv4 in the low 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    local: u128,
    global: u128,
    mask: u128,
}

impl Rule {
    fn new(m: &Mapping) -> Self {
        let width = if m.local.addr().is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(m.local.prefix_len());
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        Self {
            local: address_bits(m.local.addr()),
            global: address_bits(m.global.addr()),
            mask: all & all.checked_shl(host_bits).unwrap_or(0),
        }
    }

    fn map(&self, address: u128, direction: Direction) -> Option<u128> {
        let (from, to) = match direction {
            Direction::Egress => (self.local, self.global),
            Direction::Ingress => (self.global, self.local),
        };
        (address & self.mask == from).then_some(to | (address & !self.mask))
    }
}

/// The offsets that matter in a packet whose IP header (and IPv6 extension headers) parse.
#[derive(Debug, Clone, Copy)]
struct Headers {
    /// End of the IP packet (the buffer may be longer).
    end: usize,
    protocol: u8,
    /// Start of the transport header.
    transport: usize,
    /// Unfragmented, or the fragment at offset 0: the transport header is here.
    first_fragment: bool,
}

impl Headers {
    fn parse(p: &[u8], family: Family) -> Option<Self> {
        match family {
            Family::V4 => {
                let ihl = usize::from(p.first()? & 0x0f) * 4;
                let end = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
                if p.len() < 20 || ihl < 20 || end < ihl || end > p.len() {
                    return None;
                }
                let offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
                Some(Self {
                    end,
                    protocol: p[9],
                    transport: ihl,
                    first_fragment: offset == 0,
                })
            }
            Family::V6 => {
                if p.len() < 40 {
                    return None;
                }
                let end = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
                if end > p.len() {
                    return None;
                }
                let (protocol, transport, first_fragment) = walk_ipv6(p, end)?;
                Some(Self {
                    end,
                    protocol,
                    transport,
                    first_fragment,
                })
            }
        }
    }
}

/// Walks an IPv6 packet's extension headers within `p[..end]`: (upper-layer protocol, its
/// offset, whether this is the first or only fragment). `None` if a header is cut off, or for
/// a routing header with segments left (the transport checksum then covers a final
/// destination elsewhere in the packet: not ours to rewrite).
fn walk_ipv6(p: &[u8], end: usize) -> Option<(u8, usize, bool)> {
    let p = p.get(..end)?;
    let mut next = *p.get(6)?;
    let mut at = 40;
    let mut first_fragment = true;
    loop {
        match next {
            HOP_BY_HOP | DESTINATION_OPTIONS => {
                let h = p.get(at..at + 2)?;
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            ROUTING => {
                let h = p.get(at..at + 4)?;
                if h[3] != 0 {
                    return None;
                }
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            FRAGMENT => {
                let h = p.get(at..at + 8)?;
                next = h[0];
                first_fragment = u16::from_be_bytes([h[2], h[3]]) >> 3 == 0;
                at += 8;
            }
            AUTHENTICATION => {
                let h = p.get(at..at + 2)?;
                next = h[0];
                at += (usize::from(h[1]) + 2) * 4;
            }
            _ => return (at <= end).then_some((next, at, first_fragment)),
        }
        if at > end {
            return None;
        }
    }
}

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const DCCP: u8 = 33;
const ICMPV6: u8 = 58;
const UDP_LITE: u8 = 136;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTHENTICATION: u8 = 51;
const DESTINATION_OPTIONS: u8 = 60;

/// Offset of the checksum in a transport header whose checksum covers the pseudo-header.
fn checksum_offset(protocol: u8, family: Family) -> Option<usize> {
    match protocol {
        TCP => Some(16),
        UDP | UDP_LITE | DCCP => Some(6),
        ICMPV6 if family == Family::V6 => Some(2),
        _ => None,
    }
}

/// Whether the transport message is an ICMP(v6) error that quotes a packet (RFC 792, RFC
/// 4443 §2.1: error types are below 128 in ICMPv6).
fn is_icmp_error(p: &[u8], h: &Headers, family: Family) -> bool {
    if h.transport + 8 > h.end {
        return false;
    }
    let kind = p[h.transport];
    match family {
        // Destination unreachable, source quench, time exceeded, parameter problem.
        Family::V4 => h.protocol == ICMP && matches!(kind, 3 | 4 | 11 | 12),
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        Family::V6 => h.protocol == ICMPV6 && matches!(kind, 1..=4),
    }
}

/// A checksum field to patch.
#[derive(Debug, Clone, Copy)]
struct Checksum {
    at: usize,
    /// UDP: 0 means "no checksum" (IPv4; invalid in IPv6, left alone), and a computed 0 is
    /// sent as 0xffff.
    udp: bool,
    /// Covers the pseudo-header (so the outer address change), not just the message.
    pseudo: bool,
}

/// The rewrite of the packet quoted in an ICMP error.
#[derive(Debug, Clone, Copy)]
struct Quote {
    address_at: usize,
    address: u128,
    /// The quoted IPv4 header's checksum.
    header_checksum: Option<usize>,
    transport: Option<Checksum>,
}

fn malformed_if(needed: bool) -> Verdict {
    if needed {
        Verdict::Malformed
    } else {
        Verdict::Unchanged
    }
}

fn address_bits(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(a) => u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits(),
    }
}

fn read_address(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0, |acc, b| (acc << 8) | u128::from(*b))
}

/// Writes `address` (its low `len` bytes) at `at`; returns the change in the one's complement
/// sum of those bytes (RFC 1624's ~m + m').
fn write_address(p: &mut [u8], at: usize, len: usize, address: u128) -> u16 {
    let field = &mut p[at..at + len];
    let old = sum(field);
    field.copy_from_slice(&address.to_be_bytes()[16 - len..]);
    add(!old, sum(field))
}

/// Adds `delta` to the checksum at `at` (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')) and returns
/// the change in the field itself, for a checksum that covers it (0xffff, one's complement
/// -0, for none). A UDP checksum of 0 is left alone; a patched one that comes out 0 is written as 0xffff (RFC 768).
fn patch(p: &mut [u8], at: usize, delta: u16, udp: bool) -> u16 {
    let old = u16::from_be_bytes([p[at], p[at + 1]]);
    // A zero change (either zero) leaves the field as it is: adding it could only swap 0xffff
    // for 0, which a verifier tells apart when the data sums to zero (an all-zero ICMP echo).
    if (udp && old == 0) || delta == 0 || delta == 0xffff {
        return 0xffff;
    }
    let mut new = !add(!old, delta);
    if udp && new == 0 {
        new = 0xffff;
    }
    p[at..at + 2].copy_from_slice(&new.to_be_bytes());
    add(!old, new)
}

/// The one's complement sum of an even number of bytes, as big-endian 16-bit words.
fn sum(bytes: &[u8]) -> u16 {
    let total = bytes
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    fold(total)
}

fn add(a: u16, b: u16) -> u16 {
    fold(u32::from(a) + u32::from(b))
}

fn fold(mut x: u32) -> u16 {
    while x > 0xffff {
        x = (x & 0xffff) + (x >> 16);
    }
    x as u16
}

/// Whether two CIDRs share an address (for CIDRs: one contains the other).
fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests;
