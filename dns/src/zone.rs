//! The `svc.global` zone as data: an immutable [`Snapshot`] and the pure query → [`Answer`] rule.
//!
//! Owns the DNS semantics (RFC 1034 §4.3.2 lookup, RFC 2308 negative answers, RFC 4592 §2.2.2
//! empty non-terminals). Owns no sockets and no hickory server types: `handler.rs` converts an
//! [`Answer`] into a hickory response, `server.rs` binds the sockets and swaps snapshots.
//!
//! Everything a query needs is precomputed when the snapshot is built (lowercase keys, ready
//! `Record`s grouped per name), so answering is one hash lookup and a slice.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::Error;

/// One service's addresses, already ordered best-first by the caller.
///
/// Published as `<name>.<namespace>.<zone>` with one A record per IPv4 address and one AAAA
/// record per IPv6 address, in the given order. A service with no addresses still exists as a
/// name: queries for it get NOERROR with no records (NODATA), not NXDOMAIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecords {
    /// The namespace: a single RFC 1123 label (letters, digits, inner `-`), matched
    /// case-insensitively.
    pub namespace: String,
    /// The service name: a single RFC 1123 label (letters, digits, inner `-`), matched
    /// case-insensitively.
    pub name: String,
    /// Addresses best-first; duplicates are dropped (RFC 2181 §5: an RRset holds no duplicates).
    pub addresses: Vec<IpAddr>,
}

/// An immutable view of the whole zone, built once and then only read.
///
/// Build one with [`Snapshot::new`] (or [`Snapshot::empty`]) and hand it to
/// [`crate::Handle::publish`], which stamps the SOA serial and swaps it in atomically.
#[derive(Debug, Clone)]
pub struct Snapshot {
    apex: LowerName,
    ttl: u32,
    serial: u32,
    /// The SOA for the authority section of negative answers: RFC 2308 §3 sets its TTL to
    /// min(SOA TTL, SOA MINIMUM).
    negative_soa: [Record; 1],
    /// Every name that exists in the zone, including the apex and empty non-terminals (which map
    /// to an empty node). Keys are lowercase (`LowerName`), so lookups are case-insensitive.
    nodes: HashMap<LowerName, Node>,
}

/// What the zone says about one query, borrowing the records from the [`Snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<'a> {
    /// NOERROR, authoritative, with these records in the answer section (never empty).
    Records(&'a [Record]),
    /// NOERROR, authoritative, no records: the name exists but has no data of the asked type
    /// (RFC 2308 §2.2). The SOA goes into the authority section.
    NoData { soa: &'a [Record] },
    /// NXDOMAIN, authoritative: no such name in the zone (RFC 2308 §2.1). The SOA goes into the
    /// authority section.
    NxDomain { soa: &'a [Record] },
    /// REFUSED, not authoritative: the name is outside the zone, or the query asks for a zone
    /// transfer, which this server does not offer.
    Refused,
}

impl<'a> Answer<'a> {
    /// The response code to send.
    pub fn rcode(&self) -> ResponseCode {
        match self {
            Answer::Records(_) | Answer::NoData { .. } => ResponseCode::NoError,
            Answer::NxDomain { .. } => ResponseCode::NXDomain,
            Answer::Refused => ResponseCode::Refused,
        }
    }

    /// Whether the AA bit is set: true for every answer from inside the zone.
    pub fn authoritative(&self) -> bool {
        !matches!(self, Answer::Refused)
    }

    /// The answer section.
    pub fn answers(&self) -> &'a [Record] {
        match self {
            Answer::Records(records) => records,
            _ => &[],
        }
    }

    /// The authority section.
    pub fn authority(&self) -> &'a [Record] {
        match self {
            Answer::NoData { soa } | Answer::NxDomain { soa } => soa,
            _ => &[],
        }
    }
}

/// The records at one name, grouped by type (all records of a type are contiguous).
#[derive(Debug, Clone, Default)]
struct Node {
    records: Vec<Record>,
}

/// SOA timers. Nothing transfers this zone (AXFR is refused), so refresh/retry/expire only need
/// to be sane values (RFC 1912 §2.2 ranges); MINIMUM is the negative-caching TTL (RFC 2308 §4)
/// and is set to the zone ttl so NXDOMAIN is cached no longer than a positive answer.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86400;

impl Snapshot {
    /// Builds the zone `zone` (e.g. `svc.global`) holding `services`, every record with `ttl`.
    ///
    /// Fails if the zone or a service's namespace/name is not a valid DNS name, or if two
    /// services share a name. The SOA serial is 0 until [`crate::Handle::publish`] stamps it.
    pub fn new(zone: &str, ttl: u32, services: Vec<ServiceRecords>) -> Result<Snapshot, Error> {
        let apex = parse_zone(zone)?;
        let mut nodes: HashMap<LowerName, Node> = HashMap::new();

        let ns_name = child(&apex, "ns").map_err(|reason| Error::BadZone {
            zone: zone.to_owned(),
            reason,
        })?;
        // The apex holds [SOA, NS]; `set_serial` rewrites the SOA in place.
        let apex_records = vec![
            soa_record(&apex, ttl, 0),
            Record::from_rdata(apex.clone(), ttl, RData::NS(NS(ns_name))),
        ];
        nodes.insert(
            LowerName::new(&apex),
            Node {
                records: apex_records,
            },
        );

        let apex_lower = LowerName::new(&apex);
        for service in services {
            let name = service_name(&apex, &service)?;
            let lower = LowerName::new(&name);
            let records = address_records(&name, ttl, &service.addresses);
            match nodes.entry(lower.clone()) {
                Entry::Occupied(_) => {
                    return Err(Error::DuplicateService {
                        namespace: service.namespace,
                        name: service.name,
                    });
                }
                Entry::Vacant(slot) => {
                    slot.insert(Node { records });
                }
            }
            // Every ancestor up to the apex exists (as an empty non-terminal unless it has
            // records of its own): RFC 4592 §2.2.2.
            let mut ancestor = lower.base_name();
            while ancestor != apex_lower && !ancestor.is_root() {
                nodes.entry(ancestor.clone()).or_default();
                ancestor = ancestor.base_name();
            }
        }

        let mut snapshot = Snapshot {
            apex: apex_lower,
            ttl,
            serial: 0,
            negative_soa: [soa_record(&apex, ttl, 0)],
            nodes,
        };
        snapshot.set_serial(0);
        Ok(snapshot)
    }

    /// A zone with only its apex records (SOA and NS) and no services.
    pub fn empty(zone: &str, ttl: u32) -> Result<Snapshot, Error> {
        Snapshot::new(zone, ttl, Vec::new())
    }

    /// Answers a query for `name` and `query_type` (class IN; the caller refuses other classes).
    ///
    /// RFC 1034 §4.3.2 restricted to one zone without delegations or wildcards: outside the zone
    /// → REFUSED; a name with records of the type → those records; ANY → every record at the
    /// name; an existing name (including an empty non-terminal) without them → NODATA; anything
    /// else → NXDOMAIN.
    pub fn answer(&self, name: &LowerName, query_type: RecordType) -> Answer<'_> {
        if !self.apex.zone_of(name) || matches!(query_type, RecordType::AXFR | RecordType::IXFR) {
            return Answer::Refused;
        }
        let Some(node) = self.nodes.get(name) else {
            return Answer::NxDomain {
                soa: &self.negative_soa,
            };
        };
        let records = if query_type == RecordType::ANY {
            &node.records[..]
        } else {
            node.rrset(query_type)
        };
        if records.is_empty() {
            Answer::NoData {
                soa: &self.negative_soa,
            }
        } else {
            Answer::Records(records)
        }
    }

    /// The SOA serial this snapshot answers with.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The TTL of every record in the zone, in seconds.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// Stamps the SOA serial; called by the publisher just before the swap.
    pub(crate) fn set_serial(&mut self, serial: u32) {
        let apex = Name::from(&self.apex);
        self.serial = serial;
        if let Some(apex_node) = self.nodes.get_mut(&self.apex) {
            for record in &mut apex_node.records {
                if record.record_type() == RecordType::SOA {
                    *record = soa_record(&apex, self.ttl, serial);
                }
            }
        }
        // The SOA's own TTL and its MINIMUM are both the zone ttl, so min() is the ttl; keep the
        // rule explicit so a future separate MINIMUM stays correct.
        let minimum = self.ttl;
        self.negative_soa = [soa_record(&apex, self.ttl.min(minimum), serial)];
    }
}

impl Node {
    /// The contiguous run of records of `record_type` (empty if none).
    fn rrset(&self, record_type: RecordType) -> &[Record] {
        let Some(start) = self
            .records
            .iter()
            .position(|r| r.record_type() == record_type)
        else {
            return &[];
        };
        let len = self.records[start..]
            .iter()
            .take_while(|r| r.record_type() == record_type)
            .count();
        &self.records[start..start + len]
    }
}

fn soa_record(apex: &Name, ttl: u32, serial: u32) -> Record {
    // Both names are built from a zone that already parsed with room for these labels.
    let mname = child(apex, "ns").unwrap_or_else(|_| apex.clone());
    let rname = child(apex, "hostmaster").unwrap_or_else(|_| apex.clone());
    let soa = SOA::new(
        mname,
        rname,
        serial,
        SOA_REFRESH,
        SOA_RETRY,
        SOA_EXPIRE,
        ttl,
    );
    Record::from_rdata(apex.clone(), ttl, RData::SOA(soa))
}

fn address_records(name: &Name, ttl: u32, addresses: &[IpAddr]) -> Vec<Record> {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<IpAddr> = addresses
        .iter()
        .copied()
        .filter(|a| seen.insert(*a))
        .collect();
    let v4 = unique.iter().filter_map(|a| match a {
        IpAddr::V4(v4) => Some(RData::A(A(*v4))),
        IpAddr::V6(_) => None,
    });
    let v6 = unique.iter().filter_map(|a| match a {
        IpAddr::V6(v6) => Some(RData::AAAA(AAAA(*v6))),
        IpAddr::V4(_) => None,
    });
    v4.chain(v6)
        .map(|rdata| Record::from_rdata(name.clone(), ttl, rdata))
        .collect()
}

/// Why a name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    #[error("empty name")]
    Empty,
    #[error("the root zone cannot be served")]
    Root,
    #[error("not a single RFC 1123 label (letters, digits, '-' not at either end)")]
    NotALabel,
    #[error("label longer than 63 octets")]
    LabelTooLong,
    #[error("name longer than 255 octets")]
    NameTooLong,
}

fn parse_zone(zone: &str) -> Result<Name, Error> {
    let bad = |reason| Error::BadZone {
        zone: zone.to_owned(),
        reason,
    };
    let trimmed = zone.strip_suffix('.').unwrap_or(zone);
    if zone.is_empty() {
        return Err(bad(NameProblem::Empty));
    }
    if trimmed.is_empty() {
        return Err(bad(NameProblem::Root));
    }
    for label in trimmed.split('.') {
        check_label(label).map_err(bad)?;
    }
    // Name enforces the 255-octet limit (RFC 1035 §2.3.4).
    let mut name = Name::from_ascii(trimmed).map_err(|_| bad(NameProblem::NameTooLong))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

fn service_name(apex: &Name, service: &ServiceRecords) -> Result<Name, Error> {
    let bad = |reason| Error::BadServiceName {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        reason,
    };
    check_label(&service.namespace).map_err(bad)?;
    check_label(&service.name).map_err(bad)?;
    let namespace = child(apex, &service.namespace).map_err(bad)?;
    // Owner names go out lowercase whatever the caller's spelling (they are one name).
    Ok(child(&namespace, &service.name)
        .map_err(bad)?
        .to_lowercase())
}

/// Kubernetes names are RFC 1123 §2.1 labels (letters, digits, `-` inside); holding to that
/// keeps every name printable and free of escapes (no dots: a dot would add a level to the tree).
fn check_label(label: &str) -> Result<(), NameProblem> {
    if label.is_empty() {
        return Err(NameProblem::Empty);
    }
    if label.len() > 63 {
        return Err(NameProblem::LabelTooLong);
    }
    let ldh = label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ldh || label.starts_with('-') || label.ends_with('-') {
        return Err(NameProblem::NotALabel);
    }
    Ok(())
}

fn child(parent: &Name, label: &str) -> Result<Name, NameProblem> {
    let name = Name::from_ascii(label)
        .map_err(|_| NameProblem::NotALabel)?
        .append_domain(parent)
        .map_err(|_| NameProblem::NameTooLong)?;
    Ok(name)
}

#[cfg(test)]
mod tests;
