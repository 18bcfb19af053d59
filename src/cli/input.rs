//! Parsing of what a user types: `--data`, `--env K=V`, `--timeout 30s`,
//! `--set name=value`. Pure, except for reading the file or stdin `--data`
//! names (behind a function, so the parsing is tested alone).

use std::io::Read;

use super::error::CliError;
use crate::function::settings::SETTING_FIELDS;

/// Where the input of a run comes from: inline JSON, `@file`, or `@-` (stdin).
#[derive(Debug, PartialEq, Eq)]
pub enum DataSource<'a> {
    Inline(&'a str),
    File(&'a str),
    Stdin,
}

pub fn data_source(arg: &str) -> DataSource<'_> {
    match arg.strip_prefix('@') {
        Some("-") => DataSource::Stdin,
        Some(path) => DataSource::File(path),
        None => DataSource::Inline(arg),
    }
}

/// Parses the text of `--data` as JSON; `what` names where it came from.
pub fn parse_json(text: &str, what: &str) -> Result<serde_json::Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::Usage(format!("{what} is not valid JSON: {e}")))
}

/// The run's input: `{}` without `--data`.
pub fn read_data(arg: Option<&str>) -> Result<serde_json::Value, CliError> {
    let Some(arg) = arg else {
        return Ok(serde_json::json!({}));
    };
    match data_source(arg) {
        DataSource::Inline(text) => parse_json(text, "--data"),
        DataSource::File(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("cannot read --data file {path}: {e}")))?;
            parse_json(&text, path)
        }
        DataSource::Stdin => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::Usage(format!("cannot read --data from stdin: {e}")))?;
            parse_json(&text, "stdin")
        }
    }
}

/// `KEY=VALUE` (the value may hold `=`).
pub fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {arg:?}")),
    }
}

/// `--set name=value`: a setting of the API by its name (see `POST /upload`).
pub fn setting(arg: &str) -> Result<(String, String), String> {
    let (k, v) = key_value(arg)?;
    match SETTING_FIELDS
        .iter()
        .find(|f| f.name == k || f.aliases.contains(&k.as_str()))
    {
        Some(f) => Ok((f.name.to_string(), v)),
        None => Err(format!(
            "unknown setting {k:?}; settings: {}",
            SETTING_FIELDS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// A duration in milliseconds: `500ms`, `30s`, `2m`, or a bare number of seconds.
pub fn duration_ms(arg: &str) -> Result<u64, String> {
    let arg = arg.trim();
    let (number, unit) = match arg.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => arg.split_at(i),
        None => (arg, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 30s, 500ms or 2m, got {arg:?}"))?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        _ => return Err(format!("unknown unit {unit:?} in {arg:?}: use ms, s or m")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("{arg:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_sources() {
        assert_eq!(data_source(r#"{"a":1}"#), DataSource::Inline(r#"{"a":1}"#));
        assert_eq!(data_source("@in.json"), DataSource::File("in.json"));
        assert_eq!(data_source("@-"), DataSource::Stdin);
    }

    #[test]
    fn data_is_json_or_a_clear_error() {
        assert_eq!(read_data(None).unwrap(), serde_json::json!({}));
        assert_eq!(read_data(Some(r#"{"name":"Ada"}"#)).unwrap()["name"], "Ada");
        assert_eq!(read_data(Some("42")).unwrap(), serde_json::json!(42));
        let err = read_data(Some("{name: Ada}")).unwrap_err();
        assert_eq!(err.code(), 2);
        assert!(err.to_string().starts_with("--data is not valid JSON"), "{err}");
        let err = read_data(Some("@/nonexistent/in.json")).unwrap_err();
        assert!(err.to_string().contains("cannot read --data file"), "{err}");
    }

    #[test]
    fn data_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, r#"{"n": [1, 2]}"#).unwrap();
        let arg = format!("@{}", path.display());
        assert_eq!(read_data(Some(&arg)).unwrap(), serde_json::json!({"n": [1, 2]}));
    }

    #[test]
    fn key_values() {
        assert_eq!(key_value("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(key_value("A=").unwrap(), ("A".into(), "".into()));
        assert!(key_value("A").is_err());
        assert!(key_value("=b").is_err());
    }

    #[test]
    fn settings_by_name_or_alias() {
        assert_eq!(setting("maxRetries=3").unwrap(), ("maxRetries".into(), "3".into()));
        assert_eq!(setting("memory=256").unwrap(), ("memoryMb".into(), "256".into()));
        assert!(setting("colour=red").unwrap_err().contains("maxRetries"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("30").unwrap(), 30_000);
        assert_eq!(duration_ms("30s").unwrap(), 30_000);
        assert_eq!(duration_ms("500ms").unwrap(), 500);
        assert_eq!(duration_ms("2m").unwrap(), 120_000);
        assert!(duration_ms("2h").is_err());
        assert!(duration_ms("s").is_err());
        assert!(duration_ms("-1").is_err());
    }
}
