//! Learner JWTs from the host learning app, verified with `jsonwebtoken`: HS256
//! with a shared secret, or RS256/ES256 with the public keys of a JWKS file. `exp`
//! and `sub` are required; `nbf` is checked when present; `iss` and `aud` when
//! configured. A token's `alg` must be the one its key was published for, so a
//! public key can never be used as an HMAC secret.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::principal::MAX_NAME_LEN;
use super::AuthError;

/// Clock skew tolerated between the host app and this server.
const LEEWAY_SECONDS: u64 = 5;

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

pub struct JwtVerifier {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
    /// The claim naming the learner's sharing scope (`COALESCE_SCOPE_CLAIM`).
    scope_claim: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Required by the validation; optional here so a token without it is refused
    /// as lacking a claim, not as malformed.
    exp: Option<u64>,
    /// Every other claim, where the scope claim is looked up.
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// What a verified token says: who, in which sharing scope, and until when it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub sub: String,
    /// The scope claim's value: a string, or a number as written. Absent, empty,
    /// of another type or longer than a principal name: no scope (the learner
    /// shares only with itself, never with a class it might not be in).
    pub scope: Option<String>,
    /// The token's `exp` plus the tolerated clock skew: from then on it is refused.
    pub usable_until: std::time::SystemTime,
}

impl JwtVerifier {
    pub fn hs256(secret: &[u8], issuer: Option<&str>, audience: Option<&str>) -> Self {
        let key = Key { kid: None, algorithm: Algorithm::HS256, key: DecodingKey::from_secret(secret) };
        Self { keys: vec![key], issuer: issuer.map(str::to_owned), audience: audience.map(str::to_owned), scope_claim: None }
    }

    /// Reads the RS256 / ES256 signing keys of a JWKS document; keys for other
    /// algorithms or for encryption are skipped, and at least one must remain.
    pub fn from_jwks(json: &str, issuer: Option<&str>, audience: Option<&str>) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
                continue;
            }
            let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(ec)) | (None, AlgorithmParameters::EllipticCurve(ec))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {:?} is unusable: {e}", jwk.common.key_id))?;
            keys.push(Key { kid: jwk.common.key_id.clone(), algorithm, key });
        }
        if keys.is_empty() {
            return Err("no RS256 or ES256 signing key in the JWKS document".into());
        }
        Ok(Self { keys, issuer: issuer.map(str::to_owned), audience: audience.map(str::to_owned), scope_claim: None })
    }

    /// Reads each token's sharing scope from `claim`.
    pub fn with_scope_claim(self, claim: Option<&str>) -> Self {
        Self { scope_claim: claim.map(str::to_owned), ..self }
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        validation
    }

    /// The token's `sub` and lifetime, once its signature and claims check out.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Invalid("not a JWT"))?;
        let candidates = self.keys.iter().filter(|key| key.algorithm == header.alg).filter(|key| match (&header.kid, &key.kid) {
            (Some(wanted), Some(kid)) => wanted == kid,
            (Some(_), None) => self.keys.len() == 1,
            (None, _) => true,
        });
        let mut outcome = Err(AuthError::Invalid("no key for this token's alg and kid"));
        for key in candidates {
            outcome = match decode::<Claims>(token, &key.key, &self.validation(key.algorithm)) {
                Ok(data) => {
                    let usable_until =
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(data.claims.exp.unwrap_or(0).saturating_add(LEEWAY_SECONDS));
                    let scope = self.scope_claim.as_ref().and_then(|claim| scope_of(data.claims.rest.get(claim)?));
                    return check_subject(data.claims.sub).map(|sub| Verified { sub, scope, usable_until });
                }
                Err(error) => Err(AuthError::Invalid(reason(&error))),
            };
        }
        outcome
    }
}

/// A scope claim's value as a scope, when it is one.
fn scope_of(value: &serde_json::Value) -> Option<String> {
    let scope = match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Number(number) => number.to_string(),
        _ => return None,
    };
    (!scope.trim().is_empty() && scope.len() <= MAX_NAME_LEN && !scope.chars().any(char::is_control)).then_some(scope)
}

fn check_subject(sub: String) -> Result<String, AuthError> {
    if sub.trim().is_empty() || sub.len() > MAX_NAME_LEN || sub.chars().any(char::is_control) {
        return Err(AuthError::Invalid("sub must be 1 to 256 printable characters"));
    }
    Ok(sub)
}

fn reason(error: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "the token is for another audience",
        ErrorKind::InvalidIssuer => "the token is from another issuer",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp, sub, iss or aud)",
        _ => "the token is malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[test]
    fn the_scope_claim_names_the_learners_sharing_scope_when_it_is_a_plain_value() {
        let verifier = JwtVerifier::hs256(SECRET, None, None).with_scope_claim(Some("class_id"));
        let scope = |value: serde_json::Value| {
            let mut claims = json!({"sub": "s", "exp": now() + 60});
            if !value.is_null() {
                claims["class_id"] = value;
            }
            verifier.verify(&hs256(claims, SECRET)).unwrap().scope
        };
        assert_eq!(scope(json!("7b")), Some("7b".into()));
        assert_eq!(scope(json!(42)), Some("42".into()));
        for none in [json!(null), json!(""), json!(["7b"]), json!({"id": "7b"}), json!("x".repeat(300))] {
            assert_eq!(scope(none.clone()), None, "{none}");
        }
        let unscoped = JwtVerifier::hs256(SECRET, None, None);
        let token = hs256(json!({"sub": "s", "exp": now() + 60, "class_id": "7b"}), SECRET);
        assert_eq!(unscoped.verify(&token).unwrap().scope, None, "without COALESCE_SCOPE_CLAIM, no scope");
    }

    #[test]
    fn a_valid_token_yields_its_subject() {
        let verifier = JwtVerifier::hs256(SECRET, Some("https://learn.example"), Some("live-ai"));
        let token = hs256(json!({"sub": "learner-7", "exp": now() + 60, "iss": "https://learn.example", "aud": "live-ai"}), SECRET);
        let verified = verifier.verify(&token).unwrap();
        assert_eq!(verified.sub, "learner-7");
        let until = verified.usable_until.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(until, now() + 60 + LEEWAY_SECONDS, "exp, plus the tolerated skew");
    }

    #[test]
    fn expired_immature_misaddressed_and_forged_tokens_are_refused() {
        let verifier = JwtVerifier::hs256(SECRET, Some("iss-a"), Some("aud-a"));
        let ok = json!({"sub": "s", "exp": now() + 60, "iss": "iss-a", "aud": "aud-a"});
        let with = |patch: serde_json::Value| {
            let mut claims = ok.clone();
            claims.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
            claims
        };
        let cases = [
            (hs256(with(json!({"exp": now() - 3600})), SECRET), "expired"),
            (hs256(with(json!({"nbf": now() + 3600})), SECRET), "not valid yet"),
            (hs256(with(json!({"aud": "aud-b"})), SECRET), "audience"),
            (hs256(with(json!({"iss": "iss-b"})), SECRET), "issuer"),
            (hs256(ok.clone(), b"another-secret-of-at-least-32-bytes!"), "signature"),
            (hs256(json!({"sub": "s", "iss": "iss-a", "aud": "aud-a"}), SECRET), "claim"),
            (hs256(with(json!({"sub": ""})), SECRET), "sub"),
            ("not.a.token".into(), "JWT"),
        ];
        for (token, expected) in cases {
            match verifier.verify(&token) {
                Err(AuthError::Invalid(reason)) => assert!(reason.contains(expected), "{expected}: {reason}"),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_jwks_without_signing_keys_is_refused() {
        assert!(JwtVerifier::from_jwks(r#"{"keys": []}"#, None, None).is_err());
        assert!(JwtVerifier::from_jwks("[]", None, None).is_err());
    }
}
