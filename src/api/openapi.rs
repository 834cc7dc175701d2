//! The OpenAPI document, generated from the `#[utoipa::path]` beside each handler and the schemas
//! beside each type, assembled here and served at `/api-docs/openapi.json`. The WebSocket `/ws`
//! is not in it: OpenAPI cannot describe its frames (docs/websocket.md does).

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{bodies, broadcasts, inbox_states, me, messages, ops, presence, topics, users};
use crate::error::{ErrorBody, ErrorDetail};
use crate::inbox::changes::{Changes, Page};
use crate::inbox::CountsView;
use crate::presence::UserPresence;
use crate::store::messages::{Listed, Message};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "notifyd",
        description = "In-app notifications: internal services create them (service key), users read them (user JWT) over REST and live over the WebSocket `/ws` (not described here: see docs/websocket.md). Every refusal has the error body `{\"error\": {\"code\", \"message\", \"field\"?}}`. A method a path does not answer gets 405 with `Allow`; HEAD works wherever GET does."
    ),
    paths(
        ops::healthz,
        ops::readyz,
        ops::metrics,
        openapi,
        me::list,
        me::unread_count,
        me::changes,
        me::read,
        me::read_all,
        me::seen_all,
        me::send,
        super::preferences::get,
        super::preferences::put,
        super::tickets::create,
        super::push::received,
        super::push::key,
        super::push::subscribe,
        super::push::unsubscribe,
        me::delete,
        inbox_states::unread,
        inbox_states::archive,
        inbox_states::unarchive,
        inbox_states::snooze,
        messages::create,
        messages::retract,
        broadcasts::create,
        broadcasts::show,
        topics::publish,
        users::erase,
        presence::user,
        presence::cluster,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        Message,
        Listed,
        Page,
        Changes,
        CountsView,
        UserPresence,
        bodies::NewMessage,
        bodies::CreateMessages,
        bodies::NewBroadcast,
        bodies::DirectMessage,
        bodies::TopicEvent,
        bodies::ReadIds,
        bodies::Received,
        super::tickets::TicketView,
        super::push::PushKey,
        super::push::SubscriptionId,
        bodies::SnoozeIds,
        bodies::PreferencesBody,
        crate::model::preferences::Preferences,
        crate::model::preferences::TypePreference,
        messages::SkippedRow,
    )),
    modifiers(&AuthSchemes),
    tags(
        (name = "service", description = "Internal service API (contract §3, §8): `Authorization: Bearer <service key>`, never CORS."),
        (name = "user", description = "User API (contract §4, §8): `Authorization: Bearer <user JWT>`, CORS for NOTIFYD_ALLOWED_ORIGINS."),
        (name = "ops", description = "Health, readiness, metrics and this document: no credentials."),
    )
)]
pub struct ApiDoc;

/// The two bearer schemes, named by the `security(...)` of each path.
struct AuthSchemes;

impl Modify for AuthSchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "serviceKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "the key part of a `name:key` pair in NOTIFYD_SERVICE_KEYS",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "userJwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "a user JWT (HS256, NOTIFYD_JWT_SECRET): `sub` = user id (1-128 characters, no whitespace, control or format characters), `exp` required, `nbf` enforced; claims `topics`, `publish`, `send_to` (glob patterns). REST takes it from the Authorization header only.",
                    ))
                    .build(),
            ),
        );
    }
}

/// `GET /api-docs/openapi.json`: this document, generated from the code. Here, beside the
/// document, not in `ops`: the document lists `ops`' handlers.
#[utoipa::path(get, path = "/api-docs/openapi.json", tag = "ops",
    responses((status = 200, description = "the OpenAPI 3.1 document of this API",
        body = Object, content_type = "application/json")))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use actix_web::http::Method;
    use serde_json::{json, Value};

    use super::*;
    use crate::api::{Caller, ENDPOINTS};

    fn doc() -> Value {
        serde_json::to_value(ApiDoc::openapi()).expect("the document serialises")
    }

    fn scheme_of(caller: Caller) -> Option<&'static str> {
        match caller {
            Caller::Anyone | Caller::Browser => None,
            Caller::Service => Some("serviceKey"),
            Caller::User => Some("userJwt"),
        }
    }

    /// `configure` registers exactly `ENDPOINTS` (and `/ws`); the document must describe exactly
    /// those, each method with its caller's security scheme and tag, so the two cannot drift.
    #[test]
    fn the_document_describes_exactly_the_registered_routes() {
        let doc = doc();
        let paths = doc["paths"].as_object().expect("paths");
        let mut registered = vec![];
        for e in ENDPOINTS {
            for m in e.allow.iter().filter(|m| **m != Method::HEAD) {
                let method = m.as_str().to_lowercase();
                let op = &paths
                    .get(e.path)
                    .unwrap_or_else(|| panic!("{} is not in the document", e.path))[&method];
                assert!(op.is_object(), "{method} {} is not in the document", e.path);
                let security = match scheme_of(e.caller) {
                    Some(s) => json!([{ s: [] }]),
                    None => Value::Null,
                };
                assert_eq!(op["security"], security, "{method} {}", e.path);
                let tag = match e.caller {
                    Caller::Anyone => "ops",
                    Caller::Service => "service",
                    Caller::User | Caller::Browser => "user",
                };
                assert_eq!(op["tags"], json!([tag]), "{method} {}", e.path);
                if !matches!(e.caller, Caller::Anyone | Caller::Browser) {
                    assert!(
                        op["responses"]["401"].is_object(),
                        "{method} {} does not document 401",
                        e.path
                    );
                }
                registered.push((e.path.to_string(), method));
            }
        }
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                assert!(
                    registered.contains(&(path.clone(), method.clone())),
                    "{method} {path} is documented but not registered in api::configure"
                );
            }
        }
    }

    /// Every documented refusal carries the error body.
    #[test]
    fn every_error_response_has_the_error_body() {
        let doc = doc();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                for (status, resp) in op["responses"].as_object().expect("responses") {
                    if status.starts_with('4') || (status.starts_with('5') && path != "/readyz") {
                        assert_eq!(
                            resp["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        for scheme in ["serviceKey", "userJwt"] {
            assert_eq!(
                doc["components"]["securitySchemes"][scheme]["scheme"],
                "bearer"
            );
        }
    }

    /// The limits written as literals in `#[utoipa::path]` attributes (which take no constants)
    /// are the ones the server enforces.
    #[test]
    fn literal_limits_in_the_document_are_the_enforced_ones() {
        use crate::inbox::changes::MAX_PAGE;
        use crate::model::input::MAX_IDEMPOTENCY_KEY;
        use crate::model::topic::MAX_TOPIC_CHARS;
        let doc = doc();
        let param = |path: &str, method: &str, name: &str| -> Value {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))["schema"]
                .clone()
        };
        assert_eq!(
            param("/api/v1/me/messages", "get", "limit")["maximum"],
            json!(MAX_PAGE)
        );
        assert_eq!(
            param("/api/v1/topics/{topic}/events", "post", "topic")["maxLength"],
            json!(MAX_TOPIC_CHARS)
        );
        assert_eq!(
            param("/api/v1/users/{id}", "delete", "id")["maxLength"],
            json!(crate::model::input::MAX_ID_CHARS)
        );
        // The name rule's characters, `%` left out (see the parameters' descriptions).
        let path_name = format!("^{}+$", crate::api::bodies::name_char().replace(']', "%]"));
        for (path, method, name) in [
            ("/api/v1/users/{id}", "delete", "id"),
            ("/api/v1/users/{id}/presence", "get", "id"),
            ("/api/v1/topics/{topic}/events", "post", "topic"),
        ] {
            assert_eq!(
                param(path, method, name)["pattern"],
                json!(path_name),
                "{method} {path}"
            );
        }
        assert_eq!(
            param("/api/v1/users/{id}/presence", "get", "id")["maxLength"],
            json!(crate::model::input::MAX_ID_CHARS)
        );
        for path in ["/api/v1/messages", "/api/v1/broadcasts", "/api/v1/me/send"] {
            assert_eq!(
                param(path, "post", "Idempotency-Key")["maxLength"],
                json!(MAX_IDEMPOTENCY_KEY),
                "{path}"
            );
        }
    }
}
