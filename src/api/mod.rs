//! HTTP routes. Handlers parse and authorise, call `inbox`, and wake the relay after a commit;
//! they never build SQL.

pub mod broadcasts;
pub mod cors;
pub mod me;
pub mod messages;
pub mod methods;
pub mod ops;
pub mod presence;
pub mod request_span;
pub mod topics;

use actix_web::dev::HttpServiceFactory;
use actix_web::error::{JsonPayloadError, PayloadError};
use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{web, Route};
use futures_util::StreamExt;

use crate::error::ApiError;
use cors::CorsPolicy;
use methods::{only, DELETE, GET, POST};

/// Body limit of the user API's JSON bodies (`{"ids": [...]}`: at most 1,000 ids of 36
/// characters, under 40 KiB). The service API has its own (`NOTIFYD_MAX_BODY_BYTES`, 64 KiB for
/// topic events).
pub const USER_BODY_LIMIT: usize = 64 * 1024;

/// Every route, each with the methods it answers (others: 405 with `Allow`). The user API is
/// in its own scope, the only one with CORS; the service API never answers CORS.
pub fn configure(cfg: &mut web::ServiceConfig, cors: &CorsPolicy) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(USER_BODY_LIMIT)
            // Any content type is read as JSON, as on the service API: otherwise an over-limit
            // body sent as text/plain would be a 400 about its type instead of a 413 (and the
            // bearer token already forces browsers to preflight, so this opens no CSRF path).
            .content_type_required(false)
            .error_handler(|e, _| json_error(e)),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
    )
    // Handlers routed by macro in modules of their own: each is followed by its path's fallback.
    .service(ops::healthz)
    .service(only("/healthz", GET))
    .service(ops::readyz)
    .service(only("/readyz", GET))
    .service(ops::metrics)
    .service(only("/metrics", GET))
    .service(ops::openapi)
    .service(only("/api-docs/openapi.json", GET))
    .service(crate::gateway::ws::connect)
    .service(only("/ws", GET))
    // Registered before `/api/v1`, whose prefix it shares.
    .service(
        web::scope("/api/v1/me")
            .service(browser(cors, "/messages", GET, web::get().to(me::list)))
            .service(browser(
                cors,
                "/unread-count",
                GET,
                web::get().to(me::unread_count),
            ))
            .service(browser(cors, "/changes", GET, web::get().to(me::changes)))
            .service(browser(
                cors,
                "/messages/read",
                POST,
                web::post().to(me::read),
            ))
            .service(browser(
                cors,
                "/messages/read-all",
                POST,
                web::post().to(me::read_all),
            ))
            .service(browser(
                cors,
                "/messages/seen-all",
                POST,
                web::post().to(me::seen_all),
            ))
            .service(browser(cors, "/send", POST, web::post().to(me::send)))
            .service(browser(
                cors,
                "/messages/{id}",
                DELETE,
                web::delete().to(me::delete),
            )),
    )
    .service(
        web::scope("/api/v1")
            .service(only("/messages", POST).route(web::post().to(messages::create)))
            .service(only("/broadcasts", POST).route(web::post().to(broadcasts::create)))
            .service(only("/broadcasts/{id}", GET).route(web::get().to(broadcasts::show)))
            .service(only("/topics/{topic}/events", POST).route(web::post().to(topics::publish)))
            .service(only("/users/{id}/presence", GET).route(web::get().to(presence::user)))
            .service(only("/presence", GET).route(web::get().to(presence::cluster))),
    );
}

/// A route browsers may call from another origin: `allow`'s methods, CORS for exactly those.
pub fn browser(
    cors: &CorsPolicy,
    path: &str,
    allow: &'static [Method],
    route: Route,
) -> impl HttpServiceFactory {
    only(path, allow)
        .route(route)
        .wrap(cors.for_route(allow))
        .wrap(from_fn(move |req, next| cors::edge(req, next, allow)))
}

/// The JSON extractor's errors: a body over its limit is a 413 (whether `Content-Length` said so
/// or the bytes did), anything else malformed JSON.
fn json_error(e: JsonPayloadError) -> actix_web::Error {
    match e {
        JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::PayloadTooLarge(
            format!("request body is {length} bytes, larger than {limit}"),
        ),
        JsonPayloadError::Overflow { limit } => {
            ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"))
        }
        JsonPayloadError::Payload(PayloadError::Overflow) => ApiError::PayloadTooLarge(format!(
            "request body is larger than {USER_BODY_LIMIT} bytes"
        )),
        e => ApiError::MalformedJson(e.to_string()),
    }
    .into()
}

/// Reads a request body up to `limit` bytes; more is a 413 with the error body.
pub async fn read_body(
    req: &actix_web::HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"));
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}
