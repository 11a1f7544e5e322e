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
use crate::explain::{ExplainError, explain, parse_name};
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
    let params = query_params(uri.query().unwrap_or(""));
    let Some(name) = params.get("name") else {
        return api_error(StatusCode::BAD_REQUEST, "missing ?name=".into());
    };
    let qtype_text = params
        .get("type")
        .map_or("A".to_owned(), |t| t.to_ascii_uppercase());
    let qtype = match qtype_text.as_str() {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "SRV" => RecordType::SRV,
        other => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("type {other:?} is not one of A, AAAA, SRV"),
            );
        }
    };
    let service = match parse_name(
        name,
        &ctx.info.dns_zone,
        ctx.info.clusterset_zone.as_deref(),
    ) {
        Ok(service) => service,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let answer = lookup(ctx.info.dns_listen, name, qtype).await;
    let view = ctx.view.borrow().clone();
    let explained: Result<Explanation, ExplainError> = explain(
        &view,
        &service,
        name,
        &qtype_text,
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

/// `a=b&c=d` with `%XX` and `+` decoded; the first of repeated keys wins.
fn query_params(query: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k))
            .or_insert_with(|| percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let p = query_params("name=web.shop.svc.global&type=aaaa&x=%41%2b+b&name=second&bad=%zz%4");
        assert_eq!(p["name"], "web.shop.svc.global");
        assert_eq!(p["type"], "aaaa");
        assert_eq!(p["x"], "A+ b");
        assert_eq!(p["bad"], "%zz%4");
    }
}
