//! Configuration: typed settings read from the environment (and `.env`).

pub mod moderation;
pub mod settings;
pub mod telemetry;
