//! Presence across the cluster.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::auth::service::Service;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /api/v1/users/{id}/presence` (service key): `{"online", "connections"}` across nodes.
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

/// `GET /api/v1/presence` (service key): `{"online_users": n}`, distinct users connected anywhere.
pub async fn cluster(
    _service: Service,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = state
        .presence
        .online_users()
        .await
        .map_err(|e| ApiError::Unavailable(format!("presence unavailable: {e}")))?;
    Ok(HttpResponse::Ok()
        .json(json!({ "online_users": n, "node_users": state.gateway.users_online() })))
}
