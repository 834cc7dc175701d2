//! Web Push routes (contract §10): the server's VAPID public key, a user's browser
//! subscriptions, and acknowledgements from clients without a WebSocket (SSE). See `push`.

use actix_web::{web, HttpResponse};
use diesel_async::AsyncConnection;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::user::User;
use crate::error::{ApiError, ErrorBody};
use crate::push::{endpoint, sender, Push};
use crate::state::AppState;
use crate::store::push as store;

/// Subscriptions one user may hold (browsers and devices); more are refused.
pub const MAX_SUBSCRIPTIONS_PER_USER: i64 = 20;
/// Longest `keys.p256dh` / `keys.auth` accepted (a P-256 point is 87 characters).
const MAX_KEY_CHARS: usize = 256;

#[derive(Serialize, ToSchema)]
pub struct PushKey {
    /// The VAPID public key (base64url, uncompressed P-256 point): `applicationServerKey` for
    /// `pushManager.subscribe`.
    pub public_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct SubscriptionId {
    #[schema(value_type = Uuid)]
    pub id: Uuid,
}

fn configured(state: &AppState) -> Result<&Push, ApiError> {
    state
        .push
        .as_deref()
        .ok_or_else(|| ApiError::NotFound("Web Push is not configured on this server".into()))
}

/// `GET /api/v1/push/key`: no credentials needed (it is public by nature).
#[utoipa::path(get, path = "/api/v1/push/key", tag = "user",
    responses(
        (status = 200, description = "the VAPID public key", body = PushKey),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 404, description = "Web Push is not configured (no NOTIFYD_VAPID_PRIVATE_KEY)", body = ErrorBody),
    ))]
pub async fn key(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let push = configured(&state)?;
    Ok(HttpResponse::Ok().json(PushKey {
        public_key: push.vapid.public_key.clone(),
    }))
}

/// `POST /api/v1/me/push-subscriptions` with the browser's `PushSubscription` JSON.
#[utoipa::path(post, path = "/api/v1/me/push-subscriptions", tag = "user",
    security(("userJwt" = [])),
    request_body(content = Value, content_type = "application/json",
        description = "`{\"endpoint\": \"https://...\", \"keys\": {\"p256dh\": \"...\", \"auth\": \"...\"}}` (other fields of `PushSubscription.toJSON()` are ignored)"),
    responses(
        (status = 201, description = "subscribed; the same endpoint again gives the same id", body = SubscriptionId),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 404, description = "Web Push is not configured", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "`endpoint` not https, or inside (loopback, private, link-local), or bad `keys`", body = ErrorBody),
        (status = 429, description = "the user has 20 subscriptions already (`too_many_subscriptions`)", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn subscribe(
    user: User,
    body: web::Json<Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let push = configured(&state)?;
    let body = body.into_inner();
    let text = |field: &str, v: Option<&Value>, max: usize| -> Result<String, ApiError> {
        match v {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s.clone()),
            _ => Err(ApiError::validation(
                field,
                format!("must be a string of 1 to {max} characters"),
            )),
        }
    };
    let endpoint_text = text(
        "endpoint",
        body.get("endpoint"),
        endpoint::MAX_ENDPOINT_BYTES,
    )?;
    let keys = body.get("keys");
    let p256dh = text(
        "keys.p256dh",
        keys.and_then(|k| k.get("p256dh")),
        MAX_KEY_CHARS,
    )?;
    let auth = text("keys.auth", keys.and_then(|k| k.get("auth")), MAX_KEY_CHARS)?;
    let url = endpoint::check(&endpoint_text, push.allow_insecure)
        .map_err(|why| ApiError::validation("endpoint", why))?;
    if let Err(why) = sender::decode_keys(&sender::Keys {
        p256dh: &p256dh,
        auth: &auth,
    }) {
        let field = if why.contains("p256dh") {
            "keys.p256dh"
        } else {
            "keys.auth"
        };
        return Err(ApiError::validation(field, why));
    }
    endpoint::resolve_public(&url, push.allow_insecure)
        .await
        .map_err(|why| ApiError::validation("endpoint", why))?;
    let user = user.0.user;
    // Stored as parsed: one browser's endpoint written two ways is one subscription.
    let endpoint_text = url.as_str().to_string();
    let id = state
        .db(async |c| {
            c.transaction::<_, ApiError, _>(async |c| {
            store::lock_user(c, &user).await?;
            let again = store::has_endpoint(c, &user, &endpoint_text).await?;
            if !again && store::count(c, &user).await? >= MAX_SUBSCRIPTIONS_PER_USER {
                return Err(ApiError::TooMany {
                    code: "too_many_subscriptions",
                    message: format!(
                        "at most {MAX_SUBSCRIPTIONS_PER_USER} push subscriptions per user: delete one first"
                    ),
                });
            }
            let new = store::NewSubscription {
                user: &user,
                endpoint: &endpoint_text,
                p256dh: &p256dh,
                auth: &auth,
            };
            Ok(store::subscribe(c, Uuid::now_v7(), &new).await?)
            })
            .await
        })
        .await?;
    metrics::counter!("notifyd_push_subscriptions_total").increment(1);
    Ok(HttpResponse::Created().json(SubscriptionId { id }))
}

/// `DELETE /api/v1/me/push-subscriptions/{id}`: 204 whether or not the id named one of the
/// caller's subscriptions (ids of other users are never revealed).
#[utoipa::path(delete, path = "/api/v1/me/push-subscriptions/{id}", tag = "user",
    security(("userJwt" = [])),
    params(("id" = String, Path, description = "a subscription id")),
    responses(
        (status = 204, description = "unsubscribed, or nothing to remove"),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn unsubscribe(
    user: User,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Ok(id) = Uuid::parse_str(&id) {
        let user = user.0.user;
        state
            .db(async |c| Ok(store::unsubscribe(c, &user, id).await?))
            .await?;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /api/v1/me/received {"seq": N}`: what a WebSocket's `received` frame says, for
/// clients without one (SSE): every event up to `seq` reached the app, so none is pushed.
#[utoipa::path(post, path = "/api/v1/me/received", tag = "user",
    security(("userJwt" = [])),
    request_body(content = super::bodies::Received, content_type = "application/json", description = "`{\"seq\": N}`, N ≥ 0"),
    responses(
        (status = 204, description = "noted (written within 200 ms; without Web Push configured, ignored)"),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "`seq` is not a non-negative integer", body = ErrorBody),
    ))]
pub async fn received(
    user: User,
    body: web::Json<Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // JSON Schema's integer includes `2640.0`: a number with no fraction is one too.
    let seq = body
        .get("seq")
        .and_then(|v| {
            v.as_i64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.2e18)
                    .map(|f| f as i64)
            })
        })
        .filter(|s| *s >= 0)
        .ok_or_else(|| ApiError::validation("seq", "must be a non-negative integer"))?;
    if let Some(push) = &state.push {
        push.receipts.note(&user.0.user, seq);
    }
    Ok(HttpResponse::NoContent().finish())
}
