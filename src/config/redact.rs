//! Secrets never printed: `Debug` of `Settings` and every URL that reaches a log or an error
//! go through here.

use std::fmt;

use super::Settings;

const HIDDEN: &str = "<redacted>";

/// `url` with its password (`user:password@`, or a `password=` query parameter) replaced by
/// `***`. The rest (host, port, database) stays: that is what an operator needs to see.
pub fn url(url: &str) -> String {
    let mut out = url.to_string();
    if let (Some(s), Some(at)) = (out.find("://"), out.rfind('@')) {
        if at > s {
            let creds = &out[s + 3..at];
            out = match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &out[..s + 3], user, &out[at..]),
                // A lone userinfo part can be the password (`redis://secret@host`).
                None => format!("{}***{}", &out[..s + 3], &out[at..]),
            };
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be left out (and leak by a derive).
        let Settings {
            database_url,
            database_direct_url,
            database_pooler,
            database_replica_url,
            replica_max_lag,
            redis_ca_file,
            redis_url,
            redis_prefix,
            bind,
            service_bind,
            jwt_secret: _,
            service_keys,
            node_id,
            relay_enabled,
            allowed_origins,
            event_retention,
            event_partition_width,
            message_retention,
            heartbeat,
            max_sockets_per_user,
            dev,
            jwt_secret_ignored,
            db_pool_size,
            max_body_bytes,
            relay_poll,
            audit_interval,
            relay_batch,
            relay_coalesce,
            ws_max_joining,
            ws_join_queue,
            ws_join_wait,
            http_workers,
            relay_partitions,
            log_json,
            log_filter,
            db_statement_timeout,
            db_lock_timeout,
            db_idle_in_transaction_timeout,
            relay_db_timeout,
            db_request_timeout,
            housekeeping_interval,
            housekeeping_batch,
            public_topics,
            topic_retain,
            max_anon_sockets_per_ip,
            max_anon_topics_per_ip,
            subscribe_rate,
            subscribe_burst,
            trusted_proxies,
            broadcast_batch,
            max_running_broadcasts,
            vapid_private_key,
            vapid_subject,
            push_delay,
            push_ttl,
            push_allow_insecure,
        } = self;
        let services: Vec<String> = service_keys
            .iter()
            .map(|(name, _)| format!("{name}:{HIDDEN}"))
            .collect();
        f.debug_struct("Settings")
            .field("database_url", &url(database_url))
            .field(
                "database_direct_url",
                &database_direct_url.as_deref().map(url),
            )
            .field("database_pooler", database_pooler)
            .field(
                "database_replica_url",
                &database_replica_url.as_deref().map(url),
            )
            .field("replica_max_lag", replica_max_lag)
            .field("redis_ca_file", redis_ca_file)
            .field("redis_url", &redis_url.as_deref().map(url))
            .field("redis_prefix", redis_prefix)
            .field("bind", bind)
            .field("service_bind", service_bind)
            .field("jwt_secret", &HIDDEN)
            .field("service_keys", &services)
            .field("node_id", node_id)
            .field("relay_enabled", relay_enabled)
            .field("allowed_origins", allowed_origins)
            .field("event_retention", event_retention)
            .field("event_partition_width", event_partition_width)
            .field("message_retention", message_retention)
            .field("heartbeat", heartbeat)
            .field("max_sockets_per_user", max_sockets_per_user)
            .field("dev", dev)
            .field("jwt_secret_ignored", jwt_secret_ignored)
            .field("db_pool_size", db_pool_size)
            .field("max_body_bytes", max_body_bytes)
            .field("relay_poll", relay_poll)
            .field("audit_interval", audit_interval)
            .field("relay_batch", relay_batch)
            .field("relay_coalesce", relay_coalesce)
            .field("ws_max_joining", ws_max_joining)
            .field("ws_join_queue", ws_join_queue)
            .field("ws_join_wait", ws_join_wait)
            .field("http_workers", http_workers)
            .field("relay_partitions", relay_partitions)
            .field("log_json", log_json)
            .field("log_filter", log_filter)
            .field("db_statement_timeout", db_statement_timeout)
            .field("db_lock_timeout", db_lock_timeout)
            .field(
                "db_idle_in_transaction_timeout",
                db_idle_in_transaction_timeout,
            )
            .field("relay_db_timeout", relay_db_timeout)
            .field("db_request_timeout", db_request_timeout)
            .field("housekeeping_interval", housekeeping_interval)
            .field("housekeeping_batch", housekeeping_batch)
            .field("public_topics", public_topics)
            .field("topic_retain", topic_retain)
            .field("max_anon_sockets_per_ip", max_anon_sockets_per_ip)
            .field("max_anon_topics_per_ip", max_anon_topics_per_ip)
            .field("subscribe_rate", subscribe_rate)
            .field("subscribe_burst", subscribe_burst)
            .field("trusted_proxies", trusted_proxies)
            .field("broadcast_batch", broadcast_batch)
            .field("max_running_broadcasts", max_running_broadcasts)
            .field(
                "vapid_private_key",
                &vapid_private_key.as_ref().map(|_| HIDDEN),
            )
            .field("vapid_subject", vapid_subject)
            .field("push_delay", push_delay)
            .field("push_ttl", push_ttl)
            .field("push_allow_insecure", push_allow_insecure)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_leave_urls() {
        assert_eq!(
            url("postgres://app:s3cret@db:5432/notifyd"),
            "postgres://app:***@db:5432/notifyd"
        );
        assert_eq!(
            url("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(url("redis://s3cret@cache:6379"), "redis://***@cache:6379");
        assert_eq!(
            url("postgres://db/notifyd?sslmode=require&password=s3cret"),
            "postgres://db/notifyd?sslmode=require&password=***"
        );
        assert_eq!(url("postgres://db/notifyd"), "postgres://db/notifyd");
    }

    /// Issue 11 item 3: `Debug` of the settings (what ends up in a log or a panic message)
    /// shows no secret, but still shows what is configured.
    #[test]
    fn debug_of_settings_shows_no_secret() {
        let mut s = Settings::new("postgres://app:pg-pass-1@db/notifyd?password=pg-pass-2");
        s.redis_url = Some("redis://:redis-pass@cache:6379".into());
        s.jwt_secret = "jwt-secret-value".into();
        s.service_keys = vec![("billing".into(), "billing-key-value".into())];
        let shown = format!("{s:?}");
        for secret in [
            "pg-pass-1",
            "pg-pass-2",
            "redis-pass",
            "jwt-secret-value",
            "billing-key-value",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for visible in ["db/notifyd", "cache:6379", "billing", "heartbeat"] {
            assert!(shown.contains(visible), "{visible} missing from {shown}");
        }
        // The alternate form too (`{:#?}`).
        assert!(!format!("{s:#?}").contains("jwt-secret-value"));
    }
}
