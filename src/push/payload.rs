//! What a push carries (contract §10): `{"id","seq","title","content","type","skip_url","unseen"}`,
//! small enough that the encrypted request body stays within 3,072 bytes (what every push
//! service accepts): the content is cut to fit, then the title, then the link dropped.

use serde::Serialize;
use uuid::Uuid;

/// The encrypted body's limit.
pub const MAX_BODY_BYTES: usize = 3072;
/// What `aes128gcm` adds to one record (RFC 8188/8291): salt 16, record size 4, key id length
/// 1, key id 65, the padding delimiter 1, the tag 16.
pub const ENCRYPTION_OVERHEAD: usize = 16 + 4 + 1 + 65 + 1 + 16;
/// The largest plaintext that fits.
pub const MAX_PLAINTEXT_BYTES: usize = MAX_BODY_BYTES - ENCRYPTION_OVERHEAD;

#[derive(Serialize, Clone)]
struct Payload<'a> {
    id: Uuid,
    seq: i64,
    title: &'a str,
    content: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    skip_url: Option<&'a str>,
    unseen: i64,
}

pub struct Message<'a> {
    pub id: Uuid,
    pub seq: i64,
    pub title: &'a str,
    pub content: &'a str,
    pub kind: &'a str,
    pub skip_url: Option<&'a str>,
    pub unseen: i64,
}

/// The payload's JSON, at most `MAX_PLAINTEXT_BYTES`.
pub fn encode(m: &Message<'_>) -> Vec<u8> {
    let mut p = Payload {
        id: m.id,
        seq: m.seq,
        title: m.title,
        content: m.content,
        kind: m.kind,
        skip_url: m.skip_url,
        unseen: m.unseen,
    };
    let text = |p: &Payload<'_>| serde_json::to_vec(p).unwrap_or_default();
    let out = text(&p);
    if out.len() <= MAX_PLAINTEXT_BYTES {
        return out;
    }
    // Too long: the longest prefix of the content that fits (escaping makes the JSON longer
    // than the text by an amount only serialising tells, hence a search), then of the title,
    // then no link.
    let (content, title) = (m.content, m.title);
    p.content = longest_fitting(content, |c| {
        text(&Payload {
            content: c,
            ..p.clone()
        })
        .len()
    });
    if text(&p).len() > MAX_PLAINTEXT_BYTES {
        p.title = longest_fitting(title, |t| {
            text(&Payload {
                title: t,
                ..p.clone()
            })
            .len()
        });
    }
    if text(&p).len() > MAX_PLAINTEXT_BYTES {
        p.skip_url = None;
    }
    text(&p)
}

/// The longest prefix of `s` (at a char boundary) whose payload `len` fits, by bisection.
fn longest_fitting<'a>(s: &'a str, len: impl Fn(&'a str) -> usize) -> &'a str {
    let (mut lo, mut hi) = (0, s.len());
    while lo < hi {
        let mut mid = (lo + hi).div_ceil(2);
        while !s.is_char_boundary(mid) {
            mid -= 1;
        }
        if mid <= lo {
            break;
        }
        if len(&s[..mid]) <= MAX_PLAINTEXT_BYTES {
            lo = mid;
        } else {
            hi = mid - 1;
            while !s.is_char_boundary(hi) {
                hi -= 1;
            }
        }
    }
    &s[..lo]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg<'a>(title: &'a str, content: &'a str, skip_url: Option<&'a str>) -> Message<'a> {
        Message {
            id: Uuid::nil(),
            seq: 7,
            title,
            content,
            kind: "comment",
            skip_url,
            unseen: 2,
        }
    }

    #[test]
    fn small_messages_go_whole_and_big_ones_are_cut_to_fit() {
        let v: serde_json::Value =
            serde_json::from_slice(&encode(&msg("t", "c", Some("/x")))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": Uuid::nil(), "seq": 7, "title": "t", "content": "c", "type": "comment", "skip_url": "/x", "unseen": 2})
        );
        for content in [
            "x".repeat(10_000),
            "é\"\n".repeat(5_000),
            "🔔".repeat(3_000),
        ] {
            let out = encode(&msg("title", &content, Some("/link")));
            assert!(out.len() <= MAX_PLAINTEXT_BYTES, "{}", out.len());
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["title"], "title");
            assert!(content.starts_with(v["content"].as_str().unwrap()));
            assert!(
                out.len() > MAX_PLAINTEXT_BYTES - 64,
                "cut no more than needed"
            );
        }
        let huge = "t".repeat(5_000);
        let out = encode(&msg(&huge, "c", Some(&huge)));
        assert!(out.len() <= MAX_PLAINTEXT_BYTES);
    }

    #[test]
    fn the_encrypted_body_stays_within_the_limit() {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let auth = web_push_native::Auth::from([7u8; 16]);
        let content = "x".repeat(10_000);
        let body = web_push_native::encrypt(
            encode(&msg("t", &content, None)),
            &secret.public_key(),
            &auth,
        )
        .unwrap();
        assert!(body.len() <= MAX_BODY_BYTES, "{}", body.len());
        let plain = web_push_native::decrypt(body, &secret, &auth).unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&plain).is_ok());
    }
}
