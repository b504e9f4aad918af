//! `fuzzywuzzy.fuzz.ratio` (0.18.0) as LongBench runs it: without python-Levenshtein, so on
//! Python's `difflib.SequenceMatcher(None, s1, s2)`, autojunk on, over code points.

use std::collections::HashMap;

/// `fuzz.ratio(s1, s2)`: an integer from 0 to 100.
///
/// The decorators run in this order: equal strings score 100 (two empty strings too), then an
/// empty side scores 0; otherwise `int(round(100 * SequenceMatcher(None, s1, s2).ratio()))`
/// with Python's round-half-even.
pub fn fuzz_ratio(s1: &str, s2: &str) -> u32 {
    if s1 == s2 {
        return 100;
    }
    if s1.is_empty() || s2.is_empty() {
        return 0;
    }
    let a: Vec<char> = s1.chars().collect();
    let b: Vec<char> = s2.chars().collect();
    let matches = Matcher::new(&a, &b).matching_characters();
    // difflib's `_calculate_ratio`: 2.0 * matches / length.
    let ratio = 2.0 * matches as f64 / (a.len() + b.len()) as f64;
    (100.0 * ratio).round_ties_even() as u32
}

struct Matcher<'s> {
    a: &'s [char],
    b: &'s [char],
    /// `b2j` as compressed rows: the positions in `b` of the element numbered `e` are
    /// `positions[starts[e]..starts[e + 1]]`, ascending; popular elements have none.
    starts: Vec<usize>,
    positions: Vec<usize>,
    /// The element number of each `a[i]`, `None` when it is not in `b`.
    a_elements: Vec<Option<usize>>,
    /// `j2len` of `find_longest_match`, double-buffered by row parity: the length of the
    /// match ending at `b[j]` and the row that wrote it. Rows are numbered across calls, so
    /// nothing needs clearing between calls.
    len_at: [Vec<u32>; 2],
    row_at: [Vec<usize>; 2],
    next_row: usize,
}

impl<'s> Matcher<'s> {
    fn new(a: &'s [char], b: &'s [char]) -> Self {
        // Number the distinct elements of b: ASCII through a table, the rest through a map.
        let mut ascii = [usize::MAX; 128];
        let mut other: HashMap<char, usize> = HashMap::new();
        let mut count: Vec<usize> = Vec::new();
        let mut number = |c: char, count: &mut Vec<usize>, insert: bool| -> Option<usize> {
            let slot = if c.is_ascii() {
                &mut ascii[c as usize]
            } else if insert {
                other.entry(c).or_insert(usize::MAX)
            } else {
                return other.get(&c).copied();
            };
            if *slot == usize::MAX {
                if !insert {
                    return None;
                }
                *slot = count.len();
                count.push(0);
            }
            Some(*slot)
        };
        let b_elements: Vec<usize> = b
            .iter()
            .filter_map(|&c| number(c, &mut count, true))
            .collect();
        for &e in &b_elements {
            count[e] += 1;
        }
        // difflib's autojunk: in a `b` of 200 elements or more, an element that occurs more
        // than 1 + len(b) // 100 times is "popular" and cannot start a match (it can still
        // extend one, below, since it is not junk).
        if b.len() >= 200 {
            let ntest = b.len() / 100 + 1;
            count
                .iter_mut()
                .filter(|c| **c > ntest)
                .for_each(|c| *c = 0);
        }
        let mut starts = Vec::with_capacity(count.len() + 1);
        let mut total = 0;
        starts.push(0);
        for &c in &count {
            total += c;
            starts.push(total);
        }
        let mut fill = starts.clone();
        let mut positions = vec![0; total];
        for (j, &e) in b_elements.iter().enumerate() {
            if count[e] > 0 {
                positions[fill[e]] = j;
                fill[e] += 1;
            }
        }
        let a_elements = a.iter().map(|&c| number(c, &mut count, false)).collect();
        let n = b.len();
        Matcher {
            a,
            b,
            starts,
            positions,
            a_elements,
            len_at: [vec![0; n], vec![0; n]],
            row_at: [vec![0; n], vec![0; n]],
            next_row: 1,
        }
    }

    /// Sum of the sizes of `get_matching_blocks()`; the order difflib works through its queue
    /// does not change the sum.
    fn matching_characters(&mut self) -> usize {
        let mut total = 0;
        let mut queue = vec![(0, self.a.len(), 0, self.b.len())];
        while let Some((alo, ahi, blo, bhi)) = queue.pop() {
            let (i, j, k) = self.find_longest_match(alo, ahi, blo, bhi);
            if k > 0 {
                total += k;
                if alo < i && blo < j {
                    queue.push((alo, i, blo, j));
                }
                if i + k < ahi && j + k < bhi {
                    queue.push((i + k, ahi, j + k, bhi));
                }
            }
        }
        total
    }

    /// difflib's `find_longest_match`, ties going to the earliest `i`, then earliest `j`.
    fn find_longest_match(
        &mut self,
        alo: usize,
        ahi: usize,
        blo: usize,
        bhi: usize,
    ) -> (usize, usize, usize) {
        let (a, b) = (self.a, self.b);
        let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
        // Row `i` is numbered `base + 1 + (i - alo)`; `base` itself numbers no row, so the
        // first row finds no previous one.
        let base = self.next_row;
        self.next_row += ahi - alo + 1;
        for i in alo..ahi {
            let Some(e) = self.a_elements[i] else {
                continue;
            };
            let js = &self.positions[self.starts[e]..self.starts[e + 1]];
            let row = base + 1 + (i - alo);
            let (cur, prev) = (row % 2, 1 - row % 2);
            for &j in js.iter() {
                if j < blo {
                    continue;
                }
                if j >= bhi {
                    break;
                }
                // j2len.get(j - 1, 0) from the previous row only.
                let before = if j > 0 && self.row_at[prev][j - 1] == row - 1 {
                    self.len_at[prev][j - 1]
                } else {
                    0
                };
                let k = before + 1;
                self.len_at[cur][j] = k;
                self.row_at[cur][j] = row;
                if k as usize > bestsize {
                    besti = i + 1 - k as usize;
                    bestj = j + 1 - k as usize;
                    bestsize = k as usize;
                }
            }
        }
        // Extend by equal elements on each side (no element is junk without `isjunk`; popular
        // ones extend too).
        while besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1] {
            besti -= 1;
            bestj -= 1;
            bestsize += 1;
        }
        while besti + bestsize < ahi
            && bestj + bestsize < bhi
            && a[besti + bestsize] == b[bestj + bestsize]
        {
            bestsize += 1;
        }
        (besti, bestj, bestsize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decorators_order() {
        assert_eq!(fuzz_ratio("", ""), 100);
        assert_eq!(fuzz_ratio("", "a"), 0);
        assert_eq!(fuzz_ratio("a", ""), 0);
        assert_eq!(fuzz_ratio("abc", "abc"), 100);
    }

    #[test]
    fn known_python_values() {
        // fuzz.ratio values from fuzzywuzzy 0.18.0 with difflib (CPython 3.11).
        assert_eq!(fuzz_ratio("this is a test", "this is a test!"), 97);
        assert_eq!(fuzz_ratio("abxcd", "abcd"), 89);
        // 2 * 1 / 8 = 0.25 -> 25; round-half-even: 2 * 1 / 16 * 100 = 12.5 -> 12.
        assert_eq!(fuzz_ratio("abcdefgh", "xxxxxxxa"), 12);
    }

    #[test]
    fn autojunk_popular_elements() {
        // In a b of 200+ characters, ' ' occurring more than 3 times cannot seed a match, but
        // a search that found nothing still extends from (alo, blo) over equal elements:
        // fuzz.ratio(' ' * 5, ' ' * 250 + 'x') is 4 in Python.
        let b = format!("{}x", " ".repeat(250));
        assert_eq!(fuzz_ratio("     ", &b), 4);
        assert_eq!(fuzz_ratio("x     ", &format!("{b}     ")), 5);
    }
}
