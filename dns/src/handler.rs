//! The hickory-server adapter: turns a hickory [`Request`] into a [`Snapshot::answer`] call and the
//! [`Answer`] into a hickory response. It converts types and makes no DNS decisions of its own,
//! beyond the message-level checks RFC 1035/6891 put before any zone lookup (opcode, question
//! count, class, EDNS version), and handing out-of-zone questions to the upstream when one is
//! configured.
//!
//! Zone semantics live in `zone.rs`; sockets and lifetime in `server.rs`.

use std::borrow::Cow;
use std::iter;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, LowerQuery, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tracing::debug;

use crate::stats::QueryStats;
use crate::zone::{Answer, Snapshot};

/// The EDNS version this server speaks (RFC 6891 §6.1.3).
const EDNS_VERSION: u8 = 0;
/// Largest UDP payload we offer: the DNS Flag Day 2020 value, which avoids IP fragmentation on
/// common paths. Requests advertising less are answered within their size, never under 512.
const MAX_UDP_PAYLOAD: u16 = 1232;

/// Answers every request from whichever [`Snapshot`] is current when it arrives.
pub(crate) struct Handler {
    current: Arc<ArcSwap<Snapshot>>,
    /// Counts queries; each one's value picks the rotation within preference groups.
    queries: AtomicU64,
    upstream: Option<TokioResolver>,
    stats: Arc<QueryStats>,
}

impl Handler {
    pub(crate) fn new(
        current: Arc<ArcSwap<Snapshot>>,
        upstream: Option<TokioResolver>,
        stats: Arc<QueryStats>,
    ) -> Self {
        Self {
            current,
            queries: AtomicU64::new(0),
            upstream,
            stats,
        }
    }

    /// The rotations for the next `n` queries answered outside this handler (a batch on the
    /// fast path), from the same counter: the first is returned, the others follow it.
    pub(crate) fn next_rotations(&self, n: u64) -> u64 {
        self.queries.fetch_add(n, Ordering::Relaxed)
    }
}

/// A response's sections, borrowed from the snapshot or owned after forwarding.
struct Sections<'a> {
    answers: Cow<'a, [Record]>,
    authority: Cow<'a, [Record]>,
    additional: &'a [Record],
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = crate::clock::now();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let snapshot = self.current.load_full();
        let mut sections = Sections {
            answers: Cow::Borrowed(&[]),
            authority: Cow::Borrowed(&[]),
            additional: &[],
        };
        match check_message(request) {
            Err(rcode) => metadata.response_code = rcode,
            Ok(query) => {
                let answer = if query.query_class() == DNSClass::IN {
                    let rotation = self.queries.fetch_add(1, Ordering::Relaxed);
                    snapshot.answer(query.name(), query.query_type(), rotation)
                } else {
                    // The zones exist in class IN only (RFC 1035 §3.2.4).
                    Answer::Refused
                };
                match (&answer, &self.upstream) {
                    (Answer::OutsideZones, Some(upstream)) => {
                        let forwarded = forward(upstream, query).await;
                        metadata.response_code = forwarded.rcode;
                        metadata.recursion_available = true;
                        sections.answers = Cow::Owned(forwarded.answers);
                        sections.authority = Cow::Owned(forwarded.authority);
                    }
                    _ => {
                        metadata.response_code = answer.rcode();
                        metadata.authoritative = answer.authoritative();
                        sections.authority = Cow::Borrowed(answer.authority());
                        sections.additional = answer.additional();
                        sections.answers = match answer {
                            Answer::Records { answers, .. } => answers,
                            _ => Cow::Borrowed(&[]),
                        };
                    }
                }
            }
        }

        // RFC 6891 §7: a query with OPT gets an OPT back, carrying the upper rcode bits.
        let response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_version(EDNS_VERSION);
            edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_rcode_high(metadata.response_code.high());
            // RFC 3225 §3: the DO bit of the query is copied into the response.
            edns.set_dnssec_ok(req.flags().dnssec_ok);
            edns
        });
        let rcode = metadata.response_code.low();
        let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref()).build(
            metadata,
            sections.answers.iter(),
            sections.authority.iter(),
            iter::empty(),
            sections.additional.iter(),
        );
        let sent = response_handle.send_response(response).await;
        match request.queries.queries().first() {
            Some(query) => self.stats.record_labels(
                Name::from(query.name()).iter(),
                u16::from(query.query_type()),
                rcode,
                started.elapsed(),
            ),
            None => self
                .stats
                .record_labels(iter::empty(), 0, rcode, started.elapsed()),
        }
        match sent {
            Ok(info) => info,
            Err(error) => {
                // A client that went away is remote behaviour, not ours to alarm about.
                debug!(%error, "sending dns response failed");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_server::proto::op::Header {
                    metadata: failed,
                    counts: Default::default(),
                })
            }
        }
    }
}

/// What the upstream said about a forwarded question.
struct Forwarded {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authority: Vec<Record>,
}

/// Asks the upstream, translating its verdict: records → NOERROR with them; NXDOMAIN or NODATA
/// → that rcode with the upstream's SOA (RFC 2308 §5: negative answers are relayed with it);
/// anything else (timeout, SERVFAIL, REFUSED) → SERVFAIL (RFC 1035 §4.1.1: the name server
/// could not get an answer).
async fn forward(upstream: &TokioResolver, query: &LowerQuery) -> Forwarded {
    let name = Name::from(query.name());
    match upstream.lookup(name, query.query_type()).await {
        Ok(lookup) => Forwarded {
            rcode: ResponseCode::NoError,
            answers: lookup.answers().to_vec(),
            authority: Vec::new(),
        },
        Err(NetError::Dns(DnsError::NoRecordsFound(none))) => Forwarded {
            rcode: none.response_code,
            answers: Vec::new(),
            authority: none
                .soa
                .map(|soa| soa.into_record_of_rdata())
                .into_iter()
                .collect(),
        },
        Err(error) => {
            debug!(%error, "forwarding to the upstream failed");
            Forwarded {
                rcode: ResponseCode::ServFail,
                answers: Vec::new(),
                authority: Vec::new(),
            }
        }
    }
}

/// The checks RFC 1035 §4.1.1 and RFC 6891 §6.1.3 make before looking at the zone; on success,
/// the one question.
fn check_message(request: &Request) -> Result<&LowerQuery, ResponseCode> {
    if request.metadata.message_type != MessageType::Query {
        return Err(ResponseCode::FormErr);
    }
    if request.metadata.op_code != OpCode::Query {
        return Err(ResponseCode::NotImp);
    }
    if let Some(edns) = &request.edns
        && edns.version() > EDNS_VERSION
    {
        return Err(ResponseCode::BADVERS);
    }
    // Exactly one question: RFC 9619 makes QDCOUNT != 1 a FORMERR for QUERY.
    match request.queries.queries() {
        [query] => Ok(query),
        _ => Err(ResponseCode::FormErr),
    }
}
