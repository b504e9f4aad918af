//! Python literals as `repr` and `str` print them, read into JSON values: what pandas'
//! `to_csv` writes for a list cell (`['a', 'b']`), and what it writes for a NumPy array cell
//! (`['a' 'b']`: `str(ndarray)` separates items by spaces, wraps long rows onto new lines, and
//! `repr` adds `array([...], dtype=object)`). Hand-written because the exactness is the point:
//! a string's escapes (`\'`, `\n`, `\x..`, `\u....`, `\U........`) must come back as Python
//! reads them, and no general crate reads NumPy's separators.
//!
//! The grammar: `None`, `True`, `False`, numbers (`nan`, `inf` as NumPy prints them), strings
//! in single or double quotes (with an optional `b`/`u` prefix), lists, tuples, dicts and
//! `array(...)`/`np.str_(...)` wrappers.

use serde_json::{Map, Number, Value};

/// A Python literal as JSON; `Err` says what was expected and at which character.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        src: text,
        i: 0,
    };
    p.ws();
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text at character {}", p.i + 1));
    }
    Ok(v)
}

/// A cell that holds a list of strings: a Python list, tuple or NumPy array literal, each
/// item as a string (numbers as Python prints them); anything else is one string.
pub fn strings(cell: &str) -> Vec<String> {
    let t = cell.trim();
    let looks_like_list = t.starts_with('[') || t.starts_with('(') || t.starts_with("array(");
    match (looks_like_list, parse(t)) {
        (true, Ok(Value::Array(items))) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        _ => vec![cell.to_string()],
    }
}

/// Python's `repr(str)`: single quotes unless the text holds `'` and no `"`; backslash,
/// the quote, `\n`, `\r`, `\t` escaped, other control characters as `\xNN`.
pub fn str_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::new();
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// Python's `repr(list_of_str)`.
pub fn list_repr(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| str_repr(s)).collect();
    format!("[{}]", parts.join(", "))
}

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("expected {what} at character {}", self.i + 1))
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> &str {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || matches!(self.s[self.i], b'_' | b'.'))
        {
            self.i += 1;
        }
        &self.src[start..self.i]
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.s.get(self.i) {
            None => self.err("a value"),
            Some(b'[') => {
                self.i += 1;
                self.seq(b']')
            }
            Some(b'(') => {
                self.i += 1;
                self.seq(b')')
            }
            Some(b'{') => {
                self.i += 1;
                self.dict()
            }
            Some(b'\'' | b'"') => self.string().map(Value::String),
            Some(c) if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.') => self.number(),
            Some(_) => {
                let start = self.i;
                let w = self.word().to_string();
                if matches!(w.as_str(), "b" | "u" | "r" | "br" | "rb")
                    && matches!(self.s.get(self.i), Some(b'\'' | b'"'))
                {
                    if w.contains('r') {
                        return self.raw_string().map(Value::String);
                    }
                    return self.string().map(Value::String);
                }
                match w.as_str() {
                    "None" => Ok(Value::Null),
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    "nan" | "inf" => Ok(Value::String(w)),
                    _ if self.s.get(self.i) == Some(&b'(') => {
                        // A constructor: `array([...], dtype=object)`, `np.str_('a')`.
                        self.i += 1;
                        self.ws();
                        let inner = self.value()?;
                        self.ws();
                        // Keyword arguments after the value (`dtype=object`) are skipped.
                        let mut depth = 0usize;
                        while self.i < self.s.len() {
                            match self.s[self.i] {
                                b'(' | b'[' | b'{' => depth += 1,
                                b')' if depth == 0 => break,
                                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                                b'\'' | b'"' => {
                                    self.string()?;
                                    continue;
                                }
                                _ => {}
                            }
                            self.i += 1;
                        }
                        if !self.eat(b')') {
                            return self.err("`)`");
                        }
                        Ok(inner)
                    }
                    _ => {
                        self.i = start;
                        self.err("a Python literal")
                    }
                }
            }
        }
    }

    /// Items up to `close`, separated by commas or (NumPy) by whitespace alone.
    fn seq(&mut self, close: u8) -> Result<Value, String> {
        let mut items = Vec::new();
        loop {
            self.ws();
            if self.eat(close) {
                return Ok(Value::Array(items));
            }
            items.push(self.value()?);
            self.ws();
            self.eat(b',');
        }
    }

    fn dict(&mut self) -> Result<Value, String> {
        let mut m = Map::new();
        loop {
            self.ws();
            if self.eat(b'}') {
                return Ok(Value::Object(m));
            }
            let k = match self.value()? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            self.ws();
            if !self.eat(b':') {
                return self.err("`:`");
            }
            self.ws();
            let v = self.value()?;
            m.insert(k, v);
            self.ws();
            self.eat(b',');
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric()
                || matches!(self.s[self.i], b'-' | b'+' | b'.'))
        {
            self.i += 1;
        }
        let t = &self.src[start..self.i];
        if let Ok(n) = t.parse::<i64>() {
            return Ok(Value::Number(n.into()));
        }
        match t.parse::<f64>() {
            Ok(x) => Ok(Number::from_f64(x).map_or(Value::String(t.to_string()), Value::Number)),
            Err(_) => {
                self.i = start;
                self.err("a number")
            }
        }
    }

    fn raw_string(&mut self) -> Result<String, String> {
        let q = self.s[self.i];
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            if self.s[self.i] == b'\\' {
                self.i += 1;
            }
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return self.err("the closing quote");
        }
        let out = self.src[start..self.i].to_string();
        self.i += 1;
        Ok(out)
    }

    fn hex(&mut self, n: usize) -> Result<u32, String> {
        let end = self.i + n;
        let t = self.src.get(self.i..end).unwrap_or("");
        let v = u32::from_str_radix(t, 16).or_else(|_| self.err("hex digits"))?;
        self.i = end;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, String> {
        let q = self.s[self.i];
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return self.err("the closing quote");
            };
            if c == q {
                self.i += 1;
                return Ok(out);
            }
            if c != b'\\' {
                // Copy one whole UTF-8 character.
                let ch = self.src[self.i..].chars().next().unwrap_or('\u{fffd}');
                out.push(ch);
                self.i += ch.len_utf8();
                continue;
            }
            self.i += 1;
            let Some(&e) = self.s.get(self.i) else {
                return self.err("an escape");
            };
            self.i += 1;
            let code = match e {
                b'\\' => '\\' as u32,
                b'\'' => '\'' as u32,
                b'"' => '"' as u32,
                b'n' => 0x0a,
                b'r' => 0x0d,
                b't' => 0x09,
                b'a' => 0x07,
                b'b' => 0x08,
                b'f' => 0x0c,
                b'v' => 0x0b,
                b'\n' => continue,
                b'x' => self.hex(2)?,
                b'u' => self.hex(4)?,
                b'U' => self.hex(8)?,
                b'0'..=b'7' => {
                    let mut v = u32::from(e - b'0');
                    for _ in 0..2 {
                        match self.s.get(self.i) {
                            Some(&d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                self.i += 1;
                            }
                            _ => break,
                        }
                    }
                    v
                }
                _ => {
                    // Python keeps an unknown escape as written.
                    out.push('\\');
                    self.i -= 1;
                    continue;
                }
            };
            out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_lists_and_numpy_arrays() {
        assert_eq!(strings("['a', 'b']"), vec!["a", "b"]);
        assert_eq!(strings("['a' 'b c']"), vec!["a", "b c"]);
        assert_eq!(strings("['a'\n 'b']"), vec!["a", "b"]);
        assert_eq!(strings("array(['x', 'y'], dtype=object)"), vec!["x", "y"]);
        assert_eq!(strings("(1, 2.5)"), vec!["1", "2.5"]);
        assert_eq!(strings("plain answer"), vec!["plain answer"]);
        assert_eq!(strings("[broken"), vec!["[broken"]);
        assert_eq!(strings("[]"), Vec::<String>::new());
    }

    #[test]
    fn string_escapes_as_python_reads_them() {
        assert_eq!(parse(r#""it's""#).unwrap(), json!("it's"));
        assert_eq!(parse(r"'it\'s'").unwrap(), json!("it's"));
        assert_eq!(parse(r"'a\nb\t\\'").unwrap(), json!("a\nb\t\\"));
        assert_eq!(parse(r"'\xe9\u4e2d\U0001F600'").unwrap(), json!("é中😀"));
        assert_eq!(parse(r"'\d'").unwrap(), json!("\\d"));
        assert_eq!(parse("'中文'").unwrap(), json!("中文"));
        assert_eq!(parse("np.str_('a')").unwrap(), json!("a"));
    }

    #[test]
    fn reprs_read_back() {
        for s in ["plain", "it's", "say \"hi\" it's", "a\nb\\c\u{1}", "中文"] {
            assert_eq!(parse(&str_repr(s)).unwrap(), json!(s), "{s}");
        }
        assert_eq!(str_repr("it's"), "\"it's\"");
        assert_eq!(list_repr(&["a".into(), "b'".into()]), "['a', \"b'\"]");
    }

    #[test]
    fn other_literals() {
        assert_eq!(
            parse("{'a': [1, None, True], 'b': -2.5e3}").unwrap(),
            json!({"a": [1, null, true], "b": -2500.0})
        );
        assert!(parse("['a', ").is_err());
        assert!(parse("'open").is_err());
        assert!(parse("[1] x").is_err());
    }
}
