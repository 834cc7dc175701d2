// Written to match migrations/ (diesel print-schema needs libpq, which the service avoids).

// `archived_at`, `snoozed_until` and `arrived_seq` (contract §10) are left out: diesel's default
// features stop at 16 columns a table (the larger tuples cost every build), so they are read and
// written in SQL (`store::message_states`, `store::messages`).
diesel::table! {
    t_message_real_time (id) {
        id -> Uuid,
        to_user -> Text,
        seq -> Int8,
        title -> Text,
        content -> Text,
        #[sql_name = "type"]
        kind -> Text,
        send_user -> Nullable<Text>,
        send_time -> Timestamptz,
        skip_url -> Nullable<Text>,
        is_read -> Bool,
        read_at -> Nullable<Timestamptz>,
        data -> Nullable<Jsonb>,
        service -> Text,
        deleted_at -> Nullable<Timestamptz>,
        broadcast_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    user_inbox_state (user_id) {
        user_id -> Text,
        seq -> Int8,
        unread -> Int8,
        unseen -> Int8,
        seen_seq -> Int8,
        updated_at -> Timestamptz,
        epoch -> Int8,
    }
}

diesel::table! {
    user_event (user_id, seq) {
        user_id -> Text,
        seq -> Int8,
        created_at -> Timestamptz,
        payload -> Jsonb,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        user_id -> Nullable<Text>,
        seq -> Nullable<Int8>,
        topic -> Nullable<Text>,
        payload -> Nullable<Jsonb>,
        created_at -> Timestamptz,
        frame -> Nullable<Text>,
        envelope -> Nullable<Text>,
    }
}

diesel::table! {
    idempotency_key (service, key) {
        service -> Text,
        key -> Text,
        request_hash -> Text,
        response -> Nullable<Jsonb>,
        created_at -> Timestamptz,
    }
}

// `snapshot` (pg_snapshot, no diesel type) is left out: store::broadcasts reads and writes it in SQL.
diesel::table! {
    broadcast (id) {
        id -> Uuid,
        service -> Text,
        title -> Text,
        content -> Text,
        #[sql_name = "type"]
        kind -> Text,
        send_user -> Nullable<Text>,
        skip_url -> Nullable<Text>,
        data -> Nullable<Jsonb>,
        total -> Int8,
        created -> Int8,
        skipped -> Int8,
        cursor_user -> Nullable<Text>,
        created_at -> Timestamptz,
        done_at -> Nullable<Timestamptz>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    broadcast,
    t_message_real_time,
    user_inbox_state,
    user_event,
    outbox,
    idempotency_key
);

// The live relay processes (src/outbox/share.rs reads and writes it in SQL).
diesel::table! {
    relay_node (id) {
        id -> Text,
        seen_at -> Timestamptz,
        pid -> Int4,
        partitions -> Int4,
        led -> Array<Int4>,
    }
}
