//! What a compression method is to the cache, and the shared machinery of token selection.
//!
//! A method sees one layer at a time, right after that layer attended: its kept rows per
//! key/value head and the attention statistics it asked for. Token-selection methods only
//! rank rows ([`Scorer`]); [`Select`] does the keeping for all of them: budgets, protected
//! sink and recent rows, when to act, and compaction.

use crate::cache::CacheShape;
use crate::store::HeadStore;

/// What the cache must compute for a method during attention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Sum of attention probabilities per kept row, over all queries so far (H2O).
    pub accumulate: bool,
    /// Attention probabilities of the last `window` queries of each pass (SnapKV, TOVA).
    pub window: usize,
}

/// Which forward pass just attended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A chunk of the prompt; `last` when the prompt ends with it.
    Prefill { last: bool },
    /// One generated token.
    Decode,
}

/// Attention statistics of one key/value head, summed over the query heads of its group.
#[derive(Debug, Clone, Default)]
pub struct HeadStats {
    /// Aligned with the head's rows.
    pub accumulated: Vec<f32>,
    /// `window_len` rows of probabilities over the head's rows (before this step's eviction).
    pub window: Vec<f32>,
    pub window_len: usize,
}

impl HeadStats {
    /// Sized for a head of `rows` rows and a window of `window` queries: the accumulated sums
    /// kept (new rows at 0), the window zeroed.
    pub fn prepare(&mut self, rows: usize, window: usize) {
        self.accumulated.resize(rows, 0.0);
        self.window_len = window;
        self.window.clear();
        self.window.resize(window * rows, 0.0);
    }

    /// Probabilities of query `w` of the window over every row.
    pub fn window_row(&self, w: usize, len: usize) -> &[f32] {
        &self.window[w * len..(w + 1) * len]
    }
}

pub trait Method: Send {
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// Called after `layer` attended; may drop or re-store rows of `heads`.
    fn compress(
        &mut self,
        layer: usize,
        shape: &CacheShape,
        heads: &mut [HeadStore],
        stats: &mut [HeadStats],
        step: Step,
    );

    /// Forgets per-sequence state.
    fn reset(&mut self) {}

    /// True when the method changes nothing before the end of the prompt and needs no
    /// attention summed over the prompt: its prefill is the full cache's, so one prefill can
    /// serve it and the baseline (see [`crate::KvCache::fork`]).
    fn acts_after_prefill_only(&self) -> bool {
        false
    }
}

impl Needs {
    /// What both ask for.
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            accumulate: self.accumulate || other.accumulate,
            window: self.window.max(other.window),
        }
    }
}

/// The unmodified cache.
pub struct Full;

impl Method for Full {
    fn compress(
        &mut self,
        _: usize,
        _: &CacheShape,
        _: &mut [HeadStore],
        _: &mut [HeadStats],
        _: Step,
    ) {
    }

    fn acts_after_prefill_only(&self) -> bool {
        true
    }
}

/// When a selection method evicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Once, after the whole prompt was attended; generated tokens are all kept.
    Prefill,
    /// After every prompt chunk and every generated token: never more than the budget
    /// between steps.
    Decode,
}

impl When {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "prefill" => Some(When::Prefill),
            "decode" => Some(When::Decode),
            _ => None,
        }
    }

    fn acts_at(self, step: Step) -> bool {
        match self {
            When::Prefill => step == Step::Prefill { last: true },
            When::Decode => true,
        }
    }
}

/// What a scorer sees of one key/value head.
pub struct ScoreInput<'a> {
    pub layer: usize,
    /// The key/value head's index within the layer.
    pub head: usize,
    pub shape: &'a CacheShape,
    pub store: &'a HeadStore,
    pub stats: &'a HeadStats,
}

/// Ranks the rows of one head: higher scores are kept.
pub trait Scorer: Send {
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// One score per row of `input.store`.
    fn score(&self, input: &ScoreInput<'_>) -> Vec<f32>;

    /// Rows per head this layer may keep, given the method's mean `budget`.
    fn layer_budget(&self, budget: usize, _layer: usize, _shape: &CacheShape) -> usize {
        budget
    }
}

/// Top-k keeping by a [`Scorer`], with always-kept sink and recent rows.
pub struct Select<S> {
    pub scorer: S,
    pub budget: usize,
    /// Oldest rows always kept (attention sinks).
    pub sink: usize,
    /// Newest rows always kept.
    pub recent: usize,
    pub when: When,
}

impl<S: Scorer> Method for Select<S> {
    fn needs(&self) -> Needs {
        self.scorer.needs()
    }

    fn compress(
        &mut self,
        layer: usize,
        shape: &CacheShape,
        heads: &mut [HeadStore],
        stats: &mut [HeadStats],
        step: Step,
    ) {
        if !self.when.acts_at(step) {
            return;
        }
        let budget = self.scorer.layer_budget(self.budget, layer, shape);
        for (head, (store, st)) in heads.iter_mut().zip(stats.iter_mut()).enumerate() {
            let len = store.len();
            if len <= budget {
                continue;
            }
            let scores = self.scorer.score(&ScoreInput {
                layer,
                head,
                shape,
                store,
                stats: st,
            });
            let keep = choose(&scores, budget, self.sink, self.recent);
            retain(store, st, &keep);
        }
    }

    fn reset(&mut self) {}

    fn acts_after_prefill_only(&self) -> bool {
        self.when == When::Prefill && !self.scorer.needs().accumulate
    }
}

/// Indices to keep (ascending): the first `sink` and last `recent` rows, then the highest
/// scores among the rest, `budget` in all. Ties keep the newer row.
pub fn choose(scores: &[f32], budget: usize, sink: usize, recent: usize) -> Vec<usize> {
    let len = scores.len();
    if len <= budget {
        return (0..len).collect();
    }
    let sink = sink.min(budget);
    let recent = recent.min(budget - sink);
    let mut keep: Vec<usize> = (0..sink).collect();
    let middle_end = len - recent;
    let mut middle: Vec<usize> = (sink..middle_end).collect();
    let k = budget - sink - recent;
    if k < middle.len() {
        middle.select_nth_unstable_by(k, |&a, &b| scores[b].total_cmp(&scores[a]).then(b.cmp(&a)));
        middle.truncate(k);
        middle.sort_unstable();
    }
    keep.extend(middle);
    keep.extend(middle_end..len);
    keep
}

/// Keeps rows `keep` (ascending) of a head and its statistics.
pub fn retain(store: &mut HeadStore, stats: &mut HeadStats, keep: &[usize]) {
    store.retain(keep);
    if !stats.accumulated.is_empty() {
        for (dst, &src) in keep.iter().enumerate() {
            stats.accumulated[dst] = stats.accumulated[src];
        }
        stats.accumulated.truncate(keep.len());
    }
    // The window's probabilities describe the rows before eviction; they are spent.
    stats.window.clear();
    stats.window_len = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_keeps_sinks_recent_and_top_scores() {
        let scores = [0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 0.5, 0.1];
        // budget 5: sink 1 (row 0), recent 2 (rows 6, 7), then the two best of rows 1..6.
        assert_eq!(choose(&scores, 5, 1, 2), vec![0, 1, 3, 6, 7]);
        // Without protection: the five best.
        assert_eq!(choose(&scores, 5, 0, 0), vec![1, 2, 3, 4, 5]);
        // Budget larger than the rows: everything.
        assert_eq!(choose(&scores, 20, 4, 4), (0..8).collect::<Vec<_>>());
        // Protected rows never exceed the budget.
        assert_eq!(choose(&scores, 3, 2, 4), vec![0, 1, 7]);
    }

    #[test]
    fn ties_prefer_newer_rows() {
        let scores = [1.0; 6];
        assert_eq!(choose(&scores, 2, 0, 0), vec![4, 5]);
    }
}
