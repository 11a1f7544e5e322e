//! The endpoint prober: a sans-IO core that decides when to probe each of this cluster's own
//! endpoints and whether each is up or down.
//!
//! Owns the probe schedule, the in-flight deadlines and the thresholds (`healthy_threshold`
//! successes in a row bring a down endpoint back, `unhealthy_threshold` failures in a row take
//! an up one out). It does not open sockets: `health::driver` sends the [`Probe`]s it polls
//! and feeds back the results. No clock: every entry point takes `now`.
//!
//! An endpoint starts `Unknown`, which counts as not ready, and its first probe is due at once;
//! the first result decides (one success brings it up, one failure takes it down), so a
//! gateway that starts never answers an endpoint it has not seen alive, and a healthy one is
//! answered within one round trip.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::model::{Export, ServiceKey};

/// What to check on each endpoint of a service, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeConfig {
    pub check: Check,
    /// Time between the starts of two probes of one endpoint. Each probe is one TCP connect
    /// (and one tiny request for HTTP) to a local endpoint, so 4/s per endpoint costs nothing
    /// measurable and keeps detection under half a second.
    pub interval: Duration,
    /// A probe without an answer by then failed. Local endpoints answer in well under 1 ms.
    pub timeout: Duration,
    /// Successes in a row that bring a down endpoint back.
    pub healthy_threshold: u32,
    /// Failures in a row that take an up endpoint out. 2 rides out a single lost probe.
    pub unhealthy_threshold: u32,
}

/// The default schedule: a failed endpoint is out within `interval × unhealthy_threshold`
/// (500 ms), plus `timeout` if it black-holes instead of refusing, which keeps withdrawal from
/// every cluster's answers under the 1 s goal (issue 7) with the broker's propagation on top.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;

/// The check itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Check {
    /// Succeeds when a TCP connection to the port opens.
    Tcp { port: u16 },
    /// Succeeds when `GET path` answers with `status`.
    Http {
        port: u16,
        path: String,
        status: u16,
    },
}

impl Check {
    pub fn port(&self) -> u16 {
        match self {
            Check::Tcp { port } | Check::Http { port, .. } => *port,
        }
    }
}

/// One endpoint of one service: what the prober tracks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetKey {
    pub service: ServiceKey,
    pub address: IpAddr,
}

/// Identifies one probe, so that a late answer to an expired probe is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId(pub u64);

/// A probe the shell must run, then report with [`Prober::handle_result`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub id: ProbeId,
    pub target: TargetKey,
    pub to: SocketAddr,
    pub check: Check,
    /// The shell may give up after this long (the core counts it failed at the same time).
    pub timeout: Duration,
}

/// An endpoint's health as the prober sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Not probed yet: not ready.
    Unknown,
    Up,
    Down,
}

/// A transition, for logs and for the shell to republish the exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEvent {
    pub target: TargetKey,
    pub state: EndpointState,
    /// The last failure's reason when going down.
    pub reason: Option<String>,
}

#[derive(Debug)]
struct Tracked {
    config: ProbeConfig,
    state: EndpointState,
    successes: u32,
    failures: u32,
    next_due: Instant,
    in_flight: Option<(ProbeId, Instant)>,
}

/// The core. Call order: [`set_targets`](Self::set_targets) whenever the services change,
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) says,
/// [`handle_result`](Self::handle_result) for every probe run; after each, drain
/// [`poll_probe`](Self::poll_probe) and [`poll_event`](Self::poll_event).
#[derive(Debug, Default)]
pub struct Prober {
    targets: BTreeMap<TargetKey, Tracked>,
    next_id: u64,
    probes: VecDeque<Probe>,
    events: VecDeque<EndpointEvent>,
}

impl Prober {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the set of endpoints to probe. Endpoints already tracked keep their state (a
    /// changed config restarts only the counters' schedule); new ones are due at once; ones no
    /// longer listed are forgotten.
    pub fn set_targets(
        &mut self,
        targets: impl IntoIterator<Item = (TargetKey, ProbeConfig)>,
        now: Instant,
    ) {
        let mut next: BTreeMap<TargetKey, Tracked> = BTreeMap::new();
        for (key, config) in targets {
            let tracked = match self.targets.remove(&key) {
                Some(mut t) => {
                    if t.config != config {
                        t.config = config;
                        t.next_due = now;
                    }
                    t
                }
                None => Tracked {
                    config,
                    state: EndpointState::Unknown,
                    successes: 0,
                    failures: 0,
                    next_due: now,
                    in_flight: None,
                },
            };
            next.insert(key, tracked);
        }
        self.targets = next;
        self.probes.retain(|p| self.targets.contains_key(&p.target));
        self.handle_timeout(now);
    }

    /// Feeds one probe's outcome: `Ok` on success, `Err(reason)` on failure. Outcomes of
    /// probes that already timed out, or of forgotten endpoints, are ignored.
    pub fn handle_result(&mut self, id: ProbeId, outcome: Result<(), String>, now: Instant) {
        let Some((key, tracked)) = self
            .targets
            .iter_mut()
            .find(|(_, t)| t.in_flight.is_some_and(|(i, _)| i == id))
        else {
            return;
        };
        tracked.in_flight = None;
        let event = record(tracked, outcome);
        if let Some((state, reason)) = event {
            self.events.push_back(EndpointEvent {
                target: key.clone(),
                state,
                reason,
            });
        }
        self.handle_timeout(now);
    }

    /// Expires probes past their timeout (each a failure) and issues the probes that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (key, tracked) in &mut self.targets {
            if let Some((_, deadline)) = tracked.in_flight
                && now >= deadline
            {
                tracked.in_flight = None;
                let reason = format!("no answer within {:?}", tracked.config.timeout);
                if let Some((state, reason)) = record(tracked, Err(reason)) {
                    self.events.push_back(EndpointEvent {
                        target: key.clone(),
                        state,
                        reason,
                    });
                }
            }
            if tracked.in_flight.is_none() && now >= tracked.next_due {
                let id = ProbeId(self.next_id);
                self.next_id += 1;
                tracked.in_flight = Some((id, now + tracked.config.timeout));
                // Schedule from the due time, not from now, so that the interval holds even
                // when the shell wakes late; but never in the past.
                tracked.next_due = (tracked.next_due + tracked.config.interval).max(now);
                self.probes.push_back(Probe {
                    id,
                    target: key.clone(),
                    to: SocketAddr::new(key.address, tracked.config.check.port()),
                    check: tracked.config.check.clone(),
                    timeout: tracked.config.timeout,
                });
            }
        }
    }

    pub fn poll_probe(&mut self) -> Option<Probe> {
        self.probes.pop_front()
    }

    /// Up/Down transitions only (Unknown is never reported).
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// When to call `handle_timeout` next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.targets
            .values()
            .map(|t| match t.in_flight {
                Some((_, deadline)) => (deadline, "probe timeout"),
                None => (t.next_due, "probe due"),
            })
            .min_by_key(|(at, _)| *at)
    }

    pub fn state(&self, key: &TargetKey) -> Option<EndpointState> {
        self.targets.get(key).map(|t| t.state)
    }

    /// `exports` with every probed endpoint that is not up marked not ready. Endpoints without
    /// a probe, and endpoints already not ready, are left as they are.
    pub fn apply(&self, exports: &[Export]) -> Vec<Export> {
        exports
            .iter()
            .map(|export| {
                let mut export = export.clone();
                for endpoint in &mut export.endpoints {
                    let key = TargetKey {
                        service: export.service.clone(),
                        address: endpoint.address,
                    };
                    if let Some(t) = self.targets.get(&key) {
                        endpoint.ready &= t.state == EndpointState::Up;
                    }
                }
                export
            })
            .collect()
    }
}

/// Counts one outcome against the thresholds; returns the transition, if any.
fn record(
    tracked: &mut Tracked,
    outcome: Result<(), String>,
) -> Option<(EndpointState, Option<String>)> {
    let (next, reason) = match outcome {
        Ok(()) => {
            tracked.successes = tracked.successes.saturating_add(1);
            tracked.failures = 0;
            let enough = tracked.state == EndpointState::Unknown
                || tracked.successes >= tracked.config.healthy_threshold.max(1);
            (enough.then_some(EndpointState::Up), None)
        }
        Err(reason) => {
            tracked.failures = tracked.failures.saturating_add(1);
            tracked.successes = 0;
            let enough = tracked.state == EndpointState::Unknown
                || tracked.failures >= tracked.config.unhealthy_threshold.max(1);
            (enough.then_some(EndpointState::Down), Some(reason))
        }
    };
    match next {
        Some(state) if state != tracked.state => {
            tracked.state = state;
            Some((state, reason))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
