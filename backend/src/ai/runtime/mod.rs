//! Runs blocks on providers.

pub mod engine;
