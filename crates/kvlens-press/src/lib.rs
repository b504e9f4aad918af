//! The KV cache of kvlens: storage per layer and head, the attention step, and every
//! compression method.
//!
//! The engine calls [`KvCache::attend`] once per layer with the new tokens' queries, keys
//! and values (rotary embedding applied). A [`Method`] decides what stays; [`Spec`] parses
//! and names methods (`snapkv:budget=256,window=32`).

pub mod attention;
pub mod cache;
pub mod cpu;
pub mod mathf;
pub mod method;
pub mod methods;
pub mod quant;
pub mod simd;
pub mod spec;
pub mod store;
pub mod sums;

pub use cache::{projected_peak_bytes, CacheShape, Forked, KvCache};
pub use method::{Method, Needs, Step, When};
pub use spec::{parse_list, Spec, SpecError, METHODS};
pub use store::{HeadStore, KvDtype};
