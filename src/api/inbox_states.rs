//! The inbox states of the user API (contract §10): mark unread, archive, unarchive, snooze.
//! Each is one transaction like read (`inbox::commands`) and answers the caller's counts after it.
//! Kept apart from `me` (the other user routes) so additions on either side merge cleanly.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::me::{run, ReadBody};
use crate::auth::user::User;
use crate::error::{ApiError, ErrorBody};
use crate::inbox::commands::{self, Command};
use crate::inbox::CountsView;
use crate::state::AppState;

/// The ids of an id-taking command's body (`{"ids": [...]}`).
fn ids(body: ReadBody) -> Result<Vec<uuid::Uuid>, ApiError> {
    let raw = body
        .ids
        .ok_or_else(|| ApiError::validation("ids", "is required: {\"ids\": [...]}"))?;
    commands::parse_ids(&raw)
}

async fn answer(state: &AppState, user: &User, cmd: Command) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(run(state, &user.0.user, cmd).await?))
}

/// `POST /api/v1/me/messages/unread` body `{"ids": [...]}`
#[utoipa::path(post, path = "/api/v1/me/messages/unread", tag = "user",
    security(("userJwt" = [])),
    request_body(content = super::bodies::ReadIds, content_type = "application/json",
        description = "read as JSON whatever its Content-Type; at most 64 KiB"),
    responses(
        (status = 200, description = "the read ones among them are unread again (and unseen, until the bell is next opened: `message.unread`); the caller's counts after it", body = CountsView),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "`ids` is missing or too long", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn unread(
    user: User,
    body: web::Json<ReadBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ids = ids(body.into_inner())?;
    answer(&state, &user, Command::Unread(ids)).await
}

/// `POST /api/v1/me/messages/archive` body `{"ids": [...]}`
#[utoipa::path(post, path = "/api/v1/me/messages/archive", tag = "user",
    security(("userJwt" = [])),
    request_body(content = super::bodies::ReadIds, content_type = "application/json",
        description = "read as JSON whatever its Content-Type; at most 64 KiB"),
    responses(
        (status = 200, description = "archived (`message.archived`): out of the inbox listing and the counts until unarchived; a snooze on them is dropped. The caller's counts after it", body = CountsView),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "`ids` is missing or too long", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn archive(
    user: User,
    body: web::Json<ReadBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ids = ids(body.into_inner())?;
    answer(&state, &user, Command::Archive(ids)).await
}

/// `POST /api/v1/me/messages/unarchive` body `{"ids": [...]}`
#[utoipa::path(post, path = "/api/v1/me/messages/unarchive", tag = "user",
    security(("userJwt" = [])),
    request_body(content = super::bodies::ReadIds, content_type = "application/json",
        description = "read as JSON whatever its Content-Type; at most 64 KiB"),
    responses(
        (status = 200, description = "back in the inbox, unread and unseen (`message.unarchived`); the caller's counts after it", body = CountsView),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "`ids` is missing or too long", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn unarchive(
    user: User,
    body: web::Json<ReadBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ids = ids(body.into_inner())?;
    answer(&state, &user, Command::Unarchive(ids)).await
}

#[derive(Deserialize)]
pub struct SnoozeBody {
    ids: Option<Vec<Value>>,
    until: Option<Value>,
}

/// `POST /api/v1/me/messages/snooze` body `{"ids": [...], "until": "<RFC 3339>"}`
#[utoipa::path(post, path = "/api/v1/me/messages/snooze", tag = "user",
    security(("userJwt" = [])),
    request_body(content = super::bodies::SnoozeIds, content_type = "application/json",
        description = "read as JSON whatever its Content-Type; at most 64 KiB"),
    responses(
        (status = 200, description = "snoozed (`message.snoozed`): out of the inbox listing and the counts until `until`, when they come back unread and unseen (`message.unsnoozed`; a time already past: within a second); archived ones are left alone. The caller's counts after it", body = CountsView),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "`ids` is missing or too long, or `until` is missing or not an RFC 3339 timestamp", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn snooze(
    user: User,
    body: web::Json<SnoozeBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let SnoozeBody { ids: raw, until } = body.into_inner();
    let ids = ids(ReadBody { ids: raw })?;
    let until = commands::parse_until(until.as_ref())?;
    answer(&state, &user, Command::Snooze(ids, until)).await
}
