//! Peer health: the pure state machine that decides whether each peer is up, degraded or down
//! from probes sent through its tunnel.
//!
//! [`Prober`] has no sockets and no clock: the shell ([`crate::device`]) passes the time in,
//! sends the [`Probe`]s it hands out through the data plane (as authenticated in-tunnel
//! messages, see [`crate::probe`]), feeds back the replies, and wakes it at
//! [`Prober::poll_timeout`]. Every transition comes out of [`Prober::poll_event`].
//!
//! The rules, per peer:
//! - a probe goes out every [`HealthConfig::interval`]; one unanswered after
//!   [`HealthConfig::probe_timeout`] is lost;
//! - no reply at all for [`HealthConfig::down_after`] (counted from the last reply, or from
//!   when the peer was added) makes it [`HealthState::Down`] — this is what bounds detection of
//!   a cut link, independent of how many probes were in flight;
//! - [`HealthConfig::up_after`] replies in a row bring it back from `Down` (or from
//!   [`HealthState::Unknown`]); the loss window starts afresh then, so old losses do not hold
//!   a recovered peer at `Degraded`;
//! - while not down, [`HealthConfig::degraded_loss`] lost probes among the last
//!   [`HealthConfig::window`], or a smoothed RTT above [`HealthConfig::degraded_rtt`], make it
//!   [`HealthState::Degraded`]; otherwise it is [`HealthState::Up`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Tuning for the [`Prober`]. The defaults declare a cut link down within 1 s and a restored
/// one up within 1 s, for 5 probes (80-byte datagrams) per peer per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between probes to one peer. Default 200 ms.
    pub interval: Duration,
    /// A probe without a reply after this long counts as lost. Default 500 ms.
    pub probe_timeout: Duration,
    /// No reply for this long makes a peer down. Default 800 ms: a cut link is down within
    /// that, plus at most one timer wake-up of scheduling delay, so under 1 s.
    pub down_after: Duration,
    /// Replies in a row that bring a peer up from down or unknown. Default 2: with a 200 ms
    /// interval, up within about 400 ms plus one RTT of the link returning.
    pub up_after: u32,
    /// How many of the most recent probe outcomes the loss figure covers. Default 10.
    pub window: u8,
    /// This many lost probes within the window make a peer degraded. Default 2 (20 %).
    pub degraded_loss: u8,
    /// A smoothed RTT above this makes a peer degraded. Default none.
    pub degraded_rtt: Option<Duration>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(500),
            down_after: Duration::from_millis(800),
            up_after: 2,
            window: 10,
            degraded_loss: 2,
            degraded_rtt: None,
        }
    }
}

/// [`Prober::rtt_moved_since`]: a smoothed RTT is handed out again once it moved by more than
/// 1/this of the published value (20 %)...
pub const RTT_REPUBLISH_FRACTION: u32 = 5;
/// ... and by more than this, so that sub-millisecond jitter on a near link never counts.
pub const RTT_REPUBLISH_FLOOR: Duration = Duration::from_millis(1);

/// What the prober believes about one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthState {
    /// Just added: neither enough replies to be up nor enough silence to be down yet.
    Unknown,
    Up,
    /// Answering, but losing probes or slow.
    Degraded,
    Down,
}

/// One peer's health, as published by [`crate::Handle::health`] and [`crate::PeerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHealth {
    pub state: HealthState,
    /// Smoothed round-trip time of probes (RFC 6298's 1/8 gain); `None` before a reply.
    pub rtt: Option<Duration>,
    /// Lost probes among the last `window` outcomes.
    pub lost: u8,
    /// How many outcomes the window holds (at most [`HealthConfig::window`]).
    pub window: u8,
}

impl PeerHealth {
    /// Before any probe outcome.
    pub const UNKNOWN: Self = Self {
        state: HealthState::Unknown,
        rtt: None,
        lost: 0,
        window: 0,
    };
}

/// A state change of one peer, from [`Prober::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthEvent {
    pub peer: [u8; 32],
    pub previous: HealthState,
    pub health: PeerHealth,
}

/// Identifies one probe; a reply must echo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId(pub u64);

/// A probe for the shell to send to `peer`'s data plane through its tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub peer: [u8; 32],
    pub id: ProbeId,
}

/// See the module docs.
#[derive(Debug)]
pub struct Prober {
    config: HealthConfig,
    targets: BTreeMap<[u8; 32], Target>,
    next_id: u64,
    probes: VecDeque<Probe>,
    events: VecDeque<HealthEvent>,
}

#[derive(Debug)]
struct Target {
    state: HealthState,
    next_probe: Instant,
    /// Probes in flight, oldest first.
    outstanding: VecDeque<(ProbeId, Instant)>,
    /// The last reply, or when the target was added (silence counts from there).
    heard: Instant,
    consecutive_replies: u32,
    srtt: Option<Duration>,
    /// Most recent outcomes, `true` = lost; at most `config.window` long.
    outcomes: VecDeque<bool>,
}

impl Prober {
    /// `seed` starts the probe id sequence, so that replies to a previous process's probes
    /// (same peer, same session) do not match ours.
    pub fn new(config: HealthConfig, seed: u64) -> Self {
        Self {
            config,
            targets: BTreeMap::new(),
            next_id: seed,
            probes: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Replaces the set of peers to probe. New peers start [`HealthState::Unknown`] and are
    /// probed at once; peers no longer listed are forgotten (no event); the others keep their
    /// state.
    pub fn set_targets(&mut self, peers: impl IntoIterator<Item = [u8; 32]>, now: Instant) {
        let mut kept = BTreeMap::new();
        for peer in peers {
            let target = self.targets.remove(&peer).unwrap_or_else(|| Target {
                state: HealthState::Unknown,
                next_probe: now,
                outstanding: VecDeque::new(),
                heard: now,
                consecutive_replies: 0,
                srtt: None,
                outcomes: VecDeque::new(),
            });
            kept.insert(peer, target);
        }
        self.targets = kept;
        self.probes.retain(|p| self.targets.contains_key(&p.peer));
        self.handle_timeout(now);
    }

    /// A reply to probe `id` arrived, authenticated, from `peer`. Replies that match no
    /// outstanding probe (late, duplicated, unknown peer) are ignored.
    pub fn handle_reply(&mut self, peer: [u8; 32], id: ProbeId, now: Instant) {
        let Some(target) = self.targets.get_mut(&peer) else {
            return;
        };
        let Some(pos) = target.outstanding.iter().position(|(p, _)| *p == id) else {
            return;
        };
        let (_, sent) = target
            .outstanding
            .remove(pos)
            .expect("position is in range");
        let rtt = now.saturating_duration_since(sent);
        target.srtt = Some(match target.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
        target.heard = now;
        target.consecutive_replies += 1;
        target.record(false, self.config.window);
        let previous = target.state;
        target.state = target.next_state(&self.config, now);
        if target.state != previous && matches!(previous, HealthState::Down | HealthState::Unknown)
        {
            // A recovered peer starts a fresh loss window (see the module docs).
            let kept = target
                .consecutive_replies
                .min(u32::from(self.config.window));
            target.outcomes = std::iter::repeat_n(false, kept as usize).collect();
        }
        self.emit(peer, previous);
        self.handle_timeout(now);
    }

    /// Sends due probes, expires lost ones and applies the silence rule. Call at (or after)
    /// [`Self::poll_timeout`]; calling it early or often is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let peers: Vec<[u8; 32]> = self.targets.keys().copied().collect();
        for peer in peers {
            let target = self.targets.get_mut(&peer).expect("key just listed");
            while let Some(&(_, sent)) = target.outstanding.front() {
                if now < sent + self.config.probe_timeout {
                    break;
                }
                target.outstanding.pop_front();
                target.consecutive_replies = 0;
                target.record(true, self.config.window);
            }
            if now >= target.next_probe {
                let id = ProbeId(self.next_id);
                self.next_id = self.next_id.wrapping_add(1);
                target.outstanding.push_back((id, now));
                // Schedule from `now`, not from the missed slot: a late wake-up sends one
                // probe, not a burst.
                target.next_probe = now + self.config.interval;
                self.probes.push_back(Probe { peer, id });
            }
            let previous = target.state;
            target.state = target.next_state(&self.config, now);
            if target.state == HealthState::Down && previous != HealthState::Down {
                target.consecutive_replies = 0;
            }
            self.emit(peer, previous);
        }
    }

    /// The next probe to send.
    pub fn poll_probe(&mut self) -> Option<Probe> {
        self.probes.pop_front()
    }

    /// The next state change.
    pub fn poll_event(&mut self) -> Option<HealthEvent> {
        self.events.pop_front()
    }

    /// When to call [`Self::handle_timeout`] next, and why. `None` without targets.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let mut earliest: Option<(Instant, &'static str)> = None;
        let mut consider = |at: Instant, why: &'static str| {
            if earliest.is_none_or(|(t, _)| at < t) {
                earliest = Some((at, why));
            }
        };
        for target in self.targets.values() {
            consider(target.next_probe, "send probe");
            if let Some(&(_, sent)) = target.outstanding.front() {
                consider(sent + self.config.probe_timeout, "probe lost");
            }
            if target.state != HealthState::Down {
                consider(target.heard + self.config.down_after, "peer silent");
            }
        }
        earliest
    }

    /// Every target's current health.
    pub fn health(&self) -> BTreeMap<[u8; 32], PeerHealth> {
        self.targets
            .iter()
            .map(|(peer, t)| (*peer, t.health()))
            .collect()
    }

    /// Whether any target's smoothed RTT has moved far enough from `published` (what the
    /// shell last handed out) to be worth handing out again, state unchanged: by more than
    /// [`RTT_REPUBLISH_FRACTION`] of the published value and at least [`RTT_REPUBLISH_FLOOR`],
    /// or from none to some. Consumers rank peers by RTT (nearest first), so a change of
    /// latency must reach them; the thresholds keep jitter from republishing on every probe.
    pub fn rtt_moved_since(&self, published: &BTreeMap<[u8; 32], PeerHealth>) -> bool {
        self.targets.iter().any(|(peer, target)| {
            let before = published.get(peer).and_then(|h| h.rtt);
            match (before, target.srtt) {
                (None, Some(_)) => true,
                (Some(before), Some(now)) => {
                    let moved = before.abs_diff(now);
                    moved > RTT_REPUBLISH_FLOOR && moved > before / RTT_REPUBLISH_FRACTION
                }
                _ => false,
            }
        })
    }

    /// One target's current health.
    pub fn peer_health(&self, peer: &[u8; 32]) -> Option<PeerHealth> {
        self.targets.get(peer).map(Target::health)
    }

    fn emit(&mut self, peer: [u8; 32], previous: HealthState) {
        let target = &self.targets[&peer];
        if target.state != previous {
            self.events.push_back(HealthEvent {
                peer,
                previous,
                health: target.health(),
            });
        }
    }
}

impl Target {
    fn record(&mut self, lost: bool, window: u8) {
        self.outcomes.push_back(lost);
        while self.outcomes.len() > usize::from(window) {
            self.outcomes.pop_front();
        }
    }

    fn lost(&self) -> u8 {
        self.outcomes.iter().filter(|l| **l).count() as u8
    }

    fn next_state(&self, config: &HealthConfig, now: Instant) -> HealthState {
        if now >= self.heard + config.down_after {
            return HealthState::Down;
        }
        let recovering = matches!(self.state, HealthState::Down | HealthState::Unknown);
        if recovering && self.consecutive_replies < config.up_after {
            return self.state;
        }
        // Right after recovery the window is reset by the caller; judge by replies in a row.
        let lost = if recovering { 0 } else { self.lost() };
        let slow = config
            .degraded_rtt
            .is_some_and(|limit| self.srtt.is_some_and(|s| s > limit));
        if lost >= config.degraded_loss || slow {
            HealthState::Degraded
        } else {
            HealthState::Up
        }
    }

    fn health(&self) -> PeerHealth {
        PeerHealth {
            state: self.state,
            rtt: self.srtt,
            lost: self.lost(),
            window: self.outcomes.len() as u8,
        }
    }
}

#[cfg(test)]
mod tests;
