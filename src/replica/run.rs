//! The replica's tokio shell (`causeway dns --from URL`): one loop that polls the gateway
//! ([`super::http::fetch`]), hands answers to the [`Follower`] core, builds and publishes
//! snapshots, and logs the core's events; plus the replica's admin port (`/healthz`,
//! `/readyz`, `/metrics`). No decisions here.
//!
//! DNS is bound once the first document has loaded, with that document's zones: before it,
//! the replica has nothing true to answer, and an unbound port is refused rather than
//! answered wrongly. From then on the last good records are served whatever the gateway does.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::http::fetch;
use super::proto::{AdminUrl, Event, Follower, RecordsDoc, ReplicaError};

/// What the replica runs with (from `causeway dns`'s flags).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The gateway admin port to follow.
    pub from: AdminUrl,
    /// Where DNS listens (UDP and TCP), once records have loaded.
    pub listen: SocketAddr,
    /// The replica's own admin port.
    pub admin_listen: SocketAddr,
    /// Where out-of-zone queries are forwarded; `None` refuses them.
    pub upstream: Option<SocketAddr>,
    /// How long each poll may be held by the gateway.
    pub wait: Duration,
    /// UDP sockets (threads) serving DNS; `None` = one per CPU.
    pub udp_sockets: Option<usize>,
}

/// What the replica's admin port reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Where DNS is bound, once records have loaded.
    pub dns: Option<SocketAddr>,
    /// The (instance, generation) served.
    pub have: Option<(u64, u64)>,
    pub services: usize,
    /// Whether the last poll of the gateway succeeded.
    pub reachable: bool,
    /// Polls that failed, since start.
    pub failures: u64,
}

/// A running replica.
#[derive(Debug)]
pub struct Replica {
    /// The bound admin address.
    pub admin: SocketAddr,
    /// The replica's status, updated on every turn.
    pub status: watch::Receiver<ReplicaStatus>,
    /// The follow loop; ends with an error only if DNS cannot be bound.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// `causeway dns`: runs a replica until `shutdown`.
pub async fn run(config: ReplicaConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let replica = start(config, shutdown).await?;
    replica.task.await.context("the replica loop panicked")?
}

/// Binds the admin port and starts following `config.from`.
pub async fn start(config: ReplicaConfig, shutdown: CancellationToken) -> anyhow::Result<Replica> {
    let (status_tx, status) = watch::channel(ReplicaStatus::default());
    let admin = serve_admin(config.admin_listen, status.clone(), shutdown.clone()).await?;
    info!(from = %config.from, dns = %config.listen, admin = %admin, "DNS replica started");
    let task = tokio::spawn(follow(config, status_tx, shutdown));
    Ok(Replica {
        admin,
        status,
        task,
    })
}

async fn follow(
    config: ReplicaConfig,
    status: watch::Sender<ReplicaStatus>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut follower = Follower::new(config.wait);
    let mut dns: Option<causeway_dns::Handle> = None;
    loop {
        if let Some(poll) = follower.poll_request(crate::clock::now()) {
            let reply = tokio::select! {
                reply = fetch(&config.from, &poll) => reply,
                () = shutdown.cancelled() => break,
            };
            let outcome = reply.and_then(|r| follower.handle_reply(r, crate::clock::now()));
            match outcome {
                Ok(None) => {}
                Ok(Some(doc)) => match apply(&config, &mut dns, &doc, &shutdown).await? {
                    Ok(()) => {
                        follower.handle_applied(&doc, crate::clock::now());
                        status.send_modify(|s| s.services = doc.services.len());
                    }
                    Err(e) => {
                        debug!(error = %e, "the gateway's records were refused");
                        status.send_modify(|s| s.failures += 1);
                        follower.handle_failure(e, crate::clock::now());
                    }
                },
                Err(e) => {
                    debug!(error = %e, "poll of the gateway failed");
                    status.send_modify(|s| s.failures += 1);
                    follower.handle_failure(e, crate::clock::now());
                }
            }
        } else {
            let wake = follower.poll_timeout().map(|(at, _why)| at);
            tokio::select! {
                () = sleep_until_opt(wake) => {}
                () = shutdown.cancelled() => break,
            }
        }
        while let Some(event) = follower.poll_event() {
            log(&config.from, &event);
        }
        status.send_modify(|s| {
            s.dns = dns.as_ref().map(causeway_dns::Handle::local_addr);
            s.have = follower.have();
            s.reachable = follower.reachable();
        });
    }
    Ok(())
}

/// Builds `doc` into a snapshot and serves it, binding DNS on the first one. The outer error
/// is fatal (DNS cannot be bound); the inner one is the document's fault.
async fn apply(
    config: &ReplicaConfig,
    dns: &mut Option<causeway_dns::Handle>,
    doc: &RecordsDoc,
    shutdown: &CancellationToken,
) -> anyhow::Result<Result<(), ReplicaError>> {
    let (zones, services) = (doc.zones.clone(), doc.services.clone());
    let base = dns.as_ref().map(causeway_dns::Handle::current);
    let built = tokio::task::spawn_blocking(move || match base {
        Some(base) => base.update(&zones, services),
        None => causeway_dns::Snapshot::new(&zones, services),
    })
    .await
    .context("the DNS snapshot build panicked")?;
    let snapshot = match built {
        Ok(snapshot) => snapshot,
        Err(e) => {
            return Ok(Err(ReplicaError::BadRecords { reason: chain(&e) }));
        }
    };
    let handle = match dns {
        Some(handle) => handle,
        None => {
            let handle = causeway_dns::serve(
                causeway_dns::Config {
                    listen: config.listen,
                    zones: doc.zones.clone(),
                    upstream: config.upstream,
                    udp_sockets: config.udp_sockets,
                },
                shutdown.clone(),
            )
            .await
            .with_context(|| format!("serving DNS on {}", config.listen))?;
            dns.insert(handle)
        }
    };
    handle.publish(snapshot);
    Ok(Ok(()))
}

async fn sleep_until_opt(wake: Option<std::time::Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn log(from: &AdminUrl, event: &Event) {
    match event {
        Event::Applied {
            generation,
            services,
            first: true,
        } => info!(%from, generation, services, "DNS records loaded from the gateway: serving"),
        Event::Applied {
            generation,
            services,
            first: false,
        } => debug!(%from, generation, services, "DNS records updated"),
        Event::Lost {
            error,
            loaded: true,
        } => warn!(%from, %error, "Gateway unreachable: serving the last good records"),
        Event::Lost {
            error,
            loaded: false,
        } => warn!(%from, %error, "Gateway unreachable: no records yet, DNS not serving"),
        Event::Restored => info!(%from, "Gateway reachable again"),
    }
}

/// An error and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// The replica's admin port: `/healthz` (200 while serving HTTP), `/readyz` (200 once records
/// have loaded, and from then on, also while the gateway is unreachable: the last good
/// records are served), `/metrics` (the replica's own state, Prometheus text).
async fn serve_admin(
    listen: SocketAddr,
    status: watch::Receiver<ReplicaStatus>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(status));
    let (local_addr, _) = crate::http::serve(listen, router, shutdown, "Admin port").await?;
    Ok(local_addr)
}

type StatusRx = Arc<watch::Receiver<ReplicaStatus>>;

/// The readiness verdict and its reason in words.
pub fn readiness(status: &ReplicaStatus) -> (bool, String) {
    match (status.have, status.reachable) {
        (None, _) => (false, "no records loaded from the gateway yet".to_owned()),
        (Some((_, generation)), true) => (
            true,
            format!(
                "serving generation {generation} ({} services)",
                status.services
            ),
        ),
        (Some((_, generation)), false) => (
            true,
            format!(
                "serving the last good generation {generation} ({} services); the gateway is unreachable",
                status.services
            ),
        ),
    }
}

async fn readyz(State(status): State<StatusRx>) -> Response {
    let (ready, reason) = readiness(&status.borrow());
    let (code, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    (code, format!("{word}: {reason}\n")).into_response()
}

async fn metrics(State(status): State<StatusRx>) -> Response {
    let s = status.borrow().clone();
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        );
    };
    gauge(
        "causeway_dns_replica_ready",
        "Whether records have been loaded from the gateway (1) or not (0).",
        u64::from(s.have.is_some()),
    );
    gauge(
        "causeway_dns_replica_gateway_reachable",
        "Whether the last poll of the gateway succeeded.",
        u64::from(s.reachable),
    );
    gauge(
        "causeway_dns_replica_generation",
        "The generation of the gateway's records served.",
        s.have.map_or(0, |(_, g)| g),
    );
    gauge(
        "causeway_dns_replica_services",
        "Services in the records served.",
        s.services as u64,
    );
    let _ = write!(
        text,
        "# HELP causeway_dns_replica_poll_failures_total Polls of the gateway that failed.\n\
         # TYPE causeway_dns_replica_poll_failures_total counter\n\
         causeway_dns_replica_poll_failures_total {}\n",
        s.failures
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
