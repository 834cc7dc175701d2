//! User tokens: HS256 JWTs with `sub` (the user id), a required `exp`, an optional `nbf`
//! (enforced), and three optional claims of glob patterns (`product:*`), each a list or one
//! comma-separated string: `topics` (may subscribe), `publish` (may publish to, contract §8
//! groups) and `send_to` (may send direct messages to these user ids; `"*"` = anyone).

use crate::model::glob::glob_match;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topics: Option<PatternsClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    publish: Option<PatternsClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    send_to: Option<PatternsClaim>,
}

/// A patterns claim may be a list or one comma-separated string.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum PatternsClaim {
    List(Vec<String>),
    One(String),
}

impl PatternsClaim {
    fn patterns(claim: Option<PatternsClaim>) -> Vec<String> {
        match claim {
            None => vec![],
            Some(PatternsClaim::List(l)) => l,
            Some(PatternsClaim::One(s)) => s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    fn of(patterns: &[String]) -> Option<PatternsClaim> {
        (!patterns.is_empty()).then(|| PatternsClaim::List(patterns.to_vec()))
    }
}

/// What a token allows besides its own inbox (all glob patterns; empty = nothing).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Grants {
    pub topics: Vec<String>,
    pub publish: Vec<String>,
    pub send_to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserClaims {
    pub user: String,
    pub topics: Vec<String>,
    pub publish: Vec<String>,
    pub send_to: Vec<String>,
    pub exp: i64,
}

impl UserClaims {
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| glob_match(p, topic))
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| glob_match(p, topic))
    }

    pub fn may_send_to(&self, user: &str) -> bool {
        self.send_to.iter().any(|p| glob_match(p, user))
    }
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl JwtKeys {
    pub fn new(secret: &str) -> Self {
        JwtKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// The claims of a valid token. Every refusal is the same `INVALID_TOKEN` text: what was
    /// wrong (signature, expiry, a bad `sub`) is logged at debug level, never sent to the caller.
    pub fn verify(&self, token: &str) -> Result<UserClaims, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        let c = decode::<Claims>(token, &self.decoding, &v)
            .map_err(|e| refuse(format_args!("{e}")))?
            .claims;
        // `sub` becomes a user id in SQL, Redis channel names and logs: the same rules as an id
        // in a request body, so a validly signed odd `sub` (U+0000, a newline) is a 401, not a
        // 500 from PostgreSQL.
        crate::model::input::check_user_id(&c.sub).map_err(|e| refuse(format_args!("sub {e}")))?;
        Ok(UserClaims {
            user: c.sub,
            topics: PatternsClaim::patterns(c.topics),
            publish: PatternsClaim::patterns(c.publish),
            send_to: PatternsClaim::patterns(c.send_to),
            exp: c.exp,
        })
    }

    pub fn mint(&self, user: &str, ttl_secs: i64, topics: &[String]) -> anyhow::Result<String> {
        let grants = Grants {
            topics: topics.to_vec(),
            ..Grants::default()
        };
        self.mint_with(user, ttl_secs, &grants)
    }

    /// A token with every kind of grant (dev mode's `/demo/token`, tests).
    pub fn mint_with(&self, user: &str, ttl_secs: i64, grants: &Grants) -> anyhow::Result<String> {
        let claims = Claims {
            sub: user.to_string(),
            exp: chrono::Utc::now().timestamp() + ttl_secs,
            topics: PatternsClaim::of(&grants.topics),
            publish: PatternsClaim::of(&grants.publish),
            send_to: PatternsClaim::of(&grants.send_to),
        };
        Ok(encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }
}

/// The one message of every refused token.
pub const INVALID_TOKEN: &str = "invalid or expired token";

fn refuse(why: std::fmt::Arguments<'_>) -> String {
    tracing::debug!(reason = %why, "user token refused");
    INVALID_TOKEN.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_expire() {
        let k = JwtKeys::new("s");
        let t = k.mint("42", 60, &["product:*".into()]).unwrap();
        let c = k.verify(&t).unwrap();
        assert_eq!(c.user, "42");
        assert!(c.may_subscribe("product:1") && !c.may_subscribe("group:1"));
        let expired = k.mint("42", -5, &[]).unwrap();
        assert!(k.verify(&expired).is_err());
        assert!(JwtKeys::new("other").verify(&t).is_err());
        assert!(k.verify("garbage").is_err());
    }

    #[test]
    fn publish_and_send_to_grants_round_trip() {
        let k = JwtKeys::new("s");
        let g = Grants {
            topics: vec!["group:*".into()],
            publish: vec!["group:7".into()],
            send_to: vec!["*".into()],
        };
        let c = k.verify(&k.mint_with("42", 60, &g).unwrap()).unwrap();
        assert!(c.may_publish("group:7") && !c.may_publish("group:8"));
        assert!(c.may_send_to("anyone") && c.may_subscribe("group:8"));
        let none = k.verify(&k.mint("42", 60, &[]).unwrap()).unwrap();
        assert!(!none.may_publish("group:7") && !none.may_send_to("7"));
    }

    #[test]
    fn odd_subs_are_refused_with_the_generic_message() {
        let k = JwtKeys::new("s");
        for sub in [
            "a\u{0}b",
            "a\nb",
            "\tx",
            " x",
            "",
            &"x".repeat(129),
            // Format characters (Cf): a bidi override, a zero-width space, a BOM.
            "a\u{202e}b",
            "\u{200b}x",
            "x\u{feff}",
        ] {
            let t = k.mint(sub, 60, &[]).unwrap();
            assert_eq!(k.verify(&t), Err(INVALID_TOKEN.to_string()), "{sub:?}");
        }
        assert_eq!(k.verify("garbage"), Err(INVALID_TOKEN.to_string()));
    }
}
