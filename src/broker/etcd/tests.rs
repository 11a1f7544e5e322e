//! High availability on etcd, end to end on loopback: a three-member etcd cluster (real
//! `etcd` processes), two broker replicas on it, and three gateways (the real QUIC sync
//! client, certificates from `certs`). Every wait polls a condition with a deadline; the whole
//! test is bounded by [`TEST_DEADLINE`]. Needs the `etcd` binary (Debian's etcd-server,
//! installed by tests/install-deps.sh), not root.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::broker::{Broker, BrokerConfig, BrokerOptions, StoreLocation};
use crate::model::fixtures::{cluster, id};
use crate::model::{Export, ServiceKey};
use crate::sync::SyncState;
use crate::testing::{Pki, SyncClient};

const TEST_DEADLINE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(20);

/// A three-member etcd cluster on loopback, in a temporary directory; killed on drop (also
/// when a test panics).
struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Option<Child>>,
    client_urls: Vec<String>,
    /// Each member's (client, peer) port.
    ports: Vec<(u16, u16)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl EtcdCluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut cluster = Self {
            members: vec![],
            client_urls: ports
                .iter()
                .map(|(client, _)| format!("http://127.0.0.1:{client}"))
                .collect(),
            ports,
            dir,
        };
        for i in 0..3 {
            let child = cluster.spawn(i);
            cluster.members.push(Some(child));
        }
        cluster
    }

    /// Starts member `i` (again, on its data directory, after [`EtcdCluster::kill`]).
    fn spawn(&self, i: usize) -> Child {
        let initial = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("causeway-ha-{}", self.dir.path().display());
        let (client, peer) = self.ports[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("m{i}.log")))
            .unwrap();
        Command::new(etcd_binary())
            .args(["--name", &format!("m{i}")])
            .args(["--data-dir", &self.data_dir(i).display().to_string()])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new"])
            // Fast elections on loopback: the tests kill members.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            // The broker's largest batch in one transaction (see broker::etcd).
            .args(["--max-txn-ops", "32768", "--max-request-bytes", "16777216"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {} (install etcd-server): {e}",
                    etcd_binary().display()
                )
            })
    }

    /// Starts member `i` again after [`EtcdCluster::kill`].
    fn restart(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "m{i} is running");
        self.members[i] = Some(self.spawn(i));
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}"))
    }

    fn location(&self) -> StoreLocation {
        StoreLocation::Etcd(self.client_urls.clone())
    }

    /// Waits until a quorum answers a linearizable read.
    async fn wait_healthy(&self) {
        let deadline = crate::clock::now() + WAIT;
        loop {
            let attempt = async {
                let mut client = etcd_client::Client::connect(&self.client_urls, None).await?;
                client.get("health", None).await
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(_)) => return,
                other if crate::clock::now() > deadline => {
                    panic!(
                        "etcd cluster not healthy within {WAIT:?}: {other:?}; logs in {}",
                        self.dir.path().display()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The member that leads the raft group now.
    async fn leader(&self) -> usize {
        for (i, url) in self.client_urls.iter().enumerate() {
            let mut client = etcd_client::Client::connect([url], None).await.unwrap();
            let status = client.status().await.unwrap();
            if status.header().map(|h| h.member_id()) == Some(status.leader()) {
                return i;
            }
        }
        panic!("no etcd member says it leads");
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("CAUSEWAY_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

struct Replica {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    async fn start(etcd: &EtcdCluster, tls: &Path) -> Self {
        Self::start_with(etcd, tls, BrokerOptions::default()).await
    }

    async fn start_with(etcd: &EtcdCluster, tls: &Path, options: BrokerOptions) -> Self {
        Self::start_on(etcd.location(), tls, options).await
    }

    /// A replica whose etcd client knows only `members`.
    async fn start_on_members(etcd: &EtcdCluster, members: &[usize], tls: &Path) -> Self {
        let urls = members.iter().map(|&i| etcd.client_urls[i].clone());
        Self::start_on(
            StoreLocation::Etcd(urls.collect()),
            tls,
            BrokerOptions::default(),
        )
        .await
    }

    async fn start_on(store: StoreLocation, tls: &Path, options: BrokerOptions) -> Self {
        let config = BrokerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            store,
            tls_dir: tls.to_owned(),
            options,
        };
        let broker = Broker::open(&config).await.unwrap();
        let addr = broker.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(broker.run(shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    /// Stops it without draining: its sessions are cut off as they are, mid-stream.
    fn kill(self) {
        self.shutdown.cancel();
        self.task.abort();
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("broker stops")
            .unwrap()
            .unwrap();
    }
}

/// `name`'s exports as a gateway sees them.
fn exports_of(state: &SyncState, name: &str) -> BTreeMap<ServiceKey, Export> {
    state
        .view
        .exports
        .iter()
        .filter(|((c, _), _)| *c == id(name))
        .map(|((_, s), e)| (s.clone(), e.clone()))
        .collect()
}

fn as_map(exports: &[Export]) -> BTreeMap<ServiceKey, Export> {
    exports
        .iter()
        .map(|e| (e.service.clone(), e.clone()))
        .collect()
}

/// Step `i` of a cluster's stream of changes: services come and go, endpoints move, and each
/// service has one to three endpoints.
fn step(tag: u8, i: u32) -> Vec<Export> {
    (0..6u32)
        .filter(|k| !(i + k).is_multiple_of(5))
        .map(|k| {
            let mut e = crate::model::fixtures::export(
                &format!("s{k}"),
                &format!("10.{tag}.{}.{k}", i % 250),
            );
            let first = e.endpoints[0].clone();
            for extra in 1..=((i + k) % 3) {
                let mut more = first.clone();
                more.address = format!("10.{tag}.{}.{}", i % 250, 100 + extra)
                    .parse()
                    .unwrap();
                e.endpoints.push(more);
            }
            e
        })
        .collect()
}

/// Records every set of `name`'s exports a gateway's view goes through, in order.
fn observe(
    mut state: watch::Receiver<SyncState>,
    name: &'static str,
) -> JoinHandle<Vec<BTreeMap<ServiceKey, Export>>> {
    tokio::spawn(async move {
        let mut seen: Vec<BTreeMap<ServiceKey, Export>> = vec![];
        loop {
            let now = exports_of(&state.borrow_and_update(), name);
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            if state.changed().await.is_err() {
                return seen;
            }
        }
    })
}

/// Sends `count` steps of changes, one every few milliseconds (pacing the load, not waiting
/// for a result); `midway` runs after half of them. Returns every set published.
async fn stream(
    gateway: &SyncClient,
    tag: u8,
    from: u32,
    count: u32,
    midway: impl FnOnce(),
) -> Vec<Vec<Export>> {
    let mut midway = Some(midway);
    let mut published = vec![];
    for i in from..from + count {
        if i == from + count / 2 {
            (midway.take().unwrap())();
        }
        let exports = step(tag, i);
        published.push(exports.clone());
        gateway.exports.send_replace(exports);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    published
}

/// Everything the store holds, read through `members` as a starting replica reads it.
async fn load(members: &[String]) -> Persisted {
    let store = EtcdStore::connect(members).await.unwrap();
    tokio::task::spawn_blocking(move || store.load())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (tests/install-deps.sh installs it; tests/run.sh runs it)"]
async fn gateway_fails_over_between_replicas_and_every_change_arrives_once() {
    tokio::time::timeout(TEST_DEADLINE, fail_over_between_replicas())
        .await
        .expect("the HA test finishes within its deadline");
}

async fn fail_over_between_replicas() {
    let pki = Pki::new(&["c1", "c2", "c3"]);
    let mut etcd = EtcdCluster::start();
    etcd.wait_healthy().await;
    let a = Replica::start(&etcd, &pki.path("broker")).await;
    let b = Replica::start(&etcd, &pki.path("broker")).await;

    // c1 talks to A; c2 and c3 to B. Each lists both replicas.
    let mut c1 = SyncClient::start(
        pki.path("c1"),
        cluster("c1"),
        vec![a.addr, b.addr],
        step(1, 0),
    );
    let mut c2 = SyncClient::start(
        pki.path("c2"),
        cluster("c2"),
        vec![b.addr, a.addr],
        step(2, 0),
    );
    let mut c3 = SyncClient::start(
        pki.path("c3"),
        cluster("c3"),
        vec![b.addr, a.addr],
        step(3, 0),
    );
    for (gw, name) in [(&mut c1, "c1"), (&mut c2, "c2"), (&mut c3, "c3")] {
        gw.wait_for(&format!("{name} to see all three clusters"), |s| {
            s.connected
                && ["c1", "c2", "c3"]
                    .iter()
                    .all(|c| exports_of(s, c) == as_map(&step(c.as_bytes()[1] - b'0', 0)))
        })
        .await;
    }
    let seen_at_c2 = observe(c2.state.clone(), "c1");
    let seen_at_c3 = observe(c3.state.clone(), "c1");

    // Phase 1: c1 streams changes through A while c2 streams through B (the replicas race
    // for each revision); A dies halfway; c1 moves to B and goes on.
    let mut published = vec![step(1, 0)];
    let mut a = Some(a);
    let c1_stream = stream(&c1, 1, 1, 60, || a.take().unwrap().kill());
    let c2_stream = stream(&c2, 2, 1, 60, || {});
    let (c1_published, c2_published) = tokio::join!(c1_stream, c2_stream);
    published.extend(c1_published);
    let last_c1 = as_map(published.last().unwrap());
    let last_c2 = as_map(c2_published.last().unwrap());
    for (gw, name) in [(&mut c1, "c1"), (&mut c2, "c2"), (&mut c3, "c3")] {
        gw.wait_for(&format!("{name} to hold c1's and c2's last exports"), |s| {
            s.connected && exports_of(s, "c1") == last_c1 && exports_of(s, "c2") == last_c2
        })
        .await;
    }

    // Phase 2: the etcd leader dies while c1 and c2 stream through B; nothing acknowledged
    // is lost.
    let c2_stream = stream(&c2, 2, 1, 40, || {});
    // The leader: the member every write goes through, and whose loss forces an election.
    let leader = etcd.leader().await;
    let c1_stream = stream(&c1, 1, 100, 40, || etcd.kill(leader));
    let (c2_published, c1_published) = tokio::join!(c2_stream, c1_stream);
    published.extend(c1_published);
    let last_c1 = as_map(published.last().unwrap());
    let last_c2 = as_map(c2_published.last().unwrap());
    for (gw, name) in [(&mut c1, "c1"), (&mut c2, "c2"), (&mut c3, "c3")] {
        gw.wait_for(&format!("{name} to hold c1's and c2's last exports"), |s| {
            s.connected && exports_of(s, "c1") == last_c1 && exports_of(s, "c2") == last_c2
        })
        .await;
    }

    // Final views are equal everywhere: no lost, duplicated or ghost endpoints.
    let views: Vec<_> = [&c1, &c2, &c3]
        .iter()
        .map(|g| g.state.borrow().view.clone())
        .collect();
    assert_eq!(views[0].exports, views[1].exports);
    assert_eq!(views[1].exports, views[2].exports);
    assert_eq!(views[0].revision, views[2].revision);
    assert_eq!(exports_of(&c3.state.borrow(), "c3"), as_map(&step(3, 0)));
    // What etcd holds (read through the surviving members) is what the gateways hold.
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| etcd.client_urls[i].clone())
        .collect();
    let persisted = load(&survivors).await;
    assert_eq!(persisted.revision, views[0].revision);
    let stored: BTreeMap<_, _> = persisted
        .exports
        .into_iter()
        .map(|(c, e)| ((c, e.service.clone()), e))
        .collect();
    assert_eq!(stored, views[0].exports);

    // Every state of c1 another gateway went through is one c1 published: a change is applied
    // whole, once, and nothing appears that c1 did not export.
    drop((c1, c2, c3));
    let published: Vec<BTreeMap<ServiceKey, Export>> =
        published.iter().map(|p| as_map(p)).collect();
    for (name, seen) in [
        ("c2", seen_at_c2.await.unwrap()),
        ("c3", seen_at_c3.await.unwrap()),
    ] {
        for view in &seen {
            assert!(
                published.contains(view),
                "{name} saw c1 export a set it never published: {view:#?}"
            );
        }
        assert!(
            seen.len() > 10,
            "{name} saw the stream ({} states)",
            seen.len()
        );
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (tests/install-deps.sh installs it; tests/run.sh runs it)"]
async fn replicas_agree_on_leases_and_withhold_a_gone_cluster_once() {
    tokio::time::timeout(TEST_DEADLINE, agree_on_leases())
        .await
        .expect("the lease test finishes within its deadline");
}

/// The `WithholdCluster` / `RestoreCluster` changes of `name` in etcd's log, in order.
async fn lease_changes(etcd: &EtcdCluster, name: &str) -> Vec<&'static str> {
    let store = EtcdStore::connect(&etcd.client_urls).await.unwrap();
    let batches = tokio::task::spawn_blocking(move || store.committed_since(0))
        .await
        .unwrap()
        .unwrap();
    batches
        .into_iter()
        .flat_map(|(_, changes)| changes)
        .filter_map(|change| match change {
            Change::WithholdCluster(c) if c == id(name) => Some("withhold"),
            Change::RestoreCluster { cluster, .. } if cluster == id(name) => Some("restore"),
            _ => None,
        })
        .collect()
}

async fn agree_on_leases() {
    const LEASE: Duration = Duration::from_millis(500);
    let pki = Pki::new(&["c1", "c2", "c3"]);
    let etcd = EtcdCluster::start();
    etcd.wait_healthy().await;
    let options = BrokerOptions {
        rules: crate::broker::StateConfig {
            lease: LEASE,
            retention: Duration::from_secs(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let tls = pki.path("broker");
    let a = Replica::start_with(&etcd, &tls, options.clone()).await;
    let b = Replica::start_with(&etcd, &tls, options).await;
    let c1 = SyncClient::start(pki.path("c1"), cluster("c1"), vec![a.addr], step(1, 0));
    let mut c2 = SyncClient::start(pki.path("c2"), cluster("c2"), vec![b.addr], step(2, 0));
    c2.wait_for("c2 to see c1's exports", |s| {
        s.connected && exports_of(s, "c1") == as_map(&step(1, 0))
    })
    .await;

    // c1's session is at A only; B counts A's presence key, so neither withholds c1 however
    // many leases pass. (Time must pass for this: nothing would signal it.)
    tokio::time::sleep(LEASE * 4).await;
    assert!(
        lease_changes(&etcd, "c1").await.is_empty(),
        "c1 was withheld while connected to A"
    );
    assert_eq!(exports_of(&c2.state.borrow(), "c1"), as_map(&step(1, 0)));

    // c1 goes: withheld once, though both replicas' leases run out.
    drop(c1);
    c2.wait_for("c1 to be withheld", |s| {
        s.view.withheld.contains(&id("c1")) && exports_of(s, "c1").is_empty()
    })
    .await;
    // c1 comes back, at B this time: restored once.
    let _c1 = SyncClient::start(pki.path("c1"), cluster("c1"), vec![b.addr], step(1, 0));
    c2.wait_for("c1 to be restored", |s| {
        !s.view.withheld.contains(&id("c1")) && exports_of(s, "c1") == as_map(&step(1, 0))
    })
    .await;
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(
        lease_changes(&etcd, "c1").await,
        vec!["withhold", "restore"]
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (tests/install-deps.sh installs it; tests/run.sh runs it)"]
async fn a_replica_cut_off_across_a_compaction_ends_with_every_change() {
    tokio::time::timeout(TEST_DEADLINE, catch_up_past_a_compaction())
        .await
        .expect("the compaction test finishes within its deadline");
}

/// B's etcd client knows only m1. m1 dies; c1 changes its exports through A (on m0 and m2);
/// the history is compacted past everything B saw, c1's last commit included; m1 returns.
/// B's watch restarts at a compacted revision and cannot replay those commits: c2 (at B)
/// gets c1's changes only if B reads the missed batches from the log. Two paths lead there
/// (the watch's `Lagging` event, and a conflict on B's own next write); this checks the
/// outcome, not which path ran first.
async fn catch_up_past_a_compaction() {
    let pki = Pki::new(&["c1", "c2", "c3"]);
    let mut etcd = EtcdCluster::start();
    etcd.wait_healthy().await;
    let tls = pki.path("broker");
    let a = Replica::start_on_members(&etcd, &[0, 2], &tls).await;
    let b = Replica::start_on_members(&etcd, &[1], &tls).await;
    let c1 = SyncClient::start(pki.path("c1"), cluster("c1"), vec![a.addr], step(1, 0));
    let mut c2 = SyncClient::start(pki.path("c2"), cluster("c2"), vec![b.addr], step(2, 0));
    c2.wait_for("c2 to see c1's exports", |s| {
        s.connected && exports_of(s, "c1") == as_map(&step(1, 0))
    })
    .await;

    etcd.kill(1);
    // Two commits B must not miss: one removes a service, the next changes only another one,
    // so the last commit alone does not give the final state.
    let mut removed = step(1, 0);
    let gone = removed.remove(0).service;
    let mut last = removed.clone();
    let moved = last.last_mut().expect("more than one service");
    *moved = crate::model::fixtures::export(&moved.service.name, "10.1.99.99");
    for exports in [removed, last.clone()] {
        c1.exports.send_replace(exports);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last;
    // Wait until A has committed the last set, then compact etcd's history up to now.
    let survivors = vec![etcd.client_urls[0].clone(), etcd.client_urls[2].clone()];
    let deadline = crate::clock::now() + WAIT;
    loop {
        let persisted = load(&survivors).await;
        let c1_now: BTreeMap<_, _> = persisted
            .exports
            .into_iter()
            .filter(|(c, _)| *c == id("c1"))
            .map(|(_, e)| (e.service.clone(), e))
            .collect();
        if c1_now == as_map(&last) {
            break;
        }
        assert!(
            crate::clock::now() < deadline,
            "A did not commit c1's changes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = etcd_client::Client::connect(&survivors, None)
        .await
        .unwrap();
    // A write outside the broker's keys, so that the compaction takes every log entry B has
    // not seen: a watch restarted at the compacted revision reports no commit at all.
    let revision = client
        .put("causeway-test/unrelated", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    assert_ne!(
        exports_of(&c2.state.borrow(), "c1"),
        as_map(&last),
        "c2 learnt c1's changes with B's only etcd member down"
    );

    etcd.restart(1);
    c2.wait_for("c2 to catch up with c1's last exports", |s| {
        s.connected && exports_of(s, "c1") == as_map(&last)
    })
    .await;
    assert!(!exports_of(&c2.state.borrow(), "c1").contains_key(&gone));
    drop((c1, c2));
    a.stop().await;
    b.stop().await;
}
