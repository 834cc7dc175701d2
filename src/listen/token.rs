//! Where `notifyd listen` gets its user token, and when it must get a new one.
//!
//! A token is either fixed (`--token`) or printed by a shell command (`--token-cmd`) that the
//! listener runs at start, before the token's `exp` (the new token goes in-band as an `auth`
//! frame) and after the server closed with 4001 or refused the handshake with 401.

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;

/// A token command that has not printed its token by then is killed (it usually asks an
/// identity service over the network).
pub const TOKEN_CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// More output than this is not a token (and must not grow the listener's memory).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Refresh at least this long before `exp` when the token lives long enough for it.
const REFRESH_LEAD_MS: f64 = 30_000.0;
/// Never schedule a refresh sooner than this, so a token about to expire cannot spin.
const MIN_REFRESH_MS: f64 = 500.0;

#[derive(Debug, Clone)]
pub enum TokenSource {
    /// `--token`: used as it is. Once it has expired the server refuses it (401) and the
    /// listener can only keep retrying with back-off.
    Fixed(String),
    /// `--token-cmd`: a shell command (`sh -c`) that prints one token on stdout.
    Command(String),
}

/// A token and what the listener knows about it.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: String,
    /// The `exp` claim (unix seconds), read without verification; None if there is none.
    pub exp: Option<i64>,
    /// Produced by the token command for this very attempt (a 401 then is not a stale token).
    pub fresh: bool,
}

impl Token {
    pub fn new(value: String, fresh: bool) -> Self {
        let exp = token_exp(&value);
        Token { value, exp, fresh }
    }

    /// True once `exp` is at most a second away: not worth a connection attempt.
    pub fn is_stale(&self, now_secs: i64) -> bool {
        self.exp.is_some_and(|exp| exp <= now_secs + 1)
    }
}

impl TokenSource {
    /// Whether a new token can be had (and so whether to refresh before exp at all).
    pub fn renewable(&self) -> bool {
        matches!(self, TokenSource::Command(_))
    }

    /// The token to connect with: `cached` while it is still good, else a new one.
    pub async fn get(&self, cached: Option<&Token>) -> Result<Token, String> {
        match self {
            TokenSource::Fixed(t) => Ok(Token::new(t.clone(), false)),
            TokenSource::Command(cmd) => match cached {
                Some(t) if !t.is_stale(chrono::Utc::now().timestamp()) => Ok(Token {
                    fresh: false,
                    ..t.clone()
                }),
                _ => Ok(Token::new(
                    run_token_cmd(cmd, TOKEN_CMD_TIMEOUT).await?,
                    true,
                )),
            },
        }
    }
}

/// Runs `cmd` with `sh -c` and returns the token it printed (trimmed). Its stderr goes to ours
/// so its own error messages reach the user. Killed after `timeout` or once dropped.
pub async fn run_token_cmd(cmd: &str, timeout: Duration) -> Result<String, String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("token command: cannot start sh: {e}"))?;
    let Some(stdout) = child.stdout.take() else {
        return Err("token command: no stdout".into());
    };
    let run = async {
        let mut out = Vec::new();
        stdout
            .take(MAX_TOKEN_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| format!("token command: reading its output: {e}"))?;
        if out.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "token command: printed more than {MAX_TOKEN_BYTES} bytes"
            ));
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("token command: {e}"))?;
        if !status.success() {
            return Err(format!("token command failed ({status})"));
        }
        let text = String::from_utf8(out).map_err(|_| "token command: output is not UTF-8")?;
        let token = text.trim();
        if token.is_empty() {
            return Err("token command printed nothing".into());
        }
        // It goes into an HTTP header and an `auth` frame: one printable word, nothing else.
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("token command printed more than one token (whitespace inside)".into());
        }
        Ok(token.to_string())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "token command did not finish within {timeout:?} (killed)"
        )),
    }
}

/// The `exp` claim of a JWT, without verifying it (only to know when to refresh; the server
/// verifies). None for anything that is not a JWT with a numeric `exp`.
pub fn token_exp(token: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: Option<i64>,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Exp>(token)
        .ok()?
        .exp
}

/// How long after `now_ms` to refresh a token that expires at `exp` (unix seconds): 80% of the
/// remaining lifetime but at least 30 s before `exp`; a token too short for both half way. Up to
/// 10% earlier (`rnd` in [0, 1)) so listeners started together do not refresh together. None
/// once `exp` has passed by this clock (the server's 4001 then brings a new token).
/// The same rule as web/notifyd-client.js `refreshDelayMs`.
pub fn refresh_delay(exp: i64, now_ms: i64, rnd: f64) -> Option<Duration> {
    let remaining = (exp as f64) * 1000.0 - now_ms as f64;
    if remaining <= 0.0 {
        return None;
    }
    let mut delay = (0.8 * remaining).min(remaining - REFRESH_LEAD_MS);
    if delay < remaining / 2.0 {
        delay = remaining / 2.0;
    }
    delay *= 1.0 - 0.1 * rnd.clamp(0.0, 1.0);
    Some(Duration::from_millis(delay.max(MIN_REFRESH_MS) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000_000;

    fn at(secs: i64) -> i64 {
        NOW / 1000 + secs
    }

    #[test]
    fn refresh_at_80_percent_but_30_s_before_exp_or_half_way() {
        let d = |secs, rnd| refresh_delay(at(secs), NOW, rnd).map(|d| d.as_millis());
        assert_eq!(d(3600, 0.0), Some(2_880_000));
        assert_eq!(d(100, 0.0), Some(70_000));
        assert_eq!(d(40, 0.0), Some(20_000));
        assert_eq!(d(3, 0.0), Some(1_500));
        assert_eq!(d(3600, 0.999_999), Some(2_592_000)); // at most 10% earlier
        assert_eq!(d(0, 0.0), None);
        assert_eq!(d(-5, 0.0), None);
        assert_eq!(
            refresh_delay(at(0), NOW - 100, 0.0).map(|d| d.as_millis()),
            Some(500)
        );
    }

    #[test]
    fn exp_is_read_without_verification() {
        let t = crate::auth::jwt::JwtKeys::new("any secret")
            .mint("u1", 60, &[])
            .expect("mint");
        let exp = token_exp(&t).expect("exp");
        assert!((exp - chrono::Utc::now().timestamp() - 60).abs() <= 2);
        for bad in ["", "opaque", "a.b", "a.b.c", "x.!!!.y"] {
            assert_eq!(token_exp(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn token_command_output_is_checked() {
        let t = Duration::from_secs(10);
        assert_eq!(
            run_token_cmd("echo ' abc.def '", t).await,
            Ok("abc.def".into())
        );
        assert!(run_token_cmd("exit 3", t)
            .await
            .unwrap_err()
            .contains("failed"));
        assert!(run_token_cmd("true", t)
            .await
            .unwrap_err()
            .contains("nothing"));
        assert!(run_token_cmd("echo a b", t).await.is_err());
        assert!(run_token_cmd("head -c 100000 /dev/zero | tr '\\0' a", t)
            .await
            .unwrap_err()
            .contains("more than"));
    }

    #[tokio::test]
    async fn a_hanging_token_command_is_killed_at_the_timeout() {
        let started = std::time::Instant::now();
        let err = run_token_cmd("exec sleep 30", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn cached_tokens_go_stale_a_second_before_exp() {
        let t = Token {
            value: "x".into(),
            exp: Some(100),
            fresh: true,
        };
        assert!(!t.is_stale(98));
        assert!(t.is_stale(99));
        assert!(!Token::new("opaque".into(), false).is_stale(i64::MAX - 10));
    }
}
