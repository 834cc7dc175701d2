//! Fresh names: every test its own users, and its own Redis prefix when it starts a cluster.

pub(crate) fn rand_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

pub fn new_user() -> String {
    format!("u{}", rand_hex())
}

/// A fresh Redis prefix, for tests that start several nodes of one deployment.
pub fn new_prefix() -> String {
    format!("t{}:", rand_hex())
}
