//! Moderation settings (`MODERATION*`): which stages are checked, by which
//! moderator, how streamed output is held back, what happens when the moderator
//! fails, how checks to a remote moderator are batched, and where flags are
//! reported. Read with the other settings, failing fast with the variable's name.

use std::time::Duration;

use base64::Engine;

use super::settings::{Secret, SettingsError, Source};
use crate::ai::moderation::category;

/// What is checked (`MODERATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stages {
    Off,
    Input,
    Output,
    Both,
}

impl Stages {
    pub fn input(self) -> bool {
        matches!(self, Self::Input | Self::Both)
    }

    pub fn output(self) -> bool {
        matches!(self, Self::Output | Self::Both)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Input => "input",
            Self::Output => "output",
            Self::Both => "both",
        }
    }
}

/// Who checks (`MODERATION_PROVIDER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeratorKind {
    /// The embedded word-level filter (rustrict): offline, no key.
    Local,
    /// `POST /v1/moderations` of OpenAI or a server with the same API.
    OpenAi,
    /// Llama Guard 3 behind an OpenAI-compatible chat server.
    LlamaGuard,
}

impl ModeratorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::OpenAi => "openai",
            Self::LlamaGuard => "llama-guard",
        }
    }
}

/// How streamed output meets its check (`MODERATION_OUTPUT_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Text enters the log only once the window holding it passed.
    Buffered,
    /// Text streams at once; a flag ends the stream and retracts it.
    Async,
}

impl OutputMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buffered => "buffered",
            Self::Async => "async",
        }
    }
}

/// What a failed check means (`MODERATION_FAIL_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// The stream ends with `moderation_unavailable`.
    Closed,
    /// The stream goes on unchecked; logged and counted.
    Open,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
        }
    }
}

/// Where flags are POSTed (Standard Webhooks).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    /// The signing secret, `whsec_<base64>` (checked: 24 to 64 bytes).
    pub secret: Secret,
    /// Whether the flagged text travels in the payload.
    pub include_text: bool,
}

#[derive(Debug, Clone)]
pub struct ModerationSettings {
    pub stages: Stages,
    pub provider: ModeratorKind,
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub model: String,
    /// `openai`: per-category score thresholds, overriding its own `categories`.
    pub thresholds: Vec<(String, f64)>,
    pub output_mode: OutputMode,
    /// About how many characters of output one check covers.
    pub window_chars: usize,
    pub fail_mode: FailMode,
    /// Bound on one attempt of one request (a check, or a batch of them).
    pub timeout: Duration,
    /// `openai`: how long a check waits for others to share its request (zero: one request each).
    pub batch_wait: Duration,
    /// `openai`: inputs per request at most.
    pub batch_max: usize,
    pub webhook: Option<WebhookSettings>,
}

/// The shortest and longest window: shorter ones cost a check per few words,
/// longer ones hold a screenful back.
const WINDOW_CHARS: std::ops::RangeInclusive<usize> = 20..=20_000;
/// Up to a second of waiting for company: a longer wait costs more than the
/// requests it saves.
const BATCH_WAIT_MS: std::ops::RangeInclusive<u64> = 0..=1000;
/// OpenAI's own documentation shows small arrays; a few hundred inputs keep a
/// request well under its body limits.
const BATCH_MAX: std::ops::RangeInclusive<usize> = 1..=256;
/// Standard Webhooks: secrets of 24 to 64 bytes.
const WEBHOOK_KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

impl ModerationSettings {
    pub(super) fn read(src: &Source<'_>) -> Result<Self, SettingsError> {
        let error = |variable: &'static str, value: String, expected: &str| SettingsError { variable, value, expected: expected.into() };
        let provider = src.choice(
            "MODERATION_PROVIDER",
            ModeratorKind::Local,
            &[("local", ModeratorKind::Local), ("openai", ModeratorKind::OpenAi), ("llama-guard", ModeratorKind::LlamaGuard)],
        )?;
        let base_url = match (src.raw("MODERATION_BASE_URL"), provider) {
            (Some(url), _) => url,
            (None, ModeratorKind::OpenAi) => "https://api.openai.com/v1".into(),
            (None, ModeratorKind::LlamaGuard) => {
                return Err(error(
                    "MODERATION_BASE_URL",
                    String::new(),
                    "the OpenAI-compatible server that serves Llama Guard, e.g. http://127.0.0.1:8000/v1: required with MODERATION_PROVIDER=llama-guard",
                ))
            }
            (None, ModeratorKind::Local) => String::new(),
        };
        if provider != ModeratorKind::Local && !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(error("MODERATION_BASE_URL", base_url, "an http:// or https:// URL"));
        }
        let api_key = src.secret("MODERATION_API_KEY");
        if provider == ModeratorKind::OpenAi && api_key.is_none() && base_url.contains("api.openai.com") {
            return Err(error("MODERATION_API_KEY", String::new(), "an API key: api.openai.com requires one"));
        }
        let model = src.raw("MODERATION_MODEL").unwrap_or_else(|| match provider {
            ModeratorKind::Local => "rustrict".into(),
            ModeratorKind::OpenAi => "omni-moderation-latest".into(),
            ModeratorKind::LlamaGuard => "meta-llama/Llama-Guard-3-8B".into(),
        });
        let thresholds = thresholds(src.raw("MODERATION_THRESHOLDS"))?;
        if !thresholds.is_empty() && provider != ModeratorKind::OpenAi {
            return Err(error(
                "MODERATION_THRESHOLDS",
                src.raw("MODERATION_THRESHOLDS").unwrap_or_default(),
                "unset unless MODERATION_PROVIDER=openai: only its API scores categories",
            ));
        }
        let window_chars: usize = src.parse("MODERATION_WINDOW_CHARS", 200, "a number of characters")?;
        if !WINDOW_CHARS.contains(&window_chars) {
            return Err(error(
                "MODERATION_WINDOW_CHARS",
                window_chars.to_string(),
                &format!("from {} to {} characters", WINDOW_CHARS.start(), WINDOW_CHARS.end()),
            ));
        }
        let timeout_ms: u64 = src.parse("MODERATION_TIMEOUT_MS", 3000, "milliseconds")?;
        if timeout_ms == 0 {
            return Err(error("MODERATION_TIMEOUT_MS", "0".into(), "at least 1 millisecond"));
        }
        let batch_wait_ms: u64 = src.parse("MODERATION_BATCH_WAIT_MS", 5, "milliseconds")?;
        if !BATCH_WAIT_MS.contains(&batch_wait_ms) {
            return Err(error(
                "MODERATION_BATCH_WAIT_MS",
                batch_wait_ms.to_string(),
                &format!("from {} (no batching) to {} milliseconds", BATCH_WAIT_MS.start(), BATCH_WAIT_MS.end()),
            ));
        }
        let batch_max: usize = src.parse("MODERATION_BATCH_MAX", 32, "a number of inputs per request")?;
        if !BATCH_MAX.contains(&batch_max) {
            return Err(error(
                "MODERATION_BATCH_MAX",
                batch_max.to_string(),
                &format!("from {} to {} inputs per request", BATCH_MAX.start(), BATCH_MAX.end()),
            ));
        }
        Ok(Self {
            stages: src.choice(
                "MODERATION",
                Stages::Both,
                &[("off", Stages::Off), ("input", Stages::Input), ("output", Stages::Output), ("both", Stages::Both)],
            )?,
            provider,
            base_url,
            api_key,
            model,
            thresholds,
            output_mode: src.choice(
                "MODERATION_OUTPUT_MODE",
                OutputMode::Buffered,
                &[("buffered", OutputMode::Buffered), ("async", OutputMode::Async)],
            )?,
            window_chars,
            fail_mode: src.choice("MODERATION_FAIL_MODE", FailMode::Closed, &[("closed", FailMode::Closed), ("open", FailMode::Open)])?,
            timeout: Duration::from_millis(timeout_ms),
            batch_wait: Duration::from_millis(batch_wait_ms),
            batch_max,
            webhook: webhook(src)?,
        })
    }
}

/// `self-harm=0.2,sexual/minors=0.01`: known categories, scores from 0 to 1.
fn thresholds(raw: Option<String>) -> Result<Vec<(String, f64)>, SettingsError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let refuse = |expected: String| SettingsError { variable: "MODERATION_THRESHOLDS", value: raw.clone(), expected };
    let mut out: Vec<(String, f64)> = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, score)) = pair.split_once('=') else {
            return Err(refuse(format!("category=score pairs separated by commas; `{pair}` has no `=`")));
        };
        let name = name.trim();
        if !category::OPENAI.contains(&name) {
            return Err(refuse(format!("`{name}` is not a moderation category; one of {}", category::OPENAI.join(", "))));
        }
        match score.trim().parse::<f64>() {
            Ok(score) if (0.0..=1.0).contains(&score) => out.push((name.to_owned(), score)),
            _ => return Err(refuse(format!("`{name}`'s threshold is a score from 0 to 1"))),
        }
    }
    Ok(out)
}

fn webhook(src: &Source<'_>) -> Result<Option<WebhookSettings>, SettingsError> {
    let include_text = src.flag("MODERATION_WEBHOOK_INCLUDE_TEXT", false)?;
    let Some(url) = src.raw("MODERATION_WEBHOOK_URL") else {
        if src.raw("MODERATION_WEBHOOK_SECRET").is_some() {
            return Err(SettingsError {
                variable: "MODERATION_WEBHOOK_URL",
                value: String::new(),
                expected: "the URL flags are POSTed to: MODERATION_WEBHOOK_SECRET is set without it".into(),
            });
        }
        return Ok(None);
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(SettingsError { variable: "MODERATION_WEBHOOK_URL", value: url, expected: "an http:// or https:// URL".into() });
    }
    let refuse =
        |expected: &str| SettingsError { variable: "MODERATION_WEBHOOK_SECRET", value: "(hidden)".into(), expected: expected.into() };
    let Some(secret) = src.secret("MODERATION_WEBHOOK_SECRET") else {
        return Err(refuse("a signing secret `whsec_<base64>`: MODERATION_WEBHOOK_URL is set, and flags are never sent unsigned"));
    };
    let encoded = secret.expose().strip_prefix("whsec_").unwrap_or(secret.expose());
    let key = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| refuse("`whsec_` followed by base64"))?;
    if !WEBHOOK_KEY_BYTES.contains(&key.len()) {
        return Err(refuse(
            "a key of 24 to 64 bytes, as the Standard Webhooks specification asks (e.g. `whsec_` + 32 random bytes in base64)",
        ));
    }
    Ok(Some(WebhookSettings { url, secret, include_text }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::settings::from_pairs as settings;

    #[test]
    fn batching_waits_5_ms_for_up_to_32_inputs_unless_told_otherwise() {
        let moderation = settings(&[]).unwrap().moderation;
        assert_eq!((moderation.batch_wait, moderation.batch_max), (Duration::from_millis(5), 32));
        let moderation = settings(&[("MODERATION_BATCH_WAIT_MS", "0"), ("MODERATION_BATCH_MAX", "256")]).unwrap().moderation;
        assert_eq!((moderation.batch_wait, moderation.batch_max), (Duration::ZERO, 256));
        let moderation = settings(&[("MODERATION_BATCH_WAIT_MS", "1000"), ("MODERATION_BATCH_MAX", "1")]).unwrap().moderation;
        assert_eq!((moderation.batch_wait, moderation.batch_max), (Duration::from_secs(1), 1));
    }

    #[test]
    fn a_batch_setting_out_of_range_names_its_variable() {
        for (variable, value) in [
            ("MODERATION_BATCH_WAIT_MS", "1001"),
            ("MODERATION_BATCH_WAIT_MS", "-1"),
            ("MODERATION_BATCH_WAIT_MS", "soon"),
            ("MODERATION_BATCH_MAX", "0"),
            ("MODERATION_BATCH_MAX", "257"),
            ("MODERATION_BATCH_MAX", "many"),
        ] {
            let error = settings(&[(variable, value)]).unwrap_err();
            assert_eq!((error.variable, error.value.as_str()), (variable, value));
            assert!(error.to_string().contains(variable), "{error}");
        }
    }
}
