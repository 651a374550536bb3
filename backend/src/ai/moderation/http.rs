//! The HTTP call both remote moderators make: a JSON POST with an optional
//! Bearer key, the answer's status mapped to a typed failure (with any
//! `Retry-After`), the body handed back for the moderator to read. Bodies of
//! refusals are never logged whole: a server may echo the key or the text.

use std::time::Duration;

use bytes::Bytes;

use super::moderator::ModerationError;
use crate::config::settings::Secret;

/// Bodies larger than this are not a moderation answer.
const MAX_BODY: usize = 1 << 20;

pub struct JsonPost {
    client: reqwest::Client,
    url: String,
    key: Option<Secret>,
    moderator: &'static str,
}

impl JsonPost {
    /// POSTs to `base_url` + `/` + `path`.
    pub fn new(moderator: &'static str, base_url: &str, path: &str, key: Option<Secret>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds");
        Self { client, url: format!("{}/{path}", base_url.trim_end_matches('/')), key, moderator }
    }

    pub async fn send(&self, body: &serde_json::Value) -> Result<Bytes, ModerationError> {
        let moderator = self.moderator;
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).expect("JSON values serialise"));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key.expose());
        }
        let response = request.send().await.map_err(|error| ModerationError::Unavailable {
            moderator,
            // Without the URL: it names the host, which is fine, but keep logs uniform.
            message: error.without_url().to_string(),
        })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|secs| secs.is_finite() && *secs >= 0.0)
                .map(Duration::from_secs_f64);
            return Err(ModerationError::Status { moderator, status: status.as_u16(), retry_after });
        }
        if response.content_length().is_some_and(|n| n as usize > MAX_BODY) {
            return Err(ModerationError::Malformed { moderator, message: "the answer is too large".into() });
        }
        let body =
            response.bytes().await.map_err(|error| ModerationError::Unavailable { moderator, message: error.without_url().to_string() })?;
        if body.len() > MAX_BODY {
            return Err(ModerationError::Malformed { moderator, message: "the answer is too large".into() });
        }
        Ok(body)
    }
}
