//! Leader election on a `coordination.k8s.io/v1` Lease, as a sans-IO state machine.
//!
//! Owns the decisions of client-go's `leaderelection` package: when to read the Lease, when to
//! create it, renew it or take it over, and when a leader must step down. It does no I/O and
//! reads no clock: its shell (`lease.rs`) performs each [`Action`] against the API server and
//! feeds the outcome back with [`Elector::handle_lease`] / [`Elector::handle_write`].
//!
//! Expiry is judged the way client-go judges it: by *this* replica's monotonic clock, from the
//! moment it last saw the Lease change (its `resourceVersion`), never by comparing the
//! `renewTime` another node wrote with our wall clock, so clock skew between nodes cannot
//! make two replicas lead at once. Writes carry the `resourceVersion` they were based on, so
//! of two candidates racing for an expired Lease exactly one wins (the other gets a conflict).
//!
//! A leader steps down when it has not renewed for `renew_deadline`, which is shorter than
//! `lease_duration`: it stops acting before any standby may take over.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Timing of the election, with client-go's defaults (15 s / 10 s / 2 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// This replica's identity in `holderIdentity` (the pod name, usually).
    pub identity: String,
    /// How long a Lease holds without renewal before a standby may take it over. Longer means
    /// slower failover; shorter means more writes to the API server.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down. Must be below `lease_duration`.
    pub renew_deadline: Duration,
    /// How often every replica reads (and the leader renews) the Lease.
    pub retry_period: Duration,
}

impl ElectionConfig {
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The parts of a Lease the election decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `spec.holderIdentity`; `None` or empty means released.
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// `metadata.resourceVersion`: changes on every write, so it tells a renewal apart.
    pub version: String,
}

/// What this replica writes into the Lease. The shell adds `renewTime` (and `acquireTime`
/// when `acquired`) from the wall clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaim {
    pub holder: String,
    pub lease_duration: Duration,
    pub transitions: i32,
    /// True when this write takes the Lease (set `acquireTime`), false for a renewal.
    pub acquired: bool,
}

/// An API call for the shell to make, then report back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// GET the Lease; report with [`Elector::handle_lease`] (`None` for 404).
    Read,
    /// POST a new Lease; report with [`Elector::handle_write`].
    Create(LeaseClaim),
    /// PUT the Lease with `metadata.resourceVersion = version` (a 409 is a lost race);
    /// report with [`Elector::handle_write`].
    Update { claim: LeaseClaim, version: String },
}

/// Leadership transitions, each reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Elected,
    /// Lost the Lease (another holder, or no renewal within `renew_deadline`): stop acting.
    Deposed,
}

/// Why a write did not land.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the lease changed since it was read")]
    Conflict,
    #[error("the lease write failed: {reason}")]
    Failed { reason: String },
}

/// The election state machine. One per replica.
#[derive(Debug)]
pub struct Elector {
    config: ElectionConfig,
    /// The last Lease seen and when (by our clock) it last changed.
    observed: Option<(LeaseRecord, Instant)>,
    /// When we last renewed successfully, while we lead.
    renewed: Option<Instant>,
    /// When to read next; `None` while a call is outstanding.
    next_read: Option<Instant>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Elector {
    /// A follower that reads the Lease right away.
    pub fn new(config: ElectionConfig, now: Instant) -> Self {
        Self {
            config,
            observed: None,
            renewed: None,
            next_read: Some(now),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.renewed.is_some()
    }

    /// The outcome of a [`Action::Read`]: the Lease, or `None` when it does not exist.
    pub fn handle_lease(&mut self, lease: Option<LeaseRecord>, now: Instant) {
        let Some(lease) = lease else {
            self.actions.push_back(Action::Create(self.claim(0, true)));
            return;
        };
        self.observe(lease.clone(), now);
        let mine = lease.holder.as_deref() == Some(self.config.identity.as_str());
        let free = lease.holder.as_deref().is_none_or(str::is_empty);
        let observed_at = self.observed.as_ref().map_or(now, |(_, at)| *at);
        let expired = now >= observed_at + lease.lease_duration;
        if mine {
            let claim = self.claim(lease.transitions, false);
            self.actions.push_back(Action::Update {
                claim,
                version: lease.version,
            });
        } else if free || expired {
            let claim = self.claim(lease.transitions + 1, true);
            self.actions.push_back(Action::Update {
                claim,
                version: lease.version,
            });
        } else {
            self.step_down();
            self.next_read = Some(now + self.config.retry_period);
        }
    }

    /// The outcome of a create or update: the Lease as written, or why not.
    pub fn handle_write(&mut self, result: Result<LeaseRecord, WriteError>, now: Instant) {
        match result {
            Ok(lease) => {
                self.observe(lease, now);
                if self.renewed.is_none() {
                    self.events.push_back(Event::Elected);
                }
                self.renewed = Some(now);
            }
            Err(_) => self.check_deadline(now),
        }
        self.next_read = Some(now + self.config.retry_period);
    }

    /// Call when [`Elector::poll_timeout`]'s instant has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.check_deadline(now);
        if self.next_read.is_some_and(|t| now >= t) {
            self.next_read = None;
            self.actions.push_back(Action::Read);
        }
    }

    /// The next API call to make. Make it, then report its outcome before polling again.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Elector::handle_timeout`], and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let read = self.next_read.map(|t| (t, "read the lease"));
        let deadline = self
            .renewed
            .map(|t| (t + self.config.renew_deadline, "renew deadline"));
        [read, deadline]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    fn claim(&self, transitions: i32, acquired: bool) -> LeaseClaim {
        LeaseClaim {
            holder: self.config.identity.clone(),
            lease_duration: self.config.lease_duration,
            transitions,
            acquired,
        }
    }

    fn observe(&mut self, lease: LeaseRecord, now: Instant) {
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| seen.version != lease.version);
        if changed {
            self.observed = Some((lease, now));
        }
    }

    fn check_deadline(&mut self, now: Instant) {
        if self
            .renewed
            .is_some_and(|t| now >= t + self.config.renew_deadline)
        {
            self.step_down();
        }
    }

    fn step_down(&mut self) {
        if self.renewed.take().is_some() {
            self.events.push_back(Event::Deposed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory Lease with optimistic concurrency, as the API server keeps it.
    #[derive(Default)]
    struct FakeLease {
        lease: Option<LeaseRecord>,
        writes: u64,
        /// Writes fail while set (the API server is unreachable for that replica).
        down_for: Option<String>,
    }

    impl FakeLease {
        fn write(
            &mut self,
            claim: LeaseClaim,
            version: Option<String>,
        ) -> Result<LeaseRecord, WriteError> {
            if self.down_for.as_deref() == Some(claim.holder.as_str()) {
                return Err(WriteError::Failed {
                    reason: "unreachable".into(),
                });
            }
            let current = self.lease.as_ref().map(|l| l.version.clone());
            if current != version {
                return Err(WriteError::Conflict);
            }
            self.writes += 1;
            let lease = LeaseRecord {
                holder: Some(claim.holder),
                lease_duration: claim.lease_duration,
                transitions: claim.transitions,
                version: self.writes.to_string(),
            };
            self.lease = Some(lease.clone());
            Ok(lease)
        }
    }

    /// Runs every replica's pending actions against the fake (all replicas not in `stopped`).
    fn drive(replicas: &mut [Elector], lease: &mut FakeLease, stopped: &[usize], now: Instant) {
        for (i, r) in replicas.iter_mut().enumerate() {
            if stopped.contains(&i) {
                continue;
            }
            r.handle_timeout(now);
            while let Some(action) = r.poll_action() {
                match action {
                    Action::Read => {
                        let unreachable = lease.down_for.as_deref() == Some(&r.config.identity);
                        if !unreachable {
                            r.handle_lease(lease.lease.clone(), now);
                        } else {
                            r.handle_write(
                                Err(WriteError::Failed {
                                    reason: "unreachable".into(),
                                }),
                                now,
                            );
                        }
                    }
                    Action::Create(claim) => {
                        let result = lease.write(claim, None);
                        r.handle_write(result, now);
                    }
                    Action::Update { claim, version } => {
                        let result = lease.write(claim, Some(version));
                        r.handle_write(result, now);
                    }
                }
            }
        }
    }

    fn replicas(start: Instant) -> Vec<Elector> {
        ["a", "b"]
            .into_iter()
            .map(|id| Elector::new(ElectionConfig::new(id), start))
            .collect()
    }

    fn leaders(replicas: &[Elector]) -> Vec<&str> {
        replicas
            .iter()
            .filter(|r| r.is_leader())
            .map(|r| r.config.identity.as_str())
            .collect()
    }

    /// Steps simulated time by 500 ms until `until`, checking after every step that at most
    /// one replica leads.
    fn run(
        replicas: &mut [Elector],
        lease: &mut FakeLease,
        stopped: &[usize],
        from: Instant,
        until: Duration,
    ) -> Instant {
        let mut now = from;
        while now < from + until {
            now += Duration::from_millis(500);
            drive(replicas, lease, stopped, now);
            // A stopped (dead) replica acts no more, whatever it last believed.
            let alive: Vec<&str> = leaders(replicas)
                .into_iter()
                .filter(|id| !stopped.iter().any(|&i| replicas[i].config.identity == *id))
                .collect();
            assert!(alive.len() <= 1, "two leaders at once: {alive:?}");
        }
        now
    }

    #[test]
    fn first_replica_creates_the_lease_and_the_other_stands_by() {
        let start = crate::clock::now();
        let mut rs = replicas(start);
        let mut lease = FakeLease::default();
        drive(&mut rs, &mut lease, &[], start);
        assert_eq!(leaders(&rs), ["a"]);
        assert_eq!(rs[0].poll_event(), Some(Event::Elected));
        assert_eq!(rs[1].poll_event(), None);
        let writes_before = lease.writes;
        run(&mut rs, &mut lease, &[], start, Duration::from_secs(60));
        assert_eq!(leaders(&rs), ["a"], "the leader keeps renewing");
        assert!(
            lease.writes >= writes_before + 25,
            "renewed every 2 s: {}",
            lease.writes
        );
        assert_eq!(rs[1].poll_event(), None, "the standby never leads");
        assert_eq!(lease.lease.as_ref().unwrap().transitions, 0);
    }

    #[test]
    fn standby_takes_over_only_after_the_lease_expires_when_the_leader_dies() {
        let start = crate::clock::now();
        let mut rs = replicas(start);
        let mut lease = FakeLease::default();
        drive(&mut rs, &mut lease, &[], start);
        rs[0].poll_event();
        // The leader process dies: it stops acting at all.
        let died = run(&mut rs, &mut lease, &[0], start, Duration::from_secs(14));
        assert_eq!(leaders(&rs[1..]), Vec::<&str>::new(), "lease still valid");
        let later = run(&mut rs, &mut lease, &[0], died, Duration::from_secs(4));
        assert_eq!(leaders(&rs[1..]), ["b"]);
        assert_eq!(rs[1].poll_event(), Some(Event::Elected));
        let l = lease.lease.as_ref().unwrap();
        assert_eq!(
            (l.holder.as_deref(), l.transitions),
            (Some("b"), 1),
            "a takeover counts a transition"
        );
        assert!(later <= start + Duration::from_secs(20));
    }

    #[test]
    fn leader_cut_off_from_the_api_steps_down_before_the_standby_takes_over() {
        let start = crate::clock::now();
        let mut rs = replicas(start);
        let mut lease = FakeLease::default();
        drive(&mut rs, &mut lease, &[], start);
        rs[0].poll_event();
        lease.down_for = Some("a".into());
        // `run` asserts there is never more than one leader, which needs a to step down
        // (renew deadline 10 s) before b may take over (lease duration 15 s).
        let now = run(&mut rs, &mut lease, &[], start, Duration::from_secs(30));
        assert_eq!(rs[0].poll_event(), Some(Event::Deposed));
        assert_eq!(leaders(&rs), ["b"]);
        // a is back: it sees b renewing and stays a standby.
        lease.down_for = None;
        run(&mut rs, &mut lease, &[], now, Duration::from_secs(30));
        assert_eq!(leaders(&rs), ["b"]);
        assert_eq!(rs[0].poll_event(), None);
    }

    #[test]
    fn of_two_candidates_racing_for_a_free_lease_one_wins() {
        let start = crate::clock::now();
        let mut lease = FakeLease {
            lease: Some(LeaseRecord {
                holder: None,
                lease_duration: Duration::from_secs(15),
                transitions: 3,
                version: "7".into(),
            }),
            writes: 7,
            down_for: None,
        };
        let mut a = Elector::new(ElectionConfig::new("a"), start);
        let mut b = Elector::new(ElectionConfig::new("b"), start);
        a.handle_timeout(start);
        b.handle_timeout(start);
        assert_eq!(a.poll_action(), Some(Action::Read));
        assert_eq!(b.poll_action(), Some(Action::Read));
        a.handle_lease(lease.lease.clone(), start);
        b.handle_lease(lease.lease.clone(), start);
        for r in [&mut a, &mut b] {
            let Some(Action::Update { claim, version }) = r.poll_action() else {
                panic!("a free lease is claimed");
            };
            assert_eq!(claim.transitions, 4);
            assert!(claim.acquired);
            let result = lease.write(claim, Some(version));
            r.handle_write(result, start);
        }
        assert!(a.is_leader());
        assert!(!b.is_leader(), "b's write was based on a stale version");
        assert_eq!(
            b.poll_timeout().map(|(t, why)| (t - start, why)),
            Some((Duration::from_secs(2), "read the lease"))
        );
    }

    #[test]
    fn a_foreign_lease_seen_unchanged_expires_by_our_clock_not_its_timestamps() {
        let start = crate::clock::now();
        let foreign = LeaseRecord {
            holder: Some("gone".into()),
            lease_duration: Duration::from_secs(15),
            transitions: 0,
            version: "1".into(),
        };
        let mut b = Elector::new(ElectionConfig::new("b"), start);
        b.handle_lease(Some(foreign.clone()), start);
        assert_eq!(b.poll_action(), None, "a fresh foreign lease is respected");
        b.handle_lease(Some(foreign.clone()), start + Duration::from_secs(14));
        assert_eq!(b.poll_action(), None);
        // A renewal (new version) restarts the count.
        let renewed = LeaseRecord {
            version: "2".into(),
            ..foreign
        };
        b.handle_lease(Some(renewed.clone()), start + Duration::from_secs(16));
        assert_eq!(b.poll_action(), None);
        b.handle_lease(Some(renewed), start + Duration::from_secs(31));
        assert!(matches!(b.poll_action(), Some(Action::Update { .. })));
    }
}
