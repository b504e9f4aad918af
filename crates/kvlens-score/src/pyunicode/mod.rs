//! Python's string semantics where the reference metrics depend on them: `str.split()`
//! whitespace, `str.lower()`, and the `re` classes `\w` (for `\b`) and `\d`. Rust's own
//! Unicode predicates differ (`char::is_whitespace` lacks U+001C..U+001F, `is_alphanumeric`
//! takes combining marks, and its Unicode version is newer), so the facts come from tables
//! that `scripts/gen_pyunicode.py` reads off CPython 3.11.

mod tables;

use std::cmp::Ordering;

fn in_ranges(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                Ordering::Less
            } else if lo > c {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        })
        .is_ok()
}

/// `str.isspace()`: what `str.split()` with no argument splits on.
#[inline]
pub fn is_space(c: char) -> bool {
    if c.is_ascii() {
        matches!(c, '\t'..='\r' | '\x1c'..='\x1f' | ' ')
    } else {
        tables::SPACE.contains(&c)
    }
}

/// A word character of `re` with a str pattern (`\w`): `str.isalnum()` or `_`.
#[inline]
pub fn is_word(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || c == '_'
    } else {
        in_ranges(&tables::WORD, c)
    }
}

/// `re`'s `\d` with a str pattern: any Unicode decimal digit, not only `0-9`.
#[inline]
pub fn is_decimal(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        in_ranges(&tables::DECIMAL, c)
    }
}

/// `string.punctuation`.
#[inline]
pub fn is_ascii_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// The pieces of `s.split()` (Python, no argument).
pub fn split(s: &str) -> Split<'_> {
    Split { s, at: 0 }
}

/// Iterator of [`split`], scanning bytes: every Python whitespace character outside ASCII
/// starts with one of the UTF-8 lead bytes C2, E1, E2, E3.
pub struct Split<'s> {
    s: &'s str,
    at: usize,
}

impl Split<'_> {
    /// The length of the whitespace character at byte `i`, 0 when there is none.
    #[inline]
    fn space_at(&self, i: usize) -> usize {
        let b = self.s.as_bytes()[i];
        if b < 0x80 {
            return usize::from(is_space(b as char));
        }
        if !matches!(b, 0xC2 | 0xE1 | 0xE2 | 0xE3) {
            return 0;
        }
        match self.s[i..].chars().next() {
            Some(c) if is_space(c) => c.len_utf8(),
            _ => 0,
        }
    }
}

impl<'s> Iterator for Split<'s> {
    type Item = &'s str;

    fn next(&mut self) -> Option<&'s str> {
        let len = self.s.len();
        // Skip whitespace.
        while self.at < len {
            match self.space_at(self.at) {
                0 => break,
                n => self.at += n,
            }
        }
        if self.at >= len {
            return None;
        }
        let start = self.at;
        while self.at < len && self.space_at(self.at) == 0 {
            self.at += 1;
        }
        let word = &self.s[start..self.at];
        Some(word)
    }
}

fn lower_char(c: char) -> char {
    let cu = c as u32;
    let i = tables::LOWER.partition_point(|&(first, _, _, _)| first <= cu);
    if i == 0 {
        return c;
    }
    let (first, last, step, delta) = tables::LOWER[i - 1];
    if cu <= last && (cu - first).is_multiple_of(step) {
        char::from_u32(cu.wrapping_add_signed(delta)).unwrap_or(c)
    } else {
        c
    }
}

/// Append `str.lower()` of `s` to `out`, leaving out the characters for which `drop` holds.
/// `drop` sees the characters before lowering; it must only hold for characters that
/// lowercase to themselves and that no other character lowercases into (punctuation,
/// whitespace), so that dropping before or after lowering is the same.
pub fn push_lower_except(s: &str, out: &mut String, drop: impl Fn(char) -> bool) {
    let bytes = s.as_bytes();
    // Characters that stay as they are accumulate in `s[run..i]` and are copied at once.
    let (mut run, mut i) = (0, 0);
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            let c = b as char;
            let dropped = drop(c);
            if dropped || c.is_ascii_uppercase() {
                out.push_str(&s[run..i]);
                if !dropped {
                    out.push(c.to_ascii_lowercase());
                }
                run = i + 1;
            }
            i += 1;
            continue;
        }
        let Some(c) = s[i..].chars().next() else {
            break;
        };
        let next = i + c.len_utf8();
        let lowered = match c {
            '\u{130}' | '\u{3A3}' => None,
            _ => Some(lower_char(c)),
        };
        if lowered == Some(c) && !drop(c) {
            i = next;
            continue;
        }
        out.push_str(&s[run..i]);
        if !drop(c) {
            match lowered {
                Some(l) => out.push(l),
                None if c == '\u{130}' => out.push_str("i\u{307}"),
                None => out.push(if final_sigma(s, i) { 'ς' } else { 'σ' }),
            }
        }
        i = next;
        run = next;
    }
    out.push_str(&s[run..]);
}

/// `str.lower()`.
pub fn lower(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    if s.is_ascii() {
        out.push_str(s);
        out.make_ascii_lowercase();
    } else {
        push_lower_except(s, &mut out, |_| false);
    }
    out
}

/// CPython lowercases a capital sigma at byte `at` to the final form when the nearest
/// character before it that is not case-ignorable is cased, and the nearest one after it is
/// not (or there is none).
fn final_sigma(s: &str, at: usize) -> bool {
    let ignorable = |c: &char| in_ranges(&tables::CASE_IGNORABLE, *c);
    let before = s[..at].chars().rev().find(|c| !ignorable(c));
    if !before.is_some_and(|c| in_ranges(&tables::CASED, c)) {
        return false;
    }
    let after = s[at + 'Σ'.len_utf8()..].chars().find(|c| !ignorable(c));
    !after.is_some_and(|c| in_ranges(&tables::CASED, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_on_python_whitespace() {
        let s = "a\x1cb\u{85}c\u{a0}d\u{3000}e\u{200b}f  \t";
        assert_eq!(
            split(s).collect::<Vec<_>>(),
            ["a", "b", "c", "d", "e\u{200b}f"]
        );
        assert_eq!(split("   ").count(), 0);
    }

    #[test]
    fn lower_like_python() {
        assert_eq!(lower("ÀÉÎ ĀāĂ"), "àéî āāă");
        assert_eq!(lower("İx"), "i\u{307}x");
        // Final sigma: `'ΟΔΟΣ ΣΑ Σ'.lower()` in CPython.
        assert_eq!(lower("ΟΔΟΣ ΣΑ Σ"), "οδος σα σ");
        assert_eq!(lower("ΑΣ'"), "ας'");
        assert_eq!(lower("ΑΣ'Α"), "ασ'α");
        assert_eq!(lower("ẞ Ω K Å"), "ß ω k å");
    }

    #[test]
    fn word_and_digit_classes() {
        assert!(is_word('é') && is_word('_') && is_word('中') && is_word('٣'));
        // Combining marks are alphabetic to Rust but not alphanumeric to Python.
        assert!('\u{93e}'.is_alphabetic() && !is_word('\u{93e}'));
        assert!(!is_word('\u{301}') && !is_word('-'));
        assert!(is_decimal('٣') && is_decimal('１') && !is_decimal('²') && !is_decimal('一'));
    }
}
