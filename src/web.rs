//! Static browser assets: the JS client (always) and the demo page (`serve --dev` only), plus the
//! dev-only token endpoint the demo page logs in with.

use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

/// Lifetime of a demo token. The client asks for a fresh one on every (re)connect.
const DEMO_TOKEN_TTL_SECS: i64 = 3600;

pub fn configure_client(cfg: &mut web::ServiceConfig) {
    cfg.service(client);
}

/// `serve --dev` only: the client, the demo page and `GET /demo/token`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(client).service(demo).service(demo_token);
}

#[get("/client/notifyd-client.js")]
async fn client() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("../web/notifyd-client.js"))
}

#[get("/demo")]
async fn demo() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("../web/demo.html"))
}

#[derive(Deserialize)]
struct TokenQuery {
    user: Option<String>,
}

/// `GET /demo/token?user=42` → `{"token": "<user JWT>"}`, signed with the node's (dev) secret.
/// Registered only with `serve --dev`: anyone who can reach it can act as any user.
#[get("/demo/token")]
async fn demo_token(
    q: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raw = q.user.as_deref().unwrap_or("42");
    let user = crate::inbox::input::user_id(&Value::String(raw.to_string()), "user")?;
    let topics = ["product:*".to_string(), "group:*".to_string()];
    let token = state.jwt.mint(&user, DEMO_TOKEN_TTL_SECS, &topics)?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "token": token, "user": user, "expires_in": DEMO_TOKEN_TTL_SECS })))
}
