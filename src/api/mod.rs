//! HTTP routes. Handlers parse and authorise, call `inbox`, and wake the relay after a commit;
//! they never build SQL.

pub mod me;
pub mod messages;
pub mod ops;
pub mod presence;
pub mod topics;

use actix_web::web;
use futures_util::StreamExt;

use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(1024 * 1024)
            .error_handler(|e, _| json_error(e.to_string())),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
    )
    .service(ops::healthz)
    .service(ops::readyz)
    .service(ops::metrics)
    .service(ops::openapi)
    .service(crate::gateway::ws::connect)
    .service(
        web::scope("/api/v1")
            .service(messages::create)
            .service(topics::publish)
            .service(presence::user)
            .service(presence::cluster)
            .service(me::list)
            .service(me::unread_count)
            .service(me::changes)
            .service(me::read)
            .service(me::read_all)
            .service(me::seen_all)
            .service(me::delete),
    );
}

fn json_error(msg: String) -> actix_web::Error {
    if msg.contains("overflow") || msg.contains("too large") {
        ApiError::PayloadTooLarge(msg).into()
    } else {
        ApiError::MalformedJson(msg).into()
    }
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
