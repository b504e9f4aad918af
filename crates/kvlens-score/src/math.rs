//! Final-answer extraction for math word problems (GSM8K-style `#### N`, MATH-style
//! `\boxed{}`), compared numerically. There is no single official implementation; this one is
//! specified here and mirrored by `scripts/score_reference.py`.
//!
//! The answer of a text is found by the first rule that yields a number:
//! 1. `#### X`: the first number after the last `####`;
//! 2. `\boxed{X}`: the content of the last `\boxed{...}` (braces balanced), read as
//!    `\frac{a}{b}` (also `\dfrac`, `\tfrac`, optionally signed) or else its first number;
//! 3. `the answer is X` (ASCII case-insensitive): the first number after the last occurrence;
//! 4. the last number of the text.
//!
//! A number is ASCII digits with optional thousands commas (a comma counts only when exactly
//! three digits follow it), an optional decimal part (`.` and at least one digit, so a
//! sentence's final period is not part of it; `.5` is 0.5), an optional `/denominator` (a
//! simple fraction, when the denominator is a non-zero plain number), an optional `$` before
//! the digits, and an optional minus (`-` or U+2212) before the `$` or the digits that counts
//! only when the character before it is not an ASCII letter or digit (`3-5` is 3 and 5).
//! `%` and units after a number are ignored. The gold answer goes through the same rules.
//! Prediction and gold are equal when `|p - g| <= 1e-9 * max(1, |g|)`.

/// A number found in a text: its value and the byte range it spans.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Number {
    value: f64,
    end: usize,
}

/// The numbers of `text` in order.
fn numbers(text: &str) -> Vec<Number> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts_digits = b[i].is_ascii_digit()
            || (b[i] == b'.'
                && i + 1 < b.len()
                && b[i + 1].is_ascii_digit()
                && (i == 0 || !b[i - 1].is_ascii_digit()));
        if !starts_digits {
            i += 1;
            continue;
        }
        let (value, end) = read_number(b, i);
        let value = match sign_before(text, i) {
            true => -value,
            false => value,
        };
        out.push(Number { value, end });
        i = end;
    }
    out
}

/// Whether a minus sign stands before the digits at `at` (possibly with a `$` between).
fn sign_before(text: &str, at: usize) -> bool {
    let before = &text[..at];
    let before = before.strip_suffix('$').unwrap_or(before);
    let Some(rest) = before
        .strip_suffix('-')
        .or_else(|| before.strip_suffix('\u{2212}'))
    else {
        return false;
    };
    !rest
        .chars()
        .next_back()
        .is_some_and(|c| c.is_ascii_alphanumeric())
}

/// Read the unsigned number whose digits (or leading `.`) start at `start`.
fn read_number(b: &[u8], start: usize) -> (f64, usize) {
    let (num, mut end) = read_decimal(b, start);
    // A simple fraction: "/" then a plain number that is not zero.
    if end + 1 < b.len() && b[end] == b'/' && b[end + 1].is_ascii_digit() {
        let (den, den_end) = read_decimal(b, end + 1);
        if den != 0.0 {
            return (num / den, den_end);
        }
        end = den_end;
    }
    (num, end)
}

/// Digits with thousands commas and an optional decimal part, starting at `start`.
fn read_decimal(b: &[u8], start: usize) -> (f64, usize) {
    let mut digits = String::new();
    let mut i = start;
    while i < b.len() && b[i].is_ascii_digit() {
        digits.push(b[i] as char);
        i += 1;
        // A thousands separator: a comma followed by exactly three digits.
        if i < b.len() && b[i] == b',' {
            let group = &b[i + 1..(i + 4).min(b.len())];
            let exactly_three = group.len() == 3
                && group.iter().all(u8::is_ascii_digit)
                && !b.get(i + 4).is_some_and(u8::is_ascii_digit);
            if exactly_three {
                i += 1;
            }
        }
    }
    if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        digits.push('.');
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            digits.push(b[i] as char);
            i += 1;
        }
    }
    if digits.starts_with('.') {
        digits.insert(0, '0');
    }
    // Only ASCII digits and one '.', so parsing cannot fail; 0.0 keeps this total.
    (digits.parse().unwrap_or(0.0), i)
}

/// The content of the last `\boxed{...}` with balanced braces.
fn last_boxed(text: &str) -> Option<&str> {
    let at = text.rfind("\\boxed{")?;
    let content_start = at + "\\boxed{".len();
    let mut depth = 1usize;
    for (i, c) in text[content_start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[content_start..content_start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// `\frac{a}{b}` (or `\dfrac`, `\tfrac`), optionally preceded by a minus, as the whole of a
/// boxed answer apart from surrounding spaces and `$`.
fn latex_fraction(content: &str) -> Option<f64> {
    const SPACE: [char; 4] = [' ', '\t', '\n', '\r'];
    let s = content.trim_matches(|c| SPACE.contains(&c) || c == '$');
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start_matches(SPACE)),
        None => (false, s),
    };
    let s = ["\\frac{", "\\dfrac{", "\\tfrac{"]
        .iter()
        .find_map(|p| s.strip_prefix(p))?;
    let (num, rest) = s.split_once("}{")?;
    let den = rest.strip_suffix('}')?;
    let plain = |t: &str| -> Option<f64> {
        let t = t.trim_matches(SPACE);
        let ok = !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit() || c == b'.');
        ok.then(|| t.parse().ok()).flatten()
    };
    let (num, den) = (plain(num)?, plain(den)?);
    if den == 0.0 {
        return None;
    }
    Some(if negative { -(num / den) } else { num / den })
}

/// The final answer of `text` by the rules in the module documentation.
pub fn extract_answer(text: &str) -> Option<f64> {
    if let Some(at) = text.rfind("####") {
        if let Some(n) = numbers(&text[at + 4..]).first() {
            return Some(n.value);
        }
    }
    if let Some(content) = last_boxed(text) {
        if let Some(v) = latex_fraction(content) {
            return Some(v);
        }
        if let Some(n) = numbers(content).first() {
            return Some(n.value);
        }
    }
    let lower = text.to_ascii_lowercase();
    if let Some(at) = lower.rfind("the answer is") {
        if let Some(n) = numbers(&text[at + "the answer is".len()..]).first() {
            return Some(n.value);
        }
    }
    numbers(text).last().map(|n| n.value)
}

/// 1.0 when the prediction's final answer equals one of the gold answers, else 0.0.
pub fn math_score(prediction: &str, answers: &[String]) -> f64 {
    let Some(p) = extract_answer(prediction) else {
        return 0.0;
    };
    let hit = answers
        .iter()
        .filter_map(|gold| extract_answer(gold))
        .any(|g| (p - g).abs() <= 1e-9 * g.abs().max(1.0));
    if hit {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_rules_in_order() {
        assert_eq!(
            extract_answer("3 apples, 4 pears\n#### 1,234"),
            Some(1234.0)
        );
        assert_eq!(extract_answer("so \\boxed{\\frac{3}{4}} and 7"), Some(0.75));
        assert_eq!(extract_answer("\\boxed{-\\dfrac{1}{2}}"), Some(-0.5));
        assert_eq!(extract_answer("\\boxed{x = 12}"), Some(12.0));
        assert_eq!(
            extract_answer("The answer is $-5. Then 9 more."),
            Some(-5.0)
        );
        assert_eq!(
            extract_answer("It costs $1,200.50 total, i.e. 3/4 of 1600."),
            Some(1600.0)
        );
        assert_eq!(extract_answer("pages 3-5"), Some(5.0));
        assert_eq!(extract_answer("x-1 or -7"), Some(-7.0));
        assert_eq!(extract_answer("about 1/2."), Some(0.5));
        // Commas that are not thousands separators split numbers.
        assert_eq!(extract_answer("1,2345"), Some(2345.0));
        assert_eq!(extract_answer("1,23"), Some(23.0));
        assert_eq!(extract_answer("no digits"), None);
        assert_eq!(extract_answer("#### none, but 8"), Some(8.0));
    }

    #[test]
    fn numeric_comparison() {
        let gold = vec!["Natalia sold 48/2 = 24 clips in May.\n#### 72".to_string()];
        assert_eq!(math_score("She sold 72 clips.", &gold), 1.0);
        assert_eq!(math_score("72.0", &gold), 1.0);
        assert_eq!(math_score("71", &gold), 0.0);
        assert_eq!(math_score("", &gold), 0.0);
        assert_eq!(math_score("0.5", &["1/2".to_string()]), 1.0);
    }
}
