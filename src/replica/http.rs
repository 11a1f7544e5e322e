//! Both ends of the records long poll over HTTP: the gateway's [`RecordsPublisher`] and the
//! handler its admin port routes `GET /api/v1/dns/records` to, and the replica's [`fetch`]
//! (one HTTP/1.1 GET on a fresh connection, like `admin::client`). The rules are in `proto`.

use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use causeway_dns::{ServiceRecords, ZoneConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use super::proto::{AdminUrl, PollQuery, RecordsDoc, ReplicaError, Reply, is_news};

/// The largest document a replica accepts (as `admin::client`): 64 MiB holds the records of
/// far more services than one clusterset runs.
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;
/// How long past the asked wait the replica gives a poll before calling the gateway
/// unreachable: the gateway answers a poll from memory.
const RESPONSE_GRACE: Duration = Duration::from_secs(5);

/// The gateway's side: the current [`RecordsDoc`], published by the gateway loop.
#[derive(Debug)]
pub struct RecordsPublisher {
    tx: watch::Sender<Option<Arc<RecordsDoc>>>,
    instance: u64,
    generation: u64,
}

/// What the admin server reads the current document from.
#[derive(Debug, Clone)]
pub struct RecordsFeed(watch::Receiver<Option<Arc<RecordsDoc>>>);

impl RecordsPublisher {
    /// A publisher with a fresh random instance, and the feed for the admin server.
    pub fn new() -> (Self, RecordsFeed) {
        // RandomState is seeded from the OS per process: a random instance without an RNG
        // dependency.
        let instance = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        let (tx, rx) = watch::channel(None);
        (
            Self {
                tx,
                instance,
                generation: 0,
            },
            RecordsFeed(rx),
        )
    }

    /// Publishes the table the gateway's own DNS now serves; call after every publish to the
    /// DNS server. Wakes every held poll.
    pub fn publish(&mut self, zones: &ZoneConfig, services: &[ServiceRecords]) {
        self.generation += 1;
        let doc = RecordsDoc {
            instance: self.instance,
            generation: self.generation,
            zones: zones.clone(),
            services: services.to_vec(),
        };
        self.tx.send_replace(Some(Arc::new(doc)));
    }
}

/// Answers one poll (`query` is the request's query string): the current document as soon as
/// it is news to the asker, `204` when the wait ends without news, `400` for a bad query,
/// `503` when the gateway loop is gone.
pub async fn answer_poll(feed: &RecordsFeed, query: &str) -> Response {
    let poll = match PollQuery::parse(query) {
        Ok(poll) => poll,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let mut rx = feed.0.clone();
    let waited = tokio::time::timeout(
        poll.wait,
        rx.wait_for(|doc| doc.as_ref().is_some_and(|d| is_news(d, &poll))),
    )
    .await;
    match waited {
        Ok(Ok(doc)) => {
            let doc = doc
                .clone()
                .expect("wait_for returned a document that is news");
            axum::Json(doc.as_ref()).into_response()
        }
        Ok(Err(_closed)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down\n",
        )
            .into_response(),
        Err(_elapsed) => StatusCode::NO_CONTENT.into_response(),
    }
}

/// The replica's side: one poll of `from`, waiting for the answer up to the poll's wait plus
/// a grace period.
pub async fn fetch(from: &AdminUrl, poll: &PollQuery) -> Result<Reply, ReplicaError> {
    let unreachable = |reason: String| ReplicaError::Unreachable {
        from: from.to_string(),
        reason,
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&from.authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n\r\n",
            poll.to_path(),
            from.authority
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if raw.len() as u64 > MAX_RESPONSE {
            return Err(ReplicaError::BadDocument {
                reason: format!("larger than {MAX_RESPONSE} bytes"),
            });
        }
        let (status, body) =
            crate::http::parse_response(&raw).map_err(|e| unreachable(format!("{e:#}")))?;
        Ok(match status {
            200 => Reply::Records(body),
            204 => Reply::Unchanged,
            status => Reply::Other { status, body },
        })
    };
    tokio::time::timeout(poll.wait + RESPONSE_GRACE, exchange)
        .await
        .unwrap_or_else(|_| Err(unreachable("no answer in time".into())))
}
