//! A browser's side of Web Push, for tests: a subscription's keys (the P-256 key pair and the
//! auth secret a browser makes) and a local push service that records every push it gets,
//! decrypts it with the subscription's private key (RFC 8291) and checks its VAPID signature
//! (RFC 8292), answering with the statuses the test queues (201 once they run out).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64ct::{Base64UrlUnpadded, Encoding};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use web_push_native::jwt_simple::prelude::*;

/// One push as the service got it.
#[derive(Debug, Clone)]
pub struct GotPush {
    pub path: String,
    /// The decrypted payload.
    pub payload: Value,
    pub headers: Vec<(String, String)>,
    /// The VAPID token verified with the key it names, and that key.
    pub vapid_key: String,
    pub vapid_aud: String,
    pub vapid_sub: String,
}

impl GotPush {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A subscription a browser would make: its endpoint on the local service and its keys.
pub struct BrowserSub {
    pub endpoint: String,
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl BrowserSub {
    /// `PushSubscription.toJSON()`.
    pub fn json(&self) -> Value {
        let point = self.secret.public_key().to_encoded_point(false);
        json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": {
                "p256dh": Base64UrlUnpadded::encode_string(point.as_bytes()),
                "auth": Base64UrlUnpadded::encode_string(&self.auth),
            }
        })
    }
}

struct Shared {
    got: Vec<GotPush>,
    answers: VecDeque<(u16, Option<String>)>,
    /// Subscriptions by endpoint path: their secrets, to decrypt.
    subs: Vec<(String, p256::SecretKey, [u8; 16])>,
    undecryptable: usize,
}

/// The local push service (plain HTTP on 127.0.0.1: the node runs with
/// `NOTIFYD_PUSH_ALLOW_INSECURE`).
#[derive(Clone)]
pub struct PushService {
    pub base: String,
    shared: Arc<Mutex<Shared>>,
}

impl PushService {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let shared = Arc::new(Mutex::new(Shared {
            got: vec![],
            answers: VecDeque::new(),
            subs: vec![],
            undecryptable: 0,
        }));
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, s.clone()));
            }
        });
        PushService { base, shared }
    }

    /// A new browser subscription with an endpoint on this service.
    pub fn subscription(&self) -> BrowserSub {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let auth: [u8; 16] = rand::random();
        let path = format!("/push/{}", rand::random::<u64>());
        self.shared
            .lock()
            .unwrap()
            .subs
            .push((path.clone(), secret.clone(), auth));
        BrowserSub {
            endpoint: format!("{}{}", self.base, path),
            secret,
            auth,
        }
    }

    /// The next answers, in order (status, `Retry-After`).
    pub fn answer(&self, status: u16, retry_after: Option<&str>) {
        self.shared
            .lock()
            .unwrap()
            .answers
            .push_back((status, retry_after.map(str::to_string)));
    }

    pub fn got(&self) -> Vec<GotPush> {
        self.shared.lock().unwrap().got.clone()
    }

    pub fn undecryptable(&self) -> usize {
        self.shared.lock().unwrap().undecryptable
    }

    /// Waits until `n` pushes arrived (panics after `limit`), then returns them.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<GotPush> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} pushes, {n} expected",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One HTTP/1.1 request per connection (answered with `Connection: close`).
async fn serve(mut sock: tokio::net::TcpStream, shared: Arc<Mutex<Shared>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let Ok(n) = sock.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let Ok(n) = sock.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    let (status, retry_after) = {
        let mut s = shared.lock().unwrap();
        let answer = s.answers.pop_front().unwrap_or((201, None));
        let sub = s.subs.iter().find(|(p, ..)| *p == path).cloned();
        let payload = sub.and_then(|(_, secret, auth)| {
            let auth = web_push_native::Auth::from(auth);
            web_push_native::decrypt(body.clone(), &secret, &auth)
                .ok()
                .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
        });
        match payload {
            Some(payload) => {
                let (vapid_key, vapid_aud, vapid_sub) = verify_vapid(&headers);
                s.got.push(GotPush {
                    path: path.clone(),
                    payload,
                    headers: headers.clone(),
                    vapid_key,
                    vapid_aud,
                    vapid_sub,
                });
            }
            None => s.undecryptable += 1,
        }
        answer
    };
    let reason = match status {
        201 => "Created",
        410 => "Gone",
        429 => "Too Many Requests",
        _ => "Whatever",
    };
    let mut resp =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n");
    if let Some(r) = retry_after {
        resp.push_str(&format!("Retry-After: {r}\r\n"));
    }
    resp.push_str("\r\n");
    let _ = sock.write_all(resp.as_bytes()).await;
}

/// `Authorization: vapid t=<jwt>, k=<key>`: the token verified with `k` (an invalid one gives
/// empty strings), and its `aud` and `sub`.
fn verify_vapid(headers: &[(String, String)]) -> (String, String, String) {
    let Some((_, auth)) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    else {
        return Default::default();
    };
    let Some(rest) = auth.strip_prefix("vapid ") else {
        return Default::default();
    };
    let mut t = "";
    let mut k = "";
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("t=") {
            t = v;
        } else if let Some(v) = part.strip_prefix("k=") {
            k = v;
        }
    }
    let Ok(key_bytes) = Base64UrlUnpadded::decode_vec(k) else {
        return Default::default();
    };
    let Ok(key) = ES256PublicKey::from_bytes(&key_bytes) else {
        return Default::default();
    };
    match key.verify_token::<NoCustomClaims>(t, None) {
        Ok(claims) => {
            let aud = match claims.audiences {
                Some(Audiences::AsString(a)) => a,
                Some(Audiences::AsSet(s)) => s.into_iter().next().unwrap_or_default(),
                None => String::new(),
            };
            let exp_ok = claims
                .expires_at
                .is_some_and(|e| e.as_secs() <= Clock::now_since_epoch().as_secs() + 24 * 3600);
            (
                if exp_ok { k.to_string() } else { String::new() },
                aud,
                claims.subject.unwrap_or_default(),
            )
        }
        Err(_) => Default::default(),
    }
}
