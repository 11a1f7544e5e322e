//! Shell tests: a real broker and real sync clients over QUIC on loopback, with certificates
//! made in a temporary directory. Every wait polls a condition with a deadline.

use crate::model::fixtures::{cluster, export, id};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::certs::{ALPN, BROKER_SERVER_NAME, TlsFiles};
use crate::model::{ClusterInfo, Export, ServiceKey};
use crate::sync::SyncState;
use crate::sync::wire::{RejectReason, Resume};
use crate::testing::{DEADLINE, Pki, SyncClient};

struct RunningBroker {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningBroker {
    fn start(pki: &Pki, state: &Path, listen: SocketAddr) -> Self {
        Self::start_with(pki, state, listen, BrokerOptions::default())
    }

    fn start_with(pki: &Pki, state: &Path, listen: SocketAddr, options: BrokerOptions) -> Self {
        let config = BrokerConfig {
            listen,
            store: StoreLocation::Redb(state.to_owned()),
            tls_dir: pki.path("broker"),
            options,
        };
        let broker = Broker::bind(&config).unwrap();
        let addr = broker.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(broker.run(shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("broker stops")
            .unwrap()
            .unwrap();
    }
}

fn client(
    pki: &Pki,
    tls: &str,
    me: ClusterInfo,
    broker: SocketAddr,
    exports: Vec<Export>,
) -> SyncClient {
    client_of(pki, tls, me, vec![broker], exports)
}

fn client_of(
    pki: &Pki,
    tls: &str,
    me: ClusterInfo,
    brokers: Vec<SocketAddr>,
    exports: Vec<Export>,
) -> SyncClient {
    SyncClient::start(pki.path(tls), me, brokers, exports)
}

fn has_export(state: &SyncState, cluster: &str, name: &str) -> bool {
    state
        .view
        .exports
        .contains_key(&(id(cluster), ServiceKey::new("shop", name).unwrap()))
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn two_clusters_see_each_others_exports_and_removals() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());
    let mut c1 = client(
        &pki,
        "c1",
        cluster("c1"),
        broker.addr,
        vec![export("web", "10.101.0.10")],
    );
    let mut c2 = client(
        &pki,
        "c2",
        cluster("c2"),
        broker.addr,
        vec![export("db", "10.102.0.10")],
    );

    let state = c1
        .wait_for("c1 to see c2's export", |s| {
            s.connected && has_export(s, "c2", "db")
        })
        .await;
    assert!(state.view.clusters.contains_key(&id("c2")));
    c2.wait_for("c2 to see c1's export", |s| has_export(s, "c1", "web"))
        .await;

    c1.exports.send_replace(vec![]);
    c2.wait_for("c1's removal to reach c2", |s| !has_export(s, "c1", "web"))
        .await;
    c1.exports.send_replace(vec![export("web", "10.101.0.11")]);
    let state = c2
        .wait_for("c1's new endpoint to reach c2", |s| {
            has_export(s, "c1", "web")
        })
        .await;
    let web = &state.view.exports[&(id("c1"), ServiceKey::new("shop", "web").unwrap())];
    assert_eq!(web.endpoints[0].address.to_string(), "10.101.0.11");
    broker.stop().await;
}

#[tokio::test]
async fn broker_restart_keeps_everything_and_clients_catch_up() {
    let pki = Pki::new(&["c1", "c2"]);
    let state_path = pki.path("broker.redb");
    let broker = RunningBroker::start(&pki, &state_path, loopback());
    let addr = broker.addr;
    let mut c1 = client(
        &pki,
        "c1",
        cluster("c1"),
        addr,
        vec![export("web", "10.101.0.10")],
    );
    let mut c2 = client(
        &pki,
        "c2",
        cluster("c2"),
        addr,
        vec![export("db", "10.102.0.10")],
    );
    c1.wait_for("c1 to see c2", |s| has_export(s, "c2", "db"))
        .await;
    c2.wait_for("c2 to see c1", |s| has_export(s, "c1", "web"))
        .await;

    broker.stop().await;
    let state = c1
        .wait_for("c1 to notice the broker is gone", |s| !s.connected)
        .await;
    assert!(
        has_export(&state, "c2", "db"),
        "the last view is kept while disconnected"
    );

    let broker = RunningBroker::start(&pki, &state_path, addr);
    let state = c1.wait_for("c1 to reconnect", |s| s.connected).await;
    assert!(has_export(&state, "c2", "db") && has_export(&state, "c1", "web"));
    c2.wait_for("c2 to reconnect", |s| s.connected).await;

    c1.exports.send_replace(vec![
        export("web", "10.101.0.10"),
        export("api", "10.101.0.12"),
    ]);
    c2.wait_for("an export made after the restart to propagate", |s| {
        has_export(s, "c1", "api")
    })
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn broker_restart_state_is_loaded_from_disk() {
    // Without any client to carry the view across, a fresh client sees what was stored.
    let pki = Pki::new(&["c1", "c2"]);
    let state_path = pki.path("broker.redb");
    let broker = RunningBroker::start(&pki, &state_path, loopback());
    let mut c1 = client(
        &pki,
        "c1",
        cluster("c1"),
        broker.addr,
        vec![export("web", "10.101.0.10")],
    );
    c1.wait_for("c1's own export to be accepted", |s| {
        has_export(s, "c1", "web")
    })
    .await;
    drop(c1);
    broker.stop().await;

    let broker = RunningBroker::start(&pki, &state_path, loopback());
    let mut c2 = client(&pki, "c2", cluster("c2"), broker.addr, vec![]);
    let state = c2.wait_for("c2 to get a snapshot", |s| s.connected).await;
    assert!(has_export(&state, "c1", "web"));
    assert!(state.view.clusters.contains_key(&id("c1")));
    broker.stop().await;
}

/// A hand-driven client, to send what a correct gateway never would.
async fn raw_session(
    config: quinn::ClientConfig,
    broker: SocketAddr,
    messages: &[ClientMessage],
) -> anyhow::Result<(
    quinn::Connection,
    quinn::RecvStream,
    quinn::SendStream,
    Decoder,
)> {
    let endpoint = quinn::Endpoint::client(loopback())?;
    let conn = endpoint
        .connect_with(config, broker, BROKER_SERVER_NAME)?
        .await?;
    let (mut send, recv) = conn.open_bi().await?;
    for m in messages {
        send.write_all(&wire::encode(m)?).await?;
    }
    Ok((conn, recv, send, Decoder::new()))
}

/// The broker's next message on a raw session, within the test deadline.
async fn next_message(recv: &mut quinn::RecvStream, decoder: &mut Decoder) -> BrokerMessage {
    tokio::time::timeout(DEADLINE, read_message(recv, decoder))
        .await
        .expect("a broker message within the deadline")
        .expect("a well-formed broker message")
}

async fn read_message(
    recv: &mut quinn::RecvStream,
    decoder: &mut Decoder,
) -> anyhow::Result<BrokerMessage> {
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(m) = decoder.decode()? {
            return Ok(m);
        }
        let n = recv
            .read(&mut buf)
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        decoder.extend(&buf[..n]);
    }
}

fn hello(info: ClusterInfo) -> ClientMessage {
    ClientMessage::Hello(Hello {
        cluster: info,
        resume: None,
    })
}

#[tokio::test]
async fn hello_claiming_another_cluster_is_rejected_and_not_stored() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());
    let config = certs::client_config(&pki.path("c1")).unwrap();
    let (_conn, mut recv, _send, mut decoder) =
        raw_session(config, broker.addr, &[hello(cluster("c2"))])
            .await
            .unwrap();
    let reply = next_message(&mut recv, &mut decoder).await;
    assert_eq!(
        reply,
        BrokerMessage::Rejected {
            reason: RejectReason::ForeignCluster {
                cert: id("c1"),
                claimed: id("c2")
            }
        }
    );
    // The broker ends the session after a rejected Hello.
    let end = tokio::time::timeout(DEADLINE, read_message(&mut recv, &mut decoder))
        .await
        .unwrap();
    assert!(end.is_err(), "{end:?}");

    let mut c2 = client(&pki, "c2", cluster("c2"), broker.addr, vec![]);
    let state = c2.wait_for("a snapshot", |s| s.connected).await;
    assert_eq!(
        state.view.clusters.keys().collect::<Vec<_>>(),
        vec![&id("c2")],
        "only the real c2"
    );
    broker.stop().await;
}

#[tokio::test]
async fn publish_for_another_cluster_is_rejected_and_not_applied() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());
    let config = certs::client_config(&pki.path("c1")).unwrap();
    let foreign = ClientMessage::Publish(Publish {
        cluster: id("c2"),
        exports: vec![export("web", "10.0.0.1")],
    });
    let (_conn, mut recv, mut send, mut decoder) =
        raw_session(config, broker.addr, &[hello(cluster("c1")), foreign])
            .await
            .unwrap();
    let first = next_message(&mut recv, &mut decoder).await;
    let BrokerMessage::Snapshot(snapshot) = first else {
        panic!("expected a snapshot, got {first:?}")
    };
    let mut revision = snapshot.revision;
    let rejected = loop {
        match next_message(&mut recv, &mut decoder).await {
            BrokerMessage::Delta(d) => revision = d.revision,
            other => break other,
        }
    };
    assert_eq!(
        rejected,
        BrokerMessage::Rejected {
            reason: RejectReason::ForeignCluster {
                cert: id("c1"),
                claimed: id("c2")
            }
        }
    );
    // The session stays usable, and nothing of the foreign write was stored.
    let own = ClientMessage::Publish(Publish {
        cluster: id("c1"),
        exports: vec![export("api", "10.0.0.2")],
    });
    send.write_all(&wire::encode(&own).unwrap()).await.unwrap();
    let delta = next_message(&mut recv, &mut decoder).await;
    assert_eq!(
        delta,
        BrokerMessage::Delta(Delta {
            epoch: snapshot.epoch,
            revision: revision + 1,
            changes: vec![Change::UpsertExport {
                cluster: id("c1"),
                export: export("api", "10.0.0.2")
            }],
        })
    );
    let mut c2 = client(&pki, "c2", cluster("c2"), broker.addr, vec![]);
    let state = c2.wait_for("a snapshot", |s| s.connected).await;
    assert!(!has_export(&state, "c2", "web"));
    broker.stop().await;
}

#[tokio::test]
async fn resuming_client_gets_only_what_it_missed() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());
    let config = certs::client_config(&pki.path("c1")).unwrap();
    let (conn, mut recv, _send, mut decoder) =
        raw_session(config.clone(), broker.addr, &[hello(cluster("c1"))])
            .await
            .unwrap();
    let BrokerMessage::Snapshot(snapshot) = next_message(&mut recv, &mut decoder).await else {
        panic!("expected a snapshot")
    };
    conn.close(0u32.into(), b"");
    let mut c2 = client(
        &pki,
        "c2",
        cluster("c2"),
        broker.addr,
        vec![export("db", "10.102.0.10")],
    );
    c2.wait_for("c2's export", |s| has_export(s, "c2", "db"))
        .await;

    let resume = Some(Resume {
        epoch: snapshot.epoch,
        revision: snapshot.revision,
    });
    let again = ClientMessage::Hello(Hello {
        cluster: cluster("c1"),
        resume,
    });
    let (_conn, mut recv, _send, mut decoder) =
        raw_session(config, broker.addr, &[again]).await.unwrap();
    let reply = next_message(&mut recv, &mut decoder).await;
    let BrokerMessage::Delta(delta) = reply else {
        panic!("expected a delta, got {reply:?}")
    };
    let Some(Change::UpsertCluster(c2)) = delta.changes.first() else {
        panic!("expected c2's registration first: {delta:?}")
    };
    assert_eq!(
        c2.global.len(),
        c2.cidrs.len(),
        "each claim has its global range"
    );
    let mut registered = cluster("c2");
    registered.global = c2.global.clone();
    assert_eq!(
        delta.changes,
        vec![
            Change::UpsertCluster(registered),
            Change::UpsertExport {
                cluster: id("c2"),
                export: export("db", "10.102.0.10")
            },
        ]
    );
    assert_eq!(delta.revision, snapshot.revision + 2);
    broker.stop().await;
}

/// Tries a whole exchange; `Err` if the broker refuses the connection at any point.
async fn try_hello(
    config: quinn::ClientConfig,
    broker: SocketAddr,
) -> anyhow::Result<BrokerMessage> {
    let (_conn, mut recv, _send, mut decoder) =
        raw_session(config, broker, &[hello(cluster("c1"))]).await?;
    read_message(&mut recv, &mut decoder).await
}

#[tokio::test]
async fn client_with_certificate_from_another_ca_is_refused() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());
    // A rogue CA issues a "c1" certificate; the client trusts the real CA for the broker.
    certs::init_ca(&pki.path("rogue-ca")).unwrap();
    certs::issue_cluster(&pki.path("rogue-ca"), &id("c1"), &pki.path("rogue")).unwrap();
    std::fs::copy(pki.path("ca/ca.crt"), pki.path("rogue/ca.crt")).unwrap();
    let config = certs::client_config(&pki.path("rogue")).unwrap();
    let result = tokio::time::timeout(DEADLINE, try_hello(config, broker.addr))
        .await
        .expect("refused in time");
    assert!(result.is_err(), "{result:?}");
    broker.stop().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());
    let files = TlsFiles::load(&pki.path("c1")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(files.ca[0].clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let result = tokio::time::timeout(DEADLINE, try_hello(config, broker.addr))
        .await
        .expect("refused in time");
    assert!(result.is_err(), "{result:?}");
    broker.stop().await;
}

#[tokio::test]
async fn garbage_on_the_stream_ends_only_that_session() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let config = certs::client_config(&pki.path("c1")).unwrap();
    let conn = endpoint
        .connect_with(config, broker.addr, BROKER_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut decoder = Decoder::new();
    let end = tokio::time::timeout(DEADLINE, read_message(&mut recv, &mut decoder))
        .await
        .unwrap();
    assert!(end.is_err(), "{end:?}");
    // The broker still serves others.
    let mut c2 = client(&pki, "c2", cluster("c2"), broker.addr, vec![]);
    c2.wait_for("c2 to connect", |s| s.connected).await;
    broker.stop().await;
}

#[tokio::test]
async fn client_moves_on_to_the_next_broker_when_one_fails() {
    let pki = Pki::new(&["c1", "c2"]);
    // The first "broker" presents a certificate from another CA: the handshake fails at once.
    certs::init_ca(&pki.path("rogue-ca")).unwrap();
    certs::issue_broker(&pki.path("rogue-ca"), &pki.path("rogue-broker")).unwrap();
    let rogue_config = BrokerConfig {
        listen: loopback(),
        store: StoreLocation::Redb(pki.path("rogue.redb")),
        tls_dir: pki.path("rogue-broker"),
        options: BrokerOptions::default(),
    };
    let rogue = Broker::bind(&rogue_config).unwrap();
    let rogue_addr = rogue.local_addr().unwrap();
    let rogue_shutdown = CancellationToken::new();
    let rogue_task = tokio::spawn(rogue.run(rogue_shutdown.clone()));
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());

    let mut c1 = client_of(
        &pki,
        "c1",
        cluster("c1"),
        vec![rogue_addr, broker.addr],
        vec![export("web", "10.0.0.1")],
    );
    c1.wait_for("c1 to sync through the second broker", |s| {
        s.connected && has_export(s, "c1", "web")
    })
    .await;
    rogue_shutdown.cancel();
    rogue_task.await.unwrap().unwrap();
    broker.stop().await;
}

fn short_lease(lease_ms: u64, retention_ms: u64) -> BrokerOptions {
    BrokerOptions {
        rules: crate::broker::StateConfig {
            lease: Duration::from_millis(lease_ms),
            retention: Duration::from_millis(retention_ms),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn absent_cluster_is_withheld_after_its_lease_and_restored_when_back() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start_with(
        &pki,
        &pki.path("broker.redb"),
        loopback(),
        short_lease(200, 3_600_000),
    );
    let c1 = client(
        &pki,
        "c1",
        cluster("c1"),
        broker.addr,
        vec![export("web", "10.101.0.10")],
    );
    let mut c2 = client(&pki, "c2", cluster("c2"), broker.addr, vec![]);
    c2.wait_for("c1's export", |s| has_export(s, "c1", "web"))
        .await;

    drop(c1);
    let state = c2
        .wait_for("c1 to be withheld", |s| s.view.withheld.contains(&id("c1")))
        .await;
    assert!(
        !has_export(&state, "c1", "web"),
        "its exports are not served"
    );
    assert!(
        state.view.clusters.contains_key(&id("c1")),
        "it stays registered"
    );
    assert!(state.connected);

    let mut c1 = client(
        &pki,
        "c1",
        cluster("c1"),
        broker.addr,
        vec![export("web", "10.101.0.10")],
    );
    c1.wait_for("c1 to reconnect", |s| s.connected).await;
    let state = c2
        .wait_for("c1's export to return", |s| has_export(s, "c1", "web"))
        .await;
    assert!(state.view.withheld.is_empty());
    broker.stop().await;
}

#[tokio::test]
async fn cluster_gone_past_retention_is_removed_with_its_exports() {
    let pki = Pki::new(&["c1", "c2"]);
    let state_path = pki.path("broker.redb");
    let broker = RunningBroker::start_with(&pki, &state_path, loopback(), short_lease(100, 400));
    let c1 = client(
        &pki,
        "c1",
        cluster("c1"),
        broker.addr,
        vec![export("web", "10.101.0.10")],
    );
    let mut c2 = client(&pki, "c2", cluster("c2"), broker.addr, vec![]);
    c2.wait_for("c1's export", |s| has_export(s, "c1", "web"))
        .await;
    drop(c1);
    c2.wait_for("c1 to be removed", |s| {
        !s.view.clusters.contains_key(&id("c1")) && s.view.withheld.is_empty()
    })
    .await;
    broker.stop().await;
    // The removal was stored: it is not back after a restart.
    let loaded = RedbStore::open(&state_path).unwrap().load().unwrap();
    let ids: Vec<&ClusterId> = loaded.clusters.iter().map(|c| &c.id).collect();
    assert_eq!(ids, [&id("c2")]);
    assert!(loaded.exports.is_empty());
}

/// Reads messages until one that is not a Delta; returns it and the last revision seen.
async fn next_non_delta(
    recv: &mut quinn::RecvStream,
    decoder: &mut Decoder,
    mut revision: u64,
) -> (BrokerMessage, u64) {
    loop {
        match tokio::time::timeout(DEADLINE, read_message(recv, decoder))
            .await
            .expect("a message in time")
            .unwrap()
        {
            BrokerMessage::Delta(d) => revision = d.revision,
            other => return (other, revision),
        }
    }
}

#[tokio::test]
async fn publish_over_the_limits_is_rejected_and_the_session_stays_usable() {
    let pki = Pki::new(&["c1", "c2"]);
    let options = BrokerOptions {
        rules: crate::broker::StateConfig {
            max_services: 2,
            max_endpoints: 2,
            ..Default::default()
        },
        max_message_bytes: 2048,
        ..Default::default()
    };
    let broker = RunningBroker::start_with(&pki, &pki.path("broker.redb"), loopback(), options);
    let config = certs::client_config(&pki.path("c1")).unwrap();
    let publish = |exports: Vec<Export>| {
        ClientMessage::Publish(Publish {
            cluster: id("c1"),
            exports,
        })
    };
    let three = (0..3)
        .map(|i| export(&format!("s{i}"), "10.0.0.1"))
        .collect();
    let mut fat = export("web", "10.0.0.1");
    fat.endpoints = vec![fat.endpoints[0].clone(); 3];
    let mut huge = export("web", "10.0.0.1");
    huge.endpoints[0].hostname = Some("x".repeat(4096));
    let (_conn, mut recv, mut send, mut decoder) =
        raw_session(config, broker.addr, &[hello(cluster("c1"))])
            .await
            .unwrap();
    let BrokerMessage::Snapshot(snapshot) = next_message(&mut recv, &mut decoder).await else {
        panic!("expected a snapshot")
    };
    let mut revision = snapshot.revision;
    let table = [
        (
            publish(three),
            RejectReason::TooManyServices { count: 3, max: 2 },
        ),
        (
            publish(vec![fat]),
            RejectReason::TooManyEndpoints { count: 3, max: 2 },
        ),
    ];
    for (message, reason) in table {
        send.write_all(&wire::encode(&message).unwrap())
            .await
            .unwrap();
        let (reply, r) = next_non_delta(&mut recv, &mut decoder, revision).await;
        revision = r;
        assert_eq!(reply, BrokerMessage::Rejected { reason });
    }
    let frame = wire::encode(&publish(vec![huge])).unwrap();
    send.write_all(&frame).await.unwrap();
    let (reply, _) = next_non_delta(&mut recv, &mut decoder, revision).await;
    assert_eq!(
        reply,
        BrokerMessage::Rejected {
            reason: RejectReason::MessageTooLarge {
                len: frame.len() - 4,
                max: 2048
            }
        }
    );
    // Nothing of them was applied, and the session still works.
    send.write_all(&wire::encode(&publish(vec![export("api", "10.0.0.2")])).unwrap())
        .await
        .unwrap();
    let delta = next_message(&mut recv, &mut decoder).await;
    assert_eq!(
        delta,
        BrokerMessage::Delta(Delta {
            epoch: snapshot.epoch,
            revision: revision + 1,
            changes: vec![Change::UpsertExport {
                cluster: id("c1"),
                export: export("api", "10.0.0.2")
            }],
        })
    );
    broker.stop().await;
}

#[tokio::test]
async fn expired_client_certificate_is_refused_at_the_handshake() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());
    let now = crate::clock::wall_now();
    let day = Duration::from_secs(24 * 3600);
    certs::testing::issue_cluster_valid(
        &pki.path("ca"),
        &id("c1"),
        &pki.path("expired"),
        now - 30 * day,
        now - day,
    )
    .unwrap();
    let config = certs::client_config(&pki.path("expired")).unwrap();
    let result = tokio::time::timeout(DEADLINE, try_hello(config, broker.addr))
        .await
        .expect("refused in time");
    assert!(result.is_err(), "{result:?}");
    broker.stop().await;
}

#[tokio::test]
async fn self_signed_client_certificate_is_refused_at_the_handshake() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());
    certs::testing::self_signed_cluster(&pki.path("ca"), &id("c1"), &pki.path("selfsigned"))
        .unwrap();
    let config = certs::client_config(&pki.path("selfsigned")).unwrap();
    let result = tokio::time::timeout(DEADLINE, try_hello(config, broker.addr))
        .await
        .expect("refused in time");
    assert!(result.is_err(), "{result:?}");
    broker.stop().await;
}

/// Replaces the deny list file whole (the broker never reads half a file).
fn write_deny_list(path: &Path, text: &str) {
    let temp = path.with_extension("new");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn with_deny_list(path: &Path) -> BrokerOptions {
    BrokerOptions {
        deny_list: Some(path.to_owned()),
        deny_list_poll: Duration::from_millis(50),
        ..Default::default()
    }
}

#[tokio::test]
async fn revoked_cluster_is_cut_off_and_refused_until_the_entry_goes() {
    let pki = Pki::new(&["c1", "c2"]);
    let deny = pki.path("deny.list");
    write_deny_list(&deny, "# nobody yet\n");
    let broker = RunningBroker::start_with(
        &pki,
        &pki.path("broker.redb"),
        loopback(),
        with_deny_list(&deny),
    );
    let mut c1 = client(&pki, "c1", cluster("c1"), broker.addr, vec![]);
    let mut c2 = client(&pki, "c2", cluster("c2"), broker.addr, vec![]);
    c1.wait_for("c1 to connect", |s| s.connected).await;
    c2.wait_for("c2 to connect", |s| s.connected).await;

    write_deny_list(&deny, "cluster:c1\n");
    c1.wait_for("c1 to be cut off", |s| !s.connected).await;
    let config = certs::client_config(&pki.path("c1")).unwrap();
    let result = tokio::time::timeout(DEADLINE, try_hello(config, broker.addr))
        .await
        .expect("refused in time");
    assert!(result.is_err(), "a reconnect is refused: {result:?}");
    assert!(c2.state.borrow().connected, "c2 is not affected");

    // A list that does not parse changes nothing (c1 stays out)...
    write_deny_list(&deny, "cluster:c1\nnonsense\n");
    // ...and removing the entry lets c1 back.
    write_deny_list(&deny, "\n");
    c1.wait_for("c1 to be let back in", |s| s.connected).await;
    broker.stop().await;
}

#[tokio::test]
async fn gateway_picks_up_a_rotated_certificate_without_restart() {
    let pki = Pki::new(&["c1", "c2"]);
    let deny = pki.path("deny.list");
    write_deny_list(&deny, "");
    let broker = RunningBroker::start_with(
        &pki,
        &pki.path("broker.redb"),
        loopback(),
        with_deny_list(&deny),
    );
    let mut c1 = client(&pki, "c1", cluster("c1"), broker.addr, vec![]);
    c1.wait_for("c1 to connect", |s| s.connected).await;

    let rotated = certs::rotate_cluster(&pki.path("ca"), &id("c1"), &pki.path("c1")).unwrap();
    // Deny the NEW certificate: a client that picked it up is cut off, one still presenting
    // the old one would stay connected.
    write_deny_list(&deny, &format!("serial:{}\n", rotated.new_serial));
    c1.wait_for("c1 to switch to the new (denied) certificate", |s| {
        !s.connected
    })
    .await;
    // Retire the old one instead, as an operator would: c1 reconnects with the new one.
    write_deny_list(&deny, &format!("serial:{}\n", rotated.old_serial));
    c1.wait_for("c1 to reconnect with its new certificate", |s| s.connected)
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn gateways_resync_without_ghosts_after_the_broker_lost_its_history() {
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("first.redb"), loopback());
    let addr = broker.addr;
    let mut c1 = client(
        &pki,
        "c1",
        cluster("c1"),
        addr,
        vec![export("web", "10.101.0.10"), export("api", "10.101.0.11")],
    );
    let mut c2 = client(
        &pki,
        "c2",
        cluster("c2"),
        addr,
        vec![export("db", "10.102.0.10")],
    );
    c2.wait_for("c1's exports", |s| {
        has_export(s, "c1", "web") && has_export(s, "c1", "api")
    })
    .await;
    let old_epoch = c2.state.borrow().view.epoch;

    broker.stop().await;
    let state = c2.wait_for("the broker to be gone", |s| !s.connected).await;
    assert!(
        has_export(&state, "c1", "api"),
        "the last view is kept meanwhile"
    );
    // While the broker is down, c1 withdraws api and moves web.
    c1.exports.send_replace(vec![export("web", "10.101.0.99")]);

    // A new broker with an empty store: a new epoch, no history.
    let broker = RunningBroker::start(&pki, &pki.path("second.redb"), addr);
    let web = |s: &SyncState| {
        s.view
            .exports
            .get(&(id("c1"), ServiceKey::new("shop", "web").unwrap()))
            .map(|e| e.endpoints.clone())
    };
    let state = c2
        .wait_for("c2 to resync with c1's current exports", |s| {
            s.connected
                && s.view.epoch != old_epoch
                && web(s).is_some_and(|e| e[0].address.to_string() == "10.101.0.99")
                && has_export(s, "c2", "db")
        })
        .await;
    let keys: Vec<String> = state
        .view
        .exports
        .keys()
        .map(|(c, k)| format!("{c}:{k}"))
        .collect();
    assert_eq!(
        keys,
        vec!["c1:shop/web", "c2:shop/db"],
        "no ghost of c1's api"
    );
    assert_eq!(web(&state).unwrap().len(), 1, "no duplicate endpoint");
    c1.wait_for("c1 to resync too", |s| {
        s.connected && s.view.epoch != old_epoch
    })
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn out_of_bounds_fields_are_refused_to_the_sender_and_never_forwarded() {
    use crate::model::bounds::{Field, Problem, Violation};
    let pki = Pki::new(&["c1", "c2"]);
    let broker = RunningBroker::start(&pki, &pki.path("broker.redb"), loopback());
    let config = || certs::client_config(&pki.path("c1")).unwrap();

    // A Hello with a 4 MB region is refused, and the session ends.
    let mut huge = cluster("c1");
    huge.region = Some("r".repeat(4 << 20));
    let (_conn, mut recv, _send, mut decoder) = raw_session(config(), broker.addr, &[hello(huge)])
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut recv, &mut decoder).await,
        BrokerMessage::Rejected {
            reason: RejectReason::OutOfBounds(Violation {
                service: None,
                field: Field::Region,
                problem: Problem::TooLong {
                    len: 4 << 20,
                    max: 63
                },
            })
        }
    );

    // c2 watches; c1 publishes an export with port 0, then a valid one.
    let mut c2 = client(&pki, "c2", cluster("c2"), broker.addr, vec![]);
    c2.wait_for("c2 to connect", |s| s.connected).await;
    let mut zero = export("web", "10.0.0.1");
    zero.ports[0].port = 0;
    let publish = |exports: Vec<Export>| {
        ClientMessage::Publish(Publish {
            cluster: id("c1"),
            exports,
        })
    };
    let (_conn, mut recv, mut send, mut decoder) = raw_session(
        config(),
        broker.addr,
        &[hello(cluster("c1")), publish(vec![zero])],
    )
    .await
    .unwrap();
    let BrokerMessage::Snapshot(snapshot) = next_message(&mut recv, &mut decoder).await else {
        panic!("expected a snapshot")
    };
    let (reply, _) = next_non_delta(&mut recv, &mut decoder, snapshot.revision).await;
    assert_eq!(
        reply,
        BrokerMessage::Rejected {
            reason: RejectReason::OutOfBounds(Violation {
                service: Some(ServiceKey::new("shop", "web").unwrap()),
                field: Field::Port,
                problem: Problem::OutOfRange {
                    value: 0,
                    min: 1,
                    max: 65_535
                },
            })
        }
    );
    send.write_all(&wire::encode(&publish(vec![export("api", "10.0.0.2")])).unwrap())
        .await
        .unwrap();
    // The broker handles one session's messages in order: by the time api reaches c2, web
    // would have.
    let state = c2
        .wait_for("c1's api", |s| has_export(s, "c1", "api"))
        .await;
    assert!(
        !has_export(&state, "c1", "web"),
        "the refused export was forwarded"
    );
    broker.stop().await;
}
