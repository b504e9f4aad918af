//! What `kvlens predict throughput` stands on: step-time profiles that `kvlens bench
//! --profile` measures ([`profile`]), a step-time model with physical terms fitted to them
//! ([`cost`]), and a discrete-event simulation of the scheduler that `kvlens serve` runs
//! ([`sim`]), with the same policy functions ([`kvlens_engine::sched::policy`]).
//!
//! The MLSys 2025 study ("Rethinking Key-Value Cache Compression Techniques for Large Language
//! Model Serving") predicts throughput with Vidur from profiled operators, its compressed
//! methods as the full cache's profile times constants, and without a memory budget. Here each
//! method is profiled and fitted on its own, and the simulation admits requests by what their
//! caches really hold under the method, so the larger batches compression allows, and the
//! longer answers it can cause, both appear.

pub mod cost;
pub mod error;
pub mod profile;
pub mod sim;
pub mod study;

pub use cost::StepModel;
pub use error::{PredictError, Result};
pub use profile::{MethodProfile, Profile, StepSample};
