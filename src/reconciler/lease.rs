//! Leader election between replicas with a `coordination.k8s.io/v1` Lease,
//! one per cluster. The holder renews it every third of its duration; another
//! replica takes it once it has seen no renewal for a whole duration, timed on
//! its own monotonic clock (not by comparing wall clocks across machines). A
//! leader that cannot renew within two thirds of the duration steps down
//! before anyone can take over, so two replicas never act at once. On a clean
//! stop the holder releases the Lease, and the other replica takes over at its
//! next attempt.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// What this replica last saw of the Lease: its version and when (locally) it changed.
struct Seen {
    resource_version: Option<String>,
    since: Instant,
}

fn micro_now() -> Option<MicroTime> {
    let now = portcullis_format::time::Timestamp::now().unix_micros();
    k8s_openapi::jiff::Timestamp::from_microsecond(now).ok().map(MicroTime)
}

/// One attempt to acquire or renew. `Ok(true)`: this replica holds the Lease now.
async fn attempt(api: &Api<Lease>, settings: &LeaseSettings, seen: &mut Option<Seen>) -> Result<bool, kube::Error> {
    let duration_secs = i32::try_from(settings.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: micro_now(),
                renew_time: micro_now(),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let version = lease.metadata.resource_version.clone();
    if seen.as_ref().is_none_or(|s| s.resource_version != version) {
        *seen = Some(Seen { resource_version: version, since: Instant::now() });
    }
    let mut spec = lease.spec.take().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let held_by_me = holder.as_deref() == Some(settings.identity.as_str());
    let their_duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15));
    let stale = seen.as_ref().is_some_and(|s| s.since.elapsed() > their_duration);
    if !(held_by_me || holder.is_none() || stale) {
        return Ok(false);
    }
    if !held_by_me {
        spec.acquire_time = micro_now();
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(duration_secs);
    spec.renew_time = micro_now();
    lease.spec = Some(spec);
    match api.replace(&settings.name, &PostParams::default(), &lease).await {
        Ok(updated) => {
            *seen = Some(Seen { resource_version: updated.metadata.resource_version, since: Instant::now() });
            Ok(true)
        }
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// Gives the Lease up, if this replica holds it.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else { return Ok(()) };
    let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    api.replace(&settings.name, &PostParams::default(), &lease).await.map(|_| ())
}

/// Campaigns for the Lease until `stop` turns true, publishing leadership on
/// `leader`; then releases it if held.
pub async fn run(
    api: Api<Lease>,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let renew_every = settings.duration / 3;
    let renew_deadline = settings.duration * 2 / 3;
    let mut seen = None;
    let mut last_renewal: Option<Instant> = None;
    loop {
        let outcome = attempt(&api, &settings, &mut seen).await;
        let settled = outcome.is_ok();
        match outcome {
            Ok(true) => {
                last_renewal = Some(Instant::now());
                if !*leader.borrow() {
                    tracing::info!("{}: leading (lease {}/{})", settings.identity, settings.namespace, settings.name);
                }
                leader.send_replace(true);
            }
            Ok(false) => {
                last_renewal = None;
                leader.send_replace(false);
            }
            Err(e) => {
                tracing::warn!("lease {}/{}: {e}", settings.namespace, settings.name);
                if last_renewal.is_none_or(|at| at.elapsed() > renew_deadline) {
                    leader.send_replace(false);
                }
            }
        }
        let wait = if settled && *leader.borrow() { renew_every } else { renew_every.min(Duration::from_secs(1)) };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    let was_leader = leader.send_replace(false);
    if was_leader && let Err(e) = release(&api, &settings).await {
        tracing::warn!("releasing lease {}/{}: {e}", settings.namespace, settings.name);
    }
}
