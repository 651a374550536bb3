//! Typed settings. Every variable of the README's configuration table is read here,
//! once, at start-up; a wrong value stops start-up with an error naming the
//! variable. Tests build settings from a map instead of the process environment.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamingBackend {
    Sse,
    WebSocket,
}

impl StreamingBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::WebSocket => "websocket",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Demo,
    OpenAi,
    Anthropic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret value: never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Knobs of the offline demo model, including fault injection for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSettings {
    /// Output pace; 0 means as fast as possible.
    pub tokens_per_second: f64,
    pub first_token: Duration,
    /// Fail with a retryable provider error after this many tokens.
    pub fail_after_tokens: Option<u64>,
    /// Stop sending (without closing) after this many tokens.
    pub stall_after_tokens: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub host: IpAddr,
    pub port: u16,
    pub streaming_enabled: bool,
    pub streaming_backend: StreamingBackend,
    pub provider: ProviderKind,
    /// `AI_MODEL`; each provider has its own default.
    pub model: Option<String>,
    pub openai_base_url: String,
    pub openai_api_key: Option<Secret>,
    pub anthropic_base_url: String,
    pub anthropic_api_key: Option<Secret>,
    pub provider_idle_timeout: Duration,
    pub generation_timeout: Duration,
    pub provider_max_retries: u32,
    pub demo: DemoSettings,
    pub store: StoreKind,
    pub redis_url: String,
    /// Prefix of every Redis key and channel: deployments sharing a Redis stay apart.
    pub redis_key_prefix: String,
    pub resume_grace: Duration,
    pub retention: Duration,
    pub retention_max_bytes: usize,
    pub max_concurrent_streams: usize,
    pub sse_keepalive: Duration,
    pub sse_retry: Duration,
    pub client_send_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub static_dir: PathBuf,
    pub log_format: LogFormat,
}

/// A setting with a wrong value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid setting {variable}={value:?}: {expected}")]
pub struct SettingsError {
    pub variable: &'static str,
    pub value: String,
    pub expected: String,
}

struct Source<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Source<'_> {
    fn raw(&self, variable: &str) -> Option<String> {
        (self.lookup)(variable).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn parse<T: FromStr>(&self, variable: &'static str, default: T, expected: &str) -> Result<T, SettingsError> {
        match self.raw(variable) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|_| SettingsError { variable, value, expected: expected.into() }),
        }
    }

    fn optional<T: FromStr>(&self, variable: &'static str, expected: &str) -> Result<Option<T>, SettingsError> {
        self.raw(variable).map(|value| value.parse().map_err(|_| SettingsError { variable, value, expected: expected.into() })).transpose()
    }

    fn flag(&self, variable: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self.raw(variable).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(value) => Err(SettingsError { variable, value, expected: "true or false".into() }),
        }
    }

    fn choice<T: Copy>(&self, variable: &'static str, default: T, options: &[(&str, T)]) -> Result<T, SettingsError> {
        let Some(value) = self.raw(variable) else { return Ok(default) };
        options.iter().find(|(name, _)| name.eq_ignore_ascii_case(&value)).map(|(_, v)| *v).ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            SettingsError { variable, value, expected: format!("one of {}", names.join(", ")) }
        })
    }

    fn seconds(&self, variable: &'static str, default: f64, min: f64) -> Result<Duration, SettingsError> {
        let secs: f64 = self.parse(variable, default, "a number of seconds")?;
        if !secs.is_finite() || secs < min {
            return Err(SettingsError { variable, value: secs.to_string(), expected: format!("a number of seconds, at least {min}") });
        }
        Ok(Duration::from_secs_f64(secs))
    }

    fn secret(&self, variable: &'static str) -> Option<Secret> {
        self.raw(variable).map(Secret)
    }
}

impl Settings {
    /// Reads the process environment (after `.env`, which `main` loads).
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Reads the given variables only: for tests.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        Self::from_lookup(&|name| vars.get(name).cloned())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let src = Source { lookup };
        let provider = src.choice(
            "AI_PROVIDER",
            ProviderKind::Demo,
            &[("demo", ProviderKind::Demo), ("openai", ProviderKind::OpenAi), ("anthropic", ProviderKind::Anthropic)],
        )?;
        let settings = Self {
            host: src.parse("HOST", IpAddr::from([127, 0, 0, 1]), "an IP address such as 127.0.0.1 or ::")?,
            port: src.parse("PORT", 8000, "a port number from 0 to 65535")?,
            streaming_enabled: src.flag("AI_STREAMING_ENABLED", false)?,
            streaming_backend: src.choice(
                "STREAMING_BACKEND",
                StreamingBackend::Sse,
                &[("sse", StreamingBackend::Sse), ("websocket", StreamingBackend::WebSocket)],
            )?,
            provider,
            model: src.raw("AI_MODEL"),
            openai_base_url: src.raw("OPENAI_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into()),
            openai_api_key: src.secret("OPENAI_API_KEY"),
            anthropic_base_url: src.raw("ANTHROPIC_BASE_URL").unwrap_or_else(|| "https://api.anthropic.com".into()),
            anthropic_api_key: src.secret("ANTHROPIC_API_KEY"),
            provider_idle_timeout: src.seconds("PROVIDER_IDLE_TIMEOUT_SECONDS", 60.0, 0.01)?,
            generation_timeout: src.seconds("GENERATION_TIMEOUT_SECONDS", 600.0, 0.01)?,
            provider_max_retries: src.parse("PROVIDER_MAX_RETRIES", 2, "a whole number of retries")?,
            demo: DemoSettings {
                tokens_per_second: {
                    let tps: f64 = src.parse("DEMO_TOKENS_PER_SECOND", 40.0, "tokens per second (0 for no pacing)")?;
                    if !tps.is_finite() || tps < 0.0 {
                        return Err(SettingsError {
                            variable: "DEMO_TOKENS_PER_SECOND",
                            value: tps.to_string(),
                            expected: "a number of tokens per second, 0 or more".into(),
                        });
                    }
                    tps
                },
                first_token: Duration::from_millis(src.parse("DEMO_FIRST_TOKEN_MS", 300, "milliseconds")?),
                fail_after_tokens: src.optional("DEMO_FAIL_AFTER_TOKENS", "a number of tokens")?,
                stall_after_tokens: src.optional("DEMO_STALL_AFTER_TOKENS", "a number of tokens")?,
            },
            store: src.choice("STREAM_STORE", StoreKind::Memory, &[("memory", StoreKind::Memory), ("redis", StoreKind::Redis)])?,
            redis_url: {
                let url = src.raw("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
                if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
                    return Err(SettingsError {
                        variable: "REDIS_URL",
                        value: url,
                        expected: "a redis://, rediss:// or unix:// URL".into(),
                    });
                }
                url
            },
            redis_key_prefix: src.raw("REDIS_KEY_PREFIX").unwrap_or_else(|| "live-ai".into()),
            resume_grace: src.seconds("STREAM_RESUME_GRACE_SECONDS", 30.0, 0.0)?,
            retention: src.seconds("STREAM_RETENTION_SECONDS", 300.0, 0.0)?,
            retention_max_bytes: src.parse("STREAM_RETENTION_MAX_BYTES", 64 * 1024 * 1024, "a number of bytes")?,
            max_concurrent_streams: src.parse("MAX_CONCURRENT_STREAMS", 5000, "a number of streams")?,
            sse_keepalive: src.seconds("SSE_KEEPALIVE_SECONDS", 15.0, 0.01)?,
            sse_retry: Duration::from_millis(src.parse("SSE_RETRY_MS", 1000, "milliseconds")?),
            client_send_timeout: src.seconds("CLIENT_SEND_TIMEOUT_SECONDS", 10.0, 0.01)?,
            shutdown_timeout: src.seconds("SHUTDOWN_TIMEOUT_SECONDS", 5.0, 0.0)?,
            static_dir: PathBuf::from(src.raw("STATIC_DIR").unwrap_or_else(|| "frontend/dist".into())),
            log_format: src.choice("LOG_FORMAT", LogFormat::Text, &[("text", LogFormat::Text), ("json", LogFormat::Json)])?,
        };
        settings.check_provider_credentials()?;
        Ok(settings)
    }

    fn check_provider_credentials(&self) -> Result<(), SettingsError> {
        let missing = |variable: &'static str| SettingsError {
            variable,
            value: String::new(),
            expected: "an API key: it is required when AI_PROVIDER selects this provider".into(),
        };
        if self.max_concurrent_streams == 0 {
            return Err(SettingsError { variable: "MAX_CONCURRENT_STREAMS", value: "0".into(), expected: "at least 1".into() });
        }
        match self.provider {
            ProviderKind::Anthropic if self.anthropic_api_key.is_none() => Err(missing("ANTHROPIC_API_KEY")),
            // OpenAI-compatible local servers (Ollama, vLLM, llama.cpp) need no key;
            // OpenAI itself does.
            ProviderKind::OpenAi if self.openai_api_key.is_none() && self.openai_base_url.contains("api.openai.com") => {
                Err(missing("OPENAI_API_KEY"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_map(&vars)
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = settings(&[]).unwrap();
        assert!(!s.streaming_enabled);
        assert_eq!(s.streaming_backend, StreamingBackend::Sse);
        assert_eq!(s.provider, ProviderKind::Demo);
        assert_eq!(s.port, 8000);
        assert_eq!(s.resume_grace, Duration::from_secs(30));
        assert_eq!(s.retention, Duration::from_secs(300));
    }

    #[test]
    fn a_wrong_value_names_its_variable() {
        for (var, value) in [
            ("STREAMING_BACKEND", "carrier-pigeon"),
            ("AI_STREAMING_ENABLED", "maybe"),
            ("PORT", "80000"),
            ("STREAM_RESUME_GRACE_SECONDS", "-1"),
            ("DEMO_TOKENS_PER_SECOND", "fast"),
            ("HOST", "localhost:80"),
            ("STREAM_STORE", "postgres"),
            ("REDIS_URL", "127.0.0.1:6379"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err();
            assert_eq!(err.variable, var);
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn a_real_provider_without_its_key_names_the_key() {
        assert_eq!(settings(&[("AI_PROVIDER", "anthropic")]).unwrap_err().variable, "ANTHROPIC_API_KEY");
        assert_eq!(settings(&[("AI_PROVIDER", "openai")]).unwrap_err().variable, "OPENAI_API_KEY");
        // A local OpenAI-compatible server needs no key.
        assert!(settings(&[("AI_PROVIDER", "openai"), ("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")]).is_ok());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = settings(&[("AI_PROVIDER", "anthropic"), ("ANTHROPIC_API_KEY", "sk-ant-secret")]).unwrap();
        assert!(!format!("{s:?}").contains("sk-ant-secret"));
    }
}
