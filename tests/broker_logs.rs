//! Text from a peer cannot forge lines in the broker's log: a real broker on loopback, with
//! its log written as `causeway broker` writes it (tracing's text format, no colours) into a
//! buffer, gets a Publish whose service name carries a newline and a fake log line; the
//! refusal is logged on one line, escaped, reaches the gateway, and nothing of it reaches
//! another gateway. Its own binary, because capturing the log of the broker's threads needs a
//! process-wide subscriber.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use causeway::broker::{Broker, BrokerConfig, BrokerOptions, StoreLocation};
use causeway::certs::{self, BROKER_SERVER_NAME};
use causeway::model::{
    ClusterId, ClusterInfo, Endpoint, Export, PortSpec, Protocol, ServiceKey, ServiceProps,
};
use causeway::sync::wire::{
    self, BrokerMessage, Change, ClientMessage, Decoder, Hello, Publish, RejectReason,
};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);
/// What the attacker wants the log to show as a line of its own (short enough to come back
/// whole in the refusal, which carries 64 characters of a name).
const FORGED: &str = "2030-01-01T00:00:00Z  INFO causeway: Cluster connected c9";

/// The log, as written so far.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn id(name: &str) -> ClusterId {
    ClusterId::new(name).expect("a cluster id")
}

fn cluster(name: &str) -> ClusterInfo {
    ClusterInfo {
        id: id(name),
        // Where the session comes from, as the broker's address plan requires.
        wg_endpoint: "127.0.0.1:51820".parse().expect("a socket address"),
        wg_public_key: [name.bytes().last().unwrap_or(0); 32],
        cidrs: vec!["10.101.0.0/16".parse().expect("a CIDR")],
        region: None,
        zone: None,
        global: vec![],
    }
}

/// `shop/<name>` (not checked: the point is to send what a gateway never would).
fn export(name: &str) -> Export {
    Export {
        service: ServiceKey {
            namespace: "shop".into(),
            name: name.into(),
        },
        cluster_ips: vec![],
        ports: vec![PortSpec {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
            app_protocol: None,
        }],
        endpoints: vec![Endpoint {
            address: "10.101.0.10".parse().expect("an address"),
            ready: true,
            hostname: None,
            zone: None,
        }],
        props: ServiceProps::default(),
    }
}

struct Session {
    recv: quinn::RecvStream,
    send: quinn::SendStream,
    decoder: Decoder,
    _conn: quinn::Connection,
}

impl Session {
    /// Connects with `tls`'s certificate and says Hello as `info`.
    async fn open(tls: &Path, broker: SocketAddr, info: ClusterInfo) -> Session {
        let config = certs::client_config(tls).expect("client tls");
        let endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal")).expect("endpoint");
        let conn = endpoint
            .connect_with(config, broker, BROKER_SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        let (send, recv) = conn.open_bi().await.expect("stream");
        let mut session = Session {
            recv,
            send,
            decoder: Decoder::new(),
            _conn: conn,
        };
        session
            .send(&ClientMessage::Hello(Hello {
                cluster: info,
                resume: None,
            }))
            .await;
        session
    }

    async fn send(&mut self, message: &ClientMessage) {
        let frame = wire::encode(message).expect("encode");
        self.send.write_all(&frame).await.expect("send");
    }

    async fn next(&mut self) -> BrokerMessage {
        let read = async {
            let mut buf = vec![0u8; 4096];
            loop {
                if let Some(message) = self.decoder.decode().expect("a well-formed message") {
                    return message;
                }
                let n = self
                    .recv
                    .read(&mut buf)
                    .await
                    .expect("read")
                    .expect("the stream stays open");
                self.decoder.extend(&buf[..n]);
            }
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .expect("a broker message within the deadline")
    }

    /// The next message that is not a Delta carrying only cluster registrations.
    async fn next_about_exports(&mut self) -> BrokerMessage {
        loop {
            match self.next().await {
                BrokerMessage::Delta(d)
                    if d.changes
                        .iter()
                        .all(|c| matches!(c, Change::UpsertCluster(_))) => {}
                other => return other,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_a_service_name_cannot_forge_a_broker_log_line() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .init();

    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    certs::init_ca(&root.join("ca")).expect("ca");
    certs::issue_broker(&root.join("ca"), &root.join("broker")).expect("broker cert");
    for c in ["c1", "c2"] {
        certs::issue_cluster(&root.join("ca"), &id(c), &root.join(c)).expect("cluster cert");
    }
    let broker = Broker::bind(&BrokerConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        store: StoreLocation::Redb(root.join("broker.redb")),
        tls_dir: root.join("broker"),
        options: BrokerOptions::default(),
    })
    .expect("broker binds");
    let addr = broker.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(broker.run(shutdown.clone()));

    let mut watcher = Session::open(&root.join("c2"), addr, cluster("c2")).await;
    assert!(matches!(watcher.next().await, BrokerMessage::Snapshot(_)));
    let mut attacker = Session::open(&root.join("c1"), addr, cluster("c1")).await;
    assert!(matches!(attacker.next().await, BrokerMessage::Snapshot(_)));

    let name = format!("web\n{FORGED}");
    attacker
        .send(&ClientMessage::Publish(Publish {
            cluster: id("c1"),
            exports: vec![export(&name)],
        }))
        .await;
    let refusal = attacker.next_about_exports().await;
    assert_eq!(
        refusal,
        BrokerMessage::Rejected {
            reason: RejectReason::InvalidService {
                service: export(&name).service
            }
        }
    );
    // A valid publish after it: the watcher's first news of c1's exports must be this one.
    attacker
        .send(&ClientMessage::Publish(Publish {
            cluster: id("c1"),
            exports: vec![export("api")],
        }))
        .await;
    let BrokerMessage::Delta(delta) = watcher.next_about_exports().await else {
        panic!("expected a delta");
    };
    let exports: Vec<&Export> = delta
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::UpsertExport { export, .. } => Some(export),
            _ => None,
        })
        .collect();
    assert_eq!(exports, vec![&export("api")], "{delta:?}");

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("broker stops")
        .expect("no panic")
        .expect("clean stop");

    let text = log.text();
    let rejected: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Publish rejected"))
        .collect();
    assert_eq!(rejected.len(), 1, "{text}");
    assert!(
        rejected[0].contains(&format!("shop/web\\n{FORGED}")),
        "the name is logged escaped, on the refusal's line: {text}"
    );
    for line in text.lines() {
        assert!(
            !line.starts_with("2030-01-01"),
            "a forged line in the log: {line:?}\n{text}"
        );
    }
}
