//! Validation of `POST /api/v1/messages` bodies. Parsing from a `serde_json::Value` by hand lets
//! every failure name its field (`messages[3].title`) and keeps a batch all-or-nothing: nothing is
//! written unless every entry is valid.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::model::names;

pub const MAX_BATCH: usize = 1000;
pub const MAX_ROWS: usize = 10_000;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_CONTENT_BYTES: usize = 8 * 1024;
pub const MAX_DATA_BYTES: usize = 16 * 1024;
pub const MAX_ID_CHARS: usize = 128;
pub const MAX_TYPE_CHARS: usize = 64;
pub const MAX_URL_BYTES: usize = 2048;
pub const DEFAULT_TYPE: &str = "system";
/// An idempotency key: 1 to this many visible ASCII characters.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The rule for an idempotency key (the `Idempotency-Key` header, a `send` frame's `key`).
pub fn check_idempotency_key(key: &str, field: &str) -> Result<(), ApiError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::validation(
            field,
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        ));
    }
    Ok(())
}
/// The rule for a message `type` (also a type name in preferences, `model::preferences`, so
/// every type a message can have can be muted): 1 to `MAX_TYPE_CHARS` characters, no NUL.
pub fn check_type(kind: &str, field: &str) -> Result<(), ApiError> {
    if kind.is_empty() || kind.chars().count() > MAX_TYPE_CHARS {
        return Err(ApiError::validation(
            field,
            format!("must be 1 to {MAX_TYPE_CHARS} characters"),
        ));
    }
    if kind.contains('\0') {
        return Err(ApiError::validation(field, NUL_MESSAGE));
    }
    Ok(())
}

/// PostgreSQL `text` and `jsonb` cannot store U+0000: refusing it here makes it a `422` naming the
/// field instead of a failed insert (`500`).
pub const NUL_MESSAGE: &str = "must not contain the NUL character (U+0000)";

/// One validated entry: a notification for one or more recipients.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageInput {
    pub recipients: Vec<String>,
    pub title: String,
    pub content: String,
    pub kind: String,
    pub send_user: Option<String>,
    pub skip_url: Option<String>,
    pub data: Option<Value>,
}

/// A parsed request: its entries and the JSON it came from, whose canonical form identifies the
/// request for idempotency checks.
#[derive(Debug)]
pub struct CreateRequest {
    pub entries: Vec<MessageInput>,
    /// The request's JSON (valid: it was parsed). Kept as it came, not serialised afresh: only
    /// a create with an `Idempotency-Key` needs the canonical form, and serialising every
    /// body for it cost a third of a single message's parse (callgrind).
    pub source: bytes::Bytes,
}

impl CreateRequest {
    pub fn rows(&self) -> usize {
        self.entries.iter().map(|e| e.recipients.len()).sum()
    }

    /// The canonical form of the request's JSON (keys sorted, no insignificant whitespace): the
    /// same for the same request however its body was formatted.
    pub fn canonical(&self) -> String {
        serde_json::from_slice::<Value>(&self.source)
            .map(|v| v.to_string())
            .unwrap_or_default()
    }
}

pub fn parse_create(body: &[u8]) -> Result<CreateRequest, ApiError> {
    let root: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::MalformedJson(format!("body is not valid JSON: {e}")))?;
    let Value::Object(obj) = &root else {
        return Err(ApiError::validation(
            "",
            "body must be a JSON object: one message or {\"messages\": [...]}",
        ));
    };
    let entries = match obj.get("messages") {
        Some(Value::Array(list)) => {
            if list.is_empty() {
                return Err(ApiError::validation(
                    "messages",
                    "must hold at least one message",
                ));
            }
            if list.len() > MAX_BATCH {
                return Err(ApiError::validation(
                    "messages",
                    format!(
                        "at most {MAX_BATCH} messages per request, got {}",
                        list.len()
                    ),
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(m) => parse_message(m, &format!("messages[{i}].")),
                    _ => Err(ApiError::validation(
                        format!("messages[{i}]"),
                        "must be an object",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => return Err(ApiError::validation("messages", "must be an array")),
        None => vec![parse_message(obj, "")?],
    };
    let req = CreateRequest {
        entries,
        source: bytes::Bytes::copy_from_slice(body),
    };
    if req.rows() > MAX_ROWS {
        let field = if obj.contains_key("messages") {
            "messages"
        } else {
            "to_users"
        };
        return Err(ApiError::validation(
            field,
            format!(
                "a request creates at most {MAX_ROWS} rows, this one {}",
                req.rows()
            ),
        ));
    }
    Ok(req)
}

/// One message object; `at` prefixes the field names in errors (`messages[3].`, `message.`).
pub fn parse_message(m: &Map<String, Value>, at: &str) -> Result<MessageInput, ApiError> {
    let f = |name: &str| format!("{at}{name}");
    let recipients = match (m.get("to_user"), m.get("to_users")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                f("to_users"),
                "give either to_user or to_users, not both",
            ))
        }
        (Some(v), None) => vec![user_id(v, &f("to_user"))?],
        (None, Some(Value::Array(list))) => {
            if list.is_empty() {
                return Err(ApiError::validation(
                    f("to_users"),
                    "must hold at least one user id",
                ));
            }
            // Contract §3 counts distinct ids: a repeat gets no second row and does not count
            // against the limit. The list's raw length is bounded by the body limit alone.
            let mut seen = HashSet::with_capacity(list.len().min(MAX_ROWS));
            let mut ids = Vec::with_capacity(list.len().min(MAX_ROWS));
            for (i, v) in list.iter().enumerate() {
                let id = user_id(v, &format!("{}[{i}]", f("to_users")))?;
                if seen.insert(id.clone()) {
                    if ids.len() == MAX_ROWS {
                        return Err(ApiError::validation(
                            f("to_users"),
                            format!("at most {MAX_ROWS} distinct user ids"),
                        ));
                    }
                    ids.push(id);
                }
            }
            ids
        }
        (None, Some(_)) => {
            return Err(ApiError::validation(
                f("to_users"),
                "must be an array of user ids",
            ))
        }
        (None, None) => {
            return Err(ApiError::validation(
                f("to_user"),
                "is required (or to_users)",
            ))
        }
    };
    parse_content(m, at, recipients)
}

/// Everything of a message but its recipients (given): the fields and limits of contract §3.
fn parse_content(
    m: &Map<String, Value>,
    at: &str,
    recipients: Vec<String>,
) -> Result<MessageInput, ApiError> {
    let f = |name: &str| format!("{at}{name}");
    let title = match m.get("title") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(ApiError::validation(f("title"), "must not be empty"))
        }
        Some(Value::String(s)) if s.contains('\0') => {
            return Err(ApiError::validation(f("title"), NUL_MESSAGE))
        }
        Some(Value::String(s)) if s.chars().count() > MAX_TITLE_CHARS => {
            return Err(ApiError::validation(
                f("title"),
                format!("at most {MAX_TITLE_CHARS} characters"),
            ))
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::validation(f("title"), "must be a string")),
        None => return Err(ApiError::validation(f("title"), "is required")),
    };
    let content = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() > MAX_CONTENT_BYTES => {
            return Err(ApiError::validation(
                f("content"),
                format!("at most {MAX_CONTENT_BYTES} bytes (UTF-8)"),
            ))
        }
        Some(Value::String(s)) if s.contains('\0') => {
            return Err(ApiError::validation(f("content"), NUL_MESSAGE))
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::validation(f("content"), "must be a string")),
    };
    let kind = match m.get("type") {
        None | Some(Value::Null) => DEFAULT_TYPE.to_string(),
        Some(Value::String(s)) => {
            check_type(s, &f("type"))?;
            s.clone()
        }
        Some(_) => return Err(ApiError::validation(f("type"), "must be a string")),
    };
    let send_user = match m.get("send_user") {
        None | Some(Value::Null) => None,
        Some(v) => Some(user_id(v, &f("send_user"))?),
    };
    let skip_url = match m.get("skip_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(check_url(s).map_err(|msg| ApiError::validation(f("skip_url"), msg))?)
        }
        Some(_) => return Err(ApiError::validation(f("skip_url"), "must be a string")),
    };
    let data = match m.get("data") {
        None | Some(Value::Null) => None,
        Some(v) => {
            if v.to_string().len() > MAX_DATA_BYTES {
                return Err(ApiError::validation(
                    f("data"),
                    format!("at most {MAX_DATA_BYTES} bytes as JSON"),
                ));
            }
            if json_has_nul(v) {
                return Err(ApiError::validation(f("data"), NUL_MESSAGE));
            }
            Some(v.clone())
        }
    };
    Ok(MessageInput {
        recipients,
        title,
        content,
        kind,
        send_user,
        skip_url,
        data,
    })
}

/// A validated announcement (`POST /api/v1/broadcasts`): one message for every known user.
#[derive(Debug)]
pub struct BroadcastRequest {
    /// The message, with no recipients: the worker fills them in, batch by batch.
    pub message: MessageInput,
    /// The body's canonical form, for `Idempotency-Key` checks.
    pub canonical: String,
}

/// One message body as for `POST /api/v1/messages` (same fields, same limits), without
/// recipients: naming any (`to_user`, `to_users`, or a `messages` list) is refused, since an
/// announcement goes to everyone.
pub fn parse_broadcast(body: &[u8]) -> Result<BroadcastRequest, ApiError> {
    let root: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::MalformedJson(format!("body is not valid JSON: {e}")))?;
    let Value::Object(obj) = &root else {
        return Err(ApiError::validation(
            "",
            "body must be a JSON object: one message",
        ));
    };
    for field in ["to_user", "to_users", "messages"] {
        if obj.contains_key(field) {
            return Err(ApiError::validation(
                field,
                "an announcement goes to every known user: omit it",
            ));
        }
    }
    Ok(BroadcastRequest {
        message: parse_content(obj, "", vec![])?,
        canonical: root.to_string(),
    })
}

/// Whether any string or key in `v` holds U+0000 (which `jsonb` refuses).
pub fn json_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(json_has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

/// User ids are strings; JSON integers are accepted and kept as their decimal text. JSON (and
/// JSON Schema's `integer`) does not tell `42` from `42.0`, so an integral number written with a
/// fraction or exponent is the same user `42`.
pub fn user_id(v: &Value, field: &str) -> Result<String, ApiError> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => match n.as_f64() {
            // Only where every integer is exact as f64: beyond 2^53 the text (say
            // -9223372036854775809) may have been rounded into range by the JSON parser.
            Some(f) if f.fract() == 0.0 && f.abs() <= 2f64.powi(53) => (f as i64).to_string(),
            _ => return Err(ApiError::validation(field, "must be a user id (a string)")),
        },
        _ => return Err(ApiError::validation(field, "must be a user id (a string)")),
    };
    check_user_id(&s).map_err(|message| ApiError::validation(field, message))?;
    Ok(s)
}

/// The rules of a user id wherever one comes from (a request body, a token's `sub`, a path):
/// the one name rule (`names`): 1 to `MAX_ID_CHARS` characters, no whitespace anywhere (so no
/// leading spaces, tabs or newlines), no control character (U+0000 included, which PostgreSQL
/// `text` refuses) and no format character (bidi overrides, zero-width characters).
pub fn check_user_id(s: &str) -> Result<(), String> {
    match names::check(s, MAX_ID_CHARS) {
        Ok(()) => Ok(()),
        Err(names::Refused::Length) => Err(format!("must be 1 to {MAX_ID_CHARS} characters")),
        Err(names::Refused::Char(c)) => Err(format!(
            "must not contain whitespace, control or format characters (found {})",
            names::describe(c)
        )),
    }
}

/// `skip_url` must be relative (`/posts/9`, `posts/9`, `?tab=2`) or absolute http(s). Anything
/// with another scheme (`javascript:`, `data:`) or protocol-relative (`//evil.example`) is refused:
/// the browser client follows this URL on click.
pub fn check_url(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty (omit it or send null)".into());
    }
    if s.len() > MAX_URL_BYTES {
        return Err(format!("at most {MAX_URL_BYTES} bytes"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".into());
    }
    if s.starts_with("//") || s.starts_with("\\") || s.starts_with("/\\") {
        return Err("protocol-relative URLs are not allowed".into());
    }
    let scheme_end = s.find(':');
    let path_start = s.find(['/', '?', '#']);
    match scheme_end {
        Some(c) if path_start.is_none_or(|p| c < p) => {
            let scheme = s[..c].to_ascii_lowercase();
            if (scheme == "http" || scheme == "https")
                && s[c + 1..].starts_with("//")
                && s.len() > c + 3
            {
                Ok(s.to_string())
            } else {
                Err("must be a relative URL or an absolute http(s) URL".into())
            }
        }
        _ => Ok(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(body: Value) -> String {
        match parse_create(body.to_string().as_bytes()) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_single_message_parses_with_defaults() {
        let r = parse_create(br#"{"to_user": 42, "title": "Hi"}"#).unwrap();
        assert_eq!(r.entries.len(), 1);
        let m = &r.entries[0];
        assert_eq!(m.recipients, vec!["42"]);
        assert_eq!((m.content.as_str(), m.kind.as_str()), ("", DEFAULT_TYPE));
    }

    #[test]
    fn to_users_are_deduplicated_in_order() {
        let r = parse_create(br#"{"to_users": ["b","a","b"], "title": "Hi"}"#).unwrap();
        assert_eq!(r.entries[0].recipients, vec!["b", "a"]);
    }

    /// Contract §3: "up to 10,000 distinct ids": repeats are dropped, not counted.
    #[test]
    fn duplicate_to_users_do_not_count_against_the_limit() {
        let mut users: Vec<String> = (0..MAX_ROWS).map(|i| i.to_string()).collect();
        users.extend((0..MAX_ROWS).map(|i| i.to_string()));
        let r = parse_create(
            json!({"to_users": users, "title": "t"})
                .to_string()
                .as_bytes(),
        )
        .expect("10,000 distinct ids, each twice");
        assert_eq!(r.rows(), MAX_ROWS);
        let users: Vec<String> = (0..=MAX_ROWS).map(|i| i.to_string()).collect();
        assert_eq!(
            field_of(json!({"to_users": users, "title": "t"})),
            "to_users"
        );
    }

    #[test]
    fn errors_name_the_field_inside_a_batch() {
        let ok = json!({"to_user": "1", "title": "t"});
        let bad = json!({"to_user": "1", "title": "x".repeat(201)});
        assert_eq!(
            field_of(json!({"messages": [ok, ok, bad]})),
            "messages[2].title"
        );
        assert_eq!(field_of(json!({"title": "t"})), "to_user");
        assert_eq!(field_of(json!({"to_user": "1"})), "title");
        assert_eq!(
            field_of(json!({"to_user": "1", "title": "t", "content": "x".repeat(8193)})),
            "content"
        );
        assert_eq!(
            field_of(json!({"to_user": "1", "title": "t", "data": {"k": "x".repeat(16 * 1024)}})),
            "data"
        );
        assert_eq!(
            field_of(json!({"to_user": "1", "title": "t", "skip_url": "javascript:alert(1)"})),
            "skip_url"
        );
        assert_eq!(
            field_of(json!({"to_user": "1", "to_users": ["2"], "title": "t"})),
            "to_users"
        );
        assert_eq!(field_of(json!({"messages": []})), "messages");
    }

    #[test]
    fn nul_characters_are_refused_with_their_field() {
        let nul = "a\u{0}b";
        assert_eq!(field_of(json!({"to_user": "1", "title": nul})), "title");
        assert_eq!(
            field_of(json!({"to_user": "1", "title": "t", "content": nul})),
            "content"
        );
        assert_eq!(
            field_of(json!({"to_user": "1", "title": "t", "type": nul})),
            "type"
        );
        assert_eq!(
            field_of(json!({"to_user": "1", "title": "t", "data": {"k": [1, {"x": nul}]}})),
            "data"
        );
        assert_eq!(
            field_of(json!({"to_user": "1", "title": "t", "data": {nul: 1}})),
            "data"
        );
        assert_eq!(field_of(json!({"to_user": nul, "title": "t"})), "to_user");
    }

    /// User ids follow the name rule (`names`): format characters are refused like controls,
    /// and the message names the character by code point (printed, it would be invisible).
    #[test]
    fn user_ids_refuse_format_characters_by_code_point() {
        assert_eq!(check_user_id("u42"), Ok(()));
        let e = check_user_id("u\u{202e}42").unwrap_err();
        assert!(e.contains("U+202E"), "{e}");
        assert_eq!(
            field_of(json!({"to_users": ["1", "\u{200d}"], "title": "t"})),
            "to_users[1]"
        );
    }

    #[test]
    fn limits_are_exact() {
        let title = "é".repeat(200);
        assert!(parse_create(
            json!({"to_user": "1", "title": title})
                .to_string()
                .as_bytes()
        )
        .is_ok());
        let content = "x".repeat(8192);
        assert!(parse_create(
            json!({"to_user": "1", "title": "t", "content": content})
                .to_string()
                .as_bytes()
        )
        .is_ok());
        let batch: Vec<Value> = (0..1000)
            .map(|i| json!({"to_user": i.to_string(), "title": "t"}))
            .collect();
        assert!(parse_create(json!({ "messages": batch }).to_string().as_bytes()).is_ok());
        let batch: Vec<Value> = (0..1001)
            .map(|i| json!({"to_user": i.to_string(), "title": "t"}))
            .collect();
        assert_eq!(field_of(json!({ "messages": batch })), "messages");
        let users: Vec<String> = (0..10_001).map(|i| i.to_string()).collect();
        assert_eq!(
            field_of(json!({"to_users": users, "title": "t"})),
            "to_users"
        );
    }

    #[test]
    fn a_broadcast_is_one_message_without_recipients() {
        let b = parse_broadcast(br#"{"title": "Maintenance", "type": "system"}"#).unwrap();
        assert!(b.message.recipients.is_empty());
        assert_eq!(b.message.title, "Maintenance");
        let field = |body: Value| match parse_broadcast(body.to_string().as_bytes()) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        };
        assert_eq!(field(json!({"to_user": "1", "title": "t"})), "to_user");
        assert_eq!(field(json!({"to_users": ["1"], "title": "t"})), "to_users");
        assert_eq!(field(json!({"messages": [], "title": "t"})), "messages");
        assert_eq!(field(json!({"content": "c"})), "title");
        assert_eq!(field(json!({"title": "x".repeat(201)})), "title");
        assert_eq!(
            field(json!({"title": "t", "skip_url": "//evil"})),
            "skip_url"
        );
        assert_eq!(field(json!(["title"])), "");
    }

    #[test]
    fn malformed_json_is_not_a_validation_error() {
        assert!(matches!(
            parse_create(b"{nope"),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse_create(&[0xff, 0xfe]),
            Err(ApiError::MalformedJson(_))
        ));
    }

    #[test]
    fn urls() {
        for ok in [
            "/posts/9#c3",
            "posts/9",
            "?tab=2",
            "https://example.com/x",
            "HTTP://example.com",
            "/a:b",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "//evil.example",
            "http:/x",
            "mailto:a@b",
            "/x y",
            "https://",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
