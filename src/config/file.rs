//! The optional TOML file (`--config notifyd.toml`): flat `key = value` lines whose keys are the
//! settings' TOML keys (`heartbeat = "25s"`). Every value is turned into the text the same
//! setting takes from the environment, so one parser per setting reads both.

use std::path::Path;

use super::table::Setting;

/// Largest config file read: a config file is a few KiB; anything bigger is a wrong path.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// `(setting, value as text)` for every key of the file, or every problem found in it
/// (unknown keys, values of a type no setting takes), each naming its key.
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

pub fn parse(text: &str) -> Result<Vec<(&'static Setting, String)>, Vec<String>> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| vec![format!("not valid TOML: {}", e.message())])?;
    let mut out = vec![];
    let mut problems = vec![];
    for (key, value) in table {
        let Some(setting) = Setting::find(&key).filter(|s| s.key() == key) else {
            problems.push(format!(
                "unknown setting {key:?} (keys are listed in docs/configuration.md)"
            ));
            continue;
        };
        match as_text(&value) {
            Some(text) => out.push((setting, text)),
            None => problems.push(format!(
                "{key}: expected a string, a number, a boolean or a list of strings"
            )),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The environment's form of a TOML value: numbers as written, booleans as `on`/`off`, lists
/// of strings joined with commas (`service_keys = ["a:k1", "b:k2"]`).
fn as_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Boolean(b) => Some(if *b { "on" } else { "off" }.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().filter(|s| !s.contains(',')).map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        _ => None,
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

    #[test]
    fn tables_and_broken_toml_are_refused() {
        assert!(parse("[heartbeat]\nx = 1\n").unwrap_err()[0].starts_with("heartbeat:"));
        assert!(parse("heartbeat = ").is_err());
    }
}
