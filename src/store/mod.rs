//! Query functions, one module per table. Each takes `&mut AsyncPgConnection` so callers compose
//! them inside one transaction; nothing here opens a transaction of its own.

pub mod broadcasts;
pub mod create_rows;
pub mod event_partitions;
pub mod events;
pub mod idempotency;
pub mod inbox_state;
pub mod messages;
pub mod outbox;
pub mod schema;
pub mod session;
pub mod topic_retained;

pub use diesel_async::AsyncPgConnection as Conn;
