//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! A field is a path of object keys down to a leaf: a scalar, a list or an empty object.
//! Lists are atomic (a real server merges some lists by key; this one replaces them whole).
//! Under `metadata`, only label and annotation keys, `finalizers` and `ownerReferences` are
//! fields; `apiVersion` and `kind` never are. Every writer owns the fields it set: an
//! `Update` entry for create, replace and patch, an `Apply` entry for server-side apply.

use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedEntry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

/// A field that server-side apply would take from another manager.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub manager: String,
    pub path: FieldPath,
}

/// The fields an object (or apply configuration) sets.
pub fn leaf_paths(object: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = object.as_object() else { return out };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for section in ["labels", "annotations"] {
                    for k in value.get(section).and_then(Value::as_object).into_iter().flat_map(Map::keys) {
                        out.insert(vec!["metadata".into(), section.into(), k.clone()]);
                    }
                }
                for whole in ["finalizers", "ownerReferences"] {
                    if value.get(whole).is_some_and(|v| !v.is_null()) {
                        out.insert(vec!["metadata".into(), whole.into()]);
                    }
                }
            }
            _ => collect(value, vec![key.clone()], &mut out),
        }
    }
    out
}

fn collect(value: &Value, path: FieldPath, out: &mut FieldSet) {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let mut child_path = path.clone();
                child_path.push(key.clone());
                collect(child, child_path, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

/// Whether one path contains the other (or they are equal).
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

pub fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |node, key| node.get(key.as_str()))
}

fn set_at(object: &mut Value, path: &[String], value: Value) {
    let mut node = object;
    for key in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = node.as_object_mut().expect("made an object above").entry(key.clone()).or_insert(Value::Null);
    }
    *node = value;
}

/// Removes the field at `path`, then any object left empty above it (but not `metadata`).
fn remove_at(object: &mut Value, path: &[String]) {
    for depth in (1..=path.len()).rev() {
        let (parent_path, key) = (&path[..depth - 1], &path[depth - 1]);
        let Some(parent) = parent_path.iter().try_fold(&mut *object, |node, k| node.get_mut(k.as_str())) else {
            return;
        };
        let Some(map) = parent.as_object_mut() else { return };
        let remove = depth == path.len() || map.get(key).is_some_and(|v| v.as_object().is_some_and(Map::is_empty));
        if !remove || (depth == 1 && key == "metadata") {
            return;
        }
        map.remove(key);
    }
}

/// Reads `metadata.managedFields`.
pub fn read_entries(object: &Value) -> Vec<ManagedEntry> {
    let entries = object.pointer("/metadata/managedFields").and_then(Value::as_array);
    let text = |e: &Value, key: &str| e.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    entries
        .into_iter()
        .flatten()
        .map(|e| {
            let mut fields = FieldSet::new();
            if let Some(tree) = e.get("fieldsV1") {
                decode_fields(tree, &mut Vec::new(), &mut fields);
            }
            ManagedEntry {
                manager: text(e, "manager"),
                operation: text(e, "operation"),
                api_version: text(e, "apiVersion"),
                time: text(e, "time"),
                subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                fields,
            }
        })
        .collect()
}

fn decode_fields(tree: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    let Some(map) = tree.as_object() else { return };
    if map.is_empty() && !path.is_empty() {
        out.insert(path.clone());
        return;
    }
    for (key, child) in map {
        match key.strip_prefix("f:") {
            Some(name) => {
                path.push(name.to_string());
                decode_fields(child, path, out);
                path.pop();
            }
            // Keyed list items and "." markers (from real servers): own the whole node.
            None if !path.is_empty() => {
                out.insert(path.clone());
            }
            None => {}
        }
    }
}

/// Writes `entries` as `metadata.managedFields` (removed when there are none).
pub fn write_entries(object: &mut Value, entries: &[ManagedEntry]) {
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if entries.is_empty() {
        metadata.remove("managedFields");
        return;
    }
    let encoded = entries
        .iter()
        .map(|e| {
            let mut tree = Value::Object(Map::new());
            for path in &e.fields {
                let prefixed: Vec<String> = path.iter().map(|p| format!("f:{p}")).collect();
                set_at(&mut tree, &prefixed, json!({}));
            }
            let mut entry = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": tree,
            });
            if let Some(sub) = &e.subresource {
                entry["subresource"] = json!(sub);
            }
            entry
        })
        .collect();
    metadata.insert("managedFields".into(), Value::Array(encoded));
}

fn entry_mut<'a>(
    entries: &'a mut Vec<ManagedEntry>,
    manager: &str,
    operation: &str,
    subresource: Option<&str>,
) -> &'a mut ManagedEntry {
    let position = entries
        .iter()
        .position(|e| e.manager == manager && e.operation == operation && e.subresource.as_deref() == subresource);
    let index = position.unwrap_or_else(|| {
        entries.push(ManagedEntry {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version: String::new(),
            time: String::new(),
            subresource: subresource.map(str::to_string),
            fields: FieldSet::new(),
        });
        entries.len() - 1
    });
    &mut entries[index]
}

/// Who is writing, and when.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: Option<&'a str>,
    pub now: &'a str,
}

/// Records an `Update` by `writer` that turned `old` (absent on create) into `new`: the
/// writer takes every field whose value changed; fields that no longer exist lose their owners.
pub fn record_update(old: Option<&Value>, new: &Value, writer: &Writer, entries: &mut Vec<ManagedEntry>) {
    let changed: FieldSet =
        leaf_paths(new).into_iter().filter(|p| old.is_none_or(|o| value_at(o, p) != value_at(new, p))).collect();
    for entry in entries.iter_mut() {
        let is_writer = entry.manager == writer.manager
            && entry.operation == "Update"
            && entry.subresource.as_deref() == writer.subresource;
        entry.fields.retain(|q| value_at(new, q).is_some() && (is_writer || !changed.iter().any(|p| overlaps(p, q))));
    }
    if !changed.is_empty() {
        let entry = entry_mut(entries, writer.manager, "Update", writer.subresource);
        entry.fields.extend(changed);
        entry.api_version = writer.api_version.to_string();
        entry.time = writer.now.to_string();
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// Server-side apply of `config` (already stripped of server-owned metadata) over `live`.
///
/// The applier's fields become exactly those of `config`: fields it applied before and no
/// longer applies are removed (unless another manager also owns them), and every field of
/// `config` is set. A field owned by another manager whose value `config` would change is a
/// conflict; with `force`, ownership of it moves to the applier instead.
///
/// # Errors
/// The conflicts, when there are any and `force` is false.
pub fn apply(
    live: &Value,
    config: &Value,
    writer: &Writer,
    force: bool,
    entries: &mut Vec<ManagedEntry>,
) -> Result<Value, Vec<Conflict>> {
    let applied = leaf_paths(config);
    let is_applier = |e: &ManagedEntry| e.manager == writer.manager;
    let previously: FieldSet = entries
        .iter()
        .filter(|e| is_applier(e) && e.operation == "Apply" && e.subresource.as_deref() == writer.subresource)
        .flat_map(|e| e.fields.iter().cloned())
        .collect();

    // An empty object in the configuration says nothing about the fields inside it.
    let is_empty_object = |p: &FieldPath| value_at(config, p).is_some_and(|v| v.as_object().is_some_and(Map::is_empty));
    let differs = |p: &FieldPath, q: &FieldPath| {
        if q.len() > p.len() && is_empty_object(p) {
            return false;
        }
        let longer = if q.len() > p.len() { q } else { p };
        value_at(live, longer) != value_at(config, longer)
    };
    let mut conflicts = BTreeSet::new();
    for entry in entries.iter().filter(|e| !is_applier(e)) {
        for q in &entry.fields {
            for p in applied.iter().filter(|p| overlaps(p, q) && differs(p, q)) {
                conflicts.insert(Conflict { manager: entry.manager.clone(), path: p.clone() });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts.into_iter().collect());
    }
    for entry in entries.iter_mut().filter(|e| !is_applier(e)) {
        entry.fields.retain(|q| !applied.iter().any(|p| overlaps(p, q) && differs(p, q)));
    }

    let mut object = live.clone();
    let owned_by_others = |r: &FieldPath, entries: &[ManagedEntry]| {
        entries.iter().filter(|e| !is_applier(e)).any(|e| e.fields.iter().any(|q| overlaps(q, r)))
    };
    for gone in previously.difference(&applied) {
        if !owned_by_others(gone, entries) {
            remove_at(&mut object, gone);
        }
    }
    for p in &applied {
        if is_empty_object(p) && value_at(&object, p).is_some_and(Value::is_object) {
            continue;
        }
        set_at(&mut object, p, value_at(config, p).cloned().unwrap_or(Value::Null));
    }

    let entry = entry_mut(entries, writer.manager, "Apply", writer.subresource);
    entry.fields = applied;
    entry.api_version = writer.api_version.to_string();
    entry.time = writer.now.to_string();
    entries.retain(|e| !e.fields.is_empty());
    Ok(object)
}

/// A conflict path as a real server prints it: `.spec.rules`, `.metadata.labels.team`.
pub fn dotted(path: &[String]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}
