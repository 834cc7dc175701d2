//! `POST /api/v1/messages` and `DELETE /api/v1/messages/{id}` (internal services).

use actix_web::{web, HttpRequest, HttpResponse};
use utoipa::ToSchema;
use uuid::Uuid;

use super::read_body;
use crate::auth::service::Service;
use crate::error::{ApiError, ErrorBody};
use crate::inbox::commands;
use crate::inbox::create::{self, Idempotency};
use crate::model::input;
use crate::state::AppState;

/// `201` of `POST /api/v1/messages`: one entry per row created, in request order, and one per
/// row not created because its recipient muted its `type` (always present, often empty).
#[derive(ToSchema)]
pub struct Created {
    pub messages: Vec<CreatedMessage>,
    pub skipped: Vec<SkippedRow>,
}

/// A row not created: its recipient's preferences say `in_app: false` for its `type` (no row,
/// no seq, no event, no count changed).
#[derive(ToSchema)]
pub struct SkippedRow {
    pub to_user: String,
    /// Always `muted` for now.
    #[schema(example = "muted")]
    pub reason: String,
}

#[derive(ToSchema)]
pub struct CreatedMessage {
    pub id: Uuid,
    pub to_user: String,
    /// The recipient's `seq` of its `message.created` event.
    pub seq: i64,
}

/// Creates notifications (contract §3). With `Idempotency-Key`, the same key from the same
/// service within 24 h answers the first result again (`Idempotent-Replayed: true`) and
/// creates nothing.
#[utoipa::path(post, path = "/api/v1/messages", tag = "service",
    security(("serviceKey" = [])),
    params(IdempotencyKey),
    request_body(content = super::bodies::CreateMessages, content_type = "application/json",
        description = "read as JSON whatever its Content-Type; at most NOTIFYD_MAX_BODY_BYTES (default 32 MiB)"),
    responses(
        (status = 201, description = "created; all rows of the request committed together", body = Created,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing or unknown service key", body = ErrorBody),
        (status = 409, description = "this Idempotency-Key was used with a different body", body = ErrorBody),
        (status = 413, description = "the body is larger than NOTIFYD_MAX_BODY_BYTES", body = ErrorBody),
        (status = 422, description = "a field is invalid; `field` names it", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn create(
    req: HttpRequest,
    service: Service,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let body = read_body(&req, payload, state.settings.max_body_bytes).await?;
    let parsed = input::parse_create(&body)?;
    let idempotency = key.map(|key| Idempotency { key });
    let created = create::create(&state, &service.0, &parsed, idempotency).await?;
    if !created.replayed {
        state.waker.wake();
        metrics::counter!("notifyd_messages_created_total", "service" => service.0.clone())
            .increment(created.rows.len() as u64);
        if created.rows.skipped() > 0 {
            metrics::counter!("notifyd_messages_skipped_total", "reason" => create::MUTED)
                .increment(created.rows.skipped() as u64);
        }
    }
    let mut resp = HttpResponse::Created();
    if created.replayed {
        resp.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(resp
        .content_type(actix_web::http::header::ContentType::json())
        .body(created.body))
}

/// The `Idempotency-Key` header, as the OpenAPI document describes it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKey {
    /// 1 to 255 visible ASCII characters. The same key from the same caller within 24 h
    /// answers the first result and creates nothing new.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = r"^[\x21-\x7e]+$"
    )]
    #[allow(dead_code)]
    key: Option<String>,
}

/// The `Idempotency-Key` header, if any (also on `POST /api/v1/me/send`).
pub fn idempotency_key(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::validation("Idempotency-Key", "must be visible ASCII"))?;
    input::check_idempotency_key(key, "Idempotency-Key")?;
    Ok(Some(key))
}

/// `DELETE /api/v1/messages/{id}`: the calling service retracts a message it created (contract
/// §9). `204` when a live message was removed (its recipient's stream gets `message.deleted`),
/// and again for a retry while the deleted row is kept (24 h; no second event); `404` for
/// anything else — an id that is not a UUID, unknown, another service's, expired or erased —
/// so nothing about other services' messages is revealed.
#[utoipa::path(delete, path = "/api/v1/messages/{id}", tag = "service",
    security(("serviceKey" = [])),
    params(("id" = String, Path, description = "the message id `POST /api/v1/messages` answered")),
    responses(
        (status = 204, description = "retracted: the recipient's stream got `message.deleted` with corrected counts; also for a message of this service already deleted (no second event), within the 24 h a deleted row is kept"),
        (status = 401, description = "missing or unknown service key", body = ErrorBody),
        (status = 404, description = "no message of this service has this id (unknown, malformed, another service's, expired, erased, or deleted more than 24 h ago)", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn retract(
    service: Service,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let gone = || ApiError::NotFound("no such message".into());
    let id = uuid::Uuid::parse_str(&id).map_err(|_| gone())?;
    let out = state
        .db(async |conn| commands::retract(conn, &service.0, id).await)
        .await?
        .ok_or_else(gone)?;
    if out.event.is_some() {
        metrics::counter!("notifyd_messages_retracted_total").increment(1);
    }
    commands::committed(&state, &out);
    Ok(HttpResponse::NoContent().finish())
}
