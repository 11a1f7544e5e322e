//! The fast path answers exactly as the slow path does, and declines what it cannot answer.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name};

use super::records::records_snapshot;
use super::*;

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        Name::from_str(name).expect("test name"),
        qtype,
    ));
    if let Some(payload) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(payload);
        message.set_edns(opt);
    }
    message.to_vec().expect("encode")
}

fn rendered(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{} {} {}", LowerName::new(&r.name), r.ttl, r.data))
        .collect()
}

#[test]
fn fast_path_answers_match_the_slow_path() {
    let snapshot = records_snapshot();
    let mut out = Vec::new();
    let names = [
        ("web.shop.svc.global.", RecordType::A),
        ("WEB.Shop.svc.global.", RecordType::AAAA),
        ("c2.web.shop.svc.global.", RecordType::AAAA),
        ("c1.db.shop.svc.global.", RecordType::A),
        ("db-0.c2.db.shop.svc.global.", RecordType::A),
        ("_http._tcp.web.shop.svc.global.", RecordType::SRV),
        ("_pg._tcp.db.shop.svc.clusterset.local.", RecordType::SRV),
        ("dns-version.clusterset.local.", RecordType::TXT),
        ("svc.global.", RecordType::SOA),
        ("svc.global.", RecordType::NS),
        ("shop.svc.global.", RecordType::A),
        ("web.shop.svc.global.", RecordType::TXT),
        ("nope.shop.svc.global.", RecordType::A),
        ("x.c1.web.shop.svc.clusterset.local.", RecordType::AAAA),
        ("empty.shop.svc.clusterset.local.", RecordType::A),
    ];
    for (name, qtype) in names {
        for edns in [None, Some(1232), Some(4096)] {
            for rotation in 0..4 {
                let what = format!("{name} {qtype} edns={edns:?} rotation={rotation}");
                let packet = query(name, qtype, edns);
                assert!(
                    snapshot.answer_wire(&packet, rotation, &mut out),
                    "fast path for {what}"
                );
                let reply = Message::from_vec(&out).expect("decodable fast answer");
                let slow = snapshot.answer(&name.parse().expect("name"), qtype, rotation);
                assert_eq!(reply.metadata.id, 0xbeef, "{what}");
                assert_eq!(reply.metadata.message_type, MessageType::Response, "{what}");
                assert!(reply.metadata.recursion_desired, "RD echoed: {what}");
                assert!(!reply.metadata.recursion_available, "{what}");
                assert!(!reply.metadata.truncation, "{what}");
                assert_eq!(reply.metadata.response_code, slow.rcode(), "{what}");
                assert_eq!(reply.metadata.authoritative, slow.authoritative(), "{what}");
                assert_eq!(rendered(&reply.answers), rendered(slow.answers()), "{what}");
                assert_eq!(
                    rendered(&reply.authorities),
                    rendered(slow.authority()),
                    "{what}"
                );
                assert_eq!(
                    rendered(&reply.additionals),
                    rendered(slow.additional()),
                    "{what}"
                );
                // hickory's encoder lowercases the question, so the case echo is checked over
                // the wire with a hand-made packet (tests/serve.rs).
                let echoed: Vec<String> =
                    reply.queries.iter().map(|q| q.name().to_string()).collect();
                assert_eq!(
                    echoed,
                    [name.to_ascii_lowercase()],
                    "question echoed: {what}"
                );
                assert_eq!(
                    reply.edns.map(|e| e.max_payload()),
                    edns.map(|p| p.clamp(512, 1232)),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn fast_path_declines_what_the_slow_path_must_answer() {
    let snapshot = records_snapshot();
    let mut out = Vec::new();
    let plain = query("web.shop.svc.global.", RecordType::A, None);
    assert!(
        snapshot.answer_wire(&plain, 0, &mut out),
        "the baseline is answered"
    );

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("ANY", query("web.shop.svc.global.", RecordType::ANY, None)),
        ("AXFR", query("svc.global.", RecordType::AXFR, None)),
        (
            "outside the zones",
            query("example.com.", RecordType::A, None),
        ),
        (
            "outside, sharing a suffix",
            query("xsvc.global.", RecordType::A, None),
        ),
        ("empty", Vec::new()),
        ("header only", plain[..12].to_vec()),
        ("truncated", plain[..plain.len() - 1].to_vec()),
        ("trailing garbage", [&plain[..], &[0]].concat()),
    ];
    let mut two = Message::from_vec(&plain).expect("decode");
    two.add_query(Query::query(
        Name::from_str("db.shop.svc.global.").expect("name"),
        RecordType::A,
    ));
    cases.push(("two questions", two.to_vec().expect("encode")));
    let mut status = plain.clone();
    status[2] |= 2 << 3;
    cases.push(("opcode STATUS", status));
    let mut response = plain.clone();
    response[2] |= 0x80;
    cases.push(("a response", response));
    let mut chaos = Message::new(1, MessageType::Query, OpCode::Query);
    let mut q = Query::query(
        Name::from_str("web.shop.svc.global.").expect("name"),
        RecordType::A,
    );
    q.set_query_class(DNSClass::CH);
    chaos.add_query(q);
    cases.push(("class CH", chaos.to_vec().expect("encode")));
    let mut pointer = plain[..12].to_vec();
    pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    cases.push(("compression loop", pointer));
    let mut v1 = Message::from_vec(&plain).expect("decode");
    let mut edns = Edns::new();
    edns.set_version(1);
    v1.set_edns(edns);
    cases.push(("EDNS version 1", v1.to_vec().expect("encode")));
    let mut with_option = query("web.shop.svc.global.", RecordType::A, Some(1232));
    let last = with_option.len();
    with_option[last - 1] = 4; // rdlength 4: an option follows
    with_option.extend_from_slice(&[0, 10, 0, 0]);
    cases.push(("EDNS option", with_option));

    for (what, packet) in cases {
        assert!(
            !snapshot.answer_wire(&packet, 0, &mut out),
            "declines {what}"
        );
    }

    // An answer larger than the client's buffer goes to the slow path, which truncates.
    let mut config = config("svc.global", TTL);
    config.max_addresses = 0;
    let mut big = service("shop", "big", &[]);
    big.tiers = vec![(0..60u8).map(|i| IpAddr::from([10, 1, 0, i])).collect()];
    let snapshot = Snapshot::new(&config, vec![big]).expect("valid snapshot");
    let plain = query("big.shop.svc.global.", RecordType::A, None);
    assert!(
        !snapshot.answer_wire(&plain, 0, &mut out),
        "over 512 octets"
    );
    let large = query("big.shop.svc.global.", RecordType::A, Some(1232));
    assert!(
        snapshot.answer_wire(&large, 0, &mut out),
        "fits 1232 octets"
    );
    assert!(out.len() <= 1232);
}

#[test]
fn fast_path_rotates_with_the_counter_and_sees_the_new_serial() {
    let mut snapshot = records_snapshot();
    let mut out = Vec::new();
    let packet = query("web.shop.svc.global.", RecordType::A, None);
    let mut firsts = std::collections::BTreeSet::new();
    for rotation in 0..3 {
        assert!(snapshot.answer_wire(&packet, rotation, &mut out));
        let reply = Message::from_vec(&out).expect("decode");
        firsts.insert(reply.answers[1].data.to_string());
    }
    assert_eq!(
        firsts.len(),
        2,
        "the remote group of two rotates: {firsts:?}"
    );

    snapshot.set_serial(77);
    let nx = query("nope.svc.global.", RecordType::A, None);
    assert!(snapshot.answer_wire(&nx, 0, &mut out));
    let reply = Message::from_vec(&out).expect("decode");
    let [soa] = &reply.authorities[..] else {
        panic!("one SOA: {:?}", reply.authorities);
    };
    assert!(matches!(&soa.data, RData::SOA(s) if s.serial == 77));
    let apex = query("svc.global.", RecordType::SOA, None);
    assert!(snapshot.answer_wire(&apex, 0, &mut out));
    let reply = Message::from_vec(&out).expect("decode");
    assert!(matches!(&reply.answers[0].data, RData::SOA(s) if s.serial == 77));
}

mod hostile {
    use proptest::prelude::*;

    use super::*;

    /// A valid query for one of the snapshot's names, to mutate.
    fn seed() -> impl Strategy<Value = Vec<u8>> {
        prop::sample::select(vec![
            query("web.shop.svc.global.", RecordType::A, None),
            query(
                "_pg._tcp.db.shop.svc.clusterset.local.",
                RecordType::SRV,
                Some(1232),
            ),
            query("nope.svc.global.", RecordType::AAAA, Some(512)),
        ])
    }

    proptest! {
        /// Arbitrary bytes, and valid queries with bytes overwritten, cut or appended, never
        /// make the fast path panic; whatever it answers is a decodable response to the id
        /// asked, within 512 octets unless the query carried an OPT record.
        #[test]
        fn fast_path_survives_hostile_bytes(
            random in prop::collection::vec(any::<u8>(), 0..300),
            base in seed(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            tail in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let snapshot = records_snapshot();
            let mut out = Vec::new();
            prop_assert!(!snapshot.answer_wire(&random, 0, &mut out) || random.len() >= 12);

            let mut mutated = base.clone();
            for (at, byte) in &edits {
                let i = at.index(mutated.len());
                mutated[i] = *byte;
            }
            let mut variants = vec![mutated.clone()];
            variants.push(mutated[..cut.index(mutated.len() + 1)].to_vec());
            variants.push([&mutated[..], &tail[..]].concat());
            variants.push(random);
            for packet in variants {
                if snapshot.answer_wire(&packet, 7, &mut out) {
                    let reply = Message::from_vec(&out);
                    prop_assert!(reply.is_ok(), "undecodable answer to {:?}", packet);
                    let reply = reply.expect("checked");
                    prop_assert_eq!(reply.metadata.message_type, MessageType::Response);
                    prop_assert_eq!(&out[..2], &packet[..2], "id echoed");
                    let limit = if reply.edns.is_some() { 1232 } else { 512 };
                    prop_assert!(out.len() <= limit);
                }
            }
        }
    }
}
