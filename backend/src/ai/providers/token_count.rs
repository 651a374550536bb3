//! Counts the tokens of text a model produced, for when its provider does not
//! report usage (many OpenAI-compatible servers ignore `include_usage`), and for
//! generations that end before any report (a failure, a cancel, a client that
//! left): budgets always charge what was produced.
//!
//! The rule, one chunk at a time (so a count needs no copy of the text): a chunk
//! counts the tokens of its text by the model's own tokenizer where one is known
//! — OpenAI's models through `tiktoken-rs`, the demo model's one token per chunk —
//! and otherwise ceil(characters / 4); never less than one, since every streamed
//! delta carries at least one generated token.

use std::fmt;

use tiktoken_rs::CoreBPE;

#[derive(Clone, Copy)]
pub enum TokenCounter {
    /// The model's own BPE tokenizer.
    Bpe(&'static CoreBPE),
    /// A model whose chunks are its tokens (the demo model's usage counts them so).
    OnePerChunk,
    /// No tokenizer known: about four characters a token.
    Estimate,
}

impl fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bpe(_) => "TokenCounter::Bpe",
            Self::OnePerChunk => "TokenCounter::OnePerChunk",
            Self::Estimate => "TokenCounter::Estimate",
        })
    }
}

impl TokenCounter {
    /// The tokenizer of an OpenAI model tiktoken knows (`gpt-4o-mini`, `o3`,
    /// OpenRouter's `openai/gpt-4o`, a fine-tune `ft:gpt-4o:…`), else the estimate.
    /// The tokenizer's tables are built here, at start-up, not on a first stream.
    pub fn openai(model: &str) -> Self {
        let name = model.strip_prefix("openai/").unwrap_or(model);
        match tiktoken_rs::bpe_for_model(name) {
            Ok(bpe) => Self::Bpe(bpe),
            Err(_) => Self::Estimate,
        }
    }

    /// Tokens in one chunk of output (at least one for a non-empty chunk).
    pub fn chunk(&self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        let counted = match self {
            Self::Bpe(bpe) => bpe.count_ordinary(text) as u64,
            Self::OnePerChunk => 1,
            Self::Estimate => estimate(text),
        };
        counted.max(1)
    }

    /// Tokens in a whole text, such as a prompt.
    pub fn text(&self, text: &str) -> u64 {
        match self {
            Self::Bpe(bpe) => bpe.count_ordinary(text) as u64,
            Self::OnePerChunk | Self::Estimate => estimate(text),
        }
    }
}

/// ceil(characters / 4): the usual rule of thumb for English text.
fn estimate(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_a_quarter_of_the_characters_rounded_up_and_at_least_one_per_chunk() {
        let counter = TokenCounter::Estimate;
        assert_eq!(counter.chunk("a"), 1);
        assert_eq!(counter.chunk("four"), 1);
        assert_eq!(counter.chunk("fives"), 2);
        assert_eq!(counter.chunk("café 🌊"), 2, "characters, not bytes");
        assert_eq!(counter.chunk(""), 0);
        assert_eq!(counter.text("twelve chars"), 3);
    }

    #[test]
    fn openai_models_tiktoken_knows_use_their_tokenizer_and_others_the_estimate() {
        for model in ["gpt-4o-mini", "openai/gpt-4o-mini", "gpt-4", "o3-mini"] {
            assert!(matches!(TokenCounter::openai(model), TokenCounter::Bpe(_)), "{model}");
        }
        for model in ["llama3.2", "Qwen/Qwen2.5-7B-Instruct", "gpt-test"] {
            assert!(matches!(TokenCounter::openai(model), TokenCounter::Estimate), "{model}");
        }
        let gpt = TokenCounter::openai("gpt-4o-mini");
        // o200k_base: " rise" is one token, a long rare word several; never zero.
        assert_eq!(gpt.chunk(" rise"), 1);
        assert!(gpt.chunk(" antidisestablishmentarianism") > 1);
        assert_eq!(gpt.chunk(" "), 1);
    }

    #[test]
    fn the_demo_model_counts_one_token_per_chunk() {
        assert_eq!(TokenCounter::OnePerChunk.chunk("volcanoes "), 1);
    }
}
