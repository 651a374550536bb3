//! Typed settings. Every variable of the README's configuration table is read here,
//! once, at start-up; a wrong value stops start-up with an error naming the
//! variable. Tests build settings from a map instead of the process environment.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::coalesce::CoalesceSettings;
use super::moderation::ModerationSettings;
use super::telemetry::TelemetrySettings;

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

/// Who may use the API (`AUTH_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No credentials: each client IP is one anonymous principal.
    None,
    /// A Bearer JWT issued by the host learning app; the principal is its `sub`.
    Jwt,
    /// A Bearer API key from `AUTH_API_KEYS_FILE`, for server-to-server callers.
    ApiKey,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Jwt => "jwt",
            Self::ApiKey => "api_key",
        }
    }
}

/// How callers prove who they are.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// `ALLOW_ANONYMOUS`: lets `AUTH_MODE=none` listen on a non-loopback `HOST`.
    pub allow_anonymous: bool,
    /// HS256 key shared with the host app.
    pub jwt_secret: Option<Secret>,
    /// Public keys (RS256/ES256) of the host app, as a JWKS JSON file.
    pub jwks_file: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    /// The `aud` learner tokens must carry. Required with `AUTH_MODE=jwt` (RFC 8725
    /// §3.9: a token minted for another service must not pass here); `None` when
    /// waived on purpose with `AUTH_JWT_AUDIENCE=*`, or outside JWT mode.
    pub jwt_audience: Option<String>,
    /// Lines `principal:sha256-hex-of-key`.
    pub api_keys_file: Option<PathBuf>,
    /// Signs read tokens; random per process when unset (one process only).
    pub read_token_secret: Option<Secret>,
    pub read_token_ttl: Duration,
}

/// Per-principal and per-socket limits; `None` is unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    pub concurrent_streams: Option<u32>,
    pub starts_per_minute: Option<u32>,
    pub tokens_per_day: Option<u64>,
    pub streams_per_socket: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret value: never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

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
    /// A test knob: this text is streamed after `inject_after_tokens` tokens, as
    /// if the model had written it (a flagged sentence for the moderation tests).
    pub inject_text: Option<String>,
    pub inject_after_tokens: u64,
}

#[cfg(test)]
impl DemoSettings {
    /// The demo model as unit tests want it: unpaced, no first-token delay, no faults.
    pub fn unpaced() -> Self {
        Self {
            tokens_per_second: 0.0,
            first_token: Duration::ZERO,
            fail_after_tokens: None,
            stall_after_tokens: None,
            inject_text: None,
            inject_after_tokens: 0,
        }
    }
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
    pub moderation: ModerationSettings,
    /// Identical requests sharing one generation (`COALESCE*`).
    pub coalesce: CoalesceSettings,
    pub store: StoreKind,
    /// The Redis of `STREAM_STORE=redis`: `REDIS_URL`'s node, or the cluster of
    /// `REDIS_CLUSTER_URLS` when that is set.
    pub redis: crate::redis_connection::RedisTarget,
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
    /// OpenTelemetry export (`OTEL_*`).
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    /// Origins (`scheme://host[:port]`) besides our own that may call the API and
    /// start generations from a browser.
    pub cors_allowed_origins: Vec<String>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A connection must send its request headers within this time (the first
    /// request's from when it was accepted).
    pub http_header_timeout: Duration,
    /// Open connections at most (`MAX_CONNECTIONS`); more are answered 503.
    pub max_connections: usize,
    /// A WebSocket with no stream and no client message for this long is closed.
    pub ws_idle_timeout: Duration,
}

/// Longest read-token lifetime: it travels in URLs, so it must not live long.
pub const MAX_READ_TOKEN_TTL: Duration = Duration::from_secs(300);
/// `AUTH_JWT_AUDIENCE=*`: accept tokens whatever their `aud`, on purpose.
pub const AUDIENCE_WAIVED: &str = "*";
/// Shortest HS256 secret accepted (RFC 7518 §3.2: a key at least as long as the hash).
const MIN_SECRET_BYTES: usize = 32;

/// A setting with a wrong value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid setting {variable}={value:?}: {expected}")]
pub struct SettingsError {
    pub variable: &'static str,
    pub value: String,
    pub expected: String,
}

pub(super) struct Source<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Source<'_> {
    pub(super) fn raw(&self, variable: &str) -> Option<String> {
        (self.lookup)(variable).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    pub(super) fn parse<T: FromStr>(&self, variable: &'static str, default: T, expected: &str) -> Result<T, SettingsError> {
        match self.raw(variable) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|_| SettingsError { variable, value, expected: expected.into() }),
        }
    }

    pub(super) fn optional<T: FromStr>(&self, variable: &'static str, expected: &str) -> Result<Option<T>, SettingsError> {
        self.raw(variable).map(|value| value.parse().map_err(|_| SettingsError { variable, value, expected: expected.into() })).transpose()
    }

    pub(super) fn flag(&self, variable: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self.raw(variable).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(value) => Err(SettingsError { variable, value, expected: "true or false".into() }),
        }
    }

    pub(super) fn choice<T: Copy>(&self, variable: &'static str, default: T, options: &[(&str, T)]) -> Result<T, SettingsError> {
        let Some(value) = self.raw(variable) else { return Ok(default) };
        options.iter().find(|(name, _)| name.eq_ignore_ascii_case(&value)).map(|(_, v)| *v).ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            SettingsError { variable, value, expected: format!("one of {}", names.join(", ")) }
        })
    }

    pub(super) fn seconds(&self, variable: &'static str, default: f64, min: f64) -> Result<Duration, SettingsError> {
        let secs: f64 = self.parse(variable, default, "a number of seconds")?;
        if !secs.is_finite() || secs < min {
            return Err(SettingsError { variable, value: secs.to_string(), expected: format!("a number of seconds, at least {min}") });
        }
        Ok(Duration::from_secs_f64(secs))
    }

    pub(super) fn secret(&self, variable: &'static str) -> Option<Secret> {
        self.raw(variable).map(Secret)
    }

    /// A secret long enough to sign with.
    pub(super) fn signing_secret(&self, variable: &'static str) -> Result<Option<Secret>, SettingsError> {
        match self.secret(variable) {
            Some(secret) if secret.0.len() < MIN_SECRET_BYTES => Err(SettingsError {
                variable,
                value: "(hidden)".into(),
                expected: format!("a random secret of at least {MIN_SECRET_BYTES} characters"),
            }),
            secret => Ok(secret),
        }
    }

    /// A positive whole number, or `unlimited`.
    pub(super) fn limit<T: FromStr + PartialEq + Default>(
        &self,
        variable: &'static str,
        default: Option<T>,
    ) -> Result<Option<T>, SettingsError> {
        let Some(value) = self.raw(variable) else { return Ok(default) };
        if value.eq_ignore_ascii_case("unlimited") {
            return Ok(None);
        }
        match value.parse::<T>() {
            Ok(n) if n != T::default() => Ok(Some(n)),
            _ => Err(SettingsError { variable, value, expected: "a whole number of at least 1, or `unlimited`".into() }),
        }
    }

    pub(super) fn list(&self, variable: &'static str) -> Vec<String> {
        self.raw(variable).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
    }

    fn origins(&self, variable: &'static str) -> Result<Vec<String>, SettingsError> {
        self.list(variable)
            .into_iter()
            .map(|origin| {
                normalize_origin(&origin).ok_or_else(|| SettingsError {
                    variable,
                    value: origin,
                    expected: "comma-separated origins such as https://learn.example.com (scheme, host and optional port; no path, no *)"
                        .into(),
                })
            })
            .collect()
    }

    fn networks(&self, variable: &'static str) -> Result<Vec<ipnet::IpNet>, SettingsError> {
        self.list(variable)
            .into_iter()
            .map(|raw| {
                raw.parse::<ipnet::IpNet>().or_else(|_| raw.parse::<IpAddr>().map(ipnet::IpNet::from)).map_err(|_| SettingsError {
                    variable,
                    value: raw,
                    expected: "comma-separated IP addresses or CIDR ranges such as 10.0.0.0/8".into(),
                })
            })
            .collect()
    }
}

/// `scheme://host[:port]` in lower case without a default port, or `None` when
/// `raw` is not an origin (a path, a wildcard, another scheme).
pub fn normalize_origin(raw: &str) -> Option<String> {
    let (scheme, rest) = raw.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest).to_ascii_lowercase();
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if !authority.chars().all(valid) {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (address, after) = v6.split_once(']')?;
            let port = if after.is_empty() { None } else { Some(after.strip_prefix(':')?) };
            (format!("[{address}]"), port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.clone(), None),
        },
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    match port {
        None => Some(format!("{scheme}://{host}")),
        Some(port) => {
            let port: u16 = port.parse().ok()?;
            if port.to_string() == default_port {
                Some(format!("{scheme}://{host}"))
            } else {
                Some(format!("{scheme}://{host}:{port}"))
            }
        }
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
                inject_text: src.raw("DEMO_INJECT_TEXT"),
                inject_after_tokens: src.parse("DEMO_INJECT_AFTER_TOKENS", 0, "a number of tokens")?,
            },
            moderation: ModerationSettings::read(&src)?,
            coalesce: CoalesceSettings::read(&src)?,
            store: src.choice("STREAM_STORE", StoreKind::Memory, &[("memory", StoreKind::Memory), ("redis", StoreKind::Redis)])?,
            redis: match src.raw("REDIS_CLUSTER_URLS").filter(|urls| !urls.trim().is_empty()) {
                Some(urls) => {
                    let seeds: Vec<String> = urls.split(',').map(|url| url.trim().to_owned()).filter(|url| !url.is_empty()).collect();
                    if let Some(bad) = seeds.iter().find(|url| !["redis://", "rediss://"].iter().any(|scheme| url.starts_with(scheme))) {
                        return Err(SettingsError {
                            variable: "REDIS_CLUSTER_URLS",
                            value: bad.clone(),
                            expected: "comma-separated redis:// or rediss:// URLs of the cluster's nodes".into(),
                        });
                    }
                    crate::redis_connection::RedisTarget::Cluster(seeds)
                }
                None => {
                    let url = src.raw("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
                    if !["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|scheme| url.starts_with(scheme)) {
                        return Err(SettingsError {
                            variable: "REDIS_URL",
                            value: url,
                            expected: "a redis://, rediss:// or unix:// URL".into(),
                        });
                    }
                    crate::redis_connection::RedisTarget::Node(url)
                }
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
            telemetry: TelemetrySettings::read(&src)?,
            auth: AuthSettings {
                mode: src.choice(
                    "AUTH_MODE",
                    AuthMode::None,
                    &[("none", AuthMode::None), ("jwt", AuthMode::Jwt), ("api_key", AuthMode::ApiKey)],
                )?,
                allow_anonymous: src.flag("ALLOW_ANONYMOUS", false)?,
                jwt_secret: src.signing_secret("AUTH_JWT_SECRET")?,
                jwks_file: src.raw("AUTH_JWKS_FILE").map(PathBuf::from),
                jwt_issuer: src.raw("AUTH_JWT_ISSUER"),
                jwt_audience: src.raw("AUTH_JWT_AUDIENCE").filter(|audience| audience != AUDIENCE_WAIVED),
                api_keys_file: src.raw("AUTH_API_KEYS_FILE").map(PathBuf::from),
                read_token_secret: src.signing_secret("AUTH_READ_TOKEN_SECRET")?,
                read_token_ttl: {
                    let ttl = src.seconds("AUTH_READ_TOKEN_TTL_SECONDS", MAX_READ_TOKEN_TTL.as_secs_f64(), 1.0)?;
                    if ttl > MAX_READ_TOKEN_TTL {
                        return Err(SettingsError {
                            variable: "AUTH_READ_TOKEN_TTL_SECONDS",
                            value: ttl.as_secs_f64().to_string(),
                            expected: format!("at most {} seconds", MAX_READ_TOKEN_TTL.as_secs()),
                        });
                    }
                    ttl
                },
            },
            limits: LimitSettings {
                concurrent_streams: src.limit("LIMIT_CONCURRENT_STREAMS", Some(4))?,
                starts_per_minute: src.limit("LIMIT_STARTS_PER_MINUTE", Some(30))?,
                tokens_per_day: src.limit("LIMIT_TOKENS_PER_DAY", None)?,
                streams_per_socket: src.limit("LIMIT_STREAMS_PER_SOCKET", Some(8usize))?.unwrap_or(usize::MAX),
            },
            cors_allowed_origins: src.origins("CORS_ALLOWED_ORIGINS")?,
            trusted_proxies: src.networks("TRUSTED_PROXIES")?,
            http_header_timeout: src.seconds("HTTP_HEADER_TIMEOUT_SECONDS", 10.0, 0.01)?,
            max_connections: src.limit("MAX_CONNECTIONS", Some(10_000usize))?.unwrap_or(tokio::sync::Semaphore::MAX_PERMITS),
            ws_idle_timeout: src.seconds("WS_IDLE_TIMEOUT_SECONDS", 300.0, 0.01)?,
        };
        settings.check_provider_credentials()?;
        settings.check_auth(src.raw("AUTH_JWT_AUDIENCE").is_some())?;
        let coalesce = settings.coalesce.clone().bounded_by(&settings);
        Ok(Self { coalesce, ..settings })
    }

    /// The auth mode has what it needs, and no deployment is open by accident.
    /// `audience_given`: `AUTH_JWT_AUDIENCE` is set (to an audience, or to `*`).
    fn check_auth(&self, audience_given: bool) -> Result<(), SettingsError> {
        let auth = &self.auth;
        let error = |variable: &'static str, value: &str, expected: &str| SettingsError {
            variable,
            value: value.to_owned(),
            expected: expected.to_owned(),
        };
        match auth.mode {
            AuthMode::None if !self.host.is_loopback() && !auth.allow_anonymous => {
                return Err(error(
                    "AUTH_MODE",
                    "none",
                    &format!(
                        "jwt or api_key: HOST={} is not a loopback address, so anyone who reaches it could spend the model budget; \
                         set AUTH_MODE, or ALLOW_ANONYMOUS=true to serve anonymous clients on purpose",
                        self.host
                    ),
                ));
            }
            AuthMode::Jwt => match (&auth.jwt_secret, &auth.jwks_file) {
                (None, None) => {
                    return Err(error(
                        "AUTH_JWT_SECRET",
                        "",
                        "an HS256 secret, or AUTH_JWKS_FILE with public keys: AUTH_MODE=jwt needs one of them",
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(error("AUTH_JWKS_FILE", "(set)", "unset when AUTH_JWT_SECRET is set: choose HS256 or public keys"))
                }
                _ if !audience_given => {
                    return Err(error(
                        "AUTH_JWT_AUDIENCE",
                        "",
                        "the `aud` learner tokens are minted for (such as live-ai): AUTH_MODE=jwt requires it, so a token \
                         the host app signed for another service is refused (RFC 8725); `*` waives the check on purpose",
                    ))
                }
                _ => {}
            },
            AuthMode::ApiKey if auth.api_keys_file.is_none() => {
                return Err(error("AUTH_API_KEYS_FILE", "", "a file of `principal:sha256-hex` lines: AUTH_MODE=api_key needs it"));
            }
            _ => {}
        }
        // Processes behind one load balancer must all accept each other's read tokens.
        if auth.mode != AuthMode::None && self.store == StoreKind::Redis && auth.read_token_secret.is_none() {
            return Err(error(
                "AUTH_READ_TOKEN_SECRET",
                "",
                "a random secret shared by every process: required with STREAM_STORE=redis when AUTH_MODE is not none",
            ));
        }
        if auth.read_token_secret.is_some() && auth.read_token_secret == auth.jwt_secret {
            return Err(error(
                "AUTH_READ_TOKEN_SECRET",
                "(hidden)",
                "a secret different from AUTH_JWT_SECRET, so a read token can never pass as a learner's token",
            ));
        }
        Ok(())
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

/// Settings from `pairs` of variables, for the config modules' unit tests.
#[cfg(test)]
pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    let vars = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Settings::from_map(&vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::from_pairs as settings;

    #[test]
    fn defaults_follow_the_spec() {
        let s = settings(&[]).unwrap();
        assert!(!s.streaming_enabled);
        assert_eq!(s.streaming_backend, StreamingBackend::Sse);
        assert_eq!(s.provider, ProviderKind::Demo);
        assert_eq!(s.port, 8000);
        assert_eq!(s.resume_grace, Duration::from_secs(30));
        assert_eq!(s.retention, Duration::from_secs(300));
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(settings(&[("MAX_CONNECTIONS", "unlimited")]).unwrap().max_connections, tokio::sync::Semaphore::MAX_PERMITS);
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
            ("REDIS_URL", "http://127.0.0.1:6379"),
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
    fn auth_settings_are_checked_naming_the_variable() {
        let secret = "s".repeat(32);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("AUTH_MODE", "jwt")], "AUTH_JWT_SECRET"),
            (&[("AUTH_MODE", "jwt"), ("AUTH_JWT_SECRET", "short")], "AUTH_JWT_SECRET"),
            (&[("AUTH_MODE", "jwt"), ("AUTH_JWT_SECRET", &secret), ("AUTH_JWKS_FILE", "keys.json")], "AUTH_JWKS_FILE"),
            (&[("AUTH_MODE", "jwt"), ("AUTH_JWT_SECRET", &secret)], "AUTH_JWT_AUDIENCE"),
            (&[("AUTH_MODE", "jwt"), ("AUTH_JWKS_FILE", "keys.json")], "AUTH_JWT_AUDIENCE"),
            (&[("AUTH_MODE", "api_key")], "AUTH_API_KEYS_FILE"),
            (&[("AUTH_MODE", "ldap")], "AUTH_MODE"),
            (
                &[("AUTH_MODE", "jwt"), ("AUTH_JWT_SECRET", &secret), ("AUTH_JWT_AUDIENCE", "a"), ("STREAM_STORE", "redis")],
                "AUTH_READ_TOKEN_SECRET",
            ),
            (
                &[("AUTH_MODE", "jwt"), ("AUTH_JWT_SECRET", &secret), ("AUTH_JWT_AUDIENCE", "a"), ("AUTH_READ_TOKEN_SECRET", &secret)],
                "AUTH_READ_TOKEN_SECRET",
            ),
            (&[("AUTH_READ_TOKEN_TTL_SECONDS", "301")], "AUTH_READ_TOKEN_TTL_SECONDS"),
            (&[("LIMIT_CONCURRENT_STREAMS", "0")], "LIMIT_CONCURRENT_STREAMS"),
            (&[("LIMIT_STARTS_PER_MINUTE", "many")], "LIMIT_STARTS_PER_MINUTE"),
            (&[("LIMIT_TOKENS_PER_DAY", "-5")], "LIMIT_TOKENS_PER_DAY"),
            (&[("CORS_ALLOWED_ORIGINS", "*")], "CORS_ALLOWED_ORIGINS"),
            (&[("CORS_ALLOWED_ORIGINS", "https://a.example/path")], "CORS_ALLOWED_ORIGINS"),
            (&[("TRUSTED_PROXIES", "10.0.0.0/33")], "TRUSTED_PROXIES"),
            (&[("HTTP_HEADER_TIMEOUT_SECONDS", "0")], "HTTP_HEADER_TIMEOUT_SECONDS"),
            (&[("MAX_CONNECTIONS", "0")], "MAX_CONNECTIONS"),
        ];
        for (vars, variable) in cases {
            let err = settings(vars).unwrap_err();
            assert_eq!(err.variable, *variable, "{vars:?}");
            assert!(!err.to_string().contains(&secret), "secrets stay out of errors");
        }
    }

    #[test]
    fn jwt_mode_requires_an_audience_unless_waived_with_a_star() {
        let secret = "s".repeat(32);
        let jwt = |audience: Option<&str>| {
            let mut vars = vec![("AUTH_MODE", "jwt"), ("AUTH_JWT_SECRET", secret.as_str())];
            vars.extend(audience.map(|a| ("AUTH_JWT_AUDIENCE", a)));
            settings(&vars)
        };
        let err = jwt(None).unwrap_err();
        assert_eq!(err.variable, "AUTH_JWT_AUDIENCE");
        assert!(err.to_string().contains("AUTH_JWT_AUDIENCE") && err.to_string().contains('*'), "{err}");
        assert_eq!(jwt(Some("live-ai")).unwrap().auth.jwt_audience.as_deref(), Some("live-ai"));
        assert_eq!(jwt(Some("*")).unwrap().auth.jwt_audience, None, "waived: any aud is accepted");
        assert!(settings(&[]).is_ok(), "other modes need no audience");
    }

    #[test]
    fn anonymous_mode_on_a_public_address_needs_allow_anonymous_and_names_both() {
        let err = settings(&[("HOST", "0.0.0.0")]).unwrap_err();
        assert_eq!(err.variable, "AUTH_MODE");
        assert!(err.to_string().contains("ALLOW_ANONYMOUS"), "{err}");
        assert!(settings(&[("HOST", "0.0.0.0"), ("ALLOW_ANONYMOUS", "true")]).is_ok());
        assert!(settings(&[("HOST", "::1")]).is_ok());
    }

    #[test]
    fn limits_default_to_the_issue_and_accept_unlimited() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            s.limits,
            LimitSettings { concurrent_streams: Some(4), starts_per_minute: Some(30), tokens_per_day: None, streams_per_socket: 8 }
        );
        let s = settings(&[("LIMIT_CONCURRENT_STREAMS", "unlimited"), ("LIMIT_TOKENS_PER_DAY", "50000")]).unwrap();
        assert_eq!((s.limits.concurrent_streams, s.limits.tokens_per_day), (None, Some(50_000)));
    }

    #[test]
    fn origins_are_normalised() {
        assert_eq!(normalize_origin("HTTPS://Learn.Example.com:443/").as_deref(), Some("https://learn.example.com"));
        assert_eq!(normalize_origin("http://127.0.0.1:5173").as_deref(), Some("http://127.0.0.1:5173"));
        assert_eq!(normalize_origin("http://[::1]:8000").as_deref(), Some("http://[::1]:8000"));
        for bad in ["*", "learn.example.com", "ftp://x", "https://x/y", "https://", "https://x:99999"] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = settings(&[("AI_PROVIDER", "anthropic"), ("ANTHROPIC_API_KEY", "sk-ant-secret")]).unwrap();
        assert!(!format!("{s:?}").contains("sk-ant-secret"));
    }
}
