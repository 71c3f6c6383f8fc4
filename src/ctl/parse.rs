//! Values spacectl reads from flags and environment variables, parsed the
//! way people write them: `SPACERAFT_YES=1` or `yes` or `TRUE`, timeouts as
//! `500ms`, `2s`, `1m30s` or `1h`.

use std::time::Duration;

/// The spellings accepted for a yes/no value, compared case-insensitively.
const TRUTHY: &[&str] = &["1", "true", "yes", "on", "y"];
const FALSY: &[&str] = &["0", "false", "no", "off", "n", ""];

/// A yes/no value: `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off` (any
/// case). Empty means no, as an exported but empty variable.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    let lower = text.trim().to_ascii_lowercase();
    if TRUTHY.contains(&lower.as_str()) {
        return Ok(true);
    }
    if FALSY.contains(&lower.as_str()) {
        return Ok(false);
    }
    Err(format!("{text:?} is not yes or no (use 1/0, true/false, yes/no or on/off)"))
}

/// A duration: `500ms`, `2s`, `1m30s`, `1h`, `1h 30m` (humantime's
/// units), a decimal with one unit (`1.5s`), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(duration) = humantime::parse_duration(trimmed) {
        return Ok(duration);
    }
    parse_decimal_duration(trimmed).ok_or_else(|| format!("{text:?} is not a duration like 500ms, 2s, 1m30s or 1h"))
}

/// `1.5s`, `0.5m`, `250.0ms`, or `2` (seconds): what spacectl accepted
/// before humantime's forms, kept so scripts keep working.
fn parse_decimal_duration(text: &str) -> Option<Duration> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_and_no_in_the_usual_spellings() {
        for text in ["1", "true", "TRUE", "True", "yes", "YES", "on", "On", " yes "] {
            assert_eq!(parse_bool(text), Ok(true), "{text:?}");
        }
        for text in ["0", "false", "FALSE", "no", "No", "off", "OFF", ""] {
            assert_eq!(parse_bool(text), Ok(false), "{text:?}");
        }
        for text in ["2", "maybe", "yess", "-1"] {
            let error = parse_bool(text).unwrap_err();
            assert!(error.contains("1/0, true/false, yes/no or on/off"), "{error}");
        }
    }

    #[test]
    fn durations_as_people_write_them() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3_600)),
            ("1h 30m", Duration::from_secs(5_400)),
            ("1.5s", Duration::from_millis(1_500)),
            ("0.5m", Duration::from_secs(30)),
            ("3", Duration::from_secs(3)),
            (" 2s ", Duration::from_secs(2)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
        for text in ["", "soon", "2x", "-1s", "1.2.3s", "s"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("500ms, 2s, 1m30s or 1h"), "{text:?}: {error}");
        }
    }
}
