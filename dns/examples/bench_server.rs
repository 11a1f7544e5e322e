//! Bench harness for `bench/dns.sh`: serves a synthetic clusterset from `causeway_dns` on
//! loopback, optionally churning the table, and writes the equivalent static zone file (for
//! Knot DNS) and a dnsperf query file. Not a test and not part of CI.
//!
//! ```text
//! bench_server --listen 127.0.0.1:5300 --services 10000 --clusters 5 \
//!     [--updates-per-sec 1000] [--zone-file PATH] [--query-file PATH]
//! bench_server --check-torn 127.0.0.1:5300 --services 10000 --clusters 5 [--seconds 5]
//! ```
//!
//! Service `i` is `s<i>.ns<i%100>.svc.global`: a ClusterSetIP service with one cluster IP in
//! each of the clusters `c0..c<n>` (c0 local, the rest one remote group), and a named port
//! `http`. So each service has `S.N` (A ×n), `C.S.N` (A ×1, n names) and `_http._tcp.S.N`
//! (SRV ×n, additional A ×n). An update moves every cluster IP of one service at once (from
//! 10.x to 11.x or back), and updates are published in batches every 100 ms as snapshots
//! patched from the current one (only changed services re-encoded). Prints
//! `ready addr=… names=…` on stdout once serving.
//!
//! `--check-torn` is the client side of the torn-answer check: it asks the `S.N` A and the
//! `_http._tcp.S.N` SRV of services across the table for `--seconds`, and checks that every
//! answer is exactly one version the updater can have published (all the service's addresses
//! old, or all new; never a mix, never missing or extra records). Prints
//! `checked=N torn=M unanswered=K` and exits non-zero if any answer was torn.

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
    check_torn: Option<SocketAddr>,
    seconds: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 5300)),
        services: 10_000,
        clusters: 5,
        updates_per_sec: 0,
        zone_file: None,
        query_file: None,
        check_torn: None,
        seconds: 5,
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
            "--check-torn" => args.check_torn = Some(value.parse().map_err(|e| bad(&e))?),
            "--seconds" => args.seconds = value.parse().map_err(|e| bad(&e))?,
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
    if let Some(server) = args.check_torn {
        return check_torn(server, &args).await;
    }
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
    let table: Vec<ServiceRecords> = (0..args.services)
        .map(|i| service(i, args.clusters, &moved[i]))
        .collect();

    let shutdown = CancellationToken::new();
    let handle = causeway_dns::serve(
        Config {
            listen: args.listen,
            zones: zones.clone(),
            upstream: None,
            udp_sockets: None,
        },
        shutdown.clone(),
    )
    .await?;
    let started = causeway_dns::clock::now();
    let snapshot = Snapshot::new(&zones, table)?;
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
    let mut last = causeway_dns::clock::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = interrupt.recv() => break,
        }
        // Updates due since the last batch, at the configured rate.
        let now = causeway_dns::clock::now();
        let due = (now - last).as_secs_f64() * args.updates_per_sec as f64;
        last = now;
        let per_batch = due.round() as usize;
        let mut changed = std::collections::BTreeSet::new();
        for _ in 0..per_batch {
            // Spread over the table (a stride coprime to most sizes), every cluster at once.
            let i = next.wrapping_mul(7919) % args.services;
            for m in &mut moved[i] {
                *m = !*m;
            }
            changed.insert(i);
            next += 1;
        }
        // The harness knows what changed, so it patches instead of handing over the table.
        let upserts: Vec<ServiceRecords> = changed
            .iter()
            .map(|&i| service(i, args.clusters, &moved[i]))
            .collect();
        let started = causeway_dns::clock::now();
        let base = handle.current();
        let snapshot = tokio::task::spawn_blocking(move || base.patch(upserts, &[])).await??;
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

/// The torn-answer check (see the module docs): one UDP query at a time, so every reply is
/// matched to its question.
async fn check_torn(server: SocketAddr, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::collections::BTreeSet;
    use std::str::FromStr;

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let until = causeway_dns::clock::now() + Duration::from_secs(args.seconds);
    let (mut checked, mut torn, mut unanswered) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 4096];
    let mut n = 0usize;
    while causeway_dns::clock::now() < until {
        let i = n.wrapping_mul(104_729) % args.services;
        let srv = n % 2 == 1;
        n += 1;
        let (namespace, name) = names(i);
        let (qname, qtype) = if srv {
            (
                format!("_http._tcp.{name}.{namespace}.svc.global."),
                RecordType::SRV,
            )
        } else {
            (format!("{name}.{namespace}.svc.global."), RecordType::A)
        };
        let id = (n % 65_536) as u16;
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(Name::from_str(&qname)?, qtype));
        socket.send_to(&query.to_vec()?, server).await?;
        let reply = match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await
        {
            Ok(received) => Message::from_vec(&buf[..received?])?,
            Err(_) => {
                unanswered += 1;
                continue;
            }
        };
        if reply.metadata.id != id {
            unanswered += 1;
            continue;
        }
        // The addresses the reply carries: the answer's for A, the additional section's
        // (each target's address) for SRV.
        let records = if srv {
            &reply.additionals
        } else {
            &reply.answers
        };
        let got: BTreeSet<IpAddr> = records
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect();
        let count = records
            .iter()
            .filter(|r| matches!(r.data, RData::A(_)))
            .count();
        let version = |moved: bool| -> BTreeSet<IpAddr> {
            (0..args.clusters)
                .map(|c| cluster_ip(i, c, moved))
                .collect()
        };
        let targets = reply
            .answers
            .iter()
            .filter(|r| matches!(r.data, RData::SRV(_)))
            .count();
        let whole = count == args.clusters
            && (got == version(false) || got == version(true))
            && (!srv || targets == args.clusters);
        checked += 1;
        if !whole {
            torn += 1;
            if torn <= 5 {
                eprintln!("torn answer for {qname} {qtype}: {reply:?}");
            }
        }
    }
    println!("checked={checked} torn={torn} unanswered={unanswered}");
    if torn > 0 {
        return Err(format!("{torn} torn answers").into());
    }
    Ok(())
}
