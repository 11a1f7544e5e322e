//! The admin port's axum shell: routes, reading the latest [`GatewayView`] and the live
//! counters per request, and handing them to the pure builders (`status::build`,
//! `explain::explain`, `metrics::encode`). No decisions here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use causeway_dns::proto::rr::RecordType;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::admin::lookup::lookup;
use crate::admin::metrics::{self, Recorders, Scrape};
use crate::admin::{Sources, link_mtu, readiness};
use crate::explain::{ExplainError, QueryType, explain, parse_query};
use crate::status::api::{ApiError, Explanation, Status};
use crate::status::{GatewayInfo, GatewayView};
use crate::status::{Live, build};

/// A running admin server.
#[derive(Debug, Clone)]
pub struct AdminServer {
    local_addr: SocketAddr,
}

impl AdminServer {
    /// The bound address (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

struct Ctx {
    info: GatewayInfo,
    view: watch::Receiver<GatewayView>,
    sources: Arc<dyn Sources>,
    recorders: Recorders,
}

/// Binds `listen` and serves the admin API until `shutdown` is cancelled. `view` is the
/// gateway loop's latest [`GatewayView`]; `recorders` the families endpoint probers and the
/// gateway loop record into.
/// Fails only if the address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    info: GatewayInfo,
    view: watch::Receiver<GatewayView>,
    sources: Arc<dyn Sources>,
    recorders: Recorders,
    shutdown: CancellationToken,
) -> anyhow::Result<AdminServer> {
    let ctx = Arc::new(Ctx {
        info,
        view,
        sources,
        recorders,
    });
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/status", get(status_json))
        .route("/api/v1/explain", get(explain_json))
        .route(crate::replica::proto::PATH, get(dns_records))
        .with_state(ctx);
    let (local_addr, _) = crate::http::serve(listen, router, shutdown, "Admin port").await?;
    info!(addr = %local_addr, "Admin port serving /metrics, /healthz, /readyz, /api/v1");
    Ok(AdminServer { local_addr })
}

/// What a standby replica (waiting for the leader lease) serves on the admin port: alive
/// (`/healthz` 200, so the kubelet does not restart it), not ready (`/readyz` 503, so the
/// `causeway-gateway-admin` Service and DNS replicas never pick it), and nothing else. It stops
/// and releases the port when `stop` is cancelled; await the returned task before binding the
/// real admin port.
pub async fn serve_standby(
    listen: SocketAddr,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok: standby\n" }))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "standby: waiting for the leader lease\n",
            )
        });
    crate::http::serve(listen, router, stop, "Standby admin port").await
}

async fn dns_answers(info: &GatewayInfo) -> Result<(), String> {
    let answer = lookup(info.dns_listen, &info.dns_zone, RecordType::SOA).await;
    match (answer.rcode.as_deref(), answer.error) {
        (Some("NOERROR"), _) => Ok(()),
        (Some(rcode), _) => Err(format!("the zone apex answers {rcode}")),
        (None, error) => Err(error.unwrap_or_else(|| "no answer".into())),
    }
}

async fn status_of(ctx: &Ctx) -> Status {
    let view = ctx.view.borrow().clone();
    let peers = ctx.sources.peer_stats().await;
    let mut link_mtus = BTreeMap::new();
    for p in &peers {
        match link_mtu::link_mtu(p.endpoint) {
            Ok(mtu) => {
                link_mtus.insert(p.endpoint, mtu);
            }
            Err(error) => debug!(endpoint = %p.endpoint, %error, "no link MTU towards the peer"),
        }
    }
    let dns_queries = ctx
        .sources
        .dns_stats()
        .queries
        .iter()
        .map(|q| q.count)
        .sum();
    let ready = readiness(&view, dns_answers(&ctx.info).await);
    build(
        &ctx.info,
        &view,
        Live {
            peers,
            link_mtus,
            dns_queries,
            ready,
        },
        crate::clock::now(),
    )
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    let view = ctx.view.borrow().clone();
    let (ready, reason) = readiness(&view, dns_answers(&ctx.info).await);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if ready { "ready" } else { "not ready" };
    (code, format!("{word}: {reason}\n")).into_response()
}

async fn metrics_text(State(ctx): State<Arc<Ctx>>) -> Response {
    let status = status_of(&ctx).await;
    let scrape = Scrape {
        status,
        dns: ctx.sources.dns_stats(),
        device: ctx.sources.device_stats().await,
    };
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::encode(scrape, &ctx.recorders),
    )
        .into_response()
}

async fn status_json(State(ctx): State<Arc<Ctx>>) -> Response {
    axum::Json(status_of(&ctx).await).into_response()
}

async fn dns_records(State(ctx): State<Arc<Ctx>>, uri: Uri) -> Response {
    match ctx.sources.dns_records() {
        Some(feed) => crate::replica::http::answer_poll(&feed, uri.query().unwrap_or("")).await,
        None => api_error(
            StatusCode::NOT_FOUND,
            "this server publishes no DNS records".into(),
        ),
    }
}

fn api_error(code: StatusCode, error: String) -> Response {
    (code, axum::Json(ApiError { error })).into_response()
}

async fn explain_json(State(ctx): State<Arc<Ctx>>, uri: Uri) -> Response {
    let query = match parse_query(
        uri.query().unwrap_or(""),
        &ctx.info.dns_zone,
        ctx.info.clusterset_zone.as_deref(),
    ) {
        Ok(query) => query,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let qtype = match query.qtype {
        QueryType::A => RecordType::A,
        QueryType::Aaaa => RecordType::AAAA,
        QueryType::Srv => RecordType::SRV,
    };
    let answer = lookup(ctx.info.dns_listen, &query.name, qtype).await;
    let view = ctx.view.borrow().clone();
    let explained: Result<Explanation, ExplainError> = explain(
        &view,
        &query.service,
        &query.name,
        query.qtype.as_str(),
        answer,
        crate::clock::now(),
    );
    match explained {
        Ok(e) => axum::Json(e).into_response(),
        Err(e @ ExplainError::UnknownService { .. }) => {
            api_error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => api_error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
