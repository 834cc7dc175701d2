//! User tokens: one builder, `Token`, for every token a test needs, and the short forms the
//! tests use most, each a line over it.
//!
//! ```ignore
//! Token::user("u").topics(&["product:*"]).send_to(&["u*"]).ttl(60).secret("other").sign()
//! ```

use notifyd::auth::jwt::{Grants, JwtKeys};
use serde_json::Value;

// 32 bytes and more: `serve` without `--dev` refuses shorter secrets (contract §7), and the nodes
// of `binary::node_env` run as in production.
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";

/// A user token to be signed: by default valid for an hour, with no grants, signed with the test
/// nodes' secret.
#[derive(Clone, Debug)]
pub struct Token {
    user: String,
    grants: Grants,
    ttl_secs: i64,
    secret: String,
}

fn owned(patterns: &[&str]) -> Vec<String> {
    patterns.iter().map(|p| p.to_string()).collect()
}

impl Token {
    pub fn user(user: &str) -> Self {
        Token {
            user: user.to_string(),
            grants: Grants::default(),
            ttl_secs: 3600,
            secret: JWT_SECRET.to_string(),
        }
    }

    /// The topics the user may subscribe to (glob patterns).
    pub fn topics(mut self, patterns: &[&str]) -> Self {
        self.grants.topics = owned(patterns);
        self
    }

    /// The topics the user may publish to (glob patterns).
    pub fn publish(mut self, patterns: &[&str]) -> Self {
        self.grants.publish = owned(patterns);
        self
    }

    /// The ids the user may send direct messages to (glob patterns).
    pub fn send_to(mut self, patterns: &[&str]) -> Self {
        self.grants.send_to = owned(patterns);
        self
    }

    /// Valid for `secs` from now (negative: already expired).
    pub fn ttl(mut self, secs: i64) -> Self {
        self.ttl_secs = secs;
        self
    }

    /// Signed with `secret` instead of the test nodes' secret.
    pub fn secret(mut self, secret: &str) -> Self {
        self.secret = secret.to_string();
        self
    }

    pub fn sign(&self) -> String {
        JwtKeys::new(&self.secret)
            .mint_with(&self.user, self.ttl_secs, &self.grants)
            .expect("mint")
    }
}

/// A token with exactly `claims` (anything: missing or odd fields), HS256-signed with `secret`:
/// for what `Token` cannot build because the server must refuse it.
pub fn sign_claims(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

/// `user`'s token for an hour, no grants.
pub fn token(user: &str) -> String {
    Token::user(user).sign()
}

pub fn token_with_topics(user: &str, topics: &[&str]) -> String {
    Token::user(user).topics(topics).sign()
}

/// A token for `user` that may send direct messages to the ids matching `send_to` (globs).
pub fn token_send_to(user: &str, send_to: &[&str]) -> String {
    Token::user(user).send_to(send_to).sign()
}

/// A token for `user` signed with `secret`, valid for `ttl_secs` (negative: already expired).
pub fn token_signed(secret: &str, user: &str, ttl_secs: i64) -> String {
    Token::user(user).secret(secret).ttl(ttl_secs).sign()
}

/// A token with the given grants (`topics`, `publish` glob patterns).
pub fn token_with_grants(user: &str, topics: &[&str], publish: &[&str]) -> String {
    Token::user(user).topics(topics).publish(publish).sign()
}
