//! End users: the JWT from `Authorization: Bearer` or `?token=` (browsers cannot set headers on
//! a WebSocket handshake).

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use super::bearer;
use super::jwt::UserClaims;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Clone)]
pub struct User(pub UserClaims);

impl FromRequest for User {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req).map(User))
    }
}

pub fn authenticate(req: &HttpRequest) -> Result<UserClaims, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| anyhow::anyhow!("app state missing"))?;
    let token = match bearer(req) {
        Some(t) => t.to_string(),
        None => query_token(req.query_string())
            .ok_or_else(|| ApiError::Unauthorized("missing user token".into()))?,
    };
    state.jwt.verify(&token).map_err(ApiError::Unauthorized)
}

fn query_token(qs: &str) -> Option<String> {
    web::Query::<std::collections::HashMap<String, String>>::from_query(qs)
        .ok()?
        .get("token")
        .cloned()
        .filter(|t| !t.is_empty())
}
