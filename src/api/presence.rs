//! Presence across the cluster.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::service::Service;
use crate::error::{ApiError, ErrorBody};
use crate::model::input;
use crate::presence::UserPresence;
use crate::state::AppState;

/// `GET /api/v1/users/{id}/presence` (service key): `{"online", "connections"}` across nodes.
#[utoipa::path(get, path = "/api/v1/users/{id}/presence", tag = "service",
    security(("serviceKey" = [])),
    params(("id" = inline(String), Path, description = "a user id (a token's `sub`): 1 to 128 characters, no whitespace, control or format characters (a `%` works when sent as `%25`; the pattern leaves it out because some clients send a path's `%` unescaped)",
        min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb%]+$")),
    responses(
        (status = 200, description = "the user's open sockets across the cluster", body = UserPresence),
        (status = 401, description = "missing or unknown service key", body = ErrorBody),
        (status = 422, description = "not a user id (empty, too long, whitespace, control or format characters); `field` is `id`", body = ErrorBody),
        (status = 503, description = "Redis is unavailable; retry", body = ErrorBody),
    ))]
pub async fn user(
    _service: Service,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The id names a Redis key: the same rule as a user id anywhere (an odd one is a 422, not
    // a lookup of a key no user can have).
    input::check_user_id(&id).map_err(|e| ApiError::validation("id", e))?;
    let p = state
        .presence
        .user(&id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("presence unavailable: {e}")))?;
    Ok(HttpResponse::Ok().json(p))
}

#[derive(Serialize, ToSchema)]
pub struct ClusterPresence {
    /// Distinct users with at least one socket on any node.
    pub online_users: u64,
    /// Distinct users with a socket on the node that answered.
    pub node_users: usize,
}

/// `GET /api/v1/presence` (service key): `{"online_users": n}`, distinct users connected anywhere.
#[utoipa::path(get, path = "/api/v1/presence", tag = "service",
    security(("serviceKey" = [])),
    responses(
        (status = 200, description = "users online", body = ClusterPresence),
        (status = 401, description = "missing or unknown service key", body = ErrorBody),
        (status = 503, description = "Redis is unavailable; retry", body = ErrorBody),
    ))]
pub async fn cluster(
    _service: Service,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = state
        .presence
        .online_users()
        .await
        .map_err(|e| ApiError::Unavailable(format!("presence unavailable: {e}")))?;
    Ok(HttpResponse::Ok().json(ClusterPresence {
        online_users: n,
        node_users: state.gateway.users_online(),
    }))
}
