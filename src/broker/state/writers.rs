//! One cluster, one writer: which session of a cluster may write its records (WireGuard key,
//! endpoint, exports), and what happens to a second one. Pure; the shell is the state task in
//! `broker/server.rs`, which probes liveness and ends sessions.
//!
//! **The rule: a live incumbent keeps the seat; a newcomer takes it only from a silent one.**
//! - The first session of a cluster (at any replica) to say a valid Hello gets the writer's
//!   seat. Its session id is its generation: anything a session sends after it lost the seat,
//!   or before it got it, is never applied.
//! - A second session of the same cluster at this broker (`Claim::Probe`) is held while the
//!   incumbent's connection is checked for life ([`PROBE_WINDOW`]: a live gateway's QUIC stack
//!   sends a keep-alive or an ACK at least every `certs::KEEP_ALIVE`, 1 s, whatever its
//!   application does). An incumbent that answered keeps the seat and the newcomer is refused
//!   with [`RejectReason::DuplicateSession`] (it retries with its backoff); a silent one is
//!   fenced (its session ended) and the newcomer writes. So a gateway that restarted after a
//!   crash takes over within the window instead of waiting out the 6 s idle timeout, and an
//!   impostor holding a copy of the certificate, however often it connects, never writes
//!   while the real gateway is up: each attempt costs it one refused Hello.
//! - Only one newcomer is judged at a time; another meanwhile is refused (`Contested`).
//! - A session at another replica (its presence key in the shared store) keeps the seat there:
//!   a newcomer here is refused (`OtherReplica`) until that presence key goes (the session
//!   ended, or timed out within the idle timeout). If two replicas granted the seat at once
//!   (each before seeing the other's presence key), the replica whose id sorts first keeps its
//!   writer and the other ends its session ([`Writers::handle_remote_session`]); the writer
//!   that remains then writes its records again (the shell re-applies its last Hello and
//!   Publish whenever another replica's commit touched them).
//!
//! What this cannot do: tell a legitimate gateway from an impostor with the same certificate.
//! Whoever is live first keeps the seat; when it goes, the other gets in on its next retry and
//! its Hello and Publish (a full set) replace the records. Revoke a leaked certificate with
//! the deny list (`broker::deny`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::model::ClusterId;
use crate::sync::wire::{Incumbent, RejectReason};

/// A session, as the shell numbers them (never reused by a broker process).
pub type SessionId = u64;

/// How long an incumbent has to show life when a newcomer claims its seat: twice the QUIC
/// keep-alive interval (`certs::KEEP_ALIVE`), so one lost datagram does not fence a live one.
pub const PROBE_WINDOW: Duration = Duration::from_secs(2);

/// What a session that said a valid Hello may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The seat was free: the session writes (apply its Hello).
    Granted,
    /// Another session here holds the seat: check whether `incumbent` is alive (within
    /// [`PROBE_WINDOW`]), then call [`Writers::handle_liveness`]. Hold the newcomer meanwhile.
    Probe { incumbent: SessionId },
    /// Refused: send the reason and end the session.
    Refused(RejectReason),
}

/// The outcome of a liveness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The incumbent answered: refuse `newcomer` with `reason`.
    Refuse {
        newcomer: SessionId,
        reason: RejectReason,
    },
    /// The incumbent was silent: end it; `newcomer` now writes (apply its Hello).
    Fence {
        incumbent: SessionId,
        newcomer: SessionId,
    },
}

/// How often a probing session looks at its connection's receive counter.
pub const PROBE_POLL: Duration = Duration::from_millis(100);

/// A liveness probe of one session's peer: alive as soon as its connection received anything
/// after the probe began (a live QUIC peer sends a keep-alive or an ACK at least every
/// `certs::KEEP_ALIVE`), silent if nothing came for [`PROBE_WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessProbe {
    baseline: u64,
    deadline: Instant,
}

impl LivenessProbe {
    /// `received` counts the datagrams the connection received so far.
    pub fn new(received: u64, now: Instant) -> Self {
        Self {
            baseline: received,
            deadline: now + PROBE_WINDOW,
        }
    }

    /// `Some(true)` once the peer sent something, `Some(false)` once the window passed
    /// without, `None` meanwhile (check again after [`PROBE_POLL`]).
    pub fn handle_check(&self, received: u64, now: Instant) -> Option<bool> {
        if received > self.baseline {
            Some(true)
        } else if now >= self.deadline {
            Some(false)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seat {
    writer: SessionId,
    /// A newcomer held while the writer is probed.
    challenger: Option<SessionId>,
}

/// The writer's seat of every cluster with a session at this replica.
#[derive(Debug, Clone, Default)]
pub struct Writers {
    seats: BTreeMap<ClusterId, Seat>,
}

impl Writers {
    /// `session` of `cluster` said a valid Hello; `elsewhere` is whether another replica holds
    /// a session of `cluster` (its presence key).
    pub fn handle_claim(
        &mut self,
        cluster: &ClusterId,
        session: SessionId,
        elsewhere: bool,
    ) -> Claim {
        let refuse = |incumbent| {
            Claim::Refused(RejectReason::DuplicateSession {
                cluster: cluster.clone(),
                incumbent,
            })
        };
        if elsewhere {
            return refuse(Incumbent::OtherReplica);
        }
        match self.seats.get_mut(cluster) {
            None => {
                self.seats.insert(
                    cluster.clone(),
                    Seat {
                        writer: session,
                        challenger: None,
                    },
                );
                Claim::Granted
            }
            Some(seat) if seat.writer == session => Claim::Granted,
            Some(Seat {
                challenger: Some(_),
                ..
            }) => refuse(Incumbent::Contested),
            Some(seat) => {
                seat.challenger = Some(session);
                Claim::Probe {
                    incumbent: seat.writer,
                }
            }
        }
    }

    /// The probe of `incumbent` ended: it showed life (`alive`) or stayed silent for the whole
    /// window. `None` if nothing waits on it any more (the newcomer went, or the incumbent
    /// ended and the newcomer was granted already).
    pub fn handle_liveness(&mut self, incumbent: SessionId, alive: bool) -> Option<Verdict> {
        let (cluster, seat) = self
            .seats
            .iter_mut()
            .find(|(_, seat)| seat.writer == incumbent)?;
        let newcomer = seat.challenger.take()?;
        if alive {
            return Some(Verdict::Refuse {
                newcomer,
                reason: RejectReason::DuplicateSession {
                    cluster: cluster.clone(),
                    incumbent: Incumbent::Answered,
                },
            });
        }
        seat.writer = newcomer;
        Some(Verdict::Fence {
            incumbent,
            newcomer,
        })
    }

    /// `session` ended (disconnected, dropped, fenced or refused). Returns the newcomer that
    /// now holds the seat if `session` was a writer being probed: grant it without waiting for
    /// the probe.
    pub fn handle_session_end(&mut self, session: SessionId) -> Option<SessionId> {
        let (cluster, seat) = self
            .seats
            .iter_mut()
            .find(|(_, seat)| seat.writer == session || seat.challenger == Some(session))?;
        if seat.challenger == Some(session) {
            seat.challenger = None;
            return None;
        }
        match seat.challenger.take() {
            Some(newcomer) => {
                seat.writer = newcomer;
                Some(newcomer)
            }
            None => {
                let cluster = cluster.clone();
                self.seats.remove(&cluster);
                None
            }
        }
    }

    /// Another replica (`replica`; this one is `me`) holds a session of `cluster`. Returns the
    /// writer here that must end, if this replica also granted the seat and yields: the
    /// replica whose id sorts first keeps its writer, so both sides agree without talking.
    pub fn handle_remote_session(
        &self,
        cluster: &ClusterId,
        replica: &str,
        me: &str,
    ) -> Option<SessionId> {
        let seat = self.seats.get(cluster)?;
        (replica < me).then_some(seat.writer)
    }

    /// The session holding `cluster`'s seat here.
    pub fn writer(&self, cluster: &ClusterId) -> Option<SessionId> {
        self.seats.get(cluster).map(|seat| seat.writer)
    }

    /// Whether `session` holds a seat (only a writer's messages are applied).
    pub fn is_writer(&self, session: SessionId) -> bool {
        self.seats.values().any(|seat| seat.writer == session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::id;

    fn duplicate(incumbent: Incumbent) -> RejectReason {
        RejectReason::DuplicateSession {
            cluster: id("c1"),
            incumbent,
        }
    }

    #[derive(Debug)]
    enum Step {
        Hello(SessionId, bool),
        Probed(SessionId, bool),
        Gone(SessionId),
    }

    #[derive(Debug, PartialEq)]
    enum Out {
        Claim(Claim),
        Verdict(Option<Verdict>),
        Granted(Option<SessionId>),
    }

    fn run(steps: Vec<Step>) -> (Vec<Out>, Option<SessionId>) {
        let mut w = Writers::default();
        let c1 = id("c1");
        let outs = steps
            .into_iter()
            .map(|step| match step {
                Step::Hello(s, elsewhere) => Out::Claim(w.handle_claim(&c1, s, elsewhere)),
                Step::Probed(s, alive) => Out::Verdict(w.handle_liveness(s, alive)),
                Step::Gone(s) => Out::Granted(w.handle_session_end(s)),
            })
            .collect();
        (outs, w.writer(&c1))
    }

    #[test]
    fn one_cluster_has_one_writer_whatever_the_order() {
        use Step::*;
        let probe = |incumbent| Out::Claim(Claim::Probe { incumbent });
        let granted = Out::Claim(Claim::Granted);
        let refused = |i| Out::Claim(Claim::Refused(duplicate(i)));
        type Case = (&'static str, Vec<Step>, Vec<Out>, Option<SessionId>);
        let table: Vec<Case> = vec![
            (
                "first session writes",
                vec![Hello(1, false)],
                vec![granted],
                Some(1),
            ),
            (
                "real then impostor: the live incumbent keeps the seat",
                vec![Hello(1, false), Hello(2, false), Probed(1, true)],
                vec![
                    Out::Claim(Claim::Granted),
                    probe(1),
                    Out::Verdict(Some(Verdict::Refuse {
                        newcomer: 2,
                        reason: duplicate(Incumbent::Answered),
                    })),
                ],
                Some(1),
            ),
            (
                "restart after a crash: the silent incumbent is fenced",
                vec![Hello(1, false), Hello(2, false), Probed(1, false), Gone(1)],
                vec![
                    Out::Claim(Claim::Granted),
                    probe(1),
                    Out::Verdict(Some(Verdict::Fence {
                        incumbent: 1,
                        newcomer: 2,
                    })),
                    Out::Granted(None),
                ],
                Some(2),
            ),
            (
                "incumbent disconnects during the probe: the newcomer gets the seat",
                vec![Hello(1, false), Hello(2, false), Gone(1), Probed(1, true)],
                vec![
                    Out::Claim(Claim::Granted),
                    probe(1),
                    Out::Granted(Some(2)),
                    Out::Verdict(None),
                ],
                Some(2),
            ),
            (
                "newcomer gives up during the probe: nothing to decide",
                vec![Hello(1, false), Hello(2, false), Gone(2), Probed(1, false)],
                vec![
                    Out::Claim(Claim::Granted),
                    probe(1),
                    Out::Granted(None),
                    Out::Verdict(None),
                ],
                Some(1),
            ),
            (
                "a third session during a probe is refused at once",
                vec![Hello(1, false), Hello(2, false), Hello(3, false)],
                vec![
                    Out::Claim(Claim::Granted),
                    probe(1),
                    refused(Incumbent::Contested),
                ],
                Some(1),
            ),
            (
                "a session at another replica keeps the seat",
                vec![Hello(1, true)],
                vec![refused(Incumbent::OtherReplica)],
                None,
            ),
            (
                "the last writer gone frees the seat",
                vec![Hello(1, false), Gone(1), Hello(2, false)],
                vec![
                    Out::Claim(Claim::Granted),
                    Out::Granted(None),
                    Out::Claim(Claim::Granted),
                ],
                Some(2),
            ),
        ];
        for (what, steps, expected, writer) in table {
            let (outs, got) = run(steps);
            assert_eq!(outs, expected, "{what}");
            assert_eq!(got, writer, "{what}: writer");
        }
    }

    #[test]
    fn probe_says_alive_on_any_datagram_and_silent_after_the_window() {
        let t0 = crate::clock::now();
        let probe = LivenessProbe::new(10, t0);
        let table = [
            ("nothing yet", 10, Duration::ZERO, None),
            ("a datagram", 11, Duration::from_millis(50), Some(true)),
            ("nothing, within the window", 10, PROBE_WINDOW / 2, None),
            ("nothing for the window", 10, PROBE_WINDOW, Some(false)),
            (
                "late datagram still counts",
                12,
                PROBE_WINDOW * 2,
                Some(true),
            ),
        ];
        for (what, received, after, expected) in table {
            assert_eq!(probe.handle_check(received, t0 + after), expected, "{what}");
        }
    }

    #[test]
    fn flapping_impostor_never_takes_the_seat_from_a_live_writer() {
        let mut w = Writers::default();
        let c1 = id("c1");
        assert_eq!(w.handle_claim(&c1, 1, false), Claim::Granted);
        for impostor in 2..50 {
            assert_eq!(
                w.handle_claim(&c1, impostor, false),
                Claim::Probe { incumbent: 1 }
            );
            assert!(matches!(
                w.handle_liveness(1, true),
                Some(Verdict::Refuse { newcomer, .. }) if newcomer == impostor
            ));
            assert_eq!(w.handle_session_end(impostor), None);
            assert!(!w.is_writer(impostor));
        }
        assert_eq!(w.writer(&c1), Some(1));
    }

    #[test]
    fn replicas_that_both_granted_the_seat_agree_who_yields() {
        let mut a = Writers::default();
        let mut b = Writers::default();
        let c1 = id("c1");
        assert_eq!(a.handle_claim(&c1, 7, false), Claim::Granted);
        assert_eq!(b.handle_claim(&c1, 9, false), Claim::Granted);
        assert_eq!(a.handle_remote_session(&c1, "replica-b", "replica-a"), None);
        assert_eq!(
            b.handle_remote_session(&c1, "replica-a", "replica-b"),
            Some(9)
        );
        assert_eq!(
            a.handle_remote_session(&id("c2"), "replica-0", "replica-a"),
            None,
            "no writer of that cluster here"
        );
    }
}
