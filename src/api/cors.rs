//! CORS for the browser-facing routes (contract §7): the user API (`/api/v1/me/...`) and the JS
//! client. The service API never gets it: it is called by servers, and a browser page must never
//! be able to use a service key it somehow holds.
//!
//! actix-cors does the work, one instance per route so a preflight answers exactly that route's
//! methods. `edge` then brings its answers in line with the contract: a preflight that passes is
//! `204` (actix-cors says `200`), and a refused one gets the JSON error body (actix-cors sends
//! plain text) without `Access-Control-Allow-Origin`.

use std::sync::Arc;

use actix_cors::{Cors, CorsError};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::ResponseError;

use super::methods;
use crate::config::values;
use crate::error::ApiError;

/// How long a browser may cache a preflight answer. Short, so a change of
/// `NOTIFYD_ALLOWED_ORIGINS` takes effect soon; Chromium caps it at 2 h anyway.
pub const PREFLIGHT_MAX_AGE_SECS: usize = 600;

/// Which origins get `Access-Control-Allow-Origin`: those of `NOTIFYD_ALLOWED_ORIGINS`, or any
/// origin when it is unset (dev only; start-up warns).
#[derive(Clone, Debug)]
pub struct CorsPolicy {
    origins: Option<Arc<[String]>>,
}

impl CorsPolicy {
    pub fn new(allowed_origins: Option<&[String]>) -> Self {
        // `*` in the list means any origin, as on the WebSocket handshake.
        let origins = allowed_origins
            .filter(|o| !o.iter().any(|x| x == "*"))
            .map(Arc::from);
        CorsPolicy { origins }
    }

    /// The middleware for one route answering `allow`.
    pub fn for_route(&self, allow: &[Method]) -> Cors {
        let cors = match &self.origins {
            None => Cors::default().allow_any_origin(),
            // A function rather than `allowed_origin`: that one panics on `*` and fails the
            // worker on an origin it cannot parse; a plain comparison cannot fail. The same
            // comparison as the WebSocket handshake's (`values::origin_allowed`).
            Some(list) => {
                let list = list.clone();
                Cors::default().allowed_origin_fn(move |origin, _| {
                    origin
                        .to_str()
                        .is_ok_and(|o| values::origin_allowed(&list, o))
                })
            }
        };
        cors.allowed_methods(allow.iter().cloned())
            // `Idempotency-Key` for `POST /api/v1/me/send`; pages may read `Retry-After` of a
            // 429 and whether a send was a replay.
            .allowed_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::HeaderName::from_static("idempotent-replayed"),
            ])
            .max_age(PREFLIGHT_MAX_AGE_SECS)
            // Actual requests from other origins are served without ACAO (the browser then
            // keeps the answer from the page) rather than refused: refusing protects nothing, as
            // non-browser clients ignore CORS, and would break same-site pages that send Origin.
            .block_on_origin_mismatch(false)
    }
}

/// Wraps a route's `Cors` (outside it): `204` for an accepted preflight, the error body for a
/// refused one. `allow` = the route's methods.
pub async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    allow: &'static [Method],
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut res = next.call(req).await?.map_into_boxed_body();
    if !preflight {
        return Ok(res);
    }
    if res.status() == StatusCode::OK {
        *res.response_mut().status_mut() = StatusCode::NO_CONTENT;
        metrics::counter!("notifyd_cors_preflights_total", "result" => "allowed").increment(1);
        return Ok(res);
    }
    let Some(err) = res
        .response()
        .error()
        .and_then(|e| e.as_error::<CorsError>())
        .cloned()
    else {
        return Ok(res);
    };
    metrics::counter!("notifyd_cors_preflights_total", "result" => "refused").increment(1);
    let (req, _) = res.into_parts();
    let answer = match err {
        CorsError::OriginNotAllowed => {
            ApiError::Forbidden("origin is not allowed".into()).error_response()
        }
        CorsError::MethodNotAllowed => methods::not_allowed(allow),
        CorsError::HeadersNotAllowed => ApiError::Forbidden(
            "a requested header is not allowed (allowed: authorization, content-type, idempotency-key)".into(),
        )
        .error_response(),
        other => ApiError::BadRequest(format!("CORS preflight: {other}")).error_response(),
    };
    let mut res = ServiceResponse::new(req, answer);
    res.headers_mut()
        .insert(header::VARY, header::HeaderValue::from_static("Origin"));
    Ok(res)
}
