//! Property tests for the two parsers that take raw client input: the POST body validation and
//! the WebSocket frame parser. Whatever the bytes, they answer Ok or a typed error; never panic.
//! `PROPTEST_CASES` raises the number of cases (the docs record a long run).

use notifyd::error::ApiError;
use notifyd::model::input::parse_create;
use notifyd::wire::protocol;
use proptest::prelude::*;
use serde_json::{json, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        prop::sample::select(vec![
            "to_user",
            "title",
            "content",
            "type",
            "messages",
            "to_users",
            "skip_url",
            "data",
            "ids",
            "topics",
            "read",
            "subscribe",
            "ping"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "to_user",
                    "to_users",
                    "title",
                    "content",
                    "type",
                    "send_user",
                    "skip_url",
                    "data",
                    "messages",
                    "ids",
                    "topics",
                    "ref",
                    "type",
                    "x"
                ])
                .prop_map(String::from),
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000), ..ProptestConfig::default() })]

    #[test]
    fn create_body_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_create(&bytes);
    }

    #[test]
    fn create_body_never_panics_on_json(v in json_value()) {
        match parse_create(v.to_string().as_bytes()) {
            Ok(req) => prop_assert!(req.rows() >= 1 && req.rows() <= 10_000),
            Err(ApiError::Validation { .. }) | Err(ApiError::MalformedJson(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error kind {other:?}"),
        }
    }

    #[test]
    fn frames_never_panic_on_text(s in ".{0,512}") {
        let _ = protocol::parse(&s);
    }

    #[test]
    fn frames_never_panic_on_json(v in json_value()) {
        match protocol::parse(&v.to_string()) {
            Ok(_) => prop_assert!(v.get("type").and_then(Value::as_str).is_some()),
            Err(e) => prop_assert!(["bad_frame", "unknown_type", "validation_failed"].contains(&e.code)),
        }
    }

    #[test]
    fn invalid_utf8_is_malformed_json(prefix in "[a-z{\":]{0,20}", bad in prop::collection::vec(0x80u8..0xffu8, 1..8)) {
        let mut bytes = prefix.into_bytes();
        bytes.extend(bad);
        prop_assert!(parse_create(&bytes).is_err());
    }
}

#[test]
fn deeply_nested_json_is_refused_not_overflowed() {
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    assert!(matches!(
        parse_create(deep.as_bytes()),
        Err(ApiError::MalformedJson(_))
    ));
    assert!(protocol::parse(&deep).is_err());
    let deep_obj = format!(
        "{{\"to_user\":\"1\",\"title\":\"t\",\"data\":{}}}",
        "{\"a\":".repeat(5000) + "1" + &"}".repeat(5000)
    );
    assert!(parse_create(deep_obj.as_bytes()).is_err());
}

#[test]
fn oversize_fields_are_validation_errors() {
    let huge = json!({"to_user": "1", "title": "t", "content": "x".repeat(1 << 20)});
    assert!(matches!(
        parse_create(huge.to_string().as_bytes()),
        Err(ApiError::Validation { .. })
    ));
    let many_ids: Vec<Value> = (0..5000).map(|i| json!(i.to_string())).collect();
    let frame = json!({"type": "read", "ids": many_ids});
    assert_eq!(
        protocol::parse(&frame.to_string()).unwrap_err().code,
        "bad_frame"
    );
}
