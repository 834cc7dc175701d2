//! Static browser assets: the JS client (always) and the demo page (`serve --dev` only).

use actix_web::{get, web, HttpResponse};

pub fn configure_client(cfg: &mut web::ServiceConfig) {
    cfg.service(client);
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(client).service(demo);
}

#[get("/client/notifyd-client.js")]
async fn client() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(include_str!("../web/notifyd-client.js"))
}

#[get("/demo")]
async fn demo() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("../web/demo.html"))
}
