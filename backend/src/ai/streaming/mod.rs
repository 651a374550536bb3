//! Streams: the event contract, the logs that hold each stream's events, and the
//! manager that runs generations into logs and hands readers the log.

pub mod coalesce;
pub mod events;
mod polled_when_woken;
pub mod store;
pub mod stream_manager;
