//! Kubernetes `Status` objects: the body of every error answer, shaped as
//! `k8s.io/apimachinery/pkg/apis/meta/v1.Status` so clients (kube-rs
//! `kube::core::Status`) can read the code and reason.

use super::resources::ResourceType;
use serde_json::{Value, json};

/// A failed API request, answered as a `Status` with `code` as the HTTP status.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status (name, group, kind, causes), when the error is about one object.
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn about(mut self, res: &ResourceType, name: &str) -> ApiError {
        let mut details = json!({"kind": res.plural});
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        if !res.group.is_empty() {
            details["group"] = json!(res.group);
        }
        self.details = Some(details);
        self
    }

    /// 404 for an object (or collection) that does not exist.
    pub fn not_found(res: &ResourceType, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", res.qualified())).about(res, name)
    }

    /// 404 for a path that names no resource this server knows.
    pub fn unknown_path(path: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }

    /// 409 AlreadyExists for a create of an existing name.
    pub fn already_exists(res: &ResourceType, name: &str) -> ApiError {
        ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", res.qualified())).about(res, name)
    }

    /// 409 Conflict for a stale resourceVersion or a failed precondition.
    pub fn stale(res: &ResourceType, name: &str) -> ApiError {
        ApiError::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 Conflict with the message in the form a real API server uses.
    pub fn conflict(res: &ResourceType, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": {why}", res.qualified()),
        )
        .about(res, name)
    }

    /// 422 Invalid: `field` of the object breaks a validation rule.
    pub fn invalid(res: &ResourceType, name: &str, field: &str, why: &str) -> ApiError {
        let group_kind =
            if res.group.is_empty() { res.kind.to_string() } else { format!("{}.{}", res.kind, res.group) };
        let mut error = ApiError::new(422, "Invalid", format!("{group_kind} \"{name}\" is invalid: {field}: {why}"));
        let mut details = json!({
            "name": name,
            "kind": res.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": why, "field": field}],
        });
        if !res.group.is_empty() {
            details["group"] = json!(res.group);
        }
        error.details = Some(details);
        error
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format ({content_type})"),
        )
    }

    /// 410 Expired: a watch from a resourceVersion older than the retained history.
    pub fn expired(resource_version: u64) -> ApiError {
        ApiError::new(410, "Expired", format!("too old resource version: {resource_version}"))
    }

    /// An injected failure with the reason a real API server gives for that code.
    pub fn injected(code: u16) -> ApiError {
        let (reason, message) = match code {
            400 => ("BadRequest", "injected bad request"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "injected forbidden"),
            404 => ("NotFound", "injected not found"),
            409 => ("Conflict", "injected conflict"),
            410 => ("Expired", "injected expiry"),
            429 => ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
            500 => ("InternalError", "Internal error occurred: injected failure"),
            503 => ("ServiceUnavailable", "the server is currently unable to handle the request"),
            504 => ("Timeout", "the server was unable to return a response in the time allotted"),
            _ => ("", "injected failure"),
        };
        ApiError::new(code, reason, message)
    }

    /// The Status object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}
