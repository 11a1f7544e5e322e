//! Decisions of a broker replica that shares its store with others (`--store etcd://…`).
//! Pure; the shell is the state task in `broker/server.rs`, fed by `broker/etcd.rs`.
//!
//! **Ordering.** The store holds one clusterset revision; a commit names the revision it
//! builds on and fails with a conflict if another replica committed first. The loser catches
//! up (applies the other's batches, which it also broadcasts to its own gateways), recomputes
//! its changes against the new state, and tries again. So all replicas apply the same batches
//! in the same order, and every gateway, wherever it is connected, sees one history and can
//! resume from its (epoch, revision) on any replica. [`follow`] says what to do with a batch
//! the store reports; [`chain`] checks that stored batches follow on from where a replica is.
//!
//! **Leases.** A cluster holds its lease while it has a session at *any* replica. Each replica
//! writes a presence key per cluster it serves, attached to its own etcd lease (a few seconds):
//! it is deleted when the cluster's last session there ends, or by etcd when the replica dies.
//! Every replica counts each other replica's presence key as one session of that cluster, so
//! `BrokerState`'s lease rules run unchanged on every replica and agree; the withhold or
//! removal they produce is committed like any change, and the replicas that lose the race see
//! it applied and have nothing left to do. [`LocalPresence`] says when to write or delete this
//! replica's keys; [`RemotePresence`] turns other replicas' keys into session starts and ends.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::ClusterId;
use crate::sync::wire::Change;

/// What to do with a batch the store reports as committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Already applied (our own commit, or one caught up with earlier).
    Skip,
    /// It builds on what we have: apply and broadcast it.
    Apply,
    /// Batches between were missed: catch up from the store.
    Gap,
}

/// `applied` is the replica's revision; the batch's changes end at `revision`.
pub fn follow(applied: u64, revision: u64, len: usize) -> Follow {
    if revision <= applied {
        Follow::Skip
    } else if revision.checked_sub(len as u64) == Some(applied) {
        Follow::Apply
    } else {
        Follow::Gap
    }
}

/// Stored batches `(revision of their last change, changes)` after `applied`, in order: the
/// ones still to apply, or `None` if they do not start right after `applied` or have holes
/// (the log was trimmed past it: reload everything).
pub fn chain(applied: u64, batches: Vec<(u64, Vec<Change>)>) -> Option<Vec<(u64, Vec<Change>)>> {
    let mut at = applied;
    let mut out = vec![];
    for (revision, changes) in batches {
        match follow(at, revision, changes.len()) {
            Follow::Skip => continue,
            Follow::Apply => {
                at = revision;
                out.push((revision, changes));
            }
            Follow::Gap => return None,
        }
    }
    Some(out)
}

/// This replica's sessions per cluster.
#[derive(Debug, Default)]
pub struct LocalPresence {
    sessions: BTreeMap<ClusterId, usize>,
}

impl LocalPresence {
    /// A session of `cluster` started; `true` if it is its first here (write the presence key).
    pub fn handle_start(&mut self, cluster: &ClusterId) -> bool {
        let count = self.sessions.entry(cluster.clone()).or_default();
        *count += 1;
        *count == 1
    }

    /// A session of `cluster` ended; `true` if it was its last here (delete the presence key).
    pub fn handle_end(&mut self, cluster: &ClusterId) -> bool {
        let Some(count) = self.sessions.get_mut(cluster) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.sessions.remove(cluster);
            return true;
        }
        false
    }

    /// Clusters with a session here (to write again after the replica's etcd lease was renewed).
    pub fn clusters(&self) -> impl Iterator<Item = &ClusterId> {
        self.sessions.keys()
    }
}

/// Other replicas' presence keys.
#[derive(Debug, Default)]
pub struct RemotePresence {
    me: String,
    held: BTreeSet<(ClusterId, String)>,
}

impl RemotePresence {
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            held: BTreeSet::new(),
        }
    }

    /// A presence key appeared (or was written again); `true` if it starts a session of
    /// `cluster` (another replica's, not seen before).
    pub fn handle_put(&mut self, cluster: &ClusterId, replica: &str) -> bool {
        replica != self.me && self.held.insert((cluster.clone(), replica.to_owned()))
    }

    /// A presence key went; `true` if it ends a session of `cluster` counted before.
    pub fn handle_delete(&mut self, cluster: &ClusterId, replica: &str) -> bool {
        self.held.remove(&(cluster.clone(), replica.to_owned()))
    }

    /// Whether another replica holds a session of `cluster`.
    pub fn has(&self, cluster: &ClusterId) -> bool {
        self.held.iter().any(|(c, _)| c == cluster)
    }

    /// The clusters with a session at another replica, once per replica.
    pub fn sessions(&self) -> impl Iterator<Item = &ClusterId> {
        self.held.iter().map(|(c, _)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::id;

    fn batch(revision: u64, len: usize) -> (u64, Vec<Change>) {
        (revision, vec![Change::WithholdCluster(id("c1")); len])
    }

    #[test]
    fn follow_applies_only_batches_that_build_on_the_applied_revision() {
        let table = [
            ("echo of our own commit", 10, 10, 2, Follow::Skip),
            ("older batch", 10, 7, 1, Follow::Skip),
            ("next batch", 10, 12, 2, Follow::Apply),
            ("next single change", 10, 11, 1, Follow::Apply),
            ("a batch was missed", 10, 14, 2, Follow::Gap),
            ("overlaps what we have", 10, 11, 3, Follow::Gap),
            ("len past zero", 0, 1, 5, Follow::Gap),
        ];
        for (what, applied, revision, len, expected) in table {
            assert_eq!(follow(applied, revision, len), expected, "{what}");
        }
    }

    #[test]
    fn chain_takes_the_batches_after_applied_or_asks_for_a_reload() {
        let lens = |c: Option<Vec<(u64, Vec<Change>)>>| {
            c.map(|v| v.iter().map(|(r, c)| (*r, c.len())).collect::<Vec<_>>())
        };
        assert_eq!(
            lens(chain(5, vec![batch(5, 2), batch(7, 2), batch(8, 1)])),
            Some(vec![(7, 2), (8, 1)])
        );
        assert_eq!(lens(chain(5, vec![])), Some(vec![]));
        assert_eq!(lens(chain(5, vec![batch(9, 2)])), None, "trimmed");
        assert_eq!(lens(chain(5, vec![batch(6, 1), batch(9, 1)])), None, "hole");
    }

    #[test]
    fn local_presence_reports_first_and_last_sessions() {
        let mut p = LocalPresence::default();
        assert!(p.handle_start(&id("c1")));
        assert!(!p.handle_start(&id("c1")));
        assert!(p.handle_start(&id("c2")));
        assert!(!p.handle_end(&id("c1")));
        assert!(p.handle_end(&id("c1")));
        assert!(!p.handle_end(&id("c1")), "no session left to end");
        assert_eq!(p.clusters().collect::<Vec<_>>(), vec![&id("c2")]);
    }

    #[test]
    fn remote_presence_counts_each_other_replica_once_and_ignores_our_own() {
        let mut p = RemotePresence::new("me");
        assert!(!p.handle_put(&id("c1"), "me"), "our own key");
        assert!(p.handle_put(&id("c1"), "r2"));
        assert!(!p.handle_put(&id("c1"), "r2"), "written again");
        assert!(p.handle_put(&id("c1"), "r3"));
        assert_eq!(p.sessions().count(), 2);
        assert!(p.handle_delete(&id("c1"), "r2"));
        assert!(!p.handle_delete(&id("c1"), "r2"), "deleted twice");
        assert!(!p.handle_delete(&id("c1"), "me"));
        assert_eq!(p.sessions().collect::<Vec<_>>(), vec![&id("c1")]);
    }
}
