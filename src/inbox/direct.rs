//! Direct messages, user to user (contract §8): the `send` frame on the WebSocket and
//! `POST /api/v1/me/send` both come here. Parse and validate (the rules of `POST /api/v1/messages`),
//! authorise against the token's `send_to` claim, take a token from the sender's bucket, then
//! create the notification through the one create path of the service API (`create::create`).
//!
//! The sender never names itself: `send_user` is the token's `sub`; a `send_user` in the message
//! is refused (`422`) rather than silently replaced, so a client that tries learns it at once.
//! Rows are written with `service = "user:<sender>"`: no configured service can have that name
//! (names end at the first `:`), so no service can retract a user's direct message, and the
//! same value scopes `Idempotency-Key`s per sender.

use serde_json::{Map, Value};

use super::create::{create, Idempotency};
use crate::auth::jwt::UserClaims;
use crate::error::ApiError;
use crate::model::input::{self, CreateRequest};
use crate::state::AppState;

/// The `service` column (and idempotency scope) of direct messages is this plus the sender's id.
pub const SERVICE_PREFIX: &str = "user:";

/// Where a direct message came from: the socket's database work is bounded by the node's
/// command permits (REST requests are bounded by the pool and the HTTP workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Rest,
    Socket,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Rest => "rest",
            Via::Socket => "ws",
        }
    }
}

/// A created (or replayed) direct message.
#[derive(Debug)]
pub struct Sent {
    /// The message id; `null` when the recipient muted the message's type (nothing stored).
    pub id: Value,
    /// `[{"to_user", "reason": "muted"}]` when the recipient muted the type (the create API's
    /// `skipped`, as it answered); `None` when the message was stored, so the answer keeps the
    /// contract's `{"id"}` shape.
    pub skipped: Option<Value>,
    pub replayed: bool,
}

/// One direct message from `sender`: `to_user` and `message` as the client gave them.
pub async fn send(
    state: &AppState,
    sender: &UserClaims,
    to_user: Option<&Value>,
    message: Option<&Value>,
    idempotency_key: Option<&str>,
    via: Via,
) -> Result<Sent, ApiError> {
    let out = send_checked(state, sender, to_user, message, idempotency_key, via).await;
    let result = match &out {
        Ok(s) if s.replayed => "replayed",
        Ok(_) => "sent",
        Err(e) => e.code(),
    };
    metrics::counter!("notifyd_direct_messages_total", "via" => via.name(), "result" => result)
        .increment(1);
    out
}

async fn send_checked(
    state: &AppState,
    sender: &UserClaims,
    to_user: Option<&Value>,
    message: Option<&Value>,
    idempotency_key: Option<&str>,
    via: Via,
) -> Result<Sent, ApiError> {
    let (to, req) = parse(&sender.user, to_user, message)?;
    if !sender.may_send_to(&to) {
        return Err(ApiError::Forbidden(format!(
            "token does not allow direct messages to user {to:?} (claim send_to)"
        )));
    }
    // Counted per sender before any database work, so refused sends cost nothing there.
    state
        .limits
        .direct
        .take(&sender.user)
        .map_err(|retry_after| ApiError::RateLimited {
            message: format!(
                "at most {} direct messages per second (bursts of {}) per sender",
                crate::ratelimit::DIRECT_PER_SECOND,
                crate::ratelimit::DIRECT_BURST
            ),
            retry_after,
        })?;
    let _permit = match via {
        Via::Socket => Some(socket_permit(state).await?),
        Via::Rest => None,
    };
    let scope = format!("{SERVICE_PREFIX}{}", sender.user);
    let idem = idempotency_key.map(|key| Idempotency { key });
    let created = create(state, &scope, &req, idem).await?;
    if !created.replayed {
        state.waker.wake();
        // Sent by a user, not a service.
        metrics::counter!(
            "notifyd_messages_created_total",
            "service" => crate::config::values::NO_SERVICE
        )
        .increment(created.rows.len() as u64);
        if created.rows.skipped() > 0 {
            metrics::counter!("notifyd_messages_skipped_total", "reason" => super::create::MUTED)
                .increment(created.rows.skipped() as u64);
        }
    }
    let mut body: Value = serde_json::from_str(&created.body)
        .map_err(|e| anyhow::anyhow!("create answered with a body that is not JSON: {e}"))?;
    // `get`, never `[]` for writing: indexing a Value mutably panics on an empty array (the
    // answer when the recipient muted the type has no message).
    let id = body
        .pointer_mut("/messages/0/id")
        .map(Value::take)
        .unwrap_or(Value::Null);
    // Answers stored before `skipped` existed have none: nothing was skipped then.
    let skipped = body
        .get_mut("skipped")
        .map(Value::take)
        .filter(|s| s.as_array().is_some_and(|s| !s.is_empty()));
    if id.is_null() && skipped.is_none() {
        return Err(anyhow::anyhow!("create answered without a message id").into());
    }
    Ok(Sent {
        id,
        skipped,
        replayed: created.replayed,
    })
}

/// One of the node's WebSocket database permits (as the user actor's commands take), so a flood
/// of `send` frames waits in bounded numbers instead of taking every pooled connection.
async fn socket_permit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let permit = state.gateway.db_commands.clone().acquire_owned();
    tokio::time::timeout(super::COMMAND_WAIT, permit)
        .await
        .map_err(|_| ApiError::Unavailable("the server is busy; retry".into()))?
        .map_err(|_| ApiError::Unavailable("shutting down".into()))
}

/// The recipient and the one-row create request, validated like `POST /api/v1/messages`
/// (field names in errors: `to_user`, `message.title`, ...).
pub fn parse(
    sender: &str,
    to_user: Option<&Value>,
    message: Option<&Value>,
) -> Result<(String, CreateRequest), ApiError> {
    let to = match to_user {
        None | Some(Value::Null) => return Err(ApiError::validation("to_user", "is required")),
        Some(v) => input::user_id(v, "to_user")?,
    };
    let m = match message {
        None | Some(Value::Null) => {
            return Err(ApiError::validation(
                "message",
                "is required: {\"title\": ..., \"content\": ...}",
            ))
        }
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::validation("message", "must be an object")),
    };
    for (field, why) in [
        (
            "send_user",
            "is set by the server from your token; leave it out",
        ),
        ("to_user", "goes beside the message, not inside it"),
        ("to_users", "a direct message has one recipient (to_user)"),
    ] {
        if m.get(field).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::validation(format!("message.{field}"), why));
        }
    }
    let mut full: Map<String, Value> = m.clone();
    full.remove("to_users");
    full.insert("to_user".into(), Value::String(to.clone()));
    full.insert("send_user".into(), Value::String(sender.to_string()));
    let entry = input::parse_message(&full, "message.")?;
    // The sender is not in the canonical form: keys are scoped per sender already.
    let canonical = serde_json::json!({"to_user": to, "message": m}).to_string();
    Ok((
        to,
        CreateRequest {
            entries: vec![entry],
            source: canonical.into(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(to: Value, message: Value) -> String {
        match parse("me", Some(&to), Some(&message)) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn the_sender_is_stamped_and_the_message_validated_like_the_service_api() {
        let (to, req) = parse(
            "me",
            Some(&json!(7)),
            Some(&json!({"title": "Hi", "type": "chat", "skip_url": null, "data": {}})),
        )
        .expect("valid");
        assert_eq!(to, "7");
        let e = &req.entries[0];
        assert_eq!(e.recipients, vec!["7"]);
        assert_eq!(e.send_user.as_deref(), Some("me"));
        assert_eq!((e.title.as_str(), e.kind.as_str()), ("Hi", "chat"));
    }

    #[test]
    fn errors_name_their_field() {
        let ok = json!({"title": "t"});
        assert_eq!(
            field_of(json!("7"), json!({"title": "t", "send_user": "boss"})),
            "message.send_user"
        );
        assert_eq!(
            field_of(json!("7"), json!({"title": "t", "to_user": "8"})),
            "message.to_user"
        );
        assert_eq!(field_of(json!("a\u{0}b"), ok.clone()), "to_user");
        assert_eq!(field_of(json!(["7"]), ok.clone()), "to_user");
        assert_eq!(
            field_of(json!("7"), json!({"content": "c"})),
            "message.title"
        );
        assert_eq!(
            field_of(
                json!("7"),
                json!({"title": "t", "content": "x".repeat(8193)})
            ),
            "message.content"
        );
        assert_eq!(field_of(json!("7"), json!("hi")), "message");
        assert!(matches!(
            parse("me", None, Some(&ok)),
            Err(ApiError::Validation { field, .. }) if field == "to_user"
        ));
        assert!(matches!(
            parse("me", Some(&json!("7")), None),
            Err(ApiError::Validation { field, .. }) if field == "message"
        ));
    }
}
