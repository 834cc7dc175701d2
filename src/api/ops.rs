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
