//! Operations: health, readiness, metrics, the OpenAPI document (contract §6).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::broker;
use crate::error::ErrorBody;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `GET /healthz`: the process is alive (no dependency is checked).
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "the process answers", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Bound on the PostgreSQL check (checkout + `SELECT 1`).
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// PostgreSQL answered `SELECT 1` within 2 s.
    pub postgres: bool,
    /// Redis round trip through this node's subscriber; null in single-node mode (no Redis).
    pub redis: Option<bool>,
    /// `NOTIFYD_NODE_ID`.
    pub node: String,
}

/// Ready when PostgreSQL answers within `DB_CHECK_TIMEOUT` and, with Redis, an end-to-end
/// canary works: a token PUBLISHed on this node's own channel arrives through this node's
/// subscriber (see `broker::canary`). A stuck or half-open subscriber makes the node unready.
/// With `NOTIFYD_SERVICE_BIND` set, served on the service listener only (contract §7).
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "PostgreSQL and (if configured) Redis reachable", body = Readiness),
        (status = 404, description = "asked on the public listener of a node with a service listener (NOTIFYD_SERVICE_BIND): readiness answers there only", body = ErrorBody),
        (status = 503, description = "not ready (a dependency is down, or the node is shutting down)", body = Readiness),
    ))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let db = tokio::time::timeout(DB_CHECK_TIMEOUT, async {
        match state.pool.get().await {
            // The simple protocol: no prepared statement (a transaction pooler could not carry one).
            Ok(mut c) => diesel_async::SimpleAsyncConnection::batch_execute(&mut *c, "SELECT 1")
                .await
                .is_ok(),
            Err(_) => false,
        }
    })
    .await
    .unwrap_or(false);
    let redis = match &state.redis {
        None => None,
        Some(pool) => {
            let channel = format!(
                "{}canary:{}",
                state.settings.redis_prefix, state.settings.node_id
            );
            Some(broker::canary(&state.hub, pool, &channel).await)
        }
    };
    let ready = db && redis.unwrap_or(true) && !state.gateway.is_shutting_down();
    let body = Readiness {
        ready,
        postgres: db,
        redis,
        node: state.settings.node_id.clone(),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: Prometheus text (docs/operations.md lists the series). With
/// `NOTIFYD_SERVICE_BIND` set, served on the service listener only (contract §7).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Prometheus text exposition format",
            body = String, content_type = "text/plain"),
        (status = 404, description = "asked on the public listener of a node with a service listener (NOTIFYD_SERVICE_BIND): metrics answer there only", body = ErrorBody),
    ))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}
