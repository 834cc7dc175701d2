//! What a database URL asks for beyond what tokio-postgres reads (libpq's `sslmode` and
//! `sslrootcert`), and how the pool reaches PostgreSQL (`NOTIFYD_DATABASE_POOLER`): values of the
//! configuration, read and checked with it. `db` connects by them (`db::Ssl::client_config`).

use anyhow::{bail, Context};

/// How connections of the pool reach PostgreSQL (`NOTIFYD_DATABASE_POOLER`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooler {
    /// Straight to PostgreSQL (or a pooler in session mode): each connection is one server
    /// session, its limits are set once at start-up (`options`), statements are prepared once
    /// per connection and cached.
    #[default]
    None,
    /// Through a pooler in `pool_mode = transaction` (PgBouncer): a server session is ours only
    /// inside a transaction. So no startup `options` (PgBouncer refuses them), every call of
    /// `db::run` is one transaction that starts with `SET LOCAL` of the limits, statements are
    /// not cached (a named statement would outlive the transaction on a server session another
    /// client gets next), and nothing relies on session state.
    Transaction,
}

/// libpq's TLS parameters of a `postgres://` URL (contract §11).
///
/// | `sslmode` | TLS | certificate checked |
/// |---|---|---|
/// | absent, `disable`, `allow`, `prefer` | no | - |
/// | `require` | yes | no; with a root certificate given (`sslrootcert`, `PGSSLROOTCERT`), as `verify-ca` (libpq does the same) |
/// | `verify-ca` | yes | chain to a trusted root |
/// | `verify-full` | yes | chain, and the host in the subjectAltName |
///
/// `prefer` and `allow` never try TLS (notifyd does not encrypt opportunistically: ask for
/// `require` or stricter). Roots: `sslrootcert=<PEM file>`, else `PGSSLROOTCERT`, else (and
/// with `sslrootcert=system`) the system store, which honours `SSL_CERT_FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ssl {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Plain,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    File(std::path::PathBuf),
    System,
}

impl Ssl {
    /// Takes `sslmode` and `sslrootcert` out of the URL's query string: the URL without them
    /// (for tokio-postgres), and what they ask for.
    pub fn split(url: &str) -> anyhow::Result<(String, Ssl)> {
        Self::split_with(url, std::env::var_os("PGSSLROOTCERT"))
    }

    pub(crate) fn split_with(
        url: &str,
        env_root: Option<std::ffi::OsString>,
    ) -> anyhow::Result<(String, Ssl)> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut kept = vec![];
        let mut mode = None;
        let mut root = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k)?;
            match key.as_str() {
                "sslmode" => {
                    mode = Some(match percent_decode(v)?.as_str() {
                        "disable" | "allow" | "prefer" => SslMode::Plain,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => bail!(
                            "sslmode={other:?}: must be disable, allow, prefer, require, verify-ca or verify-full"
                        ),
                    })
                }
                "sslrootcert" => root = Some(percent_decode(v)?),
                "sslcert" | "sslkey" | "sslcrl" | "sslpassword" => {
                    bail!("{key}: client certificates and CRLs are not supported")
                }
                _ => kept.push(pair),
            }
        }
        let root_cert = match root {
            Some(r) if r == "system" => Some(RootCert::System),
            Some(r) if !r.is_empty() => Some(RootCert::File(r.into())),
            _ => env_root.filter(|r| !r.is_empty()).map(|r| {
                if r == "system" {
                    RootCert::System
                } else {
                    RootCert::File(r.into())
                }
            }),
        };
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((
            rest,
            Ssl {
                mode: mode.unwrap_or(SslMode::Plain),
                root_cert,
            },
        ))
    }
}

/// `%XX` escapes of a URL query part (`+` is left alone, as libpq does).
fn percent_decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .context("a `%` without two hex digits")?;
            let hex = std::str::from_utf8(hex).context("a `%` without two hex digits")?;
            out.push(u8::from_str_radix(hex, 16).context("a `%` without two hex digits")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("not UTF-8 after percent-decoding")
}
