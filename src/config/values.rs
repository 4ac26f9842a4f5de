//! Value types of `pooler.toml`: strings with `${ENV}` expansion, durations
//! with units, and "one or many" lists.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Expands `${NAME}` references from the environment. A reference to an unset
/// variable is an error, so a missing secret never becomes an empty password.
pub fn expand_env(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{...}} in {raw:?}"))?;
        let name = &after[..end];
        if name.is_empty() {
            return Err("empty ${} reference".into());
        }
        let value =
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A string that may name environment variables as `${NAME}`.
pub fn env_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = String::deserialize(d)?;
    expand_env(&raw).map_err(serde::de::Error::custom)
}

pub fn opt_env_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let raw = Option::<String>::deserialize(d)?;
    raw.map(|r| expand_env(&r).map_err(serde::de::Error::custom))
        .transpose()
}

pub fn env_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = OneOrMany::deserialize(d)?;
    raw.0
        .into_iter()
        .map(|r| expand_env(&r).map_err(serde::de::Error::custom))
        .collect()
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(s) => OneOrMany(vec![s]),
            Raw::Many(v) => OneOrMany(v),
        })
    }
}

/// A duration written with a unit: `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"`.
/// `"0"` means "disabled" where a timeout allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const ZERO: Dur = Dur(Duration::ZERO);

    pub fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }

    pub fn millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }

    /// `None` when zero, meaning the timeout is disabled.
    pub fn enabled(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("duration {text:?} needs a unit (ms, s, m, h, d)"))?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let scale = match unit.trim() {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (ms, s, m, h, d)"
            ))
        }
    };
    let secs = n * scale;
    if !secs.is_finite() || !(0.0..=1e10).contains(&secs) {
        return Err(format!("duration {text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => {
                let s = expand_env(&s).map_err(serde::de::Error::custom)?;
                parse_duration(&s)
                    .map(Dur)
                    .map_err(serde::de::Error::custom)
            }
            Raw::Int(0) => Ok(Dur::ZERO),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "duration {n} needs a unit, e.g. \"{n}s\" or \"{n}ms\""
            ))),
        }
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3x").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("SLUICE_TEST_SECRET", "s3cret");
        assert_eq!(
            expand_env("a-${SLUICE_TEST_SECRET}-b").unwrap(),
            "a-s3cret-b"
        );
        assert!(expand_env("${SLUICE_SURELY_UNSET_VAR}").is_err());
        assert_eq!(expand_env("plain").unwrap(), "plain");
    }
}
