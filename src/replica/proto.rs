//! The replica protocol, pure: the [`RecordsDoc`] the gateway serves, the long-poll rule
//! ([`is_news`]) and the replica's [`Follower`] state machine (what to ask next, when to retry,
//! what the answer means). No sockets and no clock: the shells are `http` (both ends of the
//! HTTP exchange) and `run` (the replica's loop).
//!
//! The exchange: `GET /api/v1/dns/records?instance=I&after=G&wait_ms=W`. The gateway answers
//! at once with its current document when it is not generation `G` of instance `I` (a new
//! gateway process, the leader changed, or records changed since), else holds the request up
//! to `W` ms for a change and answers `204 No Content` when none came. Every document is whole:
//! the replica never applies a diff, so a missed update cannot leave it wrong.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use causeway_dns::{ServiceRecords, ZoneConfig};
use serde::{Deserialize, Serialize};

/// The admin API path of the records long poll.
pub const PATH: &str = "/api/v1/dns/records";
/// How long the replica asks the gateway to hold a poll without news: below the 60 s idle
/// timeouts common in load balancers and the 120 s of kube-proxy's IPVS, so an idle poll is
/// never cut by the path in between; each held poll costs one small request.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(25);
/// The gateway holds a poll at most this long, whatever the replica asks.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// First retry delay after a failed poll; doubled per consecutive failure up to
/// [`BACKOFF_MAX`]. A leader change costs a few seconds anyway (readiness probes), so the
/// ceiling keeps a gateway that is down from being asked more than once per 5 s per replica.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the gateway's DNS serves, whole: the zones and every service's ranked records, as the
/// `dns` crate takes them, stamped with the publishing process and a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsDoc {
    /// Chosen at random when the gateway process starts: generations of different processes
    /// are not comparable.
    pub instance: u64,
    /// Increases by one with every table this instance publishes.
    pub generation: u64,
    pub zones: ZoneConfig,
    pub services: Vec<ServiceRecords>,
}

/// One long-poll request: what the replica holds and how long it will wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollQuery {
    /// The instance and generation the replica holds, if any.
    pub have: Option<(u64, u64)>,
    /// How long the gateway may hold the request without news.
    pub wait: Duration,
}

impl PollQuery {
    /// The request path with its query string.
    pub fn to_path(&self) -> String {
        let wait_ms = self.wait.as_millis();
        match self.have {
            Some((instance, generation)) => {
                format!("{PATH}?instance={instance}&after={generation}&wait_ms={wait_ms}")
            }
            None => format!("{PATH}?wait_ms={wait_ms}"),
        }
    }

    /// Parses a request's query string (the gateway side). Unknown parameters are ignored;
    /// `instance` and `after` come together or not at all; the wait is capped at [`MAX_WAIT`].
    pub fn parse(query: &str) -> Result<PollQuery, ReplicaError> {
        let (mut instance, mut after, mut wait) = (None, None, DEFAULT_WAIT);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value.parse::<u64>().map_err(|_| ReplicaError::BadQuery {
                    name: name.to_owned(),
                    value: value.to_owned(),
                })
            };
            match name {
                "instance" => instance = Some(number()?),
                "after" => after = Some(number()?),
                "wait_ms" => wait = Duration::from_millis(number()?),
                _ => {}
            }
        }
        let have = match (instance, after) {
            (Some(i), Some(g)) => Some((i, g)),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(ReplicaError::BadQuery {
                    name: "instance/after".into(),
                    value: "only one of them".into(),
                });
            }
        };
        Ok(PollQuery {
            have,
            wait: wait.min(MAX_WAIT),
        })
    }
}

/// The long-poll rule: answer `doc` now unless the replica already holds exactly it.
pub fn is_news(doc: &RecordsDoc, query: &PollQuery) -> bool {
    query.have != Some((doc.instance, doc.generation))
}

/// What came back from one poll, before interpretation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// 200 with a body (expected: a [`RecordsDoc`] as JSON).
    Records(String),
    /// 204: the wait ended without news.
    Unchanged,
    /// Any other status, with the body (the server's error message).
    Other { status: u16, body: String },
}

/// Why a poll failed. The replica keeps serving its last good records through all of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// No HTTP answer: connection refused, reset, timed out, not HTTP.
    #[error("cannot reach the gateway's admin port {from}: {reason}")]
    Unreachable { from: String, reason: String },
    /// An HTTP answer other than 200 or 204 (a gateway without the records API is a 404).
    #[error("the gateway answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    /// A 200 whose body is not a records document.
    #[error("the gateway's records document does not parse: {reason}")]
    BadDocument { reason: String },
    /// The same gateway process went back in generations: its documents cannot be trusted.
    #[error("the gateway's generation went back from {had} to {got} (instance {instance})")]
    GenerationWentBack { instance: u64, had: u64, got: u64 },
    /// The document parsed but its records do not build a zone.
    #[error("the gateway's records do not build a zone: {reason}")]
    BadRecords { reason: String },
    /// A malformed poll request (the gateway side).
    #[error("bad query parameter {name}={value:?}")]
    BadQuery { name: String, value: String },
}

/// The gateway admin address a replica follows: `http://HOST:PORT` (a trailing `/` is
/// accepted). HOST may be a name (a Kubernetes Service); it is resolved on every connect, so
/// a Service whose address changes is followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    /// `HOST:PORT`, as `TcpStream::connect` takes it.
    pub authority: String,
}

impl FromStr for AdminUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            format!("{s:?} is not an http:// URL (the admin port speaks plain HTTP)")
        })?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let port_ok = authority.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        let clean = !authority.contains(['/', '?', '#', '@'])
            && !authority.chars().any(char::is_whitespace);
        if port_ok && clean {
            Ok(AdminUrl {
                authority: authority.to_owned(),
            })
        } else {
            Err(format!("{s:?} is not http://HOST:PORT"))
        }
    }
}

impl fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// What the replica's shell logs, one line per transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new document is being served; `first` for the first one of this process.
    Applied {
        generation: u64,
        services: usize,
        first: bool,
    },
    /// The first failure after success (or at start): the last good records stay served.
    Lost { error: ReplicaError, loaded: bool },
    /// A poll succeeded after [`Event::Lost`].
    Restored,
}

/// The replica's side of the protocol: what it holds, when it may ask again, what it tells.
///
/// Call order per turn: [`Follower::poll_request`] (`None` while backing off: wait for
/// [`Follower::poll_timeout`]); perform the request; feed the answer to
/// [`Follower::handle_reply`], and a document it returns, once built and served, to
/// [`Follower::handle_applied`]; feed any error (transport, reply, build) to
/// [`Follower::handle_failure`]; drain [`Follower::poll_event`].
#[derive(Debug)]
pub struct Follower {
    wait: Duration,
    have: Option<(u64, u64)>,
    failures: u32,
    retry_at: Option<Instant>,
    /// `Some(true)` after a success, `Some(false)` after a failure, `None` before either.
    reachable: Option<bool>,
    loaded_at: Option<Instant>,
    events: std::collections::VecDeque<Event>,
}

impl Follower {
    /// A follower that asks the gateway to hold polls for `wait`.
    pub fn new(wait: Duration) -> Self {
        Self {
            wait,
            have: None,
            failures: 0,
            retry_at: None,
            reachable: None,
            loaded_at: None,
            events: Default::default(),
        }
    }

    /// The next request, or `None` while backing off.
    pub fn poll_request(&self, now: Instant) -> Option<PollQuery> {
        match self.retry_at {
            Some(at) if at > now => None,
            _ => Some(PollQuery {
                have: self.have,
                wait: self.wait,
            }),
        }
    }

    /// When to wake up, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.retry_at.map(|at| (at, "backoff after a failed poll"))
    }

    /// Interprets one answer: a document to build and serve (not yet counted as held: see
    /// [`Follower::handle_applied`]), `None` when nothing changed, or why the answer is bad.
    pub fn handle_reply(
        &mut self,
        reply: Reply,
        now: Instant,
    ) -> Result<Option<RecordsDoc>, ReplicaError> {
        let doc = match reply {
            Reply::Unchanged => {
                self.succeeded(now);
                return Ok(None);
            }
            Reply::Other { status, body } => {
                return Err(ReplicaError::Status {
                    status,
                    message: body.trim().chars().take(200).collect(),
                });
            }
            Reply::Records(body) => serde_json::from_str::<RecordsDoc>(&body).map_err(|e| {
                ReplicaError::BadDocument {
                    reason: e.to_string(),
                }
            })?,
        };
        if let Some((instance, had)) = self.have
            && instance == doc.instance
            && doc.generation < had
        {
            return Err(ReplicaError::GenerationWentBack {
                instance,
                had,
                got: doc.generation,
            });
        }
        self.succeeded(now);
        if self.have == Some((doc.instance, doc.generation)) {
            // A gateway answering without news: nothing to rebuild.
            return Ok(None);
        }
        Ok(Some(doc))
    }

    /// `doc` (from [`Follower::handle_reply`]) is now served.
    pub fn handle_applied(&mut self, doc: &RecordsDoc, now: Instant) {
        self.have = Some((doc.instance, doc.generation));
        self.events.push_back(Event::Applied {
            generation: doc.generation,
            services: doc.services.len(),
            first: self.loaded_at.is_none(),
        });
        self.loaded_at = Some(now);
    }

    /// A poll failed: back off (doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]); the held
    /// records stay as they are.
    pub fn handle_failure(&mut self, error: ReplicaError, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32 << (self.failures - 1).min(16);
        let delay = BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX);
        self.retry_at = Some(now + delay);
        if self.reachable != Some(false) {
            self.events.push_back(Event::Lost {
                error,
                loaded: self.loaded_at.is_some(),
            });
        }
        self.reachable = Some(false);
    }

    /// The next event to log.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Ready means records were loaded at least once; they stay served while the gateway is
    /// away.
    pub fn ready(&self) -> bool {
        self.loaded_at.is_some()
    }

    /// Whether the last poll succeeded.
    pub fn reachable(&self) -> bool {
        self.reachable == Some(true)
    }

    /// The (instance, generation) served now.
    pub fn have(&self) -> Option<(u64, u64)> {
        self.have
    }

    fn succeeded(&mut self, _now: Instant) {
        self.failures = 0;
        self.retry_at = None;
        if self.reachable == Some(false) {
            self.events.push_back(Event::Restored);
        }
        self.reachable = Some(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(instance: u64, generation: u64) -> RecordsDoc {
        RecordsDoc {
            instance,
            generation,
            zones: ZoneConfig::default(),
            services: vec![ServiceRecords {
                namespace: "shop".into(),
                name: "web".into(),
                kind: causeway_dns::ServiceKind::ClusterSetIp {
                    clusterset_ips: vec![],
                },
                tiers: vec![vec!["10.1.0.5".parse().unwrap()]],
                clusters: vec![],
                ports: vec![],
            }],
        }
    }

    fn records(d: &RecordsDoc) -> Reply {
        Reply::Records(serde_json::to_string(d).unwrap())
    }

    #[test]
    fn poll_queries_round_trip_and_bad_ones_are_refused() {
        let q = PollQuery {
            have: Some((7, 3)),
            wait: Duration::from_millis(1500),
        };
        let path = q.to_path();
        let (p, query) = path.split_once('?').unwrap();
        assert_eq!(p, PATH);
        assert_eq!(PollQuery::parse(query), Ok(q));
        let first = PollQuery::parse("wait_ms=10&x=y").unwrap();
        assert_eq!(first.have, None);
        assert_eq!(first.wait, Duration::from_millis(10));
        assert_eq!(PollQuery::parse("").unwrap().wait, DEFAULT_WAIT);
        assert_eq!(
            PollQuery::parse("wait_ms=999999999").unwrap().wait,
            MAX_WAIT
        );
        for bad in ["after=x", "instance=1", "after=2", "wait_ms=-1"] {
            assert!(PollQuery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn news_is_anything_but_the_held_generation_of_the_same_instance() {
        let d = doc(7, 3);
        let ask = |have| PollQuery {
            have,
            wait: DEFAULT_WAIT,
        };
        assert!(is_news(&d, &ask(None)));
        assert!(!is_news(&d, &ask(Some((7, 3)))));
        assert!(is_news(&d, &ask(Some((7, 2)))));
        // A new gateway process (leader change): its generation 3 is not ours.
        assert!(is_news(&d, &ask(Some((8, 3)))));
    }

    #[test]
    fn follower_applies_documents_and_asks_after_what_it_holds() {
        let t0 = crate::clock::now();
        let mut f = Follower::new(DEFAULT_WAIT);
        assert!(!f.ready());
        assert_eq!(f.poll_request(t0).unwrap().have, None);
        let d = f.handle_reply(records(&doc(7, 1)), t0).unwrap().unwrap();
        // Not held until served: a build failure must not advance it.
        assert_eq!(f.poll_request(t0).unwrap().have, None);
        f.handle_applied(&d, t0);
        assert!(f.ready() && f.reachable());
        assert_eq!(f.poll_request(t0).unwrap().have, Some((7, 1)));
        assert_eq!(
            f.poll_event(),
            Some(Event::Applied {
                generation: 1,
                services: 1,
                first: true
            })
        );
        assert_eq!(f.handle_reply(Reply::Unchanged, t0), Ok(None));
        assert_eq!(f.handle_reply(records(&doc(7, 1)), t0), Ok(None));
        // A new leader starts again from generation 1 of another instance.
        assert_eq!(f.handle_reply(records(&doc(9, 1)), t0), Ok(Some(doc(9, 1))));
        assert_eq!(f.poll_event(), None);
    }

    #[test]
    fn follower_refuses_bad_replies_with_typed_errors() {
        let t0 = crate::clock::now();
        let mut f = Follower::new(DEFAULT_WAIT);
        let d = f.handle_reply(records(&doc(7, 5)), t0).unwrap().unwrap();
        f.handle_applied(&d, t0);
        assert_eq!(
            f.handle_reply(records(&doc(7, 4)), t0),
            Err(ReplicaError::GenerationWentBack {
                instance: 7,
                had: 5,
                got: 4
            })
        );
        assert!(matches!(
            f.handle_reply(Reply::Records("{\"instance\":1".into()), t0),
            Err(ReplicaError::BadDocument { .. })
        ));
        assert!(matches!(
            f.handle_reply(Reply::Records("[1,2,3]".into()), t0),
            Err(ReplicaError::BadDocument { .. })
        ));
        assert_eq!(
            f.handle_reply(
                Reply::Other {
                    status: 404,
                    body: "not found\n".into()
                },
                t0
            ),
            Err(ReplicaError::Status {
                status: 404,
                message: "not found".into()
            })
        );
        // Still holding generation 5.
        assert_eq!(f.have(), Some((7, 5)));
    }

    #[test]
    fn follower_backs_off_doubling_and_keeps_its_records() {
        let t0 = crate::clock::now();
        let mut f = Follower::new(DEFAULT_WAIT);
        let d = f.handle_reply(records(&doc(7, 1)), t0).unwrap().unwrap();
        f.handle_applied(&d, t0);
        f.poll_event();
        let down = ReplicaError::Unreachable {
            from: "http://gw:9990".into(),
            reason: "refused".into(),
        };
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            f.handle_failure(down.clone(), now);
            let (at, _why) = f.poll_timeout().unwrap();
            assert_eq!(f.poll_request(now), None, "asks again during backoff");
            delays.push((at - now).as_millis());
            now = at;
            assert!(f.poll_request(now).is_some());
        }
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // One line when lost, not one per retry; ready and holding throughout.
        assert_eq!(
            f.poll_event(),
            Some(Event::Lost {
                error: down,
                loaded: true
            })
        );
        assert_eq!(f.poll_event(), None);
        assert!(f.ready() && !f.reachable());
        assert_eq!(f.poll_request(now).unwrap().have, Some((7, 1)));
        assert_eq!(f.handle_reply(Reply::Unchanged, now), Ok(None));
        assert_eq!(f.poll_event(), Some(Event::Restored));
        assert_eq!(f.poll_timeout(), None);
    }

    #[test]
    fn admin_urls_parse() {
        let u: AdminUrl = "http://causeway-gateway-admin.causeway-system.svc:9990/"
            .parse()
            .unwrap();
        assert_eq!(
            u.authority,
            "causeway-gateway-admin.causeway-system.svc:9990"
        );
        assert_eq!(
            u.to_string(),
            "http://causeway-gateway-admin.causeway-system.svc:9990"
        );
        assert!("http://[::1]:9990".parse::<AdminUrl>().is_ok());
        for bad in [
            "gw:9990",
            "https://gw:9990",
            "http://gw",
            "http://:9990",
            "http://gw:0",
            "http://gw:9990/api",
            "http://u@gw:9990",
        ] {
            assert!(bad.parse::<AdminUrl>().is_err(), "{bad}");
        }
    }
}
