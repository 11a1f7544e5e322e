//! The gateway's side of the sync protocol, sans-IO.
//!
//! [`ClusterSession`] holds the gateway's view of the clusterset and decides what to send:
//! Hello (with a resume point once it has synced) and Publish on connect, Publish again when
//! the local exports change, Ack after each applied update. It applies Snapshots and Deltas,
//! and asks for a resync (reconnect without a resume point) when a Delta does not follow
//! on from its view: a revision gap or a new broker epoch. On disconnect it keeps the last view
//! (stale, not empty). [`Backoff`] paces reconnects. The shell is `sync/quic.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use crate::model::{ClusterId, ClusterInfo, Export, ServiceKey};
use crate::sync::wire::{
    BrokerMessage, Change, ClientMessage, Delta, Hello, Publish, RejectReason, Resume, Snapshot,
};

/// What the gateway knows of the clusterset (its own cluster included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSetView {
    pub clusters: BTreeMap<ClusterId, ClusterInfo>,
    /// Exports of every cluster not in `withheld`.
    pub exports: BTreeMap<(ClusterId, ServiceKey), Export>,
    /// Registered clusters whose lease at the broker ran out: their exports are not in the view
    /// until they reconnect (their `ClusterInfo` stays, so tunnels are not torn down).
    pub withheld: BTreeSet<ClusterId>,
    pub epoch: u64,
    pub revision: u64,
}

impl ClusterSetView {
    fn apply(&mut self, change: Change) {
        match change {
            Change::UpsertCluster(info) => {
                self.clusters.insert(info.id.clone(), info);
            }
            Change::RemoveCluster(id) => {
                self.clusters.remove(&id);
                self.withheld.remove(&id);
                self.exports.retain(|(cluster, _), _| *cluster != id);
            }
            Change::UpsertExport { cluster, export } => {
                self.exports
                    .insert((cluster, export.service.clone()), export);
            }
            Change::RemoveExport { cluster, service } => {
                self.exports.remove(&(cluster, service));
            }
            Change::WithholdCluster(id) => {
                self.exports.retain(|(cluster, _), _| *cluster != id);
                self.withheld.insert(id);
            }
            Change::RestoreCluster { cluster, exports } => {
                self.exports.retain(|(c, _), _| *c != cluster);
                self.withheld.remove(&cluster);
                for export in exports {
                    self.exports
                        .insert((cluster.clone(), export.service.clone()), export);
                }
            }
        }
    }
}

impl ClusterSetView {
    /// The view as cluster `me` reaches it: every other cluster's exported endpoints and
    /// cluster IPs rewritten to their global addresses (`model::plan`), through which `me`'s
    /// pods reach them; an address no allocation covers is left out (the broker refuses such
    /// exports, so only a broker of another version could send one). `me`'s own exports keep
    /// their local addresses. DNS, the Kubernetes controller's EndpointSlices and the
    /// operator's views all read this one translation.
    pub fn reached_from(&self, me: &ClusterId) -> ClusterSetView {
        let mut out = self.clone();
        for ((cluster, _), export) in out.exports.iter_mut() {
            if cluster == me {
                continue;
            }
            let allocations = self
                .clusters
                .get(cluster)
                .map(|c| c.global.as_slice())
                .unwrap_or_default();
            let global = |ip| crate::model::plan::to_global(allocations, ip);
            export.cluster_ips = export
                .cluster_ips
                .iter()
                .filter_map(|ip| global(*ip))
                .collect();
            export.endpoints.retain_mut(|e| match global(e.address) {
                Some(address) => {
                    e.address = address;
                    true
                }
                None => false,
            });
        }
        out
    }
}

/// What the shell must act on, besides sending messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The view or the connected flag changed: publish a new `SyncState`.
    ViewChanged,
    /// The broker refused a message; log it (the broker logged it too).
    Rejected(RejectReason),
    /// The broker's updates no longer follow on from the view: drop the connection and
    /// reconnect; the next Hello carries no resume point, so a Snapshot follows.
    ResyncNeeded { reason: ResyncReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    NewEpoch {
        expected: u64,
        got: u64,
    },
    RevisionGap {
        expected: u64,
        got: u64,
    },
    /// A Delta arrived before any Snapshot in this session's lifetime.
    DeltaBeforeSnapshot,
}

/// The gateway's session state; lives across connections.
///
/// Call order per connection: [`handle_connected`](Self::handle_connected), then
/// [`handle_message`](Self::handle_message) / [`set_exports`](Self::set_exports) as things
/// happen, draining [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event)
/// after each call; [`handle_disconnected`](Self::handle_disconnected) when the connection ends.
#[derive(Debug)]
pub struct ClusterSession {
    me: ClusterInfo,
    exports: Vec<Export>,
    view: ClusterSetView,
    /// The view came from this broker epoch's Snapshot and all Deltas since: resumable.
    synced: bool,
    /// A connection is up and the broker has answered its Hello.
    live: bool,
    connected: bool,
    transmit: VecDeque<ClientMessage>,
    events: VecDeque<SessionEvent>,
}

impl ClusterSession {
    pub fn new(me: ClusterInfo, exports: Vec<Export>) -> Self {
        Self {
            me,
            exports,
            view: ClusterSetView::default(),
            synced: false,
            live: false,
            connected: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The last known view; kept (stale) while disconnected.
    pub fn view(&self) -> &ClusterSetView {
        &self.view
    }

    /// Connected to a broker and up to date with it.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// A new connection is up: queues Hello and the current exports.
    pub fn handle_connected(&mut self) {
        self.connected = true;
        self.live = false;
        self.transmit.clear();
        let resume = self.synced.then_some(Resume {
            epoch: self.view.epoch,
            revision: self.view.revision,
        });
        self.transmit.push_back(ClientMessage::Hello(Hello {
            cluster: self.me.clone(),
            resume,
        }));
        self.queue_publish();
    }

    /// The connection ended; the view is kept.
    pub fn handle_disconnected(&mut self) {
        self.connected = false;
        self.transmit.clear();
        if self.live {
            self.live = false;
            self.events.push_back(SessionEvent::ViewChanged);
        }
    }

    /// The local exports changed: the full set is published if connected.
    pub fn set_exports(&mut self, exports: Vec<Export>) {
        if exports == self.exports {
            return;
        }
        self.exports = exports;
        if self.connected {
            self.queue_publish();
        }
    }

    pub fn handle_message(&mut self, message: BrokerMessage) {
        match message {
            BrokerMessage::Snapshot(snapshot) => self.handle_snapshot(snapshot),
            BrokerMessage::Delta(delta) => self.handle_delta(delta),
            BrokerMessage::Rejected { reason } => {
                self.events.push_back(SessionEvent::Rejected(reason))
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    fn queue_publish(&mut self) {
        // A newer full set supersedes one not yet sent.
        self.transmit
            .retain(|m| !matches!(m, ClientMessage::Publish(_)));
        self.transmit.push_back(ClientMessage::Publish(Publish {
            cluster: self.me.id.clone(),
            exports: self.exports.clone(),
        }));
    }

    fn handle_snapshot(&mut self, snapshot: Snapshot) {
        let Snapshot {
            epoch,
            revision,
            clusters,
            exports,
            withheld,
        } = snapshot;
        self.view = ClusterSetView {
            clusters: clusters.into_iter().map(|c| (c.id.clone(), c)).collect(),
            exports: exports
                .into_iter()
                .map(|(c, e)| ((c, e.service.clone()), e))
                .collect(),
            withheld: withheld.into_iter().collect(),
            epoch,
            revision,
        };
        self.synced = true;
        self.live = self.connected;
        self.transmit.push_back(ClientMessage::Ack { revision });
        self.events.push_back(SessionEvent::ViewChanged);
    }

    fn handle_delta(&mut self, delta: Delta) {
        let Delta {
            epoch,
            revision,
            changes,
        } = delta;
        if !self.synced {
            return self.resync(ResyncReason::DeltaBeforeSnapshot);
        }
        if epoch != self.view.epoch {
            return self.resync(ResyncReason::NewEpoch {
                expected: self.view.epoch,
                got: epoch,
            });
        }
        let base = revision.checked_sub(changes.len() as u64);
        if base != Some(self.view.revision) {
            let expected = self.view.revision.saturating_add(changes.len() as u64);
            return self.resync(ResyncReason::RevisionGap {
                expected,
                got: revision,
            });
        }
        let was_live = self.live;
        let changed = !changes.is_empty();
        for change in changes {
            self.view.apply(change);
        }
        self.view.revision = revision;
        self.live = self.connected;
        if changed {
            self.transmit.push_back(ClientMessage::Ack { revision });
        }
        if changed || was_live != self.live {
            self.events.push_back(SessionEvent::ViewChanged);
        }
    }

    fn resync(&mut self, reason: ResyncReason) {
        self.synced = false;
        self.events.push_back(SessionEvent::ResyncNeeded { reason });
    }
}

/// Capped exponential reconnect delays: `initial`, doubling, at most `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// A connection succeeded: start again from `initial`.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// What the gateway knows of the broker link and the clusterset: the QUIC shell
/// (`sync::quic::spawn_client`) publishes it on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The clusterset as last synced (this cluster included); kept while disconnected.
    pub view: ClusterSetView,
    /// Connected to a broker and up to date with it.
    pub connected: bool,
    /// The broker of the current connection, or of the last attempt.
    pub broker: Option<SocketAddr>,
    /// Why the last connection attempt or connection failed; `None` once a connection is live.
    pub last_error: Option<String>,
    /// The broker's last refusal of our Hello or Publish (e.g. an address claim the plan
    /// forbids), until a later Hello is accepted.
    pub rejected: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{cluster, id};

    fn export(name: &str) -> Export {
        crate::model::fixtures::export(name, "10.101.0.10")
    }

    fn snapshot(epoch: u64, revision: u64) -> BrokerMessage {
        BrokerMessage::Snapshot(Snapshot {
            epoch,
            revision,
            clusters: vec![cluster("c1"), cluster("c2")],
            exports: vec![(id("c2"), export("web"))],
            withheld: vec![],
        })
    }

    fn delta(epoch: u64, revision: u64, changes: Vec<Change>) -> BrokerMessage {
        BrokerMessage::Delta(Delta {
            epoch,
            revision,
            changes,
        })
    }

    fn drain(session: &mut ClusterSession) -> (Vec<ClientMessage>, Vec<SessionEvent>) {
        (
            std::iter::from_fn(|| session.poll_transmit()).collect(),
            std::iter::from_fn(|| session.poll_event()).collect(),
        )
    }

    fn connected_session() -> ClusterSession {
        let mut s = ClusterSession::new(cluster("c1"), vec![export("api")]);
        s.handle_connected();
        drain(&mut s);
        s
    }

    #[test]
    fn first_connect_sends_hello_without_resume_then_publish() {
        let mut s = ClusterSession::new(cluster("c1"), vec![export("api")]);
        s.handle_connected();
        let (sent, _) = drain(&mut s);
        assert_eq!(
            sent,
            vec![
                ClientMessage::Hello(Hello {
                    cluster: cluster("c1"),
                    resume: None
                }),
                ClientMessage::Publish(Publish {
                    cluster: id("c1"),
                    exports: vec![export("api")]
                }),
            ]
        );
    }

    #[test]
    fn snapshot_then_delta_builds_the_view_and_acks() {
        let mut s = connected_session();
        s.handle_message(snapshot(7, 10));
        let (sent, events) = drain(&mut s);
        assert_eq!(sent, vec![ClientMessage::Ack { revision: 10 }]);
        assert_eq!(events, vec![SessionEvent::ViewChanged]);
        assert!(s.is_live());
        assert_eq!(s.view().clusters.len(), 2);

        s.handle_message(delta(
            7,
            12,
            vec![
                Change::UpsertExport {
                    cluster: id("c2"),
                    export: export("db"),
                },
                Change::RemoveExport {
                    cluster: id("c2"),
                    service: ServiceKey::new("shop", "web").unwrap(),
                },
            ],
        ));
        let (sent, events) = drain(&mut s);
        assert_eq!(sent, vec![ClientMessage::Ack { revision: 12 }]);
        assert_eq!(events, vec![SessionEvent::ViewChanged]);
        let keys: Vec<_> = s
            .view()
            .exports
            .keys()
            .map(|(c, k)| format!("{c}:{k}"))
            .collect();
        assert_eq!(keys, vec!["c2:shop/db"]);
        assert_eq!(s.view().revision, 12);
    }

    #[test]
    fn remove_cluster_drops_its_exports() {
        let mut s = connected_session();
        s.handle_message(snapshot(7, 10));
        s.handle_message(delta(7, 11, vec![Change::RemoveCluster(id("c2"))]));
        assert!(!s.view().clusters.contains_key(&id("c2")));
        assert!(s.view().exports.is_empty());
    }

    #[test]
    fn withheld_cluster_leaves_the_view_until_restored() {
        let mut s = connected_session();
        s.handle_message(snapshot(7, 10));
        s.handle_message(delta(7, 11, vec![Change::WithholdCluster(id("c2"))]));
        assert!(s.view().exports.is_empty(), "exports withheld");
        assert!(s.view().clusters.contains_key(&id("c2")), "cluster kept");
        assert!(s.view().withheld.contains(&id("c2")));
        s.handle_message(delta(
            7,
            12,
            vec![Change::RestoreCluster {
                cluster: id("c2"),
                exports: vec![export("db")],
            }],
        ));
        let keys: Vec<_> = s.view().exports.keys().cloned().collect();
        assert_eq!(
            keys,
            vec![(id("c2"), ServiceKey::new("shop", "db").unwrap())]
        );
        assert!(s.view().withheld.is_empty());
    }

    #[test]
    fn deltas_that_do_not_follow_on_request_a_resync() {
        let table = [
            (
                "revision gap",
                delta(7, 12, vec![Change::RemoveCluster(id("c2"))]),
                ResyncReason::RevisionGap {
                    expected: 11,
                    got: 12,
                },
            ),
            (
                "replayed revision",
                delta(7, 10, vec![Change::RemoveCluster(id("c2"))]),
                ResyncReason::RevisionGap {
                    expected: 11,
                    got: 10,
                },
            ),
            (
                "new epoch",
                delta(8, 11, vec![Change::RemoveCluster(id("c2"))]),
                ResyncReason::NewEpoch {
                    expected: 7,
                    got: 8,
                },
            ),
        ];
        for (what, message, reason) in table {
            let mut s = connected_session();
            s.handle_message(snapshot(7, 10));
            drain(&mut s);
            let before = s.view().clone();
            s.handle_message(message);
            let (sent, events) = drain(&mut s);
            assert_eq!(
                events,
                vec![SessionEvent::ResyncNeeded { reason }],
                "{what}"
            );
            assert!(sent.is_empty(), "{what}");
            assert_eq!(s.view(), &before, "{what}: the stale view is kept");
            // The reconnect asks for a full snapshot.
            s.handle_disconnected();
            s.handle_connected();
            let (sent, _) = drain(&mut s);
            assert!(
                matches!(&sent[0], ClientMessage::Hello(Hello { resume: None, .. })),
                "{what}: {sent:?}"
            );
        }
    }

    #[test]
    fn delta_before_any_snapshot_requests_a_resync() {
        let mut s = connected_session();
        s.handle_message(delta(7, 1, vec![]));
        assert_eq!(
            drain(&mut s).1,
            vec![SessionEvent::ResyncNeeded {
                reason: ResyncReason::DeltaBeforeSnapshot
            }]
        );
    }

    #[test]
    fn reconnect_after_sync_resumes_and_keeps_the_view_meanwhile() {
        let mut s = connected_session();
        s.handle_message(snapshot(7, 10));
        drain(&mut s);
        s.handle_disconnected();
        assert_eq!(drain(&mut s).1, vec![SessionEvent::ViewChanged]);
        assert!(!s.is_live());
        assert_eq!(s.view().clusters.len(), 2, "stale view is kept");
        s.handle_connected();
        let (sent, _) = drain(&mut s);
        assert_eq!(
            sent[0],
            ClientMessage::Hello(Hello {
                cluster: cluster("c1"),
                resume: Some(Resume {
                    epoch: 7,
                    revision: 10
                })
            })
        );
        // An empty delta confirms the view is current and makes the session live again.
        s.handle_message(delta(7, 10, vec![]));
        let (sent, events) = drain(&mut s);
        assert!(sent.is_empty());
        assert_eq!(events, vec![SessionEvent::ViewChanged]);
        assert!(s.is_live());
    }

    #[test]
    fn export_changes_are_published_only_while_connected_and_only_when_different() {
        let mut s = ClusterSession::new(cluster("c1"), vec![]);
        s.set_exports(vec![export("api")]);
        assert!(
            drain(&mut s).0.is_empty(),
            "nothing sent while disconnected"
        );
        s.handle_connected();
        drain(&mut s);
        s.set_exports(vec![export("api")]);
        assert!(
            drain(&mut s).0.is_empty(),
            "unchanged set is not republished"
        );
        s.set_exports(vec![]);
        assert_eq!(
            drain(&mut s).0,
            vec![ClientMessage::Publish(Publish {
                cluster: id("c1"),
                exports: vec![]
            })]
        );
    }

    #[test]
    fn rejection_is_reported_as_an_event() {
        let mut s = connected_session();
        let reason = RejectReason::ForeignCluster {
            cert: id("c2"),
            claimed: id("c1"),
        };
        s.handle_message(BrokerMessage::Rejected {
            reason: reason.clone(),
        });
        assert_eq!(drain(&mut s).1, vec![SessionEvent::Rejected(reason)]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
