//! SSE tickets (contract §10): a browser's `EventSource` cannot set headers, and a long-lived
//! JWT in a URL ends up in proxy and access logs. So a user trades their JWT for a ticket
//! (`POST /api/v1/me/tickets`) that lives at most `TICKET_TTL`, names only them, and opens
//! `GET /sse?ticket=` on any node until it expires (an `EventSource` reconnecting with the same
//! URL keeps working for those minutes).
//!
//! Stateless: a ticket is an HS256 token signed with a key of its own, derived from the JWT
//! secret every node shares (`ticket_key`), so any node checks it without a lookup, a ticket is
//! never a valid user JWT and a user JWT is never a valid ticket. It carries the grants of the
//! JWT it was minted from (the SSE stream's `?topics=` are checked against them) and that JWT's
//! `exp`: the stream it opens ends there, whenever the ticket itself expires.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::jwt::UserClaims;

/// A ticket's longest life (the contract's bound is 5 minutes); shorter when the JWT it was
/// minted from expires sooner.
pub const TICKET_TTL_SECS: i64 = 300;

/// What a ticket says. `typ` keeps it from ever being read as anything else signed with the
/// same derived key in the future.
#[derive(Serialize, Deserialize)]
struct TicketClaims {
    sub: String,
    /// The ticket's own expiry.
    exp: i64,
    /// The `exp` of the JWT it was minted from: where a stream it opened ends.
    session_exp: i64,
    typ: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    send_to: Vec<String>,
}

const TYP: &str = "notifyd-sse-ticket";

#[derive(Clone)]
pub struct TicketKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// A ticket and when it stops opening streams (Unix seconds).
pub struct Ticket {
    pub ticket: String,
    pub expires_at: i64,
}

/// The ticket key: SHA-256 over a fixed label and the JWT secret. Tokens signed with the
/// secret itself (user JWTs) do not verify under it, nor tickets under the secret.
fn ticket_key(jwt_secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"notifyd sse ticket key v1\0");
    h.update(jwt_secret.as_bytes());
    h.finalize().into()
}

impl TicketKeys {
    pub fn new(jwt_secret: &str) -> Self {
        let key = ticket_key(jwt_secret);
        TicketKeys {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
        }
    }

    /// A ticket for the holder of `claims` (a verified user JWT), valid for `TICKET_TTL_SECS`
    /// or until the JWT expires, whichever comes first.
    pub fn mint(&self, claims: &UserClaims, now: i64) -> anyhow::Result<Ticket> {
        let expires_at = (now + TICKET_TTL_SECS).min(claims.exp);
        let t = TicketClaims {
            sub: claims.user.clone(),
            exp: expires_at,
            session_exp: claims.exp,
            typ: TYP.into(),
            topics: claims.topics.clone(),
            publish: claims.publish.clone(),
            send_to: claims.send_to.clone(),
        };
        let ticket = encode(&Header::new(Algorithm::HS256), &t, &self.encoding)?;
        Ok(Ticket { ticket, expires_at })
    }

    /// The claims a valid, unexpired ticket stands for; their `exp` is the JWT's (where the
    /// stream ends). Every refusal is the same message, as for JWTs.
    pub fn verify(&self, ticket: &str) -> Result<UserClaims, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub"]);
        let t = decode::<TicketClaims>(ticket, &self.decoding, &v)
            .map_err(|e| refuse(format_args!("{e}")))?
            .claims;
        if t.typ != TYP {
            return Err(refuse(format_args!("typ {:?}", t.typ)));
        }
        // From the second its token expires a stream would end at once: refused instead (the
        // JWT check lets a token through for the whole second of its `exp`).
        let now = chrono::Utc::now().timestamp();
        if t.exp <= now || t.session_exp <= now {
            return Err(refuse(format_args!(
                "expired at {}",
                t.exp.min(t.session_exp)
            )));
        }
        crate::model::input::check_user_id(&t.sub).map_err(|e| refuse(format_args!("sub {e}")))?;
        Ok(UserClaims {
            user: t.sub,
            topics: t.topics,
            publish: t.publish,
            send_to: t.send_to,
            exp: t.session_exp,
        })
    }
}

/// The one message of every refused ticket.
pub const INVALID_TICKET: &str =
    "invalid or expired ticket: mint a new one (POST /api/v1/me/tickets)";

fn refuse(why: std::fmt::Arguments<'_>) -> String {
    tracing::debug!(reason = %why, "sse ticket refused");
    INVALID_TICKET.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::JwtKeys;

    fn claims(exp_in: i64) -> UserClaims {
        UserClaims {
            user: "42".into(),
            topics: vec!["product:*".into()],
            publish: vec![],
            send_to: vec![],
            exp: chrono::Utc::now().timestamp() + exp_in,
        }
    }

    #[test]
    fn a_ticket_carries_the_user_the_grants_and_the_jwts_expiry() {
        let keys = TicketKeys::new("secret");
        let now = chrono::Utc::now().timestamp();
        let c = claims(3600);
        let t = keys.mint(&c, now).unwrap();
        assert_eq!(t.expires_at, now + TICKET_TTL_SECS);
        assert_eq!(keys.verify(&t.ticket).unwrap(), c);
    }

    #[test]
    fn a_ticket_never_outlives_its_jwt() {
        let keys = TicketKeys::new("secret");
        let now = chrono::Utc::now().timestamp();
        let c = claims(60);
        assert_eq!(keys.mint(&c, now).unwrap().expires_at, c.exp);
    }

    #[test]
    fn tickets_and_user_jwts_are_never_each_other() {
        let (tickets, jwts) = (TicketKeys::new("secret"), JwtKeys::new("secret"));
        let jwt = jwts.mint("42", 600, &[]).unwrap();
        assert_eq!(tickets.verify(&jwt), Err(INVALID_TICKET.to_string()));
        let now = chrono::Utc::now().timestamp();
        let ticket = tickets.mint(&claims(600), now).unwrap().ticket;
        assert!(jwts.verify(&ticket).is_err());
        // Another deployment's secret, an expired ticket, garbage.
        assert!(TicketKeys::new("other").verify(&ticket).is_err());
        let old = tickets.mint(&claims(600), now - 3600).unwrap().ticket;
        assert!(tickets.verify(&old).is_err());
        assert!(tickets.verify("garbage").is_err());
    }
}
