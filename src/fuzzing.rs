//! Entry points for the fuzz targets in `tests/fuzz/` (public with the `fuzzing` feature):
//! arbitrary bytes fed exactly where outside input enters causeway's own parsers.
//!
//! - [`sync_broker`]: a gateway's frames at the broker (ClientMessage decoding, then the
//!   broker state's judging and applying, as the state task does).
//! - [`sync_gateway`]: a broker's frames at the gateway (BrokerMessage decoding, then
//!   `ClusterSession` and the view translation).
//! - [`file_source`]: a file of the file source (`source::file::parse_file`).
//! - [`k8s_objects`]: a Service, its EndpointSlices and a ServiceExport as JSON, into the
//!   model (`source::k8s::export`).
//! - [`admin_query`]: the admin API's explain query string (`explain::parse_query`).
//!
//! Nothing here may panic, and each checks the invariant its parser promises (noted on each).
//! The unit test below replays the committed corpora, so CI covers them without a fuzzer;
//! `bench/fuzz.sh` runs the fuzzer.

use std::path::Path;

use crate::broker::state::writers::{Claim, Writers};
use crate::broker::state::{BrokerState, SessionOrigin, StateConfig};
use crate::broker::store::Persisted;
use crate::model::{ClusterId, ClusterInfo, bounds};
use crate::sync::proto::ClusterSession;
use crate::sync::wire::{self, BrokerMessage, ClientMessage, Decoder};

/// The cluster every fuzzed session speaks for (its certificate's id).
const CLUSTER: &str = "c1";

fn cluster() -> ClusterId {
    ClusterId::new(CLUSTER).expect("a DNS label")
}

/// The messages in `data`: as length-prefixed frames (what the stream carries), and the
/// whole input as one bare postcard message too.
fn messages<T: serde::de::DeserializeOwned>(data: &[u8]) -> Vec<T> {
    let mut out = vec![];
    let mut decoder = Decoder::new();
    decoder.extend(data);
    while let Ok(Some(message)) = decoder.decode::<T>() {
        out.push(message);
    }
    if let Ok(message) = postcard::from_bytes::<T>(data) {
        out.push(message);
    }
    out
}

/// One session of c1 at a broker that holds nothing. Invariants: only c1's records ever
/// exist (the certificate check), every stored export is within its bounds, and the state's
/// snapshot round-trips through the codec.
pub fn sync_broker(data: &[u8]) {
    broker_snapshot(data);
}

fn broker_snapshot(data: &[u8]) -> crate::sync::wire::Snapshot {
    let now = crate::clock::now();
    let cert = cluster();
    let mut state = BrokerState::new(Persisted::empty(1), StateConfig::default(), now);
    let mut writers = Writers::default();
    // Sessions of the seeds come from loopback, where their endpoints are (the address plan
    // accepts an endpoint only at the session's source).
    let origin = SessionOrigin {
        observed: Some(std::net::Ipv4Addr::LOCALHOST.into()),
        ..Default::default()
    };
    let mut hello_done = false;
    for message in messages::<ClientMessage>(data) {
        match message {
            ClientMessage::Hello(hello) => {
                let Ok(changes) = state.handle_hello(&cert, &hello, &origin) else {
                    continue;
                };
                if writers.handle_claim(&cert, 1, false) != Claim::Granted {
                    continue;
                }
                state.apply(&changes);
                state.handle_session_start(&cert, now);
                hello_done = true;
            }
            ClientMessage::Publish(publish) if hello_done => {
                if let Ok(changes) = state.handle_publish(&cert, &publish) {
                    state.apply(&changes);
                }
            }
            _ => {}
        }
    }
    let snapshot = state.snapshot();
    assert!(snapshot.clusters.iter().all(|c| c.id == cert));
    for (owner, export) in &snapshot.exports {
        assert_eq!(owner, &cert, "only the certificate's cluster writes");
        assert!(bounds::check_export(CLUSTER, export).is_ok(), "{export:?}");
    }
    let frame = wire::encode(&BrokerMessage::Snapshot(snapshot.clone()))
        .expect("a stored snapshot encodes");
    let mut decoder = Decoder::new();
    decoder.extend(&frame);
    let decoded = decoder.decode::<BrokerMessage>().ok().flatten();
    assert_eq!(decoded, Some(BrokerMessage::Snapshot(snapshot.clone())));
    snapshot
}

/// A connected gateway session fed the broker's frames. Invariant: the session never panics,
/// what it sends is encodable, and its view translates to global addresses.
pub fn sync_gateway(data: &[u8]) {
    let me = ClusterInfo {
        id: cluster(),
        wg_endpoint: "127.0.0.1:51820".parse().expect("literal"),
        wg_public_key: [1; 32],
        cidrs: vec!["10.101.0.0/16".parse().expect("literal")],
        region: None,
        zone: None,
        global: vec![],
    };
    let mut session = ClusterSession::new(me, vec![]);
    session.handle_connected();
    let drain = |session: &mut ClusterSession| {
        while let Some(message) = session.poll_transmit() {
            let _ = wire::encode(&message);
        }
        while session.poll_event().is_some() {}
    };
    drain(&mut session);
    for message in messages::<BrokerMessage>(data) {
        session.handle_message(message);
        drain(&mut session);
    }
    let view = session.view().reached_from(&cluster());
    assert!(view.exports.len() <= session.view().exports.len());
    session.handle_disconnected();
    drain(&mut session);
}

/// One file of the file source. Invariant: what parses is a valid service (its key is a
/// valid namespace/name).
pub fn file_source(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(services) = crate::source::file::parse_file(Path::new("fuzz.yaml"), &text) {
        for service in services {
            let key = &service.spec.service;
            assert!(
                crate::model::ServiceKey::new(key.namespace.as_str(), key.name.as_str()).is_ok()
            );
            let _ = bounds::check_export(CLUSTER, &service.spec);
        }
    }
}

/// The objects the export side reads, as the API server would send them.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct K8sObjects {
    service: Option<k8s_openapi::api::core::v1::Service>,
    #[serde(default)]
    slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
    export: Option<crate::source::k8s::crd::ServiceExport>,
    exported_at: Option<i64>,
}

/// A Service, EndpointSlices and a ServiceExport (JSON) into the export this cluster would
/// publish. Invariant: an export comes out only for a Service with a valid key, and it holds
/// no endpoint twice.
pub fn k8s_objects(data: &[u8]) {
    let Ok(objects) = serde_json::from_slice::<K8sObjects>(data) else {
        return;
    };
    let exported_at = objects.exported_at.or_else(|| {
        objects
            .export
            .as_ref()
            .and_then(|e| e.metadata.creation_timestamp.as_ref())
            .map(|t| t.0.as_second())
    });
    let result = crate::source::k8s::export::export_of(
        objects.service.as_ref(),
        &objects.slices,
        exported_at,
        "causeway",
    );
    if let Ok(export) = result {
        let mut addresses: Vec<_> = export.endpoints.iter().map(|e| e.address).collect();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), export.endpoints.len(), "no endpoint twice");
        let _ = bounds::check_export(CLUSTER, &export);
    }
}

/// The admin API's explain query string. Invariant: an accepted query names a service under
/// one of the zones.
pub fn admin_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(query) = crate::explain::parse_query(&text, "global", Some("clusterset.local")) {
        assert!(!query.name.is_empty());
        let _ = query.service.to_string();
    }
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target, by its name in `tests/fuzz/Cargo.toml` and its corpus directory.
pub const TARGETS: [(&str, Target); 5] = [
    ("sync_broker", sync_broker),
    ("sync_gateway", sync_gateway),
    ("file_source", file_source),
    ("k8s_objects", k8s_objects),
    ("admin_query", admin_query),
];

#[cfg(test)]
mod tests;
