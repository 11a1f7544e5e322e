//! Simulated-time tests of the endpoint prober: thresholds, timeouts, flapping, and what the
//! published exports say.

use super::*;
use crate::model::Endpoint;

fn key(addr: &str) -> TargetKey {
    TargetKey {
        service: ServiceKey::new("shop", "web").unwrap(),
        address: addr.parse().unwrap(),
    }
}

fn config() -> ProbeConfig {
    ProbeConfig {
        check: Check::Tcp { port: 80 },
        interval: Duration::from_millis(250),
        timeout: Duration::from_millis(200),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
    }
}

/// A prober and a virtual clock, with the one endpoint 10.101.0.10 registered.
struct Sim {
    prober: Prober,
    now: Instant,
    start: Instant,
}

impl Sim {
    fn new(config: ProbeConfig) -> Self {
        let now = crate::clock::now();
        let mut prober = Prober::new();
        prober.set_targets([(key("10.101.0.10"), config)], now);
        Self {
            prober,
            now,
            start: now,
        }
    }

    /// Runs the next probe that comes due and answers it with `outcome` right away (or not at
    /// all, for `None`: it then times out). Returns the events it caused.
    fn step(&mut self, outcome: Option<Result<(), String>>) -> Vec<EndpointState> {
        let probe = loop {
            if let Some(p) = self.prober.poll_probe() {
                break p;
            }
            let (at, _) = self.prober.poll_timeout().expect("a target is tracked");
            self.now = self.now.max(at);
            self.prober.handle_timeout(self.now);
        };
        match outcome {
            Some(outcome) => self.prober.handle_result(probe.id, outcome, self.now),
            None => {
                let (at, why) = self.prober.poll_timeout().unwrap();
                assert_eq!(why, "probe timeout");
                assert_eq!(at, self.now + probe.timeout);
                self.now = at;
                self.prober.handle_timeout(self.now);
            }
        }
        std::iter::from_fn(|| self.prober.poll_event())
            .map(|e| e.state)
            .collect()
    }

    fn elapsed_ms(&self) -> u128 {
        (self.now - self.start).as_millis()
    }

    fn state(&self) -> EndpointState {
        self.prober.state(&key("10.101.0.10")).unwrap()
    }
}

const OK: Option<Result<(), String>> = Some(Ok(()));

fn refused() -> Option<Result<(), String>> {
    Some(Err("connection refused".into()))
}

#[test]
fn the_first_probe_is_due_at_once_and_one_success_brings_it_up() {
    let mut sim = Sim::new(config());
    assert_eq!(sim.state(), EndpointState::Unknown);
    assert_eq!(sim.step(OK), [EndpointState::Up]);
    assert_eq!(sim.elapsed_ms(), 0);
}

#[test]
fn a_never_seen_endpoint_that_fails_is_down_after_one_probe() {
    let mut sim = Sim::new(config());
    assert_eq!(sim.step(refused()), [EndpointState::Down]);
}

#[test]
fn prober_marks_down_after_unhealthy_threshold_failures_in_a_row() {
    let mut sim = Sim::new(config());
    sim.step(OK);
    assert!(sim.step(refused()).is_empty());
    assert!(sim.step(refused()).is_empty());
    assert_eq!(sim.step(refused()), [EndpointState::Down]);
    // Probes at 0, 250, 500, 750 ms: down on the third failure.
    assert_eq!(sim.elapsed_ms(), 750);
    assert!(sim.step(refused()).is_empty(), "down is reported once");
}

#[test]
fn a_silent_endpoint_fails_by_timeout() {
    let mut sim = Sim::new(config());
    sim.step(OK);
    sim.step(None);
    sim.step(None);
    assert_eq!(sim.step(None), [EndpointState::Down]);
    // Third probe sent at 750 ms, given up at 950 ms.
    assert_eq!(sim.elapsed_ms(), 950);
}

#[test]
fn a_late_answer_to_an_expired_probe_is_ignored() {
    let mut sim = Sim::new(config());
    let first = sim.prober.poll_probe().unwrap();
    sim.now += Duration::from_millis(200);
    sim.prober.handle_timeout(sim.now);
    assert_eq!(sim.prober.poll_event().unwrap().state, EndpointState::Down);
    sim.prober.handle_result(first.id, Ok(()), sim.now);
    assert_eq!(sim.prober.poll_event(), None);
    assert_eq!(sim.state(), EndpointState::Down);
}

#[test]
fn recovery_needs_healthy_threshold_successes_in_a_row() {
    let mut sim = Sim::new(config());
    sim.step(refused());
    assert!(sim.step(OK).is_empty());
    assert_eq!(sim.step(OK), [EndpointState::Up]);
}

#[test]
fn flapping_below_the_thresholds_changes_nothing() {
    let mut sim = Sim::new(config());
    sim.step(OK);
    for round in 0..20 {
        // Two failures then a success, over and over: never three failures in a row.
        assert!(sim.step(refused()).is_empty(), "round {round}");
        assert!(sim.step(refused()).is_empty(), "round {round}");
        assert!(sim.step(OK).is_empty(), "round {round}");
    }
    assert_eq!(sim.state(), EndpointState::Up);

    let mut sim = Sim::new(config());
    sim.step(refused());
    for round in 0..20 {
        // Down, and successes never two in a row: it stays down.
        assert!(sim.step(OK).is_empty(), "round {round}");
        assert!(sim.step(refused()).is_empty(), "round {round}");
    }
    assert_eq!(sim.state(), EndpointState::Down);
}

#[test]
fn a_slow_shell_does_not_pile_up_probes() {
    let mut sim = Sim::new(config());
    sim.step(OK);
    // The shell wakes 10 s late: one probe is issued, not forty.
    sim.now += Duration::from_secs(10);
    sim.prober.handle_timeout(sim.now);
    assert!(sim.prober.poll_probe().is_some());
    assert!(sim.prober.poll_probe().is_none());
    let (at, why) = sim.prober.poll_timeout().unwrap();
    assert_eq!(
        (at - sim.now, why),
        (Duration::from_millis(200), "probe timeout")
    );
}

#[test]
fn set_targets_keeps_known_state_and_forgets_removed_endpoints() {
    let mut sim = Sim::new(config());
    sim.step(OK);
    let now = sim.now;
    sim.prober.set_targets(
        [
            (key("10.101.0.10"), config()),
            (key("10.101.0.11"), config()),
        ],
        now,
    );
    assert_eq!(sim.state(), EndpointState::Up);
    assert_eq!(
        sim.prober.state(&key("10.101.0.11")),
        Some(EndpointState::Unknown)
    );
    let probe = sim
        .prober
        .poll_probe()
        .expect("the new endpoint is probed at once");
    assert_eq!(probe.to, "10.101.0.11:80".parse().unwrap());
    sim.prober
        .set_targets([(key("10.101.0.11"), config())], now);
    assert_eq!(sim.prober.state(&key("10.101.0.10")), None);
}

#[test]
fn apply_marks_endpoints_that_are_not_up_not_ready() {
    let mut prober = Prober::new();
    let now = crate::clock::now();
    prober.set_targets(
        [
            (key("10.101.0.10"), config()),
            (key("10.101.0.11"), config()),
            (key("10.101.0.12"), config()),
        ],
        now,
    );
    let probes: Vec<Probe> = std::iter::from_fn(|| prober.poll_probe()).collect();
    prober.handle_result(probes[0].id, Ok(()), now);
    prober.handle_result(probes[1].id, Err("refused".into()), now);
    let endpoint = |a: &str, ready| Endpoint {
        address: a.parse().unwrap(),
        ready,
        hostname: None,
        zone: None,
    };
    let export = Export {
        service: ServiceKey::new("shop", "web").unwrap(),
        cluster_ips: vec![],
        ports: vec![],
        endpoints: vec![
            endpoint("10.101.0.10", true), // up
            endpoint("10.101.0.11", true), // down
            endpoint("10.101.0.12", true), // not probed yet
            endpoint("10.101.0.13", true), // not a target
        ],
        props: Default::default(),
    };
    let ready: Vec<bool> = prober.apply(&[export])[0]
        .endpoints
        .iter()
        .map(|e| e.ready)
        .collect();
    assert_eq!(ready, [true, false, false, true]);
}
