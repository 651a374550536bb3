//! Configuration: typed settings read from the environment (and `.env`).

pub mod settings;
