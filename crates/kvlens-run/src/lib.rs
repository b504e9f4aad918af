//! Runs for kvlens: the per-sample record, the loop over tasks × methods that resumes where
//! it stopped, shards and merging.

pub mod arrivals;
pub mod config;
pub mod error;
pub mod load;
pub mod merge;
pub mod record;
pub mod remote;
pub mod runner;
pub mod store;

pub use config::RunConfig;
pub use error::{Result, RunError};
pub use record::{Key, LoadInfo, Record, Served};
pub use runner::{execute, Observer, Outcome, Plan, Quiet};
