//! `user_type_preference`: a user's preferences by message type (contract §10), one row per
//! type the user named. The create statement (`create_rows`) reads the same rows by primary key,
//! inside the create, to leave muted rows out and to skip pushes.

use diesel::sql_types::{Array, Bool, Text};
use diesel::{QueryResult, QueryableByName};
use diesel_async::RunQueryDsl;

use super::Conn;
use crate::model::preferences::{Preferences, TypePreference};

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Bool)]
    in_app: bool,
    #[diesel(sql_type = Bool)]
    push: bool,
}

/// `user`'s document (empty `types` when they named none).
pub async fn get(conn: &mut Conn, user: &str) -> QueryResult<Preferences> {
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT type AS kind, in_app, push FROM user_type_preference WHERE user_id = $1",
    )
    .bind::<Text, _>(user)
    .load(conn)
    .await?;
    Ok(Preferences {
        types: rows
            .into_iter()
            .map(|r| {
                (
                    r.kind,
                    TypePreference {
                        in_app: r.in_app,
                        push: r.push,
                    },
                )
            })
            .collect(),
    })
}

/// Replaces `user`'s whole document. Run inside the caller's transaction: the user's advisory
/// lock makes two `PUT`s of one user take turns, so the stored document is one of them, never a
/// mix (and never a duplicate-key error from two inserts of one type).
pub async fn replace(conn: &mut Conn, user: &str, p: &Preferences) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended('preferences:' || $1, 0))")
        .bind::<Text, _>(user)
        .execute(conn)
        .await?;
    diesel::sql_query("DELETE FROM user_type_preference WHERE user_id = $1")
        .bind::<Text, _>(user)
        .execute(conn)
        .await?;
    if p.types.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = p.types.keys().map(String::as_str).collect();
    let in_app: Vec<bool> = p.types.values().map(|t| t.in_app).collect();
    let push: Vec<bool> = p.types.values().map(|t| t.push).collect();
    diesel::sql_query(
        "INSERT INTO user_type_preference (user_id, type, in_app, push) \
         SELECT $1, k, a, p FROM unnest($2::text[], $3::bool[], $4::bool[]) AS x(k, a, p)",
    )
    .bind::<Text, _>(user)
    .bind::<Array<Text>, _>(&kinds)
    .bind::<Array<Bool>, _>(&in_app)
    .bind::<Array<Bool>, _>(&push)
    .execute(conn)
    .await?;
    Ok(())
}

/// Erasure (contract §9): the user's preferences go with their inbox.
pub async fn erase_user(conn: &mut Conn, user: &str) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM user_type_preference WHERE user_id = $1")
        .bind::<Text, _>(user)
        .execute(conn)
        .await
}
