//! The Kubernetes manifests in `deploy/`: the base and each overlay rendered by
//! a small kustomize renderer (`kustomize` below), every rendered object read
//! through its typed k8s-openapi struct and compared with what was written (a
//! misspelled or unknown field is dropped by the struct, so it shows up as a
//! difference), and the promises of `deploy/README.md` checked on the result:
//! least-privilege RBAC, a non-root read-only pod with probes and resources,
//! the replica counts, and a config file and policy the service accepts.

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The three renderings, with the replica count each documents.
const VARIANTS: [(&str, i32); 3] = [("base", 2), ("overlays/production", 1), ("overlays/dev", 1)];

fn render(variant: &str) -> Vec<Value> {
    kustomize::render(&deploy_dir().join(variant)).unwrap_or_else(|e| panic!("rendering deploy/{variant}: {e}"))
}

/// A kustomize renderer for exactly the subset `deploy/` uses, so the test
/// needs no kustomize binary. It fails loudly on anything else rather than
/// render it differently from kustomize:
///
/// - kustomization keys: `resources` (files and directories, recursively),
///   `labels` (`pairs` on `metadata.labels` only), `images` (`newName`,
///   `newTag`, `digest`, in pod-template containers), `replicas`, `patches`
///   (`path` to a strategic-merge patch file); any other key is an error;
/// - strategic merge: maps merge recursively, `null` deletes a key, scalars
///   replace, a top-level `$patch: delete` removes the object; the only lists a
///   patch may hold are `containers` and `initContainers`, merged by `name`
///   (other lists have other merge keys or strategies in Kubernetes'
///   strategic merge patch, which this renderer does not know).
///
/// Transformers run in kustomize's order: patches, labels, replicas, images.
mod kustomize {
    use serde::Deserialize;
    use serde_json::{Map, Value, json};
    use std::path::Path;

    const KEYS: [&str; 7] = ["apiVersion", "kind", "resources", "labels", "images", "replicas", "patches"];
    const MERGED_BY_NAME: [&str; 2] = ["containers", "initContainers"];
    const SCALABLE: [&str; 4] = ["Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"];

    /// Renders the kustomization in `dir`.
    ///
    /// # Errors
    /// A message naming the file and what it uses that is not implemented or wrong.
    pub fn render(dir: &Path) -> Result<Vec<Value>, String> {
        let file = dir.join("kustomization.yaml");
        let kustomization = single_document(&file)?;
        let at = |what: &str| format!("{}: {what}", file.display());
        let map = kustomization.as_object().ok_or_else(|| at("not a map"))?;
        if let Some(key) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(at(&format!("`{key}` is not implemented by this renderer (only {})", KEYS.join(", "))));
        }
        if map.get("kind").is_some_and(|k| k != "Kustomization") {
            return Err(at("kind must be Kustomization"));
        }
        let mut objects = Vec::new();
        for resource in strings(map, "resources").map_err(|e| at(&e))? {
            let path = dir.join(&resource);
            if path.is_dir() {
                objects.extend(render(&path)?);
            } else {
                objects.extend(documents(&path)?);
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        if let Some(twice) = objects.iter().map(id).find(|i| !ids.insert(i.clone())) {
            return Err(at(&format!("{twice} is defined twice")));
        }
        for entry in list(map, "patches") {
            let path = only_key(entry, "path").map_err(|e| at(&format!("patches: {e}")))?;
            let path = dir.join(path);
            apply_patch(&mut objects, &single_document(&path)?).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        for entry in list(map, "labels") {
            labels(&mut objects, entry).map_err(|e| at(&format!("labels: {e}")))?;
        }
        for entry in list(map, "replicas") {
            replicas(&mut objects, entry).map_err(|e| at(&format!("replicas: {e}")))?;
        }
        for entry in list(map, "images") {
            images(&mut objects, entry).map_err(|e| at(&format!("images: {e}")))?;
        }
        Ok(objects)
    }

    /// `kind/namespace/name`, how objects are told apart.
    pub fn id(object: &Value) -> String {
        let meta = &object["metadata"];
        format!(
            "{}/{}/{}",
            object["kind"].as_str().unwrap_or("?"),
            meta["namespace"].as_str().unwrap_or(""),
            meta["name"].as_str().unwrap_or("?")
        )
    }

    /// The non-empty YAML documents of a file, as JSON values.
    pub fn documents(path: &Path) -> Result<Vec<Value>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        parse_documents(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(text) {
            let value = Value::deserialize(document).map_err(|e| e.to_string())?;
            if !value.is_null() {
                out.push(value);
            }
        }
        Ok(out)
    }

    fn single_document(path: &Path) -> Result<Value, String> {
        let mut documents = documents(path)?;
        if documents.len() != 1 {
            return Err(format!("{}: expected one YAML document, found {}", path.display(), documents.len()));
        }
        Ok(documents.remove(0))
    }

    fn list<'a>(map: &'a Map<String, Value>, key: &str) -> &'a [Value] {
        map.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    fn strings(map: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
        list(map, key)
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(format!("{key}: {v} is not a string")))
            .collect()
    }

    /// The value of an entry that must be a map with exactly the key `key`.
    fn only_key<'a>(entry: &'a Value, key: &str) -> Result<&'a str, String> {
        let map = entry.as_object().ok_or(format!("{entry} is not a map"))?;
        match (map.len(), map.get(key).and_then(Value::as_str)) {
            (1, Some(value)) => Ok(value),
            _ => Err(format!("{entry}: only `{key}` is implemented")),
        }
    }

    fn check_keys(entry: &Value, allowed: &[&str]) -> Result<(), String> {
        let map = entry.as_object().ok_or(format!("{entry} is not a map"))?;
        match map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(key) => Err(format!("`{key}` is not implemented (only {})", allowed.join(", "))),
            None => Ok(()),
        }
    }

    fn apply_patch(objects: &mut Vec<Value>, patch: &Value) -> Result<(), String> {
        let meta = &patch["metadata"];
        let matches = |o: &Value| {
            o["apiVersion"] == patch["apiVersion"]
                && o["kind"] == patch["kind"]
                && o["metadata"]["name"] == meta["name"]
                && (meta["namespace"].is_null() || o["metadata"]["namespace"] == meta["namespace"])
        };
        let found: Vec<usize> = (0..objects.len()).filter(|&i| matches(&objects[i])).collect();
        let [index] = found[..] else {
            return Err(format!("the patch of {} matches {} objects, not one", id(patch), found.len()));
        };
        let mut patch = patch.clone();
        match patch.as_object_mut().and_then(|m| m.remove("$patch")) {
            None => merge(&mut objects[index], &patch, ""),
            Some(directive) if directive == "delete" => {
                objects.remove(index);
                Ok(())
            }
            Some(other) => Err(format!("$patch: {other} is not implemented (only delete, at the top)")),
        }
    }

    /// Strategic merge of `patch` into `target` (both maps), as described on the module.
    fn merge(target: &mut Value, patch: &Value, path: &str) -> Result<(), String> {
        let (Some(target), Some(patch)) = (target.as_object_mut(), patch.as_object()) else {
            return Err(format!("{path}: a map is merged into something else"));
        };
        for (key, value) in patch {
            let here = format!("{path}/{key}");
            if key.starts_with('$') {
                return Err(format!("{here}: patch directives are not implemented here"));
            }
            match value {
                Value::Null => {
                    target.remove(key);
                }
                Value::Object(_) => {
                    let slot = target.entry(key.clone()).or_insert_with(|| json!({}));
                    if !slot.is_object() {
                        *slot = json!({});
                    }
                    merge(slot, value, &here)?;
                }
                Value::Array(items) if MERGED_BY_NAME.contains(&key.as_str()) => {
                    let slot = target.entry(key.clone()).or_insert_with(|| json!([]));
                    merge_by_name(slot, items, &here)?;
                }
                Value::Array(_) => {
                    return Err(format!(
                        "{here}: a list in a patch is not implemented (only {}, merged by name)",
                        MERGED_BY_NAME.join(" and ")
                    ));
                }
                scalar => {
                    target.insert(key.clone(), scalar.clone());
                }
            }
        }
        Ok(())
    }

    fn merge_by_name(target: &mut Value, items: &[Value], path: &str) -> Result<(), String> {
        let target = target.as_array_mut().ok_or(format!("{path}: not a list"))?;
        for item in items {
            let name = item["name"].as_str().ok_or(format!("{path}: an element without a name"))?;
            let here = format!("{path}[name={name}]");
            match target.iter_mut().find(|t| t["name"] == name) {
                Some(existing) => merge(existing, item, &here)?,
                None => {
                    let mut new = json!({});
                    merge(&mut new, item, &here)?;
                    target.push(new);
                }
            }
        }
        Ok(())
    }

    fn labels(objects: &mut [Value], entry: &Value) -> Result<(), String> {
        check_keys(entry, &["pairs", "includeSelectors", "includeTemplates"])?;
        for flag in ["includeSelectors", "includeTemplates"] {
            if entry.get(flag).is_some_and(|v| v != false) {
                return Err(format!("{flag}: true is not implemented"));
            }
        }
        let pairs = entry["pairs"].as_object().ok_or("pairs must be a map")?;
        for object in objects {
            let name = id(object);
            let meta = object["metadata"].as_object_mut().ok_or(format!("{name}: no metadata"))?;
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            for (key, value) in pairs {
                labels[key] = Value::String(value.as_str().ok_or(format!("label {key}: not a string"))?.into());
            }
        }
        Ok(())
    }

    fn replicas(objects: &mut [Value], entry: &Value) -> Result<(), String> {
        check_keys(entry, &["name", "count"])?;
        let count = entry["count"].as_i64().ok_or("count must be an integer")?;
        let mut found = false;
        for object in objects
            .iter_mut()
            .filter(|o| SCALABLE.iter().any(|k| o["kind"] == *k) && o["metadata"]["name"] == entry["name"])
        {
            object["spec"]["replicas"] = count.into();
            found = true;
        }
        if found { Ok(()) } else { Err(format!("no workload named {}", entry["name"])) }
    }

    fn images(objects: &mut [Value], entry: &Value) -> Result<(), String> {
        check_keys(entry, &["name", "newName", "newTag", "digest"])?;
        let field = |key: &str| entry.get(key).map(|v| v.as_str().ok_or(format!("{key} must be a string"))).transpose();
        let (name, new_name, new_tag, digest) = (field("name")?, field("newName")?, field("newTag")?, field("digest")?);
        let name = name.ok_or("name is required")?;
        for object in objects {
            // Not `object["spec"]...`: indexing a map mutably inserts what is missing.
            let Some(pod) = object.pointer_mut("/spec/template/spec") else { continue };
            for list in ["containers", "initContainers"] {
                for container in pod.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                    let Some(image) = container["image"].as_str() else { continue };
                    let (image_name, mut tag, mut image_digest) = split_image(image);
                    if image_name != name {
                        continue;
                    }
                    // kustomize: a new tag or digest replaces both the old tag and digest.
                    match (new_tag, digest) {
                        (Some(t), Some(d)) => (tag, image_digest) = (Some(t), Some(d)),
                        (Some(t), None) => (tag, image_digest) = (Some(t), None),
                        (None, Some(d)) => (tag, image_digest) = (None, Some(d)),
                        (None, None) => {}
                    }
                    let mut out = new_name.unwrap_or(image_name).to_string();
                    if let Some(tag) = tag {
                        out = format!("{out}:{tag}");
                    }
                    if let Some(digest) = image_digest {
                        out = format!("{out}@{digest}");
                    }
                    container["image"] = Value::String(out);
                }
            }
        }
        Ok(())
    }

    /// `name[:tag][@digest]`; a `:` before the last `/` is a registry port.
    pub fn split_image(image: &str) -> (&str, Option<&str>, Option<&str>) {
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (image, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        match rest[slash..].rfind(':') {
            Some(colon) => (&rest[..slash + colon], Some(&rest[slash + colon + 1..]), digest),
            None => (rest, None, digest),
        }
    }
}

/// Reads `document` through the typed struct of its kind and compares the
/// result with the document. The structs keep every field of the Kubernetes
/// schema and drop anything else, so a misspelled or unknown field is reported
/// as dropped, a missing required field as filled in, a wrong type as an error.
///
/// Normalisation: `null` values are removed from the document first (in a
/// manifest `null` means absent, and the structs serialize absent as nothing).
/// Nothing else is normalised; the manifests write quantities as strings and
/// Secrets use `stringData`, which the structs keep as written.
fn check_schema(document: &Value) -> Result<(), String> {
    let api_version = document["apiVersion"].as_str().unwrap_or("");
    let kind = document["kind"].as_str().unwrap_or("");
    let typed = match (api_version, kind) {
        ("v1", "Namespace") => round_trip::<Namespace>(document),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(document),
        ("v1", "Service") => round_trip::<Service>(document),
        ("v1", "Secret") => round_trip::<Secret>(document),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(document),
        ("v1", "PersistentVolumeClaim") => round_trip::<PersistentVolumeClaim>(document),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(document),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(document),
        ("networking.k8s.io/v1", "NetworkPolicy") => round_trip::<NetworkPolicy>(document),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(document),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => round_trip::<ClusterRoleBinding>(document),
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(document),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(document),
        _ => {
            return Err(format!(
                "{}: {api_version:?} {kind:?} is not a kind these manifests use",
                kustomize::id(document)
            ));
        }
    }
    .map_err(|e| format!("{}: {e}", kustomize::id(document)))?;
    let mut differences = Vec::new();
    compare("", &without_nulls(document), &typed, &mut differences);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(format!("{} differs from its Kubernetes schema:\n  {}", kustomize::id(document), differences.join("\n  ")))
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(document: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(document.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn compare(path: &str, written: &Value, typed: &Value, out: &mut Vec<String>) {
    match (written, typed) {
        (Value::Object(w), Value::Object(t)) => {
            for key in w.keys().chain(t.keys()).collect::<BTreeSet<_>>() {
                let here = format!("{path}/{key}");
                match (w.get(key), t.get(key)) {
                    (Some(w), Some(t)) => compare(&here, w, t, out),
                    (Some(_), None) => out.push(format!("{here}: not in the schema (misspelled or unknown), dropped")),
                    (None, Some(t)) => out.push(format!("{here}: missing (required; the schema filled in {t})")),
                    (None, None) => unreachable!("a key of either map"),
                }
            }
        }
        (Value::Array(w), Value::Array(t)) if w.len() == t.len() => {
            for (index, (w, t)) in w.iter().zip(t).enumerate() {
                compare(&format!("{path}/{index}"), w, t, out);
            }
        }
        _ if written == typed => {}
        _ => out.push(format!("{path}: {written} written, {typed} as the schema reads it")),
    }
}

/// The objects of type `T` in a rendering.
fn typed<T: Resource + DeserializeOwned>(objects: &[Value]) -> Vec<T> {
    objects
        .iter()
        .filter(|o| o["apiVersion"] == T::API_VERSION && o["kind"] == T::KIND)
        .map(|o| serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{}: {e}", kustomize::id(o))))
        .collect()
}

fn the<T: Resource + DeserializeOwned>(objects: &[Value], variant: &str) -> T {
    let mut all = typed::<T>(objects);
    assert_eq!(all.len(), 1, "deploy/{variant}: expected one {}", T::KIND);
    all.remove(0)
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_string())
}

#[test]
fn every_rendered_object_matches_the_kubernetes_schemas() {
    for (variant, _) in VARIANTS {
        let objects = render(variant);
        let errors: Vec<String> = objects.iter().filter_map(|o| check_schema(o).err()).collect();
        assert!(errors.is_empty(), "deploy/{variant}:\n{}", errors.join("\n"));
        let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for kind in ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
            assert!(kinds.contains(kind), "deploy/{variant} has no {kind}");
        }
        for kind in ["Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"] {
            assert!(kinds.contains(kind), "deploy/{variant} has no {kind}");
        }
        assert!(kinds.contains("PersistentVolumeClaim"), "deploy/{variant} keeps its data on a PersistentVolumeClaim");
        for object in &objects {
            let labels = &object["metadata"]["labels"];
            assert_eq!(labels["app.kubernetes.io/part-of"], "portcullis", "{}", kustomize::id(object));
        }
    }
}

#[test]
fn a_misspelled_field_is_caught_by_the_schema_check() {
    let manifest = |replicas_key: &str, read_only_key: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\nspec:\n  {replicas_key}: 2\n  \
             selector: {{matchLabels: {{app: x}}}}\n  template:\n    metadata: {{labels: {{app: x}}}}\n    spec:\n      \
             containers:\n        - name: x\n          image: x:1\n          \
             securityContext: {{{read_only_key}: true}}\n"
        )
    };
    let check = |text: &str| check_schema(&kustomize::parse_documents(text).unwrap()[0]);
    check(&manifest("replicas", "readOnlyRootFilesystem")).expect("the correctly spelled manifest passes");

    let error = check(&manifest("replcas", "readOnlyRootFilesystem")).unwrap_err();
    assert!(error.contains("/spec/replcas: not in the schema"), "{error}");
    // A capital S, the classic typo that Kubernetes itself would silently drop.
    let error = check(&manifest("replicas", "readOnlyRootFileSystem")).unwrap_err();
    assert!(error.contains("/securityContext/readOnlyRootFileSystem: not in the schema"), "{error}");

    let wrong_type = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: eighty}]}\n";
    assert!(check(wrong_type).is_err(), "a string where the schema wants an integer");
    let missing =
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: x}\nrules: [{resources: [pods]}]\n";
    let error = check(missing).unwrap_err();
    assert!(error.contains("/rules/0/verbs: missing"), "{error}");
}

#[test]
fn an_unknown_kind_is_refused() {
    for text in [
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: x}\n",
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: x}\n",
        "apiVersion: v2\nkind: Service\nmetadata: {name: x}\n",
    ] {
        let error = check_schema(&kustomize::parse_documents(text).unwrap()[0]).unwrap_err();
        assert!(error.contains("is not a kind these manifests use"), "{error}");
    }
}

#[test]
fn the_renderer_refuses_what_it_does_not_implement() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n");
    write("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 1}]}\n");
    write("svc-patch.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 2}]}\n");
    write("nowhere-patch.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: t}\nspec: {type: NodePort}\n");
    let cases = [
        ("resources: [cm.yaml]\nnamespace: other\n", "`namespace` is not implemented"),
        ("resources: [cm.yaml]\nconfigMapGenerator: []\n", "`configMapGenerator` is not implemented"),
        ("resources: [cm.yaml]\ncommonLabels: {a: b}\n", "`commonLabels` is not implemented"),
        ("resources: [cm.yaml]\nlabels: [{pairs: {a: b}, includeSelectors: true}]\n", "includeSelectors: true"),
        ("resources: [svc.yaml]\npatches: [{path: svc-patch.yaml}]\n", "/spec/ports: a list in a patch"),
        ("resources: [svc.yaml]\npatches: [{path: nowhere-patch.yaml}]\n", "matches 0 objects"),
        ("resources: [svc.yaml]\npatches: [{path: svc-patch.yaml, target: {kind: Service}}]\n", "only `path`"),
        ("resources: [cm.yaml, cm.yaml]\n", "defined twice"),
        ("resources: [cm.yaml]\nreplicas: [{name: c, count: 2}]\n", "no workload named"),
    ];
    for (kustomization, expected) in cases {
        write("kustomization.yaml", kustomization);
        let error = kustomize::render(dir.path()).expect_err(kustomization);
        assert!(error.contains(expected), "{kustomization}: {error}");
    }
    assert_eq!(
        kustomize::split_image("registry:5000/a/b:1.2@sha256:ff"),
        ("registry:5000/a/b", Some("1.2"), Some("sha256:ff"))
    );
    assert_eq!(kustomize::split_image("registry:5000/a/b"), ("registry:5000/a/b", None, None));
}

/// The renderer above against the real kustomize in `kubectl kustomize`, where
/// kubectl is installed (it is not needed otherwise; the test says when it
/// skips).
#[test]
fn the_renderer_agrees_with_kubectl_kustomize_when_kubectl_is_installed() {
    let available =
        std::process::Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("skipped: kubectl is not installed, so the renderer is not compared with kustomize");
        return;
    }
    let by_id = |objects: Vec<Value>| objects.into_iter().map(|o| (kustomize::id(&o), o)).collect::<BTreeMap<_, _>>();
    for (variant, _) in VARIANTS {
        let output = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(deploy_dir().join(variant))
            .output()
            .expect("running kubectl kustomize");
        assert!(
            output.status.success(),
            "kubectl kustomize deploy/{variant}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let theirs = by_id(kustomize::parse_documents(&String::from_utf8(output.stdout).unwrap()).unwrap());
        let ours = by_id(render(variant));
        assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "deploy/{variant}: objects");
        for (id, object) in &ours {
            assert_eq!(object, &theirs[id], "deploy/{variant}: {id} differs from kubectl kustomize");
        }
    }
}

fn containers(deployment: &Deployment) -> Vec<&Container> {
    let pod = deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers.iter().chain(pod.init_containers.iter().flatten()).collect()
}

#[test]
fn the_deployment_runs_as_documented() {
    for (variant, replicas) in VARIANTS {
        let objects = render(variant);
        let deployment: Deployment = the(&objects, variant);
        let spec = deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(replicas), "deploy/{variant}: replicas");
        if replicas == 1 {
            // One SQLite writer: the old pod stops before the new one starts.
            let strategy = spec.strategy.as_ref().and_then(|s| s.type_.as_deref());
            assert_eq!(strategy, Some("Recreate"), "deploy/{variant}: update strategy");
        }
        let pod = spec.template.spec.as_ref().unwrap();
        let pod_security = pod.security_context.as_ref().expect("a pod securityContext");
        assert_eq!(pod_security.run_as_non_root, Some(true), "deploy/{variant}");
        assert_eq!(pod_security.run_as_user, Some(65532), "deploy/{variant}");
        assert_eq!(pod_security.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));
        assert_eq!(pod.automount_service_account_token, Some(true), "the reconciler needs its token");
        assert_eq!(pod.service_account_name.as_deref(), Some("portcullis"));
        let spread = pod.topology_spread_constraints.as_ref().expect("replicas spread across nodes");
        assert!(spread.iter().any(|c| c.topology_key == "kubernetes.io/hostname"), "deploy/{variant}");

        for container in containers(&deployment) {
            let at = format!("deploy/{variant}: container {}", container.name);
            let security = container.security_context.as_ref().unwrap_or_else(|| panic!("{at}: no securityContext"));
            assert_eq!(security.run_as_non_root, Some(true), "{at}");
            assert_eq!(security.read_only_root_filesystem, Some(true), "{at}");
            assert_eq!(security.allow_privilege_escalation, Some(false), "{at}");
            assert_ne!(security.privileged, Some(true), "{at}");
            let drop = security.capabilities.as_ref().and_then(|c| c.drop.as_ref());
            assert_eq!(drop, Some(&vec!["ALL".to_string()]), "{at}: capabilities");
            let resources = container.resources.as_ref().unwrap_or_else(|| panic!("{at}: no resources"));
            for (what, map) in [("requests", &resources.requests), ("limits", &resources.limits)] {
                let map = map.as_ref().unwrap_or_else(|| panic!("{at}: no {what}"));
                assert!(map.contains_key("cpu") && map.contains_key("memory"), "{at}: {what} of cpu and memory");
            }
            let image = container.image.as_deref().unwrap();
            let (_, tag, digest) = kustomize::split_image(image);
            assert!(digest.is_some() || tag.is_some_and(|t| t != "latest"), "{at}: {image} is not pinned");
        }

        let main = &pod.containers[0];
        assert_eq!(pod.containers.len(), 1, "deploy/{variant}");
        assert_eq!(main.image.as_deref(), Some("ghcr.io/portcullis/portcullis:0.1.0"));
        assert_eq!(
            main.args.as_deref(),
            Some(&["serve", "--config", "/etc/portcullis/config.toml"].map(String::from)[..])
        );
        let memory_limit = if variant == "overlays/dev" { "256Mi" } else { "512Mi" };
        let limits = main.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits.get("memory"), Some(&quantity(memory_limit)), "deploy/{variant}");
        let port = main.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("http")).unwrap();
        assert_eq!(port.container_port, 8480);
        for (probe, path) in [(&main.liveness_probe, "/healthz"), (&main.readiness_probe, "/readyz")] {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{path} probe"));
            assert_eq!(get.path.as_deref(), Some(path), "deploy/{variant}");
            assert_eq!(get.port, IntOrString::String("http".into()), "deploy/{variant}");
        }
        let pod_name = main.env.iter().flatten().find(|e| e.name == "POD_NAME").expect("POD_NAME");
        let field = pod_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
        assert_eq!(field, Some("metadata.name"), "the leader-election identity comes from the downward API");

        // Every volume refers to an object of the rendering, except the key
        // Secret, which the overlays leave to be created by hand.
        let volumes = pod.volumes.as_ref().unwrap();
        let ids: BTreeSet<String> = objects.iter().map(kustomize::id).collect();
        for volume in volumes {
            if let Some(claim) = &volume.persistent_volume_claim {
                assert!(ids.contains(&format!("PersistentVolumeClaim/portcullis/{}", claim.claim_name)));
            }
            if let Some(config_map) = &volume.config_map {
                assert!(ids.contains(&format!("ConfigMap/portcullis/{}", config_map.name)));
            }
            if let Some(secret) = &volume.secret {
                assert_eq!(secret.secret_name.as_deref(), Some("portcullis-log-key"));
                let rendered = ids.contains("Secret/portcullis/portcullis-log-key");
                assert_eq!(rendered, variant == "base", "deploy/{variant}: only the base renders the placeholder key");
            }
            assert!(volume.host_path.is_none(), "deploy/{variant}: no hostPath");
        }
        let data = volumes.iter().find(|v| v.name == "data").unwrap();
        assert!(data.persistent_volume_claim.is_some() && data.empty_dir.is_none(), "data is persistent");
    }
}

/// Every (apiGroup, resource, verb) a set of rules allows.
fn permissions(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none(), "{rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

fn triples(group: &str, resources: &[&str], verbs: &[&str]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for resource in resources {
        for verb in verbs {
            out.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    out
}

#[test]
fn the_cluster_roles_hold_exactly_the_reconcilers_permissions() {
    const ALL: [&str; 7] = ["get", "list", "watch", "create", "update", "patch", "delete"];
    let rbac = "rbac.authorization.k8s.io";
    let mut reconciler = triples(rbac, &["roles", "rolebindings"], &ALL);
    reconciler.extend(triples("networking.k8s.io", &["ingresses"], &ALL));
    reconciler.extend(triples("gateway.networking.k8s.io", &["httproutes", "grpcroutes", "gateways"], &ALL));
    reconciler.extend(triples(rbac, &["clusterroles", "clusterrolebindings"], &["get", "list", "watch"]));
    let mut credentials = triples("", &["serviceaccounts"], &["get", "create", "delete"]);
    credentials.extend(triples("", &["serviceaccounts/token"], &["create"]));
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();

    for (variant, _) in VARIANTS {
        let objects = render(variant);
        let roles: BTreeMap<String, BTreeSet<_>> = typed::<ClusterRole>(&objects)
            .into_iter()
            .map(|r| (r.metadata.name.clone().unwrap(), permissions(r.rules.as_deref().unwrap_or_default())))
            .collect();
        let expected = BTreeMap::from([
            ("portcullis-credentials".to_string(), credentials.clone()),
            ("portcullis-reconciler".to_string(), reconciler.clone()),
        ]);
        assert_eq!(roles, expected, "deploy/{variant}: the ClusterRoles");
        for (group, resource, verb) in roles.values().flatten() {
            assert!(!["escalate", "bind", "impersonate", "*"].contains(&verb.as_str()), "{resource}: {verb}");
            assert!(group != "*" && resource != "*" && !resource.starts_with("secrets"), "{group}/{resource}");
            assert_ne!(resource, "leases", "leases only in the namespace's Role");
            assert!(readme.contains(&format!("`{resource}`")), "deploy/README.md does not explain `{resource}`");
        }

        // Kubernetes lets the reconciler create a Role only with verbs it
        // holds itself: it must hold every verb of every access level.
        for kind in portcullis_projections::types::Kind::ALL {
            for access in portcullis_projections::types::Access::ALL {
                for verb in access.verbs() {
                    let needed = (kind.group().to_string(), kind.resource().to_string(), verb.to_string());
                    assert!(reconciler.contains(&needed), "a grant of {access:?} on {kind:?} needs {needed:?}");
                }
            }
        }

        // Only the reconciler's role is bound cluster-wide; credential mode is
        // bound per namespace. Every binding names the ServiceAccount.
        let sa = ("ServiceAccount", "portcullis", "portcullis");
        for binding in typed::<ClusterRoleBinding>(&objects) {
            assert_eq!(
                binding.role_ref.name, "portcullis-reconciler",
                "deploy/{variant}: only the reconciler is cluster-wide"
            );
            let subjects = binding.subjects.unwrap();
            assert!(subjects.iter().all(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref().unwrap()) == sa));
        }
        for binding in typed::<RoleBinding>(&objects) {
            let subjects = binding.subjects.unwrap();
            assert!(subjects.iter().all(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref().unwrap()) == sa));
            assert!(
                binding.role_ref.kind == "Role" || binding.role_ref.name == "portcullis-credentials",
                "deploy/{variant}: {:?}",
                binding.role_ref
            );
        }
    }
}

/// The config file and policy in the ConfigMap, parsed by the service's own parsers.
fn config_files(objects: &[Value], variant: &str) -> (portcullis::config::ServeConfig, String, String) {
    let config_map: ConfigMap = the(objects, variant);
    let data = config_map.data.unwrap();
    let toml = data["config.toml"].clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &toml).unwrap();
    let file = portcullis::config::read(&path).unwrap_or_else(|e| panic!("config.toml: {e}"));
    let config = portcullis::config::merge(file, Default::default()).unwrap_or_else(|e| panic!("config.toml: {e}"));
    (config, toml, data["policy.yaml"].clone())
}

#[test]
fn leases_are_allowed_only_in_the_portcullis_namespace() {
    for (variant, _) in VARIANTS {
        let objects = render(variant);
        let (config, _, _) = config_files(&objects, variant);
        let reconciler = config.reconciler.expect("a [reconciler] section");
        let roles = typed::<Role>(&objects);
        assert_eq!(roles.len(), 1, "deploy/{variant}: the Lease Role is the only Role");
        let role = &roles[0];
        assert_eq!(role.metadata.namespace.as_deref(), Some(reconciler.lease_namespace.as_str()));
        let expected = triples("coordination.k8s.io", &["leases"], &["get", "create", "update"]);
        assert_eq!(permissions(role.rules.as_deref().unwrap()), expected, "deploy/{variant}");
        let bound = typed::<RoleBinding>(&objects).into_iter().any(|b| {
            b.role_ref.kind == "Role"
                && b.role_ref.name == *role.metadata.name.as_ref().unwrap()
                && b.metadata.namespace == role.metadata.namespace
        });
        assert!(bound, "deploy/{variant}: the Lease Role is bound");
    }
}

#[test]
fn the_config_and_policy_in_the_config_map_are_accepted_by_the_service() {
    for (variant, _) in VARIANTS {
        let objects = render(variant);
        let (config, toml, policy) = config_files(&objects, variant);
        portcullis::policy::Policy::parse(&policy).unwrap_or_else(|e| panic!("deploy/{variant}: policy.yaml: {e}"));

        let deployment: Deployment = the(&objects, variant);
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        let mount_of = |volume: &str| PathBuf::from(&mounts.iter().find(|m| m.name == volume).unwrap().mount_path);
        assert_eq!(config.data_dir, mount_of("data"), "data_dir is the data volume");
        assert!(config.tokens_path().starts_with(mount_of("data")), "tokens are kept on the data volume");
        assert_eq!(config.policy.as_deref(), Some(mount_of("config").join("policy.yaml").as_path()));
        assert_eq!(config.listen.port(), 8480);
        assert!(config.listen.ip().is_unspecified(), "listens on the pod's addresses, not loopback");
        let service: Service = the(&objects, variant);
        assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 8480);

        // The policy names only configured clusters.
        let reconciler = config.reconciler.as_ref().unwrap();
        let clusters: BTreeSet<&str> = reconciler.clusters.iter().map(|c| c.name.as_str()).collect();
        let policy: Value = serde_yaml_ng::from_str(&policy).unwrap();
        for rule in policy["rules"].as_array().unwrap() {
            for cluster in rule["match"]["clusters"].as_array().unwrap() {
                assert!(clusters.contains(cluster.as_str().unwrap()), "policy cluster {cluster} is not configured");
            }
        }

        // The key is made with the configured origin (the service refuses
        // another), as the Secret's comment says.
        let origin = config.origin.as_deref().expect("an origin");
        let secret_file = std::fs::read_to_string(deploy_dir().join("base/secret.yaml")).unwrap();
        assert!(secret_file.contains(&format!("keygen --name {origin} ")), "secret.yaml names another origin");

        // The commented-out [oidc] section is valid once uncommented.
        let start = toml.find("# [oidc]").expect("an [oidc] example");
        let commented: Vec<&str> = toml[start..].lines().take_while(|l| l.starts_with("# ")).collect();
        let end = start + commented.iter().map(|l| l.len() + 1).sum::<usize>();
        let block: String = commented.iter().map(|l| format!("{}\n", &l[2..])).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.toml"), format!("{}{block}{}", &toml[..start], &toml[end..])).unwrap();
        let file = portcullis::config::read(&dir.path().join("c.toml")).expect("the [oidc] example parses");
        assert!(portcullis::config::merge(file, Default::default()).unwrap().oidc.is_some());
    }
}

#[test]
fn no_private_key_is_committed() {
    let mut stack = vec![deploy_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(!text.contains("PRIVATE+KEY+"), "{} holds a private key", path.display());
            }
        }
    }
    let base = render("base");
    let secret: Secret = the(&base, "base");
    let placeholder = &secret.string_data.unwrap()["log.key"];
    assert!(portcullis_format::note::SignerKey::parse(placeholder).is_err(), "the placeholder is not a key");
    for variant in ["overlays/production", "overlays/dev"] {
        assert!(typed::<Secret>(&render(variant)).is_empty(), "deploy/{variant} would overwrite the real key");
    }
}

#[test]
fn the_service_budget_and_network_policy_select_the_pods() {
    for (variant, _) in VARIANTS {
        let objects = render(variant);
        let deployment: Deployment = the(&objects, variant);
        let pod_labels = deployment.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        let selects = |selector: &BTreeMap<String, String>| selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v));

        let service: Service = the(&objects, variant);
        assert!(selects(service.spec.as_ref().unwrap().selector.as_ref().unwrap()), "deploy/{variant}: Service");
        let budget: PodDisruptionBudget = the(&objects, variant);
        let budget = budget.spec.unwrap();
        assert!(selects(budget.selector.unwrap().match_labels.as_ref().unwrap()), "deploy/{variant}: PDB");
        let min_available = if variant == "overlays/dev" { 0 } else { 1 };
        assert_eq!(budget.min_available, Some(IntOrString::Int(min_available)), "deploy/{variant}");

        let policy: NetworkPolicy = the(&objects, variant);
        let policy = policy.spec.unwrap();
        assert!(selects(policy.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()), "deploy/{variant}");
        assert_eq!(policy.policy_types.as_deref(), Some(&["Ingress".to_string(), "Egress".to_string()][..]));
        let ingress = policy.ingress.unwrap();
        let ports: Vec<_> = ingress.iter().flat_map(|r| r.ports.iter().flatten()).map(|p| p.port.clone()).collect();
        assert_eq!(ports, [Some(IntOrString::Int(8480))], "deploy/{variant}: ingress only to the API port");
        assert!(ingress.iter().all(|r| r.ports.is_some()), "deploy/{variant}: no ingress rule without ports");
        let egress: BTreeSet<(String, i32)> = policy
            .egress
            .unwrap()
            .iter()
            .flat_map(|r| r.ports.iter().flatten())
            .map(|p| match &p.port {
                Some(IntOrString::Int(port)) => (p.protocol.clone().unwrap(), *port),
                other => panic!("deploy/{variant}: egress port {other:?}"),
            })
            .collect();
        let expected = [("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443)].map(|(p, n)| (p.to_string(), n));
        assert_eq!(egress, BTreeSet::from(expected), "deploy/{variant}: egress is DNS and the API server");
    }
}
