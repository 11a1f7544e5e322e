//! Load generator for `bench/broker.sh`: one real broker process, many simulated clusters as
//! real QUIC/mTLS clients in this process.
//!
//! Each cluster says Hello and publishes its services; once every cluster holds the whole
//! clusterset ("first full sync"), the churn phase changes a fraction of all endpoints per
//! second, each change one endpoint of one service (its cluster republishes, as a gateway
//! does). An endpoint's address encodes the change's number, so every receiving client can
//! timestamp the change's arrival; its propagation time is from the publish being written to
//! the last of the other clusters receiving it. The broker's CPU time and peak RSS are read from
//! /proc; bytes are QUIC's UDP bytes received by all clients during the churn.
//!
//! The clients decode frames and keep only what they measure (no full view clone per update,
//! as a gateway's sync client does), so that 100 of them on one machine load the broker, not
//! themselves.
//!
//! Usage: `broker_bench CAUSEWAY_BINARY [--clusters N] [--services N] [--endpoints N]
//! [--churn-percent P] [--seconds S] [--store LOCATION]` (`--store` is passed to the broker,
//! e.g. `etcd://127.0.0.1:2379`; without it the broker uses a redb file).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use causeway::certs;
use causeway::clock;
use causeway::model::{ClusterId, ClusterInfo, Endpoint, Export, PortSpec, Protocol, ServiceKey};
use causeway::sync::wire::{self, BrokerMessage, Change, ClientMessage, Decoder, Hello, Publish};
use tokio::sync::{Mutex, mpsc};

struct Args {
    binary: PathBuf,
    clusters: usize,
    services: usize,
    endpoints: usize,
    churn_percent: f64,
    seconds: u64,
    store: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let binary = PathBuf::from(
        it.next()
            .context("usage: broker_bench CAUSEWAY_BINARY ...")?,
    );
    let mut args = Args {
        binary,
        clusters: 100,
        services: 10_000,
        endpoints: 3,
        churn_percent: 1.0,
        seconds: 60,
        store: None,
    };
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--clusters" => args.clusters = value.parse()?,
            "--services" => args.services = value.parse()?,
            "--endpoints" => args.endpoints = value.parse()?,
            "--churn-percent" => args.churn_percent = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--store" => args.store = Some(value),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(args)
}

/// The address that marks change `n` (1-based): 11.0.0.0/8 holds 16M changes.
fn marker(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0b00_0000 | (n & 0x00ff_ffff)))
}

fn change_of(address: &IpAddr) -> Option<u32> {
    match address {
        IpAddr::V4(v4) if v4.octets()[0] == 11 => Some(u32::from(*v4) & 0x00ff_ffff),
        _ => None,
    }
}

fn cluster_id(i: usize) -> ClusterId {
    ClusterId::new(format!("c{i}")).expect("c<number> is a DNS label")
}

fn initial_exports(cluster: usize, services: usize, endpoints: usize) -> Vec<Export> {
    (0..services)
        .map(|s| Export {
            service: ServiceKey::new("bench", format!("s{cluster}-{s}")).expect("valid name"),
            cluster_ips: vec![],
            ports: vec![PortSpec {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
                app_protocol: None,
            }],
            endpoints: (0..endpoints)
                .map(|e| Endpoint {
                    address: IpAddr::V4(Ipv4Addr::new(10, (cluster % 250) as u8, s as u8, e as u8)),
                    ready: true,
                    hostname: None,
                    zone: None,
                })
                .collect(),
            props: Default::default(),
        })
        .collect()
}

/// What one client measured.
#[derive(Default)]
struct Observed {
    /// When the client first held every export of the clusterset.
    full_sync: Option<Instant>,
    /// (change, arrival) for each change first seen.
    arrivals: Vec<(u32, Instant)>,
    /// The broker ended the session before the bench did (it drops sessions that fall too far
    /// behind; a gateway would reconnect and resume, this client stops).
    dropped: bool,
}

struct ClientHandle {
    publish: mpsc::Sender<(Vec<Export>, Vec<u32>)>,
    conn: quinn::Connection,
}

/// Sent times of changes, indexed by change number.
type SentLog = Arc<Mutex<HashMap<u32, Instant>>>;

async fn start_client(
    broker: SocketAddr,
    tls_dir: &Path,
    index: usize,
    exports: Vec<Export>,
    total_exports: usize,
    sent: SentLog,
    synced: Arc<AtomicUsize>,
) -> anyhow::Result<(
    ClientHandle,
    tokio::task::JoinHandle<anyhow::Result<Observed>>,
)> {
    let config = certs::client_config(tls_dir)?;
    let endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into())?;
    let conn = endpoint
        .connect_with(config, broker, certs::BROKER_SERVER_NAME)?
        .await
        .context("connecting to the broker")?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let id = cluster_id(index);
    let info = ClusterInfo {
        id: id.clone(),
        // The address the session comes from, as the broker's address plan requires.
        wg_endpoint: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 51820),
        wg_public_key: [index as u8; 32],
        cidrs: vec![
            format!("10.{}.0.0/16", index % 250).parse()?,
            "11.0.0.0/8".parse()?,
        ],
        region: None,
        zone: None,
        global: vec![],
    };
    send.write_all(&wire::encode(&ClientMessage::Hello(Hello {
        cluster: info,
        resume: None,
    }))?)
    .await?;
    send.write_all(&wire::encode(&ClientMessage::Publish(Publish {
        cluster: id.clone(),
        exports,
    }))?)
    .await?;
    let (publish, mut publishes) = mpsc::channel::<(Vec<Export>, Vec<u32>)>(64);
    let task = tokio::spawn(async move {
        let _endpoint = endpoint;
        let mut observed = Observed::default();
        let mut held: HashSet<(ClusterId, ServiceKey)> = HashSet::new();
        let mut seen: HashSet<u32> = HashSet::new();
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            tokio::select! {
                read = recv.read(&mut buf) => {
                    let n = match read {
                        Ok(Some(n)) => n,
                        Ok(None) => {
                            observed.dropped = true;
                            return Ok(observed);
                        }
                        Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::LocallyClosed)) => {
                            return Ok(observed);
                        }
                        Err(e) => {
                            eprintln!("session of {id} ended: {e}");
                            observed.dropped = true;
                            return Ok(observed);
                        }
                    };
                    let now = clock::now();
                    decoder.extend(&buf[..n]);
                    while let Some(message) = decoder.decode::<BrokerMessage>()? {
                        match message {
                            BrokerMessage::Snapshot(s) => {
                                held = s.exports.into_iter().map(|(c, e)| (c, e.service)).collect();
                            }
                            BrokerMessage::Delta(d) => {
                                for change in d.changes {
                                    match change {
                                        Change::UpsertExport { cluster, export } => {
                                            for e in &export.endpoints {
                                                if let Some(n) = change_of(&e.address)
                                                    && cluster != id
                                                    && seen.insert(n)
                                                {
                                                    observed.arrivals.push((n, now));
                                                }
                                            }
                                            held.insert((cluster, export.service));
                                        }
                                        Change::RemoveExport { cluster, service } => {
                                            held.remove(&(cluster, service));
                                        }
                                        _ => {}
                                    }
                                }
                            }
                            BrokerMessage::Rejected { reason } => bail!("rejected: {reason}"),
                        }
                        if observed.full_sync.is_none() && held.len() >= total_exports {
                            observed.full_sync = Some(now);
                            synced.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                next = publishes.recv() => {
                    let Some((exports, changes)) = next else { return Ok(observed) };
                    let frame = wire::encode(&ClientMessage::Publish(Publish { cluster: id.clone(), exports }))?;
                    let now = clock::now();
                    {
                        let mut sent = sent.lock().await;
                        for n in changes {
                            sent.insert(n, now);
                        }
                    }
                    if let Err(e) = send.write_all(&frame).await {
                        eprintln!("session of {id} ended: {e}");
                        observed.dropped = true;
                        return Ok(observed);
                    }
                }
            }
        }
    });
    Ok((ClientHandle { publish, conn }, task))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

/// The broker child, killed on drop.
struct BrokerProcess(Child);

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let per_cluster = args.services / args.clusters;
    let total_exports = per_cluster * args.clusters;
    let total_endpoints = total_exports * args.endpoints;
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    certs::init_ca(&root.join("ca"))?;
    certs::issue_broker(&root.join("ca"), &root.join("broker"))?;
    for i in 0..args.clusters {
        certs::issue_cluster(
            &root.join("ca"),
            &cluster_id(i),
            &root.join(format!("c{i}")),
        )?;
    }
    let port = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let broker_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let store = match &args.store {
        Some(location) => ["--store".to_owned(), location.clone()],
        None => [
            "--state".to_owned(),
            root.join("broker.redb").display().to_string(),
        ],
    };
    let child = Command::new(&args.binary)
        .args([
            "--log",
            "warn",
            "broker",
            "--listen",
            &broker_addr.to_string(),
            // Every cluster claims its own 10.C.0.0/16 and the marker range 11.0.0.0/8 (see
            // `marker`): 100 /8s need a global range larger than the default /10.
            "--global-v4",
            "128.0.0.0/1",
        ])
        .args(store)
        .arg("--tls-dir")
        .arg(root.join("broker"))
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.binary.display()))?;
    let pid = child.id();
    let _broker = BrokerProcess(child);
    eprintln!(
        "broker pid {pid} on {broker_addr}; {} clusters × {per_cluster} services × {} endpoints",
        args.clusters, args.endpoints
    );

    let sent: SentLog = Arc::default();
    let synced = Arc::new(AtomicUsize::new(0));
    let started = clock::now();
    let mut clients = vec![];
    let mut tasks = vec![];
    let mut exports: Vec<Vec<Export>> = vec![];
    for i in 0..args.clusters {
        let mine = initial_exports(i, per_cluster, args.endpoints);
        let tls = root.join(format!("c{i}"));
        let mut attempt = 0;
        let (handle, task) = loop {
            match start_client(
                broker_addr,
                &tls,
                i,
                mine.clone(),
                total_exports,
                sent.clone(),
                synced.clone(),
            )
            .await
            {
                Ok(started) => break started,
                // The broker may still be starting.
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    if attempt == 50 {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        clients.push(handle);
        tasks.push(task);
        exports.push(mine);
    }
    eprintln!("all clients connected after {:?}", clock::now() - started);

    // Wait for the first full sync of everyone, bounded.
    let deadline = clock::now() + Duration::from_secs(300);
    while synced.load(Ordering::SeqCst) < args.clusters {
        if clock::now() > deadline {
            bail!("the first full sync did not finish within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("first full sync after {:?}", clock::now() - started);

    // Churn: every 100 ms, change churn% / 10 of the endpoints, each change one endpoint.
    let per_tick = ((total_endpoints as f64) * args.churn_percent / 100.0 / 10.0).round() as usize;
    let ticks = args.seconds * 10;
    let rx_before: u64 = clients.iter().map(|c| c.conn.stats().udp_rx.bytes).sum();
    let cpu_before = cpu_ticks(pid)?;
    let churn_started = clock::now();
    let mut next_change = 1u32;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..ticks {
        interval.tick().await;
        let mut touched: HashMap<usize, Vec<u32>> = HashMap::new();
        for _ in 0..per_tick {
            // xorshift: a fixed, seeded sequence of (cluster, service, endpoint).
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let c = (rng % args.clusters as u64) as usize;
            let s = ((rng >> 20) % per_cluster as u64) as usize;
            let e = ((rng >> 40) % args.endpoints as u64) as usize;
            exports[c][s].endpoints[e].address = marker(next_change);
            touched.entry(c).or_default().push(next_change);
            next_change += 1;
        }
        for (c, changes) in touched {
            // A dropped client's changes are never sent: they do not count.
            let _ = clients[c].publish.send((exports[c].clone(), changes)).await;
        }
    }
    let changes = (next_change - 1) as usize;
    let churn_time = clock::now() - churn_started;
    let cpu_after = cpu_ticks(pid)?;
    // Let the last changes arrive (bounded).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rx_after: u64 = clients.iter().map(|c| c.conn.stats().udp_rx.bytes).sum();
    let peak_rss = peak_rss_kib(pid)?;

    let mut observed = vec![];
    for (handle, task) in clients.into_iter().zip(tasks) {
        handle.conn.close(0u32.into(), b"bench done");
        drop(handle.publish);
        observed.push(task.await??);
    }
    let dropped = observed.iter().filter(|o| o.dropped).count();
    let full_sync = observed
        .iter()
        .map(|o| o.full_sync)
        .collect::<Option<Vec<_>>>()
        .context("a client never held the whole clusterset")?
        .into_iter()
        .max()
        .expect("at least one client");
    let sent = sent.lock().await;
    let mut last_arrival: HashMap<u32, (Instant, usize)> = HashMap::new();
    for o in &observed {
        for (n, at) in &o.arrivals {
            let entry = last_arrival.entry(*n).or_insert((*at, 0));
            entry.0 = entry.0.max(*at);
            entry.1 += 1;
        }
    }
    // A change overwritten within the same publish never leaves the publisher: count only
    // changes some cluster received, and those that reached every other cluster.
    let mut latencies = vec![];
    let mut partial = 0;
    for (n, (last, count)) in &last_arrival {
        if *count + 1 < observed.len() {
            partial += 1;
            continue;
        }
        if let Some(sent_at) = sent.get(n) {
            latencies.push(last.saturating_duration_since(*sent_at));
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let cpu_secs = (cpu_after - cpu_before) as f64 / 100.0; // USER_HZ is 100 on Linux
    let bytes = rx_after - rx_before;
    let bytes_per_change = bytes as f64 / changes as f64;
    println!(
        "clusters={} services={total_exports} endpoints={total_endpoints}",
        args.clusters
    );
    println!(
        "first_full_sync_s={:.2}",
        (full_sync - started).as_secs_f64()
    );
    println!(
        "changes={changes} delivered_everywhere={} partially_delivered={partial} sessions_dropped={dropped} churn_s={:.1}",
        latencies.len(),
        churn_time.as_secs_f64()
    );
    println!(
        "propagation_ms p50={:.1} p99={:.1} max={:.1}",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    println!(
        "broker_cpu={:.0}% of one core during churn, peak_rss_mib={:.0}",
        100.0 * cpu_secs / churn_time.as_secs_f64(),
        peak_rss as f64 / 1024.0
    );
    println!(
        "bytes_per_change={:.0} (all {} recipients, QUIC UDP), per recipient={:.0}",
        bytes_per_change,
        args.clusters - 1,
        bytes_per_change / (args.clusters - 1) as f64
    );
    println!(
        "broker propagation_p99_ms={:.0} peak_rss_mib={:.0} bytes_per_change={:.0}",
        ms(percentile(&latencies, 99.0)),
        peak_rss as f64 / 1024.0,
        bytes_per_change
    );
    Ok(())
}
