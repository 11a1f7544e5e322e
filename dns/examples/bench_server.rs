//! Bench harness for `bench/dns.sh`: serves a synthetic clusterset from `causeway_dns` on
//! loopback, optionally churning the table, and writes the equivalent static zone file (for
//! Knot DNS) and a dnsperf query file. Not a test and not part of CI.
//!
//! ```text
//! bench_server --listen 127.0.0.1:5300 --services 10000 --clusters 5 \
//!     [--updates-per-sec 1000] [--zone-file PATH] [--query-file PATH]
//! ```
//!
//! Service `i` is `s<i>.ns<i%100>.svc.global`: a ClusterSetIP service with one cluster IP in
//! each of the clusters `c0..c<n>` (c0 local, the rest one remote group), and a named port
//! `http`. So each service has `S.N` (A ×n), `C.S.N` (A ×1, n names) and `_http._tcp.S.N`
//! (SRV ×n, additional A ×n). Updates move one cluster IP of a service and republish the
//! whole snapshot, batched every 100 ms as the gateway would. Prints `ready addr=… names=…`
//! on stdout once serving.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use causeway_dns::{
    ClusterRecords, Config, NamedPort, PortProtocol, ServiceKind, ServiceRecords, Snapshot,
    ZoneConfig,
};
use tokio_util::sync::CancellationToken;

/// How often updates are applied: the gateway republishes per batch of changes, not per change.
const UPDATE_BATCH: Duration = Duration::from_millis(100);

struct Args {
    listen: SocketAddr,
    services: usize,
    clusters: usize,
    updates_per_sec: usize,
    zone_file: Option<PathBuf>,
    query_file: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 5300)),
        services: 10_000,
        clusters: 5,
        updates_per_sec: 0,
        zone_file: None,
        query_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--listen" => args.listen = value.parse().map_err(|e| bad(&e))?,
            "--services" => args.services = value.parse().map_err(|e| bad(&e))?,
            "--clusters" => args.clusters = value.parse().map_err(|e| bad(&e))?,
            "--updates-per-sec" => args.updates_per_sec = value.parse().map_err(|e| bad(&e))?,
            "--zone-file" => args.zone_file = Some(value.into()),
            "--query-file" => args.query_file = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.clusters == 0 || args.clusters > 100 {
        return Err("--clusters must be 1..=100".into());
    }
    Ok(args)
}

/// Service `i`'s cluster IP in cluster `c`; `moved` picks the alternative address an update
/// switches to.
fn cluster_ip(i: usize, c: usize, moved: bool) -> IpAddr {
    let [.., hi, lo] = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
    let second = u8::try_from(100 + c).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(if moved { 11 } else { 10 }, second, hi, lo))
}

fn names(i: usize) -> (String, String) {
    (format!("ns{}", i % 100), format!("s{i}"))
}

fn service(i: usize, clusters: usize, moved: &[bool]) -> ServiceRecords {
    let (namespace, name) = names(i);
    let ips: Vec<IpAddr> = (0..clusters).map(|c| cluster_ip(i, c, moved[c])).collect();
    ServiceRecords {
        namespace,
        name,
        kind: ServiceKind::ClusterSetIp {
            clusterset_ips: Vec::new(),
        },
        tiers: vec![ips[..1].to_vec(), ips[1..].to_vec()],
        clusters: ips
            .iter()
            .enumerate()
            .map(|(c, ip)| ClusterRecords {
                cluster: format!("c{c}"),
                priority: u16::from(c > 0),
                addresses: vec![*ip],
                hosts: Vec::new(),
            })
            .collect(),
        ports: vec![NamedPort {
            name: "http".into(),
            port: 80,
            protocol: PortProtocol::Tcp,
        }],
    }
}

/// The same data as a static RFC 1035 zone file, for Knot DNS.
fn zone_file(services: usize, clusters: usize, ttl: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "$ORIGIN svc.global.\n$TTL {ttl}\n@ IN SOA ns.svc.global. hostmaster.svc.global. 1 3600 600 86400 {ttl}\n@ IN NS ns.svc.global."
    );
    for i in 0..services {
        let (ns, s) = names(i);
        for c in 0..clusters {
            let ip = cluster_ip(i, c, false);
            let _ = writeln!(out, "{s}.{ns} IN A {ip}");
            let _ = writeln!(out, "c{c}.{s}.{ns} IN A {ip}");
            let _ = writeln!(
                out,
                "_http._tcp.{s}.{ns} IN SRV {} 1 80 c{c}.{s}.{ns}.svc.global.",
                u16::from(c > 0)
            );
        }
    }
    out
}

/// A dnsperf query file: every service name (A), a cluster-pinned name for every 4th, SRV for
/// every 8th and a name that does not exist (NXDOMAIN) for every 10th.
fn query_file(services: usize) -> String {
    let mut out = String::new();
    for i in 0..services {
        let (ns, s) = names(i);
        let _ = writeln!(out, "{s}.{ns}.svc.global A");
        if i % 4 == 0 {
            let _ = writeln!(out, "c{}.{s}.{ns}.svc.global A", i % 5);
        }
        if i % 8 == 0 {
            let _ = writeln!(out, "_http._tcp.{s}.{ns}.svc.global SRV");
        }
        if i % 10 == 0 {
            let _ = writeln!(out, "nx{i}.{ns}.svc.global A");
        }
    }
    out
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let zones = ZoneConfig {
        clusterset_zone: None,
        ..ZoneConfig::default()
    };
    if let Some(path) = &args.zone_file {
        std::fs::write(path, zone_file(args.services, args.clusters, zones.ttl))?;
    }
    if let Some(path) = &args.query_file {
        std::fs::write(path, query_file(args.services))?;
    }
    let mut moved = vec![vec![false; args.clusters]; args.services];
    let mut table: Vec<ServiceRecords> = (0..args.services)
        .map(|i| service(i, args.clusters, &moved[i]))
        .collect();

    let shutdown = CancellationToken::new();
    let handle = causeway_dns::serve(
        Config {
            listen: args.listen,
            zones: zones.clone(),
            upstream: None,
        },
        shutdown.clone(),
    )
    .await?;
    let started = tokio::time::Instant::now();
    let snapshot = Snapshot::new(&zones, table.clone())?;
    let names = snapshot.names();
    handle.publish(snapshot);
    let build_ms = started.elapsed().as_millis();
    // Only now is the table served: the bench waits for this line, not for the first answer
    // (the empty zone answers the SOA from the start).
    println!(
        "ready addr={} names={names} build_ms={build_ms}",
        handle.local_addr()
    );

    // One listener for the whole run: a SIGINT that arrives between two polls is not lost.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let per_batch = args.updates_per_sec * UPDATE_BATCH.as_millis() as usize / 1000;
    if per_batch == 0 || args.services == 0 {
        interrupt.recv().await;
        return Ok(());
    }
    let mut ticker = tokio::time::interval(UPDATE_BATCH);
    // A batch that takes longer than the interval delays the next; updates are not dropped,
    // they accumulate into the next batch.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0usize;
    let mut published = 0u64;
    let mut building = Duration::ZERO;
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = interrupt.recv() => break,
        }
        // Updates due since the last batch, at the configured rate.
        let now = tokio::time::Instant::now();
        let due = (now - last).as_secs_f64() * args.updates_per_sec as f64;
        last = now;
        let per_batch = due.round() as usize;
        for _ in 0..per_batch {
            let i = next % args.services;
            let c = (next / args.services) % args.clusters;
            moved[i][c] = !moved[i][c];
            table[i] = service(i, args.clusters, &moved[i]);
            next += 1;
        }
        let build = table.clone();
        let zones = zones.clone();
        let started = tokio::time::Instant::now();
        let snapshot = tokio::task::spawn_blocking(move || Snapshot::new(&zones, build)).await??;
        handle.publish(snapshot);
        building += started.elapsed();
        published += 1;
    }
    eprintln!(
        "updates={next} snapshots={published} mean_build_ms={}",
        building.as_millis() / u128::from(published.max(1))
    );
    shutdown.cancel();
    Ok(())
}
