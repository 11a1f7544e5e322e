//! `/metrics`: the Prometheus exposition (OpenMetrics text, as prometheus-client writes it).
//!
//! Most families are read fresh at every scrape from the status document and the data plane's
//! and DNS server's counters ([`Scrape`]); the endpoint-probe and state-change families are
//! kept between scrapes in [`Recorders`] ([`EndpointProbes`], which the probers call, and
//! [`StateChanges`], which the gateway loop calls). Every family:
//!
//! | family | type | labels |
//! |---|---|---|
//! | `causeway_ready` | gauge | |
//! | `causeway_peer_state` | gauge (1 for the current state) | cluster, state |
//! | `causeway_peer_rtt_seconds` | gauge | cluster |
//! | `causeway_peer_last_handshake_age_seconds` | gauge | cluster |
//! | `causeway_peer_probe_loss_ratio` | gauge | cluster |
//! | `causeway_peer_receive_bytes_total`, `causeway_peer_transmit_bytes_total` | counter | cluster |
//! | `causeway_peer_receive_packets_total`, `causeway_peer_transmit_packets_total` | counter | cluster |
//! | `causeway_tunnel_dropped_packets_total` | counter | reason |
//! | `causeway_tunnel_endpoint_roams_total`, `causeway_peer_state_changes_total` | counter | |
//! | `causeway_dns_queries_total` | counter | zone, qtype, rcode |
//! | `causeway_dns_answer_duration_seconds` | histogram | |
//! | `causeway_broker_connected` | gauge | broker |
//! | `causeway_broker_revision` | gauge | |
//! | `causeway_broker_last_update_age_seconds` | gauge (sync lag) | |
//! | `causeway_clusters` | gauge | |
//! | `causeway_exports`, `causeway_imports` | gauge | health |
//! | `causeway_endpoint_probe_total` | counter | namespace, service, endpoint, result |
//! | `causeway_endpoint_probe_duration_seconds` | histogram | namespace, service |
//! | `causeway_endpoint_probe_success` | gauge (last probe) | namespace, service, endpoint |
//! | `causeway_endpoint_probe_healthy` | gauge (after thresholds) | namespace, service, endpoint |
//! | `causeway_endpoints_withdrawn_total` | counter | reason |
//! | `causeway_endpoints_answered_total`, `causeway_export_conflicts_total` | counter | |
//! | `causeway_broker_connection_changes_total` | counter | to |

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::model::ServiceKey;
use crate::status::api::{PeerState, ServiceHealth, Status};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Probe durations, in seconds: a TCP connect on a cluster network takes well under a
/// millisecond, an HTTP check a few; the top buckets catch probes that run into timeouts.
const PROBE_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0, 5.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProbeResultLabels {
    namespace: String,
    service: String,
    endpoint: String,
    result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProbeServiceLabels {
    namespace: String,
    service: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProbeEndpointLabels {
    namespace: String,
    service: String,
    endpoint: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The `causeway_endpoint_probe_*` families: what active endpoint probes found. Cheap to
/// clone (every clone records into the same families); safe to call from any task.
#[derive(Debug, Clone)]
pub struct EndpointProbes {
    total: Family<ProbeResultLabels, Counter>,
    duration: HistogramFamily<ProbeServiceLabels>,
    success: Family<ProbeEndpointLabels, Gauge>,
    healthy: Family<ProbeEndpointLabels, Gauge>,
}

impl Default for EndpointProbes {
    fn default() -> Self {
        Self {
            total: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(PROBE_BUCKETS)),
            success: Family::default(),
            healthy: Family::default(),
        }
    }
}

/// The endpoint prober reports here.
impl crate::health::driver::ProbeObserver for EndpointProbes {
    fn probed(&self, service: &ServiceKey, endpoint: IpAddr, success: bool, took: Duration) {
        self.record(service, endpoint, success, took);
    }
    fn verdict(&self, service: &ServiceKey, endpoint: IpAddr, healthy: bool) {
        self.set_healthy(service, endpoint, healthy);
    }
    fn forgotten(&self, service: &ServiceKey, endpoint: IpAddr) {
        self.forget(service, endpoint);
    }
}

impl EndpointProbes {
    /// Records one probe of `endpoint` of `service`: whether it succeeded and how long it
    /// took. Call once per probe, when its outcome is known (a timeout is a failure that
    /// took the timeout).
    pub fn record(&self, service: &ServiceKey, endpoint: IpAddr, success: bool, took: Duration) {
        let result = if success { "success" } else { "failure" };
        self.total
            .get_or_create(&ProbeResultLabels {
                namespace: service.namespace.clone(),
                service: service.name.clone(),
                endpoint: endpoint.to_string(),
                result: result.to_owned(),
            })
            .inc();
        self.duration
            .get_or_create(&ProbeServiceLabels {
                namespace: service.namespace.clone(),
                service: service.name.clone(),
            })
            .observe(took.as_secs_f64());
        self.success
            .get_or_create(&endpoint_labels(service, endpoint))
            .set(i64::from(success));
    }

    /// Records the prober's verdict after its thresholds: `healthy` endpoints are served,
    /// the others withdrawn. Call on every change of verdict (and once at the first).
    pub fn set_healthy(&self, service: &ServiceKey, endpoint: IpAddr, healthy: bool) {
        self.healthy
            .get_or_create(&endpoint_labels(service, endpoint))
            .set(i64::from(healthy));
    }

    /// Drops an endpoint's gauges when it is no longer probed (its counters stay, as
    /// counters must).
    pub fn forget(&self, service: &ServiceKey, endpoint: IpAddr) {
        let labels = endpoint_labels(service, endpoint);
        self.success.remove(&labels);
        self.healthy.remove(&labels);
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "causeway_endpoint_probe",
            "Active endpoint probes, by outcome",
            self.total.clone(),
        );
        registry.register_with_unit(
            "causeway_endpoint_probe_duration",
            "How long active endpoint probes took",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "causeway_endpoint_probe_success",
            "1 if the last probe of the endpoint succeeded",
            self.success.clone(),
        );
        registry.register(
            "causeway_endpoint_probe_healthy",
            "1 if the prober considers the endpoint healthy (after its thresholds)",
            self.healthy.clone(),
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BrokerChangeLabels {
    to: String,
}

/// Counters for the state changes the gateway logs (one per log line's subject), so that
/// what the logs explain the metrics count. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StateChanges {
    withdrawn: Family<ReasonLabels, Counter>,
    answered: Counter,
    conflicts: Counter,
    broker: Family<BrokerChangeLabels, Counter>,
}

impl StateChanges {
    /// Counts one change of the answers (see `changes::ChangeTracker`).
    pub fn record(&self, change: &crate::changes::Change) {
        use crate::changes::Change;
        match change {
            Change::Withdrawn {
                addresses, because, ..
            } => {
                self.withdrawn
                    .get_or_create(&ReasonLabels {
                        reason: because.as_str().to_owned(),
                    })
                    .inc_by(addresses.len() as u64);
            }
            Change::Restored { addresses, .. } => {
                self.answered.inc_by(addresses.len() as u64);
            }
            Change::ExportConflict { .. } => {
                self.conflicts.inc();
            }
            Change::ConflictResolved { .. } => {}
        }
    }

    /// Counts the broker link going up (`true`) or down.
    pub fn broker(&self, connected: bool) {
        let to = if connected { "connected" } else { "lost" };
        self.broker
            .get_or_create(&BrokerChangeLabels { to: to.to_owned() })
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "causeway_endpoints_withdrawn",
            "Endpoints that left this gateway's DNS answers, by reason",
            self.withdrawn.clone(),
        );
        registry.register(
            "causeway_endpoints_answered",
            "Endpoints that entered (or re-entered) this gateway's DNS answers",
            self.answered.clone(),
        );
        registry.register(
            "causeway_export_conflicts",
            "Exports found to be of the other kind (headless vs cluster IP) than the deciding one",
            self.conflicts.clone(),
        );
        registry.register(
            "causeway_broker_connection_changes",
            "Times the broker link came up or was lost",
            self.broker.clone(),
        );
    }
}

/// What the gateway records into between scrapes: endpoint probes and state changes.
#[derive(Debug, Clone, Default)]
pub struct Recorders {
    pub probes: EndpointProbes,
    pub changes: StateChanges,
}

fn endpoint_labels(service: &ServiceKey, endpoint: IpAddr) -> ProbeEndpointLabels {
    ProbeEndpointLabels {
        namespace: service.namespace.clone(),
        service: service.name.clone(),
        endpoint: endpoint.to_string(),
    }
}

/// What one scrape reports besides the probe families: read fresh per scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub status: Status,
    pub dns: causeway_dns::StatsSnapshot,
    pub device: causeway_gateway::DeviceStats,
}

/// The exposition text for one scrape.
pub fn encode(scrape: Scrape, recorders: &Recorders) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    recorders.probes.register(&mut registry);
    recorders.changes.register(&mut registry);
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a label value.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::debug!(error = %e, "encoding metrics failed");
    }
    out
}

type Labels<'a> = Vec<(&'static str, String)>;

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(Labels, f64)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            metric.encode_gauge(&value)?;
        } else {
            metric.encode_family(&labels)?.encode_gauge(&value)?;
        }
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(Labels, u64)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            metric.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        } else {
            metric
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.status;
        let enc = &mut enc;
        gauges(
            enc,
            "causeway_ready",
            "1 when /readyz answers ready",
            None,
            vec![(vec![], f64::from(u8::from(s.ready)))],
        )?;

        let peer = |p: &crate::status::api::PeerStatus| {
            p.cluster
                .clone()
                .unwrap_or_else(|| format!("unknown:{}", p.endpoint))
        };
        let states = [
            PeerState::Unknown,
            PeerState::Up,
            PeerState::Degraded,
            PeerState::Down,
        ];
        gauges(
            enc,
            "causeway_peer_state",
            "1 for the tunnel state of each peer cluster, as its in-tunnel probes see it",
            None,
            s.peers
                .iter()
                .flat_map(|p| {
                    states.iter().map(move |st| {
                        (
                            vec![("cluster", peer(p)), ("state", st.as_str().to_owned())],
                            f64::from(u8::from(p.state == *st)),
                        )
                    })
                })
                .collect(),
        )?;
        gauges(
            enc,
            "causeway_peer_rtt",
            "Smoothed round-trip time of the in-tunnel probes to each peer",
            Some(&Unit::Seconds),
            s.peers
                .iter()
                .filter_map(|p| Some((vec![("cluster", peer(p))], p.rtt_ms? / 1e3)))
                .collect(),
        )?;
        gauges(
            enc,
            "causeway_peer_last_handshake_age",
            "Time since each peer's last completed WireGuard handshake",
            Some(&Unit::Seconds),
            s.peers
                .iter()
                .filter_map(|p| Some((vec![("cluster", peer(p))], p.last_handshake_seconds?)))
                .collect(),
        )?;
        gauges(
            enc,
            "causeway_peer_probe_loss_ratio",
            "Share of the recent in-tunnel probes to each peer that were lost",
            None,
            s.peers
                .iter()
                .map(|p| {
                    let ratio = if p.probe_window == 0 {
                        0.0
                    } else {
                        f64::from(p.probe_lost) / f64::from(p.probe_window)
                    };
                    (vec![("cluster", peer(p))], ratio)
                })
                .collect(),
        )?;
        counters(
            enc,
            "causeway_peer_receive",
            "Bytes received from each peer through its tunnel (decrypted)",
            Some(&Unit::Bytes),
            s.peers
                .iter()
                .map(|p| (vec![("cluster", peer(p))], p.rx_bytes))
                .collect(),
        )?;
        counters(
            enc,
            "causeway_peer_transmit",
            "Bytes sent to each peer through its tunnel (before encryption)",
            Some(&Unit::Bytes),
            s.peers
                .iter()
                .map(|p| (vec![("cluster", peer(p))], p.tx_bytes))
                .collect(),
        )?;
        counters(
            enc,
            "causeway_peer_receive_packets",
            "Packets decrypted from each peer (in-tunnel probes included)",
            None,
            s.peers
                .iter()
                .map(|p| (vec![("cluster", peer(p))], p.rx_packets))
                .collect(),
        )?;
        counters(
            enc,
            "causeway_peer_transmit_packets",
            "Packets sent to each peer through its tunnel (keepalives not counted)",
            None,
            s.peers
                .iter()
                .map(|p| (vec![("cluster", peer(p))], p.tx_packets))
                .collect(),
        )?;
        let d = &self.device;
        counters(
            enc,
            "causeway_tunnel_dropped_packets",
            "Datagrams and packets the data plane dropped, by reason",
            None,
            [
                ("malformed_datagram", d.malformed_datagrams),
                ("unknown_peer", d.unknown_peer_datagrams),
                ("rejected_datagram", d.rejected_datagrams),
                ("spoofed_source", d.spoofed_source_packets),
                ("no_route", d.no_route_packets),
                ("malformed_tun_packet", d.malformed_tun_packets),
                ("queue_full", d.send_drops),
                ("untranslatable", d.untranslatable_packets),
            ]
            .into_iter()
            .map(|(reason, n)| (vec![("reason", reason.to_owned())], n))
            .collect(),
        )?;
        counters(
            enc,
            "causeway_tunnel_endpoint_roams",
            "Times a peer's endpoint moved to a new authenticated source address",
            None,
            vec![(vec![], d.endpoint_roams)],
        )?;
        counters(
            enc,
            "causeway_tunnel_translated_packets",
            "Packets whose addresses the data plane translated between this cluster's local and global ranges (address plan)",
            None,
            vec![(vec![], d.translated_packets)],
        )?;
        counters(
            enc,
            "causeway_tunnel_gro_datagrams",
            "Datagrams received inside UDP GRO runs (several datagrams per system call)",
            None,
            vec![(vec![], d.gro_datagrams)],
        )?;
        counters(
            enc,
            "causeway_peer_state_changes",
            "Tunnel state changes of any peer (up, degraded, down)",
            None,
            vec![(vec![], d.health_transitions)],
        )?;

        counters(
            enc,
            "causeway_dns_queries",
            "DNS queries answered, by zone, query type and response code",
            None,
            self.dns
                .queries
                .iter()
                .map(|q| {
                    (
                        vec![
                            ("zone", q.zone.clone()),
                            ("qtype", q.qtype.to_owned()),
                            ("rcode", q.rcode.to_owned()),
                        ],
                        q.count,
                    )
                })
                .collect(),
        )?;
        let mut latency = enc.encode_descriptor(
            "causeway_dns_answer_duration",
            "Time from receiving a DNS query to sending its answer",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        latency.encode_histogram::<NoLabelSet>(
            self.dns.latency_sum_seconds,
            self.dns.latency_count,
            &self.dns.latency_buckets,
            None,
        )?;

        let b = &s.broker;
        gauges(
            enc,
            "causeway_broker_connected",
            "1 while connected and in sync with the broker (mutual TLS passed)",
            None,
            vec![(
                vec![(
                    "broker",
                    b.address.map_or_else(String::new, |a| a.to_string()),
                )],
                f64::from(u8::from(b.connected)),
            )],
        )?;
        gauges(
            enc,
            "causeway_broker_revision",
            "Revision of the clusterset view this gateway holds",
            None,
            vec![(vec![], b.revision as f64)],
        )?;
        gauges(
            enc,
            "causeway_broker_last_update_age",
            "Time since the synced view last changed (absent before the first sync)",
            Some(&Unit::Seconds),
            b.last_update_age_seconds
                .map(|age| (vec![], age))
                .into_iter()
                .collect(),
        )?;
        gauges(
            enc,
            "causeway_clusters",
            "Clusters in the synced view, this one included",
            None,
            vec![(vec![], s.clusters.len() as f64)],
        )?;
        let by_health = |services: &[crate::status::api::ServiceStatus]| {
            [
                ServiceHealth::Healthy,
                ServiceHealth::Degraded,
                ServiceHealth::Down,
            ]
            .into_iter()
            .map(|h| {
                let n = services.iter().filter(|x| x.health == h).count();
                (vec![("health", h.as_str().to_owned())], n as f64)
            })
            .collect::<Vec<_>>()
        };
        gauges(
            enc,
            "causeway_exports",
            "Services this cluster exports, by health",
            None,
            by_health(&s.exports),
        )?;
        gauges(
            enc,
            "causeway_imports",
            "Services imported from other clusters, by health as answered here",
            None,
            by_health(&s.imports),
        )?;
        Ok(())
    }
}
