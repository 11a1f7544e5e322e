//! The failover measurements, pure: from the client's records and the DNS observers' rounds
//! to the numbers in the table. Times are milliseconds on one monotonic clock.

use super::client::Record;

/// One round of DNS queries, one to each observing cluster's DNS, for the dead target's name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    pub at_ms: f64,
    /// Some answer in this round named the dead target.
    pub names_target: bool,
}

/// Time from `fail_ms` until no answer names the target anywhere for good: the first round
/// after the last round that named it (0 if none named it after the failure). `None` when the
/// last round still named it, or no round came after the failure.
pub fn withdraw_ms(rounds: &[Round], fail_ms: f64) -> Option<f64> {
    let after: Vec<&Round> = rounds.iter().filter(|r| r.at_ms >= fail_ms).collect();
    match after.iter().rposition(|r| r.names_target) {
        None => after.first().map(|_| 0.0),
        Some(last) => after.get(last + 1).map(|r| r.at_ms - fail_ms),
    }
}

/// The requests that overlap `[from_ms, to_ms)`.
pub fn window(records: &[Record], from_ms: f64, to_ms: f64) -> impl Iterator<Item = &Record> {
    records
        .iter()
        .filter(move |r| r.end_ms > from_ms && r.start_ms < to_ms)
}

/// Failed requests that overlap `[from_ms, to_ms)`.
pub fn failed(records: &[Record], from_ms: f64, to_ms: f64) -> usize {
    window(records, from_ms, to_ms).filter(|r| !r.ok()).count()
}

/// Time from `fail_ms` until the client's requests succeed again: the end of the first
/// success that started after the last failure in `[fail_ms, to_ms)`; 0 without failures.
/// `None` if no success follows the last failure.
pub fn recovery_ms(records: &[Record], fail_ms: f64, to_ms: f64) -> Option<f64> {
    let in_window: Vec<&Record> = window(records, fail_ms, to_ms).collect();
    let Some(last_failure) = in_window.iter().rposition(|r| !r.ok()) else {
        return Some(0.0);
    };
    in_window[last_failure + 1..]
        .iter()
        .find(|r| r.ok())
        .map(|r| r.end_ms - fail_ms)
}

/// Time from `restored_ms` until traffic is back on `nearest`: the end of the first request
/// served by `nearest` after which every request up to `to_ms` is too. `None` if traffic
/// never settled there.
pub fn return_ms(records: &[Record], nearest: &str, restored_ms: f64, to_ms: f64) -> Option<f64> {
    let after: Vec<&Record> = records
        .iter()
        .filter(|r| r.start_ms >= restored_ms && r.start_ms < to_ms)
        .collect();
    let on_nearest = |r: &&Record| r.served_by.as_deref() == Some(nearest);
    let last_elsewhere = after.iter().rposition(|r| !on_nearest(r));
    let first_settled = last_elsewhere.map_or(0, |i| i + 1);
    after
        .get(first_settled)
        .map(|r| (r.end_ms - restored_ms).max(0.0))
}

/// The nearest-rank 99th percentile (the maximum for fewer than 100 values).
pub fn p99(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
    sorted.get(rank.checked_sub(1)?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(start: f64, end: f64, served: Option<&str>) -> Record {
        Record {
            start_ms: start,
            end_ms: end,
            addr: None,
            served_by: served.map(str::to_owned),
            error: served.is_none().then(|| "refused".to_owned()),
        }
    }

    fn round(at: f64, names: bool) -> Round {
        Round {
            at_ms: at,
            names_target: names,
        }
    }

    #[test]
    fn withdrawal_is_the_round_after_the_last_naming_one() {
        let rounds = [
            round(90.0, true),
            round(110.0, true),
            round(130.0, false),
            round(150.0, true), // one cluster still answered it
            round(170.0, false),
            round(190.0, false),
        ];
        assert_eq!(withdraw_ms(&rounds, 100.0), Some(70.0));
        assert_eq!(withdraw_ms(&rounds[..4], 100.0), None, "still named");
        assert_eq!(withdraw_ms(&[round(120.0, false)], 100.0), Some(0.0));
        assert_eq!(withdraw_ms(&[round(90.0, false)], 100.0), None);
    }

    #[test]
    fn recovery_ends_with_the_first_success_after_the_last_failure() {
        let records = [
            rec(0.0, 10.0, Some("c1")),
            rec(95.0, 105.0, None), // in flight at the failure: counts
            rec(150.0, 650.0, None),
            rec(700.0, 710.0, Some("c3")),
            rec(760.0, 1260.0, None), // a late failure moves recovery
            rec(1300.0, 1310.0, Some("c3")),
            rec(1350.0, 1360.0, Some("c3")),
        ];
        assert_eq!(failed(&records, 100.0, 2000.0), 3);
        assert_eq!(recovery_ms(&records, 100.0, 2000.0), Some(1210.0));
        assert_eq!(recovery_ms(&records[..5], 100.0, 2000.0), None);
        assert_eq!(recovery_ms(&records[..1], 100.0, 2000.0), Some(0.0));
    }

    #[test]
    fn return_is_when_traffic_settles_on_the_nearest_cluster() {
        let records = [
            rec(0.0, 10.0, Some("c3")),
            rec(110.0, 120.0, Some("c3")),
            rec(160.0, 170.0, Some("c1")),
            rec(210.0, 220.0, Some("c3")), // not settled yet
            rec(260.0, 270.0, Some("c1")),
            rec(310.0, 320.0, Some("c1")),
        ];
        assert_eq!(return_ms(&records, "c1", 100.0, 400.0), Some(170.0));
        assert_eq!(return_ms(&records[..4], "c1", 100.0, 400.0), None);
    }

    #[test]
    fn p99_is_nearest_rank() {
        assert_eq!(p99(&[]), None);
        assert_eq!(p99(&[3.0, 1.0, 2.0]), Some(3.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p99(&hundred), Some(99.0));
    }
}
