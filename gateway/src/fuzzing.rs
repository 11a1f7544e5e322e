//! Entry points for the fuzz targets in `tests/fuzz/` (public with the `fuzzing` feature):
//! feed arbitrary bytes to the data plane exactly where remote and local input enter it.
//!
//! [`datagram`] is what arrives on the WireGuard UDP port (it also goes through the MSS clamp
//! and probe parser as if it were a TUN packet, and is replayed once, as an attacker would).
//! [`translate`] is a packet through the prefix translation both ways (a TUN read on its way
//! out, a decrypted packet on its way in).
//! Nothing here may panic; the unit test below replays the committed corpus, so CI covers it
//! without a fuzzer.

use std::net::SocketAddr;

use crate::dataplane::{DataPlane, Io};
use crate::nat::{Mapping, Translator, Verdict};
use crate::{PeerSpec, mss, probe, public_key};

/// Our key and the one peer's; fixed so the corpus can hold real handshakes for them.
pub const OUR_PRIVATE_KEY: [u8; 32] = [1; 32];
pub const PEER_PRIVATE_KEY: [u8; 32] = [2; 32];

/// One datagram from the network, then the same bytes as a TUN packet.
pub fn datagram(data: &[u8]) {
    let mut plane = DataPlane::new(OUR_PRIVATE_KEY, Some(25), 1420);
    let peer = PeerSpec {
        public_key: public_key(&PEER_PRIVATE_KEY),
        endpoint: SocketAddr::from(([10, 0, 0, 2], 51820)),
        allowed_ips: "10.2.0.0/16".parse().into_iter().collect(),
    };
    if plane.set_peers(vec![peer]).is_err() {
        return;
    }
    let from = SocketAddr::from(([10, 0, 0, 66], 4444));
    let mut io = Discard;
    plane.handle_datagram(from, data, &mut io);
    plane.handle_datagram(from, data, &mut io);
    while plane.poll_probe_reply().is_some() {}
    let mut packet = data.to_vec();
    let _ = probe::Message::parse(&packet);
    mss::clamp(&mut packet, 1420);
    plane.handle_tun_packet(&mut packet, &mut io);
    plane.handle_timers(&mut io);
}

/// The translation [`translate`] applies, as (local, global): one IPv4 and one IPv6 mapping.
pub const TRANSLATION: [(&str, &str); 2] = [
    ("10.244.0.0/16", "100.64.0.0/16"),
    ("fd00:10:244::/56", "fd63:6177:0:100::/56"),
];

/// One packet through [`Translator::egress`] and [`Translator::ingress`] with
/// [`TRANSLATION`]. Beyond not panicking, checks what holds for any input: a packet that was
/// not translated is byte for byte as it was, and a translated one is translated back by the
/// list with local and global swapped (the same headers parse, the same addresses match).
///
/// # Panics
/// When one of those properties is violated: that is the finding.
pub fn translate(data: &[u8]) {
    let mappings = |swap: bool| {
        TRANSLATION
            .iter()
            .map(|(l, g)| {
                let (local, global) = if swap { (g, l) } else { (l, g) };
                Mapping {
                    local: local.parse().expect("literal"),
                    global: global.parse().expect("literal"),
                }
            })
            .collect()
    };
    let forward = Translator::new(mappings(false)).expect("a valid list");
    let inverse = Translator::new(mappings(true)).expect("a valid list");
    type Way = fn(&Translator, &mut [u8]) -> Verdict;
    let ways: [Way; 2] = [Translator::egress, Translator::ingress];
    for way in ways {
        let mut packet = data.to_vec();
        match way(&forward, &mut packet) {
            Verdict::Translated => {
                assert_eq!(packet.len(), data.len());
                assert_eq!(
                    way(&inverse, &mut packet),
                    Verdict::Translated,
                    "the inverse list translates back"
                );
            }
            Verdict::Unchanged | Verdict::Malformed => {
                assert_eq!(packet, data, "untranslated packets are untouched");
            }
        }
    }
}

struct Discard;

impl Io for Discard {
    fn send(&mut self, _to: SocketAddr, _datagram: &[u8]) {}
    fn write_tun(&mut self, _packet: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed corpus of the `gateway_datagram` fuzz target, replayed.
    #[test]
    fn fuzz_corpus_replays_without_panicking() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fuzz/corpus/gateway_datagram"
        );
        let mut replayed = 0;
        for entry in std::fs::read_dir(dir).expect("the corpus is committed") {
            let data = std::fs::read(entry.expect("readable dir").path()).expect("readable");
            datagram(&data);
            replayed += 1;
        }
        assert!(replayed >= 5, "corpus has {replayed} inputs");
    }

    /// The committed corpus of the `gateway_translate` fuzz target, replayed (it is written
    /// by `nat::tests::write_translate_corpus`).
    #[test]
    fn translate_corpus_replays_without_panicking() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fuzz/corpus/gateway_translate"
        );
        let mut replayed = 0;
        for entry in std::fs::read_dir(dir).expect("the corpus is committed") {
            let data = std::fs::read(entry.expect("readable dir").path()).expect("readable");
            translate(&data);
            replayed += 1;
        }
        assert!(replayed >= 5, "corpus has {replayed} inputs");
    }

    /// Regenerates the corpus's seeds that need real cryptography: a handshake initiation
    /// from the peer's key to ours (so the fuzzer starts past the MAC and DH checks).
    /// A tool, not a check: run it with
    /// `CAUSEWAY_WRITE_CORPUS=1 cargo test -p causeway-gateway --features fuzzing write_seed_corpus -- --ignored`.
    /// Without the variable it does nothing, so CI's `--include-ignored` leaves the tree clean.
    #[test]
    #[ignore = "writes into tests/fuzz/corpus; run by hand with CAUSEWAY_WRITE_CORPUS=1"]
    fn write_seed_corpus() {
        if std::env::var_os("CAUSEWAY_WRITE_CORPUS").is_none() {
            eprintln!("write_seed_corpus: set CAUSEWAY_WRITE_CORPUS=1 to rewrite the seed");
            return;
        }
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fuzz/corpus/gateway_datagram"
        );
        std::fs::create_dir_all(dir).unwrap();
        let mut peer = DataPlane::new(PEER_PRIVATE_KEY, None, 1420);
        peer.set_peers(vec![PeerSpec {
            public_key: public_key(&OUR_PRIVATE_KEY),
            endpoint: SocketAddr::from(([10, 0, 0, 1], 51820)),
            allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
        }])
        .unwrap();
        struct Keep(Vec<Vec<u8>>);
        impl Io for Keep {
            fn send(&mut self, _to: SocketAddr, datagram: &[u8]) {
                self.0.push(datagram.to_vec());
            }
            fn write_tun(&mut self, _packet: &[u8]) {}
        }
        let mut keep = Keep(Vec::new());
        let mut packet = vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 2, 0, 1, 10, 1, 0, 1,
        ];
        peer.handle_tun_packet(&mut packet, &mut keep);
        std::fs::write(format!("{dir}/handshake_initiation"), &keep.0[0]).unwrap();
    }
}
