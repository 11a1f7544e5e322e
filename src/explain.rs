//! `causeway explain NAME`: why a name's answer is what it is. Pure: the gateway's admin
//! server calls [`explain`] with its current view and a real DNS answer (`admin::lookup`);
//! the CLI fetches the result as JSON and prints it with [`render`].
//!
//! The ranking is `answers::rank_service`, the very rule the DNS snapshot is built from, and every
//! candidate carries `select`'s verdict and rank turned into words.

use std::fmt::Write as _;
use std::time::Instant;

use crate::answers::{exports_by_service, localities, rank_service};
use crate::model::ServiceKey;
use crate::select::{Excluded, Rank, Rtt, Tier, Verdict};
use crate::status::GatewayView;
use crate::status::api::{Candidate, DnsAnswer, Explanation};

/// Why a name cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("{name:?} is not under the zones served here ({zones})")]
    NotInZone { name: String, zones: String },
    #[error("{name:?} is not a service name: expected <service>.<namespace>.{zone}")]
    NotAService { name: String, zone: String },
    #[error("no cluster exports {service}")]
    UnknownService { service: String },
}

/// The service a name asks for: `S.N.<zone>`, `S.N.svc.<clusterset zone>`, optionally behind
/// an SRV prefix `_port._proto.`. Case and a trailing dot do not matter.
pub fn parse_name(
    name: &str,
    zone: &str,
    clusterset_zone: Option<&str>,
) -> Result<ServiceKey, ExplainError> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let suffixes: Vec<String> = std::iter::once(zone.trim_end_matches('.').to_ascii_lowercase())
        .chain(clusterset_zone.map(|z| format!("svc.{}", z.trim_end_matches('.'))))
        .collect();
    let Some((rest, zone)) = suffixes.iter().find_map(|z| {
        lower
            .strip_suffix(z.as_str())
            .and_then(|r| r.strip_suffix('.'))
            .map(|r| (r, z))
    }) else {
        return Err(ExplainError::NotInZone {
            name: name.to_owned(),
            zones: suffixes.join(", "),
        });
    };
    let labels: Vec<&str> = rest.split('.').collect();
    let labels = match labels.as_slice() {
        [port, proto, rest @ ..] if port.starts_with('_') && proto.starts_with('_') => rest,
        all => all,
    };
    let not_a_service = || ExplainError::NotAService {
        name: name.to_owned(),
        zone: zone.clone(),
    };
    match labels {
        [service, namespace] => ServiceKey::new(*namespace, *service).map_err(|_| not_a_service()),
        _ => Err(not_a_service()),
    }
}

/// Every candidate of `service` with the reason it is in, out, or ranked where it is, as
/// this gateway sees it at `now`; `answer` is what its DNS said for `name`.
pub fn explain(
    view: &GatewayView,
    service: &ServiceKey,
    name: &str,
    qtype: &str,
    answer: DnsAnswer,
    now: Instant,
) -> Result<Explanation, ExplainError> {
    let me = &view.cluster;
    let by_service = exports_by_service(me, &view.local, &view.sync.view);
    let Some(exports) = by_service.get(service) else {
        return Err(ExplainError::UnknownService {
            service: service.to_string(),
        });
    };
    let ranked = rank_service(
        me,
        &localities(&view.sync.view),
        &view.health,
        exports.as_slice(),
    );
    let mut groups: Vec<Rank> = Vec::new();
    for d in &ranked.selection.decisions {
        if d.verdict.is_answered() && groups.last() != Some(&d.rank) {
            groups.push(d.rank);
        }
    }
    let candidates = ranked
        .selection
        .decisions
        .iter()
        .map(|d| {
            let (verdict, reason) = match d.verdict {
                Verdict::Answered => ("answered", None),
                Verdict::Excluded(why) => ("excluded", Some(why)),
                Verdict::FailedOpen(why) => ("failed-open", Some(why)),
            };
            let tier = match d.rank.tier {
                Tier::Local => "own",
                Tier::SameZone => "zone",
                Tier::SameRegion => "region",
                Tier::Remote => "remote",
            };
            let rtt_ms = match d.rank.rtt {
                Some(Rtt::Measured(rtt)) => Some(rtt.as_secs_f64() * 1e3),
                _ => None,
            };
            let group = d
                .verdict
                .is_answered()
                .then(|| groups.iter().position(|r| *r == d.rank))
                .flatten();
            let place = match (d.rank.tier, rtt_ms) {
                (Tier::Local, _) => "this cluster's own endpoint".to_owned(),
                (Tier::SameZone, _) => format!("{} is in this cluster's zone", d.cluster),
                (Tier::SameRegion, _) => format!("{} is in this cluster's region", d.cluster),
                (Tier::Remote, Some(ms)) => {
                    format!("{} is remote, {ms:.1} ms away by tunnel probe", d.cluster)
                }
                (Tier::Remote, None) => {
                    format!(
                        "{} is remote, its RTT not measured yet (ranked last)",
                        d.cluster
                    )
                }
            };
            let cause = |why: Excluded| match why {
                Excluded::NotReady => format!("{} reports the endpoint not ready", d.cluster),
                Excluded::Unreachable => {
                    format!("{} is unreachable through its tunnel", d.cluster)
                }
            };
            // A remote address is the global one this cluster reaches it through.
            let through = (d.cluster != *me)
                .then(|| view.sync.view.clusters.get(&d.cluster))
                .flatten()
                .and_then(|c| {
                    c.global.iter().find_map(|a| {
                        let local = a.to_local(d.address)?;
                        Some(format!(
                            " (its {local}, reached as {} through {}'s global range {} for {})",
                            d.address, d.cluster, a.global, a.local
                        ))
                    })
                })
                .unwrap_or_default();
            let place = place + &through;
            let why = match (d.verdict, group) {
                (Verdict::Answered, Some(g)) => format!("answered in group {g}: {place}"),
                (Verdict::Answered, None) => format!("answered: {place}"),
                (Verdict::Excluded(why), _) => format!("left out: {}", cause(why)),
                (Verdict::FailedOpen(why), _) => format!(
                    "answered although {}: nothing healthy remains and the policy fails open",
                    cause(why)
                ),
            };
            Candidate {
                cluster: d.cluster.to_string(),
                address: d.address,
                hostname: d.hostname.clone(),
                verdict: verdict.to_owned(),
                reason: reason.map(|r| {
                    match r {
                        Excluded::NotReady => "not-ready",
                        Excluded::Unreachable => "unreachable",
                    }
                    .to_owned()
                }),
                tier: tier.to_owned(),
                rtt_ms,
                group,
                why,
            }
        })
        .collect();
    Ok(Explanation {
        name: name.to_owned(),
        namespace: service.namespace.clone(),
        service: service.name.clone(),
        qtype: qtype.to_owned(),
        kind: if ranked.headless {
            "headless"
        } else {
            "clusterset-ip"
        }
        .to_owned(),
        answer,
        candidates,
        conflicting_clusters: ranked.other_kind.iter().map(|c| c.to_string()).collect(),
        revision: view.sync.view.revision,
        data_age_seconds: view
            .last_update
            .map(|t| now.saturating_duration_since(t).as_secs_f64()),
    })
}

/// The explanation for a terminal: the answer, then one line per candidate.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let answer = match (&e.answer.rcode, &e.answer.error) {
        (Some(rcode), _) if e.answer.records.is_empty() => format!("{rcode}, no records"),
        (Some(rcode), _) => format!("{rcode} {}", e.answer.records.join(" ")),
        (None, Some(error)) => format!("no answer ({error})"),
        (None, None) => "no answer".to_owned(),
    };
    let _ = writeln!(
        out,
        "{} {} ({} service {}/{})",
        e.name, e.qtype, e.kind, e.namespace, e.service
    );
    let _ = writeln!(out, "answer from {}: {answer}", e.answer.server);
    let age = e
        .data_age_seconds
        .map_or("never synced".to_owned(), |s| format!("{s:.1}s old"));
    let _ = writeln!(out, "data: revision {}, {age}", e.revision);
    let _ = writeln!(out);
    let rows: Vec<Vec<String>> = e
        .candidates
        .iter()
        .map(|c| {
            vec![
                c.cluster.clone(),
                c.address.to_string(),
                c.verdict.clone(),
                c.group.map_or("-".into(), |g| g.to_string()),
                c.tier.clone(),
                c.rtt_ms.map_or("-".into(), |ms| format!("{ms:.1}ms")),
                c.why.clone(),
            ]
        })
        .collect();
    out.push_str(&crate::status::table(
        &[
            "CLUSTER", "ADDRESS", "VERDICT", "GROUP", "TIER", "RTT", "WHY",
        ],
        &rows,
    ));
    for c in &e.conflicting_clusters {
        let _ = writeln!(
            out,
            "{c}: left out, its export is of the other kind (the first export decides, KEP-1645)"
        );
    }
    out
}

#[cfg(test)]
mod tests;
