//! TCP MSS clamping: rewrites the maximum segment size option of TCP SYNs that cross the
//! tunnel, so that neither end sends segments larger than the tunnel carries.
//!
//! Pure byte surgery on one packet, called by [`crate::dataplane`] on packets in both
//! directions. Hosts behind a gateway (pods on a 1500-byte bridge) announce an MSS for their
//! own link; without clamping their full-size segments exceed the TUN MTU, and the transfer
//! stalls wherever ICMP "fragmentation needed" is filtered (PMTU black holes). The checksum is
//! patched incrementally (RFC 1624), so the rest of the segment is never read.
//!
//! Covers IPv4 (unfragmented or first fragment) and IPv6 with TCP as the first next header;
//! SYNs behind IPv6 extension headers pass unchanged.

const TCP: u8 = 6;
const SYN: u8 = 0x02;
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_MSS: u8 = 2;

/// The largest MSS that fits a tunnel of `mtu` bytes: the MTU minus the IP and TCP headers
/// (20 + 20 for IPv4, 40 + 20 for IPv6).
pub fn limit(mtu: u16, ipv6: bool) -> u16 {
    mtu.saturating_sub(if ipv6 { 60 } else { 40 })
}

/// If `packet` is a TCP SYN (or SYN-ACK) announcing an MSS above the limit for `mtu`, lowers
/// it to the limit and fixes the TCP checksum. Returns whether the packet changed. Anything
/// malformed is left alone (the receiver will judge it).
pub fn clamp(packet: &mut [u8], mtu: u16) -> bool {
    let Some((tcp, ipv6)) = tcp_offset(packet) else {
        return false;
    };
    let Some(header) = packet.get(tcp..tcp + 20) else {
        return false;
    };
    if header[13] & SYN == 0 {
        return false;
    }
    let data_offset = usize::from(header[12] >> 4) * 4;
    if data_offset < 20 || packet.len() < tcp + data_offset {
        return false;
    }
    let max = limit(mtu, ipv6);
    let mut i = tcp + 20;
    let end = tcp + data_offset;
    while i < end {
        match packet[i] {
            OPTION_END => return false,
            OPTION_NOP => i += 1,
            kind => {
                let Some(&len) = packet.get(i + 1).filter(|_| i + 1 < end) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || i + len > end {
                    return false;
                }
                if kind == OPTION_MSS && len == 4 {
                    let old = u16::from_be_bytes([packet[i + 2], packet[i + 3]]);
                    if old <= max {
                        return false;
                    }
                    packet[i + 2..i + 4].copy_from_slice(&max.to_be_bytes());
                    // The checksum sums 16-bit words from the start of the TCP header; a value
                    // at an odd offset straddles two words, which sums as its byte swap.
                    let (old, new) = if (i + 2 - tcp).is_multiple_of(2) {
                        (old, max)
                    } else {
                        (old.swap_bytes(), max.swap_bytes())
                    };
                    let at = tcp + 16;
                    let checksum = u16::from_be_bytes([packet[at], packet[at + 1]]);
                    let patched = patch_checksum(checksum, old, new);
                    packet[at..at + 2].copy_from_slice(&patched.to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// Where the TCP header starts, and whether the packet is IPv6; `None` if it is not TCP (or
/// not a first fragment).
fn tcp_offset(packet: &[u8]) -> Option<(usize, bool)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let fragment_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
            (ihl >= 20 && packet[9] == TCP && fragment_offset == 0).then_some((ihl, false))
        }
        6 if packet.len() >= 40 => (packet[6] == TCP).then_some((40, true)),
        _ => None,
    }
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), in one's complement arithmetic.
fn patch_checksum(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests;
