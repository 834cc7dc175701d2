//! The secrets `serve` runs with outside `--dev` (contract §7, production secrets): never the
//! public dev ones, never short. Checked at start-up with the other settings; a refusal names the
//! setting (and a service by its name) and never shows a value.

/// The service key `serve --dev` accepts (as `dev:dev`); public, in the demo pages' source.
pub const DEV_SERVICE_KEY: &str = "dev";

/// Shortest JWT secret or service key accepted outside `--dev`. An HS256 secret shorter than
/// the hash (RFC 7518 §3.2: at least 256 bits) is guessable offline from one token, and a
/// service key is a bearer credential of the same weight.
pub const MIN_SECRET_BYTES: usize = 32;

/// Why `secret` cannot sign production tokens, if it cannot. Blanks around it (a file's
/// trailing newline, padding) do not count toward its length: they add nothing to guess.
pub fn jwt_secret(secret: &str) -> Option<String> {
    let strength = secret.trim();
    if strength == super::DEV_JWT_SECRET {
        Some("is the public dev secret of `serve --dev`: refusing to start".into())
    } else if strength.len() < MIN_SECRET_BYTES {
        Some(format!(
            "is shorter than {MIN_SECRET_BYTES} bytes (blanks around it not counted): refusing \
             to start (use a random secret, e.g. `openssl rand -hex 32`)"
        ))
    } else {
        None
    }
}

/// Why one of `keys` cannot guard the service API in production, if one cannot (the first found:
/// services by name, keys never shown). A name as long as a key is not shown either: the pair
/// was most likely written `key:name`, and the "name" is the key.
pub fn service_keys(keys: &[(String, String)]) -> Option<String> {
    keys.iter().enumerate().find_map(|(i, (name, key))| {
        let key = key.trim();
        let who = if name.len() >= MIN_SECRET_BYTES {
            format!(
                "service #{} (its name is as long as a key: are name and key swapped? \
                 the form is name:key)",
                i + 1
            )
        } else {
            format!("service {name:?}")
        };
        if key == DEV_SERVICE_KEY {
            Some(format!(
                "{who} has the public dev key of `serve --dev`: refusing to start"
            ))
        } else if key.len() < MIN_SECRET_BYTES {
            Some(format!(
                "{who} has a key shorter than {MIN_SECRET_BYTES} bytes (blanks around it not \
                 counted): refusing to start (use a random key, e.g. `openssl rand -hex 32`)"
            ))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_secrets_and_short_ones_are_refused_and_long_ones_accepted() {
        assert!(jwt_secret(super::super::DEV_JWT_SECRET).is_some());
        assert!(jwt_secret(&"x".repeat(31)).is_some());
        assert!(jwt_secret(&"x".repeat(32)).is_none());
        let long = "k".repeat(32);
        let keys = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, k)| (n.to_string(), k.to_string()))
                .collect()
        };
        assert!(service_keys(&keys(&[("a", &long)])).is_none());
        assert!(service_keys(&[]).is_none());
        let dev = service_keys(&keys(&[("a", &long), ("dev", "dev")])).expect("dev:dev");
        assert!(dev.contains("\"dev\"") && dev.contains("dev key"), "{dev}");
        // A short key under any name, and the dev key under another name.
        let short = service_keys(&keys(&[("a", &long), ("b", "sekrit")])).expect("short");
        assert!(
            short.contains("\"b\"") && !short.contains("sekrit"),
            "{short}"
        );
        assert!(service_keys(&keys(&[("other", "dev")])).is_some());
    }

    /// Found by an attacker's review: padding a short secret with blanks (or a file's trailing
    /// newline) made it long enough.
    #[test]
    fn blanks_do_not_count_toward_a_secrets_length() {
        assert!(jwt_secret(&format!("{}    \n", "x".repeat(28))).is_some());
        assert!(jwt_secret(&format!("  {}  ", super::super::DEV_JWT_SECRET)).is_some());
        let long = "k".repeat(32);
        let padded = format!("{}      ", "k".repeat(27));
        assert!(service_keys(&[("a".into(), padded)]).is_some());
        assert!(service_keys(&[("a".into(), long)]).is_none());
    }

    /// Found by an attacker's review: `NOTIFYD_SERVICE_KEYS` written `key:name` put the key where
    /// the name goes, and the refusal (of the short "key", the name) printed it.
    #[test]
    fn a_name_as_long_as_a_key_is_never_printed() {
        let key = "0123456789abcdef0123456789abcdef".to_string();
        let why = service_keys(&[(key.clone(), "billing".into())]).expect("refused");
        assert!(!why.contains(&key), "{why}");
        assert!(why.contains("swapped"), "{why}");
    }
}
