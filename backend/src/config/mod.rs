//! Configuration: typed settings read from the environment (and `.env`).

pub mod coalesce;
pub mod moderation;
pub mod settings;
pub mod telemetry;
