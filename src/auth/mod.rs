//! Who is calling: internal services (service keys) and end users (HS256 JWTs).

pub mod jwt;
pub mod service;
pub mod ticket;
pub mod user;

/// Constant-time comparison, so a key cannot be guessed byte by byte from response times.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token from `Authorization: Bearer <token>`, if any.
pub fn bearer(req: &actix_web::HttpRequest) -> Option<&str> {
    let h = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
