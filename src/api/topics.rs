//! `POST /api/v1/topics/{topic}/events` (internal services): a live event for a topic's subscribers.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::read_body;
use crate::auth::service::Service;
use crate::error::ApiError;
use crate::gateway::protocol::MAX_TOPIC_CHARS;
use crate::inbox::create;
use crate::inbox::input::{json_has_nul, MAX_DATA_BYTES, NUL_MESSAGE};
use crate::state::AppState;

pub async fn publish(
    req: HttpRequest,
    _service: Service,
    topic: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let topic = topic.into_inner();
    if topic.is_empty()
        || topic.chars().count() > MAX_TOPIC_CHARS
        || topic.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ApiError::validation(
            "topic",
            format!("must be 1 to {MAX_TOPIC_CHARS} characters without spaces"),
        ));
    }
    let body = read_body(&req, payload, 64 * 1024).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::MalformedJson(format!("body is not valid JSON: {e}")))?;
    let data = match v.get("data") {
        Some(d) if v.is_object() => d.clone(),
        _ => return Err(ApiError::validation("data", "is required: {\"data\": ...}")),
    };
    if data.to_string().len() > MAX_DATA_BYTES {
        return Err(ApiError::validation(
            "data",
            format!("at most {MAX_DATA_BYTES} bytes as JSON"),
        ));
    }
    if json_has_nul(&data) {
        return Err(ApiError::validation("data", NUL_MESSAGE));
    }
    let id = state
        .db(async |conn| Ok(create::topic_event(conn, &topic, &data).await?))
        .await?;
    state.waker.wake();
    Ok(HttpResponse::Accepted()
        .json(json!({ "accepted": true, "id": id.to_string(), "topic": topic })))
}
