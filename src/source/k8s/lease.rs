//! The shell of the leader election (`election`): performs its Lease reads and writes against
//! the API server and reports whether this replica leads on a watch channel.
//!
//! One task owns the [`Elector`]; it only moves data between the core, the API and the clock.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::election::{
    Action, ElectionConfig, Elector, Event, LeaseClaim, LeaseRecord, WriteError,
};

/// Where the Lease lives.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub election: ElectionConfig,
}

/// Starts the election; the channel turns `true` while this replica leads.
pub fn spawn(
    client: kube::Client,
    config: LeaseConfig,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (leading, rx) = watch::channel(false);
    tokio::spawn(run(client, config, leading, shutdown));
    rx
}

async fn run(
    client: kube::Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let identity = config.election.identity.clone();
    let mut elector = Elector::new(config.election.clone(), crate::clock::now());
    // The acquireTime of the last Lease read, kept on renewals (a PUT replaces the spec).
    let mut acquired_at: Option<MicroTime> = None;
    loop {
        while let Some(action) = elector.poll_action() {
            match action {
                Action::Read => match api.get_opt(&config.name).await {
                    Ok(lease) => {
                        acquired_at = lease
                            .as_ref()
                            .and_then(|l| l.spec.as_ref())
                            .and_then(|s| s.acquire_time.clone());
                        elector.handle_lease(lease.as_ref().map(record), crate::clock::now());
                    }
                    Err(e) => {
                        debug!(error = %e, "Could not read the leader lease");
                        elector.handle_write(Err(failed(&e)), crate::clock::now());
                    }
                },
                Action::Create(claim) => {
                    let lease = lease(&config, claim, None, &mut acquired_at);
                    let result = api.create(&PostParams::default(), &lease).await;
                    elector.handle_write(outcome(result), crate::clock::now());
                }
                Action::Update { claim, version } => {
                    let lease = lease(&config, claim, Some(version), &mut acquired_at);
                    let result = api
                        .replace(&config.name, &PostParams::default(), &lease)
                        .await;
                    elector.handle_write(outcome(result), crate::clock::now());
                }
            }
        }
        while let Some(event) = elector.poll_event() {
            match event {
                Event::Elected => info!(%identity, lease = %config.name, "Elected leader"),
                Event::Deposed => warn!(%identity, lease = %config.name, "Lost leadership"),
            }
            leading.send_replace(event == Event::Elected);
        }
        let wake = elector
            .poll_timeout()
            .map(|(t, _why)| tokio::time::Instant::from_std(t));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sleep_until_opt(wake) => elector.handle_timeout(crate::clock::now()),
        }
    }
}

async fn sleep_until_opt(wake: Option<tokio::time::Instant>) {
    match wake {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn record(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseRecord {
        holder: spec.holder_identity,
        lease_duration: Duration::from_secs(
            spec.lease_duration_seconds.unwrap_or_default().max(0) as u64
        ),
        transitions: spec.lease_transitions.unwrap_or_default(),
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
    }
}

fn lease(
    config: &LeaseConfig,
    claim: LeaseClaim,
    version: Option<String>,
    acquired_at: &mut Option<MicroTime>,
) -> Lease {
    let now = wall_now();
    if claim.acquired || acquired_at.is_none() {
        *acquired_at = Some(now.clone());
    }
    Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            resource_version: version,
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(claim.holder),
            lease_duration_seconds: Some(claim.lease_duration.as_secs().min(i32::MAX as u64) as i32),
            lease_transitions: Some(claim.transitions),
            acquire_time: acquired_at.clone(),
            renew_time: Some(now),
            ..Default::default()
        }),
    }
}

fn wall_now() -> MicroTime {
    let ts = k8s_openapi::jiff::Timestamp::try_from(crate::clock::wall_now()).unwrap_or_default();
    MicroTime(ts)
}

fn outcome(result: kube::Result<Lease>) -> Result<LeaseRecord, WriteError> {
    match result {
        Ok(lease) => Ok(record(&lease)),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(WriteError::Conflict),
        Err(e) => Err(failed(&e)),
    }
}

fn failed(e: &kube::Error) -> WriteError {
    WriteError::Failed {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_api::FakeApi;
    use super::*;

    fn config(identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: "causeway-system".into(),
            name: "causeway-gateway".into(),
            election: ElectionConfig {
                identity: identity.into(),
                lease_duration: Duration::from_secs(3),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_millis(200),
            },
        }
    }

    async fn wait_for(rx: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|v| *v == want))
            .await
            .expect("leadership changes within the deadline")
            .expect("the election task runs");
    }

    #[tokio::test]
    async fn a_standby_takes_over_the_lease_when_the_leader_stops() {
        let fake = FakeApi::default();
        let stop_a = CancellationToken::new();
        let stop_b = CancellationToken::new();
        let mut a = spawn(fake.client(), config("a"), stop_a.clone());
        wait_for(&mut a, true).await;
        let mut b = spawn(fake.client(), config("b"), stop_b.clone());
        let lease = fake
            .get(
                "coordination.k8s.io/v1",
                "leases",
                "causeway-system",
                "causeway-gateway",
            )
            .expect("the leader created the lease");
        assert_eq!(lease["spec"]["holderIdentity"], "a");
        assert!(!*b.borrow(), "b stands by while a renews");

        stop_a.cancel();
        wait_for(&mut b, true).await;
        let lease = fake
            .get(
                "coordination.k8s.io/v1",
                "leases",
                "causeway-system",
                "causeway-gateway",
            )
            .unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "b");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
        assert!(lease["spec"]["renewTime"].is_string());
        stop_b.cancel();
    }
}
