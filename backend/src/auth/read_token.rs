//! Read tokens: what `POST /api/streams` hands out so that clients which cannot
//! send headers (a native `EventSource`, curl) can read the stream they started,
//! as `?read_token=`. A read token is an HS256 JWT signed with the server's read
//! key, naming the stream (`sid`) and its owner (`sub`), valid for at most five
//! minutes (`AUTH_READ_TOKEN_TTL_SECONDS`), with its own audience so it can never
//! pass for a learner's token. It grants reading that one stream, nothing else.
//!
//! The key is `AUTH_READ_TOKEN_SECRET`, shared by every process of a deployment;
//! without it each process draws a random key at start-up, which is right for one
//! process (settings refuse a Redis deployment with auth and no shared key).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{AuthError, Principal};
use crate::ai::streaming::events::StreamId;

const AUDIENCE: &str = "live-ai:read-token";

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    sid: String,
    aud: String,
    iat: u64,
    exp: u64,
}

/// A token and when it stops working.
pub struct ReadToken {
    pub token: String,
    pub expires_at: SystemTime,
}

pub struct ReadTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl ReadTokens {
    /// `secret`, or a random key of this process when `None`.
    pub fn new(secret: Option<&[u8]>, ttl: Duration) -> Self {
        let random: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].iter().flat_map(|u| *u.as_bytes()).collect();
        let secret = secret.unwrap_or(&random);
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), ttl }
    }

    pub fn issue(&self, principal: &Principal, stream_id: &StreamId) -> ReadToken {
        self.issue_at(principal, stream_id, SystemTime::now())
    }

    fn issue_at(&self, principal: &Principal, stream_id: &StreamId, now: SystemTime) -> ReadToken {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let exp = iat + self.ttl.as_secs().max(1);
        let claims = Claims { sub: principal.id().to_owned(), sid: stream_id.to_string(), aud: AUDIENCE.into(), iat, exp };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).expect("HS256 signing of plain claims cannot fail");
        ReadToken { token, expires_at: UNIX_EPOCH + Duration::from_secs(exp) }
    }

    /// The owner and stream a token grants reading.
    pub fn verify(&self, token: &str) -> Result<(Principal, StreamId), AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Our own clock signed it: no skew to allow for.
        validation.leeway = 0;
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        let claims = decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Invalid("the read token has expired"),
                _ => AuthError::Invalid("not a read token of this server"),
            })?
            .claims;
        let principal = Principal::from_id(&claims.sub).ok_or(AuthError::Invalid("not a read token of this server"))?;
        let stream_id = StreamId::parse(&claims.sid).ok_or(AuthError::Invalid("not a read token of this server"))?;
        Ok((principal, stream_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> ReadTokens {
        ReadTokens::new(Some(b"read-token-secret-of-32-bytes-at-least"), Duration::from_secs(300))
    }

    #[test]
    fn a_token_names_its_owner_and_stream() {
        let (alice, stream) = (Principal::learner("alice"), StreamId::generate());
        let issued = tokens().issue(&alice, &stream);
        assert_eq!(tokens().verify(&issued.token).unwrap(), (alice, stream));
        let lifetime = issued.expires_at.duration_since(SystemTime::now()).unwrap();
        assert!(lifetime <= Duration::from_secs(300));
    }

    #[test]
    fn expired_foreign_and_learner_tokens_are_refused() {
        let (alice, stream) = (Principal::learner("alice"), StreamId::generate());
        let old = tokens().issue_at(&alice, &stream, SystemTime::now() - Duration::from_secs(301));
        assert_eq!(tokens().verify(&old.token), Err(AuthError::Invalid("the read token has expired")));
        let other_process = ReadTokens::new(None, Duration::from_secs(300)).issue(&alice, &stream);
        assert!(tokens().verify(&other_process.token).is_err());
        // A learner JWT signed with the same key still lacks the read-token audience.
        let learner = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "jwt:alice", "sid": stream.as_str(), "exp": jsonwebtoken::get_current_timestamp() + 60}),
            &EncodingKey::from_secret(b"read-token-secret-of-32-bytes-at-least"),
        )
        .unwrap();
        assert!(tokens().verify(&learner).is_err());
    }
}
