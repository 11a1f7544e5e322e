//! Shell tests of the admin port on loopback: a real DNS server and admin server on port 0,
//! fake data-plane counters, and every output parsed back — the exposition with a line
//! parser, `status`/`explain`/`diagnose` as JSON and as tables.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_gateway::{DeviceStats, HealthState, PeerHealth, PeerStats};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cli::{ExplainType, OutputFormat};
use crate::diagnose::Report;
use crate::model::{ClusterInfo, Endpoint, ServiceKey};
use crate::status::GatewayInfo;
use crate::status::api::{self, Explanation, PeerState, ServiceHealth};
use crate::sync::proto::ClusterSetView;

fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

fn cluster(n: u8, cidr: &str) -> ClusterInfo {
    ClusterInfo {
        id: id(&format!("c{n}")),
        wg_endpoint: SocketAddr::from(([127, 0, 0, 10 + n], 51820)),
        wg_public_key: [n; 32],
        cidrs: vec![cidr.parse().unwrap()],
        region: None,
        zone: None,
        // As the broker would allocate: cluster n's ranges from 100.(64 + 4n).0.0/14.
        global: crate::model::plan::allocate(
            &[cidr.parse().unwrap()],
            &[],
            &[],
            &crate::model::plan::PlanConfig {
                v4: format!("100.{}.0.0/14", 64 + 4 * n).parse().unwrap(),
                ..Default::default()
            },
        )
        .unwrap(),
    }
}

fn web(addr: &str) -> Export {
    Export {
        service: ServiceKey::new("shop", "web").unwrap(),
        cluster_ips: vec![],
        ports: vec![],
        endpoints: vec![Endpoint {
            address: addr.parse().unwrap(),
            ready: true,
            hostname: None,
            zone: None,
        }],
        props: crate::model::ServiceProps {
            kind: crate::model::ServiceKind::Headless,
            ..Default::default()
        },
    }
}

struct FakeSources {
    peers: Vec<PeerStats>,
    dns: causeway_dns::Handle,
}

impl Sources for FakeSources {
    fn peer_stats(&self) -> BoxFuture<'_, Vec<PeerStats>> {
        Box::pin(std::future::ready(self.peers.clone()))
    }
    fn device_stats(&self) -> BoxFuture<'_, DeviceStats> {
        Box::pin(std::future::ready(DeviceStats {
            no_route_packets: 4,
            health_transitions: 3,
            gro_datagrams: 41,
            ..DeviceStats::default()
        }))
    }
    fn dns_stats(&self) -> causeway_dns::StatsSnapshot {
        self.dns.stats()
    }
}

/// c1 (this gateway) exports shop/web; c2 and c3 do too. c2's tunnel is up (3 ms), c3's
/// is down and it never completed a handshake.
struct Fixture {
    admin: SocketAddr,
    dns: SocketAddr,
    publisher: ViewPublisher,
    local: Vec<Export>,
    sync: SyncState,
    health: Health,
    recorders: metrics::Recorders,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn fixture(c3_cidr: &str, tunnel_mtu: u16) -> Fixture {
    let shutdown = CancellationToken::new();
    let zones = causeway_dns::ZoneConfig::default();
    let dns = causeway_dns::serve(
        causeway_dns::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            zones: zones.clone(),
            upstream: None,
            udp_sockets: None,
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut view = ClusterSetView::default();
    for c in [
        cluster(1, "10.101.0.0/16"),
        cluster(2, "10.102.0.0/16"),
        cluster(3, c3_cidr),
    ] {
        view.clusters.insert(c.id.clone(), c);
    }
    for (c, addr) in [("c2", "10.102.0.10"), ("c3", "10.103.0.10")] {
        view.exports
            .insert((id(c), ServiceKey::new("shop", "web").unwrap()), web(addr));
    }
    view.revision = 7;
    let sync = SyncState {
        view,
        connected: true,
        broker: Some("127.0.0.1:7443".parse().unwrap()),
        last_error: None,
        rejected: None,
    };
    let local = vec![web("10.101.0.10")];
    let health = Health {
        reachable: Some(BTreeSet::from([id("c1"), id("c2")])),
        rtt: BTreeMap::from([(id("c2"), Duration::from_millis(3))]),
        ..Health::default()
    };
    let services = crate::answers::dns_services(&id("c1"), &local, &sync.view, &health);
    dns.publish(causeway_dns::Snapshot::new(&zones, services).unwrap());

    let peer = |n: u8, state, rtt: Option<u64>, handshake: Option<u64>| PeerStats {
        public_key: [n; 32],
        endpoint: SocketAddr::from(([127, 0, 0, 10 + n], 51820)),
        last_handshake: handshake.map(Duration::from_secs),
        rx_bytes: 1000 * u64::from(n),
        rx_packets: 10 * u64::from(n),
        tx_packets: 20 * u64::from(n),
        tx_bytes: 2000 * u64::from(n),
        health: PeerHealth {
            state,
            rtt: rtt.map(Duration::from_millis),
            lost: if state == HealthState::Down { 10 } else { 0 },
            window: 10,
        },
    };
    let sources = FakeSources {
        peers: vec![
            peer(2, HealthState::Up, Some(3), Some(5)),
            peer(3, HealthState::Down, None, None),
        ],
        dns: dns.clone(),
    };
    let (publisher, rx) = ViewPublisher::new(id("c1"));
    let recorders = metrics::Recorders::default();
    let admin = serve(
        "127.0.0.1:0".parse().unwrap(),
        GatewayInfo {
            brokers: vec!["127.0.0.1:7443".parse().unwrap()],
            dns_listen: dns.local_addr(),
            dns_zone: zones.zone.clone(),
            clusterset_zone: zones.clusterset_zone.clone(),
            tunnel_mtu,
        },
        rx,
        Arc::new(sources),
        recorders.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Fixture {
        admin: admin.local_addr(),
        dns: dns.local_addr(),
        publisher,
        local,
        sync,
        health,
        recorders,
        _shutdown: shutdown.drop_guard(),
    }
}

impl Fixture {
    fn publish(&mut self) {
        self.publisher
            .publish(&self.local, &self.sync, &self.health, crate::clock::now());
    }
}

/// One sample of the exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition (Prometheus 0.0.4 / OpenMetrics text): `# TYPE` and `# HELP`
/// lines, samples `name{k="v",...} value`, `# EOF`. Fails on anything else, on a sample of an
/// undeclared family, and on a counter sample not named `_total`.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut saw_eof = false;
    for line in text.lines() {
        if saw_eof {
            return Err(format!("text after # EOF: {line:?}"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE {line:?}"))?;
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or(format!("no value in {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .map_err(|e| format!("bad value in {line:?}: {e}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or(format!("unclosed labels in {line:?}"))?;
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or(format!("bad label {pair:?}"))?;
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or(format!("unquoted label value {pair:?}"))?;
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        if !name.starts_with("causeway_") {
            return Err(format!("{name} lacks the causeway_ prefix"));
        }
        let family = types
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .ok_or(format!("sample {name} of no declared family"))?;
        let suffix = &name[family.len()..];
        let ok = match types[family].as_str() {
            "counter" => suffix == "_total",
            "gauge" => suffix.is_empty(),
            "histogram" => ["_bucket", "_sum", "_count"].contains(&suffix),
            other => return Err(format!("unexpected type {other} of {family}")),
        };
        if !ok {
            return Err(format!(
                "sample {name} does not fit {family} ({})",
                types[family]
            ));
        }
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    if !saw_eof {
        return Err("no # EOF".into());
    }
    Ok(samples)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[tokio::test]
async fn health_and_readiness_follow_the_rule() {
    let mut f = fixture("10.103.0.0/16", 1420).await;
    let (code, body) = crate::http::get(f.admin, "/healthz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = crate::http::get(f.admin, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no view has been synced"), "{body}");

    f.publish();
    let (code, body) = crate::http::get(f.admin, "/readyz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("revision 7"), "{body}");

    // The broker goes away: the last known view is served, still ready.
    f.sync.connected = false;
    f.sync.last_error = Some("timed out".into());
    f.publish();
    let (code, body) = crate::http::get(f.admin, "/readyz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("broker is unreachable"), "{body}");
    let (code, _) = crate::http::get(f.admin, "/nope").await.unwrap();
    assert_eq!(code, 404);
}

#[tokio::test]
async fn a_standby_is_alive_but_never_ready_and_frees_the_port() {
    let stop = CancellationToken::new();
    let (addr, task) = crate::admin::serve_standby("127.0.0.1:0".parse().unwrap(), stop.clone())
        .await
        .unwrap();
    let (code, body) = crate::http::get(addr, "/healthz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    for path in ["/readyz", "/api/v1/status", crate::replica::proto::PATH] {
        let (code, body) = crate::http::get(addr, path).await.unwrap();
        assert_eq!(code, 503, "{path}: {body}");
        assert!(body.contains("standby"), "{path}: {body}");
    }
    stop.cancel();
    task.await.unwrap();
    // The leader's admin server binds the same address next.
    tokio::net::TcpListener::bind(addr).await.unwrap();
}

#[tokio::test]
async fn metrics_parse_and_carry_every_family() {
    let mut f = fixture("10.103.0.0/16", 1420).await;
    f.publish();
    use causeway_dns::proto::rr::RecordType;
    let ok = lookup::lookup(f.dns, "web.shop.svc.global", RecordType::A).await;
    assert_eq!(ok.rcode.as_deref(), Some("NOERROR"), "{ok:?}");
    let nx = lookup::lookup(f.dns, "nope.shop.svc.global", RecordType::AAAA).await;
    assert_eq!(nx.rcode.as_deref(), Some("NXDOMAIN"), "{nx:?}");
    let web = ServiceKey::new("shop", "web").unwrap();
    let ep = "10.101.0.10".parse().unwrap();
    f.recorders
        .probes
        .record(&web, ep, true, Duration::from_millis(2));
    f.recorders
        .probes
        .record(&web, ep, false, Duration::from_millis(500));
    f.recorders.probes.set_healthy(&web, ep, true);

    f.recorders.changes.broker(true);
    f.recorders
        .changes
        .record(&crate::changes::Change::Withdrawn {
            service: web.clone(),
            cluster: id("c3"),
            addresses: vec![ep, "10.101.0.11".parse().unwrap()],
            because: crate::changes::WithdrawnBecause::Unreachable,
        });

    let (code, text) = crate::http::get(f.admin, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    assert_eq!(v("causeway_ready", &[]), 1.0);
    assert_eq!(
        v("causeway_peer_state", &[("cluster", "c2"), ("state", "up")]),
        1.0
    );
    assert_eq!(
        v(
            "causeway_peer_state",
            &[("cluster", "c2"), ("state", "down")]
        ),
        0.0
    );
    assert_eq!(
        v(
            "causeway_peer_state",
            &[("cluster", "c3"), ("state", "down")]
        ),
        1.0
    );
    assert_eq!(v("causeway_peer_rtt_seconds", &[("cluster", "c2")]), 0.003);
    assert_eq!(
        value(&samples, "causeway_peer_rtt_seconds", &[("cluster", "c3")]),
        None
    );
    assert_eq!(
        v(
            "causeway_peer_last_handshake_age_seconds",
            &[("cluster", "c2")]
        ),
        5.0
    );
    assert_eq!(
        v("causeway_peer_probe_loss_ratio", &[("cluster", "c3")]),
        1.0
    );
    assert_eq!(
        v("causeway_peer_receive_bytes_total", &[("cluster", "c2")]),
        2000.0
    );
    assert_eq!(
        v("causeway_peer_transmit_bytes_total", &[("cluster", "c3")]),
        6000.0
    );
    assert_eq!(
        v("causeway_peer_receive_packets_total", &[("cluster", "c2")]),
        20.0
    );
    assert_eq!(
        v("causeway_peer_transmit_packets_total", &[("cluster", "c3")]),
        60.0
    );
    assert_eq!(
        v(
            "causeway_tunnel_dropped_packets_total",
            &[("reason", "no_route")]
        ),
        4.0
    );
    assert_eq!(v("causeway_peer_state_changes_total", &[]), 3.0);
    assert_eq!(v("causeway_tunnel_gro_datagrams_total", &[]), 41.0);
    // Our two queries, plus the readiness SOA queries the scrape itself made.
    assert_eq!(
        v(
            "causeway_dns_queries_total",
            &[("zone", "svc.global"), ("qtype", "A"), ("rcode", "NOERROR")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "causeway_dns_queries_total",
            &[
                ("zone", "svc.global"),
                ("qtype", "AAAA"),
                ("rcode", "NXDOMAIN")
            ]
        ),
        1.0
    );
    let queries: f64 = samples
        .iter()
        .filter(|s| s.name == "causeway_dns_queries_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(
        v("causeway_dns_answer_duration_seconds_count", &[]),
        queries
    );
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == "causeway_dns_answer_duration_seconds_bucket")
        .map(|s| s.value)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(
        v(
            "causeway_dns_answer_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        queries
    );
    assert_eq!(
        v("causeway_broker_connected", &[("broker", "127.0.0.1:7443")]),
        1.0
    );
    assert_eq!(v("causeway_broker_revision", &[]), 7.0);
    let lag = v("causeway_broker_last_update_age_seconds", &[]);
    assert!((0.0..60.0).contains(&lag), "{lag}");
    assert_eq!(v("causeway_clusters", &[]), 3.0);
    assert_eq!(v("causeway_exports", &[("health", "healthy")]), 1.0);
    // c3 is unreachable: the import is answered (from c2) but degraded.
    assert_eq!(v("causeway_imports", &[("health", "degraded")]), 1.0);
    assert_eq!(v("causeway_imports", &[("health", "healthy")]), 0.0);
    let probe = [
        ("namespace", "shop"),
        ("service", "web"),
        ("endpoint", "10.101.0.10"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = probe.to_vec();
        l.push(extra);
        l
    };
    assert_eq!(
        v(
            "causeway_endpoint_probe_total",
            &with(("result", "success"))
        ),
        1.0
    );
    assert_eq!(
        v(
            "causeway_endpoint_probe_total",
            &with(("result", "failure"))
        ),
        1.0
    );
    assert_eq!(v("causeway_endpoint_probe_success", &probe), 0.0);
    assert_eq!(v("causeway_endpoint_probe_healthy", &probe), 1.0);
    assert_eq!(
        v(
            "causeway_endpoint_probe_duration_seconds_count",
            &[("namespace", "shop"), ("service", "web")]
        ),
        2.0
    );
    assert_eq!(
        v(
            "causeway_endpoints_withdrawn_total",
            &[("reason", "unreachable")]
        ),
        2.0
    );
    assert_eq!(v("causeway_endpoints_answered_total", &[]), 0.0);
    assert_eq!(
        v(
            "causeway_broker_connection_changes_total",
            &[("to", "connected")]
        ),
        1.0
    );
    assert!(
        parse_exposition("causeway_x 1\n# EOF\n").is_err(),
        "undeclared family"
    );
}

/// The rows of the table under `title` (a line of its own), header first, split on
/// whitespace.
fn table_rows<'a>(text: &'a str, title: &str) -> Vec<Vec<&'a str>> {
    text.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect()
}

#[tokio::test]
async fn status_prints_json_and_tables_that_parse() {
    let mut f = fixture("10.103.0.0/16", 1420).await;
    f.publish();
    let json = inspect_status(f.admin, OutputFormat::Json).await;
    let status: api::Status = serde_json::from_str(&json).unwrap();
    assert_eq!(status.cluster, "c1");
    assert!(status.ready && status.broker.connected);
    assert_eq!(
        status.broker.address,
        Some("127.0.0.1:7443".parse().unwrap())
    );
    assert_eq!(status.broker.revision, 7);
    let peers: Vec<(Option<&str>, PeerState)> = status
        .peers
        .iter()
        .map(|p| (p.cluster.as_deref(), p.state))
        .collect();
    assert_eq!(
        peers,
        [(Some("c2"), PeerState::Up), (Some("c3"), PeerState::Down)]
    );
    assert_eq!(status.peers[0].rtt_ms, Some(3.0));
    assert!(status.peers[0].link_mtu.is_some_and(|m| m >= 1280));
    assert_eq!(status.exports.len(), 1);
    assert_eq!(status.exports[0].health, ServiceHealth::Healthy);
    assert_eq!(status.imports[0].clusters, ["c2", "c3"]);
    assert_eq!(status.imports[0].answered, 2, "own and c2's; c3 is out");
    assert_eq!(status.imports[0].health, ServiceHealth::Degraded);

    let table = inspect_status(f.admin, OutputFormat::Table).await;
    assert!(table.starts_with("cluster c1: ready"), "{table}");
    assert!(
        table.contains("broker 127.0.0.1:7443: connected, revision 7"),
        "{table}"
    );
    let connections = table_rows(&table, "CONNECTIONS");
    let expected: [&[&str]; 3] = [
        &[
            "PEER",
            "ENDPOINT",
            "STATE",
            "RTT",
            "HANDSHAKE",
            "RX_BYTES",
            "TX_BYTES",
            "RX_PKTS",
            "TX_PKTS",
        ],
        &[
            "c2",
            "127.0.0.12:51820",
            "up",
            "3.0ms",
            "5s",
            "2000",
            "4000",
            "20",
            "40",
        ],
        &[
            "c3",
            "127.0.0.13:51820",
            "down",
            "-",
            "never",
            "3000",
            "6000",
            "30",
            "60",
        ],
    ];
    assert_eq!(connections, expected, "{table}");
    let exports = table_rows(&table, "EXPORTS");
    assert_eq!(
        exports[1],
        ["shop/web", "c1", "1", "1", "2", "healthy"],
        "{table}"
    );
    let imports = table_rows(&table, "IMPORTS");
    assert_eq!(
        imports[1],
        ["shop/web", "c2,c3", "2", "2", "2", "degraded"],
        "{table}"
    );
}

async fn inspect_status(admin: SocketAddr, output: OutputFormat) -> String {
    crate::inspect::status(admin, output).await.unwrap().output
}

#[tokio::test]
async fn explain_shows_the_real_answer_and_every_reason() {
    let mut f = fixture("10.103.0.0/16", 1420).await;
    f.publish();
    let printed = crate::inspect::explain(
        f.admin,
        "web.shop.svc.global",
        ExplainType::A,
        OutputFormat::Json,
    )
    .await
    .unwrap();
    let e: Explanation = serde_json::from_str(&printed.output).unwrap();
    assert_eq!(e.answer.rcode.as_deref(), Some("NOERROR"));
    assert_eq!(e.answer.records, ["10.101.0.10", "10.102.0.10"]);
    let answered: Vec<&str> = e
        .candidates
        .iter()
        .filter(|c| c.verdict == "answered")
        .map(|c| c.cluster.as_str())
        .collect();
    assert_eq!(answered, ["c1", "c2"]);
    let c3 = e.candidates.iter().find(|c| c.cluster == "c3").unwrap();
    assert_eq!(c3.reason.as_deref(), Some("unreachable"));
    assert!(e.data_age_seconds.is_some_and(|a| a < 60.0));

    let table = crate::inspect::explain(
        f.admin,
        "web.shop.svc.global",
        ExplainType::A,
        OutputFormat::Table,
    )
    .await
    .unwrap()
    .output;
    assert!(table.contains("NOERROR 10.101.0.10 10.102.0.10"), "{table}");
    let unknown = crate::inspect::explain(
        f.admin,
        "nope.shop.svc.global",
        ExplainType::A,
        OutputFormat::Table,
    )
    .await
    .err()
    .map(|e| format!("{e:#}"));
    assert!(
        unknown
            .as_deref()
            .is_some_and(|e| e.contains("no cluster exports shop/nope") && e.contains("404")),
        "{unknown:?}"
    );
    let outside = crate::inspect::explain(
        f.admin,
        "web.example.com",
        ExplainType::A,
        OutputFormat::Table,
    )
    .await
    .err()
    .map(|e| format!("{e:#}"));
    assert!(
        outside.as_deref().is_some_and(|e| e.contains("400")),
        "{outside:?}"
    );
}

fn checks_of(report: &Report) -> Vec<(&str, bool)> {
    report
        .checks
        .iter()
        .map(|c| (c.name.as_str(), c.pass))
        .collect()
}

#[tokio::test]
async fn diagnose_passes_and_fails_each_check_with_a_reason() {
    let mut f = fixture("10.103.0.0/16", 1420).await;
    f.publish();
    let printed = crate::inspect::diagnose(f.admin, OutputFormat::Json)
        .await
        .unwrap();
    let report: Report = serde_json::from_str(&printed.output).unwrap();
    assert_eq!(
        checks_of(&report),
        [
            ("broker", true),
            ("ready", true),
            ("handshake/c2", true),
            ("probe/c2", true),
            ("handshake/c3", false),
            ("probe/c3", false),
            ("dns/shop/web", true),
            ("address-plan", true),
            ("mtu/c2", true),
            ("mtu/c3", true),
        ]
    );
    assert!(!report.passed);
    assert!(
        printed
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("2 of 10 checks failed")),
        "{:?}",
        printed.failure
    );
    assert!(report.checks.iter().all(|c| c.pass == c.hint.is_none()));

    // Overlapping CIDRs (normal: each cluster is reached through its global ranges), a claim
    // the broker refused, a tunnel MTU no link fits, and the broker lost.
    let mut f = fixture("10.102.128.0/17", u16::MAX).await;
    f.sync.rejected = Some("address plan: claim 0.0.0.0/0 is a default route".into());
    f.sync.connected = false;
    f.sync.last_error = Some("the cryptographic handshake failed: invalid peer certificate".into());
    // Synced once before the broker went away.
    let lost = f.sync.clone();
    f.sync.connected = true;
    f.publish();
    f.sync = lost;
    f.publish();
    let table = crate::inspect::diagnose(f.admin, OutputFormat::Table)
        .await
        .unwrap();
    let rows: BTreeMap<&str, &str> = table
        .output
        .lines()
        .skip_while(|l| !l.starts_with("CHECK"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect();
    assert_eq!(rows["broker"], "FAIL", "{}", table.output);
    assert_eq!(rows["ready"], "pass", "{}", table.output);
    assert_eq!(rows["address-plan"], "FAIL", "{}", table.output);
    assert_eq!(rows["mtu/c2"], "FAIL", "{}", table.output);
    assert!(
        table.output.contains(
            "the broker refused this gateway: address plan: claim 0.0.0.0/0 is a default route"
        ),
        "{}",
        table.output
    );
    assert!(
        table
            .output
            .contains("broker: the broker refused the TLS handshake"),
        "{}",
        table.output
    );
    assert!(table.output.contains("set --mtu"), "{}", table.output);
}
