//! Operations: health, readiness, metrics, the OpenAPI document.

use actix_web::{get, web, HttpResponse};
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::state::AppState;

#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when PostgreSQL answers and, if configured, Redis answers and the subscriber is connected.
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let db = match state.pool.get().await {
        Ok(mut c) => diesel::sql_query("SELECT 1").execute(&mut c).await.is_ok(),
        Err(_) => false,
    };
    let redis = match &state.redis {
        None => None,
        Some(pool) => Some(match pool.get().await {
            Ok(mut c) => {
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                    && state.hub.is_connected()
            }
            Err(_) => false,
        }),
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
