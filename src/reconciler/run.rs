//! One cluster's reconciler: the tasks that make grants real and take them away.
//!
//! - **Watch** (always): the managed Roles and RoleBindings, cached with
//!   their `expires-at` annotations.
//! - **Lease** (always): leader election; everything below acts only on the leader.
//! - **Expiry** (the sweeper): exact timers on the `expires-at` annotations in
//!   the cache. It needs neither the ledger nor the database, so a binding goes
//!   on time even while they are down; removals wait in the outbox until the
//!   ledger takes them.
//! - **Reconcile**: active grants → applied objects (server-side apply, field
//!   manager `portcullis`); ended and revoked grants → removed; drift (edits,
//!   deletions, objects no grant justifies) → restored or removed. Woken by
//!   every ledger append and every watch event, and every 30 s regardless.
//! - **Routes** and **standing access**: change capture and the report of
//!   bindings made outside Portcullis.
//! - **Outbox**: observations are appended in order, retried until the ledger
//!   takes them. What was recorded is folded from the ledger
//!   ([`ClusterRecord`]), so a restart or a new leader neither repeats nor
//!   misses a record.

use super::config::{ClusterConfig, ReconcilerConfig};
use super::desired::{self, Desired, FIELD_MANAGER, MANAGED_SELECTOR, annotations_of};
use super::lease::{self, LeaseSettings};
use super::routes;
use super::standing::{self, RbacObjects};
use crate::domain::state::State;
use crate::domain::types::Kind;
use crate::ledger::AppendError;
use crate::lock;
use crate::workflow::{Workflow, random_seed};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use portcullis_format::event::{Actor, EventId, ParsedEntry};
use portcullis_format::time::Timestamp;
use portcullis_projections::cluster::{
    BindingApplied, BindingRemoved, ClusterRecord, Drift, Leader, Observation, RouteChanged, RouteRecord,
    StandingAccess, StandingBinding,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The actor of every reconciler event.
pub fn actor() -> Actor {
    Actor { sub: "system:portcullis-reconciler".into(), groups: Vec::new(), via: "system".into() }
}

/// Latency buckets of the revocation histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// Counters and the revocation-latency histogram of one cluster.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub applied: u64,
    pub removed: u64,
    pub drift: u64,
    pub api_errors: u64,
    /// Removals later than the configured SLA after they were due.
    pub late: u64,
    /// Per bucket of [`LATENCY_BUCKETS`] (cumulative when rendered), then the sum and count.
    pub latency_buckets: [u64; 10],
    pub latency_sum: f64,
    pub latency_count: u64,
}

impl Metrics {
    fn observe_latency(&mut self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
            self.latency_buckets[i] += 1;
        }
        self.latency_sum += seconds;
        self.latency_count += 1;
    }
}

/// What the API shows of a cluster's reconciler.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub leader: bool,
    pub synced: bool,
    pub last_error: Option<String>,
    pub standing: Vec<StandingBinding>,
    pub standing_scanned_at: Option<Timestamp>,
    pub metrics: Metrics,
}

type Key = (String, String);

/// The managed objects as last seen by the watch (or written by this replica).
#[derive(Default)]
struct Observed {
    roles: BTreeMap<Key, Role>,
    bindings: BTreeMap<Key, RoleBinding>,
    /// Objects this replica deleted, with the version they had: older watch events about them are stale.
    deleted: BTreeMap<Key, u64>,
    synced: bool,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

fn version(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Observations queued or recorded, so none is made twice.
#[derive(Default)]
struct Queued {
    applied: BTreeMap<String, String>,
    removed: BTreeSet<String>,
    /// Grants whose objects a task is deleting right now (their removal is about to be recorded).
    removing: BTreeSet<String>,
}

pub(super) struct Cluster {
    pub config: ClusterConfig,
    settings: ReconcilerConfig,
    identity: String,
    client: Client,
    watch_client: Client,
    pub clients: super::Clients,
    workflow: Arc<Workflow>,
    leader: watch::Sender<bool>,
    observed: Mutex<Observed>,
    /// Bumped on every change of the cache.
    generation: watch::Sender<u64>,
    record: tokio::sync::Mutex<ClusterRecord>,
    queued: Mutex<Queued>,
    outbox: mpsc::UnboundedSender<Observation>,
    pending: std::sync::atomic::AtomicUsize,
    pub status: Mutex<Status>,
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

fn now() -> Timestamp {
    Timestamp::now()
}

impl Cluster {
    pub(super) fn new(
        config: ClusterConfig,
        settings: ReconcilerConfig,
        identity: String,
        clients: super::Clients,
        workflow: Arc<Workflow>,
    ) -> (Arc<Cluster>, mpsc::UnboundedReceiver<Observation>) {
        let (outbox, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            config,
            settings,
            identity,
            client: clients.act.clone(),
            watch_client: clients.watch.clone(),
            clients,
            workflow,
            leader: watch::channel(false).0,
            observed: Mutex::new(Observed::default()),
            generation: watch::channel(0).0,
            record: tokio::sync::Mutex::new(ClusterRecord::default()),
            queued: Mutex::new(Queued::default()),
            outbox,
            pending: std::sync::atomic::AtomicUsize::new(0),
            status: Mutex::new(Status::default()),
        });
        (cluster, rx)
    }

    /// Starts every task; they run until aborted, except the lease, which stops on `stop` and releases.
    pub(super) fn spawn(
        self: &Arc<Self>,
        outbox: mpsc::UnboundedReceiver<Observation>,
        stop: watch::Receiver<bool>,
    ) -> (JoinHandle<()>, Vec<JoinHandle<()>>) {
        let settings = LeaseSettings {
            namespace: self.settings.lease_namespace.clone(),
            name: format!("{}-{}", self.settings.lease_name, self.config.name),
            identity: self.identity.clone(),
            duration: Duration::from_secs(self.settings.lease_duration_secs),
        };
        let lease_api = Api::namespaced(self.client.clone(), &settings.namespace);
        let lease = tokio::spawn(lease::run(lease_api, settings, self.leader.clone(), stop));
        let tasks = vec![
            tokio::spawn(Arc::clone(self).run_outbox(outbox)),
            tokio::spawn(Arc::clone(self).watch_managed::<Role>()),
            tokio::spawn(Arc::clone(self).watch_managed::<RoleBinding>()),
            tokio::spawn(Arc::clone(self).run_expiry()),
            tokio::spawn(Arc::clone(self).run_reconcile()),
            tokio::spawn(Arc::clone(self).run_leader_duties()),
        ];
        (lease, tasks)
    }

    /// Observations not yet taken by the ledger.
    pub(super) fn outbox_len(&self) -> usize {
        self.pending.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn until_leader(&self) {
        let mut rx = self.leader.subscribe();
        let _ = rx.wait_for(|leading| *leading).await;
    }

    fn note_error(&self, context: &str, e: &dyn std::fmt::Display) {
        tracing::warn!("cluster {}: {context}: {e}", self.config.name);
        let mut status = lock(&self.status);
        status.last_error = Some(format!("{}: {context}: {e}", now()));
        status.metrics.api_errors += 1;
    }

    // ---------------------------------------------------------------- records

    /// Queues an observation for the ledger, once.
    fn record(&self, observation: Observation) {
        {
            let mut queued = lock(&self.queued);
            let mut status = lock(&self.status);
            match &observation {
                Observation::BindingApplied(d) => {
                    queued.applied.insert(d.grant_id.clone(), d.expires_at.clone());
                    status.metrics.applied += 1;
                }
                Observation::BindingRemoved(d) => {
                    queued.removed.insert(d.grant_id.clone());
                    status.metrics.removed += 1;
                    status.metrics.observe_latency(d.latency_ms.max(0) as f64 / 1000.0);
                    if d.latency_ms > i64::try_from(self.settings.revoke_sla_ms).unwrap_or(i64::MAX) {
                        status.metrics.late += 1;
                    }
                }
                Observation::Drift(_) => status.metrics.drift += 1,
                _ => {}
            }
        }
        self.pending.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _ = self.outbox.send(observation);
    }

    async fn run_outbox(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Observation>) {
        while let Some(observation) = rx.recv().await {
            let mut backoff = Duration::from_millis(50);
            loop {
                let id = EventId(random_seed());
                match self.workflow.ledger().append(observation.to_draft(id, &actor())).await {
                    Ok(_) => {
                        self.pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                        break;
                    }
                    Err(AppendError::Closed) => return,
                    Err(e) => {
                        self.note_error("recording an observation (will retry)", &e);
                        tokio::time::sleep(jitter(backoff)).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// Folds the ledger's new entries into the record.
    async fn catch_up(&self) -> Result<tokio::sync::MutexGuard<'_, ClusterRecord>, String> {
        let mut record = self.record.lock().await;
        let ledger = self.workflow.ledger();
        while record.size < ledger.head().size {
            let entries = ledger.entries(record.size, 4096).await.map_err(|e| e.to_string())?;
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                let parsed = ParsedEntry::parse(&entry).map_err(|e| format!("entry {}: {e}", record.size))?;
                let taken = std::mem::take(&mut *record);
                *record = taken.evolve(&parsed.event);
            }
        }
        Ok(record)
    }

    fn applied_recorded(&self, record: &ClusterRecord, grant: &str, expires: &str) -> bool {
        record.applied.get(grant).map(String::as_str) == Some(expires)
            || lock(&self.queued).applied.get(grant).map(String::as_str) == Some(expires)
    }

    fn removed_recorded(&self, record: &ClusterRecord, grant: &str) -> bool {
        record.removed.contains(grant) || lock(&self.queued).removed.contains(grant)
    }

    // ------------------------------------------------------------------ watch

    async fn watch_managed<K>(self: Arc<Self>)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
        Observed: Cache<K>,
    {
        let api: Api<K> = Api::all(self.watch_client.clone());
        let mut stream = watcher(api, watcher::Config::default().labels(MANAGED_SELECTOR)).default_backoff().boxed();
        let mut fresh: BTreeMap<Key, K> = BTreeMap::new();
        while let Some(event) = stream.next().await {
            let changed = match event {
                Ok(watcher::Event::Init) => {
                    fresh.clear();
                    false
                }
                Ok(watcher::Event::InitApply(object)) => {
                    fresh.insert(key_of(object.meta()), object);
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    let mut observed = lock(&self.observed);
                    <Observed as Cache<K>>::replace(&mut observed, std::mem::take(&mut fresh));
                    observed.synced = true;
                    lock(&self.status).synced = true;
                    true
                }
                Ok(watcher::Event::Apply(object)) => <Observed as Cache<K>>::upsert(&mut lock(&self.observed), object),
                Ok(watcher::Event::Delete(object)) => {
                    <Observed as Cache<K>>::forget(&mut lock(&self.observed), &key_of(object.meta()))
                }
                Err(e) => {
                    self.note_error("watching managed objects", &e);
                    false
                }
            };
            if changed {
                self.generation.send_modify(|g| *g += 1);
            }
        }
    }

    // ----------------------------------------------------------------- expiry

    /// Removes every managed object whose `expires-at` has passed, at that
    /// instant, from the cluster's own annotations alone.
    async fn run_expiry(self: Arc<Self>) {
        let mut generation = self.generation.subscribe();
        let mut leader = self.leader.subscribe();
        let mut backoff = Duration::ZERO;
        loop {
            self.until_leader().await;
            let at = now();
            let (due, next) = {
                let observed = lock(&self.observed);
                let mut due: BTreeMap<Key, (Option<String>, Timestamp)> = BTreeMap::new();
                let mut next: Option<Timestamp> = None;
                let metas =
                    observed.roles.values().map(|r| &r.metadata).chain(observed.bindings.values().map(|b| &b.metadata));
                for meta in metas {
                    let (grant, expires) = annotations_of(meta);
                    let Some(expires) = expires else { continue };
                    if expires <= at {
                        due.insert(key_of(meta), (grant, expires));
                    } else {
                        next = Some(next.map_or(expires, |n: Timestamp| n.min(expires)));
                    }
                }
                (due, next)
            };
            let failed = !self.remove_all(due, |_, expires| Some(("expired".to_string(), expires))).await;
            backoff = if failed {
                (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(1))
            } else {
                Duration::ZERO
            };
            let wait = if failed {
                jitter(backoff)
            } else {
                next.map_or(Duration::from_secs(3600), |n| micros_until(n, now()))
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = generation.changed(), if !failed => {}
                _ = leader.changed() => {}
            }
        }
    }

    /// Removes the objects of `due` concurrently; `why` gives the cause and due
    /// time of each (None: no grant justifies it, which is drift). True when all went.
    async fn remove_all(
        self: &Arc<Self>,
        due: BTreeMap<Key, (Option<String>, Timestamp)>,
        why: impl Fn(Option<&str>, Timestamp) -> Option<(String, Timestamp)>,
    ) -> bool {
        let mut tasks = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(32));
        for (key, (grant, expires)) in due {
            let cause = why(grant.as_deref(), expires);
            let this = Arc::clone(self);
            let limit = Arc::clone(&limit);
            tasks.spawn(async move {
                let _permit = limit.acquire().await;
                this.remove(&key, grant, cause).await
            });
        }
        let mut all = true;
        while let Some(done) = tasks.join_next().await {
            all &= matches!(done, Ok(Ok(())));
        }
        all
    }

    /// Deletes a grant's RoleBinding, then its Role, and records why.
    async fn remove(&self, key: &Key, grant: Option<String>, cause: Option<(String, Timestamp)>) -> Result<(), ()> {
        if let Some(grant) = &grant {
            lock(&self.queued).removing.insert(grant.clone());
        }
        let result = self.delete_and_record(key, grant.clone(), cause).await;
        if let Some(grant) = &grant {
            lock(&self.queued).removing.remove(grant);
        }
        result
    }

    async fn delete_and_record(
        &self,
        key: &Key,
        grant: Option<String>,
        cause: Option<(String, Timestamp)>,
    ) -> Result<(), ()> {
        let (namespace, name) = key;
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), namespace);
        let roles: Api<Role> = Api::namespaced(self.client.clone(), namespace);
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        // In credential mode the ServiceAccount goes too, which invalidates every token issued for it.
        let with_account = {
            let observed = lock(&self.observed);
            let metas = observed.roles.get(key).map(|r| &r.metadata).into_iter();
            metas.chain(observed.bindings.get(key).map(|b| &b.metadata)).any(desired::has_service_account)
        };
        let mut deleted_version = None;
        let steps: &[&str] = if with_account { &["binding", "account", "role"] } else { &["binding", "role"] };
        for (step, what) in steps.iter().enumerate() {
            let result = match *what {
                "binding" => {
                    bindings.delete(name, &DeleteParams::default()).await.map(|r| r.left().map(|b| b.metadata))
                }
                "account" => {
                    accounts.delete(name, &DeleteParams::default()).await.map(|r| r.left().map(|a| a.metadata))
                }
                _ => roles.delete(name, &DeleteParams::default()).await.map(|r| r.left().map(|r| r.metadata)),
            };
            match result {
                Ok(meta) => {
                    if step == 0 {
                        deleted_version = meta.and_then(|m| m.resource_version);
                    }
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    self.note_error(&format!("removing {namespace}/{name}"), &e);
                    return Err(());
                }
            }
        }
        let observed_at = now();
        let version_seen = {
            let mut observed = lock(&self.observed);
            let seen = observed.roles.remove(key).map(|r| version(&r.metadata)).into_iter();
            let seen = seen.chain(observed.bindings.remove(key).map(|b| version(&b.metadata))).max().unwrap_or(0);
            observed.deleted.insert(key.clone(), seen);
            seen
        };
        let Ok(record) = self.catch_up().await.map_err(|e| self.note_error("reading the ledger", &e)) else {
            // The ledger is unreachable: record what can be known without it.
            if let (Some(grant), Some((cause, due))) = (grant.clone(), cause.clone())
                && !lock(&self.queued).removed.contains(&grant)
            {
                self.record(removed(&self.config.name, key, &grant, &cause, due, observed_at, deleted_version));
            }
            return Ok(());
        };
        match (grant, cause) {
            (Some(grant), Some((cause, due))) => {
                if !self.removed_recorded(&record, &grant) {
                    self.record(removed(&self.config.name, key, &grant, &cause, due, observed_at, deleted_version));
                }
            }
            (grant, _) => self.record(Observation::Drift(Drift {
                cluster: self.config.name.clone(),
                namespace: namespace.clone(),
                object_kind: "RoleBinding".into(),
                name: name.clone(),
                grant_id: grant,
                action: "removed".into(),
                detail: "no active grant justifies it".into(),
                resource_version: deleted_version.unwrap_or_else(|| version_seen.to_string()),
                observed_at: observed_at.to_string(),
            })),
        }
        Ok(())
    }

    // -------------------------------------------------------------- reconcile

    async fn run_reconcile(self: Arc<Self>) {
        let mut generation = self.generation.subscribe();
        let mut head = self.workflow.ledger().watch_head();
        let mut leader = self.leader.subscribe();
        let mut backoff = Duration::ZERO;
        loop {
            self.until_leader().await;
            let failed = match self.reconcile_once().await {
                Ok(()) => false,
                Err(e) => {
                    self.note_error("reconciling", &e);
                    true
                }
            };
            backoff = if failed {
                (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
            } else {
                Duration::ZERO
            };
            let wait = if failed { jitter(backoff) } else { Duration::from_secs(30) };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = generation.changed(), if !failed => {}
                _ = head.changed(), if !failed => {}
                _ = leader.changed() => {}
            }
        }
    }

    /// One pass: apply what active grants want, remove what nothing justifies.
    async fn reconcile_once(self: &Arc<Self>) -> Result<(), String> {
        let at = now();
        let (wanted, ends) = {
            let state = self.workflow.current().await.map_err(|e| e.to_string())?;
            let wanted = desired::desired(&state, &self.config, at);
            (wanted, self.ends(&state))
        };
        let record = self.catch_up().await?.clone();
        let (roles, bindings) = {
            let observed = lock(&self.observed);
            if !observed.synced {
                return Ok(());
            }
            (observed.roles.clone(), observed.bindings.clone())
        };
        let mut failures = 0;
        for d in wanted.values() {
            let key = (d.namespace.clone(), d.name.clone());
            if let Err(e) = self.ensure(d, roles.get(&key), bindings.get(&key), &record).await {
                self.note_error(&format!("applying grant {}", d.grant_id), &e);
                failures += 1;
            }
        }
        // Objects nothing wants. Those past their expiry belong to the expiry task.
        let wanted_keys: BTreeSet<Key> = wanted.values().map(|d| (d.namespace.clone(), d.name.clone())).collect();
        let mut unwanted = BTreeMap::new();
        for meta in roles.values().map(|r| &r.metadata).chain(bindings.values().map(|b| &b.metadata)) {
            let key = key_of(meta);
            let (grant, expires) = annotations_of(meta);
            if wanted_keys.contains(&key) || expires.is_some_and(|e| e <= at) {
                continue;
            }
            unwanted.insert(key, (grant, expires.unwrap_or(at)));
        }
        if !self.remove_all(unwanted, |grant, _| grant.and_then(|g| ends.get(g).cloned())).await {
            failures += 1;
        }
        // Grants whose objects went without this replica seeing them go (e.g.
        // removed by a replica that stopped before recording it).
        for (grant, (_, due)) in &ends {
            let applied = record.applied.contains_key(grant);
            let name = desired::object_name(grant);
            let present = roles.keys().chain(bindings.keys()).any(|(_, n)| *n == name);
            let in_flight = lock(&self.queued).removing.contains(grant);
            if applied && !present && !in_flight && !self.removed_recorded(&record, grant) {
                let namespace = self.namespace_of(grant).await.unwrap_or_default();
                let key = (namespace, name);
                self.record(removed(&self.config.name, &key, grant, "absent", *due, at, None));
            }
        }
        if failures > 0 { Err(format!("{failures} actions failed; retrying")) } else { Ok(()) }
    }

    async fn namespace_of(&self, grant: &str) -> Option<String> {
        let state = self.workflow.current().await.ok()?;
        let id = EventId::parse(grant)?;
        state.grants.get(&id).map(|g| g.target.namespace.to_string())
    }

    /// Why each grant of this cluster that no longer gives access ended, and when.
    fn ends(&self, state: &State) -> BTreeMap<String, (String, Timestamp)> {
        let at = now();
        state
            .grants
            .values()
            .filter(|g| g.target.cluster.as_str() == self.config.name && !g.active_at(at))
            .map(|g| {
                let (cause, due) = desired::end_of(g);
                (g.id.to_string(), (cause.to_string(), due))
            })
            .collect()
    }

    /// Makes a grant's objects as wanted, recording the application once and any drift repaired.
    async fn ensure(
        &self,
        d: &Desired,
        role: Option<&Role>,
        binding: Option<&RoleBinding>,
        record: &ClusterRecord,
    ) -> Result<(), kube::Error> {
        let role_ok = role.is_some_and(|r| desired::role_matches(r, &d.role));
        let binding_ok = binding.is_some_and(|b| desired::binding_matches(b, &d.binding));
        let expires = d.expires_at.to_string();
        if role_ok && binding_ok {
            if !self.applied_recorded(record, &d.grant_id, &expires) {
                let version = binding.and_then(|b| b.metadata.resource_version.clone()).unwrap_or_default();
                self.record(self.applied(d, version));
            }
            return Ok(());
        }
        // What was last applied, for telling an extension (a new expiry) from an edit.
        let previous = record.applied.get(&d.grant_id).and_then(|e| Timestamp::parse(e).ok());
        let was_ours = |meta_ok: bool, present: bool, check: &dyn Fn(&Desired) -> bool| {
            present && !meta_ok && previous.is_some_and(|p| check(&with_expiry(d, p)))
        };
        let role_extension =
            was_ours(role_ok, role.is_some(), &|p| role.is_some_and(|r| desired::role_matches(r, &p.role)));
        let binding_extension = was_ours(binding_ok, binding.is_some(), &|p| {
            binding.is_some_and(|b| desired::binding_matches(b, &p.binding))
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let roles: Api<Role> = Api::namespaced(self.client.clone(), &d.namespace);
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), &d.namespace);
        let key = (d.namespace.clone(), d.name.clone());
        if let Some(account) = &d.service_account {
            let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &d.namespace);
            accounts.patch(&d.name, &params, &Patch::Apply(account)).await?;
        }
        if !role_ok {
            let applied = roles.patch(&d.name, &params, &Patch::Apply(&d.role)).await?;
            <Observed as Cache<Role>>::upsert(&mut lock(&self.observed), applied);
        }
        let mut version = binding.and_then(|b| b.metadata.resource_version.clone()).unwrap_or_default();
        if !binding_ok {
            let applied = match bindings.patch(&d.name, &params, &Patch::Apply(&d.binding)).await {
                // The role reference of a binding cannot change: replace the binding.
                Err(kube::Error::Api(status)) if status.code == 422 => {
                    let _ = bindings.delete(&d.name, &DeleteParams::default()).await;
                    bindings.patch(&d.name, &params, &Patch::Apply(&d.binding)).await?
                }
                other => other?,
            };
            version = applied.metadata.resource_version.clone().unwrap_or_default();
            <Observed as Cache<RoleBinding>>::upsert(&mut lock(&self.observed), applied);
        }
        let observed_at = now().to_string();
        let was_applied = record.applied.contains_key(&d.grant_id);
        for (kind, present, ok, extension) in [
            ("Role", role.is_some(), role_ok, role_extension),
            ("RoleBinding", binding.is_some(), binding_ok, binding_extension),
        ] {
            if ok || extension || (!present && !was_applied) {
                continue;
            }
            let detail =
                if present { "edited outside Portcullis; restored" } else { "deleted outside Portcullis; restored" };
            self.record(Observation::Drift(Drift {
                cluster: self.config.name.clone(),
                namespace: key.0.clone(),
                object_kind: kind.into(),
                name: key.1.clone(),
                grant_id: Some(d.grant_id.clone()),
                action: "restored".into(),
                detail: detail.into(),
                resource_version: version.clone(),
                observed_at: observed_at.clone(),
            }));
        }
        if !self.applied_recorded(record, &d.grant_id, &expires) {
            self.record(self.applied(d, version));
        }
        Ok(())
    }

    fn applied(&self, d: &Desired, resource_version: String) -> Observation {
        Observation::BindingApplied(BindingApplied {
            grant_id: d.grant_id.clone(),
            cluster: self.config.name.clone(),
            namespace: d.namespace.clone(),
            name: d.name.clone(),
            subject: d.subject.clone(),
            expires_at: d.expires_at.to_string(),
            resource_version,
            observed_at: now().to_string(),
        })
    }

    // --------------------------------------------------------- leader duties

    /// While leading: change capture of the routes and the standing-access scan.
    async fn run_leader_duties(self: Arc<Self>) {
        let mut leader = self.leader.subscribe();
        loop {
            self.until_leader().await;
            lock(&self.status).leader = true;
            self.record(Observation::Leader(Leader {
                cluster: self.config.name.clone(),
                identity: self.identity.clone(),
                change: "acquired".into(),
                at: now().to_string(),
            }));
            let mut duties: Vec<JoinHandle<()>> =
                Kind::ALL.into_iter().map(|kind| tokio::spawn(Arc::clone(&self).watch_routes(kind))).collect();
            duties.push(tokio::spawn(Arc::clone(&self).run_standing()));
            let _ = leader.wait_for(|leading| !*leading).await;
            for duty in duties {
                duty.abort();
            }
            lock(&self.status).leader = false;
        }
    }

    fn in_scope(&self, namespace: &str) -> bool {
        self.config.namespaces.is_empty() || self.config.namespaces.iter().any(|n| n == namespace)
    }

    async fn watch_routes(self: Arc<Self>, kind: Kind) {
        let (version, kind_name) = match kind {
            Kind::Ingresses => ("v1", "Ingress"),
            Kind::Httproutes => ("v1", "HTTPRoute"),
            Kind::Grpcroutes => ("v1", "GRPCRoute"),
            Kind::Gateways => ("v1", "Gateway"),
        };
        let gvk = GroupVersionKind::gvk(kind.group(), version, kind_name);
        let resource = ApiResource::from_gvk_with_plural(&gvk, kind.resource());
        let api: Api<DynamicObject> = Api::all_with(self.watch_client.clone(), &resource);
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let mut latest: BTreeMap<Key, RouteRecord> = BTreeMap::new();
        let mut listed: BTreeSet<Key> = BTreeSet::new();
        while let Some(event) = stream.next().await {
            let (object, deleted) = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                Ok(watcher::Event::Delete(o)) => (o, true),
                Ok(watcher::Event::Init) => {
                    listed.clear();
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    // Objects recorded as present that the list no longer has were deleted meanwhile.
                    let gone = self.recorded_routes(kind).await.into_iter().filter(|k| !listed.contains(k));
                    for key in gone.collect::<Vec<_>>() {
                        let mut object = DynamicObject::new(&key.1, &resource).within(&key.0);
                        object.data = serde_json::json!({"spec": null});
                        self.route_event(kind, object, true, &mut latest).await;
                    }
                    continue;
                }
                Err(e) => {
                    self.note_error(&format!("watching {}", kind.resource()), &e);
                    continue;
                }
            };
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            if !self.in_scope(&namespace) {
                continue;
            }
            listed.insert(key_of(&object.metadata));
            self.route_event(kind, object, deleted, &mut latest).await;
        }
    }

    /// The routes of `kind` the ledger has as present in this cluster.
    async fn recorded_routes(&self, kind: Kind) -> Vec<Key> {
        let Ok(record) = self.catch_up().await else { return Vec::new() };
        record
            .routes
            .iter()
            .filter(|((cluster, ns, k, _), r)| {
                *cluster == self.config.name && k == kind.resource() && !r.deleted && self.in_scope(ns)
            })
            .map(|((_, ns, _, name), _)| (ns.clone(), name.clone()))
            .collect()
    }

    async fn route_event(
        &self,
        kind: Kind,
        object: DynamicObject,
        deleted: bool,
        latest: &mut BTreeMap<Key, RouteRecord>,
    ) {
        let key = key_of(&object.metadata);
        let spec = if deleted { serde_json::Value::Null } else { object.data.get("spec").cloned().unwrap_or_default() };
        let text = routes::spec_text(&spec);
        let resource_version = object.metadata.resource_version.clone().unwrap_or_default();
        let previous = match latest.get(&key) {
            Some(p) => Some(p.clone()),
            None => {
                let Ok(record) = self.catch_up().await else { return };
                let full = (self.config.name.clone(), key.0.clone(), kind.resource().to_string(), key.1.clone());
                record.routes.get(&full).cloned()
            }
        };
        let change = match (&previous, deleted) {
            (Some(p), true) if p.deleted => return,
            (None, true) => return,
            (_, true) => "deleted",
            (None, false) => "added",
            (Some(p), false) if p.deleted => "added",
            (Some(p), false) if p.resource_version == resource_version || p.spec == text => {
                latest.insert(key, RouteRecord { resource_version, spec: text, deleted: false });
                return;
            }
            (Some(_), false) => "modified",
        };
        let before: serde_json::Value = previous
            .as_ref()
            .filter(|p| !p.deleted)
            .and_then(|p| serde_json::from_str(&p.spec).ok())
            .unwrap_or(serde_json::Value::Null);
        let at = now();
        let grants = match self.workflow.current().await {
            Ok(state) => routes::covering_grants(&state, &self.config.name, &key.0, kind, &key.1, at),
            Err(_) => Vec::new(),
        };
        self.record(Observation::RouteChanged(RouteChanged {
            cluster: self.config.name.clone(),
            namespace: key.0.clone(),
            kind: kind.resource().to_string(),
            name: key.1.clone(),
            change: change.into(),
            resource_version: resource_version.clone(),
            diff: routes::diff(&before, &spec),
            spec: text.clone(),
            managers: routes::managers(object.metadata.managed_fields.as_deref()),
            grants,
            observed_at: at.to_string(),
        }));
        latest.insert(key, RouteRecord { resource_version, spec: text, deleted });
    }

    async fn run_standing(self: Arc<Self>) {
        loop {
            match self.scan_standing().await {
                Ok(()) => {}
                Err(e) => self.note_error("scanning for standing access", &e),
            }
            tokio::time::sleep(Duration::from_secs(self.settings.standing_scan_secs)).await;
        }
    }

    async fn scan_standing(&self) -> Result<(), kube::Error> {
        let all = ListParams::default();
        let objects = RbacObjects {
            roles: Api::<Role>::all(self.client.clone()).list(&all).await?.items,
            cluster_roles: Api::<ClusterRole>::all(self.client.clone()).list(&all).await?.items,
            bindings: Api::<RoleBinding>::all(self.client.clone()).list(&all).await?.items,
            cluster_bindings: Api::<ClusterRoleBinding>::all(self.client.clone()).list(&all).await?.items,
        };
        let found = standing::find(&objects);
        let at = now();
        {
            let mut status = lock(&self.status);
            status.standing = found.clone();
            status.standing_scanned_at = Some(at);
        }
        let Ok(record) = self.catch_up().await else { return Ok(()) };
        let before = record.standing.get(&self.config.name).cloned().unwrap_or_default();
        drop(record);
        let now_keys: BTreeSet<String> = found.iter().map(StandingBinding::key).collect();
        let new: Vec<StandingBinding> = found.into_iter().filter(|b| before.get(&b.key()) != Some(b)).collect();
        let gone: Vec<String> = before.keys().filter(|k| !now_keys.contains(*k)).cloned().collect();
        if !new.is_empty() || !gone.is_empty() {
            self.record(Observation::StandingAccess(StandingAccess {
                cluster: self.config.name.clone(),
                found: new,
                gone,
                observed_at: at.to_string(),
            }));
        }
        Ok(())
    }
}

fn removed(
    cluster: &str,
    key: &Key,
    grant: &str,
    cause: &str,
    due: Timestamp,
    observed_at: Timestamp,
    resource_version: Option<String>,
) -> Observation {
    Observation::BindingRemoved(BindingRemoved {
        grant_id: grant.to_string(),
        cluster: cluster.to_string(),
        namespace: key.0.clone(),
        name: key.1.clone(),
        cause: cause.to_string(),
        due_at: due.to_string(),
        observed_at: observed_at.to_string(),
        latency_ms: (observed_at.unix_micros() - due.unix_micros()) / 1000,
        resource_version,
    })
}

/// The desired objects of `d` as they were with another expiry.
fn with_expiry(d: &Desired, expires: Timestamp) -> Desired {
    let mut d = d.clone();
    for meta in [&mut d.role.metadata, &mut d.binding.metadata] {
        if let Some(annotations) = meta.annotations.as_mut() {
            annotations.insert(desired::EXPIRES_ANNOTATION.into(), expires.to_string());
        }
    }
    d
}

fn micros_until(deadline: Timestamp, now: Timestamp) -> Duration {
    Duration::from_micros((deadline.unix_micros() - now.unix_micros()).max(0) as u64)
}

/// `d` plus up to a quarter more, so that replicas retrying together spread out.
fn jitter(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    d + d * u32::from(byte[0]) / 1024
}

/// The watch cache of one kind of managed object.
pub(super) trait Cache<K> {
    fn replace(&mut self, objects: BTreeMap<Key, K>);
    /// Stores a newer version; false when it is stale or unchanged.
    fn upsert(&mut self, object: K) -> bool;
    fn forget(&mut self, key: &Key) -> bool;
}

macro_rules! cache {
    ($kind:ty, $field:ident) => {
        impl Cache<$kind> for Observed {
            fn replace(&mut self, objects: BTreeMap<Key, $kind>) {
                self.$field = objects;
                self.deleted.clear();
            }

            fn upsert(&mut self, object: $kind) -> bool {
                let key = key_of(&object.metadata);
                let incoming = version(&object.metadata);
                if self.deleted.get(&key).is_some_and(|&gone| incoming <= gone) {
                    return false;
                }
                if self.$field.get(&key).is_some_and(|have| version(&have.metadata) >= incoming && incoming != 0) {
                    return false;
                }
                self.deleted.remove(&key);
                self.$field.insert(key, object);
                true
            }

            fn forget(&mut self, key: &Key) -> bool {
                self.$field.remove(key).is_some()
            }
        }
    };
}

cache!(Role, roles);
cache!(RoleBinding, bindings);
