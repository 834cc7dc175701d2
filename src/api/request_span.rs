//! One tracing span per HTTP request (issue 11 item 5): method, route, status, the calling
//! service or user (recorded by the auth extractors), the node and a request id, echoed as
//! `X-Request-Id`. Every log line of the request carries them (JSON logs: the `span` field), and
//! the request ends with one access-log line (target `notifyd::http`). Failed calls of a known
//! service are counted by service here, where the caller and the answer are both known.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use tracing::field::Empty;
use tracing::Instrument;

use crate::auth::service::Service;
use crate::error::ApiError;
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A caller's `X-Request-Id` is kept when it is short and plain (it goes into logs), else a
/// new one is made.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())
}

pub async fn trace(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request_id(&req);
    let node = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.settings.node_id.clone())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        method = Empty,
        route = Empty,
        request_id = %id,
        %node,
        status = Empty,
        service = Empty,
        user = Empty,
    );
    // What only the span and the access line show is worked out only when one of them is
    // recorded: finding the route's pattern walks the route table again (about 3% of a
    // single-message POST's instructions, callgrind), and the default log level records neither.
    let spanned = !span.is_disabled();
    let access = tracing::enabled!(target: "notifyd::http", tracing::Level::INFO);
    let method = (spanned || access).then(|| req.method().to_string());
    if let (true, Some(method)) = (spanned, &method) {
        // The route pattern, not the path: ids stay out of the span's fields (the path, without
        // its query string, which may hold a token, is in the access line).
        let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
        span.record("method", method.as_str());
        span.record("route", route.as_str());
    }
    let path = access.then(|| req.path().to_string());
    let started = Instant::now();
    let mut res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    span.record("status", status);
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    let service = res.request().extensions().get::<Service>().cloned();
    if let Some(Service(name)) = service.filter(|_| status >= 400) {
        let code = res
            .response()
            .error()
            .and_then(|e| e.as_error::<ApiError>())
            .map(|e| e.code().to_string())
            .unwrap_or_else(|| format!("http_{status}"));
        metrics::counter!("notifyd_service_errors_total", "service" => name, "code" => code)
            .increment(1);
    }
    if let (Some(method), Some(path)) = (method, path) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        span.in_scope(|| {
            tracing::info!(target: "notifyd::http", latency_ms = ms, "{method} {path} {status}");
        });
    }
    Ok(res)
}
