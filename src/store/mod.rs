//! Query functions, one module per table. Each takes `&mut AsyncPgConnection` so callers compose
//! them inside one transaction; nothing here opens a transaction of its own.

pub mod broadcasts;
pub mod create_rows;
pub mod event_partitions;
pub mod events;
pub mod idempotency;
pub mod inbox_state;
pub mod message_states;
pub mod messages;
pub mod outbox;
pub mod preferences;
pub mod push;
pub mod relay_node;
pub mod replication;
pub mod schema;
pub mod session;
pub mod topic_retained;

pub use diesel_async::AsyncPgConnection as Conn;

/// JSON that is already text, bound as `jsonb` as it is (`jsonb`'s binary format is a version
/// byte and the text): what was serialised once is not parsed into a `serde_json::Value` only
/// to be serialised again for the statement.
#[derive(Debug, Clone, Copy, diesel::expression::AsExpression)]
#[diesel(sql_type = diesel::sql_types::Jsonb)]
pub struct JsonText<'a>(pub &'a str);

impl diesel::serialize::ToSql<diesel::sql_types::Jsonb, diesel::pg::Pg> for JsonText<'_> {
    fn to_sql<'b>(
        &'b self,
        out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
    ) -> diesel::serialize::Result {
        use std::io::Write;
        out.write_all(&[1])?;
        out.write_all(self.0.as_bytes())?;
        Ok(diesel::serialize::IsNull::No)
    }
}
