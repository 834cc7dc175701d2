//! The optional TOML file (`--config notifyd.toml`): flat `key = value` lines whose keys are the
//! settings' TOML keys (`heartbeat = "25s"`). Every value is turned into the text the same
//! setting takes from the environment, so one parser per setting reads both.

use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::table::Setting;

/// Largest config file read: a config file is a few KiB; anything bigger is a wrong path.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// `(setting, value as text)` for every key of the file, or every problem found in it
/// (unknown keys, values of a type no setting takes, TOML syntax errors), each naming its key
/// (or line) and never a secret's value.
pub fn read(path: &Path) -> Result<Vec<(&'static Setting, String)>, Vec<String>> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| vec![format!("config file {shown}: {e}")])?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(vec![format!(
            "config file {shown}: larger than {MAX_FILE_BYTES} bytes"
        )]);
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("config file {shown}: {e}")])?;
    parse(&text).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| format!("config file {shown}: {p}"))
            .collect()
    })
}

/// Secrets whose TOML form may also be a list of strings, one item per entry
/// (`service_keys = ["a:k1", "b:k2"]`); every other secret is one quoted string.
const SECRET_LISTS: [&str; 1] = ["NOTIFYD_SERVICE_KEYS"];

pub fn parse(text: &str) -> Result<Vec<(&'static Setting, String)>, Vec<String>> {
    // Parsed into toml's spanned document rather than `toml::Table`: building a `Table` turns
    // values into Rust types, and its errors quote the value they could not convert (a number
    // too large for an i64: "invalid type: integer `1234...` as i128"), which for a secret is
    // the secret. The document keeps numbers as written and says where each key and value is,
    // so a syntax error is named by its key, and withheld when that key is a secret.
    let (table, errors) = DeTable::parse_recoverable(text);
    let table = table.into_inner();
    let mut problems: Vec<String> = vec![];
    let mut broken: Vec<&str> = vec![];
    for e in &errors {
        let (key, problem) = syntax_problem(text, &table, e);
        problems.push(problem);
        broken.extend(key);
    }
    let mut out = vec![];
    // Every entry the parser could read is checked too, so that all problems are reported at
    // once; one with a syntax error has been reported already.
    for (key, value) in table.iter() {
        let key = key.get_ref().as_ref();
        if key.is_empty() || broken.contains(&key) {
            continue;
        }
        let Some(setting) = Setting::find(key).filter(|s| s.key() == key) else {
            problems.push(format!(
                "unknown setting {key:?} (keys are listed in docs/configuration.md)"
            ));
            continue;
        };
        match as_text(setting, value.get_ref()) {
            Ok(text) => out.push((setting, text)),
            Err(why) => problems.push(format!("{key}: {why}")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// A syntax error, named by the line and the key whose entry it is in. The parser's messages are
/// fixed texts ("string values must be quoted"), never a piece of the file, but a secret's line
/// gets none of it anyway: what it says about a secret's value is not for a log.
fn syntax_problem<'t>(
    text: &str,
    table: &'t DeTable<'_>,
    e: &toml::de::Error,
) -> (Option<&'t str>, String) {
    let at = e.span().map_or(0, |s| s.start);
    let line = 1 + text
        .as_bytes()
        .iter()
        .take(at)
        .filter(|&&b| b == b'\n')
        .count();
    // The entry whose key..value range holds the error (an unterminated string ends at its
    // value's end, hence `<=`).
    let key = table
        .iter()
        .find(|(k, v)| (k.span().start..=v.span().end).contains(&at))
        .map(|(k, _)| k.get_ref().as_ref())
        // A line without a key (`= 1`) is recovered as an entry with an empty one.
        .filter(|k: &&str| !k.is_empty());
    let problem = match key {
        Some(key) if Setting::find(key).is_some_and(|s| s.secret) => format!(
            "{key} (line {line}): not a value TOML can read (not shown: it is a secret); \
             write it as a quoted string: {key} = \"...\""
        ),
        Some(key) => format!("{key} (line {line}): not valid TOML: {}", e.message()),
        None => format!("line {line}: not valid TOML: {}", e.message()),
    };
    (key, problem)
}

/// The environment's form of a TOML value: numbers as written, booleans as `on`/`off`, lists
/// of strings joined with commas (`service_keys = ["a:k1", "b:k2"]`). A secret takes a quoted
/// string only (or, for `SECRET_LISTS`, a list of them): TOML would turn a number or a boolean
/// into other text than was written (`1_000` into `1000`, `0x1F` into `31`), another secret than
/// the operator meant; and the refusal never shows the value.
fn as_text(setting: &Setting, value: &DeValue<'_>) -> Result<String, String> {
    let strings = |items: &[toml::Spanned<DeValue<'_>>]| {
        items
            .iter()
            .map(|i| match i.get_ref() {
                DeValue::String(s) if !s.contains(',') => Some(s.to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(","))
    };
    if setting.secret {
        let list = SECRET_LISTS.contains(&setting.env);
        return match value {
            DeValue::String(s) => Ok(s.to_string()),
            DeValue::Array(items) if list => strings(items).ok_or_else(|| {
                "must be a list of quoted strings without commas (not shown: it is a secret)".into()
            }),
            other => Err(format!(
                "must be a quoted string{}; TOML reads a value of type {} here (not shown: it \
                 is a secret)",
                if list { " or a list of them" } else { "" },
                other.type_str()
            )),
        };
    }
    let expected =
        || "expected a string, a whole number, a boolean or a list of strings".to_string();
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix())
            .map(|n| n.to_string())
            .map_err(|_| "a whole number too large for TOML (at most 9223372036854775807)".into()),
        DeValue::Boolean(b) => Ok(if *b { "on" } else { "off" }.to_string()),
        DeValue::Array(items) => strings(items).ok_or_else(expected),
        _ => Err(expected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_the_environments_text() {
        let got = parse(
            "heartbeat = \"5s\"\ndb_pool_size = 4\nrelay = false\nservice_keys = [\"a:1\", \"b:2\"]\n",
        )
        .unwrap();
        let got: Vec<(String, String)> = got.into_iter().map(|(s, v)| (s.key(), v)).collect();
        assert!(got.contains(&("heartbeat".into(), "5s".into())));
        assert!(got.contains(&("db_pool_size".into(), "4".into())));
        assert!(got.contains(&("relay".into(), "off".into())));
        assert!(got.contains(&("service_keys".into(), "a:1,b:2".into())));
    }

    #[test]
    fn unknown_keys_and_env_names_are_refused_by_name() {
        let e = parse("heartbeet = \"5s\"\nNOTIFYD_HEARTBEAT = \"5s\"\n").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().any(|p| p.contains("\"heartbeet\"")), "{e:?}");
        assert!(
            e.iter().any(|p| p.contains("\"NOTIFYD_HEARTBEAT\"")),
            "{e:?}"
        );
    }

    /// Contract §7: a secret in the file is a quoted string (`service_keys` also a list of
    /// them); anything else is refused by key, and no refusal shows what was written, also when
    /// TOML cannot read it at all (a number too large for it used to be quoted in the error).
    #[test]
    fn secrets_are_quoted_strings_and_never_shown() {
        for (written, shown) in [
            (
                "123456789012345678901234567890123456",
                "123456789012345678901234567890123456",
            ),
            ("1234567890123456789012345678901234567890", "1234567890"),
            ("1_234_567_890_123_456_789", "1234567890123456789"),
            ("0x5EC2E7", "5EC2E7"),
            ("true", "on"),
            ("12.5", "12.5"),
            ("1979-05-27T07:32:00Z", "1979"),
            ("[\"part-one\", \"part-two\"]", "part-"),
            ("{ v = \"in-a-table\" }", "in-a-table"),
            ("unquoted-secret", "unquoted"),
            ("\"unterminated-secret", "unterminated"),
            ("\"bad-escape-\\q-secret\"", "bad-escape"),
        ] {
            let text = format!("heartbeat = \"5s\"\njwt_secret = {written}\nrelay = \"on\"\n");
            let e = parse(&text).expect_err(written);
            assert_eq!(e.len(), 1, "{written}: {e:?}");
            assert!(e[0].starts_with("jwt_secret"), "{written}: {e:?}");
            assert!(!e[0].contains(shown), "{written}: shown in {e:?}");
        }
        let ok = parse("jwt_secret = \"s\"\nservice_keys = [\"a:k1\", \"b:k2\"]\n").unwrap();
        assert_eq!(ok.len(), 2);
        for other in [
            "database_url = 5",
            "service_keys = [1, 2]",
            "redis_url = true",
        ] {
            let e = parse(other).expect_err(other);
            assert!(e[0].contains("quoted string"), "{other}: {e:?}");
        }
    }

    /// A syntax error is named by its line and, in an entry, by its key, with the parser's
    /// message for a setting that is not a secret.
    #[test]
    fn syntax_errors_are_named_by_line_and_key() {
        let e = parse("heartbeat = \"5s\"\nrelay = 12x\n").unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("relay (line 2): not valid TOML: "),
            "{e:?}"
        );
        let e = parse("heartbeat = \"5s\"\n= 1\n").unwrap_err();
        assert!(e[0].starts_with("line 2: not valid TOML"), "{e:?}");
        // With a syntax error, the other entries are still checked: every problem at once.
        let e = parse("relay = 12x\njwt_secret = 5\nheartbeet = \"1s\"\n").unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("relay (line 1)"), "{e:?}");
        assert!(
            e.iter()
                .any(|p| p.starts_with("jwt_secret: must be a quoted string")),
            "{e:?}"
        );
        assert!(e.iter().any(|p| p.contains("\"heartbeet\"")), "{e:?}");
        // Numbers are read as before: as written, any base, underscores dropped.
        let got = parse("db_pool_size = 0x10\nrelay_batch = 1_000\n").unwrap();
        let got: Vec<(String, String)> = got.into_iter().map(|(s, v)| (s.key(), v)).collect();
        assert!(
            got.contains(&("db_pool_size".into(), "16".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&("relay_batch".into(), "1000".into())),
            "{got:?}"
        );
        assert!(
            parse("relay_batch = 99999999999999999999\n").unwrap_err()[0]
                .starts_with("relay_batch: a whole number too large")
        );
    }

    #[test]
    fn tables_and_broken_toml_are_refused() {
        assert!(parse("[heartbeat]\nx = 1\n").unwrap_err()[0].starts_with("heartbeat:"));
        assert!(parse("heartbeat = ").is_err());
    }
}
