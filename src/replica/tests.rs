//! Shell tests of the replica on loopback: a gateway's admin port (the real `admin::serve`
//! with fake data-plane counters) publishing records, a replica following it, and real DNS
//! queries to both servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_dns::proto::rr::RecordType;
use causeway_dns::{
    ClusterRecords, NamedPort, PortProtocol, ServiceKind, ServiceRecords, ZoneConfig,
};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::http::{RecordsFeed, RecordsPublisher};
use super::proto::AdminUrl;
use super::run::{Replica, ReplicaConfig, start};
use crate::admin::lookup::lookup;
use crate::admin::{Sources, ViewPublisher};
use crate::model::ClusterId;
use crate::status::GatewayInfo;
use crate::testing::eventually_async as eventually;

const DEADLINE: Duration = Duration::from_secs(10);

struct FakeSources {
    dns: causeway_dns::Handle,
    records: RecordsFeed,
}

impl Sources for FakeSources {
    fn peer_stats(&self) -> BoxFuture<'_, Vec<causeway_gateway::PeerStats>> {
        Box::pin(std::future::ready(Vec::new()))
    }
    fn device_stats(&self) -> BoxFuture<'_, causeway_gateway::DeviceStats> {
        Box::pin(std::future::ready(Default::default()))
    }
    fn dns_stats(&self) -> causeway_dns::StatsSnapshot {
        self.dns.stats()
    }
    fn dns_records(&self) -> Option<RecordsFeed> {
        Some(self.records.clone())
    }
}

/// shop/web in two tiers (c1 near, c2 far) with an SRV port, and shop/db headless.
fn services(web_near: &str) -> Vec<ServiceRecords> {
    let ip = |s: &str| s.parse().unwrap();
    vec![
        ServiceRecords {
            namespace: "shop".into(),
            name: "web".into(),
            kind: ServiceKind::ClusterSetIp {
                clusterset_ips: vec![ip("10.96.200.1")],
            },
            tiers: vec![vec![ip(web_near)], vec![ip("10.2.0.5")]],
            clusters: vec![
                ClusterRecords {
                    cluster: "c1".into(),
                    priority: 0,
                    addresses: vec![ip(web_near)],
                    hosts: vec![],
                },
                ClusterRecords {
                    cluster: "c2".into(),
                    priority: 1,
                    addresses: vec![ip("10.2.0.5")],
                    hosts: vec![],
                },
            ],
            ports: vec![NamedPort {
                name: "http".into(),
                port: 80,
                protocol: PortProtocol::Tcp,
            }],
        },
        ServiceRecords {
            namespace: "shop".into(),
            name: "db".into(),
            kind: ServiceKind::Headless,
            tiers: vec![vec![ip("10.1.0.9")]],
            clusters: vec![ClusterRecords {
                cluster: "c1".into(),
                priority: 0,
                addresses: vec![ip("10.1.0.9")],
                hosts: vec![causeway_dns::HostRecord {
                    hostname: "db-0".into(),
                    address: ip("10.1.0.9"),
                }],
            }],
            ports: vec![],
        },
    ]
}

/// A gateway as far as DNS and the admin port go.
struct Gateway {
    admin: SocketAddr,
    dns: causeway_dns::Handle,
    zones: ZoneConfig,
    records: RecordsPublisher,
    shutdown: CancellationToken,
}

impl Gateway {
    async fn start() -> Gateway {
        Gateway::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A gateway whose admin port is `admin` (retried until a stopped one has let go of it).
    async fn start_on(admin: SocketAddr) -> Gateway {
        let shutdown = CancellationToken::new();
        let zones = ZoneConfig::default();
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
        let (records, feed) = RecordsPublisher::new();
        let (_view, view_rx) = ViewPublisher::new(ClusterId::new("c1").unwrap());
        let info = GatewayInfo {
            brokers: vec![],
            dns_listen: dns.local_addr(),
            dns_zone: zones.zone.clone(),
            clusterset_zone: zones.clusterset_zone.clone(),
            tunnel_mtu: 1420,
        };
        let sources: Arc<dyn Sources> = Arc::new(FakeSources {
            dns: dns.clone(),
            records: feed,
        });
        let admin = eventually("binding the gateway's admin port", || {
            let (info, view_rx, sources, shutdown) = (
                info.clone(),
                view_rx.clone(),
                sources.clone(),
                shutdown.clone(),
            );
            async move {
                crate::admin::serve(admin, info, view_rx, sources, Default::default(), shutdown)
                    .await
                    .ok()
            }
        })
        .await;
        Gateway {
            admin: admin.local_addr(),
            dns,
            zones,
            records,
            shutdown,
        }
    }

    /// What the gateway loop does with a new table: its own DNS, then the replicas' feed.
    fn publish(&mut self, services: Vec<ServiceRecords>) {
        let snapshot = self
            .dns
            .current()
            .update(&self.zones, services.clone())
            .unwrap();
        self.dns.publish(snapshot);
        self.records.publish(&self.zones, &services);
    }

    /// Stops the admin port and DNS, and ends every held poll (the loop's publisher goes).
    fn stop(self) -> SocketAddr {
        self.shutdown.cancel();
        self.admin
    }
}

fn replica_config(from: SocketAddr) -> ReplicaConfig {
    ReplicaConfig {
        from: format!("http://{from}").parse::<AdminUrl>().unwrap(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        upstream: None,
        // Short holds, so that a stopped gateway's admin port shuts down quickly.
        wait: Duration::from_millis(300),
        udp_sockets: Some(2),
    }
}

const QUESTIONS: [(&str, RecordType); 9] = [
    ("web.shop.svc.global", RecordType::A),
    ("c2.web.shop.svc.global", RecordType::A),
    ("_http._tcp.web.shop.svc.global", RecordType::SRV),
    ("web.shop.svc.clusterset.local", RecordType::A),
    ("db.shop.svc.clusterset.local", RecordType::A),
    ("db-0.c1.db.shop.svc.clusterset.local", RecordType::A),
    ("dns-version.clusterset.local", RecordType::TXT),
    ("nope.shop.svc.global", RecordType::A),
    ("svc.global", RecordType::NS),
];

/// Every question's rcode and sorted records (equally good addresses rotate per query).
async fn answers(server: SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    for (name, qtype) in QUESTIONS {
        let a = lookup(server, name, qtype).await;
        assert_eq!(a.error, None, "{name} {qtype} from {server}");
        let mut records = a.records.clone();
        records.sort();
        out.push(format!("{name} {qtype}: {:?} {records:?}", a.rcode));
    }
    out
}

async fn replica_dns(replica: &Replica) -> SocketAddr {
    let status = replica.status.clone();
    eventually("the replica binds DNS", || {
        let dns = status.borrow().dns;
        async move { dns }
    })
    .await
}

async fn readyz(admin: SocketAddr) -> u16 {
    crate::http::get(admin, "/readyz").await.unwrap().0
}

#[tokio::test]
async fn replica_answers_as_the_gateway_follows_updates_and_outlives_it() {
    let mut gateway = Gateway::start().await;
    let replica_stop = CancellationToken::new();
    let _guard = replica_stop.clone().drop_guard();
    let replica = start(replica_config(gateway.admin), replica_stop.clone())
        .await
        .unwrap();
    // Nothing published yet: not ready, DNS not bound.
    assert_eq!(readyz(replica.admin).await, 503);

    gateway.publish(services("10.1.0.5"));
    let dns = replica_dns(&replica).await;
    assert_eq!(readyz(replica.admin).await, 200);
    let expected = answers(gateway.dns.local_addr()).await;
    assert!(expected[0].contains("10.1.0.5"), "{expected:?}");
    assert_eq!(answers(dns).await, expected);

    // An update reaches the replica (through the held poll).
    let published = crate::clock::now();
    gateway.publish(services("10.1.0.6"));
    eventually("the replica answers the update", || async {
        let a = lookup(dns, "web.shop.svc.global", RecordType::A).await;
        a.records.contains(&"10.1.0.6".to_owned()).then_some(())
    })
    .await;
    // A measurement, not an assertion (STYLE: no timing asserts); see with --nocapture.
    eprintln!(
        "replica_update_ms={:.1}",
        (crate::clock::now() - published).as_secs_f64() * 1000.0
    );
    let expected = answers(gateway.dns.local_addr()).await;
    assert_eq!(answers(dns).await, expected);
    let generation = replica.status.borrow().have.unwrap().1;
    assert_eq!(generation, 2);

    // The gateway goes: the replica keeps answering its last good records, stays ready,
    // and says the gateway is unreachable.
    let admin = gateway.stop();
    let status = replica.status.clone();
    eventually("the replica notices the gateway is gone", || {
        let s = status.borrow().clone();
        async move { (!s.reachable && s.failures > 0).then_some(()) }
    })
    .await;
    assert_eq!(answers(dns).await, expected);
    assert_eq!(readyz(replica.admin).await, 200);
    let (_, body) = crate::http::get(replica.admin, "/readyz").await.unwrap();
    assert!(body.contains("unreachable"), "{body}");
    let (code, metrics) = crate::http::get(replica.admin, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("causeway_dns_replica_gateway_reachable 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("causeway_dns_replica_generation 2"),
        "{metrics}"
    );

    // A new gateway process (a new leader) comes up on the same address with other records:
    // its generation 1 is news to the replica, which reconnects with backoff.
    let mut next = Gateway::start_on(admin).await;
    next.publish(services("10.1.0.7"));
    let expected = answers(next.dns.local_addr()).await;
    eventually("the replica follows the new gateway", || async {
        (answers(dns).await == expected).then_some(())
    })
    .await;
    assert!(replica.status.borrow().reachable);
    replica_stop.cancel();
    assert!(replica.task.await.unwrap().is_ok());
}

#[tokio::test]
async fn replica_refuses_bad_documents_and_stays_unready() {
    // A "gateway" that answers every request with 200 and a body that is not a document.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let body = r#"{"instance":1,"generation":"two"}"#;
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let replica = start(replica_config(addr), stop.clone()).await.unwrap();
    let status = replica.status.clone();
    eventually("the replica retries after bad documents", || {
        let failures = status.borrow().failures;
        async move { (failures >= 2).then_some(()) }
    })
    .await;
    assert_eq!(readyz(replica.admin).await, 503);
    assert_eq!(replica.status.borrow().dns, None);
    server.abort();
}

#[tokio::test]
async fn gateway_long_poll_holds_until_news_and_answers_204_without() {
    let mut gateway = Gateway::start().await;
    gateway.publish(services("10.1.0.5"));
    let admin = gateway.admin;
    let (code, body) = crate::http::get(admin, "/api/v1/dns/records?wait_ms=0")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let doc: super::RecordsDoc = serde_json::from_str(&body).unwrap();
    assert_eq!(doc.generation, 1);
    assert_eq!(doc.services, services("10.1.0.5"));
    let held = format!(
        "/api/v1/dns/records?instance={}&after=1&wait_ms=50",
        doc.instance
    );
    assert_eq!(crate::http::get(admin, &held).await.unwrap().0, 204);
    // A held poll is answered by the next publish.
    let long = format!(
        "/api/v1/dns/records?instance={}&after=1&wait_ms=20000",
        doc.instance
    );
    let poll = tokio::spawn(async move { crate::http::get(admin, &long).await });
    // Not waiting for a result: gives the poll time to be held, so that the publish below
    // usually wakes a held poll (an unheld one gets generation 2 at once: same assertion).
    tokio::time::sleep(Duration::from_millis(50)).await;
    gateway.publish(services("10.1.0.6"));
    let (code, body) = tokio::time::timeout(DEADLINE, poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(code, 200);
    let next: super::RecordsDoc = serde_json::from_str(&body).unwrap();
    assert_eq!((next.instance, next.generation), (doc.instance, 2));
    let bad = crate::http::get(admin, "/api/v1/dns/records?after=x")
        .await
        .unwrap();
    assert_eq!(bad.0, 400);
}
