//! Operations: health, readiness, metrics, the OpenAPI document.

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::broker;
use crate::state::AppState;

#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Bound on the PostgreSQL check (checkout + `SELECT 1`).
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Ready when PostgreSQL answers within `DB_CHECK_TIMEOUT` and, with Redis, an end-to-end
/// canary works: a token PUBLISHed on this node's own channel arrives through this node's
/// subscriber (see `broker::canary`). A stuck or half-open subscriber makes the node unready.
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let db = tokio::time::timeout(DB_CHECK_TIMEOUT, async {
        match state.pool.get().await {
            Ok(mut c) => diesel::sql_query("SELECT 1").execute(&mut c).await.is_ok(),
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
    let ok = db && redis.unwrap_or(true) && !state.gateway.is_shutting_down();
    let body = json!({"ready": ok, "postgres": db, "redis": redis, "node": state.settings.node_id});
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[get("/metrics")]
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

#[get("/api-docs/openapi.json")]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!("../../docs/openapi.json"))
}

#[cfg(test)]
mod tests {
    /// The hand-written OpenAPI document must list every route the service serves.
    #[test]
    fn openapi_lists_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/openapi.json")).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for (path, method) in [
            ("/api/v1/messages", "post"),
            ("/api/v1/broadcasts", "post"),
            ("/api/v1/broadcasts/{id}", "get"),
            ("/api/v1/topics/{topic}/events", "post"),
            ("/api/v1/users/{id}/presence", "get"),
            ("/api/v1/presence", "get"),
            ("/api/v1/me/messages", "get"),
            ("/api/v1/me/unread-count", "get"),
            ("/api/v1/me/changes", "get"),
            ("/api/v1/me/messages/read", "post"),
            ("/api/v1/me/messages/read-all", "post"),
            ("/api/v1/me/messages/seen-all", "post"),
            ("/api/v1/me/messages/{id}", "delete"),
            ("/api/v1/me/send", "post"),
            ("/ws", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
        ] {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} missing from docs/openapi.json"
            );
        }
    }
}
