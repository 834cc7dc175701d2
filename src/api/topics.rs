//! `POST /api/v1/topics/{topic}/events` (internal services): a live event for a topic's subscribers.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::read_body;
use crate::auth::service::Service;
use crate::error::ApiError;
use crate::inbox::create;
use crate::state::AppState;
use crate::topics;

/// `{"data": {...}, "retain": true}`: `retain` also makes the event the topic's retained value
/// for `NOTIFYD_TOPIC_RETAIN`. Answers `202 {"id", "topic"}` (the event id frames carry too).
pub async fn publish(
    req: HttpRequest,
    _service: Service,
    topic: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let topic = topic.into_inner();
    topics::check_topic(&topic).map_err(|m| ApiError::validation("topic", m))?;
    let body = read_body(&req, payload, 64 * 1024).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::MalformedJson(format!("body is not valid JSON: {e}")))?;
    let data = match v.get("data") {
        Some(d) if v.is_object() => d,
        _ => return Err(ApiError::validation("data", "is required: {\"data\": ...}")),
    };
    topics::check_data(data).map_err(|m| ApiError::validation("data", m))?;
    let retain = match v.get("retain") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(ApiError::validation("retain", "must be true or false")),
    };
    let retain_until = retain.then(|| {
        chrono::Utc::now()
            + chrono::Duration::from_std(state.settings.topic_retain)
                .unwrap_or(chrono::Duration::days(1))
    });
    let ev = create::TopicEvent {
        topic: &topic,
        data,
        from: None,
        retain_until,
    };
    let id = state
        .db(async |conn| create::topic_event(conn, &ev).await)
        .await?;
    state.waker.wake();
    Ok(HttpResponse::Accepted().json(json!({ "accepted": true, "id": id, "topic": topic })))
}
