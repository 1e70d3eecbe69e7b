//! The object store: objects by resource, namespace and name; the global
//! resourceVersion counter; the retained change history that watches replay;
//! the open watches; the tokens issued by TokenRequest.

use super::resources::{self, ResourceType};
use super::select::Selector;
use super::status::ApiError;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{Notify, mpsc};

/// How many changes the history keeps before the oldest are forgotten.
const HISTORY_LIMIT: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    /// `plural.group`, unique per resource since each group serves one version.
    resource: String,
    /// Empty for cluster-scoped objects.
    namespace: String,
    name: String,
}

impl ObjectKey {
    fn new(res: &ResourceType, namespace: Option<&str>, name: &str) -> ObjectKey {
        let namespace = if res.namespaced { namespace.unwrap_or("") } else { "" };
        ObjectKey { resource: res.qualified(), namespace: namespace.to_string(), name: name.to_string() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One change of one object, as the history keeps it.
struct Change {
    resource_version: u64,
    res: &'static ResourceType,
    kind: ChangeKind,
    /// The object after the change (before it, with the deletion's resourceVersion, for a delete).
    object: Value,
    /// The object before a modification, so selector watches see objects enter and leave.
    previous: Option<Value>,
}

/// Which objects a watch follows.
#[derive(Clone, Debug)]
pub struct WatchFilter {
    pub res: &'static ResourceType,
    /// `None`: every namespace (or a cluster-scoped resource).
    pub namespace: Option<String>,
    pub selector: Selector,
}

impl WatchFilter {
    fn matches(&self, object: &Value) -> bool {
        let in_namespace = match &self.namespace {
            Some(ns) => object.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns.as_str()),
            None => true,
        };
        in_namespace && self.selector.matches(object)
    }

    /// The watch event a change is for this watch, if any. An object modified into the
    /// selection is ADDED to it; one modified out of it is DELETED from it.
    fn event_for<'a>(&self, change: &'a Change) -> Option<(&'static str, &'a Value)> {
        if !std::ptr::eq(self.res, change.res) {
            return None;
        }
        let now = self.matches(&change.object);
        match change.kind {
            ChangeKind::Added => now.then_some(("ADDED", &change.object)),
            ChangeKind::Deleted => now.then_some(("DELETED", &change.object)),
            ChangeKind::Modified => {
                let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(("MODIFIED", &change.object)),
                    (false, true) => Some(("ADDED", &change.object)),
                    (true, false) => Some(("DELETED", &change.object)),
                    (false, false) => None,
                }
            }
        }
    }
}

/// A newline-terminated watch event line.
pub fn event_line(event_type: &str, object: &Value) -> String {
    let mut line = json!({"type": event_type, "object": object}).to_string();
    line.push('\n');
    line
}

/// A BOOKMARK event line at `resource_version`.
pub fn bookmark_line(res: &ResourceType, resource_version: u64, initial_events_end: bool) -> String {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line("BOOKMARK", &json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": metadata}))
}

struct Subscription {
    id: u64,
    filter: WatchFilter,
    events: mpsc::UnboundedSender<String>,
    cut: Arc<Notify>,
}

/// What an open watch reads from.
pub struct WatchHandle {
    pub id: u64,
    /// Event lines in resourceVersion order.
    pub events: mpsc::UnboundedReceiver<String>,
    /// A sender into the same queue, for the watch's own bookmarks.
    pub sender: mpsc::UnboundedSender<String>,
    /// Notified when the watch must be cut abruptly.
    pub cut: Arc<Notify>,
}

/// Where a new watch starts.
pub enum WatchStart {
    /// ADDED for every current object, then live; with `end_bookmark`, a BOOKMARK annotated
    /// `k8s.io/initial-events-end` after the initial objects (streaming lists).
    Current { end_bookmark: bool },
    /// Every change after this resourceVersion, then live.
    After(u64),
}

/// A token issued by TokenRequest.
pub struct IssuedToken {
    pub namespace: String,
    pub service_account: String,
    /// The uid of the ServiceAccount: a token dies with its ServiceAccount, even if one of
    /// the same name is created again.
    pub uid: String,
    pub expires: SystemTime,
}

pub struct Store {
    objects: BTreeMap<ObjectKey, Value>,
    resource_version: u64,
    history: VecDeque<Change>,
    /// A watch from a resourceVersion below this one has missed forgotten changes (410).
    oldest_watchable: u64,
    subscriptions: Vec<Subscription>,
    next_subscription: u64,
    pub tokens: HashMap<String, IssuedToken>,
}

impl Store {
    pub fn new() -> Store {
        Store {
            objects: BTreeMap::new(),
            resource_version: 1,
            history: VecDeque::new(),
            oldest_watchable: 1,
            subscriptions: Vec::new(),
            next_subscription: 0,
            tokens: HashMap::new(),
        }
    }

    /// The resourceVersion of the latest change.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub fn get(&self, res: &ResourceType, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects.get(&ObjectKey::new(res, namespace, name))
    }

    /// The objects of `res` in `namespace` (every namespace when `None`), by namespace and name.
    pub fn list<'a>(&'a self, res: &ResourceType, namespace: Option<&'a str>) -> impl Iterator<Item = &'a Value> + 'a {
        let resource = res.qualified();
        let namespace = if res.namespaced { namespace } else { None };
        self.objects
            .iter()
            .filter(move |(k, _)| k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v)
    }

    /// Stores `object` (created or replaced), giving it the next resourceVersion, and tells
    /// the watches. Returns the stored object.
    pub fn commit_put(&mut self, res: &'static ResourceType, mut object: Value) -> Value {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let key = key_of(res, &object);
        let previous = self.objects.insert(key, object.clone());
        let kind = if previous.is_some() { ChangeKind::Modified } else { ChangeKind::Added };
        self.record(Change { resource_version: self.resource_version, res, kind, object: object.clone(), previous });
        object
    }

    /// Removes an object for good, telling the watches. Returns it, carrying the
    /// resourceVersion of its deletion.
    pub fn commit_delete(&mut self, res: &'static ResourceType, namespace: Option<&str>, name: &str) -> Option<Value> {
        let object = self.objects.get(&ObjectKey::new(res, namespace, name))?.clone();
        Some(self.commit_remove(res, object))
    }

    /// Removes the stored object of `object`'s name for good, reporting `object` as its
    /// final state (an update that removed the last finalizer).
    pub fn commit_remove(&mut self, res: &'static ResourceType, mut object: Value) -> Value {
        self.objects.remove(&key_of(res, &object));
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let change = Change {
            resource_version: self.resource_version,
            res,
            kind: ChangeKind::Deleted,
            object: object.clone(),
            previous: None,
        };
        self.record(change);
        object
    }

    fn record(&mut self, change: Change) {
        self.subscriptions.retain(|sub| match sub.filter.event_for(&change) {
            Some((event_type, object)) => sub.events.send(event_line(event_type, object)).is_ok(),
            None => !sub.events.is_closed(),
        });
        self.history.push_back(change);
        if self.history.len() > HISTORY_LIMIT
            && let Some(forgotten) = self.history.pop_front()
        {
            self.oldest_watchable = forgotten.resource_version;
        }
    }

    /// Opens a watch. Its first events are queued before this returns, so nothing that
    /// happens afterwards can come before them or be missed.
    ///
    /// # Errors
    /// 410 Expired when `start` is older than the retained history.
    pub fn subscribe(&mut self, filter: WatchFilter, start: WatchStart) -> Result<WatchHandle, ApiError> {
        let (sender, events) = mpsc::unbounded_channel();
        match start {
            WatchStart::Current { end_bookmark } => {
                for object in self.list(filter.res, None).filter(|o| filter.matches(o)) {
                    let _ = sender.send(event_line("ADDED", object));
                }
                if end_bookmark {
                    let _ = sender.send(bookmark_line(filter.res, self.resource_version, true));
                }
            }
            WatchStart::After(version) => {
                if version < self.oldest_watchable {
                    return Err(ApiError::expired(version));
                }
                for change in self.history.iter().filter(|c| c.resource_version > version) {
                    if let Some((event_type, object)) = filter.event_for(change) {
                        let _ = sender.send(event_line(event_type, object));
                    }
                }
            }
        }
        self.next_subscription += 1;
        let cut = Arc::new(Notify::new());
        let id = self.next_subscription;
        self.subscriptions.push(Subscription { id, filter, events: sender.clone(), cut: cut.clone() });
        Ok(WatchHandle { id, events, sender, cut })
    }

    pub fn unsubscribe(&mut self, id: u64) {
        self.subscriptions.retain(|s| s.id != id);
    }

    /// Cuts every open watch abruptly.
    pub fn cut_watches(&mut self) {
        for sub in self.subscriptions.drain(..) {
            sub.cut.notify_one();
        }
    }

    /// Forgets the history: a watch from any resourceVersion issued so far is then too old.
    /// The counter moves on, so a list made afterwards gives a version one can watch from.
    pub fn compact(&mut self) {
        self.resource_version += 1;
        self.history.clear();
        self.oldest_watchable = self.resource_version;
    }
}

fn key_of(res: &ResourceType, object: &Value) -> ObjectKey {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).unwrap_or("");
    ObjectKey::new(res, Some(text("/metadata/namespace")), text("/metadata/name"))
}

/// The resource of an object from its own `apiVersion` and `kind`.
pub fn resource_of(object: &Value) -> Option<&'static ResourceType> {
    let text = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or("");
    resources::by_kind(text("apiVersion"), text("kind"))
}
