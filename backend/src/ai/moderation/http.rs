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
        let mut response = request.send().await.map_err(|error| ModerationError::Unavailable {
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
        // Read piece by piece: an answer without a length (chunked) is refused
        // once too large, never held whole first.
        let mut body = bytes::BytesMut::new();
        while let Some(piece) =
            response.chunk().await.map_err(|error| ModerationError::Unavailable { moderator, message: error.without_url().to_string() })?
        {
            if body.len() + piece.len() > MAX_BODY {
                return Err(ModerationError::Malformed { moderator, message: "the answer is too large".into() });
            }
            body.extend_from_slice(&piece);
        }
        Ok(body.freeze())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn an_answer_without_a_length_is_refused_once_past_the_limit_not_read_to_its_end() {
        // A server that sends more than the limit in one chunk and then holds
        // the body open: read whole first, the answer would never come.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            let piece = vec![b' '; MAX_BODY + 1];
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await;
            let _ = socket.write_all(&piece).await;
            let _ = socket.write_all(b"\r\n").await;
            // Held open until the client goes.
            let _ = socket.read(&mut request).await;
        });
        let post = JsonPost::new("openai", &format!("http://127.0.0.1:{port}"), "v1/moderations", None);
        let answer = tokio::time::timeout(Duration::from_secs(30), post.send(&serde_json::json!({"input": "hi"})))
            .await
            .expect("refused without waiting for the body's end");
        assert!(matches!(answer, Err(ModerationError::Malformed { .. })), "{answer:?}");
    }
}
