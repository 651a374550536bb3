//! API keys for server-to-server callers. The file (`AUTH_API_KEYS_FILE`) holds
//! lines `principal:sha256-hex-of-key`; `#` starts a comment. Only hashes are kept,
//! and a presented key's hash is compared with every entry in constant time, so
//! neither the file nor the timing tells a key.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::principal::MAX_NAME_LEN;

pub struct ApiKeys {
    entries: Vec<(String, [u8; 32])>,
}

impl ApiKeys {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}; expected `principal:sha256-hex-of-key`", n + 1);
            let (principal, hex_hash) = line.rsplit_once(':').ok_or_else(|| bad("no `:`"))?;
            let principal = principal.trim();
            if principal.is_empty() || principal.len() > MAX_NAME_LEN || principal.chars().any(char::is_control) {
                return Err(bad("the principal must be 1 to 256 printable characters"));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(hex_hash.trim(), &mut hash).map_err(|_| bad("the hash is not 64 hex digits"))?;
            entries.push((principal.to_owned(), hash));
        }
        if entries.is_empty() {
            return Err("no keys in the file".into());
        }
        Ok(Self { entries })
    }

    /// The principal name of `key`, if it is one of ours.
    pub fn verify(&self, key: &str) -> Option<&str> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        // No early exit: every entry is compared whether or not one matched.
        for (principal, expected) in &self.entries {
            if bool::from(hash.ct_eq(expected)) {
                found = Some(principal.as_str());
            }
        }
        found
    }
}

/// The file line for `principal` and `key`: what an operator writes.
pub fn line_for(principal: &str, key: &str) -> String {
    format!("{principal}:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_to_their_principal_and_others_do_not() {
        let file = format!("# graders\n{}\n\n{}\n", line_for("grader", "k-one"), line_for("reporter", "k-two"));
        let keys = ApiKeys::parse(&file).unwrap();
        assert_eq!(keys.verify("k-one"), Some("grader"));
        assert_eq!(keys.verify("k-two"), Some("reporter"));
        assert_eq!(keys.verify("k-three"), None);
        assert_eq!(keys.verify(""), None);
    }

    #[test]
    fn a_malformed_file_names_the_line() {
        for (bad, line) in [("grader", "line 1"), ("# c\ngrader:abc", "line 2"), (":00", "line 1")] {
            let err = ApiKeys::parse(bad).err().unwrap();
            assert!(err.contains(line), "{bad}: {err}");
        }
        assert!(ApiKeys::parse("# only a comment\n").is_err());
    }
}
