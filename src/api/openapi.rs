//! The OpenAPI 3.1 document of the API, built from the operation table below
//! and served at `/v1/openapi.json`. `schemas/openapi.json` is this document,
//! committed; a test fails when they drift, and another calls every operation
//! listed here against the router, so the table cannot name a route that does
//! not exist.

use serde_json::{Value, json};

/// One operation: method, path, id, summary, whether it needs a bearer token,
/// the request body's schema, and the success response's status and schema.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub id: &'static str,
    pub summary: &'static str,
    pub auth: bool,
    pub body: Option<&'static str>,
    pub success: (u16, &'static str),
    /// Query parameters: name and whether required.
    pub query: &'static [(&'static str, bool)],
}

const fn op(method: &'static str, path: &'static str, id: &'static str, summary: &'static str) -> Operation {
    Operation { method, path, id, summary, auth: true, body: None, success: (200, "Any"), query: &[] }
}

/// Every operation the service serves.
pub const OPERATIONS: &[Operation] = &[
    Operation { auth: false, success: (200, "Text"), ..op("get", "/healthz", "healthz", "Liveness") },
    Operation {
        auth: false,
        success: (200, "Text"),
        ..op("get", "/readyz", "readyz", "Readiness: the store is readable")
    },
    Operation { auth: false, success: (200, "Text"), ..op("get", "/metrics", "metrics", "Prometheus metrics") },
    Operation {
        auth: false,
        success: (200, "Text"),
        ..op("get", "/checkpoint", "checkpoint", "The latest signed checkpoint (C2SP tlog-tiles)")
    },
    Operation {
        auth: false,
        success: (200, "Binary"),
        ..op("get", "/tile/{path}", "tile", "A hash tile or entry bundle (C2SP tlog-tiles)")
    },
    Operation { auth: false, success: (200, "OpenApi"), ..op("get", "/v1/openapi.json", "openapi", "This document") },
    Operation {
        auth: false,
        success: (200, "LedgerSummary"),
        ..op("get", "/v1/ledger", "ledgerSummary", "Origin, size, root and verifier key")
    },
    Operation {
        auth: false,
        success: (200, "Text"),
        ..op("get", "/v1/ledger/checkpoint", "ledgerCheckpoint", "The latest signed checkpoint")
    },
    Operation {
        auth: false,
        success: (200, "Keys"),
        ..op("get", "/v1/ledger/keys", "ledgerKeys", "The log's keys and the entries each signs")
    },
    Operation {
        auth: false,
        success: (200, "EntryPage"),
        query: &[("cursor", false), ("limit", false)],
        ..op("get", "/v1/ledger/entries", "ledgerEntries", "Entries, a page at a time")
    },
    Operation {
        auth: false,
        success: (200, "Text"),
        ..op("get", "/v1/ledger/entries/{seq}", "ledgerEntry", "One entry: the signed note")
    },
    Operation {
        auth: false,
        success: (200, "InclusionProof"),
        query: &[("index", true), ("size", true)],
        ..op("get", "/v1/ledger/proofs/inclusion", "inclusionProof", "RFC 9162 inclusion proof")
    },
    Operation {
        auth: false,
        success: (200, "ConsistencyProof"),
        query: &[("old", true), ("new", true)],
        ..op("get", "/v1/ledger/proofs/consistency", "consistencyProof", "RFC 9162 consistency proof")
    },
    Operation {
        auth: false,
        success: (200, "Text"),
        ..op("get", "/v1/ledger/evidence/{seq}", "evidence", "The tlog-proof evidence file of one entry")
    },
    Operation { success: (200, "Whoami"), ..op("get", "/v1/whoami", "whoami", "The authenticated identity") },
    Operation {
        body: Some("NewRequest"),
        success: (201, "Request"),
        ..op("post", "/v1/requests", "createRequest", "Ask for access (Idempotency-Key honoured)")
    },
    Operation {
        success: (200, "RequestPage"),
        query: &[("status", false), ("cursor", false), ("limit", false)],
        ..op("get", "/v1/requests", "listRequests", "Requests, oldest first")
    },
    Operation { success: (200, "Request"), ..op("get", "/v1/requests/{id}", "showRequest", "One request") },
    Operation {
        body: Some("Comment"),
        success: (200, "Decision"),
        ..op("post", "/v1/requests/{id}/approve", "approveRequest", "Approve (never your own)")
    },
    Operation {
        body: Some("Comment"),
        success: (200, "Decision"),
        ..op("post", "/v1/requests/{id}/deny", "denyRequest", "Deny")
    },
    Operation {
        success: (200, "Decision"),
        ..op("post", "/v1/requests/{id}/cancel", "cancelRequest", "Withdraw your own pending request")
    },
    Operation {
        success: (200, "GrantPage"),
        query: &[("active", false), ("cursor", false), ("limit", false)],
        ..op("get", "/v1/grants", "listGrants", "Grants, oldest first")
    },
    Operation { success: (200, "Grant"), ..op("get", "/v1/grants/{id}", "showGrant", "One grant with its RBAC rules") },
    Operation {
        body: Some("Comment"),
        success: (200, "Grant"),
        ..op("post", "/v1/grants/{id}/end", "endGrant", "End your grant early")
    },
    Operation {
        body: Some("Extend"),
        success: (200, "Grant"),
        ..op("post", "/v1/grants/{id}/extend", "extendGrant", "Ask for more time")
    },
    Operation {
        body: Some("Reason"),
        success: (200, "Grant"),
        ..op("post", "/v1/grants/{id}/revoke", "revokeGrant", "Take a grant away")
    },
    Operation {
        body: Some("Review"),
        success: (200, "Grant"),
        ..op("post", "/v1/grants/{id}/review", "reviewBreakGlass", "Review a break-glass use")
    },
    Operation {
        body: Some("Comment"),
        success: (200, "Grant"),
        ..op("post", "/v1/extensions/{id}/approve", "approveExtension", "Approve an extension")
    },
    Operation {
        body: Some("Comment"),
        success: (200, "Grant"),
        ..op("post", "/v1/extensions/{id}/deny", "denyExtension", "Deny an extension")
    },
    Operation {
        success: (200, "Access"),
        query: &[("cluster", true), ("namespace", true), ("kind", true), ("name", false), ("at", false)],
        ..op("get", "/v1/access", "accessAt", "Who could do what to an object at a time")
    },
    Operation {
        success: (200, "Policy"),
        ..op("get", "/v1/policy", "showPolicy", "The policy in force and pending proposals")
    },
    Operation {
        body: Some("PolicyText"),
        success: (201, "PolicyStatus"),
        ..op("post", "/v1/policy", "proposePolicy", "Propose a policy (admins)")
    },
    Operation {
        success: (200, "PolicyStatus"),
        ..op("post", "/v1/policy/{hash}/approve", "approvePolicy", "Put a proposed policy in force (a second admin)")
    },
    Operation {
        body: Some("NewReport"),
        success: (201, "ReportBundle"),
        ..op("post", "/v1/reports", "createReport", "Write a SOC 2 evidence bundle under the data directory (admins)")
    },
    Operation {
        success: (200, "Credential"),
        ..op(
            "post",
            "/v1/grants/{id}/kubeconfig",
            "grantKubeconfig",
            "Your grant's ServiceAccount token as a kubeconfig, once (credential mode)",
        )
    },
    Operation {
        success: (200, "ClusterList"),
        ..op("get", "/v1/clusters", "listClusters", "Each cluster's reconciler: leadership, sync, counters")
    },
    Operation {
        success: (200, "StandingAccess"),
        ..op(
            "get",
            "/v1/clusters/{cluster}/standing-access",
            "standingAccess",
            "Bindings made outside Portcullis that let people edit the managed kinds",
        )
    },
    Operation {
        success: (200, "EventStream"),
        query: &[("cursor", false)],
        ..op("get", "/v1/events", "events", "The ledger as Server-Sent Events, then live")
    },
];

fn string() -> Value {
    json!({"type": "string"})
}

const LABEL: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
const SUBDOMAIN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
const DURATION: &str = "^([1-9][0-9]{0,2}d)?([1-9][0-9]{0,3}h)?([1-9][0-9]{0,4}m)?([1-9][0-9]{0,5}s)?$";
/// Free text: no control characters but newline (what the handlers refuse).
const TEXT: &str = "^[^\\u0000-\\u0009\\u000b-\\u001f\\u007f-\\u009f]*$";
const KINDS: [&str; 4] = ["ingresses", "httproutes", "grpcroutes", "gateways"];

/// The schema of a path or query parameter, by name: what the handlers accept.
fn parameter_schema(name: &str) -> Value {
    match name {
        "id" => json!({"type": "string", "pattern": "^[0-9a-f]{32}$"}),
        "hash" => json!({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
        "seq" | "cursor" | "index" | "size" | "old" | "new" => json!({"type": "string", "pattern": "^[0-9]{1,15}$"}),
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        "status" => json!({"enum": ["pending", "granted", "denied", "cancelled", "expired"]}),
        "active" => json!({"enum": ["true", "false"]}),
        "cluster" | "namespace" => json!({"type": "string", "pattern": LABEL}),
        "name" => json!({"type": "string", "pattern": SUBDOMAIN, "maxLength": 253}),
        "kind" => json!({"enum": KINDS}),
        "at" => {
            json!({"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$"})
        }
        _ => string(),
    }
}

fn nullable_string() -> Value {
    json!({"type": ["string", "null"]})
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn open_object(properties: Value) -> Value {
    json!({"type": "object", "properties": properties})
}

fn schemas() -> Value {
    let approval = object(json!({"by": string(), "at": string(), "comment": nullable_string()}), &["by", "at"]);
    let target = open_object(json!({
        "cluster": string(), "namespace": string(),
        "kind": {"enum": ["ingresses", "httproutes", "grpcroutes", "gateways"]},
        "access": {"enum": ["view", "edit", "manage"]},
        "names": {"type": "array", "items": string()},
    }));
    let page = |item: &str| {
        open_object(
            json!({"items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}}, "next_cursor": nullable_string()}),
        )
    };
    json!({
        "Problem": open_object(json!({"type": string(), "title": string(), "status": {"type": "integer"}, "detail": string(), "field": string()})),
        "Any": {},
        "ClusterList": page("Cluster"),
        "Credential": object(
            json!({"grant_id": string(), "service_account": string(), "expires_at": string(), "kubeconfig": string()}),
            &["grant_id", "service_account", "expires_at", "kubeconfig"],
        ),
        "Cluster": open_object(json!({
            "name": string(), "leader": {"type": "boolean"}, "synced": {"type": "boolean"},
            "last_error": nullable_string(), "applied": {"type": "integer"}, "removed": {"type": "integer"},
            "removed_late": {"type": "integer"}, "drift": {"type": "integer"}, "standing_access": {"type": "integer"},
        })),
        "StandingAccess": open_object(json!({
            "cluster": string(), "scanned_at": nullable_string(),
            "items": {"type": "array", "items": open_object(json!({
                "binding_kind": {"enum": ["RoleBinding", "ClusterRoleBinding"]}, "namespace": string(), "name": string(),
                "role": string(), "subjects": {"type": "array", "items": string()},
                "kinds": {"type": "array", "items": string()},
            }))},
        })),
        "Text": string(),
        "Binary": {"type": "string", "contentEncoding": "binary"},
        "OpenApi": {"type": "object"},
        "EventStream": {"type": "object", "description": "each event's data is the canonical JSON of a ledger event"},
        "Approval": approval,
        "Target": target,
        "NewRequest": object(json!({
            "cluster": {"type": "string", "pattern": LABEL}, "namespace": {"type": "string", "pattern": LABEL},
            "kind": {"enum": KINDS},
            "names": {"type": "array", "items": {"type": "string", "pattern": SUBDOMAIN, "maxLength": 253}, "maxItems": 32},
            "access": {"enum": ["view", "edit", "manage"]},
            "duration": {"type": "string", "pattern": DURATION, "minLength": 2, "examples": ["30m", "2h", "1h30m"]},
            "reason": {"type": "string", "maxLength": 1000, "pattern": TEXT},
            "ticket": {"type": ["string", "null"], "maxLength": 100},
            "break_glass": {"type": "boolean"},
        }), &["cluster", "namespace", "kind", "access", "duration"]),
        "Request": open_object(json!({
            "id": string(), "status": {"enum": ["pending", "granted", "denied", "cancelled", "expired"]},
            "requester": open_object(json!({"sub": string(), "groups": {"type": "array", "items": string()}})),
            "created_at": string(), "target": {"$ref": "#/components/schemas/Target"}, "duration": string(),
            "reason": string(), "ticket": nullable_string(), "break_glass": {"type": "boolean"},
            "approvals_needed": {"type": "integer"}, "approvals": {"type": "array", "items": {"$ref": "#/components/schemas/Approval"}},
            "pending_expires_at": string(), "rule": string(), "policy_hash": string(), "grant_id": nullable_string(),
            "closed": {"oneOf": [{"$ref": "#/components/schemas/Approval"}, {"type": "null"}]}, "seq": {"type": "integer"},
        })),
        "Grant": open_object(json!({
            "id": string(), "request_id": string(), "status": {"enum": ["active", "ended", "revoked", "expired"]},
            "requester": string(), "target": {"$ref": "#/components/schemas/Target"}, "starts_at": string(),
            "expires_at": string(), "approvers": {"type": "array", "items": string()}, "break_glass": {"type": "boolean"},
            "review_due": nullable_string(), "rbac": {"type": "array", "items": {"type": "object"}},
            "rule": string(), "policy_hash": string(), "extensions": {"type": "array", "items": {"type": "object"}},
            "seq": {"type": "integer"},
        })),
        "Decision": open_object(json!({"request": {"$ref": "#/components/schemas/Request"}, "grant": {"oneOf": [{"$ref": "#/components/schemas/Grant"}, {"type": "null"}]}})),
        "RequestPage": page("Request"),
        "GrantPage": page("Grant"),
        "Comment": object(json!({"comment": {"type": ["string", "null"], "maxLength": 1000, "pattern": TEXT}}), &[]),
        "Reason": object(json!({"reason": {"type": "string", "maxLength": 1000, "pattern": TEXT}}), &["reason"]),
        "Review": object(json!({"comment": {"type": "string", "maxLength": 1000, "pattern": TEXT}}), &["comment"]),
        "Extend": object(json!({"duration": string(), "reason": {"type": "string", "maxLength": 1000, "pattern": TEXT}}), &["duration", "reason"]),
        "NewReport": object(json!({"report": {"enum": ["soc2"]}, "from": string(), "to": string(), "anchor": nullable_string()}), &["from", "to"]),
        "ReportBundle": open_object(json!({"path": string(), "manifest_sha256": string(), "entries": open_object(json!({"first_seq": {"type": "integer"}, "end_seq": {"type": "integer"}})), "checkpoint_size": {"type": "integer"}, "period_closed": {"type": "boolean"}, "exceptions": {"type": "integer"}, "event_seq": {"type": "integer"}})),
        "PolicyText": object(json!({"text": string()}), &["text"]),
        "PolicyStatus": open_object(json!({"hash": string(), "status": string()})),
        "Policy": open_object(json!({"active": {"type": ["object", "null"]}, "proposals": {"type": "array", "items": {"type": "object"}}})),
        "Whoami": open_object(json!({"sub": string(), "groups": {"type": "array", "items": string()}, "via": string(), "admin": {"type": "boolean"}})),
        "Access": open_object(json!({"at": string(), "grants": {"type": "array", "items": {"type": "object"}}})),
        "LedgerSummary": open_object(json!({"origin": string(), "size": {"type": "integer"}, "root": string(), "checkpoint_size": {"type": ["integer", "null"]}, "verifier_key": nullable_string()})),
        "Keys": open_object(json!({"keys": {"type": "array", "items": open_object(json!({"vkey": string(), "from_seq": {"type": "integer"}}))}})),
        "EntryPage": open_object(json!({"entries": {"type": "array", "items": open_object(json!({"seq": {"type": "integer"}, "leaf_hash": string(), "entry": string()}))}, "next_cursor": nullable_string()})),
        "InclusionProof": open_object(json!({"index": {"type": "integer"}, "size": {"type": "integer"}, "root": string(), "hashes": {"type": "array", "items": string()}})),
        "ConsistencyProof": open_object(json!({"old": {"type": "integer"}, "new": {"type": "integer"}, "hashes": {"type": "array", "items": string()}})),
    })
}

fn media(schema: &str) -> &'static str {
    match schema {
        "Text" => "text/plain",
        "Binary" => "application/octet-stream",
        "EventStream" => "text/event-stream",
        _ => "application/json",
    }
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for operation in OPERATIONS {
        let mut parameters: Vec<Value> = operation
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": parameter_schema(name)}))
            .collect();
        parameters.extend(
            operation
                .query
                .iter()
                .map(|(name, required)| json!({"name": name, "in": "query", "required": required, "schema": parameter_schema(name)})),
        );
        if operation.id == "createRequest" {
            parameters.push(json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 200}}));
        }
        let (status, schema) = operation.success;
        let mut responses = serde_json::Map::new();
        responses.insert(
            status.to_string(),
            json!({"description": "success", "content": {media(schema): {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
        );
        let problem = json!({"description": "problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
        let mut errors = vec!["400", "404", "500", "503"];
        if operation.auth {
            errors.extend(["401", "403", "409", "422", "429"]);
        }
        for code in errors {
            responses.insert(code.to_string(), problem.clone());
        }
        let mut entry = json!({
            "operationId": operation.id,
            "summary": operation.summary,
            "parameters": parameters,
            "responses": responses,
        });
        if operation.auth {
            entry["security"] = json!([{"bearer": []}]);
        }
        if let Some(body) = operation.body {
            entry["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        let item = paths.entry(operation.path.to_string()).or_insert_with(|| json!({}));
        item[operation.method] = entry;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Portcullis", "version": env!("CARGO_PKG_VERSION"), "description": "Just-in-time, approval-gated access to Kubernetes routes, with a verifiable ledger. Errors are RFC 9457 problem+json."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}
