//! Fitting an encoded response into the UDP payload its asker allows (RFC 1035 §4.2.1: 512
//! octets without EDNS; RFC 6891 §6.2.5: the advertised size with it), the way a strict
//! resolver can read: whole records only, nothing after the last record the header counts, the
//! OPT record kept (RFC 6891 §7), and TC set when the answer or authority section lost a record
//! (RFC 2181 §9; additional records are a hint, and dropping them alone does not set TC).
//!
//! hickory's own truncation rolls its encoder back without shortening the buffer, so a record
//! cut in half stays behind the last counted one, and the OPT record is the first thing to be
//! dropped; hence this pass over the complete message instead. Pure: bytes in, bytes out. The
//! slow path's UDP responder (`server.rs`) calls it; the fast path (`zone/wire.rs`) answers
//! only what fits and leaves the rest to that path.

/// Why a message could not be fitted: it is not a well-formed DNS message, or its header and
/// question alone do not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unfit {
    #[error("response is not a well-formed dns message")]
    Malformed,
    #[error("response header and question exceed {limit} octets")]
    QuestionTooLong { limit: usize },
}

const HEADER: usize = 12;
const TYPE_OPT: u16 = 41;
/// TC, in the third header octet.
const TC: u8 = 0x02;

/// Shortens `message` (a complete response, as encoded without a size limit) to at most
/// `limit` octets if it is longer; a message that fits is left as it is.
pub(crate) fn fit(message: &mut Vec<u8>, limit: usize) -> Result<(), Unfit> {
    if message.len() <= limit {
        return Ok(());
    }
    let layout = Layout::parse(message).ok_or(Unfit::Malformed)?;
    let opt = layout.opt.map_or(&[][..], |(from, to)| &message[from..to]);
    let room = limit
        .checked_sub(opt.len())
        .filter(|&room| room >= layout.question_end)
        .ok_or(Unfit::QuestionTooLong { limit })?;
    let mut counts = [0u16; 3];
    let mut end = layout.question_end;
    let mut complete = [true; 3];
    for record in &layout.records {
        if record.end > room {
            complete[record.section] = false;
            // Sections are in order: whatever follows is dropped too.
            for later in &mut complete[record.section..] {
                *later = false;
            }
            break;
        }
        counts[record.section] += 1;
        end = record.end;
    }
    let opt = opt.to_vec();
    message.truncate(end);
    message.extend_from_slice(&opt);
    let additional = counts[2] + u16::from(layout.opt.is_some());
    for (at, count) in [(6, counts[0]), (8, counts[1]), (10, additional)] {
        message[at..at + 2].copy_from_slice(&count.to_be_bytes());
    }
    if !complete[0] || !complete[1] {
        message[2] |= TC;
    }
    Ok(())
}

/// Where a message's parts are.
struct Layout {
    question_end: usize,
    /// Every record but the OPT: its section (0 answer, 1 authority, 2 additional) and where
    /// it ends.
    records: Vec<Record>,
    /// The OPT record's span, if the message has one.
    opt: Option<(usize, usize)>,
}

struct Record {
    section: usize,
    end: usize,
}

impl Layout {
    fn parse(message: &[u8]) -> Option<Layout> {
        let header = message.get(..HEADER)?;
        let count = |at: usize| usize::from(u16::from_be_bytes([header[at], header[at + 1]]));
        let mut at = HEADER;
        for _ in 0..count(4) {
            at = skip_name(message, at)? + 4;
        }
        if at > message.len() {
            return None;
        }
        let question_end = at;
        let mut records = Vec::new();
        let mut opt = None;
        for (section, n) in [count(6), count(8), count(10)].into_iter().enumerate() {
            for _ in 0..n {
                let start = at;
                let fixed = skip_name(message, at)?;
                let head = message.get(fixed..fixed + 10)?;
                let record_type = u16::from_be_bytes([head[0], head[1]]);
                let rdata = usize::from(u16::from_be_bytes([head[8], head[9]]));
                at = fixed + 10 + rdata;
                if at > message.len() {
                    return None;
                }
                if section == 2 && record_type == TYPE_OPT && opt.is_none() {
                    opt = Some((start, at));
                } else {
                    records.push(Record { section, end: at });
                }
            }
        }
        // The OPT record is moved to the end; it must not sit among records kept around it.
        if let Some((_, end)) = opt
            && records.iter().any(|r| r.end > end)
        {
            return None;
        }
        Some(Layout {
            question_end,
            records,
            opt,
        })
    }
}

/// Where the name starting at `at` ends: after its root label, or after the pointer that ends
/// it (RFC 1035 §4.1.4).
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + usize::from(len),
            0xc0 => return message.get(at + 1).map(|_| at + 2),
            // 0x40 and 0x80 are reserved label types.
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::str::FromStr;

    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, Record, RecordType, rdata};
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

    use super::*;

    /// A response with `answers` A records, `extra` additional A records, and an OPT if
    /// `edns`.
    fn response(answers: u8, extra: u8, edns: bool) -> Vec<u8> {
        let name = Name::from_str("web.shop.svc.global.").expect("name");
        let mut message = Message::new(7, MessageType::Response, OpCode::Query);
        message.add_query(Query::query(name.clone(), RecordType::A));
        for i in 0..answers {
            let address = rdata::A(Ipv4Addr::new(10, 0, 0, i));
            message.add_answer(Record::from_rdata(name.clone(), 5, RData::A(address)));
        }
        let other = Name::from_str("other.shop.svc.global.").expect("name");
        for i in 0..extra {
            let address = rdata::A(Ipv4Addr::new(10, 1, 0, i));
            message.add_additional(Record::from_rdata(other.clone(), 5, RData::A(address)));
        }
        if edns {
            let mut opt = Edns::new();
            opt.set_max_payload(1232);
            opt.set_dnssec_ok(true);
            message.set_edns(opt);
        }
        message.to_vec().expect("encode")
    }

    /// Decodes `bytes`, insisting that nothing follows the last counted record.
    fn strict(bytes: &[u8]) -> Message {
        let mut decoder = BinDecoder::new(bytes);
        let message = Message::read(&mut decoder).expect("decodable");
        assert_eq!(decoder.len(), 0, "trailing octets");
        message
    }

    #[test]
    fn a_message_that_fits_is_untouched() {
        let original = response(3, 2, true);
        let mut bytes = original.clone();
        fit(&mut bytes, 512).expect("fits");
        assert_eq!(bytes, original);
    }

    #[test]
    fn truncation_keeps_whole_answers_and_the_opt_and_sets_tc() {
        for edns in [false, true] {
            for limit in [100, 200, 333, 512] {
                let mut bytes = response(60, 0, edns);
                fit(&mut bytes, limit).expect("fits");
                assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
                let message = strict(&bytes);
                assert!(message.metadata.truncation, "TC at {limit}");
                assert!(message.answers.len() < 60);
                // Nothing more would have fitted: one A record is 16 octets here.
                assert!(
                    bytes.len() + 16 > limit,
                    "{} octets at {limit}",
                    bytes.len()
                );
                let opt = message.edns.as_ref();
                assert_eq!(opt.is_some(), edns, "OPT kept at {limit}");
                if let Some(opt) = opt {
                    assert!(opt.flags().dnssec_ok);
                }
            }
        }
    }

    #[test]
    fn dropping_only_additional_records_does_not_set_tc() {
        let mut bytes = response(4, 60, true);
        fit(&mut bytes, 512).expect("fits");
        let message = strict(&bytes);
        assert!(!message.metadata.truncation);
        assert_eq!(message.answers.len(), 4);
        assert!(message.additionals.len() < 60);
        assert!(message.edns.is_some());
    }

    #[test]
    fn garbage_and_impossible_limits_are_refused() {
        // A reserved label type (0x40) in the question name.
        let mut garbage = vec![0u8, 1, 0x81, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0x45];
        garbage.extend_from_slice(&[0; 20]);
        assert_eq!(fit(&mut garbage, 12), Err(Unfit::Malformed));
        let mut bytes = response(10, 0, true);
        assert_eq!(
            fit(&mut bytes, 40),
            Err(Unfit::QuestionTooLong { limit: 40 })
        );
    }
}
