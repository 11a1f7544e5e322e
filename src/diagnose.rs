//! `causeway diagnose`: checks a gateway end to end from its status document and real DNS
//! queries, and prints each check as pass/fail with the reason and a hint.
//!
//! [`checks`] is pure (status + the DNS answers → checks); [`dns_questions`] says which
//! queries it needs; the CLI shell in `main` fetches the status, asks the questions with
//! `admin::lookup` and prints [`render`] or the JSON [`Report`].

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::status::api::{DnsAnswer, PeerState, Status};

/// WireGuard rejects a session older than this (REJECT_AFTER_TIME, whitepaper §6.1): a
/// healthy peer with traffic or keepalives re-handshakes well within it.
const HANDSHAKE_STALE_SECONDS: f64 = 180.0;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `broker`, `ready`, `handshake/c2`, `probe/c2`, `dns/shop/web`, `address-plan`, `mtu/c2`.
    pub name: String,
    pub pass: bool,
    pub reason: String,
    /// What to look at when it fails; `None` for a pass.
    pub hint: Option<String>,
}

/// What `diagnose --output json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub cluster: String,
    pub passed: bool,
    pub checks: Vec<Check>,
}

/// A DNS question the checks need answered: the name and type, for one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub check: String,
    pub name: String,
    /// `A` or `AAAA`.
    pub qtype: &'static str,
}

/// The DNS server to ask: the gateway's listener, or (when it listens on a wildcard) the
/// admin address's host on the listener's port.
pub fn dns_server(status: &Status, admin: SocketAddr) -> SocketAddr {
    if status.dns.listen.ip().is_unspecified() {
        SocketAddr::new(admin.ip(), status.dns.listen.port())
    } else {
        status.dns.listen
    }
}

/// One question per export of the gateway: its own service name in its own zone, A for an
/// IPv4 service, AAAA for an IPv6-only one; the zone's SOA when it exports nothing.
pub fn dns_questions(status: &Status) -> Vec<Question> {
    let zone = status.dns.zone.trim_end_matches('.');
    if status.exports.is_empty() {
        return vec![Question {
            check: "dns/zone".into(),
            name: zone.to_owned(),
            qtype: "SOA",
        }];
    }
    status
        .exports
        .iter()
        .map(|e| Question {
            check: format!("dns/{}/{}", e.namespace, e.name),
            name: format!("{}.{}.{zone}", e.name, e.namespace),
            qtype: "A",
        })
        .collect()
}

/// Every check, in order: broker, readiness, each peer's handshake and probe, DNS answering
/// each own export (`answers` pairs each [`Question`] with what the server said), the address
/// plan, and each peer link's MTU against the tunnel's.
pub fn checks(status: &Status, answers: &[(Question, DnsAnswer)]) -> Vec<Check> {
    let mut out = Vec::new();

    let b = &status.broker;
    let broker = b.address.map_or("no broker".to_owned(), |a| a.to_string());
    out.push(if b.connected {
        pass(
            "broker",
            format!(
                "connected to {broker} with mutual TLS, view at revision {}",
                b.revision
            ),
        )
    } else {
        let error = b.last_error.clone().unwrap_or_else(|| "connecting".into());
        let hint = if error.contains("certificate") || error.contains("TLS") || error.contains("tls")
        {
            "the broker refused the TLS handshake: check that --tls-dir holds a certificate for this cluster from the clusterset CA (causeway certs issue --cluster ID) and that it is not on the broker's deny list"
        } else {
            "check that the broker runs at --broker, and that UDP to it is allowed from this gateway"
        };
        fail("broker", format!("not connected to {broker}: {error}"), hint)
    });
    out.push(if status.ready {
        pass("ready", status.ready_reason.clone())
    } else {
        fail(
            "ready",
            status.ready_reason.clone(),
            "the gateway answers DNS only from a synced view: see the broker check and the gateway's log",
        )
    });

    for c in status.clusters.iter().filter(|c| c.id != status.cluster) {
        let Some(p) = status
            .peers
            .iter()
            .find(|p| p.cluster.as_deref() == Some(&c.id))
        else {
            out.push(fail(
                &format!("handshake/{}", c.id),
                format!("no tunnel peer for cluster {}", c.id),
                "the peer set is applied from the broker's view: see the gateway's log for 'Could not apply tunnel peers'",
            ));
            continue;
        };
        let name = format!("handshake/{}", c.id);
        out.push(match p.last_handshake_seconds {
            Some(age) if age <= HANDSHAKE_STALE_SECONDS => pass(
                &name,
                format!("last handshake with {} {age:.0}s ago", p.endpoint),
            ),
            Some(age) => fail(
                &name,
                format!(
                    "last handshake with {} {age:.0}s ago (older than {HANDSHAKE_STALE_SECONDS}s)",
                    p.endpoint
                ),
                "the peer stopped answering: check that its gateway runs and that UDP to its --wg-advertise address is allowed both ways",
            ),
            None => fail(
                &name,
                format!("no handshake with {} yet", p.endpoint),
                "check that the peer's gateway runs, that UDP to its --wg-advertise address is allowed both ways, and that both use keys the broker announced",
            ),
        });
        let name = format!("probe/{}", c.id);
        let rtt = p.rtt_ms.map_or("-".to_owned(), |ms| format!("{ms:.1} ms"));
        out.push(match p.state {
            PeerState::Up => pass(&name, format!("tunnel up, probe RTT {rtt}")),
            PeerState::Degraded => fail(
                &name,
                format!(
                    "tunnel degraded: {} of the last {} probes lost, RTT {rtt}",
                    p.probe_lost, p.probe_window
                ),
                "packets are being lost or delayed on the path to the peer: check the link and its load",
            ),
            PeerState::Down => fail(
                &name,
                "tunnel down: in-tunnel probes are not answered".to_owned(),
                "the peer is unreachable: its endpoints are left out of this cluster's answers until probes pass again",
            ),
            PeerState::Unknown => fail(
                &name,
                "not probed yet".to_owned(),
                "the peer was just added; run diagnose again in a few seconds",
            ),
        });
    }

    for (q, a) in answers {
        let export = status
            .exports
            .iter()
            .find(|e| q.check == format!("dns/{}/{}", e.namespace, e.name));
        let expect_records = export.is_none_or(|e| e.answered > 0);
        out.push(match (&a.rcode, &a.error) {
            (Some(rcode), _) if rcode == "NOERROR" && (!a.records.is_empty() || !expect_records) => {
                let what = if a.records.is_empty() {
                    "no records, as it has no ready endpoint".to_owned()
                } else {
                    a.records.join(" ")
                };
                pass(
                    &q.check,
                    format!("{} {} from {}: NOERROR {what}", q.name, q.qtype, a.server),
                )
            }
            (Some(rcode), _) => fail(
                &q.check,
                format!(
                    "{} {} from {}: {rcode} with {} records",
                    q.name,
                    q.qtype,
                    a.server,
                    a.records.len()
                ),
                "the gateway's DNS does not answer its own export: check --dns-zone and the source's file for this service, and the gateway's log for snapshot errors",
            ),
            (None, error) => fail(
                &q.check,
                format!(
                    "{} {}: no answer from {} ({})",
                    q.name,
                    q.qtype,
                    a.server,
                    error.as_deref().unwrap_or("unknown")
                ),
                "nothing answers on --dns-listen: check that the gateway runs and that the address is reachable from here",
            ),
        });
    }

    out.push(address_plan(status));

    for p in &status.peers {
        let Some(cluster) = &p.cluster else { continue };
        let name = format!("mtu/{cluster}");
        let overhead = crate::admin::link_mtu::wireguard_overhead(p.endpoint);
        out.push(match p.link_mtu {
            Some(link) if u32::from(status.tunnel_mtu) + u32::from(overhead) <= u32::from(link) => {
                pass(
                    &name,
                    format!(
                        "tunnel mtu {} + {overhead} bytes of WireGuard fits the link mtu {link} towards {}",
                        status.tunnel_mtu, p.endpoint
                    ),
                )
            }
            Some(link) => fail(
                &name,
                format!(
                    "tunnel mtu {} + {overhead} bytes of WireGuard exceeds the link mtu {link} towards {}: large packets are fragmented or dropped",
                    status.tunnel_mtu, p.endpoint
                ),
                &format!(
                    "set --mtu {} or lower",
                    u32::from(link).saturating_sub(u32::from(overhead))
                ),
            ),
            None => fail(
                &name,
                format!("the kernel reported no MTU towards {}", p.endpoint),
                "check that a route to the peer's endpoint exists on this gateway",
            ),
        });
    }
    out
}

fn pass(name: &str, reason: String) -> Check {
    Check {
        name: name.to_owned(),
        pass: true,
        reason,
        hint: None,
    }
}

fn fail(name: &str, reason: String, hint: &str) -> Check {
    Check {
        name: name.to_owned(),
        pass: false,
        reason,
        hint: Some(hint.to_owned()),
    }
}

/// The `address-plan` check: the broker accepted this cluster's claims, gave each its global
/// range, and no two clusters' global ranges overlap. (Overlapping *local* ranges are normal:
/// every cluster is reached through its global ones.)
fn address_plan(status: &Status) -> Check {
    const NAME: &str = "address-plan";
    if let Some(reason) = &status.broker.rejected {
        return fail(
            NAME,
            format!("the broker refused this gateway: {reason}"),
            "fix the claim it names (--cidr, --wg-advertise, the exported addresses), or ask the clusterset's operator to vouch for it (causeway broker --endpoint)",
        );
    }
    let Some(me) = status.clusters.iter().find(|c| c.id == status.cluster) else {
        return fail(
            NAME,
            "this cluster is not registered at the broker yet".into(),
            "wait for the broker link (see the broker check)",
        );
    };
    let unplanned: Vec<&str> = me
        .cidrs
        .iter()
        .filter(|c| !me.plan.iter().any(|m| &m.local == *c))
        .map(String::as_str)
        .collect();
    if !unplanned.is_empty() {
        return fail(
            NAME,
            format!("no global range for {}", unplanned.join(", ")),
            "the broker is of an older version, or still applying the claim: other clusters cannot reach these ranges",
        );
    }
    let mut globals: Vec<(&str, ipnet::IpNet)> = vec![];
    for c in &status.clusters {
        for m in &c.plan {
            if let Ok(net) = m.global.parse::<ipnet::IpNet>() {
                globals.push((&c.id, net));
            }
        }
    }
    let mut overlaps = vec![];
    for (i, (a, x)) in globals.iter().enumerate() {
        for (b, y) in &globals[i + 1..] {
            if x.contains(&y.network()) || y.contains(&x.network()) {
                overlaps.push(format!("{a} {x} overlaps {b} {y}"));
            }
        }
    }
    if overlaps.is_empty() {
        pass(
            NAME,
            format!(
                "{} claims of this cluster have global ranges; {} clusters' global ranges are disjoint",
                me.cidrs.len(),
                status.clusters.len()
            ),
        )
    } else {
        fail(
            NAME,
            overlaps.join("; "),
            "the broker handed out overlapping global ranges: a bug; report it with `causeway status --output json`",
        )
    }
}

/// The checks for a terminal: one table row per check, then the hints of the failures.
pub fn render(report: &Report) -> String {
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                if c.pass { "pass" } else { "FAIL" }.to_owned(),
                c.reason.clone(),
            ]
        })
        .collect();
    let mut out = format!("diagnose {}\n", report.cluster);
    out.push_str(&crate::status::table(&["CHECK", "RESULT", "REASON"], &rows));
    let failed: Vec<&Check> = report.checks.iter().filter(|c| !c.pass).collect();
    if failed.is_empty() {
        let _ = writeln!(out, "\nall {} checks passed", report.checks.len());
    } else {
        let _ = writeln!(
            out,
            "\n{} of {} checks failed:",
            failed.len(),
            report.checks.len()
        );
        for c in failed {
            let _ = writeln!(
                out,
                "  {}: {}",
                c.name,
                c.hint.as_deref().unwrap_or("see the reason")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::api::{
        AddressMapping, BrokerStatus, ClusterStatus, DnsStatus, PeerStatus, ServiceHealth,
        ServiceStatus,
    };

    fn status() -> Status {
        let cluster = |id: &str, cidrs: &[&str]| ClusterStatus {
            id: id.into(),
            cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
            plan: cidrs
                .iter()
                .enumerate()
                .map(|(i, c)| AddressMapping {
                    local: (*c).to_owned(),
                    global: if c.contains(':') {
                        format!("fd63:6175:7365:{}{i}00::/56", id.len())
                    } else {
                        format!("100.{}.{i}.0/24", 64 + id.as_bytes()[1] - b'0')
                    },
                })
                .collect(),
            region: None,
            zone: None,
            withheld: false,
        };
        let peer = |c: &str, n: u8| PeerStatus {
            cluster: Some(c.into()),
            endpoint: SocketAddr::from(([10, 100, 0, n], 51820)),
            state: PeerState::Up,
            rtt_ms: Some(1.0),
            last_handshake_seconds: Some(10.0),
            rx_bytes: 0,
            tx_bytes: 0,
            rx_packets: 0,
            tx_packets: 0,
            probe_lost: 0,
            probe_window: 10,
            link_mtu: Some(1500),
        };
        Status {
            cluster: "c1".into(),
            ready: true,
            ready_reason: "ready".into(),
            broker: BrokerStatus {
                connected: true,
                address: Some("10.100.0.2:7443".parse().unwrap()),
                configured: vec![],
                revision: 3,
                last_update_age_seconds: Some(1.0),
                last_error: None,
                rejected: None,
            },
            dns: DnsStatus {
                listen: "0.0.0.0:53".parse().unwrap(),
                zone: "svc.global".into(),
                clusterset_zone: None,
                queries: 0,
            },
            tunnel_mtu: 1420,
            peers: vec![peer("c2", 12), peer("c3", 13)],
            exports: vec![ServiceStatus {
                namespace: "shop".into(),
                name: "web".into(),
                clusters: vec!["c1".into()],
                endpoints: 1,
                ready_endpoints: 0,
                answered: 0,
                health: ServiceHealth::Down,
            }],
            imports: vec![],
            clusters: vec![
                cluster("c1", &["10.101.0.0/16"]),
                cluster("c2", &["10.102.0.0/16"]),
                cluster("c3", &["10.103.0.0/16", "fd00::/48"]),
            ],
        }
    }

    fn outcome<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
    }

    fn nodata(server: SocketAddr) -> DnsAnswer {
        DnsAnswer {
            server,
            rcode: Some("NOERROR".into()),
            records: vec![],
            error: None,
        }
    }

    #[test]
    fn each_failure_has_its_reason_and_hint() {
        let admin: SocketAddr = "10.0.0.5:9990".parse().unwrap();
        let mut s = status();
        assert_eq!(dns_server(&s, admin), "10.0.0.5:53".parse().unwrap());
        let questions = dns_questions(&s);
        assert_eq!(questions[0].name, "web.shop.svc.global");
        // An export with no ready endpoint is rightly answered with no records.
        let answers = vec![(questions[0].clone(), nodata(dns_server(&s, admin)))];
        let found = checks(&s, &answers);
        assert!(found.iter().all(|c| c.pass), "{found:?}");

        // c1's claims overlap c3's: normal. But c1's newest claim has no global range yet.
        s.clusters[0].cidrs.push("fd00:0:0:1::/64".into());
        s.broker.connected = false;
        s.broker.last_error = Some("timed out after 5s".into());
        s.peers[0].state = PeerState::Degraded;
        s.peers[0].probe_lost = 3;
        s.peers[1].last_handshake_seconds = Some(400.0);
        s.peers[1].link_mtu = Some(1400);
        s.exports[0].answered = 1;
        let found = checks(&s, &answers);
        let failed: Vec<&str> = found
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            failed,
            [
                "broker",
                "probe/c2",
                "handshake/c3",
                "dns/shop/web",
                "address-plan",
                "mtu/c3"
            ]
        );
        assert!(
            outcome(&found, "broker")
                .hint
                .as_deref()
                .unwrap()
                .contains("UDP")
        );
        assert!(
            outcome(&found, "probe/c2")
                .reason
                .contains("3 of the last 10")
        );
        assert_eq!(
            outcome(&found, "address-plan").reason,
            "no global range for fd00:0:0:1::/64"
        );
        s.clusters[0].cidrs.pop();
        s.clusters[2].plan[0].global = "100.65.0.0/16".into();
        assert_eq!(
            outcome(&checks(&s, &answers), "address-plan").reason,
            "c1 100.65.0.0/24 overlaps c3 100.65.0.0/16"
        );
        s.broker.rejected = Some("address plan: claim 0.0.0.0/0 is a default route".into());
        assert!(
            outcome(&checks(&s, &answers), "address-plan")
                .reason
                .contains("default route")
        );
        assert_eq!(
            outcome(&found, "mtu/c3").hint.as_deref(),
            Some("set --mtu 1340 or lower")
        );
        assert!(found.iter().all(|c| c.pass == c.hint.is_none()));

        let report = Report {
            cluster: "c1".into(),
            passed: false,
            checks: found,
        };
        let text = render(&report);
        assert!(text.contains("6 of 10 checks failed:"), "{text}");
        assert!(text.contains("  mtu/c3: set --mtu 1340 or lower"), "{text}");
    }

    #[test]
    fn a_missing_peer_and_a_silent_dns_fail() {
        let mut s = status();
        s.peers.remove(1);
        s.exports.clear();
        let questions = dns_questions(&s);
        assert_eq!(questions[0].check, "dns/zone");
        let silent = DnsAnswer {
            server: "10.0.0.5:53".parse().unwrap(),
            rcode: None,
            records: vec![],
            error: Some("no answer within 1s".into()),
        };
        let found = checks(&s, &[(questions[0].clone(), silent)]);
        assert!(!outcome(&found, "handshake/c3").pass);
        assert!(
            outcome(&found, "handshake/c3")
                .reason
                .contains("no tunnel peer")
        );
        assert!(!outcome(&found, "dns/zone").pass);
        assert!(
            outcome(&found, "dns/zone")
                .reason
                .contains("no answer within 1s")
        );
    }
}
