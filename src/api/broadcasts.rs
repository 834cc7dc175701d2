//! `POST /api/v1/broadcasts` and `GET /api/v1/broadcasts/{id}` (internal services):
//! announcements to every known user. A broadcast is visible only to the service that created
//! it; any other id answers `404`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use uuid::Uuid;

use super::messages::idempotency_key;
use super::read_body;
use crate::announce::accept::accept;
use crate::auth::service::Service;
use crate::error::ApiError;
use crate::inbox::create::Idempotency;
use crate::inbox::input;
use crate::state::AppState;
use crate::store::broadcasts;

/// Body limit: one message (title 200 chars, content 8 KiB, data 16 KiB) with room for JSON
/// escaping.
pub const BODY_LIMIT: usize = 128 * 1024;

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
        "done"
    } else {
        "running"
    };
    Ok(HttpResponse::Ok().json(json!({
        "id": progress.id,
        "status": status,
        "total": progress.total,
        "created": progress.created,
    })))
}
