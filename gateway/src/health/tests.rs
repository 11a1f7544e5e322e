//! The prober under simulated time: a fake link that answers each probe after an RTT unless it
//! is cut, driven by the prober's own `poll_timeout`.

use proptest::prelude::*;

use super::*;

const PEER: [u8; 32] = [7; 32];
const MS: Duration = Duration::from_millis(1);

/// A link whose round trip at time `t` (ms since start) is `rtt(t)`, or `None` when cut.
struct Sim {
    prober: Prober,
    start: Instant,
    now: Instant,
    /// Replies in flight: (arrival, peer, id).
    replies: Vec<(Instant, [u8; 32], ProbeId)>,
    events: Vec<(u64, HealthEvent)>,
    sent: usize,
}

impl Sim {
    fn new(config: HealthConfig) -> Self {
        // The only clock read: a base for simulated time, never compared with real time.
        let start = crate::clock::now();
        let mut prober = Prober::new(config, 1000);
        prober.set_targets([PEER], start);
        Self {
            prober,
            start,
            now: start,
            replies: Vec::new(),
            events: Vec::new(),
            sent: 0,
        }
    }

    fn ms(&self) -> u64 {
        self.now.duration_since(self.start).as_millis() as u64
    }

    fn drain(&mut self, rtt: &dyn Fn(u64) -> Option<Duration>) {
        let at = self.ms();
        while let Some(p) = self.prober.poll_probe() {
            self.sent += 1;
            if let Some(rtt) = rtt(at) {
                self.replies.push((self.now + rtt, p.peer, p.id));
            }
        }
        while let Some(e) = self.prober.poll_event() {
            self.events.push((at, e));
        }
    }

    /// Runs until `until_ms`, stepping to each wake-up or reply arrival.
    fn run(&mut self, until_ms: u64, rtt: &dyn Fn(u64) -> Option<Duration>) {
        let until = self.start + Duration::from_millis(until_ms);
        loop {
            self.drain(rtt);
            let wake = self.prober.poll_timeout().map(|(t, _)| t);
            let reply = self.replies.iter().map(|r| r.0).min();
            let next = [wake, reply].into_iter().flatten().min();
            let Some(next) = next.filter(|n| *n <= until) else {
                self.now = until;
                return;
            };
            assert!(next >= self.now, "time never goes back");
            self.now = next;
            let (due, later): (Vec<_>, Vec<_>) =
                self.replies.drain(..).partition(|r| r.0 <= self.now);
            self.replies = later;
            for (_, peer, id) in due {
                self.prober.handle_reply(peer, id, self.now);
            }
            self.prober.handle_timeout(self.now);
        }
    }

    fn state(&self) -> HealthState {
        self.prober.peer_health(&PEER).expect("target").state
    }

    /// When the peer first entered `state` at or after `from_ms`.
    fn entered(&self, state: HealthState, from_ms: u64) -> Option<u64> {
        self.events
            .iter()
            .find(|(t, e)| *t >= from_ms && e.health.state == state)
            .map(|(t, _)| *t)
    }
}

fn up(_: u64) -> Option<Duration> {
    Some(10 * MS)
}

#[test]
fn prober_marks_a_new_answering_peer_up_after_two_replies() {
    let mut sim = Sim::new(HealthConfig::default());
    sim.run(1000, &up);
    assert_eq!(sim.state(), HealthState::Up);
    // Probes at 0 and 200 ms, replies 10 ms later.
    assert_eq!(sim.entered(HealthState::Up, 0), Some(210));
    let health = sim.prober.peer_health(&PEER).unwrap();
    assert_eq!(health.rtt, Some(10 * MS));
    assert_eq!(health.lost, 0);
    assert_eq!(sim.events.len(), 1, "Unknown -> Up only: {:?}", sim.events);
}

#[test]
fn prober_marks_a_silent_new_peer_down_after_down_after() {
    let mut sim = Sim::new(HealthConfig::default());
    sim.run(2000, &|_| None);
    assert_eq!(sim.state(), HealthState::Down);
    assert_eq!(sim.entered(HealthState::Down, 0), Some(800));
}

#[test]
fn prober_probes_every_interval() {
    let mut sim = Sim::new(HealthConfig::default());
    sim.run(999, &up);
    assert_eq!(sim.sent, 5, "at 0, 200, 400, 600, 800 ms");
}

#[test]
fn cut_link_is_down_within_one_second_and_restored_link_up_within_one_second() {
    // (cut at, restore at) in ms, over a 10 ms link.
    let table = [
        (3000, 6000),
        (3001, 4500),
        (3150, 3900),
        (3199, 8000),
        (5555, 7777),
    ];
    for (cut, restore) in table {
        let mut sim = Sim::new(HealthConfig::default());
        let link = move |t: u64| (t < cut || t >= restore).then_some(10 * MS);
        sim.run(restore + 3000, &link);
        let down = sim.entered(HealthState::Down, cut).expect("went down");
        assert!(down - cut < 1000, "cut at {cut}: down at {down}");
        assert_eq!(
            sim.entered(HealthState::Up, cut),
            sim.entered(HealthState::Up, restore),
            "not up during the cut"
        );
        let back = sim.entered(HealthState::Up, restore).expect("came back");
        assert!(back - restore < 1000, "restored at {restore}: up at {back}");
        assert_eq!(sim.state(), HealthState::Up);
    }
}

#[test]
fn losing_some_probes_is_degraded_not_down() {
    let mut sim = Sim::new(HealthConfig::default());
    sim.run(2000, &up);
    // Every third probe (by send time) gets no reply.
    let lossy = |t: u64| (!(t / 200).is_multiple_of(3)).then_some(10 * MS);
    sim.run(6000, &lossy);
    assert_eq!(sim.state(), HealthState::Degraded);
    assert!(sim.entered(HealthState::Down, 0).is_none());
    let health = sim.prober.peer_health(&PEER).unwrap();
    assert!(health.lost >= 2 && health.window == 10, "{health:?}");
    sim.run(9000, &up);
    assert_eq!(sim.state(), HealthState::Up, "losses age out of the window");
}

#[test]
fn slow_replies_are_degraded_when_an_rtt_limit_is_set() {
    let config = HealthConfig {
        degraded_rtt: Some(100 * MS),
        ..HealthConfig::default()
    };
    let mut sim = Sim::new(config);
    sim.run(2000, &up);
    assert_eq!(sim.state(), HealthState::Up);
    sim.run(6000, &|_| Some(300 * MS));
    assert_eq!(sim.state(), HealthState::Degraded);
    let rtt = sim.prober.peer_health(&PEER).unwrap().rtt.unwrap();
    assert!(rtt > 250 * MS, "smoothed towards 300 ms: {rtt:?}");
}

#[test]
fn replies_that_match_no_outstanding_probe_are_ignored() {
    let mut sim = Sim::new(HealthConfig::default());
    let now = sim.now;
    sim.prober.handle_reply(PEER, ProbeId(999_999), now);
    sim.prober.handle_reply([9; 32], ProbeId(1000), now);
    sim.prober.handle_reply(PEER, ProbeId(999_999), now);
    assert_eq!(sim.state(), HealthState::Unknown);
    assert_eq!(sim.prober.peer_health(&PEER).unwrap().rtt, None);
    // The real reply still counts once, not twice.
    sim.prober.handle_reply(PEER, ProbeId(1000), now + MS);
    sim.prober.handle_reply(PEER, ProbeId(1000), now + 2 * MS);
    assert_eq!(sim.state(), HealthState::Unknown, "one reply of two needed");
}

#[test]
fn removed_targets_are_forgotten_and_kept_ones_keep_their_state() {
    let mut sim = Sim::new(HealthConfig::default());
    sim.run(1000, &up);
    let other = [8; 32];
    let now = sim.now;
    sim.prober.set_targets([PEER, other], now);
    let health = sim.prober.health();
    assert_eq!(health[&PEER].state, HealthState::Up);
    assert_eq!(health[&other].state, HealthState::Unknown);
    sim.prober.set_targets([other], now);
    assert!(sim.prober.peer_health(&PEER).is_none());
    while let Some(p) = sim.prober.poll_probe() {
        assert_eq!(p.peer, other, "no probes for a removed peer");
    }
    sim.prober.set_targets([], now);
    assert_eq!(sim.prober.poll_timeout(), None);
}

#[test]
fn late_wake_up_sends_one_probe_not_a_burst() {
    let mut prober = Prober::new(HealthConfig::default(), 0);
    let start = crate::clock::now();
    prober.set_targets([PEER], start);
    assert!(prober.poll_probe().is_some());
    prober.handle_timeout(start + Duration::from_secs(5));
    assert!(prober.poll_probe().is_some());
    assert!(prober.poll_probe().is_none());
}

proptest! {
    /// Whatever the link does, the machine never reports a state it has no evidence for, and
    /// a link cut for long enough is always down within 1 s, then up within 1 s of healing.
    #[test]
    fn any_link_history_keeps_the_promises(
        // (duration ms, rtt ms or None for cut) segments
        segments in proptest::collection::vec((50u64..1500, proptest::option::weighted(0.7, 1u64..150)), 1..12),
    ) {
        let mut sim = Sim::new(HealthConfig::default());
        let mut t = 0;
        let mut plan = Vec::new();
        for (len, rtt) in &segments {
            plan.push((t, t + len, *rtt));
            t += len;
        }
        let end = t;
        let plan2 = plan.clone();
        let link = move |at: u64| {
            plan2.iter().find(|(s, e, _)| at >= *s && at < *e).map_or(Some(10 * MS), |(_, _, r)| r.map(Duration::from_millis))
        };
        sim.run(end + 3000, &link);

        // Every event is a real change, and consecutive events chain.
        let mut state = HealthState::Unknown;
        for (_, e) in &sim.events {
            prop_assert_eq!(e.previous, state);
            prop_assert_ne!(e.health.state, e.previous);
            prop_assert!(e.health.state != HealthState::Unknown);
            state = e.health.state;
        }
        prop_assert_eq!(state, sim.state());

        // Cuts of 1 s or longer: down within 1 s of the cut (or down already).
        for (s, e, rtt) in &plan {
            if rtt.is_none() && e - s >= 1000 {
                let already = sim.events.iter().rev().find(|(t, _)| t <= s).is_some_and(|(_, e)| e.health.state == HealthState::Down);
                let down = sim.entered(HealthState::Down, *s);
                prop_assert!(already || down.is_some_and(|d| d - s < 1000), "cut {s}..{e}: {:?}", sim.events);
            }
        }
        // After the history, a healthy 10 ms link for 3 s (losses age out of the window): up.
        prop_assert_eq!(sim.state(), HealthState::Up, "{:?}", sim.events);
        let health = sim.prober.peer_health(&PEER).unwrap();
        prop_assert!(health.window <= 10 && health.lost <= health.window);
    }
}

#[test]
fn a_moved_rtt_is_worth_republishing_and_jitter_is_not() {
    let mut sim = Sim::new(HealthConfig::default());
    let nothing = BTreeMap::new();
    assert!(!sim.prober.rtt_moved_since(&nothing), "no reply, no RTT");
    sim.run(2000, &up);
    assert!(sim.prober.rtt_moved_since(&nothing), "a first RTT");
    let published = sim.prober.health();
    // Jitter of +0.5 ms on some probes around 10 ms: under both thresholds.
    sim.run(4000, &|t| {
        Some(10 * MS + if t % 400 == 0 { MS / 2 } else { Duration::ZERO })
    });
    assert!(!sim.prober.rtt_moved_since(&published));
    // The link gets 60 ms slower: the smoothed RTT leaves the 20 % band within a few probes.
    sim.run(5000, &|_| Some(70 * MS));
    assert!(sim.prober.rtt_moved_since(&published));
    assert_eq!(sim.state(), HealthState::Up, "no state change carries it");
    let published = sim.prober.health();
    assert!(!sim.prober.rtt_moved_since(&published));
}

#[test]
fn sub_millisecond_rtts_never_count_as_moved() {
    let mut sim = Sim::new(HealthConfig::default());
    sim.run(2000, &|_| Some(MS / 5));
    let published = sim.prober.health();
    sim.run(6000, &|_| Some(MS * 4 / 5));
    let now = sim.prober.peer_health(&PEER).unwrap().rtt.unwrap();
    assert!(now > published[&PEER].rtt.unwrap() * 3, "{now:?}");
    assert!(!sim.prober.rtt_moved_since(&published), "still under 1 ms");
}
