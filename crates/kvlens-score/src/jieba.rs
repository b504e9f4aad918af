//! `jieba.cut(text, cut_all=False)` (Python jieba 0.42.1, HMM on) through `jieba-rs`, with the
//! three places where jieba-rs 0.11 departs from the Python package put back:
//!
//! 1. Python's block pattern `re_han_default` takes CJK characters only from U+4E00..U+9FD5;
//!    jieba-rs also takes U+9FD6..U+9FFF and the CJK extension blocks. Python yields each of
//!    those characters as a token of its own, and they end the block around them, so the text
//!    is cut there before jieba-rs sees it.
//! 2. Python's HMM splits the non-Chinese parts of an unknown run with
//!    `[a-zA-Z0-9]+(?:\.\d+)?%?` (finalseg `re_skip`); jieba-rs joins `a-b`, `a_b`, `a.b`
//!    and `1.2.3` into one token. No dictionary word contains `.`, `_` or `-`, so a
//!    multi-character token holding one comes from that splitter and is split again here the
//!    Python way.
//! 3. Python's `dict.txt` lists `B超` twice and jieba sums both into the frequency total used
//!    for every log probability; jieba-rs's copy drops the duplicate. The 3 is added back
//!    through a word that can never be matched (see [`load`]).

use jieba_rs::Jieba;
use std::sync::OnceLock;

static JIEBA: OnceLock<Jieba> = OnceLock::new();

/// The segmenter, built on first use (building the default dictionary takes a few hundred
/// milliseconds, so only Chinese metrics pay it).
fn jieba() -> &'static Jieba {
    JIEBA.get_or_init(load)
}

pub fn load_now() {
    jieba();
}

fn load() -> Jieba {
    let mut jieba = Jieba::new();
    // Item 3 above: "\n" never occurs inside a block that is looked up in the dictionary.
    jieba.add_word("\n", Some(3), None);
    jieba
}

/// Whether jieba-rs keeps `c` inside a dictionary block while Python jieba does not.
fn only_jieba_rs_han(c: char) -> bool {
    matches!(c,
        '\u{9FD6}'..='\u{9FFF}'
        | '\u{3400}'..='\u{4DBF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{20000}'..='\u{2A6DF}'
        | '\u{2A700}'..='\u{2EBEF}'
        | '\u{2F800}'..='\u{2FA1F}')
}

/// Hand each token of Python's `jieba.cut(text)` to `token`, in order.
pub fn cut<'t>(text: &'t str, mut token: impl FnMut(&'t str)) {
    let jieba = jieba();
    let mut rest = text;
    loop {
        let (piece, cut_at) = match rest.char_indices().find(|&(_, c)| only_jieba_rs_han(c)) {
            Some((at, c)) => (&rest[..at], Some((at, c.len_utf8()))),
            None => (rest, None),
        };
        if !piece.is_empty() {
            for t in jieba.cut(piece, true) {
                if t.word.len() > 1 && t.word.bytes().any(|b| matches!(b, b'.' | b'_' | b'-')) {
                    split_like_finalseg(t.word, &mut token);
                } else {
                    token(t.word);
                }
            }
        }
        match cut_at {
            Some((at, len)) => {
                token(&rest[at..at + len]);
                rest = &rest[at + len..];
            }
            None => break,
        }
    }
}

/// Python finalseg's `re_skip.split(block)` over an ASCII run: the matches of
/// `[a-zA-Z0-9]+(?:\.\d+)?%?` and the text between them.
fn split_like_finalseg<'t>(run: &'t str, token: &mut impl FnMut(&'t str)) {
    let b = run.as_bytes();
    let mut gap = 0;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        if i < b.len() && b[i] == b'%' {
            i += 1;
        }
        if gap < start {
            token(&run[gap..start]);
        }
        token(&run[start..i]);
        gap = i;
    }
    if gap < b.len() {
        token(&run[gap..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(s: &str) -> Vec<&str> {
        let mut v = Vec::new();
        cut(s, |t| v.push(t));
        v
    }

    #[test]
    fn finalseg_split_of_ascii_runs() {
        let mut v = Vec::new();
        split_like_finalseg("v1.2.3-rc_1.5%", &mut |t| v.push(t));
        assert_eq!(v, ["v1.2", ".", "3", "-", "rc", "_", "1.5%"]);
    }

    #[test]
    fn python_jieba_examples() {
        // Outputs of jieba 0.42.1 `list(jieba.cut(s))`.
        assert_eq!(
            tokens("我来到北京清华大学"),
            ["我", "来到", "北京", "清华大学"]
        );
        assert_eq!(
            tokens("他来到了网易杭研大厦"),
            ["他", "来到", "了", "网易", "杭研", "大厦"]
        );
        assert_eq!(tokens("a\r\nb  c"), ["a", "\r\n", "b", " ", " ", "c"]);
    }
}
