//! One push request (RFC 8030): the payload encrypted for the subscription (RFC 8291
//! `aes128gcm`, by `web-push-native`), signed with the server's VAPID key (RFC 8292), sent with
//! `TTL` and `Urgency: normal`, and what the push service's answer means for it.

use std::sync::Arc;
use std::time::Duration;

use base64ct::{Base64UrlUnpadded, Encoding};
use reqwest::StatusCode;
use web_push_native::vapid::VapidSignature;

use super::endpoint;
use super::vapid::Vapid;

/// Bound on one push request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connecting (TCP and TLS): a host that accepts and then stalls costs a round little.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the VAPID signature of one request is valid (push services refuse more than 24 h).
const VAPID_VALID: Duration = Duration::from_secs(12 * 3600);

/// What became of one push.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (2xx).
    Sent,
    /// 404/410: the subscription expired or was withdrawn.
    Gone,
    /// 429, 5xx or no answer: try again, after the service's `Retry-After` if it gave one.
    Retry(Option<Duration>),
    /// Refused for good (another 4xx, a subscription whose keys cannot be used, an endpoint
    /// that is no longer allowed): `reason` labels the metric.
    Failed(&'static str),
}

/// A subscription's keys as the browser gave them (base64url).
pub struct Keys<'a> {
    pub p256dh: &'a str,
    pub auth: &'a str,
}

/// The keys, decoded and checked: a P-256 point and a 16-byte secret.
pub fn decode_keys(k: &Keys<'_>) -> Result<(p256::PublicKey, web_push_native::Auth), String> {
    let point = Base64UrlUnpadded::decode_vec(k.p256dh.trim_end_matches('='))
        .map_err(|_| "keys.p256dh is not base64url".to_string())?;
    let public = p256::PublicKey::from_sec1_bytes(&point)
        .map_err(|_| "keys.p256dh is not a P-256 public key".to_string())?;
    let auth = Base64UrlUnpadded::decode_vec(k.auth.trim_end_matches('='))
        .map_err(|_| "keys.auth is not base64url".to_string())?;
    let auth: [u8; 16] = auth
        .try_into()
        .map_err(|_| "keys.auth must be 16 bytes".to_string())?;
    Ok((public, web_push_native::Auth::from(auth)))
}

pub struct Sender {
    client: reqwest::Client,
    vapid: Arc<Vapid>,
    ttl: Duration,
    allow_insecure: bool,
}

impl Sender {
    pub fn new(vapid: Arc<Vapid>, ttl: Duration, allow_insecure: bool) -> anyhow::Result<Self> {
        let mut b = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // A redirect could lead anywhere, inside too: push services do not send them.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the endpoint itself, past `PublicOnly`'s check.
            .no_proxy()
            .pool_max_idle_per_host(4)
            .user_agent("notifyd");
        if !allow_insecure {
            b = b.dns_resolver(Arc::new(endpoint::PublicOnly));
        }
        Ok(Sender {
            client: b.build()?,
            vapid,
            ttl,
            allow_insecure,
        })
    }

    /// Encrypts `payload` for the subscription and sends it.
    pub async fn push(&self, endpoint_url: &str, keys: &Keys<'_>, payload: Vec<u8>) -> Outcome {
        let Ok(url) = endpoint::check(endpoint_url, self.allow_insecure) else {
            return Outcome::Failed("endpoint_refused");
        };
        let Ok((public, auth)) = decode_keys(keys) else {
            return Outcome::Failed("bad_keys");
        };
        let Ok(body) = web_push_native::encrypt(payload, &public, &auth) else {
            return Outcome::Failed("encryption");
        };
        let Ok(uri) = url.as_str().parse::<http::Uri>() else {
            return Outcome::Failed("endpoint_refused");
        };
        let Ok(signature) = VapidSignature::sign(
            &uri,
            VAPID_VALID,
            self.vapid.subject.clone(),
            &self.vapid.key,
        ) else {
            return Outcome::Failed("vapid");
        };
        let sent = self
            .client
            .post(url)
            .header("TTL", self.ttl.as_secs().to_string())
            .header("Urgency", "normal")
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header("Authorization", signature.to_string())
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // The endpoint's host now resolves inside: refused, not retried.
                if format!("{e:?}").contains(endpoint::REFUSED) {
                    return Outcome::Failed("endpoint_refused");
                }
                tracing::debug!(error = %e, "push request failed");
                return Outcome::Retry(None);
            }
        };
        outcome(
            resp.status(),
            resp.headers().get(reqwest::header::RETRY_AFTER),
        )
    }
}

/// What a push service's status means (RFC 8030 §5, §6).
fn outcome(status: StatusCode, retry_after: Option<&reqwest::header::HeaderValue>) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Sent,
        404 | 410 => Outcome::Gone,
        429 | 500..=599 => Outcome::Retry(retry_after.and_then(parse_retry_after)),
        413 => Outcome::Failed("too_large"),
        _ => Outcome::Failed("refused"),
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(v: &reqwest::header::HeaderValue) -> Option<Duration> {
    let v = v.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let left = at.timestamp() - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(left.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use reqwest::header::HeaderValue;

    #[test]
    fn push_service_answers_mean_what_rfc_8030_says() {
        assert_eq!(outcome(StatusCode::CREATED, None), Outcome::Sent);
        assert_eq!(outcome(StatusCode::GONE, None), Outcome::Gone);
        assert_eq!(outcome(StatusCode::NOT_FOUND, None), Outcome::Gone);
        let h = HeaderValue::from_static("7");
        assert_eq!(
            outcome(StatusCode::TOO_MANY_REQUESTS, Some(&h)),
            Outcome::Retry(Some(Duration::from_secs(7)))
        );
        assert_eq!(outcome(StatusCode::BAD_GATEWAY, None), Outcome::Retry(None));
        assert_eq!(
            outcome(StatusCode::PAYLOAD_TOO_LARGE, None),
            Outcome::Failed("too_large")
        );
        assert_eq!(
            outcome(StatusCode::FORBIDDEN, None),
            Outcome::Failed("refused")
        );
        let date = HeaderValue::from_str(
            &(chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822(),
        )
        .unwrap();
        let d = parse_retry_after(&date).unwrap();
        assert!(
            d >= Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    #[test]
    fn keys_must_be_a_p256_point_and_16_bytes() {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let point = Base64UrlUnpadded::encode_string(
            secret.public_key().to_encoded_point(false).as_bytes(),
        );
        let auth = Base64UrlUnpadded::encode_string(&[1u8; 16]);
        assert!(decode_keys(&Keys {
            p256dh: &point,
            auth: &auth
        })
        .is_ok());
        assert!(decode_keys(&Keys {
            p256dh: "AAAA",
            auth: &auth
        })
        .is_err());
        assert!(decode_keys(&Keys {
            p256dh: &point,
            auth: "AAAA"
        })
        .is_err());
        assert!(decode_keys(&Keys {
            p256dh: "!!",
            auth: &auth
        })
        .is_err());
    }
}
