//! The served zones as data: an immutable [`Snapshot`] and the pure query → [`Answer`] rule.
//!
//! Owns the DNS semantics (RFC 1034 §4.3.2 lookup, RFC 2308 negative answers, RFC 4592 §2.2.2
//! empty non-terminals, RFC 2782 SRV with additional addresses, RFC 8482 minimal ANY) and the
//! per-query rotation within the preference groups the caller hands in. Owns no sockets and no
//! hickory server types: `handler.rs` converts an [`Answer`] into a hickory response,
//! `server.rs` binds the sockets and swaps snapshots. Which names exist and what they hold is
//! built in `zone/build.rs`.
//!
//! The fast path's answers are precomputed in wire format when the snapshot is built
//! (`zone/wire.rs`, written straight from the services by `zone/encode.rs`). The slow path's
//! hickory `Record`s (lowercase keys, grouped per name and type) are built per service tree
//! when a query first needs them and kept with the tree; answering is then one hash lookup and
//! a slice, plus a rotated copy when a preference group holds more than one address.

mod build;
mod encode;
mod sharded;
mod wire;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, Record, RecordType};

use crate::Error;

/// The MCS DNS specification version served as `dns-version.<clusterset zone>` TXT
/// (KEP-1645 `specification.md`, schema version 1.0.0).
pub const MCS_DNS_VERSION: &str = "1.0.0";

/// What the snapshot serves: the zones, the TTL and the answer size cap.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ZoneConfig {
    /// causeway's own zone apex, e.g. `svc.global` (a trailing dot is accepted). Services are
    /// `S.N.<zone>`, cluster-pinned `C.S.N.<zone>`, endpoints `H.C.S.N.<zone>`.
    pub zone: String,
    /// The MCS zone apex, e.g. `clusterset.local`, or `None` to serve only `zone`. Services are
    /// `S.N.svc.<clusterset_zone>` under the MCS DNS specification: no `C.S.N` names.
    pub clusterset_zone: Option<String>,
    /// TTL of every record, and the SOA MINIMUM (negative-caching TTL), in seconds.
    pub ttl: u32,
    /// Most A records (and, separately, most AAAA records) in one answer; 0 = no cap. Each
    /// address costs 16 (A) or 28 (AAAA) octets of a UDP answer that must fit 512 without EDNS.
    ///
    /// In the MCS zone it applies as in causeway's own, with one difference: a headless
    /// service's name `S.N.svc.<clusterset zone>`, whose A and AAAA answers must cover the same
    /// endpoints (MCS DNS specification), answers at most this many *endpoints* (a hostname in
    /// a cluster, with all its addresses), the best-ranked ones, fixed for the snapshot: every
    /// query type sees the same subset, and rotation only reorders it. SRV answers list every
    /// target; their additional addresses are capped per target like an answer.
    pub max_addresses: usize,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self {
            zone: crate::DEFAULT_ZONE.to_owned(),
            clusterset_zone: Some(crate::DEFAULT_CLUSTERSET_ZONE.to_owned()),
            ttl: crate::DEFAULT_TTL,
            max_addresses: crate::DEFAULT_MAX_ADDRESSES,
        }
    }
}

/// One service as the DNS answers it, already ranked by the caller.
///
/// Published as `S.N.<zone>` (and `S.N.svc.<clusterset zone>`), with A records for IPv4 and
/// AAAA for IPv6 addresses. A service with no addresses still exists as a name in `zone`
/// (NOERROR, no records: "fail closed"); the caller decides what is healthy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceRecords {
    /// The namespace: a single RFC 1123 label, matched case-insensitively.
    pub namespace: String,
    /// The service name: a single RFC 1123 label, matched case-insensitively.
    pub name: String,
    pub kind: ServiceKind,
    /// The service name's addresses in preference groups, best group first. Addresses within
    /// one group are equally good; their order rotates from query to query so that clients
    /// spread load. Duplicates are dropped (RFC 2181 §5).
    pub tiers: Vec<Vec<IpAddr>>,
    /// Every cluster with something to answer, for the cluster-pinned and per-endpoint names
    /// and the SRV targets.
    pub clusters: Vec<ClusterRecords>,
    /// The service's named ports, for SRV. Unnamed ports get no SRV (MCS DNS specification).
    pub ports: Vec<NamedPort>,
}

/// How a service is addressed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ServiceKind {
    /// A service with a virtual IP per cluster. `clusterset_ips` is the MCS ClusterSetIP,
    /// answered for `S.N.svc.<clusterset zone>` instead of `tiers` when one is allocated.
    ClusterSetIp { clusterset_ips: Vec<IpAddr> },
    /// A headless service: the answers are the ready endpoints themselves.
    Headless,
}

/// What one cluster contributes to a service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterRecords {
    /// The cluster id: a single RFC 1123 label.
    pub cluster: String,
    /// SRV priority for this cluster's targets (RFC 2782: lower is preferred): its tier.
    pub priority: u16,
    /// `C.S.N.<zone>`'s addresses: the cluster's service IPs, or for a headless service its
    /// ready endpoints. One preference group: rotated per query.
    pub addresses: Vec<IpAddr>,
    /// Headless only: the ready endpoints that have a hostname, as `H.C.S.N` names.
    pub hosts: Vec<HostRecord>,
}

/// One headless endpoint's name and address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRecord {
    /// A single RFC 1123 label.
    pub hostname: String,
    pub address: IpAddr,
}

/// A named service port, published as `_<name>._<protocol>.S.N` SRV.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamedPort {
    /// The port name: a single RFC 1123 label (the SRV label is `_` + name).
    pub name: String,
    pub port: u16,
    pub protocol: PortProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl PortProtocol {
    /// The SRV protocol label (RFC 2782).
    pub fn label(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "_tcp",
            PortProtocol::Udp => "_udp",
            PortProtocol::Sctp => "_sctp",
        }
    }
}

/// An immutable view of every served zone, built once and then only read.
///
/// Build one with [`Snapshot::new`] (or [`Snapshot::empty`]), or from the previous one with
/// [`Snapshot::update`], and hand it to [`crate::Handle::publish`], which stamps the SOA
/// serial and swaps it in atomically.
///
/// Inside, each service's names in each zone (everything at and under `S.N.<zone>`) are one
/// tree, built and encoded once and shared by every later snapshot in which the service is
/// unchanged, so an update costs the changed services plus one pass over the table's index.
#[derive(Debug, Clone)]
pub struct Snapshot {
    config: ZoneConfig,
    serial: u32,
    /// The served apexes, each with the SOA for the authority section of its negative answers
    /// (RFC 2308 §3 sets its TTL to min(SOA TTL, SOA MINIMUM)).
    apexes: Vec<(LowerName, [Record; 1])>,
    /// Where service trees hang (`<zone>`, `svc.<clusterset zone>`) and their label counts.
    parents: Vec<(LowerName, usize)>,
    /// The zones' fixed names, for building a service tree's records when the slow path
    /// first needs them.
    prepared: Arc<build::Prepared>,
    /// The names outside every service tree: apexes, `dns-version`, empty non-terminals above
    /// the trees. Keys are lowercase (`LowerName`), so lookups are case-insensitive.
    base: Arc<Tree>,
    /// Every service as published, with its trees, by lowercase `namespace/name`: what
    /// [`Snapshot::update`] compares and reuses, and where a query under `S.N.<parent>` finds
    /// its tree.
    services: sharded::Sharded<Arc<str>, Arc<Service>>,
    /// The negative answers and tree parents for [`Snapshot::answer_wire`].
    wire: wire::Wire,
}

/// Names and their answers: one service's tree in one zone, or the base.
///
/// The fast path's wire answers are built with the tree; the slow path's hickory records
/// (every name that exists here, including empty non-terminals as empty nodes, keyed
/// lowercase) only when a query first needs them, from the service's records, and then kept
/// for as long as the tree lives. The base holds its records from the start.
#[derive(Debug, Clone, Default)]
struct Tree {
    /// Every answer precomputed in wire format.
    wire: wire::WireTree,
    /// The records per name, once built.
    nodes: OnceLock<HashMap<LowerName, Node>>,
    /// What a service tree's records are built from: the service and which of its trees
    /// (the index of the apex it belongs to). `None` for the base.
    source: Option<(Arc<ServiceRecords>, usize)>,
}

impl Tree {
    /// The records per name, built on first use.
    fn nodes(&self, prepared: &build::Prepared) -> &HashMap<LowerName, Node> {
        self.nodes.get_or_init(|| {
            let Some((records, apex)) = &self.source else {
                return HashMap::new();
            };
            // The service built when the tree did, with the same prepared zones.
            build::service_trees(prepared, records)
                .ok()
                .and_then(|trees| trees.into_iter().find(|t| t.apex == *apex))
                .map(|tree| tree.nodes)
                .unwrap_or_default()
        })
    }

    /// The base: every name's records and their wire answers.
    fn base(prepared: &build::Prepared, nodes: HashMap<LowerName, Node>) -> Tree {
        Tree {
            wire: wire::tree(&prepared.apexes, &nodes, None),
            nodes: OnceLock::from(nodes),
            source: None,
        }
    }
}

/// A service tree's parent (`N.<zone>`, an empty non-terminal of the base) from the tree's
/// key (`S.N.<zone>` in lowercase wire form).
fn parent_key(root: &[u8]) -> &[u8] {
    let first = root.first().map_or(0, |&len| usize::from(len) + 1);
    root.get(first..).unwrap_or_default()
}

/// One service as last built.
#[derive(Debug)]
struct Service {
    records: Arc<ServiceRecords>,
    trees: Vec<(Arc<[u8]>, Arc<Tree>)>,
}

/// What the zone says about one query, borrowing the records from the [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'a> {
    /// NOERROR, authoritative, with these records in the answer section (never empty) and
    /// these in the additional section (the addresses of SRV targets).
    Records {
        answers: Cow<'a, [Record]>,
        additional: &'a [Record],
    },
    /// NOERROR, authoritative, no records: the name exists but has no data of the asked type
    /// (RFC 2308 §2.2). The SOA goes into the authority section.
    NoData { soa: &'a [Record] },
    /// NXDOMAIN, authoritative: no such name in the zone (RFC 2308 §2.1). The SOA goes into the
    /// authority section.
    NxDomain { soa: &'a [Record] },
    /// REFUSED, not authoritative: the name is outside every served zone. The handler
    /// forwards it instead when an upstream is configured.
    OutsideZones,
    /// REFUSED, not authoritative: a zone transfer, which this server does not offer.
    Refused,
}

impl<'a> Answer<'a> {
    /// The response code to send.
    pub fn rcode(&self) -> ResponseCode {
        match self {
            Answer::Records { .. } | Answer::NoData { .. } => ResponseCode::NoError,
            Answer::NxDomain { .. } => ResponseCode::NXDomain,
            Answer::OutsideZones | Answer::Refused => ResponseCode::Refused,
        }
    }

    /// Whether the AA bit is set: true for every answer from inside a zone.
    pub fn authoritative(&self) -> bool {
        !matches!(self, Answer::OutsideZones | Answer::Refused)
    }

    /// The answer section.
    pub fn answers(&self) -> &[Record] {
        match self {
            Answer::Records { answers, .. } => answers,
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

    /// The additional section (without the OPT record, which the handler adds).
    pub fn additional(&self) -> &'a [Record] {
        match self {
            Answer::Records { additional, .. } => additional,
            _ => &[],
        }
    }
}

/// The records at one name: one [`RrSet`] per type present, never an empty one.
#[derive(Debug, Clone, Default)]
struct Node {
    rrsets: Vec<RrSet>,
}

/// All records of one type at one name, with how to order them per query.
#[derive(Debug, Clone)]
struct RrSet {
    record_type: RecordType,
    records: Vec<Record>,
    /// Lengths of the consecutive preference groups in `records` (summing to its length);
    /// each rotates per query. Empty for a fixed order (SOA, NS, SRV, TXT).
    groups: Vec<usize>,
    /// Most records one answer carries; `usize::MAX` for no cap.
    cap: usize,
    /// Records for the additional section (the addresses of SRV targets).
    additional: Vec<Record>,
}

impl Snapshot {
    /// Builds the zones `config` names, holding `services`.
    ///
    /// Fails if a zone or any label (namespace, service, cluster, hostname, port name) is not
    /// a valid DNS name, if the two zones overlap, or if two services share a name. The SOA
    /// serial is 0 until [`crate::Handle::publish`] stamps it.
    pub fn new(config: &ZoneConfig, services: Vec<ServiceRecords>) -> Result<Snapshot, Error> {
        Snapshot::build(config, services, None)
    }

    /// A snapshot of `services` like [`Snapshot::new`], reusing this one's work for every
    /// service that is exactly as it was here (same records, same config): only new and
    /// changed services are built and encoded. `self` is unchanged and may still be serving.
    pub fn update(
        &self,
        config: &ZoneConfig,
        services: Vec<ServiceRecords>,
    ) -> Result<Snapshot, Error> {
        Snapshot::build(config, services, Some(self))
    }

    /// A snapshot with `upserts` added or replacing the services of the same name, and the
    /// services named in `removals` (namespace, name) gone; every other service is shared with
    /// this snapshot as it is. The same answers as [`Snapshot::update`] with the whole
    /// resulting table, at a cost that grows with the changes, not with the table: for a
    /// caller that knows what changed. A removal of a service that does not exist is ignored;
    /// two upserts of one name are [`Error::DuplicateService`].
    pub fn patch(
        &self,
        upserts: Vec<ServiceRecords>,
        removals: &[(&str, &str)],
    ) -> Result<Snapshot, Error> {
        let prepared = self.prepared.clone();
        let mut next = self.clone();
        let mut keys_changed = false;
        for (namespace, name) in removals {
            if let Some(old) = next.services.remove(&*service_id(namespace, name)) {
                keys_changed |= !old.trees.is_empty();
            }
        }
        let mut encoder = encode::Encoder::new(&prepared);
        let mut upserted: HashSet<Arc<str>, BuildHasherDefault<wire::NameHasher>> =
            HashSet::default();
        for records in upserts {
            let id = service_id(&records.namespace, &records.name);
            if !upserted.insert(id.clone()) {
                return Err(Error::DuplicateService {
                    namespace: records.namespace,
                    name: records.name,
                });
            }
            let old = next.services.get(&id);
            if old.is_some_and(|s| *s.records == records) {
                continue;
            }
            let service = Service::build(&prepared, &mut encoder, records)?;
            keys_changed |= old.is_none_or(|old| {
                old.trees.len() != service.trees.len()
                    || old
                        .trees
                        .iter()
                        .zip(&service.trees)
                        .any(|(a, b)| a.0 != b.0)
            });
            next.services.insert(id, Arc::new(service));
        }
        if keys_changed {
            // Which namespaces have names changed: rebuild the (small) base.
            let base_nodes = build::base_nodes(&prepared, next.tree_keys().map(parent_key));
            next.base = Arc::new(Tree::base(&prepared, base_nodes));
        }
        next.set_serial(0);
        Ok(next)
    }

    fn build(
        config: &ZoneConfig,
        services: Vec<ServiceRecords>,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, Error> {
        let prepared = build::prepare(config)?;
        let previous = previous.filter(|p| p.config == *config);
        let mut built: sharded::Sharded<Arc<str>, Arc<Service>> = Default::default();
        let mut encoder = encode::Encoder::new(&prepared);
        for records in services {
            let id = service_id(&records.namespace, &records.name);
            let reused = previous
                .and_then(|p| p.services.get(&id))
                .filter(|s| *s.records == records)
                .cloned();
            let service = match reused {
                Some(service) => service,
                None => Arc::new(Service::build(&prepared, &mut encoder, records)?),
            };
            if built.get(&id).is_some() {
                return Err(Error::DuplicateService {
                    namespace: service.records.namespace.clone(),
                    name: service.records.name.clone(),
                });
            }
            built.insert(id, service);
        }
        let keys = built
            .values()
            .flat_map(|s| s.trees.iter().map(|(k, _)| parent_key(k)));
        let base_nodes = build::base_nodes(&prepared, keys);
        let parents = prepared.service_parents();
        let mut snapshot = Snapshot {
            config: config.clone(),
            serial: 0,
            base: Arc::new(Tree::base(&prepared, base_nodes)),
            wire: wire::Wire::new(&parents.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()),
            parents: parents
                .into_iter()
                .map(|(p, _)| {
                    let labels = usize::from(p.num_labels());
                    (p, labels)
                })
                .collect(),
            apexes: prepared.apexes.clone(),
            prepared: Arc::new(prepared),
            services: built,
        };
        snapshot.set_serial(0);
        Ok(snapshot)
    }

    /// The zones with only their apex records (SOA, NS, and the MCS `dns-version` TXT).
    pub fn empty(config: &ZoneConfig) -> Result<Snapshot, Error> {
        Snapshot::new(config, Vec::new())
    }

    /// The node at `name`, in its service's tree or in the base.
    fn node(&self, name: &LowerName) -> Option<&Node> {
        let labels = usize::from(name.num_labels());
        for (at, (parent, parent_labels)) in self.parents.iter().enumerate() {
            if labels >= parent_labels + 2 && parent.zone_of(name) {
                let root = Name::from(name).trim_to(parent_labels + 2);
                let mut root = root.iter().map(String::from_utf8_lossy);
                let (service, namespace) = (root.next()?, root.next()?);
                let id = service_id(&namespace, &service);
                return self.tree(at, &id)?.nodes(&self.prepared).get(name);
            }
        }
        self.base.nodes(&self.prepared).get(name)
    }

    /// The tree of the service `id` (lowercase `namespace/name`) under service parent number
    /// `parent` (the index of the apex the tree belongs to).
    fn tree(&self, parent: usize, id: &str) -> Option<&Tree> {
        let service = self.services.get(id)?;
        let mut trees = service.trees.iter().map(|(_, tree)| &**tree);
        trees.find(|tree| {
            tree.source
                .as_ref()
                .is_some_and(|(_, apex)| *apex == parent)
        })
    }

    /// Every service tree's key (`S.N.<parent>` in lowercase wire form).
    fn tree_keys(&self) -> impl Iterator<Item = &[u8]> {
        let trees = self.services.values().flat_map(|s| &s.trees);
        trees.map(|(key, _)| &**key)
    }

    /// Answers a query for `name` and `query_type` (class IN; the caller refuses other classes).
    ///
    /// RFC 1034 §4.3.2 restricted to zones without delegations or wildcards: outside every
    /// zone → [`Answer::OutsideZones`]; a zone transfer → REFUSED; a name with records of the type → those records; ANY → one RRset at the
    /// name (RFC 8482 §4.2); an existing name (including an empty non-terminal) without them →
    /// NODATA; anything else → NXDOMAIN.
    ///
    /// `rotation` picks the order within each preference group (any counter: query `n` and
    /// `n + group length` give the same order), then the cap keeps the first addresses.
    pub fn answer(&self, name: &LowerName, query_type: RecordType, rotation: u64) -> Answer<'_> {
        let Some((_, negative_soa)) = self
            .apexes
            .iter()
            .filter(|(apex, _)| apex.zone_of(name))
            .max_by_key(|(apex, _)| apex.num_labels())
        else {
            return Answer::OutsideZones;
        };
        if matches!(query_type, RecordType::AXFR | RecordType::IXFR) {
            return Answer::Refused;
        }
        let Some(node) = self.node(name) else {
            return Answer::NxDomain { soa: negative_soa };
        };
        let rrset = if query_type == RecordType::ANY {
            node.rrsets.first()
        } else {
            node.rrsets.iter().find(|r| r.record_type == query_type)
        };
        match rrset {
            Some(rrset) => Answer::Records {
                answers: rrset.ordered(rotation),
                additional: &rrset.additional,
            },
            None => Answer::NoData { soa: negative_soa },
        }
    }

    /// The fast path: writes the whole response to the raw UDP `query` into `out` and returns
    /// true, or returns false when [`Snapshot::answer`] (through the hickory handler) must
    /// answer instead. It answers plain queries for names inside the zones (records, NODATA,
    /// NXDOMAIN) exactly as the slow path would, from answers precomputed when the snapshot
    /// was built; malformed or unusual messages, truncation, ANY and names outside the zones
    /// are left to the slow path. `rotation` as for [`Snapshot::answer`].
    pub fn answer_wire(&self, query: &[u8], rotation: u64, out: &mut Vec<u8>) -> bool {
        let lookup = |key: &[u8]| {
            let mut id = [0; wire::MAX_SERVICE_ID];
            match self.wire.service_of(key, &mut id) {
                Some((parent, id)) => self.tree(parent, id)?.wire.get(key),
                None => self.base.wire.get(key),
            }
        };
        self.wire.answer(lookup, query, rotation, out)
    }

    /// The SOA serial this snapshot answers with.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// What this snapshot serves.
    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// How many names exist across the served zones (including apexes and empty
    /// non-terminals).
    pub fn names(&self) -> usize {
        let trees = self.services.values().flat_map(|s| &s.trees);
        self.base.wire.len() + trees.map(|(_, t)| t.wire.len()).sum::<usize>()
    }

    /// Stamps the SOA serial; called by the publisher just before the swap.
    pub(crate) fn set_serial(&mut self, serial: u32) {
        self.serial = serial;
        let ttl = self.config.ttl;
        let base = Arc::make_mut(&mut self.base);
        let mut nodes = base.nodes.take().unwrap_or_default();
        for (apex, negative_soa) in &mut self.apexes {
            let apex_name = Name::from(&*apex);
            if let Some(node) = nodes.get_mut(apex)
                && let Some(soa) = node
                    .rrsets
                    .iter_mut()
                    .find(|r| r.record_type == RecordType::SOA)
            {
                soa.records = vec![build::soa_record(&apex_name, ttl, serial)];
            }
            // The SOA's own TTL and its MINIMUM are both the zone ttl, so min() is the ttl;
            // keep the rule explicit so a future separate MINIMUM stays correct.
            let minimum = ttl;
            *negative_soa = [build::soa_record(&apex_name, ttl.min(minimum), serial)];
        }
        base.wire = wire::tree(&self.apexes, &nodes, None);
        base.nodes = OnceLock::from(nodes);
        self.wire.stamp(&self.apexes);
    }
}

/// The key of a service in [`Snapshot::services`]: lowercase `namespace/name` (neither may
/// hold a `/`: both must be DNS labels).
fn service_id(namespace: &str, name: &str) -> Arc<str> {
    let mut id = String::with_capacity(namespace.len() + name.len() + 1);
    id.push_str(namespace);
    id.push('/');
    id.push_str(name);
    id.make_ascii_lowercase();
    id.into()
}

impl Service {
    /// Encodes the service's answers straight from its records; a service the direct encoder
    /// does not take (see `encode.rs`) goes through hickory records, which then serve the
    /// slow path too.
    fn build(
        prepared: &build::Prepared,
        encoder: &mut encode::Encoder<'_>,
        records: ServiceRecords,
    ) -> Result<Service, Error> {
        let records = Arc::new(records);
        if let Some(encoded) = encoder.service(&records) {
            let trees = encoded
                .into_iter()
                .map(|tree| {
                    let tree_records = Tree {
                        wire: tree.wire,
                        nodes: OnceLock::new(),
                        source: Some((records.clone(), tree.apex)),
                    };
                    (Arc::from(tree.root), Arc::new(tree_records))
                })
                .collect();
            return Ok(Service { records, trees });
        }
        let trees = build::service_trees(prepared, &records)?
            .into_iter()
            .map(|tree| {
                let key: Arc<[u8]> = wire::name_key(&tree.root).into();
                let tree = Tree {
                    wire: wire::tree(&prepared.apexes, &tree.nodes, Some(tree.apex)),
                    nodes: OnceLock::from(tree.nodes),
                    source: Some((records.clone(), tree.apex)),
                };
                (key, Arc::new(tree))
            })
            .collect();
        Ok(Service { records, trees })
    }
}

impl RrSet {
    /// The records for one answer: each group rotated by `rotation`, then capped. Borrowed
    /// when that is the stored order.
    fn ordered(&self, rotation: u64) -> Cow<'_, [Record]> {
        let order = self.order(rotation);
        if order.iter().enumerate().all(|(at, &i)| at == i) {
            return Cow::Borrowed(&self.records[..order.len()]);
        }
        Cow::Owned(order.into_iter().map(|i| self.records[i].clone()).collect())
    }

    /// The indices into `records` of one answer, in order: each group rotated by `rotation`,
    /// then capped. The fast path's precomputed answers use the same order.
    fn order(&self, rotation: u64) -> Vec<usize> {
        let mut out = Vec::new();
        order_into(
            &self.groups,
            self.records.len(),
            self.cap,
            rotation,
            &mut out,
        );
        out
    }
}

/// The indices of one answer among `len` records in preference groups of the lengths `groups`
/// (none: a fixed order), into `out`: each group rotated by `rotation`, then capped at `cap`.
fn order_into(groups: &[usize], len: usize, cap: usize, rotation: u64, out: &mut Vec<usize>) {
    out.clear();
    let end = len.min(cap);
    if groups.is_empty() {
        out.extend(0..end);
        return;
    }
    out.reserve(end);
    let mut start = 0;
    for &len in groups {
        let shift = shift(rotation, len);
        out.extend((start + shift..start + len).chain(start..start + shift));
        start += len;
        if out.len() >= cap {
            out.truncate(cap);
            break;
        }
    }
}

/// Where a group of `len` starts for query `rotation`.
fn shift(rotation: u64, len: usize) -> usize {
    match u64::try_from(len) {
        // The remainder is below `len`, so it fits back into usize.
        Ok(len) if len > 1 => usize::try_from(rotation % len).unwrap_or(0),
        _ => 0,
    }
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

#[cfg(test)]
mod tests;
