//! Packet capture on the lab's wan: runs `tcpdump` in a namespace and parses the pcap it
//! writes (classic pcap; Ethernet or Linux cooked link types; IPv4 with UDP/TCP).
//!
//! The parser is pure ([`parse_pcap`]); [`Capture`] is the thin tcpdump shell. Used by the
//! story to show that traffic between gateways is WireGuard only and never carries payloads
//! in clear.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::wait::{self, poll_until};

/// How long tcpdump may take to open the interface and say "listening on".
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `stop` waits for in-flight frames to reach the file.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long tcpdump may take to flush and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// pcap link types (LINKTYPE_* in the tcpdump.org registry).
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_LINUX_SLL: u32 = 113;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// One captured frame, with its IPv4 view when it is IPv4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The whole captured frame (link header included), for searching bytes in clear.
    pub frame: Vec<u8>,
    pub ipv4: Option<Ipv4>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub transport: Transport,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: Vec<u8>,
    },
    Tcp {
        src_port: u16,
        dst_port: u16,
        payload: Vec<u8>,
    },
    /// Another protocol, or a UDP/TCP header cut short by the snap length.
    Other { protocol: u8 },
}

impl Packet {
    /// Whether `needle` occurs anywhere in the captured frame.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.frame.windows(needle.len()).any(|w| w == needle)
    }
}

/// Why a pcap file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcapError {
    TooShort { len: usize },
    BadMagic { magic: u32 },
    UnsupportedLinkType { link_type: u32 },
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => {
                write!(f, "pcap file of {len} bytes has no complete global header")
            }
            Self::BadMagic { magic } => write!(f, "not a classic pcap file (magic {magic:#010x})"),
            Self::UnsupportedLinkType { link_type } => {
                write!(f, "unsupported pcap link type {link_type}")
            }
        }
    }
}

impl std::error::Error for PcapError {}

/// Parses a classic pcap file. A record cut short at the end of the file (a capture stopped
/// mid-write) ends the list instead of failing it.
pub fn parse_pcap(bytes: &[u8]) -> Result<Vec<Packet>, PcapError> {
    if bytes.len() < 24 {
        return Err(PcapError::TooShort { len: bytes.len() });
    }
    let magic_le = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let little_endian = match magic_le {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        magic => return Err(PcapError::BadMagic { magic }),
    };
    let u32_at = |at: usize| {
        let b = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if little_endian {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let link_type = u32_at(20) & 0x0fff_ffff;
    if link_type != LINKTYPE_ETHERNET && link_type != LINKTYPE_LINUX_SLL {
        return Err(PcapError::UnsupportedLinkType { link_type });
    }
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let captured = u32_at(at + 8) as usize;
        let start = at + 16;
        let Some(frame) = start
            .checked_add(captured)
            .and_then(|end| bytes.get(start..end))
        else {
            break;
        };
        packets.push(Packet {
            frame: frame.to_vec(),
            ipv4: ipv4_of_frame(link_type, frame),
        });
        at = start + captured;
    }
    Ok(packets)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ipv4_of_frame(link_type: u32, frame: &[u8]) -> Option<Ipv4> {
    let (mut ethertype, mut at) = match link_type {
        LINKTYPE_ETHERNET => (be16(frame, 12)?, 14),
        _ => (be16(frame, 14)?, 16),
    };
    while ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, at + 2)?;
        at += 4;
    }
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    parse_ipv4(frame.get(at..)?)
}

fn parse_ipv4(ip: &[u8]) -> Option<Ipv4> {
    let version_ihl = *ip.first()?;
    if version_ihl >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    let total_len = usize::from(be16(ip, 2)?);
    let protocol = *ip.get(9)?;
    let src = Ipv4Addr::new(*ip.get(12)?, ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(*ip.get(16)?, ip[17], ip[18], ip[19]);
    // Ethernet pads short frames: the IPv4 total length, not the frame, ends the packet.
    let end = total_len.clamp(header_len, ip.len().max(header_len));
    let body = ip.get(header_len..end.min(ip.len())).unwrap_or(&[]);
    let transport = transport_of(protocol, body).unwrap_or(Transport::Other { protocol });
    Some(Ipv4 {
        src,
        dst,
        transport,
    })
}

fn transport_of(protocol: u8, body: &[u8]) -> Option<Transport> {
    let src_port = be16(body, 0)?;
    let dst_port = be16(body, 2)?;
    match protocol {
        IPPROTO_UDP => Some(Transport::Udp {
            src_port,
            dst_port,
            payload: body.get(8..)?.to_vec(),
        }),
        IPPROTO_TCP => {
            let offset = usize::from(*body.get(12)? >> 4) * 4;
            Some(Transport::Tcp {
                src_port,
                dst_port,
                payload: body.get(offset..)?.to_vec(),
            })
        }
        _ => None,
    }
}

/// A running `tcpdump -i IFACE -w FILE -U` inside a namespace.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

impl Capture {
    /// Starts tcpdump and returns once it reports that it is listening.
    pub fn start(ns: &str, iface: &str, file: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(file);
        let stderr_path = file.with_extension("tcpdump.log");
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-i",
                iface,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
            ])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting tcpdump on {iface} in {ns}"))?;
        let mut capture = Self {
            child: Some(child),
            file: file.to_owned(),
        };
        poll_until(
            &format!("tcpdump to listen on {iface} in {ns}"),
            START_TIMEOUT,
            || {
                let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                if said.contains("listening on") {
                    return Ok(());
                }
                if let Some(child) = capture.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Err(format!("tcpdump exited ({status}): {}", said.trim()));
                }
                Err(said.trim().to_owned())
            },
        )?;
        Ok(capture)
    }

    /// Stops tcpdump (SIGTERM makes it flush and close the file) and parses what it wrote.
    /// Frames still queued in the kernel when tcpdump gets SIGTERM are lost, so this first
    /// waits (bounded by [`SETTLE_TIMEOUT`]) until the file stops growing for two polls.
    pub fn stop(mut self) -> anyhow::Result<Vec<Packet>> {
        let deadline = wait::Deadline::after(SETTLE_TIMEOUT);
        let size = |file: &Path| std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let (mut last, mut stable_polls) = (size(&self.file), 0);
        while stable_polls < 2 && !deadline.passed() {
            std::thread::sleep(wait::POLL_PERIOD);
            let now = size(&self.file);
            stable_polls = if now == last { stable_polls + 1 } else { 0 };
            last = now;
        }
        self.terminate();
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        parse_pcap(&bytes).with_context(|| format!("parsing {}", self.file.display()))
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own unreaped child (`ip` exec'd into tcpdump, same pid).
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = wait::Deadline::after(STOP_TIMEOUT);
        while !deadline.passed() && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.terminate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = 20 + 8 + payload.len();
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, IPPROTO_UDP, 0, 0];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&sport.to_be_bytes());
        frame.extend_from_slice(&dport.to_be_bytes());
        frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(payload);
        frame
    }

    fn ipv4_tcp(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = 20 + 20 + payload.len();
        let mut ip = vec![
            0x45,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            64,
            IPPROTO_TCP,
            0,
            0,
            10,
            101,
            0,
            10,
            10,
            102,
            0,
            10,
        ];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        frame.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&80u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[12] = 5 << 4;
        frame.extend_from_slice(&tcp);
        frame.extend_from_slice(payload);
        frame
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut file = Vec::new();
        file.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        file.extend_from_slice(&2u16.to_le_bytes());
        file.extend_from_slice(&4u16.to_le_bytes());
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&262_144u32.to_le_bytes());
        file.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        for frame in frames {
            file.extend_from_slice(&[0; 8]);
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(frame);
        }
        file
    }

    #[test]
    fn parses_udp_tcp_and_non_ip_frames_in_order() {
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&0x0806u16.to_be_bytes());
        arp.extend_from_slice(&[0; 28]);
        let file = pcap(&[
            ipv4_udp(
                [10, 100, 0, 11],
                [10, 100, 0, 12],
                51820,
                51820,
                &[4, 0, 0, 0, 9, 9],
            ),
            arp,
            ipv4_tcp(b"hello from c1"),
        ]);
        let packets = parse_pcap(&file).unwrap();
        assert_eq!(packets.len(), 3);
        let udp = packets[0].ipv4.as_ref().unwrap();
        assert_eq!(udp.src, Ipv4Addr::new(10, 100, 0, 11));
        assert_eq!(udp.dst, Ipv4Addr::new(10, 100, 0, 12));
        assert_eq!(
            udp.transport,
            Transport::Udp {
                src_port: 51820,
                dst_port: 51820,
                payload: vec![4, 0, 0, 0, 9, 9]
            }
        );
        assert_eq!(packets[1].ipv4, None);
        let tcp = packets[2].ipv4.as_ref().unwrap();
        assert_eq!(
            tcp.transport,
            Transport::Tcp {
                src_port: 80,
                dst_port: 40000,
                payload: b"hello from c1".to_vec()
            }
        );
        assert!(packets[2].contains(b"from c1"));
        assert!(!packets[0].contains(b"from c1"));
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut frame = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"ab");
        frame.extend_from_slice(&[0; 16]);
        let packets = parse_pcap(&pcap(&[frame])).unwrap();
        let Transport::Udp { payload, .. } = &packets[0].ipv4.as_ref().unwrap().transport else {
            panic!("not udp")
        };
        assert_eq!(payload, b"ab");
    }

    #[test]
    fn truncated_last_record_ends_the_list_and_bad_headers_are_refused() {
        let mut file = pcap(&[ipv4_tcp(b"x"), ipv4_tcp(b"y")]);
        file.truncate(file.len() - 3);
        assert_eq!(parse_pcap(&file).unwrap().len(), 1);
        assert_eq!(
            parse_pcap(&file[..10]),
            Err(PcapError::TooShort { len: 10 })
        );
        let mut bad = file.clone();
        bad[0] = 0;
        assert!(matches!(parse_pcap(&bad), Err(PcapError::BadMagic { .. })));
        let mut other_link = file;
        other_link[20] = 228;
        assert_eq!(
            parse_pcap(&other_link),
            Err(PcapError::UnsupportedLinkType { link_type: 228 })
        );
    }
}
