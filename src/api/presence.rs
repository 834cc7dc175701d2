//! Presence across the cluster.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::service::Service;
use crate::error::{ApiError, ErrorBody};
use crate::presence::UserPresence;
use crate::state::AppState;

/// `GET /api/v1/users/{id}/presence` (service key): `{"online", "connections"}` across nodes.
#[utoipa::path(get, path = "/api/v1/users/{id}/presence", tag = "service",
    security(("serviceKey" = [])),
    params(("id" = String, Path, description = "a user id")),
    responses(
        (status = 200, description = "the user's open sockets across the cluster", body = UserPresence),
        (status = 401, description = "missing or unknown service key", body = ErrorBody),
        (status = 503, description = "Redis is unavailable; retry", body = ErrorBody),
    ))]
pub async fn user(
    _service: Service,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
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
