//! `POST /api/v1/topics/{topic}/events` (internal services): a live event for a topic's subscribers.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::read_body;
use crate::auth::service::Service;
use crate::error::{ApiError, ErrorBody};
use crate::inbox::create;
use crate::model::topic;
use crate::state::AppState;

/// `202` of `POST /api/v1/topics/{topic}/events`.
#[derive(Serialize, ToSchema)]
pub struct TopicAccepted {
    /// Always `true`.
    pub accepted: bool,
    /// The event id its `topic.event` frames carry (a client drops an id seen twice).
    pub id: String,
    pub topic: String,
}

/// `{"data": {...}, "retain": true}`: `retain` also makes the event the topic's retained value
/// for `NOTIFYD_TOPIC_RETAIN`. Answers `202 {"id", "topic"}` (the event id frames carry too).
#[utoipa::path(post, path = "/api/v1/topics/{topic}/events", tag = "service",
    security(("serviceKey" = [])),
    params(("topic" = inline(String), Path, description = "e.g. `product:42`: 1 to 200 characters, no whitespace, control or format characters (a `%` works when sent as `%25`; the pattern leaves it out because some clients send a path's `%` unescaped)",
        min_length = 1, max_length = 200, pattern = r"^[^\s\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb%]+$")),
    request_body(content = super::bodies::TopicEvent, content_type = "application/json",
        description = "read as JSON whatever its Content-Type; at most 64 KiB"),
    responses(
        (status = 202, description = "committed to the outbox; subscribers get it live", body = TopicAccepted),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing or unknown service key", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "the topic or a field is invalid; `field` names it", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn publish(
    req: HttpRequest,
    _service: Service,
    topic: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let topic = topic.into_inner();
    topic::check_topic(&topic).map_err(|m| ApiError::validation("topic", m))?;
    let body = read_body(&req, payload, 64 * 1024).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::MalformedJson(format!("body is not valid JSON: {e}")))?;
    let data = match v.get("data") {
        Some(d) if v.is_object() => d,
        _ => return Err(ApiError::validation("data", "is required: {\"data\": ...}")),
    };
    topic::check_data(data).map_err(|m| ApiError::validation("data", m))?;
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
    Ok(HttpResponse::Accepted().json(TopicAccepted {
        accepted: true,
        id,
        topic,
    }))
}
