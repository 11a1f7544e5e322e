//! The DNS names, resolved from pods through their resolv.conf, against both service kinds
//! in a running lab:
//! - `web` in c1 has a cluster IP, implemented with nftables DNAT in c1's router namespace
//!   (`netlab::nat`, as kube-proxy would); c2's pods resolve it and fetch through it, and the
//!   DNAT spreads the connections over both of c1's pods;
//! - `db` in c2 is headless with hostnames; `idle` in c2 is headless with no ready endpoint.
//!
//! Checked with `dig` from c2's pod: A, SRV with resolvable targets and their addresses in the
//! additional section, cluster-pinned `C.S.N`, per-endpoint `H.C.S.N`, over UDP and TCP, and
//! the MCS `clusterset.local` forms (dns-version TXT, no `C.S.N`, NXDOMAIN for a headless
//! service with no ready endpoint). Namespace prefix `dnl`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use causeway_netlab::dig::{Over, Reply, dig};
use causeway_netlab::lab::{Lab, LabSpec};
use causeway_netlab::nat::{self, ClusterIp, L4};
use causeway_netlab::wait::poll_until;

/// An export reaching another cluster takes a broker round trip and a DNS snapshot swap.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(20);
/// The first packet through a tunnel waits for the WireGuard handshake.
const REACH_TIMEOUT: Duration = Duration::from_secs(15);
/// GETs through the cluster IP; with a fair random pick, missing one of two pods in all of
/// them has probability 2^-29.
const SPREAD_FETCHES: usize = 30;

fn web_yaml(vip: IpAddr, endpoints: &[IpAddr]) -> String {
    let mut yaml = format!(
        "name: web\nnamespace: shop\nexport: true\nclusterIPs: [{vip}]\nports:\n  - name: http\n    port: 80\n    protocol: TCP\nendpoints:\n"
    );
    for address in endpoints {
        yaml.push_str(&format!("  - address: {address}\n    ready: true\n"));
    }
    yaml
}

/// Headless `name` in `shop` with port `pg` and these (hostname, address, ready) endpoints.
fn headless_yaml(name: &str, endpoints: &[(&str, IpAddr, bool)]) -> String {
    let mut yaml = format!(
        "name: {name}\nnamespace: shop\nexport: true\nports:\n  - name: pg\n    port: 5432\n    protocol: TCP\nendpoints:\n"
    );
    for (hostname, address, ready) in endpoints {
        yaml.push_str(&format!(
            "  - address: {address}\n    hostname: {hostname}\n    ready: {ready}\n"
        ));
    }
    yaml
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Panics with the error and the daemons' logs (the lab is torn down as the panic unwinds).
fn check<T>(lab: &Lab, what: &str, outcome: anyhow::Result<T>) -> T {
    match outcome {
        Ok(value) => value,
        Err(e) => {
            let mut logs = String::new();
            for c in lab.topology().clusters() {
                logs.push_str(&format!(
                    "\n--- c{c} gateway ---\n{}",
                    tail(&lab.gateway_log(c))
                ));
            }
            panic!("{what}: {e:#}\n(logs in {}){logs}", lab.log_dir().display());
        }
    }
}

/// Queries from c2-pod1 until `accept` holds; returns that reply.
fn dig_until(
    lab: &Lab,
    name: &str,
    rtype: &str,
    over: Over,
    accept: impl Fn(&Reply) -> bool,
) -> Reply {
    let outcome = poll_until(
        &format!("c2-pod1: dig {name} {rtype} ({over:?})"),
        PROPAGATION_TIMEOUT,
        || match dig(lab, (2, 1), name, rtype, over) {
            Ok(reply) if accept(&reply) => Ok(reply),
            Ok(reply) => Err(format!("{reply:?}")),
            Err(e) => Err(format!("{e:#}")),
        },
    );
    check(lab, &format!("dig {name} {rtype}"), outcome)
}

fn has_answer(reply: &Reply, rtype: &str, data: &[&str]) -> bool {
    reply.status == "NOERROR" && reply.authoritative && reply.data(rtype) == data
}

fn additional(reply: &Reply) -> BTreeSet<(String, String)> {
    reply
        .additional
        .iter()
        .filter(|r| r.rtype == "A" || r.rtype == "AAAA")
        .map(|r| (r.name.clone(), r.data.clone()))
        .collect()
}

fn pair(name: &str, address: IpAddr) -> (String, String) {
    (name.to_owned(), address.to_string())
}

#[test]
#[ignore = "needs root: netlab"]
fn pods_resolve_every_name_and_reach_a_cluster_ip_through_nftables() {
    let mut spec = LabSpec::new("dnl", env!("CARGO_BIN_EXE_causeway"));
    spec.clusters = 2;
    let mut lab = match Lab::up(spec) {
        Ok(lab) => lab,
        Err(e) => panic!("the lab did not come up: {e:#}"),
    };
    let t = lab.topology().clone();
    let (c1p1, c1p2) = (IpAddr::V4(t.pod_addr(1, 1)), IpAddr::V4(t.pod_addr(1, 2)));
    let (c2p1, c2p2) = (IpAddr::V4(t.pod_addr(2, 1)), IpAddr::V4(t.pod_addr(2, 2)));
    let vip = t.cluster_ip(1, 10);

    // c1: web behind a cluster IP, on both pods.
    for pod in [1, 2] {
        let started = lab.start_http_server(1, pod, &format!("web c1 pod{pod}"));
        check(&lab, "starting c1's web servers", started);
    }
    let dnat = ClusterIp {
        vip,
        port: 80,
        protocol: L4::Tcp,
        endpoints: vec![(t.pod_addr(1, 1), 80), (t.pod_addr(1, 2), 80)],
    };
    check(
        &lab,
        "loading c1's cluster IPs",
        nat::apply(&lab, 1, &[dnat]),
    );
    let vip = IpAddr::V4(vip);
    let written = lab.write_service(1, "web.yaml", &web_yaml(vip, &[c1p1, c1p2]));
    check(&lab, "writing web.yaml", written);
    // From here on, c1's cluster IP as c2 reaches it: through c1's global range.
    let vip = lab.seen_from(2, 1, vip);
    // c2: headless db with hostnames, and idle whose only endpoint is not ready.
    let db = headless_yaml("db", &[("db-0", c2p1, true), ("db-1", c2p2, true)]);
    check(
        &lab,
        "writing db.yaml",
        lab.write_service(2, "db.yaml", &db),
    );
    let idle = headless_yaml("idle", &[("idle-0", c2p2, false)]);
    check(
        &lab,
        "writing idle.yaml",
        lab.write_service(2, "idle.yaml", &idle),
    );

    // The cluster IP, resolved by the pod's own resolver and reached through the tunnel and
    // c1's DNAT; both pods behind it answer.
    let vip_s = vip.to_string();
    dig_until(&lab, "web.shop.svc.global", "A", Over::Udp, |r| {
        has_answer(r, "A", &[&vip_s])
    });
    let resolved = check(
        &lab,
        "getent hosts web.shop.svc.global",
        lab.resolve(2, 1, "web.shop.svc.global"),
    );
    assert_eq!(resolved, [vip], "getent through the pod's resolv.conf");
    let first = poll_until(
        "GET http://web.shop.svc.global/ from c2-pod1",
        REACH_TIMEOUT,
        || {
            lab.http_get(2, 1, "http://web.shop.svc.global/")
                .map_err(|e| format!("{e:#}"))
        },
    );
    let mut bodies = BTreeSet::from([check(&lab, "first GET through the cluster IP", first)]);
    for _ in 0..SPREAD_FETCHES {
        let got = lab.http_get(2, 1, &format!("http://{vip}/"));
        bodies.insert(check(&lab, "GET through the cluster IP", got));
    }
    assert_eq!(
        bodies,
        BTreeSet::from(["web c1 pod1".to_owned(), "web c1 pod2".to_owned()]),
        "the cluster IP's DNAT picks among both endpoints"
    );

    // SRV: the target is the cluster-pinned name, its address in the additional section, and
    // the target resolves on its own.
    let srv = dig_until(
        &lab,
        "_http._tcp.web.shop.svc.global",
        "SRV",
        Over::Udp,
        |r| r.status == "NOERROR" && !r.answer.is_empty(),
    );
    let [target] = &srv.data("SRV")[..] else {
        panic!("one SRV record expected: {srv:?}");
    };
    let fields: Vec<&str> = target.split_whitespace().collect();
    assert_eq!(fields[2..], ["80", "c1.web.shop.svc.global."], "{srv:?}");
    assert_eq!(
        additional(&srv),
        BTreeSet::from([pair("c1.web.shop.svc.global.", vip)])
    );
    let pinned = dig_until(&lab, "c1.web.shop.svc.global.", "A", Over::Udp, |r| {
        r.status == "NOERROR"
    });
    assert!(has_answer(&pinned, "A", &[&vip_s]), "{pinned:?}");
    let not_there = dig_until(&lab, "c2.web.shop.svc.global", "A", Over::Udp, |r| {
        !r.status.is_empty()
    });
    assert_eq!(
        not_there.status, "NXDOMAIN",
        "c2 exports no web: {not_there:?}"
    );

    // Headless: one name per endpoint, pinned to its cluster; SRV per endpoint; over TCP too.
    let (c2p1_s, c2p2_s) = (c2p1.to_string(), c2p2.to_string());
    for over in [Over::Udp, Over::Tcp] {
        dig_until(&lab, "db-0.c2.db.shop.svc.global", "A", over, |r| {
            has_answer(r, "A", &[&c2p1_s])
        });
    }
    let db_srv = dig_until(&lab, "_pg._tcp.db.shop.svc.global", "SRV", Over::Udp, |r| {
        r.status == "NOERROR" && r.answer.len() == 2
    });
    let targets: BTreeSet<String> = db_srv
        .data("SRV")
        .iter()
        .map(|d| d.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        targets,
        BTreeSet::from([
            "5432 db-0.c2.db.shop.svc.global.".to_owned(),
            "5432 db-1.c2.db.shop.svc.global.".to_owned()
        ])
    );
    assert_eq!(
        additional(&db_srv),
        BTreeSet::from([
            pair("db-0.c2.db.shop.svc.global.", c2p1),
            pair("db-1.c2.db.shop.svc.global.", c2p2)
        ])
    );
    let db_all = dig_until(&lab, "db.shop.svc.global", "A", Over::Udp, |r| {
        r.status == "NOERROR" && r.answer.len() == 2
    });
    let all: BTreeSet<String> = db_all.data("A").into_iter().collect();
    assert_eq!(all, BTreeSet::from([c2p1_s.clone(), c2p2_s.clone()]));

    // clusterset.local, per the MCS DNS specification.
    let version = dig_until(
        &lab,
        "dns-version.clusterset.local",
        "TXT",
        Over::Udp,
        |r| r.status == "NOERROR",
    );
    assert_eq!(version.data("TXT"), ["\"1.0.0\""]);
    dig_until(&lab, "web.shop.svc.clusterset.local", "A", Over::Udp, |r| {
        has_answer(r, "A", &[&vip_s])
    });
    let mcs_srv = dig_until(
        &lab,
        "_http._tcp.web.shop.svc.clusterset.local",
        "SRV",
        Over::Udp,
        |r| r.status == "NOERROR" && !r.answer.is_empty(),
    );
    let [mcs_target] = &mcs_srv.data("SRV")[..] else {
        panic!("one SRV record expected: {mcs_srv:?}");
    };
    assert!(
        mcs_target.ends_with(" 80 web.shop.svc.clusterset.local."),
        "{mcs_srv:?}"
    );
    assert_eq!(
        additional(&mcs_srv),
        BTreeSet::from([pair("web.shop.svc.clusterset.local.", vip)])
    );
    let reserved = dig_until(
        &lab,
        "c1.web.shop.svc.clusterset.local",
        "A",
        Over::Udp,
        |r| !r.status.is_empty(),
    );
    assert_eq!(reserved.status, "NXDOMAIN", "{reserved:?}");
    dig_until(
        &lab,
        "db-1.c2.db.shop.svc.clusterset.local",
        "A",
        Over::Tcp,
        |r| has_answer(r, "A", &[&c2p2_s]),
    );
    // No ready endpoint: an empty answer (fail closed) in our zone, which also shows c2 has
    // read idle.yaml; NXDOMAIN in the MCS zone.
    let idle_global = dig_until(&lab, "idle.shop.svc.global", "A", Over::Udp, |r| {
        r.status == "NOERROR"
    });
    assert!(idle_global.answer.is_empty(), "{idle_global:?}");
    let idle_mcs = dig_until(
        &lab,
        "idle.shop.svc.clusterset.local",
        "A",
        Over::Udp,
        |r| !r.status.is_empty(),
    );
    assert_eq!(idle_mcs.status, "NXDOMAIN", "{idle_mcs:?}");

    lab.down().expect("tearing the lab down");
}
