//! A user's preferences (contract §10): per message `type`, whether it is stored at all
//! (`in_app`) and whether it may be Web-Pushed (`push`). Parsed by hand from the `PUT` body so
//! every failure names its field (`types.marketing.in_app`), like `model::input`.
//!
//! A type name follows the rule of the message `type` field (`input::check_type`), so any type
//! a message can carry can be muted. A boolean left out is `true`: `{"marketing":
//! {"in_app": false}}` mutes marketing (and so never pushes it, since nothing is stored), and
//! `{"marketing": {"push": false}}` keeps it in the inbox but never pushes it. Other fields are
//! ignored (the OpenAPI document does not forbid them).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::model::input::check_type;

/// Types one user may name; a document with more is refused (`422`, field `types`).
pub const MAX_TYPES: usize = 100;

/// What a user wants for one message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct TypePreference {
    /// `false`: messages of this type are not stored for this user (`POST /api/v1/messages`
    /// lists them under `skipped`).
    pub in_app: bool,
    /// `false`: messages of this type are never Web-Pushed to this user.
    pub push: bool,
}

impl Default for TypePreference {
    fn default() -> Self {
        TypePreference {
            in_app: true,
            push: true,
        }
    }
}

/// The whole document `GET` answers and `PUT` replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Preferences {
    /// By message type; a type not named here is stored and pushed.
    pub types: BTreeMap<String, TypePreference>,
}

/// The `PUT /api/v1/me/preferences` body: `{"types": {"<type>": {"in_app": bool, "push": bool}}}`.
pub fn parse(body: &Value) -> Result<Preferences, ApiError> {
    let Value::Object(root) = body else {
        return Err(ApiError::validation(
            "",
            "body must be a JSON object: {\"types\": {...}}",
        ));
    };
    let types = match root.get("types") {
        Some(Value::Object(types)) => types,
        None => return Err(ApiError::validation("types", "is required")),
        Some(_) => {
            return Err(ApiError::validation(
                "types",
                "must be an object: {\"<type>\": {\"in_app\": bool, \"push\": bool}}",
            ))
        }
    };
    if types.len() > MAX_TYPES {
        metrics::counter!("notifyd_preferences_refused_total", "reason" => "too_many_types")
            .increment(1);
        return Err(ApiError::validation(
            "types",
            format!("at most {MAX_TYPES} types, got {}", types.len()),
        ));
    }
    let mut out = BTreeMap::new();
    for (kind, v) in types {
        let at = format!("types.{kind}");
        check_type(kind, &at)?;
        let Value::Object(p) = v else {
            return Err(ApiError::validation(
                at,
                "must be an object: {\"in_app\": bool, \"push\": bool}",
            ));
        };
        let flag = |name: &str| match p.get(name) {
            None => Ok(true),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ApiError::validation(
                format!("{at}.{name}"),
                "must be true or false (left out: true)",
            )),
        };
        out.insert(
            kind.clone(),
            TypePreference {
                in_app: flag("in_app")?,
                push: flag("push")?,
            },
        );
    }
    Ok(Preferences { types: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(body: Value) -> String {
        match parse(&body) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_boolean_left_out_is_true_and_other_fields_are_ignored() {
        let p = parse(&json!({"types": {
            "marketing": {"in_app": false},
            "digest": {"push": false, "colour": "red"},
            "chat": {}
        }, "other": 1}))
        .expect("valid");
        let t = |k: &str| p.types[k];
        assert_eq!(
            t("marketing"),
            TypePreference {
                in_app: false,
                push: true
            }
        );
        assert_eq!(
            t("digest"),
            TypePreference {
                in_app: true,
                push: false
            }
        );
        assert_eq!(t("chat"), TypePreference::default());
        assert_eq!(
            serde_json::to_value(&p).unwrap()["types"]["digest"],
            json!({"in_app": true, "push": false})
        );
    }

    #[test]
    fn errors_name_their_field() {
        assert_eq!(field_of(json!([])), "");
        assert_eq!(field_of(json!({})), "types");
        assert_eq!(field_of(json!({"types": []})), "types");
        assert_eq!(field_of(json!({"types": {"": {}}})), "types.");
        let long = "x".repeat(65);
        assert_eq!(
            field_of(json!({"types": {long.clone(): {}}})),
            format!("types.{long}")
        );
        assert_eq!(field_of(json!({"types": {"a\u{0}b": {}}})), "types.a\u{0}b");
        assert_eq!(field_of(json!({"types": {"m": true}})), "types.m");
        assert_eq!(
            field_of(json!({"types": {"m": {"in_app": "no"}}})),
            "types.m.in_app"
        );
        assert_eq!(
            field_of(json!({"types": {"m": {"push": null}}})),
            "types.m.push"
        );
    }

    #[test]
    fn at_most_max_types() {
        let many = |n: usize| {
            let types: serde_json::Map<String, Value> =
                (0..n).map(|i| (format!("t{i}"), json!({}))).collect();
            json!({ "types": types })
        };
        assert_eq!(
            parse(&many(MAX_TYPES)).expect("at the cap").types.len(),
            MAX_TYPES
        );
        assert_eq!(field_of(many(MAX_TYPES + 1)), "types");
    }
}
