//! kvlens-analyze: each compression method against the baseline, sample by sample
//! (../shared/DESIGN.md, "Analysis definitions"). Records are read once into [`Sample`]s;
//! the analyses pair them with the baseline by `(model, task, sample_id)`, and the tables go
//! out as polars frames (CSV, Parquet), Markdown and JSON; plots with plotters.

pub mod analysis;
pub mod error;
pub mod export;
pub mod import;
pub mod inspect;
pub mod lm_eval;
pub mod load;
pub mod negbench;
pub mod output;
pub mod plots;
pub mod serving;
pub mod stats;

pub use analysis::{analyze, Analysis, Options, Rule};
pub use error::{AnalyzeError, Result};
pub use load::{load_runs, Sample};
