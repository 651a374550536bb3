//! What the offline demo model writes: deterministic, block-shaped text built from
//! the input (a markdown answer, a short ELI10, real quiz JSON, a valid Mermaid
//! diagram). Same input, same text; it says it comes from the demo model.

use serde_json::json;

use crate::ai::blocks::diagram::DiagramKind;
use crate::ai::blocks::{fnv1a, BlockInput};

/// A small deterministic generator seeded from the input (FNV-1a + xorshift).
struct Picker(u64);

impl Picker {
    fn seeded(text: &str) -> Self {
        Self(fnv1a(text) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[(self.next() % options.len() as u64) as usize]
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The input's words that carry meaning, for weaving into the text.
fn key_terms(text: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "is", "are", "was", "what", "why", "how", "does", "do", "did",
        "with", "it", "its", "this", "that", "be", "can", "i", "you", "me", "my", "about", "then", "from", "by", "as", "at", "when",
        "which", "who",
    ];
    let mut terms: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric() && c != '-' && c != '\'') {
        let lower = word.to_lowercase();
        if lower.len() > 2 && !STOP.contains(&lower.as_str()) && !terms.contains(&lower) {
            terms.push(lower);
        }
    }
    if terms.is_empty() {
        terms.push("this idea".into());
    }
    terms
}

fn clip(text: &str, max: usize) -> String {
    let trimmed = text.trim().trim_end_matches(['?', '.', '!']);
    match trimmed.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

const DEMO_NOTE: &str = "\n\n*Written by the offline demo model — set `AI_PROVIDER` to use a real one.*\n";

pub fn write(input: &BlockInput) -> String {
    match input {
        BlockInput::AskQuestion(i) => answer(&i.question, i.context.as_deref()),
        BlockInput::ExplainEli10(i) => eli10(&i.topic),
        BlockInput::Quiz(i) => quiz(&i.topic, i.count, i.difficulty.as_str()),
        BlockInput::Diagram(i) => diagram(&i.description, i.kind),
    }
}

fn answer(question: &str, context: Option<&str>) -> String {
    let mut p = Picker::seeded(question);
    let terms = key_terms(question);
    let main = &terms[0];
    let second = terms.get(1).unwrap_or(main);
    let opener = p.pick(&["In short", "The short answer", "Put simply"]);
    let mut text = format!("**{opener}:** {} comes down to how *{main}* relates to *{second}*.\n\n## Why\n\n", clip(question, 120));
    text += &format!(
        "Start from what *{main}* is for. {} When you look at *{second}* the same way, the connection \
         becomes clearer: each one {} the other.\n\n",
        p.pick(&[
            "Most explanations begin with its purpose, not its parts.",
            "It helps to name the problem it solves before the details.",
            "A good first step is to say what would be missing without it.",
        ]),
        p.pick(&["shapes", "depends on", "builds on", "limits"]),
    );
    if let Some(context) = context {
        text += &format!("In this lesson's context (*{}*), that is the part to focus on.\n\n", clip(context, 80));
    }
    text += "## Example\n\n";
    for (n, term) in terms.iter().take(3).enumerate() {
        text += &format!("{}. Notice where *{term}* appears, and ask what it changes.\n", n + 1);
    }
    text += &format!("\n> Tip: explain *{main}* in one sentence to a friend — if you can, you understand it.");
    text + DEMO_NOTE
}

fn eli10(topic: &str) -> String {
    let mut p = Picker::seeded(topic);
    let topic = clip(topic, 80);
    let comparison = p.pick(&[
        "a team of friends building a sandcastle, where everyone has one job",
        "a school lunch line that moves one step at a time",
        "a recipe you follow to bake cookies",
        "a game of telephone where each person passes on a message",
    ]);
    format!(
        "Imagine **{topic}** is like {comparison}.\n\nEach part does a small, simple thing. \
         When all the small things happen together, something big and useful comes out. \
         That is the whole trick!\n\nNext time you hear about {topic}, think of {comparison} — \
         and you will already know the main idea.{DEMO_NOTE}"
    )
}

/// Study-skill questions that are true of any topic: the demo model cannot know
/// facts, but its quiz should still be right.
const QUIZ_TEMPLATES: [(&str, &str, [&str; 3], &str); 5] = [
    (
        "What is the best first step to understand {t}?",
        "Name the problem it solves, then look at its parts",
        ["Memorise every detail first", "Skip the basics and start with exceptions", "Assume it works like everything else"],
        "Knowing what {t} is for gives every detail a place to go.",
    ),
    (
        "Which question helps most when studying {t}?",
        "What would change if it were missing?",
        ["Who first wrote about it?", "How long is its name?", "What colour is it usually drawn in?"],
        "Asking what changes without {t} shows what it actually does.",
    ),
    (
        "How can you check that you really understand {t}?",
        "Explain it in your own words to someone else",
        ["Read the same page again", "Highlight every sentence", "Count how often the key terms appear"],
        "Explaining {t} without notes shows the gaps that re-reading hides.",
    ),
    (
        "You meet a new fact about {t}. What should you do with it?",
        "Connect it to something you already know",
        ["Keep it separate so it stays clear", "Ignore it until the test", "Replace what you knew with it"],
        "New facts about {t} stick when they hook onto what you know.",
    ),
    (
        "Which is the strongest evidence for a claim about {t}?",
        "A result others can check and repeat",
        ["Something a friend heard", "A popular opinion", "A single surprising story"],
        "Claims about {t} are strongest when anyone can check them.",
    ),
];

fn quiz(topic: &str, count: usize, difficulty: &str) -> String {
    let mut p = Picker::seeded(&format!("{topic}/{count}/{difficulty}"));
    let topic = clip(topic, 80);
    let offset = p.below(QUIZ_TEMPLATES.len());
    let questions: Vec<_> = (0..count)
        .map(|n| {
            let (stem, correct, wrong, why) = QUIZ_TEMPLATES[(offset + n) % QUIZ_TEMPLATES.len()];
            let round = if n >= QUIZ_TEMPLATES.len() { "Review: " } else { "" };
            let mut choices: Vec<String> = wrong.iter().map(|w| w.to_string()).collect();
            let answer_index = p.below(choices.len() + 1);
            choices.insert(answer_index, correct.to_owned());
            json!({
                "question": format!("{round}{}", stem.replace("{t}", &topic)),
                "choices": choices,
                "answer_index": answer_index,
                "explanation": format!("{} (Demo model, {difficulty} level.)", why.replace("{t}", &topic)),
            })
        })
        .collect();
    // Pretty-printed so the stream looks like a model writing JSON, token by token.
    serde_json::to_string_pretty(&json!({ "questions": questions })).expect("plain data serialises")
}

/// The description's steps: split at sentence and list boundaries.
fn steps(description: &str) -> Vec<String> {
    let normalised = description.replace(" then ", ",").replace(" and then ", ",").replace("->", ",");
    let mut steps: Vec<String> =
        normalised.split([',', '.', ';', '\n']).map(|s| clip(s, 40).replace('"', "'")).filter(|s| !s.is_empty()).take(8).collect();
    if steps.len() < 2 {
        // One phrase: draw the generic shape of a process around it.
        let subject = clip(description, 40).replace('"', "'");
        steps = vec![subject, "What starts it".into(), "What happens next".into(), "The result".into()];
    }
    steps
}

fn diagram(description: &str, kind: DiagramKind) -> String {
    let steps = steps(description);
    match kind {
        DiagramKind::Flowchart => {
            let mut out = String::from("flowchart TD\n");
            for (n, step) in steps.iter().enumerate() {
                out += &format!("    S{n}[\"{step}\"]\n");
            }
            for n in 1..steps.len() {
                out += &format!("    S{} --> S{n}\n", n - 1);
            }
            out
        }
        DiagramKind::Sequence => {
            let mut out = String::from("sequenceDiagram\n    participant L as Learner\n    participant S as System\n");
            for (n, step) in steps.iter().enumerate() {
                let arrow = if n % 2 == 0 { "L->>S" } else { "S-->>L" };
                out += &format!("    {arrow}: {}\n", step.replace([':', ';', '#'], " "));
            }
            out
        }
        DiagramKind::Mindmap => {
            let root = clip(description, 30).replace(['(', ')', '[', ']', '"'], " ");
            let mut out = format!("mindmap\n  root(({}))\n", root.trim());
            for step in steps.iter().take(6) {
                out += &format!("    {}\n", step.replace(['(', ')', '[', ']', '{', '}'], " ").trim());
            }
            out
        }
    }
}

/// `text` with `injected` (and a space) inserted after its first `after` tokens:
/// what the demo model streams with `DEMO_INJECT_TEXT`.
pub fn inject(text: &str, injected: &str, after: usize) -> String {
    let cut: usize = tokens(text).take(after).map(str::len).sum();
    format!("{}{injected} {}", &text[..cut], &text[cut..])
}

/// Splits text into model-like tokens: each word with the whitespace after it,
/// long words cut so tokens stay a few characters long. Lazily, as slices of
/// the text: a live stream holds its text once, not a string per token.
pub fn tokens(text: &str) -> Tokens<'_> {
    Tokens { text, pos: 0, in_word: false }
}

pub struct Tokens<'a> {
    text: &'a str,
    pos: usize,
    /// Whether the character before `pos` is part of a word.
    in_word: bool,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = &self.text[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let (mut chars, mut has_text) = (0, false);
        for (offset, c) in rest.char_indices() {
            let starts_word = !c.is_whitespace() && !self.in_word;
            if (starts_word && has_text) || chars >= 8 {
                self.pos += offset;
                return Some(&rest[..offset]);
            }
            self.in_word = !c.is_whitespace();
            has_text |= self.in_word;
            chars += 1;
        }
        self.pos = self.text.len();
        Some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::blocks::{BlockInput, BlockType};

    fn input(block: BlockType, fields: serde_json::Value) -> BlockInput {
        BlockInput::parse(block, fields.as_object().unwrap()).unwrap()
    }

    fn parse_all(input: &BlockInput, text: &str) -> serde_json::Value {
        let mut parser = input.output_parser();
        for token in tokens(text) {
            parser.push(token).unwrap();
        }
        parser.finish(text).unwrap()
    }

    #[test]
    fn tokens_concatenate_to_the_text() {
        let text = "Hello,  world!\n\n  {\"a\": [1, 2]} supercalifragilistic";
        assert_eq!(tokens(text).collect::<String>(), text);
        assert!(tokens(text).all(|t| t.chars().count() <= 8));
        assert_eq!(
            tokens(text).collect::<Vec<_>>(),
            ["Hello,  ", "world!\n\n", "  {\"a\": ", "[1, ", "2]} ", "supercal", "ifragili", "stic"]
        );
    }

    #[test]
    fn the_same_input_gives_the_same_text() {
        let i = input(BlockType::AskQuestion, json!({"question": "Why is the sky blue?"}));
        assert_eq!(write(&i), write(&i));
        let other = input(BlockType::AskQuestion, json!({"question": "How do volcanoes erupt?"}));
        assert_ne!(write(&i), write(&other));
    }

    #[test]
    fn every_block_gets_output_its_own_parser_accepts() {
        let cases = [
            input(BlockType::AskQuestion, json!({"question": "What is photosynthesis?", "context": "Biology"})),
            input(BlockType::ExplainEli10, json!({"topic": "black holes"})),
            input(BlockType::Quiz, json!({"topic": "the water cycle", "count": 4, "difficulty": "hard"})),
            input(BlockType::Diagram, json!({"description": "seed, then sprout, then plant, then flower"})),
            input(BlockType::Diagram, json!({"description": "login flow: user sends password; server checks it", "kind": "sequence"})),
            input(BlockType::Diagram, json!({"description": "Planets (solar system)", "kind": "mindmap"})),
        ];
        for case in &cases {
            let text = write(case);
            let result = parse_all(case, &text);
            if let BlockInput::Quiz(q) = case {
                assert_eq!(result["questions"].as_array().unwrap().len(), q.count);
            }
        }
    }

    #[test]
    fn text_blocks_say_they_come_from_the_demo_model() {
        let i = input(BlockType::ExplainEli10, json!({"topic": "gravity"}));
        assert!(write(&i).contains("demo model"));
    }
}
