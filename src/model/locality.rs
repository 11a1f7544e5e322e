//! Where a cluster is (region, zone), and who vouches for it.
//!
//! Gateways rank answers by locality (same zone, then same region), so a cluster that could
//! claim another's zone would draw that zone's traffic. A Hello's region and zone are therefore
//! only a claim; the broker accepts it only if the clusterset vouches for exactly that
//! locality ([`check`]):
//! - the cluster's certificate, when it carries a locality (`causeway certs issue --cluster c1
//!   --region eu --zone eu-a` writes SAN URIs `causeway://region/eu`, `causeway://zone/eu-a`,
//!   signed by the clusterset CA along with the cluster id); it wins over the broker's list;
//! - otherwise the broker's registry configuration (`causeway broker --locality c1=eu/eu-a`);
//! - otherwise nothing is vouched: a Hello with no region and no zone is accepted, and one with
//!   either is refused (self-asserted locality is what this rule removes; give the cluster a
//!   certificate with its locality, or list it on the broker).
//!
//! A claim must equal the vouched locality exactly: a Hello without a region, from a cluster
//! whose certificate names one, is refused too (the gateway ranks with its own `--region`, and
//! the clusterset must see the same one). Pure; the broker's state calls [`check`] on every
//! Hello (`broker::state`), its shell reads the certificate (`certs::locality_from_cert`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::ClusterInfo;
use crate::model::bounds::Escaped;

/// A cluster's region and zone (each a DNS label, `model::bounds`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Locality {
    pub region: Option<String>,
    pub zone: Option<String>,
}

impl Locality {
    /// The locality `info` claims.
    pub fn of(info: &ClusterInfo) -> Self {
        Self {
            region: info.region.clone(),
            zone: info.zone.clone(),
        }
    }

    /// Neither a region nor a zone.
    pub fn is_empty(&self) -> bool {
        self.region.is_none() && self.zone.is_none()
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |v: &Option<String>| v.as_deref().map(Escaped).map(|e| e.to_string());
        match (part(&self.region), part(&self.zone)) {
            (None, None) => f.write_str("no region or zone"),
            (Some(r), None) => write!(f, "region {r}, no zone"),
            (None, Some(z)) => write!(f, "no region, zone {z}"),
            (Some(r), Some(z)) => write!(f, "region {r}, zone {z}"),
        }
    }
}

/// Who vouched for a locality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Voucher {
    /// The cluster's certificate (signed by the clusterset CA).
    Certificate,
    /// The broker's `--locality` list.
    BrokerConfig,
}

impl fmt::Display for Voucher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Voucher::Certificate => "the cluster's certificate",
            Voucher::BrokerConfig => "the broker's --locality",
        })
    }
}

/// Why a claimed locality was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LocalityRefusal {
    #[error("claims {claimed} but {by} vouches for {vouched}")]
    Differs {
        claimed: Locality,
        vouched: Locality,
        by: Voucher,
    },
    #[error(
        "claims {claimed} but nothing vouches for a locality (no region or zone in the \
         certificate, none in the broker's --locality)"
    )]
    Unvouched { claimed: Locality },
}

/// The locality the clusterset vouches for: the certificate's if it carries one, else the
/// broker's configured one for the cluster.
pub fn vouched(cert: &Locality, config: Option<&Locality>) -> Option<(Locality, Voucher)> {
    if !cert.is_empty() {
        return Some((cert.clone(), Voucher::Certificate));
    }
    config.map(|c| (c.clone(), Voucher::BrokerConfig))
}

/// Judges a Hello's `claimed` locality against the certificate's and the broker's list.
pub fn check(
    claimed: &Locality,
    cert: &Locality,
    config: Option<&Locality>,
) -> Result<(), LocalityRefusal> {
    match vouched(cert, config) {
        Some((vouched, _)) if &vouched == claimed => Ok(()),
        Some((vouched, by)) => Err(LocalityRefusal::Differs {
            claimed: claimed.clone(),
            vouched,
            by,
        }),
        None if claimed.is_empty() => Ok(()),
        None => Err(LocalityRefusal::Unvouched {
            claimed: claimed.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(region: Option<&str>, zone: Option<&str>) -> Locality {
        Locality {
            region: region.map(Into::into),
            zone: zone.map(Into::into),
        }
    }

    #[test]
    fn only_a_vouched_locality_is_accepted() {
        let none = Locality::default();
        let eu_a = at(Some("eu"), Some("eu-a"));
        let eu_b = at(Some("eu"), Some("eu-b"));
        let us_a = at(Some("us"), Some("us-a"));
        let eu = at(Some("eu"), None);
        let differs = |claimed: &Locality, vouched: &Locality, by| {
            Err(LocalityRefusal::Differs {
                claimed: claimed.clone(),
                vouched: vouched.clone(),
                by,
            })
        };
        use Voucher::*;
        type Case<'a> = (
            &'a str,
            &'a Locality,
            &'a Locality,
            Option<&'a Locality>,
            Result<(), LocalityRefusal>,
        );
        let table: Vec<Case> = vec![
            (
                "nothing claimed, nothing vouched",
                &none,
                &none,
                None,
                Ok(()),
            ),
            ("claim equals the certificate", &eu_a, &eu_a, None, Ok(())),
            (
                "another zone than the certificate's",
                &eu_b,
                &eu_a,
                None,
                differs(&eu_b, &eu_a, Certificate),
            ),
            (
                "no claim from a cluster whose certificate has one",
                &none,
                &eu_a,
                None,
                differs(&none, &eu_a, Certificate),
            ),
            (
                "the certificate wins over the broker's list",
                &us_a,
                &eu_a,
                Some(&us_a),
                differs(&us_a, &eu_a, Certificate),
            ),
            (
                "claim equals the broker's list",
                &us_a,
                &none,
                Some(&us_a),
                Ok(()),
            ),
            (
                "claim differs from the broker's list",
                &eu_a,
                &none,
                Some(&us_a),
                differs(&eu_a, &us_a, BrokerConfig),
            ),
            (
                "self-asserted locality",
                &eu_a,
                &none,
                None,
                Err(LocalityRefusal::Unvouched {
                    claimed: eu_a.clone(),
                }),
            ),
            (
                "a region alone is a claim too",
                &eu,
                &none,
                None,
                Err(LocalityRefusal::Unvouched {
                    claimed: eu.clone(),
                }),
            ),
        ];
        for (what, claimed, cert, config, expected) in table {
            assert_eq!(check(claimed, cert, config), expected, "{what}");
        }
    }

    #[test]
    fn refusal_reads_as_a_sentence() {
        let refusal = check(
            &at(Some("eu"), Some("eu-b")),
            &at(Some("eu"), Some("eu-a")),
            None,
        )
        .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "claims region eu, zone eu-b but the cluster's certificate vouches for region eu, zone eu-a"
        );
    }
}
