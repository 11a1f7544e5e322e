//! `Snapshot::update`: the same answers as a fresh build of the same table, with the work of
//! unchanged services reused.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::Name;
use proptest::prelude::*;

use super::records::services as rich_services;
use super::*;

/// Every name the rich table has, in both zones, plus some that do not exist.
const NAMES: &[&str] = &[
    "svc.global.",
    "shop.svc.global.",
    "other.svc.global.",
    "web.shop.svc.global.",
    "c2.web.shop.svc.global.",
    "_http._tcp.web.shop.svc.global.",
    "_tcp.web.shop.svc.global.",
    "db.shop.svc.global.",
    "db-0.c1.db.shop.svc.global.",
    "c1.db.shop.svc.global.",
    "_pg._tcp.db.shop.svc.global.",
    "empty.shop.svc.global.",
    "vip.shop.svc.global.",
    "api.other.svc.global.",
    "nope.shop.svc.global.",
    "clusterset.local.",
    "dns-version.clusterset.local.",
    "svc.clusterset.local.",
    "shop.svc.clusterset.local.",
    "web.shop.svc.clusterset.local.",
    "db.shop.svc.clusterset.local.",
    "db-1.c1.db.shop.svc.clusterset.local.",
    "c1.db.shop.svc.clusterset.local.",
    "_pg._tcp.db.shop.svc.clusterset.local.",
    "empty.shop.svc.clusterset.local.",
    "vip.shop.svc.clusterset.local.",
    "api.other.svc.clusterset.local.",
];

const TYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::SOA,
    RecordType::TXT,
];

fn wire_query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_str(name).expect("name"), qtype));
    message.to_vec().expect("encode")
}

/// Every answer of `snapshot` to the test names, both paths, as text and bytes.
fn all_answers(snapshot: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let mut wire = Vec::new();
    for qname in NAMES {
        for &qtype in TYPES {
            for rotation in 0..3 {
                let answer = snapshot.answer(&name(qname), qtype, rotation);
                out.push(format!(
                    "{qname} {qtype} {rotation}: {:?} {:?} {:?} {:?}",
                    answer.rcode(),
                    data(&answer),
                    answer.additional().len(),
                    answer.authority().len()
                ));
                let fast = snapshot.answer_wire(&wire_query(qname, qtype), rotation, &mut wire);
                out.push(format!("{qname} {qtype} {rotation}: fast={fast} {wire:?}"));
            }
        }
    }
    out
}

/// The rich table with one service changed, one removed and one added.
fn changed() -> Vec<ServiceRecords> {
    let mut services = rich_services();
    services[0].tiers = vec![ips(&["10.101.0.101"])];
    services[0].clusters.truncate(1);
    services.remove(1);
    services.push(service("other", "api", &["10.104.0.1", "fd00::104"]));
    services
}

#[test]
fn an_update_answers_exactly_as_a_fresh_build() {
    let config = config("svc.global", TTL);
    let before = Snapshot::new(&config, rich_services()).expect("valid snapshot");
    let updated = before.update(&config, changed()).expect("valid update");
    let fresh = Snapshot::new(&config, changed()).expect("valid snapshot");
    assert_eq!(all_answers(&updated), all_answers(&fresh));
    assert_eq!(updated.names(), fresh.names());
    // And back: the removed service and the namespace's names come back.
    let back = updated
        .update(&config, rich_services())
        .expect("valid update");
    assert_eq!(all_answers(&back), all_answers(&before));
    // The update did change something.
    assert_ne!(all_answers(&updated), all_answers(&before));
}

#[test]
fn an_update_reuses_unchanged_services_and_rebuilds_the_rest() {
    let config = config("svc.global", TTL);
    let before = Snapshot::new(&config, rich_services()).expect("valid snapshot");
    let updated = before.update(&config, changed()).expect("valid update");
    let tree = |snapshot: &Snapshot, service: &str| {
        snapshot
            .services
            .get(format!("shop/{service}").as_str())
            .expect("service")
            .trees[0]
            .1
            .clone()
    };
    assert!(Arc::ptr_eq(&tree(&before, "vip"), &tree(&updated, "vip")));
    assert!(Arc::ptr_eq(
        &tree(&before, "empty"),
        &tree(&updated, "empty")
    ));
    assert!(!Arc::ptr_eq(&tree(&before, "web"), &tree(&updated, "web")));
    // Another config shares nothing: the TTL is in every record.
    let longer = ZoneConfig {
        ttl: TTL + 1,
        ..config.clone()
    };
    let rebuilt = updated.update(&longer, changed()).expect("valid update");
    assert!(!Arc::ptr_eq(&tree(&updated, "vip"), &tree(&rebuilt, "vip")));
    let answer = rebuilt.answer(&name("vip.shop.svc.global."), RecordType::A, 0);
    assert_eq!(answer.answers()[0].ttl, TTL + 1);
}

#[test]
fn the_last_service_of_a_namespace_takes_the_namespace_name_with_it() {
    let config = config("svc.global", TTL);
    let before = Snapshot::new(&config, changed()).expect("valid snapshot");
    let other = name("other.svc.global.");
    assert_eq!(
        before.answer(&other, RecordType::A, 0).rcode(),
        ResponseCode::NoError
    );
    let updated = before
        .update(&config, rich_services())
        .expect("valid update");
    assert_eq!(
        updated.answer(&other, RecordType::A, 0).rcode(),
        ResponseCode::NXDomain
    );
}

#[test]
fn an_update_rejects_what_new_rejects_and_leaves_the_old_snapshot_whole() {
    let config = config("svc.global", TTL);
    let before = Snapshot::new(&config, rich_services()).expect("valid snapshot");
    let answers = all_answers(&before);
    let mut duplicated = rich_services();
    duplicated.push(service("SHOP", "WEB", &["10.0.0.9"]));
    assert!(matches!(
        before.update(&config, duplicated),
        Err(Error::DuplicateService { .. })
    ));
    assert!(matches!(
        before.update(&config, vec![service("shop", "bad-", &[])]),
        Err(Error::BadServiceName { .. })
    ));
    assert_eq!(all_answers(&before), answers);
}

proptest! {
    // Each case asks 810 questions; a few dozen tables are plenty.
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any sequence of tables, applied as updates, answers as a fresh build of the last one.
    #[test]
    fn any_update_sequence_answers_as_a_fresh_build(
        steps in prop::collection::vec(
            prop::collection::vec((0usize..4, 0u8..3, prop::bool::ANY), 0..6),
            1..4,
        ),
    ) {
        let config = config("svc.global", TTL);
        let names = ["web", "db", "vip", "api"];
        let table = |step: &Vec<(usize, u8, bool)>| {
            let mut services: Vec<ServiceRecords> = Vec::new();
            for &(which, last, headless) in step {
                if services.iter().any(|s| s.name == names[which]) {
                    continue;
                }
                let mut service = service("shop", names[which], &[&format!("10.0.0.{last}")]);
                if headless {
                    service.kind = ServiceKind::Headless;
                }
                services.push(service);
            }
            services
        };
        let mut snapshot = Snapshot::new(&config, Vec::new()).expect("empty");
        for step in &steps {
            snapshot = snapshot.update(&config, table(step)).expect("valid update");
        }
        let fresh = Snapshot::new(&config, table(steps.last().expect("one step"))).expect("valid");
        prop_assert_eq!(all_answers(&snapshot), all_answers(&fresh));
    }
}

#[test]
fn a_patch_answers_as_a_fresh_build_of_the_patched_table() {
    let config = config("svc.global", TTL);
    let before = Snapshot::new(&config, rich_services()).expect("valid snapshot");
    let upserts: Vec<ServiceRecords> = changed()
        .into_iter()
        .filter(|s| s.name == "web" || s.name == "api" || s.name == "vip")
        .collect();
    let patched = before
        .patch(upserts, &[("SHOP", "db"), ("shop", "never-there")])
        .expect("valid patch");
    let fresh = Snapshot::new(&config, changed()).expect("valid snapshot");
    assert_eq!(all_answers(&patched), all_answers(&fresh));
    assert_eq!(patched.names(), fresh.names());
    // vip was upserted unchanged: its tree is shared, not rebuilt.
    let vip = |s: &Snapshot| s.services.get("shop/vip").expect("vip").trees[0].1.clone();
    assert!(Arc::ptr_eq(&vip(&before), &vip(&patched)));
    // Removing the last service of a namespace removes the namespace's name.
    let emptied = patched
        .patch(Vec::new(), &[("other", "api")])
        .expect("valid patch");
    let other = name("other.svc.global.");
    assert_eq!(
        emptied.answer(&other, RecordType::A, 0).rcode(),
        ResponseCode::NXDomain
    );
    assert_eq!(
        patched.answer(&other, RecordType::A, 0).rcode(),
        ResponseCode::NoError,
        "the patched snapshot itself is unchanged"
    );
}

#[test]
fn a_patch_rejects_a_name_twice_and_bad_names() {
    let config = config("svc.global", TTL);
    let before = Snapshot::new(&config, rich_services()).expect("valid snapshot");
    let twice = vec![
        service("shop", "new", &["10.0.0.1"]),
        service("Shop", "NEW", &["10.0.0.2"]),
    ];
    assert!(matches!(
        before.patch(twice, &[]),
        Err(Error::DuplicateService { .. })
    ));
    assert!(matches!(
        before.patch(vec![service("shop", "-bad", &[])], &[]),
        Err(Error::BadServiceName { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any sequence of patches answers as a fresh build of the table they lead to.
    #[test]
    fn any_patch_sequence_answers_as_a_fresh_build(
        steps in prop::collection::vec(
            prop::collection::vec((0usize..4, prop::option::of((0u8..3, prop::bool::ANY))), 0..5),
            1..5,
        ),
    ) {
        let config = config("svc.global", TTL);
        let names = ["web", "db", "vip", "api"];
        let namespaces = ["shop", "shop", "shop", "other"];
        let make = |which: usize, last: u8, headless: bool| {
            let mut s = service(namespaces[which], names[which], &[&format!("10.0.0.{last}")]);
            if headless {
                s.kind = ServiceKind::Headless;
            }
            s
        };
        let mut table: std::collections::BTreeMap<usize, ServiceRecords> = Default::default();
        let mut snapshot = Snapshot::new(&config, Vec::new()).expect("empty");
        for step in &steps {
            let mut upserts = Vec::new();
            let mut removals = Vec::new();
            let mut touched = std::collections::BTreeSet::new();
            for &(which, change) in step {
                if !touched.insert(which) {
                    continue;
                }
                match change {
                    Some((last, headless)) => {
                        let s = make(which, last, headless);
                        table.insert(which, s.clone());
                        upserts.push(s);
                    }
                    None => {
                        table.remove(&which);
                        removals.push((namespaces[which], names[which]));
                    }
                }
            }
            snapshot = snapshot.patch(upserts, &removals).expect("valid patch");
        }
        let fresh = Snapshot::new(&config, table.into_values().collect()).expect("valid");
        prop_assert_eq!(all_answers(&snapshot), all_answers(&fresh));
    }
}
