//! The one vocabulary of moderation categories: OpenAI's (what its moderation
//! API returns), plus `profanity` (the local filter's swear words, which no
//! classifier category names) and the Llama Guard 3 hazards OpenAI has no name
//! for. Every moderator's verdict is told in these words, so a host app's alert
//! rules do not depend on the moderator.

/// OpenAI's categories, as `omni-moderation-latest` names them.
pub const OPENAI: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// The local filter's swear words.
pub const PROFANITY: &str = "profanity";

/// Llama Guard 3's hazard codes (MLCommons taxonomy) in this vocabulary.
pub fn of_llama_guard(code: &str) -> Option<&'static str> {
    Some(match code {
        "S1" => "violence",                // violent crimes
        "S2" => "illicit",                 // non-violent crimes
        "S3" => "sexual",                  // sex-related crimes
        "S4" => "sexual/minors",           // child sexual exploitation
        "S5" => "defamation",              // defamation
        "S6" => "specialized-advice",      // financial, medical, legal advice
        "S7" => "privacy",                 // privacy
        "S8" => "intellectual-property",   // intellectual property
        "S9" => "illicit/violent",         // indiscriminate weapons
        "S10" => "hate",                   // hate
        "S11" => "self-harm",              // suicide and self-harm
        "S12" => "sexual",                 // sexual content
        "S13" => "elections",              // elections
        "S14" => "code-interpreter-abuse", // code interpreter abuse
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_llama_guard_code_has_a_category_and_nothing_else_does() {
        for n in 1..=14 {
            assert!(of_llama_guard(&format!("S{n}")).is_some(), "S{n}");
        }
        for other in ["S0", "S15", "s1", "", "unsafe"] {
            assert_eq!(of_llama_guard(other), None, "{other}");
        }
    }
}
