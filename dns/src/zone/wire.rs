//! The fast path: every answer of a [`Snapshot`](super::Snapshot) precomputed in wire format,
//! keyed by the question, so that answering a plain query is a parse of the question, a hash
//! lookup of the service tree and a binary search in it, and copying bytes (the id, RD bit and
//! question come from the query). A service's trees are written by `encode.rs`; the base, and
//! services that encoder declines, from hickory records here.
//!
//! Pure, like the rest of `zone`. It answers only what it can answer exactly as the slow path
//! (`Snapshot::answer` through hickory) would: one question, class IN, opcode QUERY, no
//! compression in the question, no EDNS options beyond the buffer size, an answer that fits
//! the client's buffer. Anything else returns `false` and goes to the slow path, which also
//! owns truncation, REFUSED/forwarding outside the zones, ANY, and zone transfers.
//!
//! Answer records whose owner is the question name point at it (offset 12, RFC 1035 §4.1.4),
//! so owner names come back in the asker's spelling, as the question does; other names are
//! written in full. Rotation is precomputed too: one body per rotation of the preference
//! groups, picked by the query counter.

use std::collections::HashMap;
use std::hash::Hasher;

use hickory_proto::rr::{LowerName, Name, Record};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use super::{Node, RrSet};

/// A pointer to offset 12, where the question name starts.
pub(crate) const QNAME_POINTER: [u8; 2] = [0xc0, 0x0c];
/// The header is 12 octets; the question's fixed part (type, class) 4.
const HEADER: usize = 12;
/// Rotations precomputed per RRset at most; larger groups cycle through this many orders
/// (each address still leads in turn when the group is no larger).
const MAX_VARIANTS: usize = 16;
/// The EDNS payload we offer, as the slow path does (`handler.rs`).
const MAX_UDP_PAYLOAD: u16 = 1232;
const RCODE_NOERROR: u8 = 0;
/// Room for a service id (`namespace/name`, two labels of at most 63 octets).
pub(crate) const MAX_SERVICE_ID: usize = 128;
const RCODE_NXDOMAIN: u8 = 3;
/// The DO bit in the first octet of an OPT record's flags (RFC 3225 §3).
const DNSSEC_OK: u8 = 0x80;

/// Precomputed answers of a set of names (one service tree, or the base): the names sorted by
/// their lowercase wire form for a binary search, each with its RRsets and one body per
/// rotation, every byte in one buffer. Four allocations however many names and answers.
#[derive(Debug, Clone, Default)]
pub(crate) struct WireTree {
    /// The names' keys and the bodies, back to back.
    bytes: Box<[u8]>,
    /// Sorted by key.
    names: Box<[NameEntry]>,
    rrsets: Box<[RrsetEntry]>,
    bodies: Box<[BodyEntry]>,
}

/// One name: its key in `bytes` and its RRsets.
#[derive(Debug, Clone, Copy)]
struct NameEntry {
    key: u32,
    key_len: u8,
    /// The apex the name belongs to (index into `Wire::apexes`).
    apex: u8,
    rrset_count: u16,
    /// The first of its RRsets in `rrsets`.
    rrsets: u32,
}

/// One RRset: its type and one body per rotation (none if a record could not be encoded: the
/// slow path answers).
#[derive(Debug, Clone, Copy)]
struct RrsetEntry {
    record_type: u16,
    body_count: u16,
    /// The first of its bodies in `bodies`.
    bodies: u32,
}

/// One precomputed body of answers (no authority section) in `bytes`.
#[derive(Debug, Clone, Copy)]
struct BodyEntry {
    at: u32,
    len: u32,
    answers: u16,
    additional: u16,
}

/// One name's answers in a [`WireTree`].
#[derive(Clone, Copy)]
pub(crate) struct WireNode<'a> {
    tree: &'a WireTree,
    entry: &'a NameEntry,
}

impl<'a> WireNode<'a> {
    fn apex(&self) -> usize {
        usize::from(self.entry.apex)
    }

    /// The bodies of the RRset of `record_type`, if the name has one.
    fn bodies(&self, record_type: u16) -> Option<&'a [BodyEntry]> {
        let first = self.entry.rrsets as usize;
        let rrsets = self
            .tree
            .rrsets
            .get(first..first + usize::from(self.entry.rrset_count))?;
        let rrset = rrsets.iter().find(|r| r.record_type == record_type)?;
        let first = rrset.bodies as usize;
        self.tree
            .bodies
            .get(first..first + usize::from(rrset.body_count))
    }

    fn body(&self, body: &BodyEntry) -> BodyRef<'a> {
        let at = body.at as usize;
        BodyRef {
            answers: body.answers,
            authority: 0,
            additional: body.additional,
            bytes: &self.tree.bytes[at..at + body.len as usize],
        }
    }
}

impl WireTree {
    /// The answers at a lowercase wire name.
    pub(crate) fn get(&self, key: &[u8]) -> Option<WireNode<'_>> {
        let at = self
            .names
            .binary_search_by(|entry| self.key(entry).cmp(key))
            .ok()?;
        Some(WireNode {
            tree: self,
            entry: &self.names[at],
        })
    }

    /// How many names the tree holds.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    fn key(&self, entry: &NameEntry) -> &[u8] {
        let at = entry.key as usize;
        &self.bytes[at..at + usize::from(entry.key_len)]
    }

    /// Every name with its apex and, per RRset, its type and bodies (answer count, additional
    /// count, bytes), in key order: for comparing two trees' answers.
    #[cfg(test)]
    pub(crate) fn dump(&self) -> Vec<DumpedName> {
        self.names
            .iter()
            .map(|entry| {
                let node = WireNode { tree: self, entry };
                let first = entry.rrsets as usize;
                let rrsets = self.rrsets[first..first + usize::from(entry.rrset_count)]
                    .iter()
                    .map(|rrset| {
                        let bodies = node.bodies(rrset.record_type).unwrap_or_default();
                        let bodies = bodies
                            .iter()
                            .map(|b| {
                                let body = node.body(b);
                                (body.answers, body.additional, body.bytes.to_vec())
                            })
                            .collect();
                        (rrset.record_type, bodies)
                    })
                    .collect();
                (self.key(entry).to_vec(), node.apex(), rrsets)
            })
            .collect()
    }
}

/// A name as [`WireTree::dump`] shows it: key, apex, and per RRset its type and bodies.
#[cfg(test)]
pub(crate) type DumpedName = (Vec<u8>, usize, Vec<(u16, Vec<(u16, u16, Vec<u8>)>)>);

/// Builds a [`WireTree`] name by name: [`TreeBuilder::name`], then for each of its RRsets
/// [`TreeBuilder::rrset`] and its bodies. Names must be distinct.
#[derive(Debug, Default)]
pub(crate) struct TreeBuilder {
    bytes: Vec<u8>,
    names: Vec<NameEntry>,
    rrsets: Vec<RrsetEntry>,
    bodies: Vec<BodyEntry>,
}

/// An offset into a tree's buffers: a tree holds far less than 4 GiB of answers, and a body
/// that would go past is dropped (see [`TreeBuilder::body`]).
fn offset(at: usize) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX)
}

impl TreeBuilder {
    pub(crate) fn with_capacity(bytes: usize, names: usize) -> TreeBuilder {
        TreeBuilder {
            bytes: Vec::with_capacity(bytes),
            names: Vec::with_capacity(names),
            rrsets: Vec::with_capacity(names),
            bodies: Vec::with_capacity(names),
        }
    }

    /// Starts the name `key` (a lowercase wire name, at most 255 octets), belonging to apex
    /// number `apex`.
    pub(crate) fn name(&mut self, key: &[u8], apex: usize) {
        self.names.push(NameEntry {
            key: offset(self.bytes.len()),
            key_len: u8::try_from(key.len()).unwrap_or(u8::MAX),
            apex: u8::try_from(apex).unwrap_or(u8::MAX),
            rrset_count: 0,
            rrsets: offset(self.rrsets.len()),
        });
        self.bytes.extend_from_slice(key);
    }

    /// Whether the name `key` was started already.
    pub(crate) fn has_name(&self, key: &[u8]) -> bool {
        self.names.iter().any(|entry| {
            let at = entry.key as usize;
            self.bytes[at..at + usize::from(entry.key_len)] == *key
        })
    }

    /// Starts an RRset of `record_type` at the last name started.
    pub(crate) fn rrset(&mut self, record_type: u16) {
        if let Some(name) = self.names.last_mut() {
            name.rrset_count += 1;
        }
        self.rrsets.push(RrsetEntry {
            record_type,
            body_count: 0,
            bodies: offset(self.bodies.len()),
        });
    }

    /// Adds a body to the last RRset started: `write` appends its bytes (everything after
    /// the question). A body that would take the tree past 4 GiB drops the whole RRset's
    /// bodies, which leaves it to the slow path.
    pub(crate) fn body(&mut self, answers: u16, additional: u16, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.bytes.len();
        write(&mut self.bytes);
        let Some(rrset) = self.rrsets.last_mut() else {
            self.bytes.truncate(at);
            return;
        };
        if u32::try_from(self.bytes.len()).is_err() {
            self.bytes.truncate(at);
            self.bodies.truncate(rrset.bodies as usize);
            rrset.body_count = 0;
            rrset.bodies = u32::MAX;
            return;
        }
        if rrset.bodies == u32::MAX {
            // An earlier body of this RRset did not fit: it stays without bodies.
            self.bytes.truncate(at);
            return;
        }
        rrset.body_count += 1;
        self.bodies.push(BodyEntry {
            at: offset(at),
            len: offset(self.bytes.len() - at),
            answers,
            additional,
        });
    }

    pub(crate) fn finish(self) -> WireTree {
        let TreeBuilder {
            bytes,
            mut names,
            rrsets,
            bodies,
        } = self;
        let key = |entry: &NameEntry| {
            let at = entry.key as usize;
            &bytes[at..at + usize::from(entry.key_len)]
        };
        names.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        WireTree {
            bytes: bytes.into_boxed_slice(),
            names: names.into_boxed_slice(),
            rrsets: rrsets.into_boxed_slice(),
            bodies: bodies.into_boxed_slice(),
        }
    }
}

/// What the fast path needs beside the names: the negative answers and where service trees
/// hang.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wire {
    /// Each apex (lowercase wire format) and the authority section of its negative answers
    /// (`None` if it could not be encoded: the slow path answers).
    apexes: Vec<(Box<[u8]>, Option<Body>)>,
    /// The service parents (`<zone>`, `svc.<clusterset zone>`) in lowercase wire format:
    /// a name two or more labels under one is in the tree of the service those two labels
    /// name.
    parents: Vec<Box<[u8]>>,
}

/// Everything after the question: counts and the record bytes.
#[derive(Debug, Clone, Default)]
struct Body {
    answers: u16,
    authority: u16,
    additional: u16,
    bytes: Box<[u8]>,
}

/// A [`Body`] borrowed from where it is stored.
#[derive(Clone, Copy)]
struct BodyRef<'a> {
    answers: u16,
    authority: u16,
    additional: u16,
    bytes: &'a [u8],
}

impl Body {
    fn as_ref(&self) -> BodyRef<'_> {
        BodyRef {
            answers: self.answers,
            authority: self.authority,
            additional: self.additional,
            bytes: &self.bytes,
        }
    }
}

/// Precomputes every answer of `nodes` with the records' own encoding, all belonging to apex
/// number `apex`, or to the apex that holds each when `apex` is `None` (the base).
pub(crate) fn tree(
    apexes: &[(LowerName, [Record; 1])],
    nodes: &HashMap<LowerName, Node>,
    apex: Option<usize>,
) -> WireTree {
    let mut builder = TreeBuilder::with_capacity(nodes.len() * 64, nodes.len());
    for (name, node) in nodes {
        let Some(apex) = apex.or_else(|| apex_of(apexes, name)) else {
            continue;
        };
        builder.name(&name_key(name), apex);
        for rrset in &node.rrsets {
            builder.rrset(u16::from(rrset.record_type));
            for body in rrset_bodies(rrset).unwrap_or_default() {
                builder.body(body.answers, body.additional, |bytes| {
                    bytes.extend_from_slice(&body.bytes);
                });
            }
        }
    }
    builder.finish()
}

impl Wire {
    pub(crate) fn new(parents: &[LowerName]) -> Wire {
        Wire {
            apexes: Vec::new(),
            parents: parents.iter().map(name_key).collect(),
        }
    }

    /// Recomputes the negative answers, after the serial changed.
    pub(crate) fn stamp(&mut self, apexes: &[(LowerName, [Record; 1])]) {
        self.apexes = apexes
            .iter()
            .map(|(apex, soa)| (name_key(apex), body(&[], soa, &[])))
            .collect();
    }

    /// The service whose tree holds a lowercase wire name: the index of the service parent
    /// it is under and the service's id (lowercase `namespace/name`, as the snapshot keys its
    /// services), written into `id`; `None` for a name outside every tree (the base's).
    pub(crate) fn service_of<'i>(
        &self,
        key: &[u8],
        id: &'i mut [u8; MAX_SERVICE_ID],
    ) -> Option<(usize, &'i str)> {
        // Label starts, at most 128 of them in 255 octets.
        let mut starts = [0u8; 128];
        let mut labels = 0;
        let mut at = 0;
        while let Some(&len) = key.get(at) {
            if len == 0 {
                break;
            }
            *starts.get_mut(labels)? = u8::try_from(at).ok()?;
            labels += 1;
            at += usize::from(len) + 1;
        }
        for (index, parent) in self.parents.iter().enumerate() {
            let Some(from) = key.len().checked_sub(parent.len()) else {
                continue;
            };
            if key[from..] != **parent {
                continue;
            }
            // `from` must start a label, with two labels before it.
            let Some(at) = starts[..labels]
                .iter()
                .position(|&s| usize::from(s) == from)
            else {
                continue;
            };
            if at < 2 {
                continue;
            }
            let label = |i: usize| {
                let start = usize::from(starts[i]);
                key.get(start + 1..start + 1 + usize::from(key[start]))
            };
            let (service, namespace) = (label(at - 2)?, label(at - 1)?);
            let len = namespace.len() + 1 + service.len();
            let out = id.get_mut(..len)?;
            out[..namespace.len()].copy_from_slice(namespace);
            out[namespace.len()] = b'/';
            out[namespace.len() + 1..].copy_from_slice(service);
            return Some((index, std::str::from_utf8(out).ok()?));
        }
        None
    }

    /// Writes the response to `query` into `out` and returns true, or returns false when the
    /// slow path must answer (see the module docs). `lookup` finds a lowercase wire name's
    /// answers; `rotation` picks the order within preference groups.
    pub(crate) fn answer<'a>(
        &self,
        lookup: impl Fn(&[u8]) -> Option<WireNode<'a>>,
        query: &[u8],
        rotation: u64,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(question) = Question::parse(query) else {
            return false;
        };
        let key = &question.key[..question.key_len];
        let (rcode, body) = match lookup(key) {
            Some(node) => match node.bodies(question.qtype) {
                Some(bodies) => {
                    let n = u64::try_from(bodies.len()).unwrap_or(0);
                    let Some(at) = rotation.checked_rem(n) else {
                        return false;
                    };
                    let at = usize::try_from(at).unwrap_or(0);
                    (RCODE_NOERROR, bodies.get(at).map(|b| node.body(b)))
                }
                None => (
                    RCODE_NOERROR,
                    self.apexes[node.apex()].1.as_ref().map(Body::as_ref),
                ),
            },
            None => match self.apex_containing(key) {
                Some(apex) => (
                    RCODE_NXDOMAIN,
                    self.apexes[apex].1.as_ref().map(Body::as_ref),
                ),
                None => return false,
            },
        };
        let Some(body) = body else {
            return false;
        };
        let limit = match question.edns_payload {
            Some(payload) => usize::from(payload.clamp(512, MAX_UDP_PAYLOAD)),
            None => 512,
        };
        let edns_len = if question.edns_payload.is_some() {
            11
        } else {
            0
        };
        if question.end + body.bytes.len() + edns_len > limit {
            return false;
        }
        out.clear();
        out.extend_from_slice(&query[..question.end]);
        // QR, opcode QUERY, AA, not TC, the asker's RD; no RA, Z, AD or CD; the rcode.
        out[2] = 0x80 | 0x04 | (query[2] & 0x01);
        out[3] = rcode;
        let additional = body.additional + u16::from(question.edns_payload.is_some());
        out[6..8].copy_from_slice(&body.answers.to_be_bytes());
        out[8..10].copy_from_slice(&body.authority.to_be_bytes());
        out[10..12].copy_from_slice(&additional.to_be_bytes());
        out.extend_from_slice(body.bytes);
        if let Some(payload) = question.edns_payload {
            // OPT (RFC 6891 §6.1.2): root owner, our payload, extended rcode 0, version 0, the
            // query's DO bit (RFC 3225 §3) and no other flag, no options.
            let payload = payload.clamp(512, MAX_UDP_PAYLOAD).to_be_bytes();
            out.extend_from_slice(&[
                0,
                0,
                41,
                payload[0],
                payload[1],
                0,
                0,
                question.edns_flags & DNSSEC_OK,
                0,
                0,
                0,
            ]);
        }
        true
    }

    /// The apex whose zone holds `key` (a lowercase wire name), checking label boundaries.
    fn apex_containing(&self, key: &[u8]) -> Option<usize> {
        let mut at = 0;
        loop {
            if let Some(apex) = self.apexes.iter().position(|(apex, _)| **apex == key[at..]) {
                return Some(apex);
            }
            let len = usize::from(*key.get(at)?);
            if len == 0 {
                return None;
            }
            at += len + 1;
        }
    }
}

/// FxHash (rustc's hasher): a multiply and a rotate per 8 octets, several times cheaper than
/// the default SipHash on a 20-octet name, which every fast-path query hashes once. It is not
/// keyed, so crafted keys could collide; the stored keys are the zone's own names, and a query
/// only looks up (it inserts nothing), so a hostile asker cannot grow a collision chain.
#[derive(Default)]
pub(crate) struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(SEED);
        }
        for &byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(SEED);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The parts of a fast-path query.
struct Question {
    /// Lowercase wire-format question name.
    key: [u8; 255],
    key_len: usize,
    qtype: u16,
    /// Where the question ends (the response copies everything before).
    end: usize,
    edns_payload: Option<u16>,
    /// The first octet of the OPT's flags (DO is its top bit); 0 without EDNS.
    edns_flags: u8,
}

impl Question {
    /// Parses a query the fast path can answer, or `None`.
    fn parse(query: &[u8]) -> Option<Question> {
        let header = query.get(..HEADER)?;
        let flags = header[2];
        let (qr, opcode, tc) = (flags & 0x80, (flags >> 3) & 0x0f, flags & 0x02);
        let count = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
        if qr != 0 || opcode != 0 || tc != 0 || count(4) != 1 || count(6) != 0 || count(8) != 0 {
            return None;
        }
        let mut key = [0u8; 255];
        let mut key_len = 0;
        let mut at = HEADER;
        loop {
            let len = usize::from(*query.get(at)?);
            // A pointer (0xc0) or a reserved label type: the slow path decides.
            if len > 63 || key_len + len + 1 > key.len() {
                return None;
            }
            let label = query.get(at..at + len + 1)?;
            for (slot, byte) in key[key_len..key_len + len + 1].iter_mut().zip(label) {
                *slot = byte.to_ascii_lowercase();
            }
            key_len += len + 1;
            at += len + 1;
            if len == 0 {
                break;
            }
        }
        let fixed = query.get(at..at + 4)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
        // IN only; ANY, AXFR, IXFR, OPT and other meta types go the slow way.
        if qclass != 1 || qtype == 0 || qtype == 41 || (128..=255).contains(&qtype) {
            return None;
        }
        let end = at + 4;
        let (edns_payload, edns_flags) = match count(10) {
            0 if query.len() == end => (None, 0),
            // An OPT with no options, version 0, root owner, and nothing after it.
            1 => match query.get(end..)? {
                [0, 0, 41, p0, p1, _rcode, 0, flags, _, 0, 0] => {
                    (Some(u16::from_be_bytes([*p0, *p1])), *flags)
                }
                _ => return None,
            },
            _ => return None,
        };
        Some(Question {
            key,
            key_len,
            qtype,
            end,
            edns_payload,
            edns_flags,
        })
    }
}

fn apex_of(apexes: &[(LowerName, [Record; 1])], name: &LowerName) -> Option<usize> {
    apexes
        .iter()
        .enumerate()
        .filter(|(_, (apex, _))| apex.zone_of(name))
        .max_by_key(|(_, (apex, _))| apex.num_labels())
        .map(|(at, _)| at)
}

/// One body per rotation of `rrset`, each record encoded once and the bodies assembled from
/// the pieces in each rotation's order; `None` if a record does not encode.
fn rrset_bodies(rrset: &RrSet) -> Option<Vec<Body>> {
    // Answers: the owner is the question name, written as a pointer to it.
    let answers: Vec<Vec<u8>> = rrset
        .records
        .iter()
        .map(|record| {
            let encoded = encode(record)?;
            let mut bytes = QNAME_POINTER.to_vec();
            bytes.extend_from_slice(encoded.get(owner_len(&record.name)..)?);
            Some(bytes)
        })
        .collect::<Option<_>>()?;
    let mut additional = Vec::new();
    for record in &rrset.additional {
        additional.extend_from_slice(&encode(record)?);
    }
    let additional_count = u16::try_from(rrset.additional.len()).ok()?;
    (0..variants(&rrset.groups))
        .map(|r| {
            let order = rrset.order(r as u64);
            let len = order.iter().map(|&i| answers[i].len()).sum::<usize>() + additional.len();
            let mut bytes = Vec::with_capacity(len);
            for &i in &order {
                bytes.extend_from_slice(&answers[i]);
            }
            bytes.extend_from_slice(&additional);
            Some(Body {
                answers: u16::try_from(order.len()).ok()?,
                authority: 0,
                additional: additional_count,
                bytes: bytes.into_boxed_slice(),
            })
        })
        .collect()
}

/// How many rotations give every order a query can see: the least common multiple of the
/// group lengths, capped.
pub(crate) fn variants(groups: &[usize]) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    groups
        .iter()
        .fold(1usize, |lcm, &len| {
            let len = len.max(1);
            (lcm / gcd(lcm, len)).saturating_mul(len).min(MAX_VARIANTS)
        })
        .max(1)
}

/// The records after the question: `answers` with their owner as a pointer to the question,
/// then `authority` and `additional` with owners in full. `None` if a record does not encode.
fn body(answers: &[Record], authority: &[Record], additional: &[Record]) -> Option<Body> {
    let mut bytes = Vec::new();
    for record in answers {
        let encoded = encode(record)?;
        bytes.extend_from_slice(&QNAME_POINTER);
        bytes.extend_from_slice(encoded.get(owner_len(&record.name)..)?);
    }
    for record in authority.iter().chain(additional) {
        bytes.extend_from_slice(&encode(record)?);
    }
    let count = |records: &[Record]| u16::try_from(records.len()).ok();
    Some(Body {
        answers: count(answers)?,
        authority: count(authority)?,
        additional: count(additional)?,
        bytes: bytes.into_boxed_slice(),
    })
}

/// One record, uncompressed (names inside RDATA too: the bytes move to another message).
fn encode(record: &Record) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    record.emit(&mut encoder).ok()?;
    Some(bytes)
}

/// The wire length of an uncompressed name: each label plus its length octet, plus the root.
fn owner_len(name: &Name) -> usize {
    name.iter().map(|label| label.len() + 1).sum::<usize>() + 1
}

/// The lowercase wire form of a name, as `Question::parse` builds its key: each label with its
/// length octet, then the root.
pub(crate) fn name_key(name: &LowerName) -> Box<[u8]> {
    let name = Name::from(name);
    let mut bytes = Vec::with_capacity(owner_len(&name));
    for label in name.iter() {
        // Labels are at most 63 octets (Name enforces it), so the length fits.
        bytes.push(u8::try_from(label.len()).unwrap_or(63));
        bytes.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    bytes.push(0);
    bytes.into_boxed_slice()
}
