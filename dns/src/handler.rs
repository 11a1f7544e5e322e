//! The hickory-server adapter: turns a hickory [`Request`] into a [`Snapshot::answer`] call and the
//! [`Answer`] into a hickory response. It converts types and makes no DNS decisions of its own,
//! beyond the message-level checks RFC 1035/6891 put before any zone lookup (opcode, question
//! count, class, EDNS version).
//!
//! Zone semantics live in `zone.rs`; sockets and lifetime in `server.rs`.

use std::iter;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, LowerQuery, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::DNSClass;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tracing::debug;

use crate::zone::{Answer, Snapshot};

/// The EDNS version this server speaks (RFC 6891 §6.1.3).
const EDNS_VERSION: u8 = 0;
/// Largest UDP payload we offer: the DNS Flag Day 2020 value, which avoids IP fragmentation on
/// common paths. Requests advertising less are answered within their size, never under 512.
const MAX_UDP_PAYLOAD: u16 = 1232;

/// Answers every request from whichever [`Snapshot`] is current when it arrives.
pub(crate) struct Handler {
    current: Arc<ArcSwap<Snapshot>>,
}

impl Handler {
    pub(crate) fn new(current: Arc<ArcSwap<Snapshot>>) -> Self {
        Self { current }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let snapshot = self.current.load_full();
        let answer = match check_message(request) {
            Err(rcode) => {
                metadata.response_code = rcode;
                None
            }
            Ok(query) => {
                let answer = if query.query_class() == DNSClass::IN {
                    snapshot.answer(query.name(), query.query_type())
                } else {
                    // The zone exists in class IN only (RFC 1035 §3.2.4).
                    Answer::Refused
                };
                metadata.response_code = answer.rcode();
                metadata.authoritative = answer.authoritative();
                Some(answer)
            }
        };

        // RFC 6891 §7: a query with OPT gets an OPT back, carrying the upper rcode bits.
        let response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_version(EDNS_VERSION);
            edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_rcode_high(metadata.response_code.high());
            edns
        });
        let answers = answer.map_or(&[][..], |a| a.answers());
        let authority = answer.map_or(&[][..], |a| a.authority());
        let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref()).build(
            metadata,
            answers.iter(),
            authority.iter(),
            iter::empty(),
            iter::empty(),
        );
        match response_handle.send_response(response).await {
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
