//! The access workflow over HTTP: requests, decisions, grants, extensions,
//! point-in-time access and whoami, under `/v1`. Every route authenticates
//! with a bearer token; the actor recorded in the ledger is the token's.

use super::{ApiError, AppState};
use crate::domain::decide::{Command, Rejection};
use crate::domain::events::RbacRule;
use crate::domain::state::{Approval, Grant, GrantStatus, Request, RequestStatus, State};
use crate::domain::types::{Access, Kind, Name, Span, Target};
use crate::workflow::{Workflow, WorkflowError, random_seed};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use portcullis_format::event::{Actor, EventId};
use portcullis_format::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

type Shared = AxumState<Arc<AppState>>;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/requests", post(create_request).get(list_requests))
        .route("/v1/requests/{id}", get(show_request))
        .route("/v1/requests/{id}/approve", post(approve))
        .route("/v1/requests/{id}/deny", post(deny))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/grants", get(list_grants))
        .route("/v1/grants/{id}", get(show_grant))
        .route("/v1/grants/{id}/end", post(end))
        .route("/v1/grants/{id}/extend", post(extend))
        .route("/v1/grants/{id}/revoke", post(revoke))
        .route("/v1/grants/{id}/review", post(review))
        .route("/v1/extensions/{id}/approve", post(approve_extension))
        .route("/v1/extensions/{id}/deny", post(deny_extension))
        .route("/v1/access", get(access))
        .route("/v1/policy", get(show_policy).post(propose_policy))
        .route("/v1/policy/{hash}/approve", post(approve_policy))
}

/// The authenticated actor, from `Authorization: Bearer <token>`.
pub(super) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Actor, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <token>".into()))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthorized("malformed Authorization header; expected Bearer <token>".into()))?;
    let token = token.trim();
    let actor = match &state.oidc {
        // A JWT (three dot-separated parts) goes to OIDC; anything else is a static token.
        Some(oidc) if token.matches('.').count() == 2 => {
            let now = Timestamp::now().unix_micros() / 1_000_000;
            oidc.authenticate(token, now).map_err(ApiError::Unauthorized)?
        }
        _ => state
            .tokens
            .authenticate(token)
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("unknown or revoked token".into()))?,
    };
    state.limiter.admit(&actor.sub).map_err(ApiError::TooManyRequests)?;
    Ok(actor)
}

fn workflow(state: &AppState) -> Result<&Arc<Workflow>, ApiError> {
    state.workflow.as_ref().ok_or_else(|| {
        ApiError::Unavailable("the access workflow is not configured: start serve with --policy FILE".into())
    })
}

/// The current state for a look-up by id: when `holds` says it lacks the
/// id, the state is first caught up with the ledger store, so an id another
/// replica has just acknowledged is found here too.
async fn current_holding(
    workflow: &Workflow,
    holds: impl Fn(&State) -> bool,
) -> Result<tokio::sync::RwLockReadGuard<'_, State>, ApiError> {
    let current = workflow.current().await?;
    if holds(&current) {
        return Ok(current);
    }
    drop(current);
    Ok(workflow.current_from_store().await?)
}

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> Self {
        match e {
            WorkflowError::Rejected(rejection) => match rejection {
                Rejection::NotFound(m) => ApiError::NotFound(m),
                Rejection::Forbidden(m) => ApiError::Forbidden(m),
                Rejection::Denied(d) => ApiError::Forbidden(d.to_string()),
                Rejection::Conflict(m) => ApiError::Conflict(m),
                Rejection::Invalid { field, reason } => ApiError::Unprocessable { field, reason },
                Rejection::NoPolicy => ApiError::Unavailable("no access policy is in force".into()),
            },
            WorkflowError::Append(crate::ledger::AppendError::Closed) => {
                ApiError::Unavailable("the ledger is shutting down".into())
            }
            WorkflowError::Append(crate::ledger::AppendError::Stale { .. }) => {
                ApiError::Unavailable("other replicas kept appending while this command was decided; retry it".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

pub(super) fn parse_id(what: &str, s: &str) -> Result<EventId, ApiError> {
    EventId::parse(s).ok_or_else(|| ApiError::NotFound(format!("{s:?} is not a {what} id (32 lowercase hex digits)")))
}

/// Parses a JSON body strictly, naming the field on error.
fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| ApiError::Unprocessable { field: "body".into(), reason: e.to_string() })
}

fn request_view(r: &Request) -> Value {
    json!({
        "id": r.id.to_string(),
        "status": r.status.as_str(),
        "requester": {"sub": r.requester.sub, "groups": r.requester.groups},
        "created_at": r.created_at.to_string(),
        "target": TargetView::from(&*r.target),
        "duration": r.duration.to_string(),
        "reason": r.reason,
        "ticket": r.ticket,
        "break_glass": r.break_glass,
        "approvals_needed": r.approvals_needed,
        "approvals": r.approvals.iter().map(ApprovalView::from).collect::<Vec<_>>(),
        "pending_expires_at": r.pending_expires_at.to_string(),
        "rule": r.basis.rule,
        "policy_hash": r.basis.policy_hash,
        "grant_id": r.grant.map(|g| g.to_string()),
        "closed": r.closed.as_ref().map(ApprovalView::from),
        "seq": r.seq,
    })
}

/// A grant as the API shows it, serialized directly (no intermediate
/// `serde_json::Value` tree: the active-grants listing is a hot path). Fields
/// are in alphabetical order, as the value trees wrote them.
#[derive(Serialize)]
struct GrantView<'a> {
    approvers: &'a [String],
    break_glass: bool,
    ended: Option<ApprovalView<'a>>,
    expires_at: String,
    extensions: Vec<ExtensionView<'a>>,
    id: String,
    policy_hash: &'a str,
    rbac: &'a [RbacRule],
    request_id: String,
    requester: &'a str,
    review_due: Option<String>,
    reviewed: Option<ApprovalView<'a>>,
    rule: &'a str,
    seq: u64,
    starts_at: String,
    status: &'static str,
    target: TargetView<'a>,
}

#[derive(Serialize)]
struct ApprovalView<'a> {
    at: String,
    by: &'a str,
    comment: Option<&'a str>,
}

impl<'a> From<&'a Approval> for ApprovalView<'a> {
    fn from(a: &'a Approval) -> Self {
        ApprovalView { at: a.at.to_string(), by: &a.by, comment: a.comment.as_deref() }
    }
}

#[derive(Serialize)]
struct TargetView<'a> {
    access: Access,
    cluster: &'a Name,
    kind: Kind,
    names: &'a [Name],
    namespace: &'a Name,
}

impl<'a> From<&'a Target> for TargetView<'a> {
    fn from(t: &'a Target) -> Self {
        TargetView { access: t.access, cluster: &t.cluster, kind: t.kind, names: &t.names, namespace: &t.namespace }
    }
}

#[derive(Serialize)]
struct ExtensionView<'a> {
    approvals: Vec<ApprovalView<'a>>,
    approvals_needed: u32,
    duration: String,
    id: String,
    reason: &'a str,
    status: String,
}

fn grant_view<'a>(state: &'a State, g: &'a Grant) -> GrantView<'a> {
    let extensions = g
        .extensions
        .iter()
        .filter_map(|id| state.extensions.get(id))
        .map(|x| ExtensionView {
            approvals: x.approvals.iter().map(ApprovalView::from).collect(),
            approvals_needed: x.approvals_needed,
            duration: x.duration.to_string(),
            id: x.id.to_string(),
            reason: &x.reason,
            status: format!("{:?}", x.status).to_lowercase(),
        })
        .collect();
    GrantView {
        approvers: &g.approvers,
        break_glass: g.break_glass,
        ended: g.ended.as_ref().map(ApprovalView::from),
        expires_at: g.expires_at.to_string(),
        extensions,
        id: g.id.to_string(),
        policy_hash: &g.basis.policy_hash,
        rbac: &g.rbac,
        request_id: g.request_id.to_string(),
        requester: &g.requester,
        review_due: g.review_due.map(|t| t.to_string()),
        reviewed: g.reviewed.as_ref().map(ApprovalView::from),
        rule: &g.basis.rule,
        seq: g.seq,
        starts_at: g.starts_at.to_string(),
        status: g.status.as_str(),
        target: TargetView::from(&g.target),
    }
}

async fn whoami(AxumState(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    let actor = authenticate(&state, &headers)?;
    let admin = state.workflow.as_ref().and_then(|w| w.policy()).is_some_and(|p| p.is_admin(&actor));
    Ok(Json(json!({"sub": actor.sub, "groups": actor.groups, "via": actor.via, "admin": admin})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRequest {
    cluster: String,
    namespace: String,
    kind: String,
    #[serde(default)]
    names: Vec<String>,
    access: String,
    duration: String,
    #[serde(default)]
    reason: String,
    ticket: Option<String>,
    #[serde(default)]
    break_glass: bool,
}

/// The seed of a command's event ids: derived from the `Idempotency-Key`
/// when one is given (so a retry produces the same ids), random otherwise.
fn seed(actor: &Actor, headers: &HeaderMap, route: &str) -> Result<[u8; 16], ApiError> {
    let Some(key) = headers.get("idempotency-key") else { return Ok(random_seed()) };
    let key = key.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 200).ok_or_else(|| ApiError::Unprocessable {
        field: "Idempotency-Key".into(),
        reason: "must be 1 to 200 visible ASCII characters".into(),
    })?;
    let digest = Sha256::new()
        .chain_update(actor.sub.as_bytes())
        .chain_update([0])
        .chain_update(route)
        .chain_update([0])
        .chain_update(key)
        .finalize();
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&digest[..16]);
    Ok(seed)
}

async fn create_request(
    AxumState(state): Shared,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let actor = authenticate(&state, &headers)?;
    let workflow = workflow(&state)?;
    let input: NewRequest = body(&bytes)?;
    let field = |e: crate::domain::types::InvalidValue| ApiError::Unprocessable { field: e.field, reason: e.reason };
    let target = Target {
        cluster: Name::label("cluster", &input.cluster).map_err(field)?,
        namespace: Name::label("namespace", &input.namespace).map_err(field)?,
        kind: Kind::parse("kind", &input.kind).map_err(field)?,
        names: input.names.iter().map(|n| Name::subdomain("names", n)).collect::<Result<_, _>>().map_err(field)?,
        access: Access::parse("access", &input.access).map_err(field)?,
    };
    let duration = Span::parse("duration", &input.duration).map_err(field)?;
    let seed = seed(&actor, &headers, "POST /v1/requests")?;
    // A retried POST with the same Idempotency-Key finds the request it already created.
    let request_id = crate::domain::decide::Context { actor: actor.clone(), now: Timestamp::EPOCH, seed }.id(0);
    if let Some(existing) = workflow.current().await?.requests.get(&request_id) {
        return Ok((StatusCode::OK, Json(request_view(existing))).into_response());
    }
    let command = Command::Request {
        target,
        duration,
        reason: input.reason,
        ticket: input.ticket.filter(|t| !t.is_empty()),
        break_glass: input.break_glass,
    };
    if let Err(e) = workflow.execute(command, actor, seed).await {
        // A concurrent retry with the same key got there first: answer with its request.
        if let Some(existing) = workflow.current().await?.requests.get(&request_id) {
            return Ok((StatusCode::OK, Json(request_view(existing))).into_response());
        }
        return Err(e.into());
    }
    let state = workflow.current().await?;
    let request = state
        .requests
        .get(&request_id)
        .ok_or_else(|| ApiError::Internal("the new request is not in the state".into()))?;
    Ok((StatusCode::CREATED, Json(request_view(request))).into_response())
}

/// `status`, `cursor` (a seq) and `limit` for list endpoints.
struct ListQuery {
    filter: Option<String>,
    cursor: u64,
    limit: usize,
}

fn list_query(raw: Option<String>, filter_name: &'static str) -> Result<ListQuery, ApiError> {
    let params = super::ledger::query_params(raw, &[filter_name, "cursor", "limit"])?;
    let get = |name: &str| params.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    let cursor = get("cursor").map(|c| super::ledger::parse_u64("cursor", &c)).transpose()?.unwrap_or(0);
    let limit = get("limit").map(|l| super::ledger::parse_u64("limit", &l)).transpose()?.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::InvalidParameter { name: "limit", reason: "must be 1 to 1000".into() });
    }
    Ok(ListQuery { filter: get(filter_name), cursor, limit: limit as usize })
}

/// The `count` items with the lowest seq, in order; views are built only for them.
fn first_by_seq<'a, T>(items: impl Iterator<Item = &'a T>, seq: impl Fn(&T) -> u64, count: usize) -> Vec<&'a T> {
    let mut items: Vec<&T> = items.collect();
    if items.len() > count {
        items.select_nth_unstable_by_key(count, |item| seq(item));
        items.truncate(count);
    }
    items.sort_by_key(|item| seq(item));
    items
}

/// A page of a listing: up to `limit` items and the cursor of the next one.
#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

fn page<T>(items: Vec<(u64, T)>, limit: usize) -> Page<T> {
    let next_cursor = (items.len() > limit).then(|| items[limit].0.to_string());
    Page { items: items.into_iter().take(limit).map(|(_, v)| v).collect(), next_cursor }
}

async fn list_requests(
    AxumState(state): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let query = list_query(raw, "status")?;
    let wanted = match query.filter.as_deref() {
        None => None,
        Some(s) => Some(
            [
                RequestStatus::Pending,
                RequestStatus::Granted,
                RequestStatus::Denied,
                RequestStatus::Cancelled,
                RequestStatus::Expired,
            ]
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| ApiError::InvalidParameter {
                name: "status",
                reason: format!("{s:?} is not pending, granted, denied, cancelled or expired"),
            })?,
        ),
    };
    let state = workflow(&state)?.current().await?;
    let selected = first_by_seq(
        state.requests.values().filter(|r| r.seq >= query.cursor && wanted.is_none_or(|w| r.status == w)),
        |r| r.seq,
        query.limit + 1,
    );
    let items = selected.into_iter().map(|r| (r.seq, request_view(r))).collect();
    Ok(Json(page(items, query.limit)).into_response())
}

async fn show_request(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let id = parse_id("request", &id)?;
    let state = current_holding(workflow(&state)?, |s| s.requests.contains_key(&id)).await?;
    let request = state.requests.get(&id).ok_or_else(|| ApiError::NotFound(format!("no request {id}")))?;
    Ok(Json(request_view(request)).into_response())
}

async fn list_grants(
    AxumState(state): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let query = list_query(raw, "active")?;
    let active = match query.filter.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(ApiError::InvalidParameter {
                name: "active",
                reason: format!("{other:?} is not true or false"),
            });
        }
    };
    let state = workflow(&state)?.current().await?;
    let selected = first_by_seq(
        state
            .grants
            .values()
            .filter(|g| g.seq >= query.cursor && active.is_none_or(|a| (g.status == GrantStatus::Active) == a)),
        |g| g.seq,
        query.limit + 1,
    );
    let items = selected.into_iter().map(|g| (g.seq, grant_view(&state, g))).collect();
    Ok(Json(page(items, query.limit)).into_response())
}

async fn show_grant(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let id = parse_id("grant", &id)?;
    let state = current_holding(workflow(&state)?, |s| s.grants.contains_key(&id)).await?;
    let grant = state.grants.get(&id).ok_or_else(|| ApiError::NotFound(format!("no grant {id}")))?;
    Ok(Json(grant_view(&state, grant)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    comment: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    duration: String,
    reason: String,
}

/// Runs a command about a request, and answers with the request (and its grant, if any).
async fn request_command(
    state: &AppState,
    actor: Actor,
    id: &str,
    make: impl FnOnce(EventId) -> Command,
) -> Result<Response, ApiError> {
    let id = parse_id("request", id)?;
    let workflow = workflow(state)?;
    workflow.execute(make(id), actor, random_seed()).await?;
    let current = workflow.current().await?;
    let request = current.requests.get(&id).ok_or_else(|| ApiError::NotFound(format!("no request {id}")))?;
    let grant = request.grant.and_then(|g| current.grants.get(&g)).map(|g| grant_view(&current, g));
    Ok(Json(json!({"request": request_view(request), "grant": grant})).into_response())
}

/// Runs a command about a grant, and answers with the grant.
async fn grant_command(state: &AppState, actor: Actor, id: EventId, command: Command) -> Result<Response, ApiError> {
    let workflow = workflow(state)?;
    workflow.execute(command, actor, random_seed()).await?;
    let current = workflow.current().await?;
    let grant = current.grants.get(&id).ok_or_else(|| ApiError::NotFound(format!("no grant {id}")))?;
    Ok(Json(grant_view(&current, grant)).into_response())
}

async fn approve(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let actor = authenticate(&state, &headers)?;
    let input: CommentBody = body(&bytes)?;
    request_command(&state, actor, &id, |request| Command::Approve { request, comment: input.comment }).await
}

async fn deny(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let actor = authenticate(&state, &headers)?;
    let input: CommentBody = body(&bytes)?;
    request_command(&state, actor, &id, |request| Command::Deny { request, comment: input.comment }).await
}

async fn cancel(AxumState(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    let actor = authenticate(&state, &headers)?;
    request_command(&state, actor, &id, |request| Command::Cancel { request }).await
}

/// A command about a grant that carries a JSON body: authenticate, parse the
/// id and the body, build the command, run it.
async fn with_grant<T: for<'de> Deserialize<'de>>(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    bytes: &[u8],
    make: impl FnOnce(EventId, T) -> Result<Command, ApiError>,
) -> Result<Response, ApiError> {
    let actor = authenticate(state, headers)?;
    let grant = parse_id("grant", id)?;
    let command = make(grant, body(bytes)?)?;
    grant_command(state, actor, grant, command).await
}

async fn end(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    with_grant(&state, &headers, &id, &bytes, |grant, input: CommentBody| {
        Ok(Command::End { grant, comment: input.comment })
    })
    .await
}

async fn revoke(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    with_grant(&state, &headers, &id, &bytes, |grant, input: ReasonBody| {
        Ok(Command::Revoke { grant, reason: input.reason })
    })
    .await
}

async fn review(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    with_grant(&state, &headers, &id, &bytes, |grant, input: ReviewBody| {
        Ok(Command::ReviewBreakGlass { grant, comment: input.comment })
    })
    .await
}

async fn extend(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    with_grant(&state, &headers, &id, &bytes, |grant, input: ExtendBody| {
        let duration = Span::parse("duration", &input.duration)
            .map_err(|e| ApiError::Unprocessable { field: e.field, reason: e.reason })?;
        Ok(Command::Extend { grant, duration, reason: input.reason })
    })
    .await
}

async fn extension_command(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    bytes: &[u8],
    approve: bool,
) -> Result<Response, ApiError> {
    let actor = authenticate(state, headers)?;
    let extension = parse_id("extension", id)?;
    let input: CommentBody = body(bytes)?;
    let command = if approve {
        Command::ApproveExtension { extension, comment: input.comment }
    } else {
        Command::DenyExtension { extension, comment: input.comment }
    };
    let workflow = workflow(state)?;
    workflow.execute(command, actor, random_seed()).await?;
    let current = workflow.current().await?;
    let grant = current
        .extensions
        .get(&extension)
        .and_then(|x| current.grants.get(&x.grant_id))
        .ok_or_else(|| ApiError::NotFound(format!("no extension {extension}")))?;
    Ok(Json(grant_view(&current, grant)).into_response())
}

async fn approve_extension(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    extension_command(&state, &headers, &id, &bytes, true).await
}

async fn deny_extension(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    extension_command(&state, &headers, &id, &bytes, false).await
}

/// Who could do what to an object at time T, by the record (`at` defaults to now).
async fn access(AxumState(state): Shared, headers: HeaderMap, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let params = super::ledger::query_params(raw, &["cluster", "namespace", "kind", "name", "at"])?;
    let get = |name: &'static str| params.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    let required = |name: &'static str| get(name).ok_or(ApiError::InvalidParameter { name, reason: "required".into() });
    let bad = |name: &'static str| {
        move |e: crate::domain::types::InvalidValue| ApiError::InvalidParameter { name, reason: e.reason }
    };
    let cluster = Name::label("cluster", &required("cluster")?).map_err(bad("cluster"))?;
    let namespace = Name::label("namespace", &required("namespace")?).map_err(bad("namespace"))?;
    let kind = Kind::parse("kind", &required("kind")?).map_err(bad("kind"))?;
    let name = get("name").map(|n| Name::subdomain("name", &n)).transpose().map_err(bad("name"))?;
    let at = match get("at") {
        Some(t) => {
            Timestamp::parse(&t).map_err(|e| ApiError::InvalidParameter { name: "at", reason: e.to_string() })?
        }
        None => Timestamp::now(),
    };
    let state = workflow(&state)?.current().await?;
    let holders: Vec<Value> = state
        .access_at(&cluster, &namespace, kind, name.as_ref(), at)
        .into_iter()
        .map(|g| {
            json!({
                "grant_id": g.id.to_string(), "requester": g.requester, "access": g.target.access,
                "expires_at": g.expires_at.to_string(), "rbac": &g.rbac,
            })
        })
        .collect();
    Ok(Json(json!({"at": at.to_string(), "grants": holders})).into_response())
}

/// The policy in force and the proposals waiting for a second admin.
async fn show_policy(AxumState(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let current = workflow(&state)?.current().await?;
    let active = current.policy.as_ref().map(|(hash, text)| json!({"hash": hash, "text": text}));
    let proposals: Vec<Value> = current
        .proposals
        .iter()
        .map(|(hash, (text, by))| json!({"hash": hash, "proposed_by": by, "text": text}))
        .collect();
    Ok(Json(json!({"active": active, "proposals": proposals})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    text: String,
}

async fn propose_policy(
    AxumState(state): Shared,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let actor = authenticate(&state, &headers)?;
    let input: PolicyBody = body(&bytes)?;
    let workflow = workflow(&state)?;
    workflow.execute(Command::ProposePolicy { text: input.text.clone() }, actor, random_seed()).await?;
    let hash = crate::policy::Policy::parse(&input.text).map(|p| p.hash_hex()).unwrap_or_default();
    Ok((StatusCode::CREATED, Json(json!({"hash": hash, "status": "proposed"}))).into_response())
}

async fn approve_policy(
    AxumState(state): Shared,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let actor = authenticate(&state, &headers)?;
    let workflow = workflow(&state)?;
    workflow.execute(Command::ApprovePolicy { hash: hash.clone() }, actor, random_seed()).await?;
    Ok(Json(json!({"hash": hash, "status": "in force"})).into_response())
}
