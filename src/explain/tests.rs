use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::model::ClusterInfo;
use crate::model::fixtures::{id, web};
use crate::select::Health;

fn cluster(n: u8, region: &str, zone: &str) -> ClusterInfo {
    ClusterInfo {
        id: id(&format!("c{n}")),
        wg_endpoint: SocketAddr::from(([10, 100, 0, 10 + n], 51820)),
        wg_public_key: [n; 32],
        cidrs: vec![format!("10.10{n}.0.0/16").parse().unwrap()],
        region: Some(region.into()),
        zone: Some(zone.into()),
        global: vec![],
    }
}

fn answer() -> DnsAnswer {
    DnsAnswer {
        server: "127.0.0.1:53".parse().unwrap(),
        rcode: Some("NOERROR".into()),
        records: vec!["10.101.0.10".into()],
        error: None,
    }
}

/// c1 (asking, eu/eu-a) exports one ready and one unready endpoint; c2 is in its zone, c3
/// in its region but unreachable, c4 and c5 remote (c4 measured at 7 ms, c5 not measured).
fn view(t0: Instant) -> GatewayView {
    let mut v = GatewayView::new(id("c1"));
    let clusters = [
        cluster(1, "eu", "eu-a"),
        cluster(2, "eu", "eu-a"),
        cluster(3, "eu", "eu-b"),
        cluster(4, "us", "us-a"),
        cluster(5, "ap", "ap-a"),
    ];
    for c in clusters {
        v.sync.view.clusters.insert(c.id.clone(), c);
    }
    v.local = vec![web(&[("10.101.0.10", true), ("10.101.0.11", false)])];
    for (c, addr) in [
        ("c2", "10.102.0.10"),
        ("c3", "10.103.0.10"),
        ("c4", "10.104.0.10"),
        ("c5", "10.105.0.10"),
    ] {
        v.sync
            .view
            .exports
            .insert((id(c), web(&[]).service), web(&[(addr, true)]));
    }
    v.sync.view.revision = 42;
    v.sync.connected = true;
    v.health = Health {
        reachable: Some(BTreeSet::from([id("c1"), id("c2"), id("c4"), id("c5")])),
        rtt: [(id("c4"), Duration::from_millis(7))].into_iter().collect(),
        ..Health::default()
    };
    v.last_update = Some(t0);
    v
}

#[test]
fn names_parse_into_services_or_say_why_not() {
    let ok = |name: &str| parse_name(name, "svc.global", Some("clusterset.local"));
    let web = ServiceKey::new("shop", "web").unwrap();
    assert_eq!(ok("web.shop.svc.global"), Ok(web.clone()));
    assert_eq!(ok("WEB.shop.svc.global."), Ok(web.clone()));
    assert_eq!(ok("_http._tcp.web.shop.svc.global"), Ok(web.clone()));
    assert_eq!(ok("web.shop.svc.clusterset.local"), Ok(web));
    assert!(matches!(
        ok("web.shop.example.com"),
        Err(ExplainError::NotInZone { .. })
    ));
    assert!(matches!(
        ok("c1.web.shop.svc.global"),
        Err(ExplainError::NotAService { .. })
    ));
    assert!(matches!(
        ok("svc.global"),
        Err(ExplainError::NotInZone { .. })
    ));
    assert!(matches!(
        ok("web..svc.global"),
        Err(ExplainError::NotAService { .. })
    ));
}

#[test]
fn every_candidate_carries_its_verdict_tier_group_and_reason() {
    let t0 = crate::clock::now();
    let v = view(t0);
    let service = ServiceKey::new("shop", "web").unwrap();
    let e = explain(
        &v,
        &service,
        "web.shop.svc.global",
        "A",
        answer(),
        t0 + Duration::from_secs(3),
    )
    .unwrap();
    type Row = (String, String, String, Option<String>, Option<usize>);
    let rows: Vec<Row> = e
        .candidates
        .iter()
        .map(|c| {
            (
                c.cluster.clone(),
                c.address.to_string(),
                c.tier.clone(),
                c.reason.clone(),
                c.group,
            )
        })
        .collect();
    let row = |c: &str, a: &str, tier: &str, reason: Option<&str>, group: Option<usize>| {
        (
            c.to_owned(),
            a.to_owned(),
            tier.to_owned(),
            reason.map(str::to_owned),
            group,
        )
    };
    assert_eq!(
        rows,
        [
            row("c1", "10.101.0.10", "own", None, Some(0)),
            row("c2", "10.102.0.10", "zone", None, Some(1)),
            row("c4", "10.104.0.10", "remote", None, Some(2)),
            row("c5", "10.105.0.10", "remote", None, Some(3)),
            row("c1", "10.101.0.11", "own", Some("not-ready"), None),
            row("c3", "10.103.0.10", "region", Some("unreachable"), None),
        ]
    );
    assert_eq!(e.candidates[2].rtt_ms, Some(7.0));
    assert!(
        e.candidates[2].why.contains("7.0 ms"),
        "{}",
        e.candidates[2].why
    );
    assert!(e.candidates[3].why.contains("not measured"));
    assert!(
        e.candidates[5]
            .why
            .contains("unreachable through its tunnel")
    );
    assert_eq!(e.kind, "headless");
    assert_eq!(e.revision, 42);
    assert_eq!(e.data_age_seconds, Some(3.0));
    assert!(e.conflicting_clusters.is_empty());

    let text = render(&e);
    assert!(
        text.contains("answer from 127.0.0.1:53: NOERROR 10.101.0.10"),
        "{text}"
    );
    assert!(text.contains("revision 42, 3.0s old"), "{text}");
    let table: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|l| !l.starts_with("CLUSTER"))
        .skip(1)
        .map(|l| l.split_whitespace().take(6).collect())
        .collect();
    assert_eq!(table.len(), 6, "{text}");
    assert_eq!(table[0], ["c1", "10.101.0.10", "answered", "0", "own", "-"]);
    assert_eq!(
        table[5],
        ["c3", "10.103.0.10", "excluded", "-", "region", "-"]
    );

    let nope = ServiceKey::new("shop", "nope").unwrap();
    assert!(matches!(
        explain(&v, &nope, "nope.shop.svc.global", "A", answer(), t0),
        Err(ExplainError::UnknownService { .. })
    ));
}

#[test]
fn exports_of_the_other_kind_are_named_as_conflicts() {
    let t0 = crate::clock::now();
    let mut v = view(t0);
    let mut clusterip = web(&[("10.104.0.10", true)]);
    clusterip.cluster_ips = vec!["10.96.4.1".parse().unwrap()];
    clusterip.props.kind = crate::model::ServiceKind::ClusterSetIp;
    v.sync
        .view
        .exports
        .insert((id("c4"), clusterip.service.clone()), clusterip);
    let service = ServiceKey::new("shop", "web").unwrap();
    let e = explain(&v, &service, "web.shop.svc.global", "A", answer(), t0).unwrap();
    assert_eq!(e.conflicting_clusters, ["c4"]);
    assert!(e.candidates.iter().all(|c| c.cluster != "c4"));
    assert!(render(&e).contains("c4: left out, its export is of the other kind"));
}

#[test]
fn a_remote_answer_names_the_local_address_behind_its_global_one() {
    let t0 = crate::clock::now();
    let mut v = view(t0);
    // c4 has a global range; its export, as this cluster reaches it, carries the global address.
    let c4 = v.sync.view.clusters.get_mut(&id("c4")).unwrap();
    c4.global = vec![crate::model::Allocation {
        local: "10.104.0.0/16".parse().unwrap(),
        global: "100.68.0.0/16".parse().unwrap(),
    }];
    v.sync
        .view
        .exports
        .insert((id("c4"), web(&[]).service), web(&[("100.68.0.10", true)]));
    let service = ServiceKey::new("shop", "web").unwrap();
    let e = explain(&v, &service, "web.shop.svc.global", "A", answer(), t0).unwrap();
    let c4 = e.candidates.iter().find(|c| c.cluster == "c4").unwrap();
    assert_eq!(c4.address.to_string(), "100.68.0.10");
    assert!(
        c4.why
            .contains("its 10.104.0.10, reached as 100.68.0.10 through c4's global range 100.68.0.0/16 for 10.104.0.0/16"),
        "{}",
        c4.why
    );
    let own = e.candidates.iter().find(|c| c.cluster == "c1").unwrap();
    assert!(!own.why.contains("global range"), "{}", own.why);
}
