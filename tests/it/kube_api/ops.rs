//! The write operations (create, replace, patch, apply, delete) with the bookkeeping a
//! real API server does: uid, creationTimestamp, resourceVersion, generation,
//! managedFields, status kept apart from the main resource, finalizers, roleRef immutability.

use super::fields::{self, ManagedEntry, Writer};
use super::patch;
use super::resources::ResourceType;
use super::status::ApiError;
use super::store::Store;
use portcullis_format::time::Timestamp;
use serde_json::{Map, Value, json};

/// Metadata only the server sets; clients' values are ignored.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "selfLink",
];

/// Who writes what, and how.
pub struct WriteRequest<'a> {
    pub res: &'static ResourceType,
    pub namespace: Option<&'a str>,
    /// The field manager: `fieldManager`, else the User-Agent's product name.
    pub manager: &'a str,
    /// `Some("status")` for writes to the status subresource.
    pub subresource: Option<&'a str>,
    pub dry_run: bool,
    /// Direct writes of the test harness keep the status they are given, even on the
    /// main resource of a kind with a status subresource.
    pub keep_status: bool,
}

impl WriteRequest<'_> {
    fn has_status(&self) -> bool {
        self.res.subresources.contains(&"status")
    }
}

/// The patch formats, by content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Json,
}

/// The current time as Kubernetes writes it (RFC 3339, seconds, UTC).
pub fn now() -> String {
    let text = Timestamp::now().to_string();
    format!("{}Z", &text[..19])
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("system randomness");
    bytes
}

/// A random (version 4) UUID.
fn new_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn text<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["metadata"].as_object_mut().expect("made an object above")
}

/// Checks (and fills in when missing) `apiVersion` and `kind`.
fn check_type(res: &ResourceType, object: &mut Value, required: bool) -> Result<(), ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    for (key, expected) in [("apiVersion", res.api_version()), ("kind", res.kind.to_string())] {
        match object.get(key).and_then(Value::as_str) {
            Some(given) if given == expected => {}
            Some(given) => {
                return Err(ApiError::bad_request(format!(
                    "the {key} of the object ({given}) does not match the {key} of the request ({expected})"
                )));
            }
            None if required => return Err(ApiError::bad_request(format!("Object '{key}' is missing"))),
            None => object[key] = json!(expected),
        }
    }
    Ok(())
}

/// Checks the namespace of the body against the request's (and fills it in).
fn check_namespace(w: &WriteRequest, object: &mut Value) -> Result<(), ApiError> {
    let metadata = metadata_mut(object);
    if !w.res.namespaced {
        metadata.remove("namespace");
        return Ok(());
    }
    let expected = w.namespace.unwrap_or("default");
    match metadata.get("namespace").and_then(Value::as_str) {
        Some(given) if !given.is_empty() && given != expected => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            metadata.insert("namespace".into(), json!(expected));
            Ok(())
        }
    }
}

fn check_name(object: &mut Value, name: &str) -> Result<(), ApiError> {
    let metadata = metadata_mut(object);
    match metadata.get("name").and_then(Value::as_str) {
        Some(given) if !given.is_empty() && given != name => Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        ))),
        _ => {
            metadata.insert("name".into(), json!(name));
            Ok(())
        }
    }
}

enum Ownership {
    /// Create, replace and patch: the writer takes the fields it changed.
    Update,
    /// Server-side apply: the writer owns exactly the fields of its configuration.
    Apply,
    /// Already computed (apply over an existing object).
    Computed(Vec<ManagedEntry>),
}

/// POST: creates an object.
///
/// # Errors
/// 400 for a body of another type or namespace, 422 for a missing or invalid name,
/// 409 AlreadyExists.
pub fn create(store: &mut Store, w: &WriteRequest, body: Value) -> Result<Value, ApiError> {
    create_with(store, w, body, Ownership::Update)
}

fn create_with(
    store: &mut Store,
    w: &WriteRequest,
    mut object: Value,
    ownership: Ownership,
) -> Result<Value, ApiError> {
    check_type(w.res, &mut object, false)?;
    check_namespace(w, &mut object)?;
    let metadata = metadata_mut(&mut object);
    let name = match metadata.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => match metadata.get("generateName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(prefix) => {
                let suffix: String = random_bytes::<5>()
                    .iter()
                    .map(|b| char::from(b"bcdfghjklmnpqrstvwxz2456789"[*b as usize % 27]))
                    .collect();
                format!("{prefix}{suffix}")
            }
            None => {
                return Err(ApiError::invalid(
                    w.res,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
        },
    };
    if let Some(why) = w.res.name_error(&name) {
        return Err(ApiError::invalid(w.res, &name, "metadata.name", &format!("Invalid value: \"{name}\": {why}")));
    }
    metadata.insert("name".into(), json!(name));
    if store.get(w.res, w.namespace, &name).is_some() {
        return Err(ApiError::already_exists(w.res, &name));
    }
    for key in SERVER_METADATA.iter().chain(&["managedFields"]) {
        metadata.remove(*key);
    }
    let now = now();
    metadata.insert("uid".into(), json!(new_uid()));
    metadata.insert("creationTimestamp".into(), json!(now));
    metadata.insert("generation".into(), json!(1));
    if w.has_status() && !w.keep_status {
        object.as_object_mut().map(|o| o.remove("status"));
    }

    let api_version = w.res.api_version();
    let writer = Writer { manager: w.manager, api_version: &api_version, subresource: None, now: &now };
    let mut entries = Vec::new();
    fields::record_update(None, &object, &writer, &mut entries);
    if matches!(ownership, Ownership::Apply) {
        for entry in &mut entries {
            entry.operation = "Apply".into();
        }
    }
    fields::write_entries(&mut object, &entries);
    // The server's own fields belong to no manager.
    if w.res.plural == "namespaces" && !w.keep_status {
        object["status"] = json!({"phase": "Active"});
    }
    if w.dry_run {
        return Ok(object);
    }
    Ok(store.commit_put(w.res, object))
}

/// PUT: replaces an object.
///
/// # Errors
/// 404 when absent, 409 Conflict when the body's resourceVersion is set and stale, and
/// the errors of [`finish_update`].
pub fn replace(store: &mut Store, w: &WriteRequest, name: &str, mut body: Value) -> Result<Value, ApiError> {
    check_type(w.res, &mut body, false)?;
    check_namespace(w, &mut body)?;
    check_name(&mut body, name)?;
    let old = store.get(w.res, w.namespace, name).cloned().ok_or_else(|| ApiError::not_found(w.res, name))?;
    check_precondition(w.res, &old, &body)?;
    finish_update(store, w, &old, body, Ownership::Update)
}

/// PATCH with a merge, strategic merge or JSON patch.
///
/// # Errors
/// 404 when absent, 422 when a JSON patch operation fails, 409 for a stale
/// resourceVersion in the patched object, and the errors of [`finish_update`].
pub fn patch(
    store: &mut Store,
    w: &WriteRequest,
    name: &str,
    kind: PatchKind,
    body: &Value,
) -> Result<Value, ApiError> {
    let old = store.get(w.res, w.namespace, name).cloned().ok_or_else(|| ApiError::not_found(w.res, name))?;
    let mut patched = old.clone();
    match kind {
        PatchKind::Merge => patch::merge_patch(&mut patched, body),
        PatchKind::Strategic => patch::strategic_merge_patch(&mut patched, body),
        PatchKind::Json => patch::json_patch(&mut patched, body).map_err(|why| ApiError::new(422, "Invalid", why))?,
    }
    check_type(w.res, &mut patched, true)?;
    check_namespace(w, &mut patched)?;
    check_name(&mut patched, name)?;
    check_precondition(w.res, &old, &patched)?;
    finish_update(store, w, &old, patched, Ownership::Update)
}

/// Server-side apply (`application/apply-patch+yaml`): creates the object when absent,
/// otherwise merges the configuration per [`fields::apply`].
///
/// # Errors
/// 400 for a configuration of another type or name, 409 Conflict naming the managers of
/// conflicting fields (unless `force`), and the errors of [`finish_update`].
pub fn apply(
    store: &mut Store,
    w: &WriteRequest,
    name: &str,
    mut config: Value,
    force: bool,
) -> Result<Value, ApiError> {
    check_type(w.res, &mut config, true)?;
    check_namespace(w, &mut config)?;
    if text(&config, "/metadata/name") != Some(name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            text(&config, "/metadata/name").unwrap_or("")
        )));
    }
    let Some(old) = store.get(w.res, w.namespace, name).cloned() else {
        let mut object = config;
        if w.subresource.is_some() {
            return Err(ApiError::not_found(w.res, name));
        }
        for key in SERVER_METADATA.iter().chain(&["managedFields"]) {
            metadata_mut(&mut object).remove(*key);
        }
        return create_with(store, w, object, Ownership::Apply);
    };
    check_precondition(w.res, &old, &config)?;

    // The configuration's fields: labels, annotations, finalizers and owner references
    // under metadata, everything else at the top (status only through the subresource).
    let mut stripped = config.clone();
    let metadata = metadata_mut(&mut stripped);
    metadata.retain(|k, _| matches!(k.as_str(), "labels" | "annotations" | "finalizers" | "ownerReferences"));
    if let Some(obj) = stripped.as_object_mut() {
        if w.has_status() && w.subresource.is_none() {
            obj.remove("status");
        }
        if w.subresource == Some("status") {
            obj.retain(|k, _| k == "status");
        }
    }

    let now = now();
    let api_version = w.res.api_version();
    let writer = Writer { manager: w.manager, api_version: &api_version, subresource: w.subresource, now: &now };
    let mut entries = fields::read_entries(&old);
    let merged = fields::apply(&old, &stripped, &writer, force, &mut entries).map_err(|conflicts| {
        let described: Vec<String> = conflicts
            .iter()
            .map(|c| format!("conflict with \"{}\": {}", c.manager, fields::dotted(&c.path)))
            .collect();
        let plural = if conflicts.len() == 1 { "" } else { "s" };
        let mut error = ApiError::new(
            409,
            "Conflict",
            format!("Apply failed with {} conflict{plural}: {}", conflicts.len(), described.join("; ")),
        );
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|c| {
                json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": fields::dotted(&c.path)})
            })
            .collect();
        let mut details = json!({"name": name, "kind": w.res.plural, "causes": causes});
        if !w.res.group.is_empty() {
            details["group"] = json!(w.res.group);
        }
        error.details = Some(details);
        error
    })?;
    finish_update(store, w, &old, merged, Ownership::Computed(entries))
}

/// A set, differing metadata.resourceVersion in the body is a precondition that failed.
fn check_precondition(res: &ResourceType, old: &Value, body: &Value) -> Result<(), ApiError> {
    match text(body, "/metadata/resourceVersion") {
        Some(given) if !given.is_empty() && Some(given) != text(old, "/metadata/resourceVersion") => {
            Err(ApiError::stale(res, text(old, "/metadata/name").unwrap_or("")))
        }
        _ => Ok(()),
    }
}

fn without(object: &Value, keys: &[&str]) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.retain(|k, _| !keys.contains(&k.as_str()));
    }
    copy
}

/// The object without what a no-op write may still change (resourceVersion, times of
/// managedFields entries).
fn comparable(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(metadata) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("resourceVersion");
        if let Some(entries) = metadata.get_mut("managedFields").and_then(Value::as_array_mut) {
            for entry in entries.iter_mut().filter_map(Value::as_object_mut) {
                entry.remove("time");
            }
        }
    }
    copy
}

/// The common end of every update: keeps what the server owns, enforces immutable
/// fields, records ownership, bumps generation, and stores the object unless nothing
/// changed (then the old object is returned, with its old resourceVersion).
///
/// # Errors
/// 422 Invalid for a changed RoleBinding/ClusterRoleBinding `roleRef`.
fn finish_update(
    store: &mut Store,
    w: &WriteRequest,
    old: &Value,
    mut new: Value,
    ownership: Ownership,
) -> Result<Value, ApiError> {
    let name = text(old, "/metadata/name").unwrap_or("").to_string();
    {
        let old_metadata = old.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        let metadata = metadata_mut(&mut new);
        for key in SERVER_METADATA {
            match old_metadata.get(*key) {
                Some(value) => metadata.insert((*key).to_string(), value.clone()),
                None => metadata.remove(*key),
            };
        }
        metadata.insert("managedFields".into(), old_metadata.get("managedFields").cloned().unwrap_or(json!([])));
    }
    if w.subresource == Some("status") {
        let status = new.get("status").cloned();
        new = old.clone();
        match status {
            Some(status) => new["status"] = status,
            None => {
                new.as_object_mut().map(|o| o.remove("status"));
            }
        }
    } else if w.has_status() && !w.keep_status {
        match old.get("status") {
            Some(status) => new["status"] = status.clone(),
            None => {
                new.as_object_mut().map(|o| o.remove("status"));
            }
        }
    }
    if matches!(w.res.plural, "rolebindings" | "clusterrolebindings") && old.get("roleRef") != new.get("roleRef") {
        let given = new.get("roleRef").map(Value::to_string).unwrap_or_default();
        return Err(ApiError::invalid(
            w.res,
            &name,
            "roleRef",
            &format!("Invalid value: {given}: cannot change roleRef"),
        ));
    }

    let now = now();
    let api_version = w.res.api_version();
    let writer = Writer { manager: w.manager, api_version: &api_version, subresource: w.subresource, now: &now };
    let entries = match ownership {
        Ownership::Update | Ownership::Apply => {
            let mut entries = fields::read_entries(old);
            fields::record_update(Some(old), &new, &writer, &mut entries);
            entries
        }
        Ownership::Computed(entries) => entries,
    };
    fields::write_entries(&mut new, &entries);

    let spec_changed = without(old, &["metadata", "status"]) != without(&new, &["metadata", "status"]);
    if spec_changed {
        let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        new["metadata"]["generation"] = json!(generation + 1);
    }
    if comparable(old) == comparable(&new) {
        return Ok(old.clone());
    }
    let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
        && new.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
    if w.dry_run {
        return Ok(new);
    }
    if finalized {
        return Ok(store.commit_remove(w.res, new));
    }
    Ok(store.commit_put(w.res, new))
}

/// The outcome of a DELETE.
pub enum Deleted {
    /// Gone: the object as it was, with the deletion's resourceVersion.
    Gone(Value),
    /// Finalizers hold it: the object, now carrying a deletionTimestamp.
    Pending(Value),
}

/// DELETE: removes an object, or marks it for deletion while finalizers remain.
///
/// # Errors
/// 404 when absent, 409 when a precondition (uid, resourceVersion) of `options` fails.
pub fn delete(store: &mut Store, w: &WriteRequest, name: &str, options: &Value) -> Result<Deleted, ApiError> {
    let old = store.get(w.res, w.namespace, name).cloned().ok_or_else(|| ApiError::not_found(w.res, name))?;
    for (field, pointer) in [("UID", "/metadata/uid"), ("ResourceVersion", "/metadata/resourceVersion")] {
        let key = if field == "UID" { "/preconditions/uid" } else { "/preconditions/resourceVersion" };
        if let Some(expected) = text(options, key)
            && Some(expected) != text(&old, pointer)
        {
            let actual = text(&old, pointer).unwrap_or("");
            return Err(ApiError::conflict(
                w.res,
                name,
                &format!("Precondition failed: {field} in precondition: {expected}, {field} in object meta: {actual}"),
            ));
        }
    }
    let has_finalizers = old.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if old.pointer("/metadata/deletionTimestamp").is_some() || w.dry_run {
            return Ok(Deleted::Pending(old));
        }
        let mut marked = old;
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        return Ok(Deleted::Pending(store.commit_put(w.res, marked)));
    }
    if w.dry_run {
        return Ok(Deleted::Gone(old));
    }
    Ok(Deleted::Gone(store.commit_delete(w.res, w.namespace, name).expect("found just above")))
}
