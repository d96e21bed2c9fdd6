//! Reading a policy's settings (the key/value pairs an operator writes in the agent's config).
//!
//! Strict reading reports every problem at once (for `halo plugin check` and config
//! validation); lenient reading keeps the defaults for bad keys so the built-in fallback
//! always has an answer.

use crate::types::Setting;

/// One bad setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("setting `{key}` = {value:?}: {problem}")]
pub struct SettingError {
    /// The key.
    pub key: String,
    /// The value given.
    pub value: String,
    /// What is wrong and what is accepted.
    pub problem: String,
}

/// Every problem found in a list of settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct SettingsErrors(pub Vec<SettingError>);

/// A policy's settings: parsed from key/value pairs, with a default for every key.
pub trait PolicySettings: Default + Sized {
    /// The keys this policy understands, for error messages.
    const KEYS: &'static [&'static str];

    /// Applies one key; `Err(problem)` for a bad value, `Ok(false)` for an unknown key.
    fn apply(&mut self, key: &str, value: &str) -> Result<bool, String>;

    /// Reads `settings` strictly: unknown keys and bad values are errors, all reported.
    fn from_settings(settings: &[Setting]) -> Result<Self, SettingsErrors> {
        let (parsed, problems) = Self::from_settings_lenient(settings);
        if problems.is_empty() { Ok(parsed) } else { Err(SettingsErrors(problems)) }
    }

    /// Reads `settings`, keeping the default for every key that is bad or unknown, and
    /// returns the problems found alongside.
    fn from_settings_lenient(settings: &[Setting]) -> (Self, Vec<SettingError>) {
        let mut parsed = Self::default();
        let mut problems = Vec::new();
        for s in settings {
            let problem = match parsed.apply(&s.key, &s.value) {
                Ok(true) => continue,
                Ok(false) => format!("unknown key; this policy knows {}", Self::KEYS.join(", ")),
                Err(problem) => problem,
            };
            problems.push(SettingError { key: s.key.clone(), value: s.value.clone(), problem });
        }
        (parsed, problems)
    }
}

/// Parses a number setting with a readable problem.
pub(crate) fn parse_number<T: std::str::FromStr>(value: &str, what: &str) -> Result<T, String> {
    value.trim().parse().map_err(|_| format!("expected {what}"))
}
