//! `GET`/`PUT /api/v1/me/preferences` (contract §10): the caller's preferences by message type.
//! The create statement reads them itself (`store::create_rows`); these routes only show and
//! replace the document.

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use diesel_async::AsyncConnection;
use serde_json::Value;

use crate::auth::user::User;
use crate::error::{ApiError, ErrorBody};
use crate::model::preferences::{self, Preferences};
use crate::state::AppState;
use crate::store::preferences as store;

/// The one route of the path: `PUT` replaces, `GET` (and `HEAD`) reads.
pub async fn by_method(
    req: HttpRequest,
    user: User,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if req.method() != Method::PUT {
        return get(user, state).await;
    }
    let body = super::read_body(&req, payload, super::USER_BODY_LIMIT).await?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::MalformedJson(format!("body is not valid JSON: {e}")))?;
    put(user, body, state).await
}

/// `GET /api/v1/me/preferences`
#[utoipa::path(get, path = "/api/v1/me/preferences", tag = "user",
    security(("userJwt" = [])),
    responses(
        (status = 200, description = "the caller's preferences (`{\"types\": {}}` until they set any)", body = Preferences),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn get(user: User, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let user = user.0.user;
    let prefs = state.db(async |c| Ok(store::get(c, &user).await?)).await?;
    Ok(HttpResponse::Ok().json(prefs))
}

/// `PUT /api/v1/me/preferences`: replaces the whole document and answers with it.
#[utoipa::path(put, path = "/api/v1/me/preferences", tag = "user",
    security(("userJwt" = [])),
    request_body(content = super::bodies::PreferencesBody, content_type = "application/json",
        description = "the whole document: types not named are stored and pushed; `in_app` or `push` left out is `true`; at most 64 KiB"),
    responses(
        (status = 200, description = "stored: the document as it now is", body = Preferences),
        (status = 400, description = "the body is not JSON", body = ErrorBody),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "`types` missing or not an object, more than 100 types, a type name not 1 to 64 characters (or with U+0000), or a flag not a boolean; `field` names it", body = ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = ErrorBody),
    ))]
pub async fn put(
    user: User,
    body: Value,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let prefs = preferences::parse(&body)?;
    let user = user.0.user;
    state
        .db(async |c| {
            c.transaction::<_, ApiError, _>(async |c| Ok(store::replace(c, &user, &prefs).await?))
                .await
        })
        .await?;
    metrics::counter!("notifyd_preferences_replaced_total").increment(1);
    Ok(HttpResponse::Ok().json(prefs))
}
