//! Python literals ⇄ JSON values, for the dxtbx geometry attribute strings.
//!
//! dxtbx's `FormatHDF5AttributeGeometry` reads `dxtbx_detector_string` and
//! `dxtbx_beam_string` with `ast.literal_eval`, and writers store either
//! `json.dumps(d)` or `str(d)`. [`parse`] accepts both: the Python literal
//! subset (dicts, lists, tuples → arrays, strings with `'`/`"`/triple quotes,
//! `r`/`u`/`b` prefixes and escapes, ints incl. hex/octal/binary and `_`,
//! floats, `True`/`False`/`None`, unary signs, `#` comments, trailing commas,
//! adjacent string concatenation) plus JSON's `true`/`false`/`null`.
//! Non-finite numbers, complex numbers, sets and calls are errors.
//!
//! [`to_literal`] writes text that both `ast.literal_eval` and (for values
//! without null/booleans) `json.loads` accept: double-quoted strings, `None`,
//! `True`, `False`; floats keep a `.` or exponent so they stay floats.

use serde_json::{Map, Number, Value};

/// Nesting deeper than this is rejected (a mutated file must not overflow the stack).
const MAX_DEPTH: usize = 256;

/// Parses one Python literal (with surrounding whitespace/comments) into JSON.
/// The error names the byte offset.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut p = Parser { s: text.as_bytes(), text, i: 0 };
    let v = p.value(0)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(p.err("unexpected text after the value"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, msg: &str) -> String {
        format!("Python literal, byte {}: {msg}", self.i)
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Skips whitespace, `#` comments and backslash-newline continuations.
    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => self.i += 1,
                b'#' => {
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        self.i += 1;
                    }
                }
                b'\\' if matches!(self.s.get(self.i + 1), Some(b'\n')) => self.i += 2,
                b'\\' if self.s.get(self.i + 1) == Some(&b'\r') && self.s.get(self.i + 2) == Some(&b'\n') => {
                    self.i += 3
                }
                _ => break,
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.skip_ws();
        let Some(c) = self.peek() else {
            return Err(self.err("unexpected end of text, expected a value"));
        };
        match c {
            b'{' => self.dict(depth),
            b'[' => {
                self.i += 1;
                Ok(Value::Array(self.sequence(b']', depth)?.0))
            }
            b'(' => {
                self.i += 1;
                let (items, trailing_comma) = self.sequence(b')', depth)?;
                // `(x)` is just x; `(x,)` and `()` are tuples.
                if items.len() == 1 && !trailing_comma {
                    Ok(items.into_iter().next().unwrap_or(Value::Null))
                } else {
                    Ok(Value::Array(items))
                }
            }
            b'+' | b'-' | b'0'..=b'9' | b'.' => self.number(),
            b'"' | b'\'' => Ok(Value::String(self.strings()?)),
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = self.i;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
                    self.i += 1;
                }
                let word = &self.text[start..self.i];
                if matches!(self.peek(), Some(b'\'' | b'"')) && is_string_prefix(word) {
                    self.i = start;
                    return Ok(Value::String(self.strings()?));
                }
                match word {
                    "True" | "true" => Ok(Value::Bool(true)),
                    "False" | "false" => Ok(Value::Bool(false)),
                    "None" | "null" => Ok(Value::Null),
                    "nan" | "NaN" | "inf" | "Infinity" => {
                        self.i = start;
                        Err(self.err("non-finite numbers cannot be represented"))
                    }
                    _ => {
                        self.i = start;
                        Err(self.err(&format!("`{word}` is not a literal")))
                    }
                }
            }
            _ => Err(self.err(&format!("unexpected character {:?}", self.char_at()))),
        }
    }

    fn char_at(&self) -> char {
        self.text.get(self.i..).and_then(|t| t.chars().next()).unwrap_or('\u{fffd}')
    }

    /// Items up to `close`; returns them and whether a trailing comma was seen.
    fn sequence(&mut self, close: u8, depth: usize) -> Result<(Vec<Value>, bool), String> {
        let mut items = Vec::new();
        let mut trailing = false;
        loop {
            self.skip_ws();
            match self.peek() {
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok((items, trailing));
                }
                None => return Err(self.err(&format!("missing `{}`", close as char))),
                _ => {}
            }
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    trailing = true;
                }
                Some(c) if c == close => {
                    trailing = false;
                }
                _ => return Err(self.err(&format!("expected `,` or `{}`", close as char))),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, String> {
        self.i += 1; // '{'
        let mut map = Map::new();
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Object(map));
                }
                None => return Err(self.err("missing `}`")),
                _ => {}
            }
            let key = match self.value(depth + 1)? {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                _ => return Err(self.err("dictionary keys must be strings or numbers")),
            };
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected `:` after a dictionary key (sets are not supported)"));
            }
            self.i += 1;
            let v = self.value(depth + 1)?;
            map.insert(key, v);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let mut negative = false;
        while let Some(c @ (b'+' | b'-')) = self.peek() {
            if c == b'-' {
                negative = !negative;
            }
            self.i += 1;
            self.skip_ws();
        }
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.') {
            // An exponent sign belongs to the number.
            self.i += 1;
            if matches!(self.s.get(self.i - 1), Some(b'e' | b'E'))
                && matches!(self.peek(), Some(b'+' | b'-'))
                && !self.text[start..self.i].starts_with("0x")
                && !self.text[start..self.i].starts_with("0X")
            {
                self.i += 1;
            }
        }
        let raw = &self.text[start..self.i];
        if raw.is_empty() {
            return Err(self.err("expected a number"));
        }
        let tok: String = raw.chars().filter(|&c| c != '_').collect();
        let tok = tok.strip_suffix(['l', 'L']).unwrap_or(&tok).to_string();
        let lower = tok.to_ascii_lowercase();
        let radix = if lower.starts_with("0x") {
            Some(16)
        } else if lower.starts_with("0o") {
            Some(8)
        } else if lower.starts_with("0b") {
            Some(2)
        } else {
            None
        };
        let bad = || format!("Python literal, byte {start}: `{raw}` is not a number");
        if let Some(r) = radix {
            let digits = &tok[2..];
            let v = u128::from_str_radix(digits, r).map_err(|_| bad())?;
            return Ok(int_value(v, negative));
        }
        if lower.ends_with('j') {
            return Err(format!("Python literal, byte {start}: complex numbers are not supported"));
        }
        let is_float = lower.contains(['.', 'e']);
        // Only digits, one dot, one exponent: keep Rust's parser from accepting "inf"/"nan".
        if !lower.bytes().all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'+' | b'-')) {
            return Err(bad());
        }
        if is_float {
            let x: f64 = lower.parse().map_err(|_| bad())?;
            let x = if negative { -x } else { x };
            Number::from_f64(x)
                .map(Value::Number)
                .ok_or_else(|| format!("Python literal, byte {start}: `{raw}` overflows a float"))
        } else {
            match lower.parse::<u128>() {
                Ok(v) => Ok(int_value(v, negative)),
                // Beyond u128: keep the magnitude as a float, as JSON readers do.
                Err(_) => {
                    let x: f64 = lower.parse().map_err(|_| bad())?;
                    Number::from_f64(if negative { -x } else { x })
                        .map(Value::Number)
                        .ok_or_else(|| format!("Python literal, byte {start}: `{raw}` overflows a float"))
                }
            }
        }
    }

    /// One string literal or several adjacent ones (Python concatenates them).
    fn strings(&mut self) -> Result<String, String> {
        let mut out = self.string()?;
        loop {
            let save = self.i;
            self.skip_ws();
            let start = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                self.i += 1;
            }
            let prefix = &self.text[start..self.i];
            if matches!(self.peek(), Some(b'\'' | b'"')) && is_string_prefix(prefix) {
                self.i = start;
                out.push_str(&self.string()?);
            } else {
                self.i = save;
                return Ok(out);
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            self.i += 1;
        }
        let raw = self.text[start..self.i].to_ascii_lowercase().contains('r');
        let q = self.peek().ok_or_else(|| self.err("expected a string"))?;
        let triple = self.s.get(self.i..self.i + 3) == Some(&[q, q, q][..]);
        self.i += if triple { 3 } else { 1 };
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(format!("Python literal, byte {start}: unterminated string"));
            };
            if c == q {
                if !triple {
                    self.i += 1;
                    return Ok(out);
                }
                if self.s.get(self.i..self.i + 3) == Some(&[q, q, q][..]) {
                    self.i += 3;
                    return Ok(out);
                }
            }
            if !triple && c == b'\n' {
                return Err(format!("Python literal, byte {start}: newline inside a string"));
            }
            if c == b'\\' {
                if raw {
                    // Raw strings keep the backslash; it still protects the next quote.
                    out.push('\\');
                    self.i += 1;
                    if let Some(n) = self.peek() {
                        if n == q || n == b'\\' {
                            out.push(n as char);
                            self.i += 1;
                        }
                    }
                    continue;
                }
                self.escape(&mut out)?;
                continue;
            }
            // Copy one UTF-8 character.
            let ch = self.char_at();
            out.push(ch);
            self.i += ch.len_utf8().max(1);
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), String> {
        self.i += 1; // backslash
        let Some(c) = self.peek() else {
            return Err(self.err("unterminated escape"));
        };
        self.i += 1;
        match c {
            b'\n' => {}
            b'\\' => out.push('\\'),
            b'\'' => out.push('\''),
            b'"' => out.push('"'),
            b'a' => out.push('\x07'),
            b'b' => out.push('\x08'),
            b'f' => out.push('\x0c'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'v' => out.push('\x0b'),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match self.peek() {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            self.i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(char::from_u32(v).ok_or_else(|| self.err("bad octal escape"))?);
            }
            b'x' => out.push(self.hex_char(2)?),
            b'u' => {
                let hi = self.hex_code(4)?;
                if (0xD800..0xDC00).contains(&hi) && self.s.get(self.i..self.i + 2) == Some(b"\\u") {
                    self.i += 2;
                    let lo = self.hex_code(4)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(self.err("unpaired surrogate escape"));
                    }
                    let v = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    out.push(char::from_u32(v).ok_or_else(|| self.err("bad surrogate pair"))?);
                } else {
                    out.push(char::from_u32(hi).ok_or_else(|| self.err("unpaired surrogate escape"))?);
                }
            }
            b'U' => out.push(self.hex_char(8)?),
            _ => {
                // Python keeps unknown escapes verbatim.
                out.push('\\');
                self.i -= 1;
                let ch = self.char_at();
                out.push(ch);
                self.i += ch.len_utf8().max(1);
            }
        }
        Ok(())
    }

    fn hex_code(&mut self, n: usize) -> Result<u32, String> {
        let digits = self.s.get(self.i..self.i + n).ok_or_else(|| self.err("truncated escape"))?;
        let txt = std::str::from_utf8(digits).map_err(|_| self.err("bad escape"))?;
        let v = u32::from_str_radix(txt, 16).map_err(|_| self.err("bad hex escape"))?;
        if !txt.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err("bad hex escape"));
        }
        self.i += n;
        Ok(v)
    }

    fn hex_char(&mut self, n: usize) -> Result<char, String> {
        let v = self.hex_code(n)?;
        char::from_u32(v).ok_or_else(|| self.err("escape is not a character"))
    }
}

fn is_string_prefix(w: &str) -> bool {
    matches!(w.to_ascii_lowercase().as_str(), "" | "r" | "u" | "b" | "br" | "rb")
}

fn int_value(v: u128, negative: bool) -> Value {
    if negative {
        if v <= i64::MAX as u128 + 1 {
            return Value::Number(Number::from((v as i128).wrapping_neg() as i64));
        }
    } else if v <= u64::MAX as u128 {
        return Value::Number(Number::from(v as u64));
    }
    let x = v as f64;
    Number::from_f64(if negative { -x } else { x }).map(Value::Number).unwrap_or(Value::Null)
}

/// Writes `v` as a Python literal (see the module docs).
pub fn to_literal(v: &Value) -> String {
    let mut out = String::new();
    write_value(v, &mut out);
    out
}

fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (k, x) in a.iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                write_value(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (k, (key, x)) in m.iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                write_string(key, out);
                out.push_str(": ");
                write_value(x, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // \u escapes mean the same in Python and JSON.
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_and_json_forms() {
        let v = parse("{'a': (1, 2.5, -3e-2), \"b\": [True, False, None], 'c': u'x\\'y', 'd': ()}").unwrap();
        assert_eq!(v, json!({"a": [1, 2.5, -0.03], "b": [true, false, null], "c": "x'y", "d": []}));
        let v = parse(r#"{"k": [1.0, -2, 3e5], "s": "q\"\u00e9", "t": true, "n": null}"#).unwrap();
        assert_eq!(v, json!({"k": [1.0, -2, 300000.0], "s": "q\"é", "t": true, "n": null}));
        assert!(v["k"][0].is_f64() && v["k"][1].is_i64());
    }

    #[test]
    fn python_corner_cases() {
        assert_eq!(parse("(5)").unwrap(), json!(5));
        assert_eq!(parse("(5,)").unwrap(), json!([5]));
        assert_eq!(parse("[1, 2,]  # trailing\n").unwrap(), json!([1, 2]));
        assert_eq!(parse("'ab' \"cd\"").unwrap(), json!("abcd"));
        assert_eq!(parse("r'a\\n'").unwrap(), json!("a\\n"));
        assert_eq!(parse("'''x\ny'''").unwrap(), json!("x\ny"));
        assert_eq!(parse("0x1F").unwrap(), json!(31));
        assert_eq!(parse("- 1_000").unwrap(), json!(-1000));
        assert_eq!(parse("1.").unwrap(), json!(1.0));
        assert_eq!(parse(".5").unwrap(), json!(0.5));
        assert_eq!(parse("{1: 'x'}").unwrap(), json!({"1": "x"}));
        assert_eq!(parse("'\\x41\\101\\u00e9\\U0001F600'").unwrap(), json!("AAé😀"));
        assert_eq!(parse("-9223372036854775808").unwrap(), json!(i64::MIN));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "{",
            "[1 2]",
            "{'a' 1}",
            "{1, 2}",
            "nan",
            "float('inf')",
            "1e999",
            "1j",
            "'abc",
            "[[[[",
            "{'a': 1} x",
            "0xZZ",
            "1.2.3",
            "{[1]: 2}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should fail");
        }
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).unwrap_err().contains("deeply"));
    }

    #[test]
    fn literal_round_trip() {
        let v = json!({"name": "a\"b\\c\nd\u{1}é", "x": [1.0, -2, 1e-7, 1.5e300], "t": [true, false, null],
                       "nested": {"k": []}});
        let s = to_literal(&v);
        assert!(s.contains("True") && s.contains("None") && s.contains("1.0"));
        assert_eq!(parse(&s).unwrap(), v);
    }
}
