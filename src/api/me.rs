//! The user API (contract §4): the caller's own inbox, authenticated by the user JWT.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::user::User;
use crate::error::ApiError;
use crate::inbox::changes::{self as inbox_changes, MAX_PAGE};
use crate::inbox::commands::{self, Command};
use crate::inbox::direct::{self, Via};
use crate::inbox::CountsView;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    before: Option<String>,
    unread_only: Option<String>,
}

fn int_param(raw: Option<&str>, field: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::validation(
                field,
                format!("must be an integer from {min} to {max}"),
            )),
        },
    }
}

/// `GET /api/v1/me/messages?limit=20&before=<seq>&unread_only=true`
pub async fn list(
    user: User,
    q: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limit = int_param(q.limit.as_deref(), "limit", 1, MAX_PAGE)?.unwrap_or(20);
    let before = int_param(q.before.as_deref(), "before", 1, i64::MAX)?;
    let unread_only = match q.unread_only.as_deref() {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(ApiError::validation("unread_only", "must be true or false")),
    };
    let page = state
        .db(async |conn| inbox_changes::page(conn, &user.0.user, before, limit, unread_only).await)
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// `GET /api/v1/me/unread-count`
pub async fn unread_count(
    user: User,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let c = state
        .db(async |conn| Ok(inbox_changes::counts(conn, &user.0.user).await?))
        .await?;
    Ok(HttpResponse::Ok().json(json!({"unread": c.unread, "unseen": c.unseen, "seq": c.seq})))
}

#[derive(Deserialize)]
pub struct ChangesQuery {
    since: Option<String>,
}

/// `GET /api/v1/me/changes?since=<seq>`
pub async fn changes(
    user: User,
    q: web::Query<ChangesQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let since = int_param(q.since.as_deref(), "since", 0, i64::MAX)?.unwrap_or(0);
    let changes = state
        .db(async |conn| Ok(inbox_changes::since(conn, &user.0.user, since).await?))
        .await?;
    Ok(HttpResponse::Ok().json(changes))
}

#[derive(Deserialize)]
pub struct ReadBody {
    ids: Option<Vec<Value>>,
}

async fn run(state: &AppState, user: &str, cmd: Command) -> Result<CountsView, ApiError> {
    let out = state
        .db(async |conn| Ok(commands::run(conn, user, cmd).await?))
        .await?;
    commands::committed(state, &out);
    Ok(out.counts)
}

/// `POST /api/v1/me/messages/read` body `{"ids": [...]}`
pub async fn read(
    user: User,
    body: web::Json<ReadBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raw = body
        .into_inner()
        .ids
        .ok_or_else(|| ApiError::validation("ids", "is required: {\"ids\": [...]}"))?;
    let ids = commands::parse_ids(&raw)?;
    Ok(HttpResponse::Ok().json(run(&state, &user.0.user, Command::Read(ids)).await?))
}

/// `POST /api/v1/me/messages/read-all`
pub async fn read_all(user: User, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(run(&state, &user.0.user, Command::ReadAll).await?))
}

/// `POST /api/v1/me/messages/seen-all`
pub async fn seen_all(user: User, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(run(&state, &user.0.user, Command::SeenAll).await?))
}

/// `DELETE /api/v1/me/messages/{id}`: 204 whether or not the id named one of the caller's
/// messages, so ids of other users are never revealed.
pub async fn delete(
    user: User,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Ok(id) = Uuid::parse_str(&id) {
        run(&state, &user.0.user, Command::Delete(id)).await?;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /api/v1/me/send` body `{"to_user": "7", "message": {...}}`: a direct message from the
/// caller (contract §8). `201 {"id"}`; `Idempotency-Key` is honoured per sender.
pub async fn send(
    req: HttpRequest,
    user: User,
    body: web::Json<Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = super::messages::idempotency_key(&req)?;
    let Value::Object(body) = body.into_inner() else {
        return Err(ApiError::validation(
            "",
            "body must be a JSON object: {\"to_user\": ..., \"message\": {...}}",
        ));
    };
    let sent = direct::send(
        &state,
        &user.0,
        body.get("to_user"),
        body.get("message"),
        key,
        Via::Rest,
    )
    .await?;
    let mut resp = HttpResponse::Created();
    if sent.replayed {
        resp.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(resp.json(json!({ "id": sent.id })))
}
