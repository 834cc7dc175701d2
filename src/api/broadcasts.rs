//! `POST /api/v1/broadcasts` and `GET /api/v1/broadcasts/{id}` (internal services):
//! announcements to every known user. A broadcast is visible only to the service that created
//! it; any other id answers `404`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::messages::idempotency_key;
use super::read_body;
use crate::announce::accept::accept;
use crate::auth::service::Service;
use crate::error::{ApiError, ErrorBody};
use crate::inbox::create::Idempotency;
use crate::model::input;
use crate::state::AppState;
use crate::store::broadcasts;

/// Body limit: one message (title 200 chars, content 8 KiB, data 16 KiB) with room for JSON
/// escaping.
pub const BODY_LIMIT: usize = 128 * 1024;

/// `202` of `POST /api/v1/broadcasts`.
#[derive(ToSchema)]
pub struct BroadcastAccepted {
    pub id: Uuid,
    /// Always `running` when accepted.
    #[schema(example = "running")]
    pub status: String,
}

/// An announcement's progress.
#[derive(Serialize, ToSchema)]
pub struct BroadcastStatus {
    pub id: Uuid,
    pub status: BroadcastState,
    /// Users known when it was accepted (the recipients).
    pub total: i64,
    /// Notifications created so far.
    pub created: i64,
    /// Recipients skipped so far because they muted the announcement's `type` (preferences,
    /// `in_app: false`); `created + skipped` reaches `total` when done.
    pub skipped: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastState {
    Running,
    Done,
}

/// An announcement to every user notifyd knows (contract §8), created in batches.
#[utoipa::path(post, path = "/api/v1/broadcasts", tag = "service",
    security(("serviceKey" = [])),
    params(super::messages::IdempotencyKey),
    request_body(content = super::bodies::NewBroadcast, content_type = "application/json",
        description = "read as JSON whatever its Content-Type; at most 128 KiB"),
    responses(
        (status = 202, description = "accepted; follow it with GET /api/v1/broadcasts/{id}", body = BroadcastAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing or unknown service key", body = ErrorBody),
        (status = 409, description = "this Idempotency-Key was used with a different body", body = ErrorBody),
        (status = 413, description = "the body is larger than 128 KiB", body = ErrorBody),
        (status = 422, description = "a field is invalid; `field` names it", body = ErrorBody),
        (status = 429, description = "`too_many_broadcasts`: NOTIFYD_MAX_RUNNING_BROADCASTS are still running", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn create(
    req: HttpRequest,
    service: Service,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let body = read_body(&req, payload, BODY_LIMIT).await?;
    let parsed = input::parse_broadcast(&body)?;
    let idempotency = key.map(|key| Idempotency { key });
    let max_running = state.settings.max_running_broadcasts;
    let accepted = state
        .db(async |conn| accept(conn, &service.0, &parsed, idempotency, max_running).await)
        .await?;
    let mut resp = HttpResponse::Accepted();
    if accepted.replayed {
        resp.insert_header(("Idempotent-Replayed", "true"));
    } else {
        state.announcements.wake();
        metrics::counter!("notifyd_broadcasts_accepted_total").increment(1);
    }
    Ok(resp.json(accepted.body))
}

/// A broadcast's progress; only the service that created it sees it.
#[utoipa::path(get, path = "/api/v1/broadcasts/{id}", tag = "service",
    security(("serviceKey" = [])),
    params(("id" = String, Path, description = "the id `POST /api/v1/broadcasts` answered")),
    responses(
        (status = 200, description = "its progress", body = BroadcastStatus),
        (status = 401, description = "missing or unknown service key", body = ErrorBody),
        (status = 404, description = "no broadcast of this service has this id", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn show(
    service: Service,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound("no such broadcast".into());
    // Not an id we hand out: as unknown as any other.
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let progress = state
        .db(async |conn| Ok(broadcasts::progress(conn, id, &service.0).await?))
        .await?
        .ok_or_else(not_found)?;
    let status = if progress.done_at.is_some() {
        BroadcastState::Done
    } else {
        BroadcastState::Running
    };
    Ok(HttpResponse::Ok().json(BroadcastStatus {
        id: progress.id,
        status,
        total: progress.total,
        created: progress.created,
        skipped: progress.skipped,
    }))
}
