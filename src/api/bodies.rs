//! Request bodies as the OpenAPI document describes them. The service API parses its bodies by
//! hand (`inbox::input`, so that every failure names its field and a batch is all-or-nothing),
//! so their schemas are built here from the same constants the parser enforces, not derived:
//! a limit changed there changes the document too.

use std::borrow::Cow;

use utoipa::openapi::schema::{
    ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::inbox::commands::MAX_READ_IDS;
use crate::model::input::{
    MAX_BATCH, MAX_CONTENT_BYTES, MAX_DATA_BYTES, MAX_ID_CHARS, MAX_ROWS, MAX_TITLE_CHARS,
    MAX_TYPE_CHARS, MAX_URL_BYTES,
};
use crate::model::preferences::MAX_TYPES;
use crate::model::topic::MAX_TOPIC_CHARS;

/// Characters refused in URLs: whitespace and control characters (`\s` is Unicode whitespace
/// in both ECMAScript and Python regular expressions).
const NO_SPACE_OR_CONTROL: &str = r"[^\s\x00-\x1f\x7f-\x9f]";

/// A character of a name (`names`: ids, topics): not whitespace, control or a format
/// character. The path parameters' patterns in `#[utoipa::path]` (which take only literals)
/// spell the same class, with `%` left out; a test in `openapi` compares them.
pub fn name_char() -> String {
    format!(
        r"[^\s\x00-\x1f\x7f-\x9f{}]",
        crate::model::names::BMP_FORMAT_CLASS
    )
}

/// A user id: 1 to `MAX_ID_CHARS` characters, no whitespace, control or format character
/// (`input::check_user_id`). A JSON integer is accepted too and kept as its decimal text.
pub fn user_id() -> OneOfBuilder {
    OneOfBuilder::new()
        .item(id_string("a user id"))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                // What serde_json reads as i64 or u64; beyond that it is a float, refused.
                .minimum(Some(i64::MIN as isize))
                .maximum(Some(u64::MAX as usize))
                .description(Some("an integer user id, kept as its decimal text")),
        )
        .description(Some(
            "A user id: 1 to 128 characters, no whitespace, control or format characters (or a JSON integer).",
        ))
}

/// A string of 1 to `MAX_ID_CHARS` characters without whitespace, control or format characters.
pub fn id_string(what: &str) -> Schema {
    string(1, MAX_ID_CHARS)
        .pattern(Some(format!("^{}+$", name_char())))
        .description(Some(format!(
            "{what}: 1 to {MAX_ID_CHARS} characters, no whitespace, control or format characters"
        )))
        .into()
}

/// A topic name as in the path of `POST /api/v1/topics/{topic}/events` (`model::topic::check_topic`).
pub fn topic() -> Schema {
    string(1, MAX_TOPIC_CHARS)
        .pattern(Some(format!("^{}+$", name_char())))
        .description(Some(format!(
            "e.g. `product:42`, `group:7`: 1 to {MAX_TOPIC_CHARS} characters, no whitespace, control or format characters"
        )))
        .into()
}

/// A property that must be absent: `enum: []` matches no value.
fn absent(why: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .enum_values(Some(Vec::<serde_json::Value>::new()))
        .description(Some(format!("must be absent: {why}")))
}

fn string(min: usize, max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
}

fn nullable(t: Type) -> SchemaType {
    [t, Type::Null].into_iter().collect()
}

/// Any JSON value, as `data` (at most `MAX_DATA_BYTES` as JSON, no U+0000 anywhere).
fn data() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .description(Some(format!(
            "any JSON, opaque to notifyd: at most {MAX_DATA_BYTES} bytes as JSON, no U+0000 in any string or key"
        )))
        .into()
}

/// The fields every message has, whoever it goes to (`input::parse_content`), and the sender.
fn content_fields(b: ObjectBuilder) -> ObjectBuilder {
    common_fields(b).property(
        "send_user",
        OneOfBuilder::new()
            .item(user_id())
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some(
                "the sender's user id; absent or null: a system notification",
            )),
    )
}

/// The fields of a message but its sender.
fn common_fields(b: ObjectBuilder) -> ObjectBuilder {
    b.property(
        "title",
        string(1, MAX_TITLE_CHARS)
            // Not blank, no U+0000.
            .pattern(Some(r"^[^\x00]*[^\s\x00][^\x00]*$"))
            .description(Some(format!(
                "1 to {MAX_TITLE_CHARS} characters, not only whitespace, no U+0000"
            ))),
    )
    .required("title")
    .property(
        "content",
        ObjectBuilder::new()
            .schema_type(nullable(Type::String))
            .max_length(Some(MAX_CONTENT_BYTES))
            .pattern(Some(r"^[^\x00]*$"))
            .description(Some(format!(
                "at most {MAX_CONTENT_BYTES} bytes (UTF-8), no U+0000; default empty"
            ))),
    )
    .property(
        "type",
        ObjectBuilder::new()
            .schema_type(nullable(Type::String))
            .min_length(Some(1))
            .max_length(Some(MAX_TYPE_CHARS))
            .pattern(Some(r"^[^\x00]+$"))
            .description(Some(format!(
                "a free-form category (`comment`, `review`, ...): 1 to {MAX_TYPE_CHARS} characters, no U+0000; default `system`"
            ))),
    )
    .property(
        "skip_url",
        ObjectBuilder::new()
            .schema_type(nullable(Type::String))
            .min_length(Some(1))
            .max_length(Some(MAX_URL_BYTES))
            .pattern(Some(skip_url_pattern()))
            .description(Some(format!(
                "where a click leads: relative (`/posts/9`, `posts/9`, `?tab=2`) or absolute http(s); no other scheme, not protocol-relative (`//host`), no whitespace or control characters, at most {MAX_URL_BYTES} bytes"
            ))),
    )
    .property("data", data())
}

/// `input::check_url`: an absolute http(s) URL with something after `//`, or a relative one
/// that neither starts with `//`, `\` or `/\` nor has a `:` before its first `/`, `?` or `#`.
fn skip_url_pattern() -> String {
    let c = NO_SPACE_OR_CONTROL;
    let plain = r"[^\s\x00-\x1f\x7f-\x9f:/?#\\]";
    let after_slash = r"[^\s\x00-\x1f\x7f-\x9f/\\]";
    format!(
        "^(?:[hH][tT][tT][pP][sS]?://{c}+|{plain}[^\\s\\x00-\\x1f\\x7f-\\x9f:/?#]*(?:[/?#]{c}*)?|[?#]{c}*|/(?:{after_slash}{c}*)?)$"
    )
}

/// One message for `POST /api/v1/messages`: to one user (`to_user`) or to several
/// (`to_users`), never both.
pub struct NewMessage;

impl PartialSchema for NewMessage {
    fn schema() -> RefOr<Schema> {
        let to_one = content_fields(
            ObjectBuilder::new()
                .title(Some("to one user"))
                .property("to_user", user_id())
                .required("to_user")
                .property("to_users", absent("give to_user or to_users, not both")),
        );
        let to_many = content_fields(
            ObjectBuilder::new()
                .title(Some("to several users"))
                .property(
                    "to_users",
                    ArrayBuilder::new()
                        .items(user_id())
                        .min_items(Some(1))
                        .description(Some(format!(
                            "one row per distinct id (repeats are dropped), at most {MAX_ROWS} distinct ids"
                        ))),
                )
                .required("to_users")
                .property("to_user", absent("give to_user or to_users, not both")),
        );
        OneOfBuilder::new()
            .item(to_one)
            .item(to_many)
            .description(Some(
                "A notification: `to_user` or `to_users` (not both), a title, and optionally content, type, send_user, skip_url and data.",
            ))
            .into()
    }
}

impl ToSchema for NewMessage {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("NewMessage")
    }
}

/// The body of `POST /api/v1/messages`: one message, or up to `MAX_BATCH` of them.
pub struct CreateMessages;

impl PartialSchema for CreateMessages {
    fn schema() -> RefOr<Schema> {
        let batch = ObjectBuilder::new()
            .title(Some("a batch"))
            .property(
                "messages",
                ArrayBuilder::new()
                    .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "NewMessage",
                    )))
                    .min_items(Some(1))
                    .max_items(Some(MAX_BATCH)),
            )
            .required("messages");
        OneOfBuilder::new()
            .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "NewMessage",
            )))
            .item(batch)
            .description(Some(format!(
                "One message, or `{{\"messages\": [...]}}` with 1 to {MAX_BATCH} of them; at most {MAX_ROWS} rows (recipients) in all. All commit together or none does."
            )))
            .into()
    }
}

impl ToSchema for CreateMessages {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("CreateMessages")
    }
}

/// The body of `POST /api/v1/broadcasts`: one message without recipients.
pub struct NewBroadcast;

impl PartialSchema for NewBroadcast {
    fn schema() -> RefOr<Schema> {
        content_fields(ObjectBuilder::new())
            .property("to_user", absent("an announcement goes to every known user"))
            .property("to_users", absent("an announcement goes to every known user"))
            .property("messages", absent("an announcement is one message"))
            .description(Some(
                "One message for every known user: the fields of a NewMessage without `to_user`, `to_users` or `messages` (naming any is refused).",
            ))
            .into()
    }
}

impl ToSchema for NewBroadcast {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("NewBroadcast")
    }
}

/// The body of `POST /api/v1/me/send`: a direct message (contract §8).
pub struct DirectMessage;

impl PartialSchema for DirectMessage {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("to_user", user_id())
            .required("to_user")
            .property(
                "message",
                common_fields(ObjectBuilder::new())
                    .property(
                        "send_user",
                        absent("the server sets it to the caller's `sub`"),
                    )
                    .description(Some(
                        "the message: title, content, type, skip_url, data; its `send_user` is the caller's `sub`",
                    )),
            )
            .required("message")
            .into()
    }
}

impl ToSchema for DirectMessage {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("DirectMessage")
    }
}

/// The body of `POST /api/v1/topics/{topic}/events`.
pub struct TopicEvent;

impl PartialSchema for TopicEvent {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("data", data())
            .required("data")
            .property(
                "retain",
                ObjectBuilder::new()
                    .schema_type(nullable(Type::Boolean))
                    .description(Some(
                        "also make this the topic's retained value (sent to every new subscriber) for NOTIFYD_TOPIC_RETAIN",
                    )),
            )
            .into()
    }
}

impl ToSchema for TopicEvent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("TopicEvent")
    }
}

/// The body of `POST /api/v1/me/messages/read`.
pub struct ReadIds;

impl PartialSchema for ReadIds {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property(
                "ids",
                ArrayBuilder::new()
                    .items(ObjectBuilder::new().schema_type(Type::String).description(Some(
                        "a message id (a string; anything else is refused)",
                    )))
                    .max_items(Some(MAX_READ_IDS))
                    .description(Some(format!(
                        "at most {MAX_READ_IDS} message ids; ids that are not the caller's messages (or not message ids at all) are ignored, never revealed"
                    ))),
            )
            .required("ids")
            .into()
    }
}

impl ToSchema for ReadIds {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ReadIds")
    }
}

/// The body of `POST /api/v1/me/messages/snooze`.
pub struct SnoozeIds;

impl PartialSchema for SnoozeIds {
    fn schema() -> RefOr<Schema> {
        let ids = match ReadIds::schema() {
            RefOr::T(Schema::Object(o)) => o.properties.get("ids").cloned(),
            _ => None,
        };
        let mut b = ObjectBuilder::new();
        if let Some(ids) = ids {
            b = b.property("ids", ids);
        }
        b.required("ids")
            .property(
                "until",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(utoipa::openapi::schema::SchemaFormat::KnownFormat(
                        utoipa::openapi::schema::KnownFormat::DateTime,
                    )))
                    .description(Some(
                        "RFC 3339: when the messages come back (unread and unseen, `message.unsnoozed`); a time already past wakes them within a second",
                    )),
            )
            .required("until")
            .into()
    }
}

impl ToSchema for SnoozeIds {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SnoozeIds")
    }
}

/// The body of `POST /api/v1/me/received`.
pub struct Received;

impl PartialSchema for Received {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property(
                "seq",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(i64::MAX))
                    .description(Some(
                        "every user frame up to this seq was handed to the app",
                    )),
            )
            .required("seq")
            .into()
    }
}

impl ToSchema for Received {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Received")
    }
}

/// `PUT /api/v1/me/preferences`: the whole document (`model::preferences`).
pub struct PreferencesBody;

impl PartialSchema for PreferencesBody {
    fn schema() -> RefOr<Schema> {
        let flag = |what: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .description(Some(format!("{what}; left out: true")))
        };
        let one = ObjectBuilder::new()
            .property(
                "in_app",
                flag("false: messages of this type are not stored for you (the create answers list you under `skipped`)"),
            )
            .property("push", flag("false: messages of this type are never Web-Pushed to you"));
        ObjectBuilder::new()
            .property(
                "types",
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .max_properties(Some(MAX_TYPES))
                    .property_names(Some(
                        string(1, MAX_TYPE_CHARS).pattern(Some(r"^[^\x00]+$")),
                    ))
                    .additional_properties(Some(one))
                    .description(Some(format!(
                        "by message `type` (1 to {MAX_TYPE_CHARS} characters, no U+0000), at most {MAX_TYPES} types; a type not named is stored and pushed"
                    ))),
            )
            .required("types")
            .into()
    }
}

impl ToSchema for PreferencesBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PreferencesBody")
    }
}
