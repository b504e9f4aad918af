//! One file per method. Each registers itself in [`crate::spec::METHODS`].

pub mod h2o;
pub mod knorm;
pub mod pyramidkv;
pub mod random;
pub mod snapkv;
pub mod streamingllm;
pub mod tova;
