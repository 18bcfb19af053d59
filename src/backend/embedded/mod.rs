//! Embedded backends for `infra up`: everything durable lives under one data
//! dir (artifacts as files, records/jobs/queue in a redb file); fan-out and
//! rate limiting are in-process.

// redb's error type is large; it only travels on the cold failure path of
// storage closures, so boxing it at every call site would buy nothing.
#![allow(clippy::result_large_err)]

mod artifacts;
mod bus;
mod changes;
mod counter;
pub mod db;
mod directory;
mod logs;
mod queue;
mod ratelimit;
mod records;
mod registry;

pub use artifacts::LocalArtifactStore;
pub use bus::EmbeddedResultBus;
pub use changes::LocalChangeFeed;
pub use counter::InProcessJobCounter;
pub use db::Db;
pub use directory::InProcessDirectory;
pub use logs::EmbeddedLogStore;
pub use queue::{EmbeddedQueue, RecoveredJobs};
pub use ratelimit::InProcessRateLimiter;
pub use records::EmbeddedRecordStore;
pub use registry::EmbeddedRegistry;
