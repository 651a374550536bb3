//! `MODERATION_PROVIDER=local`: the embedded offline filter, the `rustrict`
//! crate. It is a word-level filter, not a classifier: it finds swear words,
//! slurs and sexual words (spelled out, spaced, disguised with look-alike
//! characters), and nothing it has no word for — a harmful idea in clean words
//! (self-harm instructions, say) passes. It is labelled as such wherever it is
//! named, like the demo model.
//!
//! What flags: profane, offensive or sexual words of moderate severity or
//! worse, and severely mean ones. Mild words ("crap", "poop") pass: a child's
//! question about why cows poop is not an incident. Scores are rustrict's
//! severity (moderate 0.67, severe 1.0), not a probability.
//!
//! The filter reads text, not markdown: emphasis and code marks (`*`, `_`, `` ` ``,
//! `~`) are read as spaces first, since rustrict takes a `*` for a censored
//! letter ("*colour* appears" would read as a hidden swear word). A word
//! censored with a `*` is still caught, as a spaced-out one ("f ck"). Numbers
//! standing alone are read as spaces too: rustrict reads digits as letters
//! ("sh1t"), which made one question in six of "what is 493 times 2?" kind
//! look sexual; digits inside a word are still read as letters.
//!
//! rustrict reads across word gaps (to catch "r a p e") and keeps a list of the
//! innocent phrases that would match ("car appear"); [`FALSE_POSITIVES`] adds
//! the ones a school answer meets that its list lacks, the way its own are
//! added (as words of no type).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use rustrict::{Censor, Trie, Type};

use super::category;
use super::moderator::{Check, Flag, ModerationError, Moderator, Verdict};

pub struct LocalFilter;

/// rustrict's types, in the shared vocabulary, with the severity that flags.
const TYPES: [(Type, &str, Type); 4] = [
    (Type::PROFANE, category::PROFANITY, Type::MODERATE_OR_HIGHER),
    (Type::OFFENSIVE, "hate", Type::MODERATE_OR_HIGHER),
    (Type::SEXUAL, "sexual", Type::MODERATE_OR_HIGHER),
    (Type::MEAN, "harassment", Type::SEVERE),
];

/// Innocent phrases rustrict's own false-positive list lacks.
const FALSE_POSITIVES: &[&str] = &["war appear", "wars appear"];

static TRIE: LazyLock<Trie> = LazyLock::new(|| {
    let mut trie = Trie::default();
    for phrase in FALSE_POSITIVES {
        trie.set(phrase, Type::NONE);
    }
    trie
});

/// `text` as the filter should read it: markdown marks, stand-alone numbers and
/// stand-alone punctuation as spaces.
fn plain(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(&first) = chars.get(at) {
        let run_end = |inside: fn(char) -> bool| chars[at..].iter().position(|c| !inside(*c)).map_or(chars.len(), |n| at + n);
        if first.is_whitespace() {
            out.push(first);
            at += 1;
        } else if first.is_alphanumeric() {
            let end = run_end(char::is_alphanumeric);
            let word = &chars[at..end];
            if word.iter().any(|c| c.is_alphabetic()) {
                out.extend(word);
            } else {
                out.extend(word.iter().map(|_| ' '));
            }
            at = end;
        } else {
            // A symbol inside a word may stand for a letter ("sh!t"); one beside a
            // gap cannot, yet rustrict reads "(" as a "c": "(*]*), that" was sexual.
            let end = run_end(|c| !c.is_alphanumeric() && !c.is_whitespace());
            let inside_a_word =
                at > 0 && chars.get(at - 1).is_some_and(|c| c.is_alphanumeric()) && chars.get(end).is_some_and(|c| c.is_alphanumeric());
            for &c in &chars[at..end] {
                out.push(if inside_a_word && !matches!(c, '*' | '_' | '`' | '~') { c } else { ' ' });
            }
            at = end;
        }
    }
    out
}

/// Builds the word lists now (a fifth of a second), so the first learner does not wait for it.
pub fn warm_up() {
    let _ = judge("warm up");
}

/// The verdict on `text`.
pub fn judge(text: &str) -> Verdict {
    let analysis = Censor::new(plain(text).chars()).with_trie(&TRIE).analyze();
    let mut flag = Flag::default();
    for (kind, name, threshold) in TYPES {
        if analysis.is(kind & threshold) {
            flag.categories.push(name.to_owned());
            let severity = if analysis.is(kind & Type::SEVERE) { 1.0 } else { 0.67 };
            flag.scores.insert(name.to_owned(), severity);
        }
    }
    if flag.categories.is_empty() {
        Verdict::Allowed
    } else {
        flag.scores = flag.scores.into_iter().collect::<BTreeMap<_, _>>();
        Verdict::Flagged(flag)
    }
}

#[async_trait]
impl Moderator for LocalFilter {
    fn name(&self) -> &'static str {
        "local"
    }

    fn description(&self) -> String {
        "word-level filter, not a classifier (rustrict): it catches swear words, slurs and sexual words, not harmful ideas in clean words"
            .into()
    }

    async fn check(&self, check: &Check) -> Result<Verdict, ModerationError> {
        Ok(judge(&check.text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn categories(text: &str) -> Vec<String> {
        match judge(text) {
            Verdict::Allowed => Vec::new(),
            Verdict::Flagged(flag) => flag.categories,
        }
    }

    #[test]
    fn real_phrases_are_flagged_with_their_category() {
        for (text, expected) in [
            ("You are a worthless piece of shit.", "profanity"),
            ("what the fuck is this", "profanity"),
            ("f u c k you", "profanity"),
            ("send me porn", "sexual"),
            ("show me your boobs", "sexual"),
        ] {
            assert!(categories(text).iter().any(|c| c == expected), "{text:?} gave {:?}", categories(text));
        }
    }

    #[test]
    fn markdown_emphasis_is_not_read_as_a_censored_word() {
        assert_eq!(judge("Notice where *colour* appears, and ask what it changes."), Verdict::Allowed);
        assert_ne!(judge("what the f*ck"), Verdict::Allowed);
    }

    #[test]
    fn punctuation_beside_a_gap_is_not_read_as_a_letter() {
        // The demo model's answer to a question whose context was "]" (found by the OpenAPI fuzz).
        assert_eq!(judge("In this lesson's context (*]*), that is the part to focus on."), Verdict::Allowed);
        assert_ne!(judge("what the sh!t"), Verdict::Allowed);
        assert_ne!(judge("(shit)"), Verdict::Allowed);
    }

    #[test]
    fn the_demo_models_answers_pass_window_by_window() {
        use crate::ai::blocks::{BlockInput, BlockType};
        use crate::ai::moderation::window::Windows;
        let topics = [
            "volcanoes",
            "photosynthesis",
            "the water cycle",
            "why leaves change colour",
            "the solar system",
            "fractions",
            "the human heart",
            "dinosaurs",
            "electricity",
            "magnets",
            "the Roman Empire",
            "ancient Egypt",
            "gravity",
            "rainbows",
            "how bees make honey",
            "earthquakes",
            "the moon's phases",
            "plate tectonics",
            "the digestive system",
            "sound waves",
            "states of matter",
            "climate change",
            "the French Revolution",
            "multiplication tables",
            "how plants grow",
            "the food chain",
            "clouds",
            "the periodic table",
            "World War II",
            "the printing press",
            "Shakespeare",
            "the brain",
            "bacteria and viruses",
            "recycling",
            "rainforests",
            "deserts",
            "the ocean floor",
            "how airplanes fly",
            "the internet",
            "coding for kids",
            "the pyramids",
            "the Vikings",
            "weather fronts",
            "the Great Wall of China",
            "how vaccines work",
            "the skeleton",
            "butterflies",
            "light and shadows",
            "simple machines",
            "volume and area",
            "the alphabet",
            "poetry",
            "the seasons",
            "why the sky is blue",
        ];
        let mut answers = 0;
        let mut flagged = Vec::new();
        for topic in topics {
            let inputs = [
                (BlockType::AskQuestion, serde_json::json!({"question": format!("Why is {topic} important?")})),
                (BlockType::AskQuestion, serde_json::json!({"question": format!("How does {topic} work?"), "context": "Year 5 science"})),
                (BlockType::ExplainEli10, serde_json::json!({"topic": topic})),
                (BlockType::Quiz, serde_json::json!({"topic": topic, "count": 5, "difficulty": "hard"})),
                (BlockType::Diagram, serde_json::json!({"description": format!("how {topic} works, step by step"), "kind": "mindmap"})),
            ];
            for (block, fields) in inputs {
                let input = BlockInput::parse(block, fields.as_object().unwrap()).unwrap();
                assert_eq!(judge(&input.learner_text()), Verdict::Allowed, "the input {:?}", input.learner_text());
                let text = crate::ai::providers::demo_content::write(&input);
                let mut windows = Windows::new(200);
                for token in crate::ai::providers::demo_content::tokens(&text) {
                    windows.push(token);
                    while let Some(window) = windows.next_window() {
                        if judge(&window.text) != Verdict::Allowed {
                            flagged.push(format!("{block:?} {topic}: {:?}", window.text));
                        }
                    }
                }
                if let Some(window) = windows.rest().filter(|w| judge(&w.text) != Verdict::Allowed) {
                    flagged.push(format!("{block:?} {topic}: {:?}", window.text));
                }
                answers += 1;
            }
        }
        assert!(flagged.is_empty(), "{}", flagged.join("\n"));
        assert_eq!(answers, topics.len() * 5);
    }

    #[test]
    fn numbers_are_not_read_as_words_unless_inside_one() {
        for n in [493, 3_000_003, 4_000_055, 5_000_817, 7_000_175, 8008] {
            let text = format!("What is {n} times 2? Benchmark question number {n}: how do streams scale?");
            assert_eq!(judge(&text), Verdict::Allowed, "{text}");
        }
        let flagged: Vec<u32> =
            (0..5000).filter(|n| judge(&format!("Question number {n}: what is {n} plus {n}?")) != Verdict::Allowed).collect();
        assert!(flagged.is_empty(), "{flagged:?}");
        assert_ne!(judge("you are a piece of sh1t"), Verdict::Allowed);
    }

    #[test]
    fn ordinary_school_words_pass() {
        for text in [
            "Why do cows poop so much?",
            "An assassin bug hunts other insects.",
            "Scunthorpe is a town in England.",
            "Plants reproduce with seeds; some need pollinators like bees.",
            "The class went to Essex and saw a cockerel.",
            "How do volcanoes erupt?",
        ] {
            assert_eq!(judge(text), Verdict::Allowed, "{text:?}");
        }
    }
}
