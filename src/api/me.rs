//! The user API (contract §4): the caller's own inbox, authenticated by the user JWT.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::user::User;
use crate::error::{ApiError, ErrorBody};
use crate::inbox::changes::{self as inbox_changes, Changes, Page, MAX_PAGE};
use crate::inbox::commands::{self, Command};
use crate::inbox::direct::{self, Via};
use crate::inbox::CountsView;
use crate::state::AppState;
use crate::store::messages::Shelf;

/// `201` of `POST /api/v1/me/send`.
#[derive(serde::Serialize, ToSchema)]
pub struct Sent {
    /// The message id in the recipient's inbox; `null` when the recipient muted the message's
    /// `type` (preferences, `in_app: false`): nothing was stored.
    #[schema(value_type = Option<Uuid>)]
    pub id: Value,
    /// Only when nothing was stored because the recipient muted the type:
    /// `[{"to_user", "reason": "muted"}]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<super::messages::SkippedRow>>)]
    pub skipped: Option<Value>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    before: Option<String>,
    unread_only: Option<String>,
    archived: Option<String>,
    snoozed: Option<String>,
}

/// A boolean query parameter: absent, empty, `false` or `0` is false; `true` or `1` true.
fn bool_param(raw: Option<&str>, field: &str) -> Result<bool, ApiError> {
    match raw {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(_) => Err(ApiError::validation(field, "must be true or false")),
    }
}

fn int_param(raw: Option<&str>, field: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    match raw {
        None => Ok(None),
        // `?since=` is not `since` left out: an empty value is not an integer (the document
        // says integer; schemathesis sent it and got 200).
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::validation(
                field,
                format!("must be an integer from {min} to {max}"),
            )),
        },
    }
}

/// `GET /api/v1/me/messages?limit=20&before=<seq>&unread_only=true` (`&archived=true` or
/// `&snoozed=true`: those only; both: either; without either, neither)
#[utoipa::path(get, path = "/api/v1/me/messages", tag = "user",
    security(("userJwt" = [])),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "page size, default 20"),
        ("before" = Option<i64>, Query, minimum = 1, description = "only messages with a smaller seq: the previous page's `next_before`"),
        ("unread_only" = Option<bool>, Query, description = "only unread messages"),
        ("archived" = Option<bool>, Query, description = "only archived messages (without it, archived ones are hidden); with `snoozed` too, archived and snoozed ones"),
        ("snoozed" = Option<bool>, Query, description = "only snoozed messages (without it, snoozed ones are hidden until they wake); with `archived` too, archived and snoozed ones"),
    ),
    responses(
        (status = 200, description = "the caller's messages, newest first", body = Page),
        (status = 400, description = "the query string cannot be read (e.g. a parameter given twice)", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 422, description = "a parameter is out of range; `field` names it", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn list(
    user: User,
    q: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limit = int_param(q.limit.as_deref(), "limit", 1, MAX_PAGE)?.unwrap_or(20);
    let before = int_param(q.before.as_deref(), "before", 1, i64::MAX)?;
    let unread_only = bool_param(q.unread_only.as_deref(), "unread_only")?;
    let shelf = match (
        bool_param(q.archived.as_deref(), "archived")?,
        bool_param(q.snoozed.as_deref(), "snoozed")?,
    ) {
        (false, false) => Shelf::Inbox,
        (true, false) => Shelf::Archived,
        (false, true) => Shelf::Snoozed,
        // Every request the document allows is served: both is everything out of the inbox
        // (a message is never both: archiving drops a snooze).
        (true, true) => Shelf::Aside,
    };
    // The replica when it may answer (contract §11), else the primary.
    let page = inbox_changes::page_routed(
        &state.reads(),
        &user.0.user,
        before,
        limit,
        unread_only,
        shelf,
    )
    .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// `GET /api/v1/me/unread-count`
#[utoipa::path(get, path = "/api/v1/me/unread-count", tag = "user",
    security(("userJwt" = [])),
    responses(
        (status = 200, description = "the caller's counts and last seq", body = CountsView),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn unread_count(
    user: User,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let c = state
        .db(async |conn| Ok(inbox_changes::counts(conn, &user.0.user).await?))
        .await?;
    Ok(HttpResponse::Ok().json(CountsView::from(c)))
}

#[derive(Deserialize)]
pub struct ChangesQuery {
    since: Option<String>,
    epoch: Option<String>,
}

/// `GET /api/v1/me/changes?since=<seq>`
#[utoipa::path(get, path = "/api/v1/me/changes", tag = "user",
    security(("userJwt" = [])),
    params(("since" = Option<i64>, Query, minimum = 0, description = "the last seq the client applied; default 0"),
        ("epoch" = Option<i64>, Query, minimum = 0, description = "the inbox epoch that seq belongs to (from `hello`, a reset or an earlier answer): when the user's inbox has another (it was erased and began again), the answer is a reset")),
    responses(
        (status = 200, description = "the events after `since`, or a reset", body = Changes),
        (status = 400, description = "the query string cannot be read (e.g. a parameter given twice)", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 422, description = "`since` or `epoch` is not an integer from 0", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn changes(
    user: User,
    q: web::Query<ChangesQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let since = int_param(q.since.as_deref(), "since", 0, i64::MAX)?.unwrap_or(0);
    let epoch = int_param(q.epoch.as_deref(), "epoch", 0, i64::MAX)?;
    let changes = inbox_changes::since_routed(&state.reads(), &user.0.user, since, epoch).await?;
    Ok(HttpResponse::Ok().json(changes))
}

#[derive(Deserialize)]
pub struct ReadBody {
    pub(super) ids: Option<Vec<Value>>,
}

pub(super) async fn run(
    state: &AppState,
    user: &str,
    cmd: Command,
) -> Result<CountsView, ApiError> {
    let out = state
        .db(async |conn| Ok(commands::run(conn, user, cmd).await?))
        .await?;
    commands::committed(state, &out);
    Ok(out.counts)
}

/// `POST /api/v1/me/messages/read` body `{"ids": [...]}`
#[utoipa::path(post, path = "/api/v1/me/messages/read", tag = "user",
    security(("userJwt" = [])),
    request_body(content = super::bodies::ReadIds, content_type = "application/json",
        description = "read as JSON whatever its Content-Type; at most 64 KiB"),
    responses(
        (status = 200, description = "marked read; the caller's counts after it", body = CountsView),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "`ids` is missing or too long", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn read(
    user: User,
    body: web::Json<ReadBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raw = body
        .into_inner()
        .ids
        .ok_or_else(|| ApiError::validation("ids", "is required: {\"ids\": [...]}"))?;
    let ids = commands::parse_ids(&raw)?;
    Ok(HttpResponse::Ok().json(run(&state, &user.0.user, Command::Read(ids)).await?))
}

/// `POST /api/v1/me/messages/read-all` (no body)
#[utoipa::path(post, path = "/api/v1/me/messages/read-all", tag = "user",
    security(("userJwt" = [])),
    responses(
        (status = 200, description = "all read; `unread` and `unseen` are 0", body = CountsView),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn read_all(user: User, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(run(&state, &user.0.user, Command::ReadAll).await?))
}

/// `POST /api/v1/me/messages/seen-all` (no body): the bell was opened.
#[utoipa::path(post, path = "/api/v1/me/messages/seen-all", tag = "user",
    security(("userJwt" = [])),
    responses(
        (status = 200, description = "all seen; `unseen` is 0", body = CountsView),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn seen_all(user: User, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(run(&state, &user.0.user, Command::SeenAll).await?))
}

/// `DELETE /api/v1/me/messages/{id}`: 204 whether or not the id named one of the caller's
/// messages, so ids of other users are never revealed.
#[utoipa::path(delete, path = "/api/v1/me/messages/{id}", tag = "user",
    security(("userJwt" = [])),
    params(("id" = String, Path, description = "a message id (an id that is not one of the caller's messages changes nothing)")),
    responses(
        (status = 204, description = "deleted, or nothing to delete"),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn delete(
    user: User,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Ok(id) = Uuid::parse_str(&id) {
        run(&state, &user.0.user, Command::Delete(id)).await?;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /api/v1/me/send` body `{"to_user": "7", "message": {...}}`: a direct message from the
/// caller (contract §8). `201 {"id"}`; `Idempotency-Key` is honoured per sender.
#[utoipa::path(post, path = "/api/v1/me/send", tag = "user",
    security(("userJwt" = [])),
    params(super::messages::IdempotencyKey),
    request_body(content = super::bodies::DirectMessage, content_type = "application/json",
        description = "read as JSON whatever its Content-Type; at most 64 KiB"),
    responses(
        (status = 201, description = "sent: a notification in the recipient's inbox (or none, `id` null and `skipped` listing the recipient, when they muted the message's `type`)", body = Sent,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "the token's `send_to` claim does not match `to_user` (or a browser Origin not in NOTIFYD_ALLOWED_ORIGINS)", body = ErrorBody),
        (status = 409, description = "this Idempotency-Key was used with a different body", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "a field is invalid; `field` names it", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the sender's rate limit; retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = "the database is unavailable or the server is busy; retry", body = ErrorBody),
    ))]
pub async fn send(
    req: HttpRequest,
    user: User,
    body: web::Json<Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = super::messages::idempotency_key(&req)?;
    let Value::Object(body) = body.into_inner() else {
        return Err(ApiError::validation(
            "",
            "body must be a JSON object: {\"to_user\": ..., \"message\": {...}}",
        ));
    };
    let sent = direct::send(
        &state,
        &user.0,
        body.get("to_user"),
        body.get("message"),
        key,
        Via::Rest,
    )
    .await?;
    let mut resp = HttpResponse::Created();
    if sent.replayed {
        resp.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(resp.json(Sent {
        id: sent.id,
        skipped: sent.skipped,
    }))
}
