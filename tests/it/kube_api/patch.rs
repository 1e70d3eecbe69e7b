//! The non-apply patch formats: JSON merge patch (RFC 7386), which also stands in for
//! strategic merge patch, and JSON patch (RFC 6902).

use serde_json::Value;

/// Applies an RFC 7386 merge patch: objects merge key by key, `null` removes a key,
/// anything else (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let target_map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else {
            merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Strategic merge patch, treated as a merge patch: lists are replaced rather than merged
/// by key, and `$`-directives (`$patch`, `$setElementOrder/...`, `$retainKeys`) are dropped.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    merge_patch(target, &without_directives(patch));
}

fn without_directives(patch: &Value) -> Value {
    match patch {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), without_directives(v))).collect(),
        ),
        other => other.clone(),
    }
}

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`).
/// The target is left unchanged when any operation fails.
///
/// # Errors
/// A message naming the operation that failed.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("a JSON patch must be an array of operations")?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let field = |name: &str| op.get(name).and_then(Value::as_str).ok_or(format!("operation {i}: missing {name:?}"));
        let value = || op.get("value").cloned().ok_or(format!("operation {i}: missing \"value\""));
        let path = parse_pointer(field("path")?)?;
        match field("op")? {
            "add" => add(&mut doc, &path, value()?)?,
            "remove" => {
                remove(&mut doc, &path)?;
            }
            "replace" => {
                remove(&mut doc, &path)?;
                add(&mut doc, &path, value()?)?;
            }
            "move" => {
                let from = parse_pointer(field("from")?)?;
                let moved = remove(&mut doc, &from)?;
                add(&mut doc, &path, moved)?;
            }
            "copy" => {
                let from = parse_pointer(field("from")?)?;
                let copied = get(&doc, &from).cloned().ok_or(format!("operation {i}: \"from\" does not exist"))?;
                add(&mut doc, &path, copied)?;
            }
            "test" => {
                if get(&doc, &path) != Some(&value()?) {
                    return Err(format!("testing value {} failed", field("path")?));
                }
            }
            other => return Err(format!("operation {i}: unknown op {other:?}")),
        }
    }
    *target = doc;
    Ok(())
}

fn parse_pointer(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer.strip_prefix('/').ok_or(format!("invalid JSON pointer {pointer:?}"))?;
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |node, token| match node {
        Value::Object(map) => map.get(token),
        Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn parent_mut<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let missing = || format!("path /{} does not exist", path.join("/"));
    let parent_path = &path[..path.len() - 1];
    let mut node = doc;
    for token in parent_path {
        node = match node {
            Value::Object(map) => map.get_mut(token).ok_or_else(missing)?,
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)).ok_or_else(missing)?,
            _ => return Err(missing()),
        };
    }
    Ok(node)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some(last) = path.last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, path)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            let index = if last == "-" { items.len() } else { last.parse::<usize>().map_err(|_| "bad array index")? };
            if index > items.len() {
                return Err(format!("array index {index} out of bounds"));
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err(format!("cannot add below a scalar at /{}", path.join("/"))),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let missing = || format!("path /{} does not exist", path.join("/"));
    let Some(last) = path.last() else {
        return Ok(std::mem::take(doc));
    };
    match parent_mut(doc, path)? {
        Value::Object(map) => map.remove(last).ok_or_else(missing),
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => Ok(items.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}
