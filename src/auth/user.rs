//! End users: the JWT from `Authorization: Bearer` on REST; on the WebSocket handshake also from
//! `?token=` (browsers cannot set headers there). REST refuses `?token=` so tokens stay out of
//! proxy and access logs, which record query strings.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use super::bearer;
use super::jwt::{JwtKeys, UserClaims};
use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct User(pub UserClaims);

impl FromRequest for User {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req).map(|claims| {
            tracing::Span::current().record("user", claims.user.as_str());
            User(claims)
        }))
    }
}

/// REST: the token from the `Authorization: Bearer` header only.
pub fn authenticate(req: &HttpRequest) -> Result<UserClaims, ApiError> {
    let token = bearer(req).ok_or_else(|| {
        ApiError::Unauthorized("missing user token (Authorization: Bearer <token>)".into())
    })?;
    verify(req, token)
}

/// The WebSocket handshake: the `Authorization: Bearer` header, else `?token=`. Without any
/// token: `Ok(None)` (an anonymous viewer) when `anonymous_allowed` (`NOTIFYD_PUBLIC_TOPICS`
/// is set), else 401. A token that is present but invalid is always 401, never anonymous.
pub fn authenticate_ws(
    req: &HttpRequest,
    anonymous_allowed: bool,
) -> Result<Option<UserClaims>, ApiError> {
    // Anonymous means no credentials at all: a non-Bearer `Authorization`, an empty `token=` or
    // a query string that cannot be read is a failed login (401), never a quiet downgrade.
    let has_header = req
        .headers()
        .contains_key(actix_web::http::header::AUTHORIZATION);
    let token = match bearer(req) {
        Some(t) => t.to_string(),
        None if has_header => {
            return Err(ApiError::Unauthorized(
                "the Authorization header must be Bearer <token>".into(),
            ))
        }
        None => match query_token(req.query_string()) {
            Err(why) => return Err(ApiError::Unauthorized(why.into())),
            Ok(Some(t)) => t,
            Ok(None) if anonymous_allowed => return Ok(None),
            Ok(None) => {
                return Err(ApiError::Unauthorized(
                    "missing user token (?token= or Authorization: Bearer)".into(),
                ))
            }
        },
    };
    verify(req, &token).map(Some)
}

/// Checks `token` with the keys the app registered (`web::Data<JwtKeys>`, see
/// `startup::serve_http`).
fn verify(req: &HttpRequest, token: &str) -> Result<UserClaims, ApiError> {
    let keys = req
        .app_data::<web::Data<JwtKeys>>()
        .ok_or_else(|| anyhow::anyhow!("JWT keys missing from the app data"))?;
    keys.verify(token).map_err(ApiError::Unauthorized)
}

/// `?token=`: `Ok(None)` when the query has no `token` at all.
fn query_token(qs: &str) -> Result<Option<String>, &'static str> {
    let q = web::Query::<std::collections::HashMap<String, String>>::from_query(qs)
        .map_err(|_| "the query string cannot be read")?;
    match q.get("token") {
        None => Ok(None),
        Some(t) if t.is_empty() => Err("empty ?token="),
        Some(t) => Ok(Some(t.clone())),
    }
}
