//! `POST /api/v1/messages` (internal services).

use actix_web::{web, HttpRequest, HttpResponse};

use super::read_body;
use crate::auth::service::Service;
use crate::error::ApiError;
use crate::inbox::create::{self, Idempotency};
use crate::inbox::input;
use crate::state::AppState;

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
            .increment(parsed.rows() as u64);
    }
    let mut resp = HttpResponse::Created();
    if created.replayed {
        resp.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(resp.json(created.body))
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
