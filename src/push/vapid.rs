//! The server's VAPID identity (RFC 8292): a P-256 key pair whose public half browsers take when
//! they subscribe (`GET /api/v1/push/key`) and whose private half signs every push request, so
//! push services accept pushes only from the server the subscription was made for.

use base64ct::{Base64UrlUnpadded, Encoding};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use web_push_native::jwt_simple::algorithms::ES256KeyPair;

/// The key pair and the contact (`mailto:`/`https:`) every push names.
pub struct Vapid {
    pub key: ES256KeyPair,
    pub subject: String,
    /// The public key as browsers take it: base64url of the uncompressed point (65 bytes).
    pub public_key: String,
}

impl Vapid {
    pub fn new(private_key: &str, subject: &str) -> Result<Self, String> {
        let secret = Self::parse_key(private_key)?;
        let key = ES256KeyPair::from_bytes(&secret.to_bytes())
            .map_err(|e| format!("not a P-256 private key: {e}"))?;
        let public_key = Base64UrlUnpadded::encode_string(
            secret.public_key().to_encoded_point(false).as_bytes(),
        );
        Ok(Vapid {
            key,
            subject: subject.to_string(),
            public_key,
        })
    }

    /// `NOTIFYD_VAPID_PRIVATE_KEY`: PKCS#8 PEM, SEC1 PEM (`BEGIN EC PRIVATE KEY`), or base64url
    /// of the 32-byte scalar (what `notifyd vapid-keys` prints). The error never repeats the
    /// value (it is a secret).
    pub fn parse_key(raw: &str) -> Result<p256::SecretKey, String> {
        let raw = raw.trim();
        if raw.starts_with("-----BEGIN EC PRIVATE KEY") {
            return p256::SecretKey::from_sec1_pem(raw)
                .map_err(|_| "not a P-256 SEC1 PEM private key".into());
        }
        if raw.starts_with("-----BEGIN PRIVATE KEY") {
            return p256::SecretKey::from_pkcs8_pem(raw)
                .map_err(|_| "not a P-256 PKCS#8 PEM private key".into());
        }
        let bytes = Base64UrlUnpadded::decode_vec(raw.trim_end_matches('='))
            .map_err(|_| "neither PEM nor base64url".to_string())?;
        if bytes.len() != 32 {
            return Err("a base64url key must decode to the 32-byte private scalar".into());
        }
        p256::SecretKey::from_slice(&bytes).map_err(|_| "not a valid P-256 private scalar".into())
    }
}

/// A new key pair as `notifyd vapid-keys` prints it: (private scalar, public point), base64url.
pub fn generate() -> (String, String) {
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let private = Base64UrlUnpadded::encode_string(&secret.to_bytes());
    let public =
        Base64UrlUnpadded::encode_string(secret.public_key().to_encoded_point(false).as_bytes());
    (private, public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    #[test]
    fn every_documented_key_form_gives_the_same_public_key() {
        let (private, public) = generate();
        let v = Vapid::new(&private, "mailto:ops@example.com").unwrap();
        assert_eq!(v.public_key, public);
        assert_eq!(Base64UrlUnpadded::decode_vec(&public).unwrap().len(), 65);
        let secret = Vapid::parse_key(&private).unwrap();
        let pkcs8 = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
        for pem in [pkcs8.as_str(), sec1.as_str()] {
            assert_eq!(Vapid::new(pem, "mailto:x@y").unwrap().public_key, public);
        }
    }

    #[test]
    fn bad_keys_are_refused_without_repeating_them() {
        for bad in [
            "",
            "c2hvcnQ",
            "not base64 at all!",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        ] {
            let e = Vapid::parse_key(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
    }
}
