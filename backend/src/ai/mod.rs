//! The AI pipeline: blocks (what to ask, how to read the answer) → providers (who
//! answers) → runtime engine (block × provider → events) → moderation (what may
//! pass) → streaming (logs, readers).

pub mod blocks;
pub mod moderation;
pub mod providers;
pub mod runtime;
pub mod streaming;
