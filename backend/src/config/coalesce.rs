//! Coalescing settings (`COALESCE*`): whether identical requests share one
//! generation, whose requests count as one class (the scope), and how long a
//! finished answer is served again. Read with the other settings, failing fast
//! with the variable's name.

use std::time::Duration;

use super::settings::{Settings, SettingsError, Source};

/// The longest scope claim name accepted (a JWT claim name).
const MAX_CLAIM_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoalesceSettings {
    /// `COALESCE=on|off` (default on).
    pub enabled: bool,
    /// `COALESCE_SCOPE_CLAIM`: the JWT claim whose value is the sharing scope
    /// (e.g. `class_id`). Without it, or without the claim in a token, a
    /// principal shares only with itself.
    pub scope_claim: Option<String>,
    /// `COALESCE_CACHE_SECONDS` (default 300): how long a finished, complete
    /// answer is served again. Bounded by the retention when the settings are
    /// assembled: a log that is gone cannot be replayed.
    pub cache: Duration,
}

impl CoalesceSettings {
    pub(super) fn read(src: &Source<'_>) -> Result<Self, SettingsError> {
        let enabled = src.choice("COALESCE", true, &[("on", true), ("off", false), ("true", true), ("false", false)])?;
        let scope_claim = src.raw("COALESCE_SCOPE_CLAIM");
        if let Some(claim) = &scope_claim {
            let printable = claim.chars().all(|c| c.is_ascii_graphic());
            if claim.len() > MAX_CLAIM_NAME || !printable {
                return Err(SettingsError {
                    variable: "COALESCE_SCOPE_CLAIM",
                    value: claim.clone(),
                    expected: format!("a JWT claim name such as class_id: 1 to {MAX_CLAIM_NAME} printable ASCII characters"),
                });
            }
        }
        let cache = src.seconds("COALESCE_CACHE_SECONDS", 300.0, 0.0)?;
        Ok(Self { enabled, scope_claim, cache })
    }

    /// The cache window as it applies: never past the retention of the log it replays.
    pub fn bounded_by(mut self, settings: &Settings) -> Self {
        self.cache = self.cache.min(settings.retention);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::from_pairs as settings;

    #[test]
    fn coalescing_is_on_with_a_five_minute_cache_by_default() {
        let s = settings(&[]).unwrap();
        assert!(s.coalesce.enabled);
        assert_eq!(s.coalesce.scope_claim, None);
        assert_eq!(s.coalesce.cache, Duration::from_secs(300));
    }

    #[test]
    fn the_cache_never_outlives_the_retention() {
        let s = settings(&[("COALESCE_CACHE_SECONDS", "900"), ("STREAM_RETENTION_SECONDS", "60")]).unwrap();
        assert_eq!(s.coalesce.cache, Duration::from_secs(60));
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(settings(&[("COALESCE", "maybe")]).unwrap_err().variable, "COALESCE");
        assert_eq!(settings(&[("COALESCE_CACHE_SECONDS", "-1")]).unwrap_err().variable, "COALESCE_CACHE_SECONDS");
        assert_eq!(settings(&[("COALESCE_SCOPE_CLAIM", "class id")]).unwrap_err().variable, "COALESCE_SCOPE_CLAIM");
        assert!(!settings(&[("COALESCE", "off")]).unwrap().coalesce.enabled);
    }
}
