//! Building a [`Snapshot`](super::Snapshot)'s names from [`ServiceRecords`]: which names exist
//! in causeway's zone and in the MCS zone, and what each holds. Pure; the lookup rule is in
//! `zone.rs`.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use super::wire::{NameHasher, name_key};
use super::{MCS_DNS_VERSION, NameProblem, Node, RrSet, ServiceKind, ServiceRecords, ZoneConfig};
use crate::Error;

/// SOA timers. Nothing transfers these zones (AXFR is refused), so refresh/retry/expire only
/// need to be sane values (RFC 1912 §2.2 ranges); MINIMUM is the negative-caching TTL
/// (RFC 2308 §4) and is set to the zone ttl so NXDOMAIN is cached no longer than a positive
/// answer.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86400;
/// SRV weight for every target: equal weights, so clients pick among one priority evenly
/// (RFC 2782 reserves weight 0 for "no choice", which some clients then never prefer).
pub(super) const SRV_WEIGHT: u16 = 1;

/// The zones' fixed names, parsed once per build: everything a service's names hang under.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) ttl: u32,
    /// Most A (and most AAAA) records per answer; `usize::MAX` for no cap.
    pub(super) cap: usize,
    global: Name,
    /// `svc.<clusterset zone>` when the MCS zone is served.
    mcs_parent: Option<Name>,
    /// `global` and `mcs_parent` in lowercase wire form.
    pub(super) global_key: Box<[u8]>,
    pub(super) mcs_key: Option<Box<[u8]>>,
    /// The apexes, causeway's zone first, each with its negative-answer SOA (serial 0).
    pub(super) apexes: Vec<(LowerName, [Record; 1])>,
    /// The apexes' own nodes (SOA, NS) and `dns-version`: the part of the base that does not
    /// depend on the services.
    fixed: HashMap<LowerName, Node>,
}

impl Prepared {
    /// Where services hang in each zone (`<zone>`, `svc.<clusterset zone>`), with the index
    /// of the apex each belongs to.
    pub(super) fn service_parents(&self) -> Vec<(LowerName, usize)> {
        let mut parents = vec![(LowerName::new(&self.global), 0)];
        if let Some(mcs) = &self.mcs_parent {
            parents.push((LowerName::new(mcs), 1));
        }
        parents
    }
}

/// The names of one service in one zone: everything at and under `S.N.<parent>` (`root`).
pub(super) struct ServiceTree {
    pub(super) root: LowerName,
    /// Index of the apex the tree belongs to.
    pub(super) apex: usize,
    pub(super) nodes: HashMap<LowerName, Node>,
}

/// Checks the zones and builds their fixed names.
pub(super) fn prepare(config: &ZoneConfig) -> Result<Prepared, Error> {
    let global = parse_zone(&config.zone)?;
    let clusterset = config
        .clusterset_zone
        .as_deref()
        .map(parse_zone)
        .transpose()?;
    if let Some(clusterset) = &clusterset
        && (global.zone_of(clusterset) || clusterset.zone_of(&global))
    {
        return Err(Error::OverlappingZones {
            zone: config.zone.clone(),
            clusterset_zone: clusterset.to_string(),
        });
    }
    let mut zones = Zones::new(config);
    let bad_zone = |zone: &Name| {
        let zone = zone.to_string();
        move |reason| Error::BadZone { zone, reason }
    };
    zones.add_apex(&global).map_err(bad_zone(&global))?;
    let mcs_parent = match &clusterset {
        Some(apex) => {
            zones.add_apex(apex).map_err(bad_zone(apex))?;
            let version = child(apex, "dns-version").map_err(bad_zone(apex))?;
            let txt = RData::TXT(TXT::new(vec![MCS_DNS_VERSION.to_owned()]));
            zones.insert(&version, zones.fixed(&version, vec![txt]));
            Some(child(apex, "svc").map_err(bad_zone(apex))?)
        }
        None => None,
    };
    let apexes = zones
        .apexes
        .iter()
        .map(|apex| {
            let soa = soa_record(&Name::from(apex), config.ttl, 0);
            (apex.clone(), [soa])
        })
        .collect();
    Ok(Prepared {
        ttl: zones.ttl,
        cap: zones.cap,
        global_key: name_key(&LowerName::new(&global)),
        mcs_key: mcs_parent.as_ref().map(|m| name_key(&LowerName::new(m))),
        global,
        mcs_parent,
        apexes,
        fixed: zones.nodes,
    })
}

/// One service's names, one tree per zone it has names in (a headless service with no ready
/// endpoint has none in the MCS zone).
pub(super) fn service_trees(
    prepared: &Prepared,
    service: &ServiceRecords,
) -> Result<Vec<ServiceTree>, Error> {
    let names = ServiceNames::new(&prepared.global, prepared.mcs_parent.as_ref(), service)?;
    let mut zones = Zones {
        ttl: prepared.ttl,
        cap: prepared.cap,
        apexes: prepared.apexes.iter().map(|(a, _)| a.clone()).collect(),
        roots: vec![LowerName::new(&names.global)],
        nodes: HashMap::new(),
    };
    if let Some(mcs) = &names.mcs {
        zones.roots.push(LowerName::new(mcs));
    }
    zones.add_global(&names, service)?;
    if let Some(mcs) = &names.mcs {
        zones.add_mcs(mcs, service)?;
    }
    let mut trees: Vec<ServiceTree> = zones
        .roots
        .iter()
        .zip(0..)
        .map(|(root, apex)| ServiceTree {
            root: root.clone(),
            apex,
            nodes: HashMap::new(),
        })
        .collect();
    for (name, node) in zones.nodes {
        // Every name is at or under one of the roots (ancestors stop there).
        if let Some(tree) = trees.iter_mut().find(|t| t.root.zone_of(&name)) {
            tree.nodes.insert(name, node);
        }
    }
    trees.retain(|t| !t.nodes.is_empty());
    Ok(trees)
}

/// The names outside every service tree: the apexes, `dns-version`, and the empty
/// non-terminals above the trees (`N.<zone>`, `svc.<clusterset zone>`), given the trees'
/// parents in lowercase wire form (one per tree: many repeat).
pub(super) fn base_nodes<'a>(
    prepared: &Prepared,
    parents: impl IntoIterator<Item = &'a [u8]>,
) -> HashMap<LowerName, Node> {
    let distinct: HashSet<&[u8], BuildHasherDefault<NameHasher>> = parents.into_iter().collect();
    let parents = distinct.into_iter().filter_map(|key| {
        Name::from_labels(Labels { key })
            .ok()
            .map(|name| LowerName::new(&name))
    });
    let mut zones = Zones {
        ttl: prepared.ttl,
        cap: prepared.cap,
        apexes: prepared.apexes.iter().map(|(a, _)| a.clone()).collect(),
        roots: Vec::new(),
        nodes: prepared.fixed.clone(),
    };
    for parent in parents {
        if !zones.nodes.contains_key(&parent) {
            zones.insert_ancestors(&Name::from(&parent));
            zones.nodes.insert(parent, Node::default());
        }
    }
    zones.nodes
}

/// The labels of a wire name, root excluded.
struct Labels<'a> {
    key: &'a [u8],
}

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, rest) = self.key.split_first()?;
        let label = rest.get(..usize::from(len)).filter(|_| len > 0)?;
        self.key = &rest[label.len()..];
        Some(label)
    }
}

pub(super) fn soa_record(apex: &Name, ttl: u32, serial: u32) -> Record {
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

/// The nodes under construction.
struct Zones {
    ttl: u32,
    cap: usize,
    apexes: Vec<LowerName>,
    /// Where making ancestors exist stops besides the apexes: the service's own roots
    /// (`S.N.<zone>`), whose ancestors belong to the base.
    roots: Vec<LowerName>,
    nodes: HashMap<LowerName, Node>,
}

/// A service's owner names: `S.N.<zone>` and, when the MCS zone is served, `S.N.svc.<mcs>`.
struct ServiceNames {
    global: Name,
    mcs: Option<Name>,
}

impl ServiceNames {
    fn new(global: &Name, mcs: Option<&Name>, service: &ServiceRecords) -> Result<Self, Error> {
        let bad = |reason| Error::BadServiceName {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            reason,
        };
        check_label(&service.namespace).map_err(bad)?;
        check_label(&service.name).map_err(bad)?;
        let under = |parent: &Name| -> Result<Name, Error> {
            let namespace = child(parent, &service.namespace).map_err(bad)?;
            // Owner names go out lowercase whatever the caller's spelling (they are one name).
            Ok(child(&namespace, &service.name)
                .map_err(bad)?
                .to_lowercase())
        };
        Ok(Self {
            global: under(global)?,
            mcs: mcs.map(under).transpose()?,
        })
    }
}

impl Zones {
    fn new(config: &ZoneConfig) -> Zones {
        Zones {
            ttl: config.ttl,
            cap: match config.max_addresses {
                0 => usize::MAX,
                cap => cap,
            },
            apexes: Vec::new(),
            roots: Vec::new(),
            nodes: HashMap::new(),
        }
    }

    fn add_apex(&mut self, apex: &Name) -> Result<(), NameProblem> {
        let ns = child(apex, "ns")?;
        self.apexes.push(LowerName::new(apex));
        // The SOA is a placeholder until `Snapshot::set_serial` stamps it.
        let soa = RrSet::fixed(vec![soa_record(apex, self.ttl, 0)]);
        self.insert(apex, soa);
        self.insert(apex, self.fixed(apex, vec![RData::NS(NS(ns))]));
        Ok(())
    }

    /// `S.N`, `C.S.N`, `H.C.S.N` and `_P._proto.S.N` in causeway's own zone.
    fn add_global(&mut self, names: &ServiceNames, service: &ServiceRecords) -> Result<(), Error> {
        let base = &names.global;
        self.insert_addresses(base, &service.tiers);
        let mut targets: Vec<(u16, Name, Vec<IpAddr>)> = Vec::new();
        for cluster in &service.clusters {
            let pinned = child(base, &checked(service, "cluster", &cluster.cluster)?)
                .map_err(|reason| bad_record(service, "cluster", &cluster.cluster, reason))?;
            self.insert_addresses(&pinned, std::slice::from_ref(&cluster.addresses));
            let hosts = self.insert_hosts(service, &pinned, cluster)?;
            match service.kind {
                ServiceKind::ClusterSetIp { .. } if !cluster.addresses.is_empty() => {
                    targets.push((cluster.priority, pinned, cluster.addresses.clone()));
                }
                ServiceKind::ClusterSetIp { .. } => {}
                ServiceKind::Headless => targets.extend(
                    hosts
                        .into_iter()
                        .map(|(name, addrs)| (cluster.priority, name, addrs)),
                ),
            }
        }
        self.insert_srv(service, base, &targets)
    }

    /// `S.N.svc`, `H.C.S.N.svc` and `_P._proto.S.N.svc` in the MCS zone. No `C.S.N` records:
    /// the MCS DNS specification reserves that form (it exists only as an empty
    /// non-terminal above `H.C.S.N`, which RFC 8020 requires to be NODATA, not NXDOMAIN).
    fn add_mcs(&mut self, base: &Name, service: &ServiceRecords) -> Result<(), Error> {
        match &service.kind {
            ServiceKind::ClusterSetIp { clusterset_ips } => {
                let tiers = if clusterset_ips.is_empty() {
                    service.tiers.clone()
                } else {
                    vec![clusterset_ips.clone()]
                };
                self.insert_addresses(base, &tiers);
                let addresses: Vec<IpAddr> = tiers.into_iter().flatten().collect();
                let targets = if addresses.is_empty() {
                    Vec::new()
                } else {
                    vec![(0, base.clone(), addresses)]
                };
                self.insert_srv(service, base, &targets)
            }
            ServiceKind::Headless => {
                // "No ready endpoints ⇒ NXDOMAIN" (MCS DNS specification, headless services).
                if service.tiers.iter().all(Vec::is_empty) {
                    return Ok(());
                }
                // "A and AAAA must return the same subset": the cap counts endpoints here,
                // not addresses per family (see `endpoint_subset`).
                let subset = endpoint_subset(service, self.cap);
                self.insert_addresses_capped(base, &subset, usize::MAX);
                let mut targets = Vec::new();
                for cluster in &service.clusters {
                    let pinned = child(base, &checked(service, "cluster", &cluster.cluster)?)
                        .map_err(|reason| {
                            bad_record(service, "cluster", &cluster.cluster, reason)
                        })?;
                    let hosts = self.insert_hosts(service, &pinned, cluster)?;
                    targets.extend(
                        hosts
                            .into_iter()
                            .map(|(name, addrs)| (cluster.priority, name, addrs)),
                    );
                }
                self.insert_srv(service, base, &targets)
            }
        }
    }

    /// `H.<pinned>` for each of the cluster's hosts (one name per hostname, case-insensitive);
    /// returns the names with their addresses, in first-seen order.
    fn insert_hosts(
        &mut self,
        service: &ServiceRecords,
        pinned: &Name,
        cluster: &super::ClusterRecords,
    ) -> Result<Vec<(Name, Vec<IpAddr>)>, Error> {
        let mut hosts: Vec<(Name, Vec<IpAddr>)> = Vec::new();
        for host in &cluster.hosts {
            let label = checked(service, "hostname", &host.hostname)?;
            let name = child(pinned, &label)
                .map_err(|reason| bad_record(service, "hostname", &host.hostname, reason))?
                .to_lowercase();
            match hosts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, addresses)) => addresses.push(host.address),
                None => hosts.push((name, vec![host.address])),
            }
        }
        for (name, addresses) in &hosts {
            self.insert_addresses(name, std::slice::from_ref(addresses));
        }
        Ok(hosts)
    }

    /// `_P._proto.<base>` SRV for every named port, pointing at `targets` (priority, target
    /// name, the target's addresses for the additional section).
    fn insert_srv(
        &mut self,
        service: &ServiceRecords,
        base: &Name,
        targets: &[(u16, Name, Vec<IpAddr>)],
    ) -> Result<(), Error> {
        // One SRV name per (port name, protocol); a repeated one keeps its first port.
        let mut ports = BTreeMap::new();
        for port in &service.ports {
            let label = format!("_{}", checked(service, "port", &port.name)?);
            ports
                .entry((label, port.protocol.label()))
                .or_insert(port.port);
        }
        let mut sorted: Vec<&(u16, Name, Vec<IpAddr>)> = targets.iter().collect();
        sorted.sort_by_key(|(priority, _, _)| *priority);
        for ((port_label, protocol), port) in ports {
            let name = child(base, protocol)
                .and_then(|n| child(&n, &port_label))
                .map_err(|reason| bad_record(service, "port", &port_label, reason))?;
            let srv = sorted
                .iter()
                .map(|(priority, target, _)| {
                    RData::SRV(SRV::new(*priority, SRV_WEIGHT, port, target.clone()))
                })
                .collect::<Vec<_>>();
            if srv.is_empty() {
                // The port exists, nothing answers it now: NODATA, like the service name.
                self.nodes.entry(LowerName::new(&name)).or_default();
                self.insert_ancestors(&name);
                continue;
            }
            let mut rrset = self.fixed(&name, srv);
            for (_, target, addresses) in &sorted {
                let sets =
                    address_rrsets(target, self.ttl, self.cap, std::slice::from_ref(addresses));
                for set in sets {
                    // The additional section is a hint: the stored order, capped like an answer.
                    rrset
                        .additional
                        .extend(set.records.into_iter().take(self.cap));
                }
            }
            self.insert(&name, rrset);
        }
        Ok(())
    }

    /// A and AAAA at `name` from preference groups; the name exists even with none.
    fn insert_addresses(&mut self, name: &Name, groups: &[Vec<IpAddr>]) {
        self.insert_addresses_capped(name, groups, self.cap);
    }

    /// [`Self::insert_addresses`] with its own cap per family.
    fn insert_addresses_capped(&mut self, name: &Name, groups: &[Vec<IpAddr>], cap: usize) {
        let sets = address_rrsets(name, self.ttl, cap, groups);
        self.nodes.entry(LowerName::new(name)).or_default();
        for set in sets {
            self.insert(name, set);
        }
        self.insert_ancestors(name);
    }

    /// An RRset in the given order, never rotated or capped.
    fn fixed(&self, name: &Name, rdata: Vec<RData>) -> RrSet {
        RrSet::fixed(
            rdata
                .into_iter()
                .map(|r| Record::from_rdata(name.clone(), self.ttl, r))
                .collect(),
        )
    }

    /// Adds `rrset` at `name` (merging with a same-typed one there) and makes the ancestors
    /// exist.
    fn insert(&mut self, name: &Name, rrset: RrSet) {
        let node = self.nodes.entry(LowerName::new(name)).or_default();
        match node
            .rrsets
            .iter_mut()
            .find(|r| r.record_type == rrset.record_type)
        {
            Some(existing) => {
                existing.records.extend(rrset.records);
                existing.additional.extend(rrset.additional);
                existing.groups.clear();
            }
            None => node.rrsets.push(rrset),
        }
        self.insert_ancestors(name);
    }

    /// Every ancestor up to its apex exists (as an empty non-terminal unless it has records
    /// of its own): RFC 4592 §2.2.2.
    fn insert_ancestors(&mut self, name: &Name) {
        let mut ancestor = LowerName::new(name);
        while !self.apexes.contains(&ancestor)
            && !self.roots.contains(&ancestor)
            && !ancestor.is_root()
        {
            ancestor = ancestor.base_name();
            if let Entry::Vacant(slot) = self.nodes.entry(ancestor.clone()) {
                slot.insert(Node::default());
            }
        }
    }
}

impl RrSet {
    fn fixed(records: Vec<Record>) -> RrSet {
        RrSet {
            record_type: records
                .first()
                .map_or(RecordType::NULL, Record::record_type),
            records,
            groups: Vec::new(),
            cap: usize::MAX,
            additional: Vec::new(),
        }
    }
}

/// A headless service's preference groups cut to its best `cap` endpoints, for its name in the
/// MCS zone, where the A and the AAAA answer must cover the same endpoints (MCS DNS
/// specification). An endpoint is a hostname in a cluster (`ClusterRecords::hosts`, compared
/// case-insensitively), with all of its addresses; an address no host names is an endpoint on
/// its own. Endpoints are taken in the order their first address appears in `tiers` (best
/// group first), so the subset is fixed for a snapshot, whatever the query type or rotation;
/// rotation then orders the addresses within it. `cap` is `usize::MAX` for no cap.
pub(super) fn endpoint_subset(service: &ServiceRecords, cap: usize) -> Vec<Vec<IpAddr>> {
    let total: usize = service.tiers.iter().map(Vec::len).sum();
    if total <= cap {
        return service.tiers.clone();
    }
    #[derive(PartialEq, Eq, Hash)]
    enum Endpoint {
        Host(usize, String),
        Address(IpAddr),
    }
    let mut owner: HashMap<IpAddr, (usize, &str)> = HashMap::new();
    for (at, cluster) in service.clusters.iter().enumerate() {
        for host in &cluster.hosts {
            owner
                .entry(host.address)
                .or_insert((at, host.hostname.as_str()));
        }
    }
    let mut chosen: HashSet<Endpoint> = HashSet::new();
    service
        .tiers
        .iter()
        .map(|group| {
            group
                .iter()
                .copied()
                .filter(|address| {
                    let endpoint = match owner.get(address) {
                        Some(&(cluster, host)) => {
                            Endpoint::Host(cluster, host.to_ascii_lowercase())
                        }
                        None => Endpoint::Address(*address),
                    };
                    chosen.contains(&endpoint) || (chosen.len() < cap && chosen.insert(endpoint))
                })
                .collect()
        })
        .collect()
}

/// The A then AAAA RRsets for `groups`, each keeping the group boundaries and the first
/// occurrence of a repeated address (RFC 2181 §5: an RRset holds no duplicates).
fn address_rrsets(name: &Name, ttl: u32, cap: usize, groups: &[Vec<IpAddr>]) -> Vec<RrSet> {
    let mut seen = HashSet::new();
    let unique: Vec<Vec<IpAddr>> = groups
        .iter()
        .map(|g| g.iter().copied().filter(|a| seen.insert(*a)).collect())
        .collect();
    let family = |record_type: RecordType, to_rdata: fn(IpAddr) -> Option<RData>| {
        let mut records = Vec::new();
        let mut lens = Vec::new();
        for group in &unique {
            let before = records.len();
            records.extend(
                group
                    .iter()
                    .filter_map(|a| to_rdata(*a))
                    .map(|r| Record::from_rdata(name.clone(), ttl, r)),
            );
            if records.len() > before {
                lens.push(records.len() - before);
            }
        }
        (!records.is_empty()).then(|| RrSet {
            record_type,
            records,
            groups: lens,
            cap,
            additional: Vec::new(),
        })
    };
    let v4 = family(RecordType::A, |a| match a {
        IpAddr::V4(v4) => Some(RData::A(A(v4))),
        IpAddr::V6(_) => None,
    });
    let v6 = family(RecordType::AAAA, |a| match a {
        IpAddr::V6(v6) => Some(RData::AAAA(AAAA(v6))),
        IpAddr::V4(_) => None,
    });
    v4.into_iter().chain(v6).collect()
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

/// `value` as a label of `service`'s names, or the typed error naming what it was.
fn checked(service: &ServiceRecords, what: &'static str, value: &str) -> Result<String, Error> {
    check_label(value).map_err(|reason| bad_record(service, what, value, reason))?;
    Ok(value.to_owned())
}

fn bad_record(
    service: &ServiceRecords,
    what: &'static str,
    value: &str,
    reason: NameProblem,
) -> Error {
    Error::BadRecordName {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        what,
        value: value.to_owned(),
        reason,
    }
}

/// Kubernetes names are RFC 1123 §2.1 labels (letters, digits, `-` inside); holding to that
/// keeps every name printable and free of escapes (no dots: a dot would add a level to the tree).
pub(super) fn check_label(label: &str) -> Result<(), NameProblem> {
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
